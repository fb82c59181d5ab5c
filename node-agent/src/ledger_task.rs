//! The ledger task: the one owner of the node's [`NodeAgent`] (hardware, reserve, ledger).
//!
//! Everyone else holds a [`LedgerHandle`]: commands go over a bounded channel and are applied in
//! memory, in order, one at a time (microseconds each); every change is published as a new
//! [`Snapshot`] on a `watch` channel, which readers (the query socket, the scheduler session,
//! metrics, the interference monitor) clone out and never hold. Nothing slow happens here:
//! - **Saving** is the saver task's: it writes the latest snapshot in `spawn_blocking`, so
//!   changes that arrive during a slow save are coalesced into the next one. A step start is
//!   answered from memory; a crash before its save loses nothing a restart cannot rebuild, since
//!   the start-up reconcile reads the same job from Slurm's cgroup tree.
//! - **A lease's reservation waits for its save** ([`LedgerHandle::reserve`]): no lease group
//!   or executor exists that a restarted agent would not know to end.
//! - **Slurm's view** (the cgroup tree, `scontrol`) is gathered by the caller first and handed in
//!   ([`LedgerHandle::reconcile`], [`LedgerHandle::set_slurm`]).

use std::sync::Arc;
use std::time::SystemTime;

use harvest_core::step::{AgentReply, PluginMessage};
use harvest_core::{CpuSet, NodeView};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::NodeAgent;
use crate::lease::{ExecutorProcess, LeaseError, LeaseRecord, LeaseRequest};
use crate::ledger::{Ledger, ReconcileReport};
use crate::reclaim::{Action, ReclaimPolicy};
use crate::scontrol::SlurmAlloc;
use crate::slurm::JobCgroup;
use crate::state::Store;

/// Commands queued at most; a full queue makes senders wait (never drops a command).
pub const QUEUE: usize = 1024;

/// The ledger as of one change.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Counts changes since the agent started (0: as loaded and reconciled at start).
    pub version: u64,
    pub ledger: Ledger,
    pub view: NodeView,
}

impl Snapshot {
    /// Whether a lease's executor is ready (listening), by the ledger.
    pub fn is_ready(&self, lease: &str) -> bool {
        self.ledger
            .leases
            .get(lease)
            .and_then(|l| l.executor.as_ref())
            .is_some_and(|e| e.address.is_some())
    }
}

/// The ledger task is gone (harvestd is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("harvestd is shutting down: the ledger takes no more changes")]
pub struct Closed;

/// The outcome of the saver's latest attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    /// The snapshot version it wrote (or tried to).
    pub version: u64,
    pub ok: bool,
}

enum Command {
    Plugin {
        msg: PluginMessage,
        now: SystemTime,
        reply: oneshot::Sender<(AgentReply, Vec<Action>)>,
    },
    Reserve {
        req: LeaseRequest,
        now: SystemTime,
        reply: oneshot::Sender<Result<(LeaseRecord, u64), LeaseError>>,
    },
    SetExecutor {
        id: String,
        process: ExecutorProcess,
        reply: oneshot::Sender<Result<u64, LeaseError>>,
    },
    Move {
        id: String,
        cpus: CpuSet,
        reply: oneshot::Sender<bool>,
    },
    Remove {
        id: String,
        reply: oneshot::Sender<Option<LeaseRecord>>,
    },
    Reconcile {
        tree: Vec<JobCgroup>,
        now: SystemTime,
        reply: oneshot::Sender<ReconcileReport>,
    },
    SetSlurm {
        job: u32,
        alloc: SlurmAlloc,
        gpus_final: bool,
    },
    Plan {
        reply: oneshot::Sender<Vec<Action>>,
    },
}

/// A cheap, cloneable way to the ledger task.
#[derive(Debug, Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Command>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    saved: watch::Receiver<Saved>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plugin { .. } => "Plugin",
            Self::Reserve { .. } => "Reserve",
            Self::SetExecutor { .. } => "SetExecutor",
            Self::Move { .. } => "Move",
            Self::Remove { .. } => "Remove",
            Self::Reconcile { .. } => "Reconcile",
            Self::SetSlurm { .. } => "SetSlurm",
            Self::Plan { .. } => "Plan",
        })
    }
}

