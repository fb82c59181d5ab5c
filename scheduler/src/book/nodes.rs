//! The node registry: agents registering, their versioned slot reports (the heartbeat), what
//! they say besides (counters, interference, Slurm's drain, the leases they hold), nodes going
//! down and coming back, and the idle arithmetic placement sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harvest_core::NodeView;
use harvest_policies::{NodeId, Resources};
use harvest_proto::v1::{self, EndCause};
use harvest_proto::views::state_name;

use super::{BookError, Event, LeaseBook, Now, Order};

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Applied,
    /// Its version was not newer than the stored one: ignored.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

#[derive(Debug, Clone)]
pub(super) struct NodeEntry {
    pub(super) name: String,
    pub(super) view: NodeView,
    pub(super) version: Option<v1::ReportVersion>,
    pub(super) last_seen: Instant,
    pub(super) last_report_unix_ms: i64,
    pub(super) heartbeat: Duration,
    pub(super) health: Health,
    /// What the agent last said beyond its view (counters, interference, Slurm's drain).
    pub(super) extras: ReportExtras,
    /// Leases on this node the scheduler saw revoked, by cause name.
    pub(super) revocations: BTreeMap<String, u64>,
    /// An operator drained the node from harvesting (the reason): nothing is placed there.
    pub(super) operator_drain: Option<String>,
}

/// What a slot report carries besides the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportExtras {
    pub counters: Option<v1::NodeCounters>,
    pub interference: Option<v1::InterferenceState>,
    pub activity: Vec<v1::LeaseActivity>,
    pub draining: bool,
    /// Every lease the agent holds now.
    pub leases: Vec<String>,
}

impl ReportExtras {
    pub fn from_report(r: &v1::SlotReport) -> Self {
        Self {
            counters: r.counters,
            interference: r.interference.clone(),
            activity: r.activity.clone(),
            draining: r.draining,
            leases: r.leases.clone(),
        }
    }

    /// True while the agent says its executors hurt a batch job.
    pub fn interfering(&self) -> bool {
        self.interference
            .as_ref()
            .is_some_and(|i| i.current_level().applies())
    }
}

fn counts(view: &NodeView) -> (Resources, Resources, Resources) {
    let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
    let total = Resources::new(
        n(view.cpus.total.len()),
        view.memory_mib.total,
        n(view.gpus.total.len()),
    );
    let idle = Resources::new(
        n(view.cpus.idle.len()),
        view.memory_mib.idle,
        n(view.gpus.idle.len()),
    );
    let function = Resources::new(
        n(view.cpus.function.len()),
        view.memory_mib.function,
        n(view.gpus.function.len()),
    );
    (total, idle, function)
}

impl LeaseBook {
    /// An agent (re)registers. Its running executors become ACTIVE leases when the scheduler
    /// does not know them (it restarted); executors of leases that have ended are ordered away.
    pub fn register(
        &mut self,
        node: &str,
        heartbeat: Duration,
        executors: &[v1::ExecutorInfo],
        passwd_name: impl Fn(u32) -> String,
        now: Now,
    ) -> Vec<Order> {
        let heartbeat = if heartbeat.is_zero() {
            self.limits.default_agent_heartbeat
        } else {
            heartbeat
        };
        let id = match self.by_name.get(node) {
            Some(&id) => {
                let e = &mut self.nodes[id as usize];
                e.heartbeat = heartbeat;
                e.last_seen = now.instant;
                // A new session orders its own reports: an agent that restarted (or replaced a
                // dead one) is never held back by the versions of the one before.
                e.version = None;
                id
            }
            None => {
                let id = self.cluster.add_node(0, Resources::ZERO);
                self.nodes.push(NodeEntry {
                    name: node.to_owned(),
                    view: NodeView {
                        name: node.to_owned(),
                        ..NodeView::default()
                    },
                    version: None,
                    last_seen: now.instant,
                    last_report_unix_ms: 0,
                    heartbeat,
                    health: Health::Up,
                    extras: ReportExtras::default(),
                    revocations: BTreeMap::new(),
                    operator_drain: None,
                });
                self.by_name.insert(node.to_owned(), id);
                id
            }
        };
        let mut orders = Vec::new();
        for info in executors {
            match self.leases.get_mut(&info.lease_id) {
                Some(rec) if rec.is_live() && rec.node == node => {
                    if let Ok(next) = rec.phase.next(Event::Running) {
                        rec.phase = next;
                    }
                    rec.cpus.clone_from(&info.cpus);
                    rec.executor_address.clone_from(&info.address);
                }
                Some(rec) => {
                    let reason = format!("lease is {}", state_name(rec.phase.state() as i32));
                    let cause = rec.phase.cause();
                    orders.push(Order::destroy(node, &info.lease_id, &reason, cause));
                }
                None => orders.extend(self.adopt(id, node, info, &passwd_name, now)),
            }
        }
        orders
    }

