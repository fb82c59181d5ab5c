//! `interference`: keep leases off nodes where co-location hurts the batch job.

use crate::cluster::Cluster;
use crate::framework::{FilterPlugin, MAX_SCORE, Request, ScorePlugin, Status};
use crate::resources::NodeState;

/// Filters out nodes in an interference state (monitoring saw the batch job slow down) and
/// scores nodes whose batch job is known to be sensitive at 0, the rest at 100.
#[derive(Debug, Default, Clone, Copy)]
pub struct Interference;

impl FilterPlugin for Interference {
    fn name(&self) -> &'static str {
        "interference"
    }

    fn filter(&self, _: &Request<'_>, node: &NodeState, _: &Cluster) -> Status {
        if node.interference {
            Status::unresolvable("node is in an interference state")
        } else {
            Status::success()
        }
    }

    fn rejects_interfering(&self) -> bool {
        true
    }
}

impl ScorePlugin for Interference {
    fn name(&self) -> &'static str {
        "interference"
    }

    fn score(&self, _: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        Ok(if node.batch_sensitive { 0 } else { MAX_SCORE })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::resources::Resources;

    #[test]
    fn rejects_interfering_nodes_and_ranks_sensitive_ones_last() {
        let c = Cluster::new();
        let req = Request {
            lease: 1,
            client: 1,
            res: Resources::new(1, 1, 0),
            data_nodes: &[],
            avoid_nodes: &[],
        };
        let mut n = NodeState::new(0, 0, Resources::new(4, 100, 0));
        assert!(FilterPlugin::filter(&Interference, &req, &n, &c).is_success());
        assert_eq!(ScorePlugin::score(&Interference, &req, &n, &c), Ok(100));
        n.batch_sensitive = true;
        assert_eq!(ScorePlugin::score(&Interference, &req, &n, &c), Ok(0));
        n.interference = true;
        assert_eq!(
            FilterPlugin::filter(&Interference, &req, &n, &c).code,
            Code::UnschedulableAndUnresolvable
        );
    }
}
