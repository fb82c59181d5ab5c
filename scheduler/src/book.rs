//! The lease book: nodes as the agents report them, leases and their states, placement.
//!
//! Pure logic, no network and no clock of its own: every method that depends on time takes a
//! [`Now`], so tests drive expiry and heartbeats by hand. The service layer turns the [`Order`]s
//! it returns into messages on the agents' sessions.
//!
//! Idle arithmetic: placement sees a node's free resources as `total - batch - function` (the
//! `harvest_policies` node state), where `function` is what the scheduler's own leases hold and
//! `batch` is everything else the agent does not report idle (`total - idle - the agent's
//! function`). So a lease that is placed but not yet in the agent's report still counts, once.
//! A lease that ended holds its resources (as batch) until the agent reports them idle again, so
//! the next lease never lands on CPUs whose executor is still stopping.
//! A node that is down, or has not reported yet, has nothing free.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use harvest_core::NodeView;
use harvest_policies::{Cluster, Decision, Framework, NodeId, Request, Resources};
use harvest_proto::v1::{self, EndCause, LeaseState};
use harvest_proto::views::{self, state_name};

use crate::identity::Identity;

/// The current time, both monotonic (deadlines) and wall-clock (what the wire shows).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix_ms: i64,
}

impl Now {
    /// `instant` is taken from tokio's clock so that paused-time tests move it.
    pub fn current() -> Self {
        Self {
            instant: tokio::time::Instant::now().into_std(),
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    pub fn after(&self, d: Duration) -> Self {
        Self {
            instant: self.instant + d,
            unix_ms: self.unix_ms + d.as_millis() as i64,
        }
    }
}

/// Limits the book enforces on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub default_memory_per_core_mib: u64,
    pub heartbeat_miss_limit: u32,
    pub default_agent_heartbeat: Duration,
    pub ended_leases_kept: usize,
    /// Idle timeout of a lease that asks for none (0: never idle out).
    pub default_idle_timeout: Duration,
}

/// A lease operation the book refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    #[error("invalid lease request: {0}")]
    BadRequest(String),
    #[error("no node can take {cores} cores, {memory_mib} MiB and {gpus} GPUs now: {reason}")]
    Unschedulable {
        cores: u32,
        memory_mib: u64,
        gpus: u32,
        reason: String,
    },
    #[error("no lease {0}: `harvest leases` lists the leases")]
    UnknownLease(String),
    #[error("lease {lease} belongs to uid {owner}; uid {uid} may not release it")]
    NotOwner { lease: String, owner: u32, uid: u32 },
    #[error("node {0} has not registered")]
    UnknownNode(String),
    #[error("lease {lease} is {state} ({reason}), no longer starting")]
    NotPending {
        lease: String,
        state: String,
        reason: String,
    },
    #[error("placement failed: {0}")]
    Placement(String),
    #[error(
        "lease {lease} is held by node {holder}, not by {node}: only its node's agent may report its executor"
    )]
    NotHolder {
        lease: String,
        node: String,
        holder: String,
    },
}

/// What an agent must do.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub node: String,
    pub msg: v1::scheduler_message::Msg,
}

impl Order {
    pub fn destroy(node: &str, lease: &str, reason: &str, cause: EndCause) -> Self {
        Self {
            node: node.to_owned(),
            msg: v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                lease_id: lease.to_owned(),
                reason: reason.to_owned(),
                cause: cause as i32,
            }),
        }
    }
}

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
struct NodeEntry {
    name: String,
    view: NodeView,
    version: Option<v1::ReportVersion>,
    last_seen: Instant,
    last_report_unix_ms: i64,
    heartbeat: Duration,
    health: Health,
    /// What the agent last said beyond its view (counters, interference, Slurm's drain).
    extras: ReportExtras,
    /// Leases on this node the scheduler saw revoked, by cause name.
    revocations: BTreeMap<String, u64>,
}

/// What a slot report carries besides the view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportExtras {
    pub counters: Option<v1::NodeCounters>,
    pub interference: Option<v1::InterferenceState>,
    pub activity: Vec<v1::LeaseActivity>,
    pub draining: bool,
}

impl ReportExtras {
    pub fn from_report(r: &v1::SlotReport) -> Self {
        Self {
            counters: r.counters,
            interference: r.interference.clone(),
            activity: r.activity.clone(),
            draining: r.draining,
        }
    }

