//! `fit`: the node has what the lease asks for, free.

use crate::cluster::Cluster;
use crate::framework::{FilterPlugin, Request, Status};
use crate::resources::NodeState;

/// Rejects nodes without enough free cores, memory or GPUs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fit;

impl FilterPlugin for Fit {
    fn name(&self) -> &'static str {
        "fit"
    }

    fn filter(&self, req: &Request<'_>, node: &NodeState, _: &Cluster) -> Status {
        let free = node.free();
        if node.total.gpus < req.res.gpus {
            Status::unresolvable("node has fewer GPUs than asked")
        } else if free.cores < req.res.cores {
            Status::unschedulable("not enough free cores")
        } else if free.mem_mib < req.res.mem_mib {
            Status::unschedulable("not enough free memory")
        } else if free.gpus < req.res.gpus {
            Status::unschedulable("not enough free GPUs")
        } else {
            Status::success()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::Code;
    use crate::resources::Resources;

    fn req(res: Resources) -> Request<'static> {
        Request {
            lease: 1,
            client: 1,
            res,
            data_nodes: &[],
            avoid_nodes: &[],
        }
    }

    #[test]
    fn names_the_missing_dimension() {
        let c = Cluster::new();
        let mut node = NodeState::new(0, 0, Resources::new(4, 1000, 1));
        node.batch = Resources::new(2, 500, 0);
        let f = Fit;
        assert!(
            f.filter(&req(Resources::new(2, 500, 1)), &node, &c)
                .is_success()
        );
        let st = f.filter(&req(Resources::new(3, 0, 0)), &node, &c);
        assert_eq!(st.code, Code::Unschedulable);
        assert!(st.reason.contains("cores"));
        assert!(
            f.filter(&req(Resources::new(1, 501, 0)), &node, &c)
                .reason
                .contains("memory")
        );
        assert_eq!(
            f.filter(&req(Resources::new(1, 0, 2)), &node, &c).code,
            Code::UnschedulableAndUnresolvable
        );
        node.function = Resources::new(0, 0, 1);
        assert!(
            f.filter(&req(Resources::new(1, 0, 1)), &node, &c)
                .reason
                .contains("GPUs")
        );
    }
}
