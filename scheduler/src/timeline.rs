//! What the dashboard shows over time: the cluster's utilization sampled into a ring buffer, and
//! recent events (revocations, failed executors, reclaims, interference and node state changes).
//!
//! The lease book keeps no history, so a [`Recorder`] watches it: [`run`] takes a snapshot every
//! [`OBSERVE_EVERY`] and [`Recorder::observe`] compares it with the one before. An event's time is
//! when the recorder first saw it (within [`OBSERVE_EVERY`]). Lease ends are also counted into
//! `harvest_lease_ends_total` here; a lease that ends and is forgotten within one observation
//! (more than `ended_leases_kept` leases ending in a second) is missed, which the docs say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harvest_proto::v1;
use harvest_proto::views::level_name;
use serde::Serialize;
use tokio::sync::watch;

use crate::book::{Now, cause_name};
use crate::metrics::{SchedulerMetrics, Snapshot, Usage, view_of};
use crate::state::Shared;

/// How often the recorder looks at the book for events.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// One utilization sample of the whole cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub t_unix_ms: i64,
    pub usage: Usage,
    pub leases_active: u64,
    pub nodes_up: u64,
}

/// Something an operator should see: a lease taken back, a reclaim, interference, a node state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub t_unix_ms: i64,
    /// `reclaimed`, `interference`, `node_down`, `node_drained`, `executor_failed` (lease ends,
    /// by cause), `reclaim` (the agent took CPUs back from executors), `interference_level`
    /// (the agent's control level changed), `node` (up, down, draining).
    pub kind: String,
    pub node: String,
    /// The lease, for lease ends.
    pub lease: Option<String>,
    pub message: String,
}

/// Lease end causes shown as events (ends as planned, by the client or by time, are not).
const EVENT_CAUSES: [&str; 5] = [
    "reclaimed",
    "interference",
    "node_down",
    "node_drained",
    "executor_failed",
];

#[derive(Debug, Clone, Default)]
struct NodeMemo {
    state: String,
    level: v1::InterferenceLevel,
    reclaims: u64,
    evictions: u64,
    moves: u64,
}

#[derive(Debug)]
struct Inner {
    samples: VecDeque<Sample>,
    events: VecDeque<Event>,
    seen_ended: HashSet<String>,
    nodes: HashMap<String, NodeMemo>,
}

/// The utilization ring buffer and the recent events; shared by the sampler and the HTTP server.
#[derive(Debug)]
pub struct Recorder {
    samples_kept: usize,
    events_kept: usize,
    inner: Mutex<Inner>,
}

fn is_live(state: i32) -> bool {
    state == v1::LeaseState::Pending as i32 || state == v1::LeaseState::Active as i32
}