    /// True while the agent says its executors hurt a batch job.
    pub fn interfering(&self) -> bool {
        self.interference
            .as_ref()
            .is_some_and(|i| i.current_level().applies())
    }
}

/// The state a lease ends in for a cause.
pub fn state_for(cause: EndCause) -> LeaseState {
    match cause {
        EndCause::Released => LeaseState::Released,
        EndCause::Expired | EndCause::Idle => LeaseState::Expired,
        EndCause::ExecutorFailed => LeaseState::Failed,
        EndCause::Unspecified
        | EndCause::Reclaimed
        | EndCause::NodeDown
        | EndCause::NodeDrained
        | EndCause::Interference => LeaseState::Revoked,
    }
}

/// The cause's short name: "reclaimed", "node_down", ... (metrics labels, JSON).
pub fn cause_name(cause: EndCause) -> String {
    match views::cause_name(cause as i32) {
        name if name.is_empty() => "unspecified".to_owned(),
        name => name,
    }
}

#[derive(Debug, Clone)]
struct LeaseRecord {
    wire: v1::Lease,
    key: u64,
    gid: u32,
    expires_at: Instant,
    /// 0: never idles out.
    idle_timeout: Duration,
    /// The latest invocation (as the agent reports it) or renewal.
    last_active: Instant,
}

/// Nodes, leases and the placement pipeline.
#[derive(Debug)]
pub struct LeaseBook {
    limits: Limits,
    cluster: Cluster,
    framework: Framework,
    nodes: Vec<NodeEntry>,
    by_name: HashMap<String, NodeId>,
    leases: BTreeMap<String, LeaseRecord>,
    ended: VecDeque<String>,
    id_prefix: String,
    next_key: u64,
}

/// 64 bits from the kernel's random generator (getrandom(2)); if that fails (a kernel before
/// 3.17), std's per-process random hash keys, which also come from the OS.
fn unpredictable_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let mut filled = 0;
    while filled < bytes.len() {
        match rustix::rand::getrandom(&mut bytes[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!(error = %e, "getrandom failed; lease ids use std's random keys");
                use std::hash::BuildHasher;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                return std::collections::hash_map::RandomState::new().hash_one(now);
            }
        }
    }
    u64::from_ne_bytes(bytes)
}

