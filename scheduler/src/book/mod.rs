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
//!
//! The parts, each in its own file:
//! - [`lifecycle`]: the lease state machine (typed phases and events, one transition function).
//! - `nodes`: the node registry, reports and heartbeats, the idle arithmetic.
//! - `placement`: requests through the policy, the lease they make, ready and moved events.
//! - `ends`: the one way a lease ends and all that leads to it (release, expiry, idle, revocation
//!   of a node's leases, an operator's revoke).
//! - `recovery`: adoption from the agents after a restart or takeover, duplicates of a request,
//!   DestroyExecutor sent again until the agent acts on it.
//! - here: the book itself, the lease record (a domain type; the wire's `v1::Lease` is a view),
//!   and the read side (lease, secret, usage, listings).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use harvest_core::invoke::auth::LeaseSecret;
use harvest_policies::{Cluster, Framework, NodeId};
use harvest_proto::v1::{self, EndCause, LeaseState};
use harvest_proto::views::{self};

use crate::identity::Identity;

mod ends;
pub mod lifecycle;
mod nodes;
mod placement;
mod recovery;

pub use placement::held_memory_mib;

pub use lifecycle::{Event, Phase, state_for};
use nodes::NodeEntry;
pub use nodes::{Health, ReportExtras, ReportOutcome};

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
    /// A live lease already answers this acquisition (its request id): the caller waits for
    /// it instead of placing another.
    #[error("lease {0} already answers this request")]
    SameRequest(String),
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

/// The cause's short name: "reclaimed", "node_down", ... (metrics labels, JSON).
pub fn cause_name(cause: EndCause) -> String {
    match views::cause_name(cause as i32) {
        name if name.is_empty() => "unspecified".to_owned(),
        name => name,
    }
}

/// A lease as the book keeps it: the domain record, of which the wire's `v1::Lease` is a view
/// ([`LeaseRecord::wire`]). Its state is its [`Phase`], changed only by [`Phase::next`].
#[derive(Debug, Clone)]
struct LeaseRecord {
    id: String,
    node: String,
    uid: u32,
    /// The owner's name (passwd), for listings.
    user: String,
    /// The executor's CPUs, address and GPUs, once its agent reports them.
    cpus: Vec<u32>,
    memory_mib: u64,
    gpus: Vec<u32>,
    executor_address: String,
    created_unix_ms: i64,
    expires_unix_ms: i64,
    last_active_unix_ms: i64,
    phase: Phase,
    key: u64,
    gid: u32,
    /// Cores asked for (the wire's `cpus` stay empty until the executor is ready).
    cores: u32,
    /// Proves the owner to the executor; `None` for a lease adopted from an agent (the
    /// scheduler that made it is gone, the owner's client still has it).
    secret: Option<LeaseSecret>,
    expires_at: Instant,
    /// 0: never idles out.
    idle_timeout: Duration,
    /// The latest invocation (as the agent reports it) or renewal.
    last_active: Instant,
    /// The client's request id (empty: none): a retried acquisition finds the lease by it.
    request_id: String,
    /// A memory lease's region and CPU cap.
    memory: Option<harvest_core::region::MemorySpec>,
}

impl LeaseRecord {
    /// What the wire shows of it; never its secret (the owner's answers add it).
    fn wire(&self) -> v1::Lease {
        v1::Lease {
            id: self.id.clone(),
            node: self.node.clone(),
            uid: self.uid,
            user: self.user.clone(),
            cpus: self.cpus.clone(),
            memory_mib: self.memory_mib,
            gpus: self.gpus.clone(),
            state: self.phase.state() as i32,
            executor_address: self.executor_address.clone(),
            created_unix_ms: self.created_unix_ms,
            expires_unix_ms: self.expires_unix_ms,
            end_reason: self.phase.reason().to_owned(),
            end_cause: self.phase.cause() as i32,
            idle_timeout_ms: self.idle_timeout.as_millis() as u64,
            last_active_unix_ms: self.last_active_unix_ms,
            secret: Vec::new(),
            memory: self.memory.map(Into::into),
        }
    }

    fn is_live(&self) -> bool {
        self.phase.is_live()
    }
}

