//! What harvestd reads the node from and starts processes with: the cgroup tree, Slurm's
//! details, executor processes. Each is a trait with a real implementation and a fake.

use std::sync::Arc;

use crate::cgroup::Cgroups;
use crate::leases::process::Processes;
use crate::scontrol::JobDetails;

/// The agent's OS and Slurm sources.
#[derive(Debug)]
pub struct Sources {
    pub cgroups: Arc<dyn Cgroups>,
    pub details: Arc<dyn JobDetails>,
    /// Starts and watches executor processes (used by [`crate::leases`]).
    pub processes: Arc<dyn Processes>,
}

#[cfg(test)]
impl crate::slurm::testing::FakeTree {
    /// The agent's sources over this tree, with `details` standing in for scontrol.
    pub fn sources(&self, details: crate::scontrol::FakeJobDetails) -> Sources {
        Sources {
            cgroups: Arc::new(self.v1.clone()),
            details: Arc::new(details),
            processes: Arc::new(crate::leases::testing::FakeProcesses::default()),
        }
    }
}