/// Pending or active.
pub fn is_live(state: i32) -> bool {
    state == LeaseState::Pending as i32 || state == LeaseState::Active as i32
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
    /// `id_prefix` keeps lease ids unique across scheduler restarts (the start time, say).
    pub fn new(limits: Limits, framework: Framework, id_prefix: impl Into<String>) -> Self {
        Self {
            limits,
            cluster: Cluster::new(),
            framework,
            nodes: Vec::new(),
            by_name: HashMap::new(),
            leases: BTreeMap::new(),
            ended: VecDeque::new(),
            id_prefix: id_prefix.into(),
            next_key: 1,
        }
    }

    pub fn policy(&self) -> &str {
        self.framework.name()
    }

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
                });
                self.by_name.insert(node.to_owned(), id);
                id
            }
        };
        let mut orders = Vec::new();
        for info in executors {
            match self.leases.get_mut(&info.lease_id) {
                Some(rec) if is_live(rec.wire.state) && rec.wire.node == node => {
                    rec.wire.state = LeaseState::Active as i32;
                    rec.wire.cpus.clone_from(&info.cpus);
                    rec.wire.executor_address.clone_from(&info.address);
                }
                Some(rec) => {
                    let reason = format!("lease is {}", state_name(rec.wire.state));
                    let cause = EndCause::try_from(rec.wire.end_cause).unwrap_or_default();
                    orders.push(Order::destroy(node, &info.lease_id, &reason, cause));
                }
                None => self.adopt(id, node, info, &passwd_name, now),
            }
        }
        orders
    }

    fn adopt(
        &mut self,
        id: NodeId,
        node: &str,
        info: &v1::ExecutorInfo,
        passwd_name: &impl Fn(u32) -> String,
        now: Now,
    ) {
        let res = Resources::new(
            u32::try_from(info.cpus.len()).unwrap_or(u32::MAX),
            info.memory_mib,
            u32::try_from(info.gpus.len()).unwrap_or(u32::MAX),
        );
        let key = self.next_key;
        self.next_key += 1;
        // Until the node's first report the adopted leases are all the scheduler knows of it:
        // grow its total so they fit, with nothing left free.
        if self.nodes[id as usize].version.is_none() {
            self.cluster
                .update(id, |n| n.total = n.total.add(&res))
                .expect("registered node exists");
        }
        let placed = self.cluster.reserve(harvest_policies::Lease {
            id: key,
            client: u64::from(info.uid),
            node: id,
            res,
        });
        if let Err(e) = placed {
            tracing::warn!(lease = %info.lease_id, node, error = %e, "adopted lease does not fit the node's last report");
        }
        let left_ms = (info.expires_unix_ms - now.unix_ms).max(0) as u64;
        tracing::info!(lease = %info.lease_id, node, uid = info.uid, "adopted a running executor");
        self.leases.insert(
            info.lease_id.clone(),
            LeaseRecord {
                wire: v1::Lease {
                    id: info.lease_id.clone(),
                    node: node.to_owned(),
                    uid: info.uid,
                    user: passwd_name(info.uid),
                    cpus: info.cpus.clone(),
                    memory_mib: info.memory_mib,
                    gpus: info.gpus.clone(),
                    state: LeaseState::Active as i32,
                    executor_address: info.address.clone(),
                    created_unix_ms: now.unix_ms,
                    expires_unix_ms: info.expires_unix_ms,
                    end_reason: String::new(),
                    end_cause: EndCause::Unspecified as i32,
                    idle_timeout_ms: self.limits.default_idle_timeout.as_millis() as u64,
                    last_active_unix_ms: now.unix_ms,
                },
                key,
                gid: info.uid,
                expires_at: now.instant + Duration::from_millis(left_ms),
                idle_timeout: self.limits.default_idle_timeout,
                last_active: now.instant,
            },
        );
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

    /// Places a lease for `who` and returns the order that starts its executor. The lease is
    /// PENDING until [`executor_ready`](Self::executor_ready) or [`end`](Self::end).
    pub fn place(
        &mut self,
        req: &v1::AcquireLeaseRequest,
        who: &Identity,
        now: Now,
    ) -> Result<(v1::Lease, Order), BookError> {
        if req.cores == 0 {
            return Err(BookError::BadRequest(
                "cores must be at least 1 (the executor needs a core)".into(),
            ));
        }
        let lifetime = match req.lifetime_ms {
            0 => self.limits.default_lifetime,
            ms => Duration::from_millis(ms),
        };
        if lifetime > self.limits.max_lifetime {
            return Err(BookError::BadRequest(format!(
                "lifetime {lifetime:?} is longer than the scheduler's maximum {:?}",
                self.limits.max_lifetime
            )));
        }
        let library = req
            .library
            .as_ref()
            .and_then(|l| l.source.as_ref())
            .ok_or_else(|| {
                BookError::BadRequest("no function library: send its content or a path".into())
            })?;
        let memory_mib = match req.memory_mib {
            0 => u64::from(req.cores) * self.limits.default_memory_per_core_mib,
            m => m,
        };
        let res = Resources::new(req.cores, memory_mib, req.gpus);
        let key = self.next_key;
        self.next_key += 1;
        let decision = self
            .framework
            .place(
                &mut self.cluster,
                &Request {
                    lease: key,
                    client: u64::from(who.uid),
                    res,
                    data_nodes: &[],
                },
            )
            .map_err(|e| BookError::Placement(e.to_string()))?;
        let node = match decision {
            Decision::Placed(node) => node,
            Decision::Unschedulable {
                examined,
                rejections,
            } => {
                let up = self.nodes.iter().filter(|n| n.health == Health::Up).count();
                let reason = if rejections.is_empty() {
                    format!(
                        "{} node(s) known, {up} up; none has {} idle core(s) and {} MiB idle \
                         memory ({examined} examined)",
                        self.nodes.len(),
                        res.cores,
                        res.mem_mib
                    )
                } else {
                    rejections
                        .iter()
                        .map(|r| format!("{} rejected {} node(s): {}", r.plugin, r.nodes, r.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                return Err(BookError::Unschedulable {
                    cores: res.cores,
                    memory_mib: res.mem_mib,
                    gpus: res.gpus,
                    reason,
                });
            }
        };
        let node_name = self.nodes[node as usize].name.clone();
        // 64 random bits: a lease id names a directory, a cgroup and a lease others may not end,
        // so no one can guess the next one from the ones they saw.
        let id = format!("{}-{key}-{:016x}", self.id_prefix, unpredictable_u64());
        let expires_unix_ms = now.unix_ms + lifetime.as_millis() as i64;
        let idle_timeout = match req.idle_timeout_ms {
            0 => self.limits.default_idle_timeout,
            ms => Duration::from_millis(ms),
        };
        let wire = v1::Lease {
            id: id.clone(),
            node: node_name.clone(),
            uid: who.uid,
            user: who.name.clone(),
            cpus: Vec::new(),
            memory_mib,
            gpus: Vec::new(),
            state: LeaseState::Pending as i32,
            executor_address: String::new(),
            created_unix_ms: now.unix_ms,
            expires_unix_ms,
            end_reason: String::new(),
            end_cause: EndCause::Unspecified as i32,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
            last_active_unix_ms: now.unix_ms,
        };
        self.leases.insert(
            id.clone(),
            LeaseRecord {
                wire: wire.clone(),
                key,
                gid: who.gid,
                expires_at: now.instant + lifetime,
                idle_timeout,
                last_active: now.instant,
            },
        );
        tracing::info!(lease = %id, node = %node_name, uid = who.uid, ?res, "lease placed");
        let create = v1::CreateExecutor {
            lease_id: id,
            uid: who.uid,
            gid: who.gid,
            cores: res.cores,
            memory_mib,
            gpus: res.gpus,
            library: Some(v1::FunctionLibrary {
                source: Some(library.clone()),
            }),
            options: req.executor,
            expires_unix_ms,
            idle_timeout_ms: idle_timeout.as_millis() as u64,
        };
        let order = Order {
            node: node_name,
            msg: v1::scheduler_message::Msg::Create(create),
        };
        Ok((wire, order))
    }

    /// Whether `node`'s agent may report on `lease`'s executor: only the node that holds the
    /// lease may (another agent's Ready would redirect the lease's client to an address of its
    /// choosing; its Exited would end someone else's lease). A lease the book does not know is
    /// no one's: the event is judged by the call it leads to (a late ready is answered with
    /// DestroyExecutor to the sender; an exit of an unknown lease changes nothing).
    pub fn check_holder(&self, node: &str, lease: &str) -> Result<(), BookError> {
        match self.leases.get(lease) {
            Some(rec) if rec.wire.node != node => Err(BookError::NotHolder {
                lease: lease.to_owned(),
                node: node.to_owned(),
                holder: rec.wire.node.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The agent reports the lease's executor listening: the lease becomes ACTIVE.
    pub fn executor_ready(
        &mut self,
        lease: &str,
        info: &v1::ExecutorInfo,
    ) -> Result<v1::Lease, BookError> {
        let rec = self
            .leases
            .get_mut(lease)
            .ok_or_else(|| BookError::UnknownLease(lease.to_owned()))?;
        if rec.wire.state != LeaseState::Pending as i32 {
            return Err(BookError::NotPending {
                lease: lease.to_owned(),
                state: state_name(rec.wire.state),
                reason: rec.wire.end_reason.clone(),
            });
        }
        rec.wire.state = LeaseState::Active as i32;
        rec.wire.cpus.clone_from(&info.cpus);
        rec.wire.gpus.clone_from(&info.gpus);
        rec.wire.executor_address.clone_from(&info.address);
        Ok(rec.wire.clone())
    }

    /// The agent moved a live lease's executor to other CPUs (a batch step took some of its
    /// own): the lease lives on with the new ones.
    pub fn executor_moved(&mut self, lease: &str, info: &v1::ExecutorInfo) -> bool {
        match self.leases.get_mut(lease) {
            Some(rec) if is_live(rec.wire.state) => {
                rec.wire.cpus.clone_from(&info.cpus);
                rec.wire.gpus.clone_from(&info.gpus);
                true
            }
            _ => false,
        }
    }

    /// Ends a live lease in `state` with `reason` and frees its reservation. Returns the lease
    /// as it ended, or `None` when it was not live (ending is idempotent).
    pub fn end(&mut self, lease: &str, state: LeaseState, reason: &str) -> Option<v1::Lease> {
        let cause = match state {
            LeaseState::Released => EndCause::Released,
            LeaseState::Expired => EndCause::Expired,
            LeaseState::Failed => EndCause::ExecutorFailed,
            _ => EndCause::Unspecified,
        };
        self.end_lease(lease, state, cause, reason, true)
    }

    /// Ends a live lease for `cause` (its state follows from the cause, see [`state_for`]).
    pub fn end_for(&mut self, lease: &str, cause: EndCause, reason: &str) -> Option<v1::Lease> {
        self.end_lease(lease, state_for(cause), cause, reason, true)
    }

    /// Ends a lease on the agent's word that its executor failed to start or exited: the agent
    /// has already given its resources back, so they are free at once.
    /// `state` is the lease's end state; `cause` says why (unspecified: judged by the state).
    pub fn end_by_agent(
        &mut self,
        lease: &str,
        state: LeaseState,
        cause: EndCause,
        reason: &str,
    ) -> Option<v1::Lease> {
        self.end_lease(lease, state, cause, reason, false)
    }

    fn end_lease(
        &mut self,
        lease: &str,
        state: LeaseState,
        cause: EndCause,
        reason: &str,
        hold: bool,
    ) -> Option<v1::Lease> {
        let rec = self.leases.get_mut(lease)?;
        if !is_live(rec.wire.state) {
            return None;
        }
        rec.wire.state = state as i32;
        rec.wire.end_reason = reason.to_owned();
        rec.wire.end_cause = cause as i32;
        if state == LeaseState::Revoked
            && let Some(&id) = self.by_name.get(&rec.wire.node)
        {
            *self.nodes[id as usize]
                .revocations
                .entry(cause_name(cause))
                .or_default() += 1;
        }
        let ended = rec.wire.clone();
        let key = rec.key;
        // The executor is still stopping on its node: until the agent's next report, its
        // resources are taken (as if by batch), never handed to the next lease.
        if let Some(released) = self.framework.release(&mut self.cluster, key)
            && hold
        {
            let _ = self.cluster.update(released.node, |n| {
                n.batch = n.batch.add(&released.res);
            });
        }
        tracing::info!(
            lease,
            state = state_name(state as i32),
            reason,
            "lease ended"
        );
        self.ended.push_back(lease.to_owned());
        while self.ended.len() > self.limits.ended_leases_kept {
            if let Some(old) = self.ended.pop_front() {
                self.leases.remove(&old);
            }
        }
        Some(ended)
    }

    /// The lease, when `who` is its user or root.
    fn owned(&mut self, lease: &str, who: &Identity) -> Result<&mut LeaseRecord, BookError> {
        let rec = self
            .leases
            .get_mut(lease)
            .ok_or_else(|| BookError::UnknownLease(lease.to_owned()))?;
        if rec.wire.uid != who.uid && !who.is_root() {
            return Err(BookError::NotOwner {
                lease: lease.to_owned(),
                owner: rec.wire.uid,
                uid: who.uid,
            });
        }
        Ok(rec)
    }

    /// `who` releases a lease: only its user or root may. Returns the order that stops its
    /// executor (none when the lease had already ended).
    pub fn release(&mut self, lease: &str, who: &Identity) -> Result<Option<Order>, BookError> {
        let node = self.owned(lease, who)?.wire.node.clone();
        let reason = format!("released by uid {}", who.uid);
        Ok(self
            .end_for(lease, EndCause::Released, &reason)
            .map(|_| Order::destroy(&node, lease, &reason, EndCause::Released)))
    }

    /// `who` says it still uses the lease (RenewLease): its idle clock restarts. Returns the
    /// lease as it is, ended or not, so a client learns why its lease ended.
    pub fn renew(&mut self, lease: &str, who: &Identity, now: Now) -> Result<v1::Lease, BookError> {
        let rec = self.owned(lease, who)?;
        if is_live(rec.wire.state) {
            rec.last_active = now.instant;
            rec.wire.last_active_unix_ms = now.unix_ms;
        }
        Ok(rec.wire.clone())
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
                && rec.wire.node == node
                && a.last_invocation_unix_ms > rec.wire.last_active_unix_ms
            {
                let ago =
                    Duration::from_millis((now.unix_ms - a.last_invocation_unix_ms).max(0) as u64);
                rec.last_active = now.instant.checked_sub(ago).unwrap_or(now.instant);
                rec.wire.last_active_unix_ms = a.last_invocation_unix_ms;
            }
        }
        let draining = extras.draining;
        let blocked = draining || extras.interfering();
        let was_draining = self.nodes[id as usize].extras.draining;
        self.nodes[id as usize].extras = extras;
        if blocked {
            // No placement here while Slurm drains the node or executors hurt its jobs.
            let _ = self
                .cluster
                .update(id, |n| n.batch = n.total.saturating_sub(&n.function));
        }
        if !draining {
            return Vec::new();
        }
        if !was_draining {
            tracing::warn!(
                node,
                "Slurm drains the node: no new leases, its leases revoked"
            );
        }
        self.revoke_node(node, EndCause::NodeDrained, "node drained by Slurm")
    }

    fn revoke_node(&mut self, node: &str, cause: EndCause, reason: &str) -> Vec<Order> {
        let on_node: Vec<String> = self
            .leases
            .values()
            .filter(|r| r.wire.node == node && is_live(r.wire.state))
            .map(|r| r.wire.id.clone())
            .collect();
        on_node
            .into_iter()
            .filter_map(|lease| {
                self.end_for(&lease, cause, reason)
                    .map(|_| Order::destroy(node, &lease, reason, cause))
            })
            .collect()
    }

    /// Expires leases past their lifetime and takes down nodes that missed their heartbeats
    /// (revoking their leases). Returns the orders for the agents.
    pub fn tick(&mut self, now: Now) -> Vec<Order> {
        let mut orders = Vec::new();
        let expired: Vec<(String, String)> = self
            .leases
            .values()
            .filter(|r| is_live(r.wire.state) && r.expires_at <= now.instant)
            .map(|r| (r.wire.id.clone(), r.wire.node.clone()))
            .collect();
        for (lease, node) in expired {
            self.end_for(&lease, EndCause::Expired, "lifetime over");
            orders.push(Order::destroy(
                &node,
                &lease,
                "lease expired",
                EndCause::Expired,
            ));
        }
        let idle: Vec<(String, String, Duration)> = self
            .leases
            .values()
            .filter(|r| {
                r.wire.state == LeaseState::Active as i32
                    && !r.idle_timeout.is_zero()
                    && now.instant >= r.last_active + r.idle_timeout
            })
            .map(|r| (r.wire.id.clone(), r.wire.node.clone(), r.idle_timeout))
            .collect();
        for (lease, node, timeout) in idle {
            let reason = format!("idle for {timeout:?}: no invocation and no renewal");
            self.end_for(&lease, EndCause::Idle, &reason);
            orders.push(Order::destroy(&node, &lease, &reason, EndCause::Idle));
        }
        let miss = self.limits.heartbeat_miss_limit;
        let late: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.health == Health::Up && now.instant >= n.last_seen + n.heartbeat * miss
            })
            .map(|(id, _)| id as NodeId)
            .collect();
        for id in late {
            orders.extend(self.take_down(id));
        }
        orders
    }

    fn take_down(&mut self, id: NodeId) -> Vec<Order> {
        let name = self.nodes[id as usize].name.clone();
        tracing::warn!(node = %name, "node missed its heartbeats: down, its leases revoked");
        self.nodes[id as usize].health = Health::Down;
        self.cluster
            .update(id, |n| n.batch = n.total)
            .expect("registered node exists");
        self.revoke_node(&name, EndCause::NodeDown, "node down")
    }

    pub fn lease(&self, id: &str) -> Option<&v1::Lease> {
        self.leases.get(id).map(|r| &r.wire)
    }

    /// The gid the lease's executor runs as.
    pub fn lease_gid(&self, id: &str) -> Option<u32> {
        self.leases.get(id).map(|r| r.gid)
    }

    /// Every lease the book still holds (live ones and the most recent ended ones), by id.
    pub fn leases(&self) -> Vec<v1::Lease> {
        self.leases.values().map(|r| r.wire.clone()).collect()
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