/// When an ended lease's resources are free for the next lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freed {
    /// The agent has given them back already (it reported the executor gone).
    Now,
    /// Once the agent's next report shows them idle (its executor is still stopping).
    WithNextReport,
}

/// How long an ended lease's executor may still be in its agent's reports before the
/// DestroyExecutor is sent again (the order was lost, or the agent restarted before acting).
pub const DESTROY_RESEND_AFTER: Duration = Duration::from_secs(2);

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
    /// Ended leases their agent still reports, with when the DestroyExecutor was last sent
    /// (or the lease first seen so): orders are re-sent until the agent no longer lists them.
    stopping: HashMap<String, Instant>,
}

/// 64 bits from the kernel's random generator.
fn unpredictable_u64() -> u64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    u64::from_ne_bytes(bytes)
}

/// Fills `buf` from the kernel's random generator (getrandom(2), which blocks only until the
/// pool is first seeded at boot). There is no fallback: a lease id must not be guessable, and a
/// kernel without getrandom (before 3.17) cannot run harvest.
fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => panic!("getrandom(2) failed ({e}): no unpredictable bytes for lease ids"),
        }
    }
}

/// Pending or active.
pub fn is_live(state: i32) -> bool {
    state == LeaseState::Pending as i32 || state == LeaseState::Active as i32
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
            stopping: HashMap::new(),
        }
    }

    pub fn policy(&self) -> &str {
        self.framework.name()
    }

    /// The live lease of `uid` that answered the acquisition `request_id` (never for an empty
    /// id).
    pub fn by_request(&self, uid: u32, request_id: &str) -> Option<String> {
        if request_id.is_empty() {
            return None;
        }
        self.leases
            .iter()
            .find(|(_, r)| r.uid == uid && r.request_id == request_id && r.is_live())
            .map(|(id, _)| id.clone())
    }

    /// The lease, when `who` is its user or root.
    fn owned(&mut self, lease: &str, who: &Identity) -> Result<&mut LeaseRecord, BookError> {
        let rec = self
            .leases
            .get_mut(lease)
            .ok_or_else(|| BookError::UnknownLease(lease.to_owned()))?;
        if rec.uid != who.uid && !who.is_root() {
            return Err(BookError::NotOwner {
                lease: lease.to_owned(),
                owner: rec.uid,
                uid: who.uid,
            });
        }
        Ok(rec)
    }

    /// Every live lease not of `uid`, as totals.
    pub fn others_totals(&self, uid: u32) -> v1::LeaseTotals {
        let mut t = v1::LeaseTotals::default();
        let mut users = std::collections::BTreeSet::new();
        for r in self.leases.values() {
            if r.uid != uid && r.is_live() {
                t.leases += 1;
                t.cores += r.cores;
                t.memory_mib += r.memory_mib;
                users.insert(r.uid);
            }
        }
        t.users = users.len() as u32;
        t
    }

    /// The lease as the wire shows it (without its secret).
    pub fn lease(&self, id: &str) -> Option<v1::Lease> {
        self.leases.get(id).map(LeaseRecord::wire)
    }

    /// The gid the lease's executor runs as.
    /// The lease's secret, for its owner's answers only (AcquireLease, GetLease).
    pub fn secret(&self, id: &str) -> Option<&LeaseSecret> {
        self.leases.get(id).and_then(|r| r.secret.as_ref())
    }

    /// What the live leases of `uid` (or, with `by_gid`, of primary group `id`) hold.
    pub fn usage(&self, id: u32, by_gid: bool) -> crate::access::Usage {
        let mut u = crate::access::Usage::default();
        for r in self.leases.values() {
            let owner = if by_gid { r.gid } else { r.uid };
            if owner == id && r.is_live() {
                u.add(u64::from(r.cores), r.memory_mib);
            }
        }
        u
    }

    pub fn lease_gid(&self, id: &str) -> Option<u32> {
        self.leases.get(id).map(|r| r.gid)
    }

    /// Every lease the book still holds (live ones and the most recent ended ones), by id.
    pub fn leases(&self) -> Vec<v1::Lease> {
        self.leases.values().map(|r| r.wire()).collect()
    }
}

#[cfg(test)]
mod tests;
