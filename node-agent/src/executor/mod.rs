//! Executors: one harvest-executor process per lease, in its own cgroup, as its user, for the
//! life of the lease.
//!
//! [`Executors`] turns the scheduler's orders into processes and reports back [`LeaseEvent`]s:
//! [`create`](Executors::create) reserves the lease in the ledger, prepares its directory and
//! library, makes its cgroup (cpuset = the chosen idle CPUs, memory limit = the leased memory,
//! low CPU weight) under `harvest_<node>/lease_<id>`, starts the executor inside it and waits for
//! its ready file. [`finish`](Executors::finish) is the one way a lease ends (destroyed, expired,
//! executor exited, failed start): SIGTERM, SIGKILL after a grace, every process of the cgroup
//! killed, the cgroup and the directory removed, the ledger updated, one event sent.
//! [`tick`](Executors::tick) enforces expiry and notices executors that died while nobody waited
//! on them (re-adopted after a harvestd restart by [`adopt`](Executors::adopt)).
//!
//! - [`process`]: the process trait (real: `harvestd exec-lease`; fake in tests).
//! - [`launch`]: the lease directory, the executor's command line, `exec-lease` itself.

pub mod launch;
pub mod process;
#[cfg(test)]
pub mod testing;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use harvest_core::NodeView;
use harvest_proto::v1::EndCause;
use tokio::sync::{mpsc, watch};

use crate::agent::{NodeAgent, now_ms};
use crate::cgroup::{Cgroups, GroupSpec};
use crate::lease::{ExecutorInfo, ExecutorProcess, LeaseError, LeaseRecord, LeaseRequest};
use crate::reclaim::{Action, ReclaimPolicy};
use crate::server::{lock, publish};
use crate::stats::{NodeStats, ReclaimOutcome};
use launch::{LOG_FILE, LibrarySource, READY_FILE, ServeOptions};
use process::{Launch, Processes, Signal};

/// How often a starting executor's ready file and a stopping one's pid are checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The CPU weight an evicted executor's group gets so that its killed tasks exit at once (ten
/// times a normal cgroup's: they only run their exit).
pub const EXIT_CPU_WEIGHT: u64 = 1000;
/// How often an evicted executor's cgroup is checked for processes left (reclaim is on the
/// batch step's critical path).
pub const EVICT_POLL_INTERVAL: Duration = Duration::from_micros(500);
/// How much of the executor's log a failure message quotes.
pub const LOG_TAIL_BYTES: usize = 600;

/// What the executors are run with.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    pub node: String,
    /// Lease directories go in `<state_dir>/leases/<id>`.
    pub state_dir: PathBuf,
    pub executor_path: PathBuf,
    pub allow_root: bool,
    pub start_timeout: Duration,
    pub stop_grace: Duration,
    /// v2 CPU weight of a lease group (v1: converted to cpu.shares).
    pub cpu_weight: u64,
    /// Run all lease groups SCHED_IDLE (`cpu.idle` on their parent): any batch task preempts a
    /// function at once.
    pub cpu_idle: bool,
    /// The group lease groups go under (normally [`harvest_group`]).
    pub cgroup_parent: PathBuf,
    /// Which executors leave a batch step's resources, and whether they may move.
    pub reclaim: ReclaimPolicy,
    /// How long a synchronous reclaim may take before the step is let go regardless.
    pub reclaim_timeout: Duration,
    /// How long an evicted lease's teardown waits after the step was let go.
    pub reclaim_teardown_delay: Duration,
    /// Reclaim counters (shared with the session, which reports them).
    pub stats: Arc<NodeStats>,
}

impl ExecutorSettings {
    /// The lease's group: `<cgroup_parent>/lease_<id>`.
    pub fn group(&self, lease_id: &str) -> PathBuf {
        self.cgroup_parent.join(format!("lease_{lease_id}"))
    }
}

