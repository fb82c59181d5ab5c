//! What the interference controller may do to a lease's group (weight, CPU quota, freeze), and
//! how a lease task applies it to its own group. The controller decides ([`crate::interference`]);
//! only the lease task writes.

use std::path::Path;

use crate::cgroup::{CgroupError, Cgroups, CpuQuota};

/// The CFS period quotas are expressed in.
pub const QUOTA_PERIOD_US: u64 = 100_000;

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
    let quota_us = QUOTA_PERIOD_US * u64::from(pct) * u64::from(cores.max(1)) / 100;
    CpuQuota {
        quota_us: quota_us.max(1000),
        period_us: QUOTA_PERIOD_US,
    }
}

/// Brings `group` (of a lease with `cores` CPUs) from `from` (`None`: unknown, apply every
/// part) to `to`: thaw first and freeze last, so a lease is never frozen with a stale cap.
pub fn apply(
    cg: &dyn Cgroups,
    group: &Path,
    cores: u32,
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
        cg.set_cpu_quota(group, to.quota_pct.map(|p| quota_for(p, cores)))?;
    }
    if to.frozen && from.is_none_or(|f| !f.frozen) {
        cg.freeze(group)?;
    }
    Ok(())
}