impl LedgerHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Closed> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Closed)?;
        answer.await.map_err(|_| Closed)
    }

    /// Applies a plugin message in memory and answers it, with what must leave the batch jobs'
    /// resources now (the reclaim plan under `policy`, empty unless a step started). Never
    /// waits for the disk.
    pub async fn plugin(
        &self,
        msg: PluginMessage,
        now: SystemTime,
    ) -> Result<(AgentReply, Vec<Action>), Closed> {
        self.ask(|reply| Command::Plugin { msg, now, reply }).await
    }

    /// Places and records a lease, and returns once it is saved (or the save failed, logged).
    pub async fn reserve(
        &self,
        req: LeaseRequest,
        now: SystemTime,
    ) -> Result<LeaseRecord, LeaseError> {
        let (record, version) = self
            .ask(|reply| Command::Reserve { req, now, reply })
            .await
            .map_err(|_| LeaseError::ShuttingDown)??;
        self.persisted(version).await;
        Ok(record)
    }

    /// Records a lease's executor (in memory; saved soon after, not awaited: a restart that
    /// finds a lease without its executor ends it and kills what its cgroup holds).
    pub async fn record_executor(
        &self,
        id: &str,
        process: ExecutorProcess,
    ) -> Result<(), LeaseError> {
        let id = id.to_owned();
        self.ask(|reply| Command::SetExecutor { id, process, reply })
            .await
            .map_err(|_| LeaseError::ShuttingDown)??;
        Ok(())
    }

    /// Records a lease's executor moved to `cpus`; false for an unknown lease.
    pub async fn move_lease(&self, id: &str, cpus: CpuSet) -> Result<bool, Closed> {
        let id = id.to_owned();
        self.ask(|reply| Command::Move { id, cpus, reply }).await
    }

    /// Forgets a lease; its resources are idle again.
    pub async fn remove_lease(&self, id: &str) -> Result<Option<LeaseRecord>, Closed> {
        let id = id.to_owned();
        self.ask(|reply| Command::Remove { id, reply }).await
    }

    /// Applies a cgroup tree read beforehand.
    pub async fn reconcile(
        &self,
        tree: Vec<JobCgroup>,
        now: SystemTime,
    ) -> Result<ReconcileReport, Closed> {
        self.ask(|reply| Command::Reconcile { tree, now, reply })
            .await
    }

    /// Records what Slurm said of a job (with `gpus_final`, its GPUs replace the steps').
    pub async fn set_slurm(
        &self,
        job: u32,
        alloc: SlurmAlloc,
        gpus_final: bool,
    ) -> Result<(), Closed> {
        self.tx
            .send(Command::SetSlurm {
                job,
                alloc,
                gpus_final,
            })
            .await
            .map_err(|_| Closed)
    }

    /// What must leave the batch jobs' resources now (the reconcile tick's backstop).
    pub async fn reclaim_plan(&self) -> Result<Vec<Action>, Closed> {
        self.ask(|reply| Command::Plan { reply }).await
    }

    /// The latest snapshot (cloned out: holding it blocks nobody).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// A receiver of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// Waits until the saver has attempted `version` or a later one.
    async fn persisted(&self, version: u64) {
        let mut saved = self.saved.clone();
        match saved.wait_for(|s| s.version >= version).await {
            Ok(s) if !s.ok => tracing::warn!(
                version,
                "the ledger could not be saved; going on (a restart would rebuild from Slurm)"
            ),
            Ok(_) => {}
            // The saver stopped (shutdown): its final save covers this version.
            Err(_) => {}
        }
    }
}

