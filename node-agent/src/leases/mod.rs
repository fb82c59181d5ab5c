//! Leases: one task per lease, each the only writer of its lease's cgroup and process.
//!
//! [`LeaseSupervisor`] turns the scheduler's orders into lease tasks ([`task`]) and routes
//! messages to them: the scheduler's destroy, reclaim's evict and move ([`crate::reclaim`]), the
//! interference controller's weight, quota and freeze ([`Control`]). Each task walks a typed
//! state machine, `Reserved → Starting → Ready → Stopping(cause) → Gone`, and is the one place a
//! lease ends: SIGTERM, SIGKILL after a grace, every process of the cgroup killed, the cgroup and
//! the directory removed, the ledger told, one [`LeaseEvent`] sent. A task answers messages at
//! every step, so an eviction never waits behind a slow start.
//!
//! - [`task`]: the lease task and its states.
//! - [`parent`]: the group all lease groups live under (its weight, SCHED_IDLE, the reclaim boost).
//! - [`control`]: the interference controls a lease task applies to its group.
//! - [`adopt`]: after a harvestd restart, the leases whose executors still run get a task again.
//! - [`activity`]: the executors' activity files (latest invocation, counts, durations).
//! - [`process`]: the process trait (real: `harvestd exec-lease`; fake in tests).
//! - [`launch`]: the lease directory, the executor's command line, `exec-lease` itself.
//! - [`log`]: the executor's output, drained into its log up to a cap.
//! - [`identity`]: whom an executor may run as (uid minimum, primary group, no system account).
//! - [`safefs`]: root's file operations in a user-owned lease directory (no name followed).

pub mod activity;
pub mod adopt;
pub mod control;
pub mod identity;
pub mod launch;
pub mod log;
pub mod parent;
pub mod process;
pub mod safefs;
pub mod task;
#[cfg(test)]
pub mod testing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harvest_core::CpuSet;
use harvest_proto::v1::EndCause;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cgroup::Cgroups;
use crate::lease::{ExecutorInfo, LeaseError, LeaseRequest};
use crate::ledger_task::LedgerHandle;
pub use activity::{Activity, DURATION_BOUNDS_S};
pub use control::LeaseControl;
use launch::{LibrarySource, ServeOptions};
pub use parent::ParentGroup;
use process::Processes;

/// How often a starting executor's ready file and a stopping one's pid are checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often a ready executor's pid is checked (besides its exit, for an executor re-adopted
/// after a restart, whose exit nobody waits on).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The CPU weight an evicted executor's group gets so that its killed tasks exit at once (ten
/// times a normal cgroup's: they only run their exit).
pub const EXIT_CPU_WEIGHT: u64 = 1000;
/// How often an evicted executor's cgroup is checked for processes left (reclaim is on the
/// batch step's critical path).
pub const EVICT_POLL_INTERVAL: Duration = Duration::from_micros(500);
/// How much of the executor's log a failure message quotes.
pub const LOG_TAIL_BYTES: usize = 600;
/// Messages queued per lease task.
pub const LEASE_QUEUE: usize = 32;

