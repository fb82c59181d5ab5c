//! The framework's contract, checked with the fakes: filtering, sampling, scoring with normalize
//! and weights, ties, reserve rollback and idempotence, errors versus statuses.

use std::sync::Arc;

use harvest_policies::testing::{FakeFilter, FakeHint, FakeReserve, FakeScore};
use harvest_policies::{
    CandidateOrder, Cluster, Code, Decision, Framework, FrameworkError, PluginSet, Request,
    Resources, Status, builtin_framework,
};

fn cluster(n: u32) -> Cluster {
    Cluster::uniform(n, Resources::new(8, 8000, 0), 4)
}

fn req(lease: u64) -> Request<'static> {
    Request {
        lease,
        client: 1,
        res: Resources::new(2, 100, 0),
        data_nodes: &[],
        avoid_nodes: &[],
    }
}

fn filter(f: Arc<FakeFilter>) -> PluginSet {
    PluginSet {
        filter: Some(f),
        ..PluginSet::default()
    }
}

fn score(s: FakeScore) -> PluginSet {
    PluginSet {
        score: Some(Arc::new(s)),
        ..PluginSet::default()
    }
}

#[test]
fn filters_stop_after_sample_feasible_nodes() {
    let c = cluster(10);
    let f = Arc::new(FakeFilter::rejecting(
        "f",
        [0, 1],
        Status::unschedulable("busy"),
    ));
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 3).with(filter(f.clone()), 1);
    assert_eq!(fw.schedule(&c, &req(1)).unwrap(), Decision::Placed(2));
    assert_eq!(
        f.calls(),
        [0, 1, 2, 3, 4],
        "two rejected, then three feasible"
    );
}

#[test]
fn unschedulable_reports_who_rejected_how_many() {
    let c = cluster(3);
    let f = Arc::new(FakeFilter::rejecting(
        "f",
        [0, 1, 2],
        Status::unresolvable("hot"),
    ));
    let mut fw = Framework::new("t", CandidateOrder::FewestFree, 8).with(filter(f), 1);
    match fw.schedule(&c, &req(1)).unwrap() {
        Decision::Unschedulable {
            examined,
            rejections,
        } => {
            assert_eq!(examined, 3);
            assert_eq!(rejections.len(), 1);
            assert_eq!(rejections[0].plugin, "f");
            assert_eq!(rejections[0].nodes, 3);
            assert_eq!(rejections[0].reason, "hot");
        }
        other => panic!("expected unschedulable, got {other:?}"),
    }
}

#[test]
fn weighted_scores_pick_the_highest_total() {
    let c = cluster(4);
    let a = FakeScore::new("a", [(0, 100), (1, 0), (2, 60)]);
    let b = FakeScore::new("b", [(0, 0), (1, 100), (2, 60)]);
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 8)
        .with(score(a), 1)
        .with(score(b), 3);
    // totals: n0 100, n1 300, n2 240, n3 0
    assert_eq!(fw.schedule(&c, &req(1)).unwrap(), Decision::Placed(1));
}

#[test]
fn ties_go_to_the_lowest_node_id_whatever_the_visit_order() {
    let c = cluster(6);
    let s = FakeScore::new("s", [(1, 50), (3, 70), (5, 70)]);
    let mut fw = Framework::new("t", CandidateOrder::MostFree, 8).with(score(s), 1);
    assert_eq!(fw.schedule(&c, &req(1)).unwrap(), Decision::Placed(3));
    let mut bare = Framework::new("t", CandidateOrder::MostFree, 8);
    assert_eq!(bare.schedule(&c, &req(1)).unwrap(), Decision::Placed(0));
}

#[test]
fn scores_outside_0_100_after_normalize_are_an_error() {
    let c = cluster(3);
    let mut s = FakeScore::new("wild", [(0, 90)]);
    s.shift = 20;
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 8).with(score(s), 1);
    assert_eq!(
        fw.schedule(&c, &req(1)).unwrap_err(),
        FrameworkError::ScoreOutOfRange {
            plugin: "wild",
            node: 0,
            score: 110
        }
    );
}

#[test]
fn a_filter_error_is_an_error_not_a_rejection() {
    let c = cluster(3);
    let f = Arc::new(FakeFilter::rejecting(
        "broken",
        [1],
        Status::error("lost its state"),
    ));
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 8).with(filter(f), 1);
    let err = fw.schedule(&c, &req(1)).unwrap_err();
    assert!(
        err.to_string()
            .contains("broken failed on node 1: lost its state"),
        "{err}"
    );
}

#[test]
fn hinted_nodes_are_evaluated_first_and_once() {
    let c = cluster(8);
    let f = Arc::new(FakeFilter::rejecting("f", [], Status::success()));
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 3)
        .with(filter(f.clone()), 1)
        .with(
            PluginSet {
                hint: Some(Arc::new(FakeHint(vec![6, 2, 6, 99]))),
                ..PluginSet::default()
            },
            1,
        );
    fw.schedule(&c, &req(1)).unwrap();
    assert_eq!(
        f.calls(),
        [2, 6, 0],
        "hints sorted, deduplicated, unknown ids dropped"
    );
}

