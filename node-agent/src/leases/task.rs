//! One lease's task: the only writer of its cgroup, its directory and its executor process.
//!
//! ```text
//!   Reserved ──start──▶ Starting{pid} ──ready pipe──▶ Ready{pid, address}
//!      │                    │                             │
//!      └────────────────────┴── End / Evict / exit / expiry / failed start
//!                                         ▼
//!                              Stopping(cause) ──▶ Gone
//! ```
//!
//! Every wait selects on the lease's messages too, so reclaim's `Evict` is served at once in any
//! state: before the executor exists it is answered at once (nothing runs), after it the group is
//! frozen and killed and the answer comes when it is empty. Cancellation (harvestd stopping)
//! leaves a running executor alone: the next start re-adopts it.
//!
//! The executor says it is ready by writing its address line to an inherited pipe
//! (`--ready-fd`), read here without blocking, bounded to [`READY_LINE_MAX`] bytes and parsed as a
//! `SocketAddr`; the lease directory is the user's, so nothing in it is read by name for that.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::SystemTime;

use harvest_core::CpuSet;
use harvest_proto::v1::EndCause;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, sleep_until};

use super::control::LeaseControl;
use super::launch::{self, LOG_FILE};
use super::log::{Tail, output_pipe};
use super::process::{ExitFuture, Launch, LaunchIo, Signal};
use super::safefs;
use super::{
    Context, Control, CreateOrder, EVICT_POLL_INTERVAL, EXIT_CPU_WEIGHT, Evicted, LOG_TAIL_BYTES,
    LeaseEvent, LeaseMessage, POLL_INTERVAL,
};
use crate::agent::now_ms;
use crate::cgroup::GroupSpec;
use crate::lease::{ExecutorProcess, LeaseRecord};

/// Where a lease stands before it stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// In the ledger; no process yet.
    Reserved,
    /// The executor runs; its ready line is awaited until `deadline`.
    Starting {
        pid: u32,
        start_time: u64,
        deadline: Instant,
    },
    /// The executor listens at `address`.
    Ready {
        pid: u32,
        start_time: u64,
        address: String,
    },
}

/// An executor found running at start (re-adopted: nobody waits on its exit; its pid is polled).
#[derive(Debug, Clone)]
pub struct Adopted {
    pub record: LeaseRecord,
    pub pid: u32,
    pub start_time: u64,
    pub address: String,
}

/// Why an executor could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Prepare(#[from] launch::LaunchError),
    #[error("creating the lease cgroup: {0}")]
    Cgroup(crate::cgroup::CgroupError),
    #[error("the lease's device list: {0}")]
    Devices(#[from] crate::cgroup::devices::DeviceError),
    #[error(transparent)]
    Spawn(#[from] super::process::ProcessError),
    #[error("{what} the executor's ready pipe: {source}")]
    Pipe {
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "the order carries a lease secret of {len} bytes, not {}: the executor would serve \
         anyone (is the scheduler older than this agent?)",
        launch::SECRET_BYTES
    )]
    NoSecret { len: usize },
    #[error(
        "the lease asks for {gpus} GPU(s) but this node's lease groups cannot confine devices \
         ({why}); harvestd refuses GPU leases here so that a function cannot open GPUs it was \
         not lent. Set allow_unconfined_gpus = true in harvestd's configuration to lend them \
         anyway, named by CUDA_VISIBLE_DEVICES only"
    )]
    UnconfinedGpus { gpus: usize, why: String },
    #[error("the order's memory lease is malformed: {0}")]
    MemorySpec(#[from] harvest_core::region::MemorySpecError),
}

/// The CPU weight of a memory lease's group (v2 units, the lowest): it shares the node's CPUs,
/// batch jobs' included, and must lose every contest for them.
pub const MEMORY_LEASE_CPU_WEIGHT: u64 = 1;

/// What a lease's CPU quota is a percentage of: its own CPUs, or a memory lease's cap.
fn share(record: &LeaseRecord) -> super::control::CpuShare {
    match record.memory {
        Some(spec) => super::control::CpuShare::Capped(spec.cpu_millis),
        None => {
            super::control::CpuShare::Cores(u32::try_from(record.cpus.len()).unwrap_or(u32::MAX))
        }
    }
}