/// What the executors are run with.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub node: String,
    /// Lease directories go in `<state_dir>/leases/<id>`.
    pub state_dir: PathBuf,
    pub executor_path: PathBuf,
    /// The address executors listen on.
    pub executor_bind: std::net::IpAddr,
    /// The address clients are given, with each executor's port (`executor_advertise_address`).
    pub executor_advertise: std::net::IpAddr,
    /// Whom executors may run as.
    pub identity: identity::IdentityPolicy,
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    /// v2 CPU weight of a lease group (v1: converted to cpu.shares).
    pub cpu_weight: u64,
    /// How often a ready executor's pid is checked ([`DEFAULT_CHECK_INTERVAL`]).
    pub check_interval: Duration,
    /// The most tasks (processes and threads) a lease group may hold.
    pub pids_max: u64,
    /// Where a lent GPU's device node is looked up (`<dev_root>/nvidia<N>`).
    pub dev_root: PathBuf,
    /// The most bytes of an executor's output written to its log.
    pub log_max_bytes: u64,
    /// Where the driver lists the minors of MIG access files
    /// ([`crate::cgroup::devices::DEFAULT_MIG_MINORS`]).
    pub mig_minors: PathBuf,
    /// The node's lendable GPU units (whole GPUs and MIG instances) by id. An executor's
    /// `CUDA_VISIBLE_DEVICES` names its units by UUID where there is one (a UUID means the same
    /// GPU whatever the order CUDA enumerates in; a MIG instance can only be named so), by
    /// index otherwise.
    pub gpu_units: std::collections::BTreeMap<u32, crate::discover::GpuUnit>,
    /// Lend GPUs on a host whose lease groups cannot confine devices (cgroup v2), where a
    /// function could open every GPU of the node (`allow_unconfined_gpus`).
    pub allow_unconfined_gpus: bool,
    /// The CPUs a memory lease's executor shares (it holds none of its own): every CPU this
    /// harvestd manages, at the lowest weight and under the lease's CPU cap.
    pub shared_cpus: harvest_core::CpuSet,
}

impl LeaseSettings {
    /// `CUDA_VISIBLE_DEVICES` for GPU units `gpus`.
    pub fn cuda_visible_devices(&self, gpus: &[u32]) -> String {
        gpus.iter()
            .map(|i| match self.gpu_units.get(i) {
                Some(u) if !u.uuid.is_empty() => u.uuid.clone(),
                _ => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The units `gpus` names; an id the node does not list (a lease from before a hardware
    /// change) stands for the whole GPU of that index.
    pub fn units(&self, gpus: &[u32]) -> Vec<crate::discover::GpuUnit> {
        gpus.iter()
            .map(|&id| {
                self.gpu_units
                    .get(&id)
                    .cloned()
                    .unwrap_or(crate::discover::GpuUnit {
                        id,
                        gpu: id,
                        uuid: String::new(),
                        memory_total_mib: 0,
                        mig: None,
                    })
            })
            .collect()
    }
}

/// What the agent tells the scheduler about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    Ready(ExecutorInfo),
    Failed {
        lease_id: String,
        reason: String,
    },
    Exited {
        lease_id: String,
        reason: String,
        cause: EndCause,
    },
    /// A batch step took some of the executor's CPUs and it was moved to other idle ones.
    Moved(ExecutorInfo),
}

/// The scheduler's order to start an executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOrder {
    pub request: LeaseRequest,
    pub library: LibrarySource,
    pub options: ServeOptions,
    /// The lease secret the executor checks every connection against.
    pub secret: launch::Secret,
}

/// The default lease group `harvest_<node>/lease_<id>` (the same relative path in every
/// hierarchy).
pub fn lease_group(node: &str, lease_id: &str) -> PathBuf {
    harvest_group(node).join(format!("lease_{lease_id}"))
}

/// The group all of a node's lease groups live under, beside Slurm's `slurm_<node>`.
pub fn harvest_group(node: &str) -> PathBuf {
    PathBuf::from(format!("harvest_{node}"))
}

/// The interference controller's order for one lease's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Bring the group from `from` (`None`: unknown, apply every part) to `to`.
    Set {
        from: Option<LeaseControl>,
        to: LeaseControl,
    },
    /// Pause for a probe: the group's CPU quota at the kernel's floor
    /// ([`control::PROBE_QUOTA`]), not the freezer, so a pause the agent cannot end (stopped,
    /// killed mid-probe) still lets the executor answer.
    ProbePause,
    /// End a probe's pause: back to the quota of the control last set.
    ProbeResume,
    /// Thaw the group (before an eviction's SIGTERM).
    Thaw,
}

/// A message to one lease task.
#[derive(Debug)]
pub enum LeaseMessage {
    /// End the lease; `done` says whether this message ended it (false: it was already ending).
    End {
        reason: String,
        cause: EndCause,
        done: Option<oneshot::Sender<bool>>,
    },
    /// Reclaim: kill every process of the lease now and answer on `gone` once its group is
    /// empty; the rest of the teardown waits `teardown_delay` (the step starts meanwhile).
    Evict {
        reason: String,
        gone: oneshot::Sender<Evicted>,
        teardown_delay: Duration,
    },
    /// Confine the executor to `cpus`; `done` says whether its cgroup took them.
    Move {
        cpus: CpuSet,
        reason: String,
        done: oneshot::Sender<bool>,
    },
    Control(Control),
}

/// The answer to an eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    /// Nothing of the lease runs any more (false: processes survived every kill).
    pub empty: bool,
    /// This eviction ended the lease (false: it was already ending, or nothing of it ran).
    pub first: bool,
}

