//! Fake plugins for tests of the framework and of code that uses it (the scheduler).
//!
//! Each fake records what it was asked, so a test checks the framework's behaviour (which nodes
//! were filtered, what was reserved and unreserved) rather than the fake itself.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use crate::cluster::Cluster;
use crate::framework::{FilterPlugin, HintPlugin, Request, ReservePlugin, ScorePlugin, Status};
use crate::resources::{LeaseId, NodeId, NodeState};

/// Rejects the listed nodes with the given status; counts calls.
#[derive(Debug)]
pub struct FakeFilter {
    pub name: &'static str,
    pub reject: BTreeSet<NodeId>,
    pub verdict: Status,
    pub calls: Mutex<Vec<NodeId>>,
}

impl FakeFilter {
    pub fn rejecting(
        name: &'static str,
        nodes: impl IntoIterator<Item = NodeId>,
        verdict: Status,
    ) -> Self {
        Self {
            name,
            reject: nodes.into_iter().collect(),
            verdict,
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> Vec<NodeId> {
        self.calls.lock().expect("fake lock").clone()
    }
}

impl FilterPlugin for FakeFilter {
    fn name(&self) -> &'static str {
        self.name
    }

    fn filter(&self, _: &Request<'_>, node: &NodeState, _: &Cluster) -> Status {
        self.calls.lock().expect("fake lock").push(node.id);
        if self.reject.contains(&node.id) {
            self.verdict.clone()
        } else {
            Status::success()
        }
    }
}

/// Gives each node a fixed raw score (0 when unlisted); optionally adds `shift` in normalize, so
/// a test can push scores out of range.
#[derive(Debug)]
pub struct FakeScore {
    pub name: &'static str,
    pub scores: HashMap<NodeId, i64>,
    pub shift: i64,
}

impl FakeScore {
    pub fn new(name: &'static str, scores: impl IntoIterator<Item = (NodeId, i64)>) -> Self {
        Self {
            name,
            scores: scores.into_iter().collect(),
            shift: 0,
        }
    }
}

impl ScorePlugin for FakeScore {
    fn name(&self) -> &'static str {
        self.name
    }

    fn score(&self, _: &Request<'_>, node: &NodeState, _: &Cluster) -> Result<i64, Status> {
        Ok(self.scores.get(&node.id).copied().unwrap_or(0))
    }

    fn normalize(&self, scores: &mut [i64]) -> Status {
        for s in scores {
            *s += self.shift;
        }
        Status::success()
    }
}

/// Records reservations as a set of (lease, node); refuses when `refuse` is set. Idempotent as
/// the contract asks: a second reserve of the same lease changes nothing.
#[derive(Debug, Default)]
pub struct FakeReserve {
    pub name: &'static str,
    pub refuse: Option<Status>,
    pub held: Mutex<HashMap<LeaseId, NodeId>>,
    pub unreserve_calls: Mutex<u32>,
}

impl FakeReserve {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            ..Self::default()
        }
    }

    pub fn held(&self) -> HashMap<LeaseId, NodeId> {
        self.held.lock().expect("fake lock").clone()
    }

    pub fn unreserve_calls(&self) -> u32 {
        *self.unreserve_calls.lock().expect("fake lock")
    }
}

impl ReservePlugin for FakeReserve {
    fn name(&self) -> &'static str {
        self.name
    }

    fn reserve(&self, req: &Request<'_>, node: NodeId) -> Status {
        if let Some(st) = &self.refuse {
            return st.clone();
        }
        self.held.lock().expect("fake lock").insert(req.lease, node);
        Status::success()
    }

    fn unreserve(&self, lease: LeaseId) {
        *self.unreserve_calls.lock().expect("fake lock") += 1;
        self.held.lock().expect("fake lock").remove(&lease);
    }
}

/// Hints a fixed list of nodes.
#[derive(Debug)]
pub struct FakeHint(pub Vec<NodeId>);

impl HintPlugin for FakeHint {
    fn name(&self) -> &'static str {
        "fake-hint"
    }

    fn hints(&self, _: &Request<'_>, _: &Cluster, out: &mut Vec<NodeId>) {
        out.extend(&self.0);
    }
}