/// A lease lent `gpus` GPUs on a host whose lease groups cannot confine devices (cgroup v2)
/// is refused unless `allow` (`allow_unconfined_gpus`).
pub(crate) fn refuse_unconfined_gpus(
    gpus: usize,
    allow: bool,
    cgroups: &dyn crate::cgroup::Cgroups,
) -> Result<(), StartError> {
    match cgroups.confinement().devices {
        crate::cgroup::Support::Unavailable(why) if gpus > 0 && !allow => {
            Err(StartError::UnconfinedGpus { gpus, why })
        }
        _ => Ok(()),
    }
}

/// How the lease ends.
#[derive(Debug)]
enum Ending {
    Stop {
        reason: String,
        cause: EndCause,
        done: Option<oneshot::Sender<bool>>,
    },
    Evict {
        reason: String,
        gone: oneshot::Sender<Evicted>,
        teardown_delay: std::time::Duration,
    },
    /// harvestd is stopping: the executor keeps running.
    Cancelled,
}

struct Lease<'a> {
    ctx: &'a Context,
    id: String,
    record: LeaseRecord,
    state: State,
    group: PathBuf,
    dir: PathBuf,
    /// The end of the executor's output, kept in memory by its log drain (a new lease's only):
    /// it explains a failed start.
    tail: Option<Tail>,
    /// The interference control last applied (`None`: as started), which a probe's pause
    /// returns to.
    applied: Option<LeaseControl>,
}

/// The longest ready line accepted (an IPv6 address with scope and port is under 64 bytes).
pub const READY_LINE_MAX: usize = 256;

/// Resolves with the executor's address, or why none came.
type ReadyFuture = Pin<Box<dyn Future<Output = Result<SocketAddr, ReadyError>> + Send>>;

/// Why no address came over the ready pipe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadyError {
    /// Every write end is closed: the executor exited (its exit says how) or closed it.
    #[error("the executor closed its ready pipe without writing an address")]
    Closed,
    #[error("reading the executor's ready pipe: {0}")]
    Read(String),
    /// What the executor wrote is not echoed: it is the user's text, of any length.
    #[error(
        "the executor's ready line is not an IP address and port ({0} bytes); was harvest-executor started with --ready-fd?"
    )]
    NotAnAddress(usize),
    #[error("the executor's ready line is longer than {READY_LINE_MAX} bytes")]
    TooLong,
}

/// Reads one line from the ready pipe (at most [`READY_LINE_MAX`] bytes) and parses it.
pub async fn read_ready(
    mut pipe: tokio::net::unix::pipe::Receiver,
) -> Result<SocketAddr, ReadyError> {
    let mut line = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        let n = pipe
            .read(&mut chunk)
            .await
            .map_err(|e| ReadyError::Read(e.to_string()))?;
        if n == 0 {
            return Err(ReadyError::Closed);
        }
        line.extend_from_slice(&chunk[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            break;
        }
        if line.len() > READY_LINE_MAX {
            return Err(ReadyError::TooLong);
        }
    }
    parse_ready_line(&line)
}

/// What clients are given for an executor that bound `bound`: the advertised address, its port.
pub fn advertised(bound: SocketAddr, advertise: std::net::IpAddr) -> SocketAddr {
    SocketAddr::new(advertise, bound.port())
}

