//! The placement pipeline, in the shape of the Kubernetes scheduler framework.
//!
//! One decision ([`Framework::schedule`]) runs:
//! 1. **hints** ([`HintPlugin`]): nodes a plugin wants looked at first (a client's other leases);
//! 2. **filter** ([`FilterPlugin`]) on candidates from the cluster's index in the policy's
//!    [`CandidateOrder`], until `sample` feasible nodes are found;
//! 3. **score** ([`ScorePlugin`]) each feasible node, **normalize** to 0..=100, weight and sum; the
//!    highest total wins, ties go to the lowest node id;
//! 4. **reserve** ([`Framework::place`]): the cluster's book-keeping, then each [`ReservePlugin`];
//!    if one refuses, the ones before it are unreserved in reverse order.
//!
//! A plugin's verdict is a [`Status`]; a [`FrameworkError`] means a plugin or the caller is broken.

use std::borrow::Cow;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use crate::cluster::{CandidateOrder, Cluster, ClusterError, Lease};
use crate::resources::{ClientId, LeaseId, NodeId, NodeState, Resources};

/// The highest score a plugin may give after normalization.
pub const MAX_SCORE: i64 = 100;

/// What a lease asks for.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub lease: LeaseId,
    pub client: ClientId,
    pub res: Resources,
    /// Nodes that hold the client's data, for affinity.
    pub data_nodes: &'a [NodeId],
    /// Nodes the lease must not go to (a replica is placed away from its primary).
    pub avoid_nodes: &'a [NodeId],
}

/// A plugin's verdict code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// Not on this node now; may fit later (resources are busy).
    Unschedulable,
    /// Not on this node whatever happens to other leases (interference, no GPU).
    UnschedulableAndUnresolvable,
    /// The plugin failed; the framework turns this into a [`FrameworkError`].
    Error,
}

/// A plugin's verdict: a code and, when not a success, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reason: Cow<'static, str>,
}

impl Status {
    pub const fn success() -> Self {
        Self {
            code: Code::Success,
            reason: Cow::Borrowed(""),
        }
    }

    pub fn unschedulable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: Code::Unschedulable,
            reason: reason.into(),
        }
    }

    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: Code::UnschedulableAndUnresolvable,
            reason: reason.into(),
        }
    }

    pub fn error(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: Code::Error,
            reason: reason.into(),
        }
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Rejects nodes a lease must not go to.
pub trait FilterPlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn filter(&self, req: &Request<'_>, node: &NodeState, cluster: &Cluster) -> Status;
    /// Whether this filter rejects every node in an interference state; the framework then
    /// asks the index not to visit those nodes at all.
    fn rejects_interfering(&self) -> bool {
        false
    }
}

/// Ranks feasible nodes. Raw scores may be any `i64`; after [`ScorePlugin::normalize`] every
/// score must lie in `0..=MAX_SCORE`.
pub trait ScorePlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, req: &Request<'_>, node: &NodeState, cluster: &Cluster) -> Result<i64, Status>;
    /// Rescales this plugin's raw scores over all feasible nodes of one decision.
    fn normalize(&self, _scores: &mut [i64]) -> Status {
        Status::success()
    }
}

/// Plugin-owned state that follows placements. Both calls must be idempotent: the framework may
/// unreserve a lease that was never reserved, and a retried reserve must not count twice.
pub trait ReservePlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn reserve(&self, req: &Request<'_>, node: NodeId) -> Status;
    fn unreserve(&self, lease: LeaseId);
}

/// Nodes a plugin wants evaluated before the index's candidates.
pub trait HintPlugin: fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn hints(&self, req: &Request<'_>, cluster: &Cluster, out: &mut Vec<NodeId>);
}

/// A plugin or the caller broke the framework's contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameworkError {
    #[error("plugin {plugin} failed on node {node}: {reason}")]
    Plugin {
        plugin: &'static str,
        node: NodeId,
        reason: String,
    },
    #[error(
        "plugin {plugin} gave node {node} the score {score} after normalize; scores must be 0..={MAX_SCORE}"
    )]
    ScoreOutOfRange {
        plugin: &'static str,
        node: NodeId,
        score: i64,
    },
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Why nodes were rejected, for one plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub plugin: &'static str,
    pub nodes: u32,
    /// The first reason the plugin gave.
    pub reason: Cow<'static, str>,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Placed(NodeId),
    /// No node took the lease: how many were examined and who rejected them.
    Unschedulable {
        examined: u32,
        rejections: Vec<Rejection>,
    },
}