#[test]
fn place_reserves_in_cluster_and_plugins_and_release_is_idempotent() {
    let mut c = cluster(2);
    let r = Arc::new(FakeReserve::new("r"));
    let mut fw = builtin_framework("best-fit").unwrap().with(
        PluginSet {
            reserve: Some(r.clone()),
            ..PluginSet::default()
        },
        1,
    );
    let d = fw.place(&mut c, &req(7)).unwrap();
    let Decision::Placed(node) = d else {
        panic!("{d:?}")
    };
    assert_eq!(r.held().get(&7), Some(&node));
    assert_eq!(c.node(node).unwrap().function, Resources::new(2, 100, 0));
    assert!(fw.release(&mut c, 7).is_some());
    assert!(fw.release(&mut c, 7).is_none());
    assert!(r.held().is_empty());
    assert_eq!(c.node(node).unwrap().function, Resources::ZERO);
}

#[test]
fn a_refusing_reserve_plugin_rolls_everything_back() {
    let mut c = cluster(2);
    let ok = Arc::new(FakeReserve::new("ok"));
    let mut no = FakeReserve::new("no");
    no.refuse = Some(Status::unschedulable("quota"));
    let no = Arc::new(no);
    let mut fw = builtin_framework("first-fit")
        .unwrap()
        .with(
            PluginSet {
                reserve: Some(ok.clone()),
                ..PluginSet::default()
            },
            1,
        )
        .with(
            PluginSet {
                reserve: Some(no.clone()),
                ..PluginSet::default()
            },
            1,
        );
    match fw.place(&mut c, &req(3)).unwrap() {
        Decision::Unschedulable { rejections, .. } => {
            assert_eq!(rejections[0].plugin, "no");
            assert_eq!(rejections[0].reason, "quota");
        }
        other => panic!("{other:?}"),
    }
    assert!(ok.held().is_empty(), "the first plugin was unreserved");
    assert_eq!(ok.unreserve_calls(), 1);
    assert_eq!(c.lease_count(), 0);
    assert_eq!(c.node(0).unwrap().function, Resources::ZERO);
}

#[test]
fn placing_the_same_lease_twice_does_not_double_count() {
    let mut c = cluster(1);
    let mut fw = builtin_framework("first-fit").unwrap();
    assert_eq!(fw.place(&mut c, &req(1)).unwrap(), Decision::Placed(0));
    assert_eq!(fw.place(&mut c, &req(1)).unwrap(), Decision::Placed(0));
    assert_eq!(c.node(0).unwrap().function.cores, 2);
    assert_eq!(c.lease_count(), 1);
}

#[test]
fn status_codes_are_distinct_from_success() {
    assert!(Status::success().is_success());
    assert_eq!(Status::unschedulable("x").code, Code::Unschedulable);
    assert!(!Status::unresolvable("x").is_success());
}

#[test]
fn examine_at_most_bounds_a_decision() {
    let c = cluster(10);
    let f = Arc::new(FakeFilter::rejecting(
        "f",
        0..6,
        Status::unresolvable("hot"),
    ));
    let mut fw = Framework::new("t", CandidateOrder::NodeOrder, 2)
        .with(filter(f.clone()), 1)
        .examine_at_most(4);
    match fw.schedule(&c, &req(1)).unwrap() {
        Decision::Unschedulable { examined, .. } => assert_eq!(examined, 4),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.calls(), [0, 1, 2, 3]);
    let mut unbounded = Framework::new("t", CandidateOrder::NodeOrder, 2).with(filter(f), 1);
    assert_eq!(
        unbounded.schedule(&c, &req(1)).unwrap(),
        Decision::Placed(6)
    );
}

#[test]
fn avoided_nodes_are_never_chosen_and_say_so_when_nothing_else_fits() {
    let mut fw = builtin_framework("first-fit").unwrap();
    let mut c = cluster(3);
    let avoid = [0, 1];
    let r = Request {
        avoid_nodes: &avoid,
        ..req(1)
    };
    assert_eq!(fw.schedule(&c, &r).unwrap(), Decision::Placed(2));
    // With node 2 full, nothing is left: the answer names the avoided nodes.
    c.reserve(harvest_policies::Lease {
        id: 99,
        client: 2,
        node: 2,
        res: Resources::new(8, 8000, 0),
    })
    .unwrap();
    let Decision::Unschedulable { rejections, .. } = fw.schedule(&c, &r).unwrap() else {
        panic!("placed on an avoided node")
    };
    let avoided = rejections
        .iter()
        .find(|x| x.plugin == "avoid-nodes")
        .expect("a rejection for the avoided nodes");
    assert_eq!(avoided.nodes, 2);
}