/// An executor's activity file: `LAST_MS [COUNT SUM_NS B0 .. B7]` (harvest-executor's
/// `--activity-file`; the bucket bounds are 10 µs, 100 µs, 1 ms, 10 ms, 100 ms, 1 s, 10 s and
/// unbounded, per-bucket counts of finished invocations' execution time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    pub lease: String,
    /// The latest invocation (or accepted connection), Unix ms.
    pub last_ms: i64,
    pub invocations: u64,
    pub duration_sum_ns: u64,
    /// Per-bucket counts, [`DURATION_BOUNDS_S`] then the unbounded bucket.
    pub buckets: Vec<u64>,
}

/// Upper bounds of the executors' duration buckets, in seconds.
pub const DURATION_BOUNDS_S: [f64; 7] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

impl Activity {
    /// Parses a file's text; `None` when its first field is not a time.
    pub fn parse(lease: String, text: &str) -> Option<Self> {
        let mut f = text.split_whitespace().map(str::parse::<u64>);
        let last_ms = i64::try_from(f.next()?.ok()?).ok()?;
        let rest: Vec<u64> = f.map_while(Result::ok).collect();
        let (invocations, duration_sum_ns, buckets) = match rest.as_slice() {
            [count, sum, buckets @ ..] if buckets.len() == DURATION_BOUNDS_S.len() + 1 => {
                (*count, *sum, buckets.to_vec())
            }
            _ => (0, 0, Vec::new()),
        };
        Some(Self {
            lease,
            last_ms,
            invocations,
            duration_sum_ns,
            buckets,
        })
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

/// The node's executors. Cheap to clone; every clone drives the same executors.
#[derive(Debug, Clone)]
pub struct Executors {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    agent: Arc<Mutex<NodeAgent>>,
    cgroups: Arc<dyn Cgroups>,
    processes: Arc<dyn Processes>,
    settings: ExecutorSettings,
    events: mpsc::UnboundedSender<LeaseEvent>,
    views: watch::Sender<NodeView>,
    /// Leases being ended: a second `finish` of the same lease returns at once.
    stopping: Mutex<HashSet<String>>,
}

impl Executors {
    pub fn new(
        agent: Arc<Mutex<NodeAgent>>,
        processes: Arc<dyn Processes>,
        settings: ExecutorSettings,
        events: mpsc::UnboundedSender<LeaseEvent>,
        views: watch::Sender<NodeView>,
    ) -> Self {
        let cgroups = lock(&agent).cgroups();
        Self {
            inner: Arc::new(Inner {
                agent,
                cgroups,
                processes,
                settings,
                events,
                views,
                stopping: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// What each ready executor's activity file says (its latest invocation, how many finished
    /// and how long they took); leases whose executor has written none yet are left out.
    pub fn activity(&self) -> Vec<Activity> {
        let ids: Vec<String> = {
            let agent = lock(&self.inner.agent);
            agent
                .ledger()
                .leases
                .iter()
                .filter(|(_, l)| l.executor.as_ref().is_some_and(|e| e.address.is_some()))
                .map(|(id, _)| id.clone())
                .collect()
        };
        ids.into_iter()
            .filter_map(|id| {
                let file = launch::lease_dir(&self.inner.settings.state_dir, &id)
                    .join(launch::ACTIVITY_FILE);
                Activity::parse(id, &std::fs::read_to_string(file).ok()?)
            })
            .collect()
    }

    /// The executors that are ready now (for `Register`).
    pub fn running(&self) -> Vec<ExecutorInfo> {
        let agent = lock(&self.inner.agent);
        agent
            .ledger()
            .leases
            .iter()
            .filter_map(|(id, l)| l.info(id))
            .collect()
    }

    fn emit(&self, event: LeaseEvent) {
        tracing::info!(?event, "lease event");
        // Without a scheduler session nobody listens; the scheduler learns the state from
        // Register when it connects.
        let _ = self.inner.events.send(event);
    }

    fn lease(&self, id: &str) -> Option<LeaseRecord> {
        lock(&self.inner.agent).ledger().leases.get(id).cloned()
    }

    fn is_stopping(&self, id: &str) -> bool {
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Starts an executor for `order`; sends `Ready` or `Failed`.
    pub async fn create(&self, order: CreateOrder) {
        let id = order.request.id.clone();
        if order.request.uid == 0 && !self.inner.settings.allow_root {
            let reason = LeaseError::Root { id: id.clone() }.to_string();
            self.emit(LeaseEvent::Failed {
                lease_id: id,
                reason,
            });
            return;
        }
        // A repeated order (the scheduler re-sent it after a reconnect) is answered, not failed.
        if let Some(existing) = self.lease(&id)
            && existing.uid == order.request.uid
        {
            if let Some(info) = existing.info(&id) {
                self.emit(LeaseEvent::Ready(info));
            }
            return;
        }
        let record = match lock(&self.inner.agent).reserve_lease(&order.request, SystemTime::now())
        {
            Ok(r) => r,
            Err(e) => {
                self.emit(LeaseEvent::Failed {
                    lease_id: id,
                    reason: e.to_string(),
                });
                return;
            }
        };
        publish(&self.inner.agent, &self.inner.views);
        match self.start(&id, &record, &order).await {
            Ok(Some(info)) => self.emit(LeaseEvent::Ready(info)),
            // Ended while it started (destroyed, or its executor died): `finish` reported it.
            Ok(None) => {}
            Err(reason) => {
                tracing::warn!(lease = %id, %reason, "executor did not start");
                self.finish(&id, reason, EndCause::ExecutorFailed).await;
            }
        }
    }

    /// Prepares, spawns and waits for the executor. `Err` says why it failed to start.
    async fn start(
        &self,
        id: &str,
        lease: &LeaseRecord,
        order: &CreateOrder,
    ) -> Result<Option<ExecutorInfo>, String> {
        let s = &self.inner.settings;
        let dir = launch::lease_dir(&s.state_dir, id);
        let library = launch::prepare(&dir, lease.uid, lease.gid, &order.library)
            .map_err(|e| e.to_string())?;
        let group = s.group(id);
        let spec = GroupSpec {
            cpus: Some(lease.cpus.clone()),
            mems: None,
            memory_limit_bytes: Some(lease.memory_mib << 20),
            cpu_weight: Some(s.cpu_weight),
        };
        self.prepare_parent();
        let cg = &self.inner.cgroups;
        cg.create(&group, &spec)
            .map_err(|e| format!("creating the lease cgroup: {e}"))?;
        let procs_files = cg.procs_files(&group).map_err(|e| e.to_string())?;
        let oom = cg.oom_events_file(&group).map_err(|e| e.to_string())?;
        let mut env = vec![("RUST_LOG".to_owned(), "info".to_owned())];
        if !lease.gpus.is_empty() {
            let list: Vec<String> = lease.gpus.iter().map(u32::to_string).collect();
            env.push(("CUDA_VISIBLE_DEVICES".to_owned(), list.join(",")));
        }
        let launch = Launch {
            program: s.executor_path.clone(),
            args: launch::executor_args(&library, &dir, &order.options, &oom),
            uid: lease.uid,
            gid: lease.gid,
            procs_files,
            dir: dir.clone(),
            log: dir.join(LOG_FILE),
            env,
        };
        if self.is_stopping(id) {
            return Ok(None);
        }
        let spawned = self
            .inner
            .processes
            .spawn(&launch)
            .map_err(|e| e.to_string())?;
        let (pid, start_time) = (spawned.pid, spawned.start_time);
        tracing::info!(lease = %id, pid, cpus = %lease.cpus, memory_mib = lease.memory_mib,
            uid = lease.uid, "executor started");
        let watcher = self.clone();
        let watched = id.to_owned();
        let log = dir.join(LOG_FILE);
        tokio::spawn(async move {
            let how = spawned.exit.await;
            let ready = watcher
                .lease(&watched)
                .and_then(|l| l.executor)
                .is_some_and(|e| e.address.is_some());
            // An executor that dies before it is ready says why in its log.
            let reason = if ready {
                format!("executor exited ({how})")
            } else {
                format!(
                    "executor exited ({how}) before it was ready; its log: {}",
                    log_tail(&log)
                )
            };
            watcher
                .finish(&watched, reason, EndCause::ExecutorFailed)
                .await;
        });
        let mut process = ExecutorProcess {
            pid,
            start_time,
            address: None,
        };
        if lock(&self.inner.agent)
            .set_executor(id, process.clone())
            .is_err()
        {
            return Ok(None);
        }
        let deadline = Instant::now() + s.start_timeout;
        let address = loop {
            if self.is_stopping(id) || self.lease(id).is_none() {
                return Ok(None);
            }
            match std::fs::read_to_string(dir.join(READY_FILE)) {
                Ok(text) if !text.trim().is_empty() => break text.trim().to_owned(),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the executor did not become ready within {:?}; its log: {}",
                    s.start_timeout,
                    log_tail(&dir.join(LOG_FILE))
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        process.address = Some(address);
        if lock(&self.inner.agent).set_executor(id, process).is_err() {
            return Ok(None);
        }
        publish(&self.inner.agent, &self.inner.views);
        Ok(self.lease(id).and_then(|l| l.info(id)))
    }

    /// Ends a lease for `reason`: stops its executor, kills whatever is left in its cgroup,
    /// removes the cgroup and the lease directory, frees its resources in the ledger, and sends
    /// `Exited` (or `Failed` when the executor never became ready). Returns whether this call
    /// ended it (false: unknown, or already being ended).
    pub async fn finish(&self, id: &str, reason: String, cause: EndCause) -> bool {
        if !self.claim(id) {
            return false;
        }
        self.end_claimed(id, reason, cause).await
    }

    /// Marks a lease as being ended by the caller; false when someone else already is.
    fn claim(&self, id: &str) -> bool {
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned())
    }

    /// [`finish`](Self::finish) for a lease the caller has claimed.
    async fn end_claimed(&self, id: &str, reason: String, cause: EndCause) -> bool {
        let ended = match self.lease(id) {
            Some(lease) => {
                self.stop(id, &lease).await;
                lock(&self.inner.agent).remove_lease(id);
                publish(&self.inner.agent, &self.inner.views);
                let ready = lease.executor.as_ref().is_some_and(|e| e.address.is_some());
                let lease_id = id.to_owned();
                // A start cut short by a batch job (or drain, interference) is a revocation
                // the scheduler may place elsewhere, not a failure of the executor.
                self.emit(if ready || cause != EndCause::ExecutorFailed {
                    LeaseEvent::Exited {
                        lease_id,
                        reason,
                        cause,
                    }
                } else {
                    LeaseEvent::Failed { lease_id, reason }
                });
                true
            }
            None => false,
        };
        self.inner
            .stopping
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        ended
    }

    /// The scheduler's `DestroyExecutor`.
    pub async fn destroy(&self, id: &str, reason: &str, cause: EndCause) {
        let reason = if reason.is_empty() {
            "destroyed by the scheduler"
        } else {
            reason
        };
        if !self.finish(id, reason.to_owned(), cause).await && !self.is_stopping(id) {
            self.emit(LeaseEvent::Exited {
                lease_id: id.to_owned(),
                reason: format!("no lease {id} runs on node {}", self.inner.settings.node),
                cause,
            });
        }
    }

    /// SIGTERM, SIGKILL after the grace, then every process left in the cgroup; then the cgroup
    /// and the directory go. Failures are logged: the ledger entry goes regardless, so a broken
    /// cgroup never holds resources for ever (the next start's [`adopt`](Self::adopt) retries).
    async fn stop(&self, id: &str, lease: &LeaseRecord) {
        let s = &self.inner.settings;
        let procs = &self.inner.processes;
        if let Some(e) = &lease.executor
            && procs.start_time(e.pid) == Some(e.start_time)
        {
            if let Err(err) = procs.signal(e.pid, Signal::Term) {
                tracing::warn!(lease = %id, error = %err, "SIGTERM failed");
            }
            let gone = wait_until(s.stop_grace, || {
                procs.start_time(e.pid) != Some(e.start_time)
            })
            .await;
            if !gone {
                tracing::warn!(lease = %id, pid = e.pid, grace = ?s.stop_grace, "executor ignored SIGTERM; killing it");
                let _ = procs.signal(e.pid, Signal::Kill);
            }
        }
        self.remove_group(&s.group(id)).await;
        let dir = launch::lease_dir(&s.state_dir, id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove the lease directory")
            }
        }
    }

    /// Kills what is left in a lease group, waits until it is empty, and removes it.
    async fn remove_group(&self, group: &Path) {
        let cg = &self.inner.cgroups;
        if !cg.exists(group) {
            return;
        }
        if let Err(e) = cg.kill(group) {
            tracing::warn!(group = %group.display(), error = %e, "killing the lease group failed");
        }
        let grace = self.inner.settings.stop_grace;
        wait_until(grace, || cg.pids(group).map_or(true, |p| p.is_empty())).await;
        let mut last = None;
        let removed = wait_until(grace, || match cg.remove(group) {
            Ok(()) => true,
            Err(e) => {
                last = Some(e);
                false
            }
        })
        .await;
        if !removed && let Some(e) = last {
            tracing::warn!(group = %group.display(), error = %e, "could not remove the lease group");
        }
    }

    /// Gives every batch job what it holds ([`crate::reclaim::plan`]): moves executors off its
    /// CPUs, or freezes and kills them, and frees memory and GPUs, within `reclaim_timeout` of
    /// `started` (when the plugin's report arrived). Returns when the evicted executors'
    /// processes are all gone (or the time is up: an overrun, logged and counted); their leases
    /// are then ended in the background. `None` when nothing collided.
    pub async fn reclaim(&self, started: Instant) -> Option<ReclaimOutcome> {
        let s = &self.inner.settings;
        let mut actions = lock(&self.inner.agent).reclaim_plan(s.reclaim);
        // Leases already being ended (an earlier reclaim's teardown) are not reclaimed twice.
        actions.retain(|a| !self.is_stopping(a.lease()));
        if actions.is_empty() {
            return None;
        }
        let deadline = started + s.reclaim_timeout;
        let mut evicted = Vec::new();
        let mut moved = 0u64;
        for action in actions {
            match action {
                Action::Move { lease, to, reason } => {
                    if self.move_lease(&lease, &to, &reason) {
                        moved += 1;
                    } else {
                        evicted.push((lease, format!("reclaimed: {reason}, and moving failed")));
                    }
                }
                Action::Evict { lease, reason } => evicted.push((lease, reason)),
            }
        }
        // Claim first: the exit watcher must not report a reclaimed executor as crashed.
        let evicted: Vec<(String, String)> = evicted
            .into_iter()
            .filter(|(id, _)| self.claim(id))
            .collect();
        let cg = &self.inner.cgroups;
        let weight = |w: u64| GroupSpec {
            cpus: None,
            mems: None,
            memory_limit_bytes: None,
            cpu_weight: Some(w),
        };
        // A killed task must still run to exit and free its memory: at the lease weight (its
        // group's and its parent's), busy batch or system work would starve it for tens of
        // milliseconds. The parent's weight is restored once the evicted groups are empty.
        let boosted = !evicted.is_empty()
            && (!s.cpu_idle || cg.set_cpu_idle(&s.cgroup_parent, false).is_ok())
            && cg
                .create(&s.cgroup_parent, &weight(EXIT_CPU_WEIGHT))
                .inspect_err(|e| tracing::debug!(error = %e, "could not raise the lease parent's CPU weight"))
                .is_ok();
        for (id, _) in &evicted {
            if let Err(e) = cg.create(&s.group(id), &weight(EXIT_CPU_WEIGHT)) {
                tracing::debug!(lease = %id, error = %e, "could not raise the CPU weight of an evicted executor");
            }
            // Freezes, kills every process, thaws (v1: frozen tasks die only once thawed).
            if let Err(e) = cg.kill(&s.group(id)) {
                tracing::warn!(lease = %id, error = %e, "killing an evicted executor failed");
            }
        }
        let signalled = started.elapsed();
        let groups: Vec<PathBuf> = evicted.iter().map(|(id, _)| s.group(id)).collect();
        let gone = || {
            groups
                .iter()
                .all(|g| !cg.exists(g) || cg.pids(g).map_or(true, |p| p.is_empty()))
        };
        let mut all_gone = gone();
        let mut polls = 0u32;
        while !all_gone && Instant::now() < deadline {
            tokio::time::sleep(EVICT_POLL_INTERVAL).await;
            all_gone = gone();
            polls += 1;
            // Every 2 ms, kill again what is left (a process forked while the first kill ran).
            if !all_gone && polls.is_multiple_of(4) {
                for g in &groups {
                    let _ = cg.kill(g);
                }
            }
        }
        if boosted {
            let restored = cg
                .create(&s.cgroup_parent, &weight(s.cpu_weight))
                .and_then(|()| {
                    if s.cpu_idle {
                        cg.set_cpu_idle(&s.cgroup_parent, true).map(drop)
                    } else {
                        Ok(())
                    }
                });
            if let Err(e) = restored {
                tracing::warn!(error = %e, "could not restore the lease parent's CPU weight");
            }
        }
        let outcome = ReclaimOutcome {
            evicted: evicted.len() as u64,
            moved,
            latency: started.elapsed(),
            overrun: !all_gone,
        };
        s.stats.record_reclaim(outcome);
        if outcome.overrun {
            tracing::error!(leases = ?evicted, timeout = ?s.reclaim_timeout,
                latency_us = outcome.latency.as_micros() as u64,
                signalled_us = signalled.as_micros() as u64,
                "reclaim overrun: executors still alive when the batch step was let go");
        } else {
            tracing::info!(evicted = ?evicted, moved, latency_us = outcome.latency.as_micros() as u64,
                signalled_us = signalled.as_micros() as u64, "reclaimed for a batch step");
        }
        // The executors are gone; their teardown (cgroup removal, ledger write, the event that
        // tells the scheduler and so the client) waits until the step has started, so that it
        // does not compete with the step's start for CPU.
        let delay = s.reclaim_teardown_delay;
        for (id, reason) in evicted {
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                this.end_claimed(&id, reason, EndCause::Reclaimed).await
            });
        }
        Some(outcome)
    }

    /// Confines a lease's executor to `to`; false when its cgroup could not be changed.
    fn move_lease(&self, id: &str, to: &harvest_core::CpuSet, reason: &str) -> bool {
        let s = &self.inner.settings;
        let spec = GroupSpec {
            cpus: Some(to.clone()),
            mems: None,
            memory_limit_bytes: None,
            cpu_weight: None,
        };
        if let Err(e) = self.inner.cgroups.create(&s.group(id), &spec) {
            tracing::warn!(lease = %id, error = %e, "moving an executor failed; evicting it");
            return false;
        }
        let info = {
            let mut agent = lock(&self.inner.agent);
            agent.move_lease(id, to.clone());
            agent.ledger().leases.get(id).and_then(|l| l.info(id))
        };
        tracing::info!(lease = %id, cpus = %to, %reason, "executor moved");
        if let Some(info) = info {
            self.emit(LeaseEvent::Moved(info));
        }
        true
    }

    /// The backstop of [`reclaim`](Self::reclaim) (jobs the reconcile pass found, a plugin
    /// report that came too late), expired leases, and those whose executor is gone (one that
    /// nobody waits on: re-adopted after a restart).
    pub async fn tick(&self, now: SystemTime) {
        let now_ms = i64::try_from(now_ms(now)).unwrap_or(i64::MAX);
        self.reclaim(Instant::now()).await;
        let leases = lock(&self.inner.agent).ledger().leases.clone();
        for (id, lease) in leases {
            if lease.expires_unix_ms > 0 && now_ms >= lease.expires_unix_ms {
                self.finish(&id, "the lease expired".to_owned(), EndCause::Expired)
                    .await;
            } else if let Some(e) = &lease.executor
                && self.inner.processes.start_time(e.pid) != Some(e.start_time)
            {
                self.finish(
                    &id,
                    format!("the executor (pid {}) is gone", e.pid),
                    EndCause::ExecutorFailed,
                )
                .await;
            }
        }
    }

    /// The parent of all lease groups gets the lease weight too: at the top of the cpu
    /// hierarchy it competes with the batch jobs' tasks, and with a normal weight all functions
    /// together could take as much CPU as every batch task together. It is SCHED_IDLE as well
    /// when `cpu_idle` is set. Done before each lease group is made, and at start for a parent
    /// that exists (cheap and idempotent; a harvestd that never runs a lease leaves no group).
    fn prepare_parent(&self) {
        let s = &self.inner.settings;
        let parent = GroupSpec {
            cpus: None,
            mems: None,
            memory_limit_bytes: None,
            cpu_weight: Some(s.cpu_weight),
        };
        // An idle group's weight cannot be written (EINVAL): make it normal first.
        if s.cpu_idle {
            let _ = self.inner.cgroups.set_cpu_idle(&s.cgroup_parent, false);
        }
        if let Err(e) = self.inner.cgroups.create(&s.cgroup_parent, &parent) {
            tracing::warn!(group = %s.cgroup_parent.display(), error = %e,
                "could not give the lease groups' parent the lease CPU weight");
        }
        if s.cpu_idle {
            match self.inner.cgroups.set_cpu_idle(&s.cgroup_parent, true) {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "this kernel has no cpu.idle (Linux 5.15+): functions run at the lowest CPU weight instead of SCHED_IDLE"
                ),
                Err(e) => tracing::warn!(error = %e, "could not make the lease groups SCHED_IDLE"),
            }
        }
    }

    /// After a harvestd start: keeps the leases whose executor still runs in its cgroup, ends the
    /// rest, and removes the empty lease groups and the directories that no lease owns.
    pub async fn adopt(&self) {
        let s = &self.inner.settings;
        if self.inner.cgroups.exists(&s.cgroup_parent) {
            self.prepare_parent();
        }
        let leases = lock(&self.inner.agent).ledger().leases.clone();
        for (id, lease) in &leases {
            let alive = lease.executor.as_ref().is_some_and(|e| {
                e.address.is_some() && self.inner.processes.start_time(e.pid) == Some(e.start_time)
            });
            if alive && self.inner.cgroups.exists(&s.group(id)) {
                tracing::info!(lease = %id, pid = lease.executor.as_ref().map(|e| e.pid), "executor re-adopted");
            } else {
                self.finish(
                    id,
                    "harvestd restarted and the executor was gone".to_owned(),
                    EndCause::ExecutorFailed,
                )
                .await;
            }
        }
        let parent = s.cgroup_parent.clone();
        let groups = self.inner.cgroups.children(&parent).unwrap_or_default();
        for name in groups {
            let owned = name
                .strip_prefix("lease_")
                .is_some_and(|id| leases.contains_key(id));
            if owned {
                continue;
            }
            let group = parent.join(&name);
            // A populated group no lease of ours owns may be another agent's (two agents
            // configured with one lease_cgroup_parent): never kill what we did not start.
            match self.inner.cgroups.pids(&group) {
                Ok(pids) if pids.is_empty() => {
                    tracing::info!(group = %group.display(), "removing an empty lease group no lease owns");
                    self.remove_group(&group).await;
                }
                Ok(pids) => tracing::warn!(group = %group.display(), ?pids,
                    "a lease group no lease of this agent owns still has processes; left alone (is another harvestd using the same lease_cgroup_parent?)"),
                Err(e) => {
                    tracing::warn!(group = %group.display(), error = %e, "cannot read a stray lease group")
                }
            }
        }
        let dirs = std::fs::read_dir(s.state_dir.join("leases"))
            .into_iter()
            .flatten()
            .flatten();
        for entry in dirs {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !leases.contains_key(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Polls `done` every [`POLL_INTERVAL`] until it holds or `timeout` passes; returns whether it held.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The end of a log file, for an error message.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) if bytes.is_empty() => "(empty)".to_owned(),
        Ok(bytes) => {
            let from = bytes.len().saturating_sub(LOG_TAIL_BYTES);
            String::from_utf8_lossy(&bytes[from..]).trim().to_owned()
        }
        Err(e) => format!("(unreadable: {e})"),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