/// Why a message did not reach a lease task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no lease {0} runs on this node")]
    Unknown(String),
    #[error("lease {0} is not taking messages now (its queue is full): try again")]
    Busy(String),
}

/// What the lease tasks share: the OS, the ledger, the way to the scheduler.
#[derive(Debug)]
pub struct Context {
    pub settings: LeaseSettings,
    pub cgroups: Arc<dyn Cgroups>,
    pub processes: Arc<dyn Processes>,
    pub ledger: LedgerHandle,
    pub parent: Arc<ParentGroup>,
    events: mpsc::UnboundedSender<LeaseEvent>,
    /// The running lease tasks by lease id (held for a map operation, never across `.await`).
    tasks: Mutex<HashMap<String, Entry>>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

#[derive(Debug, Clone)]
struct Entry {
    tx: mpsc::Sender<LeaseMessage>,
    uid: u32,
}

impl Context {
    /// The lease's group: `<parent>/lease_<id>`.
    pub fn group(&self, lease_id: &str) -> PathBuf {
        self.parent.path().join(format!("lease_{lease_id}"))
    }

    pub fn emit(&self, event: LeaseEvent) {
        tracing::info!(?event, "lease event");
        // Without a scheduler session nobody listens; the scheduler learns the state from
        // Register when it connects.
        let _ = self.events.send(event);
    }

    fn forget(&self, id: &str, tx: &mpsc::Sender<LeaseMessage>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if tasks.get(id).is_some_and(|e| e.tx.same_channel(tx)) {
            tasks.remove(id);
        }
    }
}

/// The node's lease tasks. Cheap to clone; every clone drives the same tasks.
#[derive(Debug, Clone)]
pub struct LeaseSupervisor {
    ctx: Arc<Context>,
}

impl LeaseSupervisor {
    /// Lease tasks run on `tracker` and stop (leaving their executors running, to be
    /// re-adopted) when `cancel` fires.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: LeaseSettings,
        cgroups: Arc<dyn Cgroups>,
        processes: Arc<dyn Processes>,
        ledger: LedgerHandle,
        parent: Arc<ParentGroup>,
        events: mpsc::UnboundedSender<LeaseEvent>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            ctx: Arc::new(Context {
                settings,
                cgroups,
                processes,
                ledger,
                parent,
                events,
                tasks: Mutex::new(HashMap::new()),
                tracker,
                cancel,
            }),
        }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The executors that are ready now (for `Register`), from the ledger.
    pub fn running(&self) -> Vec<ExecutorInfo> {
        let snap = self.ctx.ledger.snapshot();
        snap.ledger
            .leases
            .iter()
            .filter_map(|(id, l)| l.info(id))
            .collect()
    }

