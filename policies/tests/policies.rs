//! Each built-in policy, end to end through the framework, on a small cluster whose right
//! answer is known.

use harvest_policies::{Cluster, Decision, Lease, NodeId, Request, Resources, builtin_framework};

const SHAPE: Resources = Resources::new(8, 8000, 0);

/// Node i has `batch[i]` batch cores (and proportional memory).
fn cluster(batch: &[u32]) -> Cluster {
    let mut c = Cluster::uniform(batch.len() as u32, SHAPE, 2);
    for (i, &b) in batch.iter().enumerate() {
        c.set_batch(i as NodeId, Resources::new(b, u64::from(b) * 1000, 0))
            .unwrap();
    }
    c
}

fn one_core(lease: u64, client: u64) -> Request<'static> {
    Request {
        lease,
        client,
        res: Resources::new(1, 500, 0),
        data_nodes: &[],
        avoid_nodes: &[],
    }
}

fn place(policy: &str, c: &mut Cluster, req: &Request<'_>) -> NodeId {
    let mut fw = builtin_framework(policy).unwrap();
    match fw.place(c, req).unwrap() {
        Decision::Placed(n) => n,
        other => panic!("{policy}: {other:?}"),
    }
}

#[test]
fn first_fit_takes_the_lowest_id_that_fits() {
    let mut c = cluster(&[8, 4, 0, 6]);
    assert_eq!(place("first-fit", &mut c, &one_core(1, 1)), 1);
}

#[test]
fn best_fit_packs_the_fullest_node_and_spares_idle_ones() {
    let mut c = cluster(&[0, 4, 6, 8]);
    assert_eq!(place("best-fit", &mut c, &one_core(1, 1)), 2);
    // Only idle nodes left with room: still placed, but never on a busy-full node.
    let mut c = cluster(&[0, 8, 0]);
    assert_eq!(place("best-fit", &mut c, &one_core(1, 1)), 0);
}

#[test]
fn spread_takes_the_emptiest_node() {
    let mut c = cluster(&[6, 2, 4]);
    assert_eq!(place("spread", &mut c, &one_core(1, 1)), 1);
}

#[test]
fn interference_aware_skips_interfering_and_avoids_sensitive_nodes() {
    let mut c = cluster(&[6, 6, 4]);
    c.update(0, |n| n.interference = true).unwrap();
    c.update(1, |n| n.batch_sensitive = true).unwrap();
    assert_eq!(place("interference-aware", &mut c, &one_core(1, 1)), 2);
    // best-fit alone would have taken node 0 or 1.
    let mut plain = cluster(&[6, 6, 4]);
    assert_eq!(place("best-fit", &mut plain, &one_core(1, 1)), 0);
}

#[test]
fn gpu_aware_keeps_cpu_leases_off_free_gpus_and_packs_gpu_leases() {
    let mut c = Cluster::new();
    c.add_node(0, Resources::new(8, 8000, 4)); // 0: GPU node, emptier
    c.add_node(0, Resources::new(8, 8000, 0)); // 1: CPU node
    c.add_node(0, Resources::new(8, 8000, 4)); // 2: GPU node with 3 GPUs busy
    c.set_batch(0, Resources::new(6, 1000, 0)).unwrap();
    c.set_batch(1, Resources::new(2, 1000, 0)).unwrap();
    c.set_batch(2, Resources::new(2, 1000, 3)).unwrap();
    assert_eq!(place("gpu-aware", &mut c, &one_core(1, 1)), 1);
    let gpu_req = Request {
        res: Resources::new(1, 500, 1),
        ..one_core(2, 1)
    };
    assert_eq!(place("gpu-aware", &mut c, &gpu_req), 2);
}

#[test]
fn lease_affinity_follows_the_clients_leases_and_data() {
    let mut c = cluster(&[4, 4, 4, 4, 4, 4]);
    c.reserve(Lease {
        id: 100,
        client: 9,
        node: 5,
        res: Resources::new(1, 100, 0),
    })
    .unwrap();
    assert_eq!(place("lease-affinity", &mut c, &one_core(1, 9)), 5);
    let with_data = Request {
        data_nodes: &[3],
        avoid_nodes: &[],
        ..one_core(2, 10)
    };
    assert_eq!(place("lease-affinity", &mut c, &with_data), 3);
}

#[test]
fn the_harvest_policy_combines_them() {
    let mut c = cluster(&[6, 6, 5, 3]);
    c.update(0, |n| n.interference = true).unwrap();
    assert_eq!(place("harvest", &mut c, &one_core(1, 1)), 1);
}

#[test]
fn every_policy_refuses_when_nothing_fits_and_never_overcommits() {
    for policy in harvest_policies::BUILTIN_POLICIES {
        let mut c = cluster(&[8, 7, 7]);
        let mut placed = 0;
        for lease in 0..5 {
            let mut fw = builtin_framework(policy).unwrap();
            if let Decision::Placed(_) = fw.place(&mut c, &one_core(lease, 1)).unwrap() {
                placed += 1;
            }
        }
        assert_eq!(placed, 2, "{policy}");
        assert!(c.nodes().iter().all(|n| !n.overcommitted()), "{policy}");
    }
}
