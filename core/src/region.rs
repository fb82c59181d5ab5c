//! Memory leases: a region of a node's idle memory lent to one owner, who reads and writes it
//! over the invocation transport (the `harvest.mem.*` built-ins, see [`crate::invoke`]).
//!
//! A memory lease holds no core: its executor shares the node's CPUs at the lowest CPU weight,
//! capped at [`MemorySpec::cpu_millis`] thousandths of one CPU, so a batch job on those CPUs
//! always wins them. What it holds is memory: the region plus [`OVERHEAD_MIB`] for the executor
//! and its workers' buffers, counted as function memory everywhere (the node's view, the
//! scheduler's placement, reclaim), so the region never counts as idle while it is lent.

use serde::{Deserialize, Serialize};

/// MiB a memory lease's cgroup holds beyond its region: the executor, its workers and their
/// transfer buffers (up to about 8 MiB per busy connection: its 4 MiB input and output buffers).
pub const OVERHEAD_MIB: u64 = 128;
/// The CPU share a memory lease gets unless it asks: a tenth of one CPU.
pub const DEFAULT_CPU_MILLIS: u32 = 100;
/// The least CPU share a memory lease may ask for (a CFS quota of 1 ms every 100 ms).
pub const MIN_CPU_MILLIS: u32 = 10;
/// The most: one whole CPU. A client that needs more bandwidth takes more leases.
pub const MAX_CPU_MILLIS: u32 = 1000;

/// What makes a lease a memory lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// The region's size, MiB.
    pub region_mib: u64,
    /// The executor's CPU cap, thousandths of one CPU.
    pub cpu_millis: u32,
}

/// A memory lease request that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemorySpecError {
    #[error("a memory lease needs a region of at least 1 MiB")]
    EmptyRegion,
    #[error(
        "cpu_millis {0} is outside {MIN_CPU_MILLIS}..={MAX_CPU_MILLIS} (thousandths of one CPU; \
         0 takes the default {DEFAULT_CPU_MILLIS})"
    )]
    CpuMillis(u32),
}

impl MemorySpec {
    /// A request's spec: `cpu_millis` 0 takes [`DEFAULT_CPU_MILLIS`].
    pub fn new(region_mib: u64, cpu_millis: u32) -> Result<Self, MemorySpecError> {
        if region_mib == 0 {
            return Err(MemorySpecError::EmptyRegion);
        }
        let cpu_millis = match cpu_millis {
            0 => DEFAULT_CPU_MILLIS,
            m if (MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&m) => m,
            m => return Err(MemorySpecError::CpuMillis(m)),
        };
        Ok(Self {
            region_mib,
            cpu_millis,
        })
    }

    /// What the lease holds on its node: the region and the executor's overhead.
    pub fn held_mib(&self) -> u64 {
        self.region_mib.saturating_add(OVERHEAD_MIB)
    }

    /// The region in bytes.
    pub fn region_bytes(&self) -> u64 {
        self.region_mib.saturating_mul(1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let s = MemorySpec::new(1024, 0).unwrap();
        assert_eq!(s.cpu_millis, DEFAULT_CPU_MILLIS);
        assert_eq!(s.held_mib(), 1024 + OVERHEAD_MIB);
        assert_eq!(s.region_bytes(), 1 << 30);
        assert_eq!(MemorySpec::new(0, 0), Err(MemorySpecError::EmptyRegion));
        assert_eq!(MemorySpec::new(1, 5), Err(MemorySpecError::CpuMillis(5)));
        assert_eq!(
            MemorySpec::new(1, 1001),
            Err(MemorySpecError::CpuMillis(1001))
        );
        assert_eq!(MemorySpec::new(1, 1000).unwrap().cpu_millis, 1000);
        assert_eq!(MemorySpec::new(u64::MAX, 10).unwrap().held_mib(), u64::MAX);
    }
}
