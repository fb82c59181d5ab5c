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

/// The states a resource of a node is in, as metrics and tables label them.
pub const STATES: [&str; 4] = ["batch", "function", "idle", "reserved"];

/// How much of one resource is in each state.
///
/// `batch`, `function` and `idle` are the sizes of the view's lists (exactly what `harvest nodes
/// --json` shows); `reserved` is what is in none of them: held back for the OS or, while a job
/// runs with `--harvest=off`, not lent at all. During a reclaim a CPU may briefly be both batch
/// and function; it is then counted in both and `reserved` does not go below zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub total: u64,
    pub batch: u64,
    pub function: u64,
    pub idle: u64,
    pub reserved: u64,
}

impl Counts {
    /// The count of `state` (one of [`STATES`]; 0 for anything else).
    pub fn get(&self, state: &str) -> u64 {
        match state {
            "batch" => self.batch,
            "function" => self.function,
            "idle" => self.idle,
            "reserved" => self.reserved,
            _ => 0,
        }
    }

    pub fn add(&self, o: &Counts) -> Counts {
        Counts {
            total: self.total + o.total,
            batch: self.batch + o.batch,
            function: self.function + o.function,
            idle: self.idle + o.idle,
            reserved: self.reserved + o.reserved,
        }
    }
}

/// A node's (or a cluster's) CPUs, memory (MiB) and GPUs by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub cpus: Counts,
    pub memory_mib: Counts,
    pub gpus: Counts,
}

impl Usage {
    pub fn of(view: &NodeView) -> Self {
        let n = |len: usize| len as u64;
        let c = &view.cpus;
        let held = c.batch.union(&c.function).union(&c.idle);
        let m = &view.memory_mib;
        let g = &view.gpus;
        Self {
            cpus: Counts {
                total: n(c.total.len()),
                batch: n(c.batch.len()),
                function: n(c.function.len()),
                idle: n(c.idle.len()),
                reserved: n(c.total.difference(&held).len()),
            },
            memory_mib: Counts {
                total: m.total,
                batch: m.batch,
                function: m.function,
                idle: m.idle,
                reserved: m
                    .total
                    .saturating_sub(m.batch)
                    .saturating_sub(m.function)
                    .saturating_sub(m.idle),
            },
            gpus: Counts {
                total: n(g.total.len()),
                batch: n(g.batch.len()),
                function: n(g.function.len()),
                idle: n(g.idle.len()),
                reserved: n(g
                    .total
                    .iter()
                    .filter(|&&i| view.gpu_state(i) == "reserved")
                    .count()),
            },
        }
    }

    pub fn add(&self, o: &Usage) -> Usage {
        Usage {
            cpus: self.cpus.add(&o.cpus),
            memory_mib: self.memory_mib.add(&o.memory_mib),
            gpus: self.gpus.add(&o.gpus),
        }
    }
}

impl NodeView {
    /// The state of one GPU (batch wins over function, as for CPUs; `reserved` when in no list).
    pub fn gpu_state(&self, gpu: u32) -> &'static str {
        let g = &self.gpus;
        if g.batch.contains(&gpu) {
            "batch"
        } else if g.function.contains(&gpu) {
            "function"
        } else if g.idle.contains(&gpu) {
            "idle"
        } else {
            "reserved"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_lists_and_what_is_in_none_of_them() {
        let mut v = NodeView::default();
        v.cpus.total = CpuSet::first_n(4);
        v.cpus.batch = [0, 1].into_iter().collect();
        v.cpus.function = [1, 2].into_iter().collect();
        v.memory_mib = MemoryBreakdown {
            total: 1000,
            batch: 300,
            function: 200,
            idle: 400,
        };
        v.gpus = GpuBreakdown {
            total: vec![0, 1, 2],
            batch: vec![0],
            function: vec![],
            idle: vec![1],
        };
        let u = Usage::of(&v);
        // CPU 1 is mid-reclaim (both lists); CPU 3 is in none: reserved.
        assert_eq!(
            (u.cpus.batch, u.cpus.function, u.cpus.idle, u.cpus.reserved),
            (2, 2, 0, 1)
        );
        assert_eq!(u.memory_mib.reserved, 100);
        assert_eq!(
            (u.gpus.reserved, v.gpu_state(2), v.gpu_state(0)),
            (1, "reserved", "batch")
        );
        let twice = u.add(&u);
        assert_eq!((twice.cpus.total, twice.memory_mib.get("idle")), (8, 800));
        assert_eq!(STATES.map(|s| u.cpus.get(s)), [2, 2, 0, 1]);
    }

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
