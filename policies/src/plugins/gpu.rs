//! `gpu`: GPUs are scarce; CPU leases keep off them and GPU leases pack them.

use super::percent;
use crate::cluster::Cluster;
use crate::framework::{MAX_SCORE, Request, ScorePlugin, Status};
use crate::resources::NodeState;

/// A CPU-only lease scores 0 on a node with a free GPU and 100 elsewhere, so GPU nodes stay
/// available for GPU leases. A GPU lease scores by how few GPUs the node would have left free.
#[derive(Debug, Default, Clone, Copy)]
pub struct GpuAware;

impl ScorePlugin for GpuAware {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn score(&self, req: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        let free = node.free().gpus;
        if req.res.gpus == 0 {
            return Ok(if free > 0 { 0 } else { MAX_SCORE });
        }
        let left = free.saturating_sub(req.res.gpus);
        Ok(MAX_SCORE - percent(u64::from(left), u64::from(node.total.gpus)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    fn req(gpus: u32) -> Request<'static> {
        Request {
            lease: 1,
            client: 1,
            res: Resources::new(1, 1, gpus),
            data_nodes: &[],
            avoid_nodes: &[],
        }
    }

    #[test]
    fn cpu_leases_avoid_free_gpus_and_gpu_leases_pack() {
        let c = Cluster::new();
        let cpu_node = NodeState::new(0, 0, Resources::new(8, 100, 0));
        let mut gpu_node = NodeState::new(1, 0, Resources::new(8, 100, 4));
        assert_eq!(GpuAware.score(&req(0), &cpu_node, &c), Ok(100));
        assert_eq!(GpuAware.score(&req(0), &gpu_node, &c), Ok(0));
        let empty = GpuAware.score(&req(1), &gpu_node, &c).unwrap();
        gpu_node.batch.gpus = 3;
        let last = GpuAware.score(&req(1), &gpu_node, &c).unwrap();
        assert_eq!(last, 100);
        assert!(last > empty);
        gpu_node.batch.gpus = 4;
        assert_eq!(GpuAware.score(&req(0), &gpu_node, &c), Ok(100));
    }
}
