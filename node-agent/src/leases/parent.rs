//! The group every lease group lives under (`harvest_<node>`, beside Slurm's `slurm_<node>`):
//! the one owner of its CPU weight and SCHED_IDLE.
//!
//! At the top of the cpu hierarchy it competes with the batch jobs' tasks; with a normal weight
//! all functions together could take as much CPU as every batch task together, so it gets the
//! lease weight too, and is SCHED_IDLE (`cpu.idle`) when configured. During a reclaim its
//! killed tasks must still run to exit and free their memory, so reclaim raises its weight
//! ([`ParentGroup::boost`]) and the last reclaim to finish restores it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

use crate::cgroup::{Cgroups, GroupSpec};

/// The lease groups' parent.
#[derive(Debug)]
pub struct ParentGroup {
    cgroups: Arc<dyn Cgroups>,
    path: PathBuf,
    weight: u64,
    idle: bool,
    /// Reclaims that hold the boost now.
    boosts: Mutex<u32>,
}

fn weight(w: u64) -> GroupSpec {
    GroupSpec {
        cpus: None,
        mems: None,
        memory_limit_bytes: None,
        cpu_weight: Some(w),
        ..GroupSpec::default()
    }
}

impl ParentGroup {
    pub fn new(cgroups: Arc<dyn Cgroups>, path: PathBuf, weight: u64, idle: bool) -> Self {
        Self {
            cgroups,
            path,
            weight,
            idle,
            boosts: Mutex::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the group the lease weight and SCHED_IDLE (creating it). Idempotent: done before
    /// each lease group is made, and at start for a parent that exists, so a harvestd that
    /// never runs a lease leaves no group behind.
    pub fn prepare(&self) {
        // An idle group's weight cannot be written (EINVAL): make it normal first.
        if self.idle {
            let _ = self.cgroups.set_cpu_idle(&self.path, false);
        }
        if let Err(e) = self.cgroups.create(&self.path, &weight(self.weight)) {
            tracing::warn!(group = %self.path.display(), error = %e,
                "could not give the lease groups' parent the lease CPU weight");
        }
        if self.idle {
            match self.cgroups.set_cpu_idle(&self.path, true) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "this kernel has no cpu.idle (Linux 5.15+): functions run at the lowest CPU weight instead of SCHED_IDLE"
                ),
                Err(e) => tracing::warn!(error = %e, "could not make the lease groups SCHED_IDLE"),
            }
        }
    }

    /// Raises the group's weight until the returned guard (and every other one) is dropped.
    pub fn boost(self: &Arc<Self>, to: u64) -> Boost {
        let mut n = self.boosts.lock().unwrap_or_else(|p| p.into_inner());
        if *n == 0 {
            let ok = (!self.idle || self.cgroups.set_cpu_idle(&self.path, false).is_ok())
                && self
                    .cgroups
                    .create(&self.path, &weight(to))
                    .inspect_err(|e| tracing::debug!(error = %e, "could not raise the lease parent's CPU weight"))
                    .is_ok();
            if !ok {
                return Boost(None);
            }
        }
        *n += 1;
        Boost(Some(self.clone()))
    }

    fn unboost(&self) {
        let mut n = self.boosts.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n > 0 {
            return;
        }
        let restored = self
            .cgroups
            .create(&self.path, &weight(self.weight))
            .and_then(|()| {
                if self.idle {
                    self.cgroups.set_cpu_idle(&self.path, true).map(drop)
                } else {
                    Ok(())
                }
            });
        if let Err(e) = restored {
            tracing::warn!(error = %e, "could not restore the lease parent's CPU weight");
        }
    }
}

/// A raised weight of the parent; restored when the last one is dropped.
#[derive(Debug)]
#[must_use = "the boost ends when this is dropped"]
pub struct Boost(Option<Arc<ParentGroup>>);

impl Drop for Boost {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            p.unboost();
        }
    }
}