    /// A slot report: replaces the node's view when its version is newer than the stored one.
    /// Any newer report is a heartbeat and brings a down node back up.
    pub fn report(
        &mut self,
        node: &str,
        version: v1::ReportVersion,
        view: &NodeView,
        now: Now,
    ) -> Result<ReportOutcome, BookError> {
        let id = *self
            .by_name
            .get(node)
            .ok_or_else(|| BookError::UnknownNode(node.to_owned()))?;
        let entry = &mut self.nodes[id as usize];
        if let Some(stored) = &entry.version
            && !version.is_newer_than(stored)
        {
            tracing::debug!(node, ?version, ?stored, "stale slot report ignored");
            return Ok(ReportOutcome::Stale);
        }
        if entry.health == Health::Down {
            tracing::info!(node, "node reports again: up");
        }
        entry.version = Some(version);
        entry.view = view.clone();
        entry.view.name = node.to_owned();
        entry.last_seen = now.instant;
        entry.last_report_unix_ms = now.unix_ms;
        entry.health = Health::Up;
        let (total, idle, function) = counts(view);
        // What the agent reports as lent counts as ours only up to what our live leases hold:
        // the rest belongs to leases that ended here but whose executors the agent is still
        // tearing down, and is no more free than a batch job's CPUs until the agent says so.
        let held = self
            .cluster
            .node(id)
            .map(|n| n.function)
            .unwrap_or_default();
        let ours = Resources::new(
            function.cores.min(held.cores),
            function.mem_mib.min(held.mem_mib),
            function.gpus.min(held.gpus),
        );
        let batch = total.saturating_sub(&idle).saturating_sub(&ours);
        self.cluster
            .update(id, |n| {
                n.total = total;
                n.batch = batch;
            })
            .expect("registered node exists");
        Ok(ReportOutcome::Applied)
    }

    /// What a node's report says besides its view: counters and interference (kept for
    /// `ListNodes`), the executors' latest invocations (idle clocks), and Slurm draining the
    /// node (its live leases are revoked). Returns the orders that stop revoked executors.
    pub fn report_extras(&mut self, node: &str, extras: ReportExtras, now: Now) -> Vec<Order> {
        let Some(&id) = self.by_name.get(node) else {
            return Vec::new();
        };
        for a in &extras.activity {
            if let Some(rec) = self.leases.get_mut(&a.lease_id)
                && rec.node == node
                && a.last_invocation_unix_ms > rec.last_active_unix_ms
            {
                let ago =
                    Duration::from_millis((now.unix_ms - a.last_invocation_unix_ms).max(0) as u64);
                rec.last_active = now.instant.checked_sub(ago).unwrap_or(now.instant);
                rec.last_active_unix_ms = a.last_invocation_unix_ms;
            }
        }
        let mut orders = self.destroy_again(node, &extras.leases, now);
        let draining = extras.draining;
        let blocked =
            draining || extras.interfering() || self.nodes[id as usize].operator_drain.is_some();
        let was_draining = self.nodes[id as usize].extras.draining;
        self.nodes[id as usize].extras = extras;
        if blocked {
            // No placement here while Slurm or an operator drains the node or executors hurt
            // its jobs.
            self.block_placement(id);
        }
        if !draining {
            return orders;
        }
        if !was_draining {
            tracing::warn!(
                node,
                "Slurm drains the node: no new leases, its leases revoked"
            );
        }
        orders.extend(self.revoke_node(node, EndCause::NodeDrained, "node drained by Slurm"));
        orders
    }

    /// Leaves the node no idle capacity in the placement model (until its next report).
    pub(super) fn block_placement(&mut self, id: NodeId) {
        let _ = self
            .cluster
            .update(id, |n| n.batch = n.total.saturating_sub(&n.function));
    }

    pub(super) fn take_down(&mut self, id: NodeId) -> Vec<Order> {
        let name = self.nodes[id as usize].name.clone();
        tracing::warn!(node = %name, "node missed its heartbeats: down, its leases revoked");
        self.nodes[id as usize].health = Health::Down;
        self.cluster
            .update(id, |n| n.batch = n.total)
            .expect("registered node exists");
        self.revoke_node(&name, EndCause::NodeDown, "node down")
    }

    pub fn health(&self, node: &str) -> Option<Health> {
        self.by_name
            .get(node)
            .map(|&id| self.nodes[id as usize].health)
    }

    /// Free resources placement sees on a node.
    pub fn free(&self, node: &str) -> Option<Resources> {
        let id = *self.by_name.get(node)?;
        self.cluster.node(id).ok().map(|n| n.free())
    }

    /// Every node, in registration order.
    pub fn nodes(&self) -> Vec<v1::NodeStatus> {
        self.nodes
            .iter()
            .map(|n| v1::NodeStatus {
                view: Some(v1::NodeView::from(&n.view)),
                state: match n.health {
                    Health::Down => "down",
                    Health::Up if n.operator_drain.is_some() => "drained",
                    Health::Up if n.extras.draining => "draining",
                    Health::Up => "up",
                }
                .to_owned(),
                version: n.version,
                last_report_unix_ms: n.last_report_unix_ms,
                counters: n.extras.counters,
                interference: n.extras.interference.clone(),
                revocations: n.revocations.clone().into_iter().collect(),
            })
            .collect()
    }
}