    /// Starts a lease task for `order`; it sends `Ready` or `Failed`. A repeated order (the
    /// scheduler re-sent it after a reconnect) is answered, not started twice.
    pub fn create(&self, order: CreateOrder) {
        let id = order.request.id.clone();
        let (uid, gid) = (order.request.uid, order.request.gid);
        if let Err(refused) = self.ctx.settings.identity.check(&id, uid, gid) {
            tracing::warn!(lease = %id, uid, gid, %refused, "refused a lease's identity");
            self.ctx.emit(LeaseEvent::Failed {
                lease_id: id,
                reason: refused.to_string(),
            });
            return;
        }
        let existing = self.entry(&id);
        if let Some(entry) = existing {
            if entry.uid == order.request.uid {
                // Ready already: say so again; still starting: its task will.
                let snap = self.ctx.ledger.snapshot();
                if let Some(info) = snap.ledger.leases.get(&id).and_then(|l| l.info(&id)) {
                    self.ctx.emit(LeaseEvent::Ready(info));
                }
            } else {
                self.ctx.emit(LeaseEvent::Failed {
                    lease_id: id.clone(),
                    reason: LeaseError::Exists(id).to_string(),
                });
            }
            return;
        }
        let (tx, rx) = mpsc::channel(LEASE_QUEUE);
        self.register(&id, tx.clone(), order.request.uid);
        let ctx = self.ctx.clone();
        self.ctx.tracker.spawn(async move {
            task::run_new(&ctx, order, rx).await;
            ctx.forget(&id, &tx);
        });
    }

    fn register(&self, id: &str, tx: mpsc::Sender<LeaseMessage>, uid: u32) {
        self.ctx
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), Entry { tx, uid });
    }

    fn entry(&self, id: &str) -> Option<Entry> {
        self.ctx
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    /// Sends `msg` to lease `id`'s task, waiting for room in its queue.
    pub async fn send(&self, id: &str, msg: LeaseMessage) -> Result<(), SendError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| SendError::Unknown(id.to_owned()))?;
        entry
            .tx
            .send(msg)
            .await
            .map_err(|_| SendError::Unknown(id.to_owned()))
    }

    /// Sends `msg` without waiting (the interference controller's synchronous path).
    pub fn try_send(&self, id: &str, msg: LeaseMessage) -> Result<(), SendError> {
        let entry = self
            .entry(id)
            .ok_or_else(|| SendError::Unknown(id.to_owned()))?;
        entry.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Busy(id.to_owned()),
            mpsc::error::TrySendError::Closed(_) => SendError::Unknown(id.to_owned()),
        })
    }

    /// Ends lease `id` for `reason` and waits until it is gone; false when no such lease runs
    /// or it was already ending.
    pub async fn end(&self, id: &str, reason: String, cause: EndCause) -> bool {
        let (done, ended) = oneshot::channel();
        let msg = LeaseMessage::End {
            reason,
            cause,
            done: Some(done),
        };
        if self.send(id, msg).await.is_err() {
            return false;
        }
        ended.await.unwrap_or(false)
    }

    /// The scheduler's `DestroyExecutor`: ends the lease; an unknown one is reported as gone so
    /// the scheduler stops waiting for it.
    pub async fn destroy(&self, id: &str, reason: &str, cause: EndCause) {
        let reason = if reason.is_empty() {
            "destroyed by the scheduler"
        } else {
            reason
        };
        let msg = LeaseMessage::End {
            reason: reason.to_owned(),
            cause,
            done: None,
        };
        if self.send(id, msg).await.is_err() {
            self.ctx.emit(LeaseEvent::Exited {
                lease_id: id.to_owned(),
                reason: format!("no lease {id} runs on node {}", self.ctx.settings.node),
                cause,
            });
        }
    }

    /// Re-adopts the leases of the ledger after a start ([`adopt::adopt`]).
    pub async fn adopt(&self) {
        adopt::adopt(self).await;
    }

    /// Starts a task for a lease found in the ledger at start whose executor still runs.
    fn spawn_adopted(&self, id: String, uid: u32, adopted: task::Adopted) {
        let (tx, rx) = mpsc::channel(LEASE_QUEUE);
        self.register(&id, tx.clone(), uid);
        let ctx = self.ctx.clone();
        self.ctx.tracker.spawn(async move {
            task::run_adopted(&ctx, &id, adopted, rx).await;
            ctx.forget(&id, &tx);
        });
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