impl Recorder {
    pub fn new(samples_kept: usize, events_kept: usize) -> Self {
        Self {
            samples_kept: samples_kept.max(1),
            events_kept: events_kept.max(1),
            inner: Mutex::new(Inner {
                samples: VecDeque::new(),
                events: VecDeque::new(),
                seen_ended: HashSet::new(),
                nodes: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compares `snap` with the previous observation: records the events it shows and returns
    /// the causes of the leases that ended since (for `harvest_lease_ends_total`).
    pub fn observe(&self, snap: &Snapshot, now_unix_ms: i64) -> Vec<String> {
        let mut inner = self.lock();
        let mut events = Vec::new();
        let mut ended = Vec::new();
        let mut still_there = HashSet::new();
        for l in snap.leases.iter().filter(|l| !is_live(l.state)) {
            still_there.insert(l.id.clone());
            if inner.seen_ended.contains(&l.id) {
                continue;
            }
            let cause = cause_name(v1::EndCause::try_from(l.end_cause).unwrap_or_default());
            if EVENT_CAUSES.contains(&cause.as_str()) {
                events.push(Event {
                    t_unix_ms: now_unix_ms,
                    kind: cause.clone(),
                    node: l.node.clone(),
                    lease: Some(l.id.clone()),
                    message: format!(
                        "lease {} ({} CPU(s), user {}) ended: {}",
                        l.id,
                        l.cpus.len(),
                        if l.user.is_empty() {
                            l.uid.to_string()
                        } else {
                            l.user.clone()
                        },
                        if l.end_reason.is_empty() {
                            &cause
                        } else {
                            &l.end_reason
                        }
                    ),
                });
            }
            ended.push(cause);
        }
        // Forget the ids the book has forgotten, so the set stays as small as the book.
        inner.seen_ended = still_there;

        for status in &snap.nodes {
            let node = view_of(status).name;
            let counters = status.counters.unwrap_or_default();
            let level = status.interference.as_ref().map_or(
                v1::InterferenceLevel::None,
                v1::InterferenceState::current_level,
            );
            let memo = inner.nodes.entry(node.clone()).or_default();
            let first = memo.state.is_empty();
            if !first && memo.state != status.state {
                events.push(Event {
                    t_unix_ms: now_unix_ms,
                    kind: "node".into(),
                    node: node.clone(),
                    lease: None,
                    message: format!("node {node}: {} -> {}", memo.state, status.state),
                });
            }
            if (!first || level.applies()) && memo.level.or_none() != level {
                let detail = status
                    .interference
                    .as_ref()
                    .filter(|i| !i.reason.is_empty())
                    .map(|i| format!(" ({}: {})", i.detector, i.reason))
                    .unwrap_or_default();
                let (from, to) = (level_name(memo.level), level_name(level));
                events.push(Event {
                    t_unix_ms: now_unix_ms,
                    kind: "interference_level".into(),
                    node: node.clone(),
                    lease: None,
                    message: format!("interference on {node}: {from} -> {to}{detail}"),
                });
            }
            // Counters restart with the agent: only growth within an incarnation is a reclaim.
            if !first && counters.reclaims > memo.reclaims {
                let n = counters.reclaims - memo.reclaims;
                let evicted = counters.reclaim_evictions.saturating_sub(memo.evictions);
                let moved = counters.reclaim_moves.saturating_sub(memo.moves);
                events.push(Event {
                    t_unix_ms: now_unix_ms,
                    kind: "reclaim".into(),
                    node: node.clone(),
                    lease: None,
                    message: format!(
                        "{n} reclaim(s) on {node}: {evicted} executor(s) evicted, {moved} moved \
                         (slowest so far {:.1} ms)",
                        counters.reclaim_latency_us_max as f64 / 1000.0
                    ),
                });
            }
            *memo = NodeMemo {
                state: status.state.clone(),
                level,
                reclaims: counters.reclaims,
                evictions: counters.reclaim_evictions,
                moves: counters.reclaim_moves,
            };
        }
        for e in events {
            inner.events.push_back(e);
        }
        while inner.events.len() > self.events_kept {
            inner.events.pop_front();
        }
        ended
    }

    /// Adds a utilization sample of `snap` (the oldest falls out past the window).
    pub fn sample(&self, snap: &Snapshot, now_unix_ms: i64) {
        let usage = snap
            .nodes
            .iter()
            .fold(Usage::default(), |a, n| a.add(&Usage::of(&view_of(n))));
        let sample = Sample {
            t_unix_ms: now_unix_ms,
            usage,
            leases_active: snap
                .leases
                .iter()
                .filter(|l| l.state == v1::LeaseState::Active as i32)
                .count() as u64,
            nodes_up: snap.nodes.iter().filter(|n| n.state == "up").count() as u64,
        };
        let mut inner = self.lock();
        inner.samples.push_back(sample);
        while inner.samples.len() > self.samples_kept {
            inner.samples.pop_front();
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().copied().collect()
    }

    /// The recent events, newest first.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.iter().rev().cloned().collect()
    }
}

/// The book as a scrape or the recorder sees it (taken under the lock, used after).
pub fn snapshot(shared: &Shared) -> Snapshot {
    let inner = shared.lock();
    Snapshot {
        nodes: inner.book.nodes(),
        leases: inner.book.leases(),
    }
}

/// Observes the book every [`OBSERVE_EVERY`] and samples it every `sample_every`, until
/// `shutdown` says stop.
pub async fn run(
    shared: Arc<Shared>,
    recorder: Arc<Recorder>,
    metrics: Arc<SchedulerMetrics>,
    sample_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    observe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval(sample_every);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = observe.tick() => {
                let snap = snapshot(&shared);
                for cause in recorder.observe(&snap, Now::current().unix_ms) {
                    metrics.record_lease_end(&cause);
                }
            }
            _ = sample.tick() => {
                let snap = snapshot(&shared);
                recorder.sample(&snap, Now::current().unix_ms);
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvest_core::{CpuSet, NodeView};

    fn node(name: &str, state: &str, batch: u32, function: u32) -> v1::NodeStatus {
        let mut v = NodeView {
            name: name.into(),
            ..NodeView::default()
        };
        v.cpus.total = CpuSet::first_n(4);
        v.cpus.batch = (0..batch).collect();
        v.cpus.function = (batch..batch + function).collect();
        v.cpus.idle = (batch + function..4).collect();
        v1::NodeStatus {
            view: Some(v1::NodeView::from(&v)),
            state: state.into(),
            ..v1::NodeStatus::default()
        }
    }

    fn lease(id: &str, state: v1::LeaseState, cause: v1::EndCause) -> v1::Lease {
        v1::Lease {
            id: id.into(),
            node: "n1".into(),
            user: "alice".into(),
            cpus: vec![2],
            state: state as i32,
            end_cause: cause as i32,
            end_reason: if cause == v1::EndCause::Reclaimed {
                "reclaimed by job 42".into()
            } else {
                String::new()
            },
            ..v1::Lease::default()
        }
    }

    #[test]
    fn lease_ends_are_counted_once_and_revocations_become_events() {
        let r = Recorder::new(10, 10);
        let live = Snapshot {
            nodes: vec![node("n1", "up", 2, 1)],
            leases: vec![
                lease("a", v1::LeaseState::Active, v1::EndCause::Unspecified),
                lease("b", v1::LeaseState::Active, v1::EndCause::Unspecified),
            ],
        };
        assert!(r.observe(&live, 1000).is_empty());
        assert!(r.events().is_empty(), "{:?}", r.events());
        let ended = Snapshot {
            nodes: live.nodes.clone(),
            leases: vec![
                lease("a", v1::LeaseState::Revoked, v1::EndCause::Reclaimed),
                lease("b", v1::LeaseState::Released, v1::EndCause::Released),
            ],
        };
        let mut causes = r.observe(&ended, 2000);
        causes.sort();
        assert_eq!(causes, ["reclaimed", "released"]);
        // Seen once: the next observation counts nothing again.
        assert!(r.observe(&ended, 3000).is_empty());
        let events = r.events();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (
                events[0].kind.as_str(),
                events[0].lease.as_deref(),
                events[0].t_unix_ms
            ),
            ("reclaimed", Some("a"), 2000)
        );
        assert!(
            events[0].message.contains("reclaimed by job 42"),
            "{events:?}"
        );
    }

    #[test]
    fn node_states_interference_levels_and_reclaims_become_events() {
        let r = Recorder::new(10, 3);
        let mut n = node("n1", "up", 1, 1);
        r.observe(
            &Snapshot {
                nodes: vec![n.clone()],
                leases: vec![],
            },
            1,
        );
        n.state = "down".into();
        n.counters = Some(v1::NodeCounters {
            reclaims: 1,
            reclaim_evictions: 1,
            ..v1::NodeCounters::default()
        });
        n.interference = Some(v1::InterferenceState {
            level: v1::InterferenceLevel::Freeze.into(),
            detector: "threshold".into(),
            reason: "batch IPC -30%".into(),
            ..v1::InterferenceState::default()
        });
        r.observe(
            &Snapshot {
                nodes: vec![n.clone()],
                leases: vec![],
            },
            2,
        );
        let kinds: Vec<String> = r.events().into_iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["reclaim", "interference_level", "node"]);
        let e = r.events();
        assert!(
            e[1].message.contains("none -> freeze") && e[1].message.contains("IPC"),
            "{e:?}"
        );
        assert!(e[0].message.contains("1 executor(s) evicted"), "{e:?}");
        // events_kept = 3: a fourth pushes the oldest out.
        n.state = "up".into();
        r.observe(
            &Snapshot {
                nodes: vec![n],
                leases: vec![],
            },
            3,
        );
        let e = r.events();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].message, "node n1: down -> up");
    }

    #[test]
    fn samples_are_a_ring_of_the_cluster_totals() {
        let r = Recorder::new(2, 10);
        for t in 0..3 {
            let snap = Snapshot {
                nodes: vec![node("n1", "up", 1, t), node("n2", "down", 2, 0)],
                leases: vec![lease(
                    "a",
                    v1::LeaseState::Active,
                    v1::EndCause::Unspecified,
                )],
            };
            r.sample(&snap, i64::from(t));
        }
        let s = r.samples();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].t_unix_ms, 1);
        assert_eq!(
            (
                s[1].usage.cpus.batch,
                s[1].usage.cpus.function,
                s[1].usage.cpus.total
            ),
            (3, 2, 8)
        );
        assert_eq!((s[1].leases_active, s[1].nodes_up), (1, 1));
    }
}
