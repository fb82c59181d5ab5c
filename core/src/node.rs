//! A node's resources broken down by who holds them.
//!
//! [`NodeView`] is the shape of `harvestd status --json` and of each entry of `harvest nodes --json`:
//! `cpus.{total,batch,function,idle}` are lists of OS CPU ids, `memory_mib.{...}` are MiB, and
//! `gpus.{...}` are lists of GPU indices.

use serde::{Deserialize, Serialize};

use crate::CpuSet;

/// CPUs by state, as OS CPU ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuBreakdown {
    pub total: CpuSet,
    pub batch: CpuSet,
    pub function: CpuSet,
    pub idle: CpuSet,
}

/// Memory by state, in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    pub total: u64,
    pub batch: u64,
    pub function: u64,
    pub idle: u64,
}

/// GPUs by state, as GPU indices (NVML's index order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuBreakdown {
    pub total: Vec<u32>,
    pub batch: Vec<u32>,
    pub function: Vec<u32>,
    pub idle: Vec<u32>,
}

/// One node's view: what it has, what batch jobs hold, what functions hold, what is idle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub cpus: CpuBreakdown,
    pub memory_mib: MemoryBreakdown,
    pub gpus: GpuBreakdown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keys_are_the_documented_ones() {
        let view = NodeView {
            name: "n1".into(),
            cpus: CpuBreakdown {
                total: CpuSet::first_n(2),
                batch: [0].into_iter().collect(),
                function: CpuSet::new(),
                idle: [1].into_iter().collect(),
            },
            memory_mib: MemoryBreakdown {
                total: 1000,
                batch: 500,
                function: 0,
                idle: 400,
            },
            gpus: GpuBreakdown::default(),
        };
        let v: serde_json::Value = serde_json::to_value(&view).unwrap();
        assert_eq!(v["name"], "n1");
        assert_eq!(v["cpus"]["batch"], serde_json::json!([0]));
        assert_eq!(v["cpus"]["idle"], serde_json::json!([1]));
        assert_eq!(v["memory_mib"]["batch"], 500);
        assert_eq!(v["gpus"]["idle"], serde_json::json!([]));
    }
}
