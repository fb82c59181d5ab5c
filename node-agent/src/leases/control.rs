//! What the interference controller may do to a lease's group (weight, CPU quota, freeze), and
//! how a lease task applies it to its own group. The controller decides ([`crate::interference`]);
//! only the lease task writes.

use std::path::Path;

use crate::cgroup::{CgroupError, Cgroups, CpuQuota};

/// The CFS period quotas are expressed in.
pub const QUOTA_PERIOD_US: u64 = 100_000;

/// A probe's pause: 1 ms of CPU time every 100 ms period for the whole group, the kernel's
/// floor. Not the freezer: a frozen group stays frozen until someone thaws it, so an agent stopped
/// or killed in the middle of a probe would leave the lease's invocations unanswered. At the
/// floor the lease's interference is at most 1% of one CPU, and an executor still answers
/// (a no-op invocation needs microseconds) until the agent is back to end the pause.
pub const PROBE_QUOTA: CpuQuota = CpuQuota {
    quota_us: 1000,
    period_us: QUOTA_PERIOD_US,
};

/// What one level of the interference ladder means for one lease group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseControl {
    pub weight: u64,
    /// Percent of the lease's CPUs' time, `None`: no cap.
    pub quota_pct: Option<u32>,
    pub frozen: bool,
}

impl LeaseControl {
    /// A lease as its executor was started: its normal weight, no cap, running.
    pub fn normal(weight: u64) -> Self {
        Self {
            weight,
            quota_pct: None,
            frozen: false,
        }
    }
}

/// The CFS quota for `pct` percent of `cores` CPUs.
pub fn quota_for(pct: u32, cores: u32) -> CpuQuota {
    quota_for_millis(pct, cores.max(1).saturating_mul(1000))
}

/// The CFS quota for `pct` percent of `millis` thousandths of a CPU (at least 1 ms a period).
pub fn quota_for_millis(pct: u32, millis: u32) -> CpuQuota {
    let quota_us = QUOTA_PERIOD_US * u64::from(pct) * u64::from(millis.max(1)) / 100_000;
    CpuQuota {
        quota_us: quota_us.max(1000),
        period_us: QUOTA_PERIOD_US,
    }
}

/// What a lease's CPU quota is a percentage of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuShare {
    /// A function lease's own CPUs: uncapped at level none.
    Cores(u32),
    /// A memory lease's cap, thousandths of one CPU: always capped, at level none to the whole
    /// cap, at a quota level to that percent of it.
    Capped(u32),
}

impl CpuShare {
    /// The quota for a level's `quota_pct`.
    pub fn quota(self, quota_pct: Option<u32>) -> Option<CpuQuota> {
        match self {
            Self::Cores(cores) => quota_pct.map(|p| quota_for(p, cores)),
            Self::Capped(millis) => Some(quota_for_millis(quota_pct.unwrap_or(100), millis)),
        }
    }
}

/// Brings `group` (of a lease whose CPU time is `share`) from `from` (`None`: unknown, apply every
/// part) to `to`: thaw first and freeze last, so a lease is never frozen with a stale cap.
pub fn apply(
    cg: &dyn Cgroups,
    group: &Path,
    share: CpuShare,
    from: Option<LeaseControl>,
    to: LeaseControl,
) -> Result<(), CgroupError> {
    if !to.frozen && from.is_none_or(|f| f.frozen) {
        cg.thaw(group)?;
    }
    if from.is_none_or(|f| f.weight != to.weight) {
        cg.set_cpu_weight(group, to.weight)?;
    }
    if from.is_none_or(|f| f.quota_pct != to.quota_pct) {
        cg.set_cpu_quota(group, share.quota(to.quota_pct))?;
    }
    if to.frozen && from.is_none_or(|f| !f.frozen) {
        cg.freeze(group)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_lease_is_capped_at_every_level_and_a_function_lease_only_at_quota_levels() {
        let q = |quota_us| {
            Some(CpuQuota {
                quota_us,
                period_us: QUOTA_PERIOD_US,
            })
        };
        assert_eq!(CpuShare::Cores(2).quota(None), None);
        assert_eq!(CpuShare::Cores(2).quota(Some(25)), q(50_000));
        // 100 millis = 10 ms every 100 ms; a quota level takes its percent of that.
        assert_eq!(CpuShare::Capped(100).quota(None), q(10_000));
        assert_eq!(CpuShare::Capped(100).quota(Some(50)), q(5_000));
        // Never below 1 ms a period (the kernel's floor).
        assert_eq!(CpuShare::Capped(10).quota(Some(10)), q(1_000));
        assert_eq!(CpuShare::Capped(1000).quota(None), q(100_000));
    }
}