/// `ADDRESS:PORT` (surrounding whitespace allowed), nothing else.
pub fn parse_ready_line(line: &[u8]) -> Result<SocketAddr, ReadyError> {
    if line.len() > READY_LINE_MAX {
        return Err(ReadyError::TooLong);
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or(ReadyError::NotAnAddress(line.len()))
}

/// A new lease: reserve, start, serve until it ends.
pub async fn run_new(ctx: &Context, order: CreateOrder, mut rx: mpsc::Receiver<LeaseMessage>) {
    let id = order.request.id.clone();
    // The reservation waits for its save (a slow disk): answer messages meanwhile. Nothing runs
    // yet, so an eviction is done at once; the stop comes once the reservation is in.
    let ledger = ctx.ledger.clone();
    let reserve = ledger.reserve(order.request.clone(), SystemTime::now());
    tokio::pin!(reserve);
    let mut pending: Option<Ending> = None;
    let reserved = loop {
        tokio::select! {
            biased;
            r = &mut reserve => break r,
            msg = rx.recv() => match msg {
                Some(LeaseMessage::Evict { reason, gone, .. }) => {
                    let _ = gone.send(Evicted { empty: true, first: pending.is_none() });
                    pending.get_or_insert(Ending::Stop { reason, cause: EndCause::Reclaimed, done: None });
                }
                Some(LeaseMessage::End { reason, cause, done }) => {
                    pending.get_or_insert(Ending::Stop { reason, cause, done });
                }
                Some(LeaseMessage::Move { done, .. }) => { let _ = done.send(false); }
                Some(LeaseMessage::Control(_)) | None => {}
            },
        }
    };
    let record = match reserved {
        Ok(r) => r,
        Err(e) => {
            ctx.emit(LeaseEvent::Failed {
                lease_id: id,
                reason: e.to_string(),
            });
            if let Some(Ending::Stop { done: Some(d), .. }) = pending {
                let _ = d.send(false);
            }
            return;
        }
    };
    let mut lease = Lease {
        ctx,
        group: ctx.group(&id),
        dir: launch::lease_dir(&ctx.settings.state_dir, &id),
        id,
        record,
        state: State::Reserved,
        tail: None,
        applied: None,
    };
    if ctx.cancel.is_cancelled() && pending.is_none() {
        pending = Some(Ending::Stop {
            reason: "harvestd stopped before the executor started".into(),
            cause: EndCause::ExecutorFailed,
            done: None,
        });
    }
    if let Some(ending) = pending {
        lease.end(ending, &mut rx).await;
        return;
    }
    let (exit, ready) = match lease.start(&order).await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(lease = %lease.id, error = %e, "executor did not start");
            let ending = Ending::Stop {
                reason: e.to_string(),
                cause: EndCause::ExecutorFailed,
                done: None,
            };
            lease.end(ending, &mut rx).await;
            return;
        }
    };
    let ending = lease.serve(&mut rx, Some(exit), Some(ready)).await;
    lease.end(ending, &mut rx).await;
}

/// A lease re-adopted at start: serve until it ends.
pub async fn run_adopted(
    ctx: &Context,
    id: &str,
    adopted: Adopted,
    mut rx: mpsc::Receiver<LeaseMessage>,
) {
    let mut lease = Lease {
        ctx,
        id: id.to_owned(),
        record: adopted.record,
        state: State::Ready {
            pid: adopted.pid,
            start_time: adopted.start_time,
            address: adopted.address,
        },
        group: ctx.group(id),
        dir: launch::lease_dir(&ctx.settings.state_dir, id),
        tail: None,
        applied: None,
    };
    let ending = lease.serve(&mut rx, None, None).await;
    lease.end(ending, &mut rx).await;
}

/// Ends a lease whose executor was gone at start.
pub async fn run_gone(ctx: &Context, id: &str, record: LeaseRecord, reason: String) {
    let lease = Lease {
        ctx,
        id: id.to_owned(),
        state: match &record.executor {
            Some(ExecutorProcess {
                pid,
                start_time,
                address: Some(address),
            }) => State::Ready {
                pid: *pid,
                start_time: *start_time,
                address: address.clone(),
            },
            _ => State::Reserved,
        },
        record,
        group: ctx.group(id),
        dir: launch::lease_dir(&ctx.settings.state_dir, id),
        tail: None,
        applied: None,
    };
    let (_tx, mut rx) = mpsc::channel(1);
    let ending = Ending::Stop {
        reason,
        cause: EndCause::ExecutorFailed,
        done: None,
    };
    lease.end(ending, &mut rx).await;
}