/// One configured plugin's extension points; a plugin fills the ones it implements.
#[derive(Debug, Clone, Default)]
pub struct PluginSet {
    pub filter: Option<Arc<dyn FilterPlugin>>,
    pub score: Option<Arc<dyn ScorePlugin>>,
    pub reserve: Option<Arc<dyn ReservePlugin>>,
    pub hint: Option<Arc<dyn HintPlugin>>,
}

/// Reused buffers, so a decision does not allocate.
#[derive(Debug, Default)]
struct Scratch {
    hinted: Vec<NodeId>,
    feasible: Vec<NodeId>,
    scores: Vec<i64>,
    totals: Vec<i64>,
    rejected: Vec<(u32, Status)>,
}

/// A configured pipeline: which plugins run, with which weights, visiting nodes in which order.
#[derive(Debug)]
pub struct Framework {
    name: String,
    order: CandidateOrder,
    sample: usize,
    max_examined: usize,
    skip_interfering: bool,
    filters: Vec<Arc<dyn FilterPlugin>>,
    scores: Vec<(Arc<dyn ScorePlugin>, i64)>,
    reserves: Vec<Arc<dyn ReservePlugin>>,
    hints: Vec<Arc<dyn HintPlugin>>,
    scratch: Scratch,
}

impl Framework {
    /// An empty pipeline; add plugins with [`Framework::with`]. `sample` is at least 1.
    pub fn new(name: impl Into<String>, order: CandidateOrder, sample: usize) -> Self {
        Self {
            name: name.into(),
            order,
            sample: sample.max(1),
            max_examined: usize::MAX,
            skip_interfering: false,
            filters: Vec::new(),
            scores: Vec::new(),
            reserves: Vec::new(),
            hints: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Stops filtering after `n` nodes (at least 1) even when fewer than `sample` were feasible,
    /// bounding a decision's cost when many candidates fail a filter; without it a decision may
    /// examine every node.
    pub fn examine_at_most(mut self, n: usize) -> Self {
        self.max_examined = n.max(1);
        self
    }

    /// Adds a plugin's extension points; `weight` multiplies its normalized score.
    pub fn with(mut self, set: PluginSet, weight: u32) -> Self {
        if let Some(f) = set.filter {
            self.skip_interfering |= f.rejects_interfering();
            self.filters.push(f);
            self.scratch.rejected.push((0, Status::success()));
        }
        if let Some(s) = set.score {
            self.scores.push((s, i64::from(weight)));
        }
        if let Some(r) = set.reserve {
            self.reserves.push(r);
        }
        if let Some(h) = set.hint {
            self.hints.push(h);
        }
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Picks a node for `req` without changing anything.
    pub fn schedule(
        &mut self,
        cluster: &Cluster,
        req: &Request<'_>,
    ) -> Result<Decision, FrameworkError> {
        let s = &mut self.scratch;
        s.hinted.clear();
        s.feasible.clear();
        for r in &mut s.rejected {
            r.0 = 0;
        }
        for h in &self.hints {
            h.hints(req, cluster, &mut s.hinted);
        }
        s.hinted.sort_unstable();
        s.hinted.dedup();
        s.hinted.retain(|&id| (id as usize) < cluster.len());

        let mut examined = 0u32;
        let mut avoided = 0u32;
        let mut failure: Option<FrameworkError> = None;
        let sample = self.sample;
        let max_examined = self.max_examined;
        let filters = &self.filters;
        let mut consider =
            |id: NodeId, feasible: &mut Vec<NodeId>, rejected: &mut [(u32, Status)]| {
                if examined as usize >= max_examined {
                    return ControlFlow::Break(());
                }
                examined += 1;
                if req.avoid_nodes.contains(&id) {
                    avoided += 1;
                    return ControlFlow::Continue(());
                }
                let node = &cluster.nodes()[id as usize];
                for (i, f) in filters.iter().enumerate() {
                    let status = f.filter(req, node, cluster);
                    match status.code {
                        Code::Success => {}
                        Code::Error => {
                            failure = Some(FrameworkError::Plugin {
                                plugin: f.name(),
                                node: id,
                                reason: status.reason.into_owned(),
                            });
                            return ControlFlow::Break(());
                        }
                        _ => {
                            if rejected[i].0 == 0 {
                                rejected[i].1 = status;
                            }
                            rejected[i].0 += 1;
                            return ControlFlow::Continue(());
                        }
                    }
                }
                feasible.push(id);
                if feasible.len() >= sample {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
        let mut done = false;
        for &id in &s.hinted {
            if consider(id, &mut s.feasible, &mut s.rejected).is_break() {
                done = true;
                break;
            }
        }
        if !done {
            let hinted = &s.hinted;
            let feasible = &mut s.feasible;
            let rejected = &mut s.rejected;
            cluster.candidates(self.order, &req.res, self.skip_interfering, |id| {
                if hinted.contains(&id) {
                    return ControlFlow::Continue(());
                }
                consider(id, feasible, rejected)
            });
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if s.feasible.is_empty() {
            let mut rejections: Vec<Rejection> = self
                .filters
                .iter()
                .zip(&s.rejected)
                .filter(|(_, (n, _))| *n > 0)
                .map(|(f, (n, st))| Rejection {
                    plugin: f.name(),
                    nodes: *n,
                    reason: st.reason.clone(),
                })
                .collect();
            if avoided > 0 {
                rejections.push(Rejection {
                    plugin: "avoid-nodes",
                    nodes: avoided,
                    reason: "the request asked for another node".into(),
                });
            }
            return Ok(Decision::Unschedulable {
                examined,
                rejections,
            });
        }
        if s.feasible.len() == 1 || self.scores.is_empty() {
            let best = if self.scores.is_empty() {
                *s.feasible.iter().min().expect("non-empty")
            } else {
                s.feasible[0]
            };
            return Ok(Decision::Placed(best));
        }
        s.totals.clear();
        s.totals.resize(s.feasible.len(), 0);
        for (plugin, weight) in &self.scores {
            s.scores.clear();
            for &id in &s.feasible {
                let node = &cluster.nodes()[id as usize];
                let score =
                    plugin
                        .score(req, node, cluster)
                        .map_err(|st| FrameworkError::Plugin {
                            plugin: plugin.name(),
                            node: id,
                            reason: st.reason.into_owned(),
                        })?;
                s.scores.push(score);
            }
            let st = plugin.normalize(&mut s.scores);
            if !st.is_success() {
                return Err(FrameworkError::Plugin {
                    plugin: plugin.name(),
                    node: s.feasible[0],
                    reason: st.reason.into_owned(),
                });
            }
            for ((total, &score), &id) in s.totals.iter_mut().zip(&s.scores).zip(&s.feasible) {
                if !(0..=MAX_SCORE).contains(&score) {
                    return Err(FrameworkError::ScoreOutOfRange {
                        plugin: plugin.name(),
                        node: id,
                        score,
                    });
                }
                *total += score * weight;
            }
        }
        let best = s
            .feasible
            .iter()
            .zip(&s.totals)
            .max_by(|(a_id, a), (b_id, b)| a.cmp(b).then(b_id.cmp(a_id)))
            .map(|(id, _)| *id)
            .expect("non-empty");
        Ok(Decision::Placed(best))
    }

    /// Schedules `req` and, when a node is found, reserves it in the cluster and in every reserve
    /// plugin. A reserve plugin's refusal undoes what was reserved and reports the lease
    /// unschedulable.
    pub fn place(
        &mut self,
        cluster: &mut Cluster,
        req: &Request<'_>,
    ) -> Result<Decision, FrameworkError> {
        let node = match self.schedule(cluster, req)? {
            Decision::Placed(node) => node,
            other => return Ok(other),
        };
        cluster.reserve(Lease {
            id: req.lease,
            client: req.client,
            node,
            res: req.res,
        })?;
        for (i, plugin) in self.reserves.iter().enumerate() {
            let st = plugin.reserve(req, node);
            if st.is_success() {
                continue;
            }
            for done in self.reserves[..=i].iter().rev() {
                done.unreserve(req.lease);
            }
            cluster.unreserve(req.lease);
            if st.code == Code::Error {
                return Err(FrameworkError::Plugin {
                    plugin: plugin.name(),
                    node,
                    reason: st.reason.into_owned(),
                });
            }
            return Ok(Decision::Unschedulable {
                examined: 1,
                rejections: vec![Rejection {
                    plugin: plugin.name(),
                    nodes: 1,
                    reason: st.reason,
                }],
            });
        }
        Ok(Decision::Placed(node))
    }

    /// Releases a lease everywhere; idempotent.
    pub fn release(&mut self, cluster: &mut Cluster, lease: LeaseId) -> Option<Lease> {
        for plugin in self.reserves.iter().rev() {
            plugin.unreserve(lease);
        }
        cluster.unreserve(lease)
    }
}