/// Starts the ledger task and its saver on `tracker`; both stop when `cancel` fires (the saver
/// after a last save of the latest snapshot). `agent` must already be saved (as
/// [`crate::agent::start`] leaves it).
pub fn spawn(
    agent: NodeAgent,
    store: Arc<dyn Store>,
    policy: ReclaimPolicy,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> LedgerHandle {
    let first = Arc::new(Snapshot {
        version: 0,
        view: agent.view(),
        ledger: agent.ledger().clone(),
    });
    let (snap_tx, snapshots) = watch::channel(first);
    let (saved_tx, saved) = watch::channel(Saved {
        version: 0,
        ok: true,
    });
    let (tx, rx) = mpsc::channel(QUEUE);
    tracker.spawn(run(agent, policy, rx, snap_tx, cancel.clone()));
    tracker.spawn(saver(store, snapshots.clone(), saved_tx, cancel));
    LedgerHandle {
        tx,
        snapshots,
        saved,
    }
}

async fn run(
    mut agent: NodeAgent,
    policy: ReclaimPolicy,
    mut rx: mpsc::Receiver<Command>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    cancel: CancellationToken,
) {
    let mut version = 0u64;
    let mut publish = |agent: &NodeAgent| {
        version += 1;
        snapshots.send_replace(Arc::new(Snapshot {
            version,
            view: agent.view(),
            ledger: agent.ledger().clone(),
        }));
        version
    };
    loop {
        let cmd = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => break,
            },
        };
        match cmd {
            Command::Plugin { msg, now, reply } => {
                let (answer, changed) = agent.handle(&msg, now);
                let plan = if matches!(msg, PluginMessage::StepStart(_)) && answer.error.is_none() {
                    agent.reclaim_plan(policy)
                } else {
                    Vec::new()
                };
                // Published before the answer (microseconds): whoever asks after the step
                // started sees it.
                if changed {
                    publish(&agent);
                }
                let _ = reply.send((answer, plan));
            }
            Command::Reserve { req, now, reply } => {
                let result = agent.reserve_lease(&req, now).map(|r| (r, publish(&agent)));
                let _ = reply.send(result);
            }
            Command::SetExecutor { id, process, reply } => {
                let result = agent.set_executor(&id, process).map(|()| publish(&agent));
                let _ = reply.send(result);
            }
            Command::Move { id, cpus, reply } => {
                let moved = agent.move_lease(&id, cpus);
                if moved {
                    publish(&agent);
                }
                let _ = reply.send(moved);
            }
            Command::Remove { id, reply } => {
                let removed = agent.remove_lease(&id);
                if removed.is_some() {
                    publish(&agent);
                }
                let _ = reply.send(removed);
            }
            Command::Reconcile { tree, now, reply } => {
                let report = agent.reconcile(&tree, now);
                if report.changed() {
                    publish(&agent);
                }
                let _ = reply.send(report);
            }
            Command::SetSlurm {
                job,
                alloc,
                gpus_final,
            } => {
                if agent.set_slurm(job, alloc, gpus_final) {
                    publish(&agent);
                }
            }
            Command::Plan { reply } => {
                let _ = reply.send(agent.reclaim_plan(policy));
            }
        }
    }
}

/// Writes the latest snapshot whenever there is a newer one than the last written; one save at
/// a time, off the runtime's threads. At shutdown, one last save of what is newest.
async fn saver(
    store: Arc<dyn Store>,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    saved: watch::Sender<Saved>,
    cancel: CancellationToken,
) {
    let mut written = 0u64;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
        let snap = snapshots.borrow_and_update().clone();
        written = snap.version;
        let ok = save(store.clone(), snap).await;
        saved.send_replace(Saved {
            version: written,
            ok,
        });
    }
    let snap = snapshots.borrow().clone();
    if snap.version > written {
        let version = snap.version;
        let ok = save(store, snap).await;
        saved.send_replace(Saved { version, ok });
    }
}

async fn save(store: Arc<dyn Store>, snap: Arc<Snapshot>) -> bool {
    let result = tokio::task::spawn_blocking(move || store.save(&snap.ledger)).await;
    match result {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::error!(error = %e,
                "could not save the ledger; a restart now would rely on the cgroup tree alone");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "the ledger save panicked");
            false
        }
    }
}

#[cfg(test)]
#[path = "ledger_task_tests.rs"]
mod tests;