impl Lease<'_> {
    fn pid(&self) -> Option<(u32, u64)> {
        match &self.state {
            State::Reserved => None,
            State::Starting {
                pid, start_time, ..
            }
            | State::Ready {
                pid, start_time, ..
            } => Some((*pid, *start_time)),
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Prepares the directory and the cgroup and spawns the executor inside it; returns its exit
    /// and its ready line.
    async fn start(
        &mut self,
        order: &CreateOrder,
    ) -> Result<(ExitFuture, ReadyFuture), StartError> {
        let ctx = self.ctx;
        let s = &ctx.settings;
        let lease = &self.record;
        // Checked before anything is made: an executor without a secret would serve anyone.
        let secret = order.secret.env_value().ok_or(StartError::NoSecret {
            len: order.secret.0.len(),
        })?;
        if let Some(spec) = lease.memory {
            harvest_core::region::MemorySpec::new(spec.region_mib, spec.cpu_millis)?;
        }
        // And before anything is made: GPUs a function could open beside the lent ones.
        refuse_unconfined_gpus(
            lease.gpus.len(),
            s.allow_unconfined_gpus,
            ctx.cgroups.as_ref(),
        )?;
        let library = lease.memory.is_none().then_some(&order.library);
        let prepared = launch::prepare(&s.state_dir, &self.id, lease.uid, lease.gid, library)?;
        let workload = match (lease.memory, prepared.library) {
            (Some(spec), _) => launch::Workload::Region {
                bytes: spec.region_bytes(),
            },
            (None, Some(path)) => launch::Workload::Library(path),
            (None, None) => return Err(launch::LaunchError::NoLibrary.into()),
        };
        let output = output_pipe(
            prepared.log,
            s.log_max_bytes,
            LOG_TAIL_BYTES,
            ctx.cancel.clone(),
        )
        .map_err(|source| StartError::Pipe {
            what: "creating",
            source,
        })?;
        self.tail = Some(output.tail);
        // Ends at the output's end (everything in the group has exited) or when harvestd stops.
        ctx.tracker.spawn(output.drain);
        let (ready_rx, ready_tx) = std::io::pipe().map_err(|source| StartError::Pipe {
            what: "creating",
            source,
        })?;
        let ready_rx =
            tokio::net::unix::pipe::Receiver::from_owned_fd(ready_rx.into()).map_err(|source| {
                StartError::Pipe {
                    what: "watching",
                    source,
                }
            })?;
        // A memory lease holds no CPU: it shares the node's at the lowest weight, capped.
        let (cpus, weight) = match lease.memory {
            Some(_) => (s.shared_cpus.clone(), MEMORY_LEASE_CPU_WEIGHT),
            None => (lease.cpus.clone(), s.cpu_weight),
        };
        let spec = GroupSpec {
            cpus: Some(cpus),
            mems: None,
            memory_limit_bytes: Some(lease.memory_mib << 20),
            cpu_weight: Some(weight),
            pids_max: Some(s.pids_max),
            no_swap: true,
            devices: Some(crate::cgroup::devices::lease_devices(
                &s.dev_root,
                &s.mig_minors,
                &s.units(&lease.gpus),
            )?),
        };
        ctx.parent.prepare();
        let cg = &ctx.cgroups;
        cg.create(&self.group, &spec).map_err(StartError::Cgroup)?;
        if lease.memory.is_some() {
            cg.set_cpu_quota(&self.group, share(lease).quota(None))
                .map_err(StartError::Cgroup)?;
        }
        let procs_files = cg.procs_files(&self.group).map_err(StartError::Cgroup)?;
        let oom = cg
            .oom_events_file(&self.group)
            .map_err(StartError::Cgroup)?;
        let mut env = vec![
            ("RUST_LOG".to_owned(), "info".to_owned()),
            (launch::SECRET_ENV.to_owned(), secret),
        ];
        if !lease.gpus.is_empty() {
            env.push((
                "CUDA_VISIBLE_DEVICES".to_owned(),
                s.cuda_visible_devices(&lease.gpus),
            ));
        }
        let launch = Launch {
            program: s.executor_path.clone(),
            args: launch::executor_args(
                &workload,
                &self.dir,
                &order.options,
                &oom,
                s.executor_bind,
            ),
            uid: lease.uid,
            gid: lease.gid,
            procs_files,
            dir: self.dir.clone(),
            log: self.dir.join(LOG_FILE),
            env,
        };
        let io = LaunchIo {
            output: output.output,
            ready: ready_tx.into(),
        };
        let spawned = ctx.processes.spawn(&launch, io)?;
        tracing::info!(lease = %self.id, pid = spawned.pid, cpus = %lease.cpus,
            memory_mib = lease.memory_mib, uid = lease.uid, "executor started");
        self.state = State::Starting {
            pid: spawned.pid,
            start_time: spawned.start_time,
            deadline: Instant::now() + s.start_timeout,
        };
        let process = ExecutorProcess {
            pid: spawned.pid,
            start_time: spawned.start_time,
            address: None,
        };
        // Not awaited to disk: a restart that finds the lease without a known executor ends it
        // and kills whatever its cgroup holds.
        let _ = ctx.ledger.record_executor(&self.id, process).await;
        Ok((spawned.exit, Box::pin(read_ready(ready_rx))))
    }

    /// Serves messages, watches the executor and the lease's expiry, until the lease ends.
    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<LeaseMessage>,
        mut exit: Option<ExitFuture>,
        mut ready: Option<ReadyFuture>,
    ) -> Ending {
        let cancel = self.ctx.cancel.clone();
        let expires = (self.record.expires_unix_ms > 0).then(|| {
            let now = i64::try_from(now_ms(SystemTime::now())).unwrap_or(i64::MAX);
            let left = u64::try_from(self.record.expires_unix_ms.saturating_sub(now)).unwrap_or(0);
            Instant::now() + std::time::Duration::from_millis(left)
        });
        loop {
            let poll = match self.state {
                State::Starting { .. } => POLL_INTERVAL,
                _ => self.ctx.settings.check_interval,
            };
            let exited = async {
                match exit.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let ready_line = async {
                match ready.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let expiry = async {
                match expires {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(LeaseMessage::End { reason, cause, done }) => {
                        return Ending::Stop { reason, cause, done };
                    }
                    Some(LeaseMessage::Evict { reason, gone, teardown_delay }) => {
                        return Ending::Evict { reason, gone, teardown_delay };
                    }
                    Some(LeaseMessage::Move { cpus, reason, done }) => {
                        let ok = self.move_to(cpus, &reason).await;
                        let _ = done.send(ok);
                    }
                    Some(LeaseMessage::Control(c)) => self.control(c),
                    None => return Ending::Cancelled,
                },
                () = cancel.cancelled() => return Ending::Cancelled,
                how = exited => {
                    let reason = if self.is_ready() {
                        format!("executor exited ({how})")
                    } else {
                        format!("executor exited ({how}) before it was ready; its log: {}",
                            self.log_tail().await)
                    };
                    return Ending::Stop { reason, cause: EndCause::ExecutorFailed, done: None };
                }
                line = ready_line => {
                    ready = None;
                    match line {
                        Ok(address) => {
                            if let Some(ending) = self.become_ready(address).await {
                                return ending;
                            }
                        }
                        // The exit (or the start deadline) says what happened.
                        Err(ReadyError::Closed) => {}
                        Err(e) => {
                            return Ending::Stop {
                                reason: format!("{e}; its log: {}", self.log_tail().await),
                                cause: EndCause::ExecutorFailed,
                                done: None,
                            };
                        }
                    }
                }
                () = expiry => {
                    return Ending::Stop {
                        reason: "the lease expired".into(),
                        cause: EndCause::Expired,
                        done: None,
                    };
                }
                () = sleep(poll) => {
                    if let Some(ending) = self.check().await {
                        return ending;
                    }
                }
            }
        }
    }

    /// A starting executor sent its address: record it and tell the scheduler.
    async fn become_ready(&mut self, address: SocketAddr) -> Option<Ending> {
        let State::Starting {
            pid, start_time, ..
        } = self.state
        else {
            return None;
        };
        // The executor reports the address it bound; clients are given the advertised one.
        let address = advertised(address, self.ctx.settings.executor_advertise).to_string();
        self.state = State::Ready {
            pid,
            start_time,
            address: address.clone(),
        };
        let process = ExecutorProcess {
            pid,
            start_time,
            address: Some(address),
        };
        let ctx = self.ctx;
        if ctx.ledger.record_executor(&self.id, process).await.is_err() {
            return Some(Ending::Cancelled);
        }
        if let Some(info) = self.record_with_address().info(&self.id) {
            ctx.emit(LeaseEvent::Ready(info));
        }
        None
    }

    /// The end of the executor's output, for an error message.
    async fn log_tail(&self) -> String {
        match &self.tail {
            Some(t) => t.text().await,
            None => "(not kept)".to_owned(),
        }
    }

    /// The periodic check: a starting executor's deadline, an adopted one's pid.
    async fn check(&mut self) -> Option<Ending> {
        match self.state.clone() {
            State::Starting { deadline, .. } => {
                if Instant::now() < deadline {
                    return None;
                }
                Some(Ending::Stop {
                    reason: format!(
                        "the executor did not become ready within {:?}; its log: {}",
                        self.ctx.settings.start_timeout,
                        self.log_tail().await
                    ),
                    cause: EndCause::ExecutorFailed,
                    done: None,
                })
            }
            State::Ready {
                pid, start_time, ..
            } => (self.ctx.processes.start_time(pid) != Some(start_time)).then(|| Ending::Stop {
                reason: format!("the executor (pid {pid}) is gone"),
                cause: EndCause::ExecutorFailed,
                done: None,
            }),
            State::Reserved => None,
        }
    }

    fn record_with_address(&self) -> LeaseRecord {
        let mut r = self.record.clone();
        if let State::Ready {
            pid,
            start_time,
            address,
        } = &self.state
        {
            r.executor = Some(ExecutorProcess {
                pid: *pid,
                start_time: *start_time,
                address: Some(address.clone()),
            });
        }
        r
    }

    /// Confines the executor to `cpus`; false when its cgroup could not be changed.
    async fn move_to(&mut self, cpus: CpuSet, reason: &str) -> bool {
        let spec = GroupSpec {
            cpus: Some(cpus.clone()),
            ..GroupSpec::default()
        };
        if let Err(e) = self.ctx.cgroups.create(&self.group, &spec) {
            tracing::warn!(lease = %self.id, error = %e, "moving an executor failed; evicting it");
            return false;
        }
        self.record.cpus = cpus.clone();
        let _ = self.ctx.ledger.move_lease(&self.id, cpus.clone()).await;
        tracing::info!(lease = %self.id, cpus = %cpus, %reason, "executor moved");
        if let Some(info) = self.record_with_address().info(&self.id) {
            self.ctx.emit(LeaseEvent::Moved(info));
        }
        true
    }

    fn control(&mut self, c: Control) {
        let cg = self.ctx.cgroups.as_ref();
        let share = share(&self.record);
        let result = match c {
            Control::Set { from, to } => {
                let r = super::control::apply(cg, &self.group, share, from, to);
                if r.is_ok() {
                    self.applied = Some(to);
                }
                r
            }
            Control::ProbePause => cg.set_cpu_quota(&self.group, Some(super::control::PROBE_QUOTA)),
            Control::ProbeResume => cg.set_cpu_quota(
                &self.group,
                share.quota(self.applied.and_then(|c| c.quota_pct)),
            ),
            Control::Thaw => cg.thaw(&self.group),
        };
        if let Err(e) = result {
            tracing::warn!(lease = %self.id, control = ?c, error = %e, "interference control failed");
        }
    }

    /// Stops the lease as `ending` says and tears it down; answers messages meanwhile.
    async fn end(mut self, ending: Ending, rx: &mut mpsc::Receiver<LeaseMessage>) {
        let (reason, cause, done) = match ending {
            Ending::Cancelled => return,
            Ending::Stop {
                reason,
                cause,
                done,
            } => {
                self.stop_executor(rx).await;
                (reason, cause, done)
            }
            Ending::Evict {
                reason,
                gone,
                teardown_delay,
            } => {
                let empty = self.kill_group(rx).await;
                let _ = gone.send(Evicted { empty, first: true });
                // The teardown waits until the step has started, so that it does not compete
                // with the step's start for CPU.
                let until = Instant::now() + teardown_delay;
                self.drain_until(until, rx).await;
                (reason, EndCause::Reclaimed, None)
            }
        };
        self.remove_group(rx).await;
        let leases = launch::leases_dir(&self.ctx.settings.state_dir);
        match safefs::remove_entry(&leases, &self.id) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the lease directory")
            }
        }
        let _ = self.ctx.ledger.remove_lease(&self.id).await;
        let lease_id = self.id.clone();
        // A start cut short by a batch job (or drain, interference) is a revocation the
        // scheduler may place elsewhere, not a failure of the executor.
        self.ctx
            .emit(if self.is_ready() || cause != EndCause::ExecutorFailed {
                LeaseEvent::Exited {
                    lease_id,
                    reason,
                    cause,
                }
            } else {
                LeaseEvent::Failed { lease_id, reason }
            });
        if let Some(done) = done {
            let _ = done.send(true);
        }
        // Whatever came after the end: nothing runs any more.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            answer_gone(msg);
        }
    }

    /// SIGTERM, SIGKILL after the grace. An eviction meanwhile kills the group at once.
    async fn stop_executor(&mut self, rx: &mut mpsc::Receiver<LeaseMessage>) {
        let Some((pid, start_time)) = self.pid() else {
            return;
        };
        let procs = self.ctx.processes.clone();
        if procs.start_time(pid) != Some(start_time) {
            return;
        }
        if let Err(err) = procs.signal(pid, Signal::Term) {
            tracing::warn!(lease = %self.id, error = %err, "SIGTERM failed");
        }
        let grace = self.ctx.settings.stop_grace;
        let deadline = Instant::now() + grace;
        while procs.start_time(pid) == Some(start_time) {
            if Instant::now() >= deadline {
                tracing::warn!(lease = %self.id, pid, ?grace, "executor ignored SIGTERM; killing it");
                let _ = procs.signal(pid, Signal::Kill);
                return;
            }
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(LeaseMessage::Evict { gone, .. }) => {
                        let empty = self.kill_group(rx).await;
                        let _ = gone.send(Evicted { empty, first: true });
                        return;
                    }
                    Some(other) => answer_gone(other),
                    None => {}
                },
                () = sleep(POLL_INTERVAL) => {}
            }
        }
    }

    /// Freezes and kills every process of the group (reclaim's critical path) and returns once
    /// the group is empty, killing again every 2 ms what is left (a process forked meanwhile).
    /// False when processes survived every kill until the stop grace ran out.
    async fn kill_group(&mut self, rx: &mut mpsc::Receiver<LeaseMessage>) -> bool {
        let cg = self.ctx.cgroups.clone();
        if !cg.exists(&self.group) {
            return true;
        }
        let boost = GroupSpec {
            cpu_weight: Some(EXIT_CPU_WEIGHT),
            ..GroupSpec::default()
        };
        // A killed task must still run to exit and free its memory.
        if let Err(e) = cg.create(&self.group, &boost) {
            tracing::debug!(lease = %self.id, error = %e, "could not raise the CPU weight of an evicted executor");
        }
        // Freezes, kills every process, thaws (v1: frozen tasks die only once thawed).
        if let Err(e) = cg.kill(&self.group) {
            tracing::warn!(lease = %self.id, error = %e, "killing an evicted executor failed");
        }
        let empty = |g: &Path| !cg.exists(g) || cg.pids(g).map_or(true, |p| p.is_empty());
        let give_up = Instant::now() + self.ctx.settings.stop_grace.max(EVICT_POLL_INTERVAL * 4);
        let mut polls = 0u32;
        let mut waiting: Vec<oneshot::Sender<Evicted>> = Vec::new();
        let mut all_gone = true;
        while !empty(&self.group) {
            if Instant::now() >= give_up {
                tracing::error!(lease = %self.id, group = %self.group.display(),
                    "processes of an evicted executor survive every kill");
                all_gone = false;
                break;
            }
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(LeaseMessage::Evict { gone, .. }) => waiting.push(gone),
                    Some(other) => answer_gone(other),
                    None => {}
                },
                () = sleep(EVICT_POLL_INTERVAL) => {
                    polls += 1;
                    if polls.is_multiple_of(4) {
                        let _ = cg.kill(&self.group);
                    }
                }
            }
        }
        for gone in waiting {
            let _ = gone.send(Evicted {
                empty: all_gone,
                first: false,
            });
        }
        all_gone
    }

    /// Answers messages until `until` (an evicted lease's teardown delay).
    async fn drain_until(&self, until: Instant, rx: &mut mpsc::Receiver<LeaseMessage>) {
        loop {
            tokio::select! {
                biased;
                () = sleep_until(until) => return,
                msg = rx.recv() => match msg {
                    Some(msg) => answer_gone(msg),
                    None => { sleep_until(until).await; return; }
                },
            }
        }
    }

    /// Kills what is left in the group, waits until it is empty, and removes it.
    async fn remove_group(&mut self, rx: &mut mpsc::Receiver<LeaseMessage>) {
        let cg = self.ctx.cgroups.clone();
        if !cg.exists(&self.group) {
            return;
        }
        let _ = self.kill_group(rx).await;
        let grace = self.ctx.settings.stop_grace;
        let deadline = Instant::now() + grace;
        loop {
            match cg.remove(&self.group) {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(group = %self.group.display(), error = %e, "could not remove the lease group");
                    return;
                }
                Err(_) => sleep(POLL_INTERVAL).await,
            }
        }
    }
}

/// The answer to a message for a lease that is ending or gone.
fn answer_gone(msg: LeaseMessage) {
    match msg {
        LeaseMessage::End { done, .. } => {
            if let Some(d) = done {
                let _ = d.send(false);
            }
        }
        // Nothing of this lease runs any more (or its kill is under way and reported by
        // whoever asked first); the caller's step may go on.
        LeaseMessage::Evict { gone, .. } => {
            let _ = gone.send(Evicted {
                empty: true,
                first: false,
            });
        }
        LeaseMessage::Move { done, .. } => {
            let _ = done.send(false);
        }
        LeaseMessage::Control(_) => {}
    }
}
