//! Resource vectors and node state as placement sees them: counts, not CPU ids.
//!
//! The node agent tracks which CPU ids are batch, function or idle ([`harvest_core::NodeView`]);
//! placement only needs how many, so [`NodeState::from_view`] is the one conversion.

use harvest_core::NodeView;
use serde::{Deserialize, Serialize};

/// Dense node index into a [`crate::Cluster`]; stable for the cluster's lifetime.
pub type NodeId = u32;
/// A lease (one placement) as the scheduler names it.
pub type LeaseId = u64;
/// The client (user) that asked for a lease; affinity groups leases by it.
pub type ClientId = u64;

/// Cores, memory and GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cores: u32,
    pub mem_mib: u64,
    pub gpus: u32,
}

impl Resources {
    pub const ZERO: Self = Self::new(0, 0, 0);

    pub const fn new(cores: u32, mem_mib: u64, gpus: u32) -> Self {
        Self {
            cores,
            mem_mib,
            gpus,
        }
    }

    /// Whether `other` fits inside `self` in every dimension.
    pub fn fits(&self, other: &Self) -> bool {
        other.cores <= self.cores && other.mem_mib <= self.mem_mib && other.gpus <= self.gpus
    }

    /// `self - other`, or `None` when any dimension would go negative.
    pub fn checked_sub(&self, other: &Self) -> Option<Self> {
        Some(Self {
            cores: self.cores.checked_sub(other.cores)?,
            mem_mib: self.mem_mib.checked_sub(other.mem_mib)?,
            gpus: self.gpus.checked_sub(other.gpus)?,
        })
    }

    /// `self - other`, clamped at zero in each dimension.
    pub fn saturating_sub(&self, other: &Self) -> Self {
        Self {
            cores: self.cores.saturating_sub(other.cores),
            mem_mib: self.mem_mib.saturating_sub(other.mem_mib),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    pub fn add(&self, other: &Self) -> Self {
        Self {
            cores: self.cores + other.cores,
            mem_mib: self.mem_mib + other.mem_mib,
            gpus: self.gpus + other.gpus,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

/// One node: what it has, what its batch jobs hold, what leases hold, and its health flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub id: NodeId,
    /// Topology group (rack, switch, island): "near" for lease affinity.
    pub group: u32,
    pub total: Resources,
    pub batch: Resources,
    pub function: Resources,
    /// The node is in an interference state (monitoring saw the batch job slowed down).
    pub interference: bool,
    /// The batch job on the node is known to be sensitive to co-location.
    pub batch_sensitive: bool,
}

impl NodeState {
    pub fn new(id: NodeId, group: u32, total: Resources) -> Self {
        Self {
            id,
            group,
            total,
            batch: Resources::ZERO,
            function: Resources::ZERO,
            interference: false,
            batch_sensitive: false,
        }
    }

    /// Counts from a node agent's view (CPU ids become core counts).
    pub fn from_view(id: NodeId, group: u32, view: &NodeView) -> Self {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut node = Self::new(
            id,
            group,
            Resources::new(
                count(view.cpus.total.len()),
                view.memory_mib.total,
                count(view.gpus.total.len()),
            ),
        );
        node.batch = Resources::new(
            count(view.cpus.batch.len()),
            view.memory_mib.batch,
            count(view.gpus.batch.len()),
        );
        node.function = Resources::new(
            count(view.cpus.function.len()),
            view.memory_mib.function,
            count(view.gpus.function.len()),
        );
        node
    }

    /// What neither batch jobs nor leases hold.
    pub fn free(&self) -> Resources {
        self.total
            .saturating_sub(&self.batch)
            .saturating_sub(&self.function)
    }

    /// Whether batch plus functions exceed the node in some dimension.
    pub fn overcommitted(&self) -> bool {
        !self.total.fits(&self.batch.add(&self.function))
    }

    /// Whether any batch job holds part of the node.
    pub fn has_batch(&self) -> bool {
        !self.batch.is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvest_core::{CpuBreakdown, CpuSet, MemoryBreakdown};

    #[test]
    fn arithmetic_checks_every_dimension() {
        let a = Resources::new(4, 1000, 1);
        assert!(a.fits(&Resources::new(4, 1000, 1)));
        assert!(!a.fits(&Resources::new(4, 1001, 0)));
        assert!(!a.fits(&Resources::new(0, 0, 2)));
        assert_eq!(a.checked_sub(&Resources::new(5, 0, 0)), None);
        assert_eq!(
            a.saturating_sub(&Resources::new(5, 10, 0)),
            Resources::new(0, 990, 1)
        );
    }

    #[test]
    fn from_view_counts_cpus_and_free_subtracts_both_holders() {
        let view = NodeView {
            name: "n1".into(),
            cpus: CpuBreakdown {
                total: CpuSet::first_n(8),
                batch: CpuSet::first_n(4),
                function: [4].into_iter().collect(),
                idle: [5, 6, 7].into_iter().collect(),
            },
            memory_mib: MemoryBreakdown {
                total: 1000,
                batch: 600,
                function: 100,
                idle: 300,
            },
            gpus: Default::default(),
        };
        let node = NodeState::from_view(3, 1, &view);
        assert_eq!(node.free(), Resources::new(3, 300, 0));
        assert!(node.has_batch());
        assert!(!node.overcommitted());
    }
}
