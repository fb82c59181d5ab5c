//! `lease-affinity`: a client's leases near each other and near its data.

use crate::cluster::Cluster;
use crate::framework::{HintPlugin, MAX_SCORE, Request, ScorePlugin, Status};
use crate::resources::{NodeId, NodeState};

/// How many of a client's nodes are offered as hints (a client with leases on hundreds of nodes
/// must not turn each decision into a scan).
pub const MAX_AFFINITY_HINTS: usize = 8;

/// Scores 100 on a node that holds one of the client's leases or its data, 50 in the same
/// topology group as one, 0 elsewhere; hints those nodes so they are evaluated even when the
/// index would not reach them.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeaseAffinity;

impl HintPlugin for LeaseAffinity {
    fn name(&self) -> &'static str {
        "lease-affinity"
    }

    fn hints(&self, req: &Request<'_>, cluster: &Cluster, out: &mut Vec<NodeId>) {
        let start = out.len();
        out.extend(req.data_nodes.iter().take(MAX_AFFINITY_HINTS));
        if let Some(p) = cluster.client(req.client) {
            for &n in p.nodes.keys() {
                if out.len() - start >= MAX_AFFINITY_HINTS {
                    break;
                }
                out.push(n);
            }
        }
    }
}

impl ScorePlugin for LeaseAffinity {
    fn name(&self) -> &'static str {
        "lease-affinity"
    }

    fn score(&self, req: &Request<'_>, node: &NodeState, cluster: &Cluster) -> Result<i64, Status> {
        let placement = cluster.client(req.client);
        if req.data_nodes.contains(&node.id)
            || placement.is_some_and(|p| p.nodes.contains_key(&node.id))
        {
            return Ok(MAX_SCORE);
        }
        let data_group = req
            .data_nodes
            .iter()
            .any(|&d| cluster.node(d).is_ok_and(|n| n.group == node.group));
        if data_group || placement.is_some_and(|p| p.groups.contains_key(&node.group)) {
            return Ok(MAX_SCORE / 2);
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Lease;
    use crate::resources::Resources;

    #[test]
    fn scores_same_node_then_same_group_and_hints_both_sources() {
        let mut c = Cluster::uniform(6, Resources::new(8, 1000, 0), 2); // groups {0,1} {2,3} {4,5}
        c.reserve(Lease {
            id: 1,
            client: 7,
            node: 2,
            res: Resources::new(1, 10, 0),
        })
        .unwrap();
        let req = Request {
            lease: 2,
            client: 7,
            res: Resources::new(1, 10, 0),
            data_nodes: &[5],
            avoid_nodes: &[],
        };
        let score = |id| {
            LeaseAffinity
                .score(&req, &c.nodes()[id as usize], &c)
                .unwrap()
        };
        assert_eq!(score(2), 100);
        assert_eq!(score(5), 100);
        assert_eq!(score(3), 50);
        assert_eq!(score(4), 50);
        assert_eq!(score(0), 0);
        let mut hints = Vec::new();
        LeaseAffinity.hints(&req, &c, &mut hints);
        assert_eq!(hints, [5, 2], "data nodes first, then the client's nodes");
        let stranger = Request {
            client: 8,
            data_nodes: &[],
            avoid_nodes: &[],
            ..req
        };
        hints.clear();
        LeaseAffinity.hints(&stranger, &c, &mut hints);
        assert!(hints.is_empty());
    }
}
