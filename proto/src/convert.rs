//! Conversions between the wire types and `harvest-core`'s domain types, in one place.

use harvest_core::{CpuBreakdown, CpuSet, GpuBreakdown, MemoryBreakdown, NodeView};

use crate::v1;

impl From<harvest_core::region::MemorySpec> for v1::MemorySpec {
    fn from(m: harvest_core::region::MemorySpec) -> Self {
        Self {
            region_mib: m.region_mib,
            cpu_millis: m.cpu_millis,
        }
    }
}

impl v1::MemorySpec {
    /// The spec as a request states it (cpu_millis 0: the default), checked.
    pub fn to_core(
        &self,
    ) -> Result<harvest_core::region::MemorySpec, harvest_core::region::MemorySpecError> {
        harvest_core::region::MemorySpec::new(self.region_mib, self.cpu_millis)
    }
}

impl From<&NodeView> for v1::NodeView {
    fn from(v: &NodeView) -> Self {
        let ids = |s: &CpuSet| s.iter().collect::<Vec<u32>>();
        v1::NodeView {
            name: v.name.clone(),
            cpus: Some(v1::CpuBreakdown {
                total: ids(&v.cpus.total),
                batch: ids(&v.cpus.batch),
                function: ids(&v.cpus.function),
                idle: ids(&v.cpus.idle),
            }),
            memory_mib: Some(v1::MemoryBreakdown {
                total: v.memory_mib.total,
                batch: v.memory_mib.batch,
                function: v.memory_mib.function,
                idle: v.memory_mib.idle,
            }),
            gpus: Some(v1::GpuBreakdown {
                total: v.gpus.total.clone(),
                batch: v.gpus.batch.clone(),
                function: v.gpus.function.clone(),
                idle: v.gpus.idle.clone(),
            }),
        }
    }
}

/// A missing breakdown on the wire is an empty one (proto3 has no required fields).
impl From<&v1::NodeView> for NodeView {
    fn from(v: &v1::NodeView) -> Self {
        let set = |ids: &[u32]| ids.iter().copied().collect::<CpuSet>();
        let cpus = v.cpus.clone().unwrap_or_default();
        let mem = v.memory_mib.unwrap_or_default();
        let gpus = v.gpus.clone().unwrap_or_default();
        NodeView {
            name: v.name.clone(),
            cpus: CpuBreakdown {
                total: set(&cpus.total),
                batch: set(&cpus.batch),
                function: set(&cpus.function),
                idle: set(&cpus.idle),
            },
            memory_mib: MemoryBreakdown {
                total: mem.total,
                batch: mem.batch,
                function: mem.function,
                idle: mem.idle,
            },
            gpus: GpuBreakdown {
                total: gpus.total,
                batch: gpus.batch,
                function: gpus.function,
                idle: gpus.idle,
            },
        }
    }
}

impl v1::ReportVersion {
    /// True when `self` is strictly newer than `other` (incarnation first, then sequence).
    pub fn is_newer_than(&self, other: &v1::ReportVersion) -> bool {
        (self.incarnation, self.sequence) > (other.incarnation, other.sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_views_round_trip() {
        let view = NodeView {
            name: "n1".into(),
            cpus: CpuBreakdown {
                total: CpuSet::first_n(4),
                batch: [0, 1].into_iter().collect(),
                function: [2].into_iter().collect(),
                idle: [3].into_iter().collect(),
            },
            memory_mib: MemoryBreakdown {
                total: 1000,
                batch: 500,
                function: 100,
                idle: 400,
            },
            gpus: GpuBreakdown {
                total: vec![0, 1],
                batch: vec![0],
                function: vec![],
                idle: vec![1],
            },
        };
        let wire = v1::NodeView::from(&view);
        assert_eq!(NodeView::from(&wire), view);
        assert_eq!(
            NodeView::from(&v1::NodeView::default()),
            NodeView::default()
        );
    }

    #[test]
    fn report_versions_order_by_incarnation_then_sequence() {
        let v = |incarnation, sequence| v1::ReportVersion {
            incarnation,
            sequence,
        };
        assert!(v(2, 0).is_newer_than(&v(1, 99)));
        assert!(v(1, 5).is_newer_than(&v(1, 4)));
        assert!(!v(1, 4).is_newer_than(&v(1, 4)));
        assert!(!v(1, 3).is_newer_than(&v(1, 4)));
    }
}
