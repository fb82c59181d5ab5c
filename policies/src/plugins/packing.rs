//! `first-fit`, `best-fit` and `spread`: where on the load curve a lease goes.

use super::percent;
use crate::cluster::Cluster;
use crate::framework::{MAX_SCORE, Request, ScorePlugin, Status};
use crate::resources::NodeState;

/// Lower node ids score higher (rFaaS's placement). Raw score is the id; normalize maps the
/// lowest feasible id to 100 and the highest to 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct FirstFit;

impl ScorePlugin for FirstFit {
    fn name(&self) -> &'static str {
        "first-fit"
    }

    fn score(&self, _: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        Ok(i64::from(node.id))
    }

    fn normalize(&self, scores: &mut [i64]) -> Status {
        let (Some(&lo), Some(&hi)) = (scores.iter().min(), scores.iter().max()) else {
            return Status::success();
        };
        for s in scores.iter_mut() {
            *s = if hi == lo {
                MAX_SCORE
            } else {
                MAX_SCORE - (*s - lo) * MAX_SCORE / (hi - lo)
            };
        }
        Status::success()
    }
}

/// How full the node would be with the lease, mean of cores and memory, 0..=100.
fn used_after(req: &Request<'_>, node: &NodeState) -> i64 {
    let used = node.batch.add(&node.function).add(&req.res);
    (percent(u64::from(used.cores), u64::from(node.total.cores))
        + percent(used.mem_mib, node.total.mem_mib))
        / 2
}

/// Packs leases onto the fullest nodes, so whole nodes stay free for batch jobs: a node that
/// neither batch jobs nor leases use scores 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct BestFit;

impl ScorePlugin for BestFit {
    fn name(&self) -> &'static str {
        "best-fit"
    }

    fn score(&self, req: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        if !node.has_batch() && node.function.is_zero() {
            return Ok(0);
        }
        Ok(used_after(req, node))
    }
}

/// Spreads leases over the emptiest nodes (least interference per node, most reclaims).
#[derive(Debug, Default, Clone, Copy)]
pub struct Spread;

impl ScorePlugin for Spread {
    fn name(&self) -> &'static str {
        "spread"
    }

    fn score(&self, req: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        Ok(MAX_SCORE - used_after(req, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Resources;

    const REQ: Request<'static> = Request {
        lease: 1,
        client: 1,
        res: Resources::new(1, 100, 0),
        data_nodes: &[],
        avoid_nodes: &[],
    };

    fn node(id: u32, batch_cores: u32) -> NodeState {
        let mut n = NodeState::new(id, 0, Resources::new(10, 1000, 0));
        n.batch = Resources::new(batch_cores, 100 * u64::from(batch_cores), 0);
        n
    }

    #[test]
    fn first_fit_normalizes_ids_to_a_descending_scale() {
        let mut scores = vec![7, 3, 5];
        assert!(FirstFit.normalize(&mut scores).is_success());
        assert_eq!(scores, [0, 100, 50]);
        let mut one = vec![9];
        FirstFit.normalize(&mut one);
        assert_eq!(one, [100]);
    }

    #[test]
    fn best_fit_prefers_full_nodes_and_keeps_idle_nodes_last() {
        let c = Cluster::new();
        let full = BestFit.score(&REQ, &node(0, 8), &c).unwrap();
        let half = BestFit.score(&REQ, &node(1, 4), &c).unwrap();
        let idle = BestFit.score(&REQ, &node(2, 0), &c).unwrap();
        assert!(full > half && half > idle, "{full} {half} {idle}");
        assert_eq!(idle, 0);
        assert_eq!(full, 90);
    }

    #[test]
    fn spread_prefers_empty_nodes() {
        let c = Cluster::new();
        let full = Spread.score(&REQ, &node(0, 8), &c).unwrap();
        let idle = Spread.score(&REQ, &node(2, 0), &c).unwrap();
        assert!(idle > full);
        assert_eq!(idle, 90);
    }
}
