//! `harvestd run`: the agent behind two Unix sockets, with a reconcile loop.
//!
//! - `<run-dir>/harvestd-<node>.sock`: the SPANK plugin's socket, mode 0600 (root only), or 0660
//!   with `plugin_socket_group`. One [`PluginMessage`] line in, one [`AgentReply`] line out.
//! - `<run-dir>/harvestd-<node>.query.sock`: status for anyone, mode 0666, read-only by design.
//!
//! Each connection must deliver its line within `read_timeout` and at most
//! [`MAX_MESSAGE_BYTES`]; at most `max_connections` are served at once per socket (more are
//! answered "busy"). The ledger is reconciled with the cgroup tree every `reconcile_interval`.
//! The loop ends when `shutdown` resolves (SIGTERM/SIGINT in the binary), removes its sockets
//! and saves the ledger.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use harvest_core::step::{AgentReply, MAX_MESSAGE_BYTES, PluginMessage, decode, encode};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use harvest_core::NodeView;
use tokio::sync::{mpsc, oneshot, watch};

use crate::agent::{AgentError, NodeAgent, Sources, now_ms};
use crate::cgroup::{self, CgroupError};
use crate::config::{Config, ConfigError};
use crate::discover::{DiscoverError, Hardware, discover_real};
use crate::executor::process::{OsProcesses, find_executor};
use crate::executor::{ExecutorSettings, Executors, harvest_group};
use crate::query::{QueryReply, QueryRequest, plugin_socket, query_socket};
use crate::reclaim::ReclaimPolicy;
use crate::scontrol::Scontrol;
use crate::session::{self, SessionSettings};
use crate::state::{LedgerStore, StateError};
use crate::stats::NodeStats;

/// Why `harvestd run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("hardware discovery failed: {0}")]
    Discover(#[from] DiscoverError),
    #[error("cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("creating the run directory {path}: {source}")]
    RunDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another harvestd already serves {path}: stop it first (or use another --run-dir)")]
    AlreadyRunning { path: PathBuf },
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "group {group:?} for plugin_socket_group is not in {file}: name an existing group or a gid"
    )]
    NoGroup { group: String, file: PathBuf },
    #[error("reading {file}: {source}")]
    GroupFile {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no harvest-executor beside harvestd ({beside}) or on PATH: install it there or set executor_path"
    )]
    NoExecutor { beside: String },
    #[error("cannot serve metrics on metrics_listen = {addr}: {source}")]
    MetricsBind {
        addr: String,
        source: std::io::Error,
    },
}

/// Discovers the real hardware and cgroups, then serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    let hardware = discover_real()?;
    tracing::info!(cpus = %hardware.topology.cpus, memory_mib = hardware.memory_mib,
        gpus = hardware.gpus.devices().len(), "hardware discovered");
    let own_exe = std::env::current_exe().ok();
    let sources = Sources {
        cgroups: cgroup::open(&config.cgroup_root, &config.mountinfo)?.into(),
        details: Arc::new(Scontrol {
            program: config.scontrol.clone(),
            timeout: config.scontrol_timeout,
        }),
        processes: Arc::new(OsProcesses {
            helper: own_exe.clone().unwrap_or_else(|| PathBuf::from("harvestd")),
            proc_root: config.proc_root.clone(),
        }),
    };
    let mut config = config;
    if config.executor_path.is_none() {
        let path = std::env::var("PATH").ok();
        config.executor_path = find_executor(None, own_exe.as_deref(), path.as_deref());
        if config.executor_path.is_none() && config.scheduler.is_some() {
            return Err(ServerError::NoExecutor {
                beside: own_exe.map_or_else(|| "?".into(), |p| p.display().to_string()),
            });
        }
    }
    serve(config, hardware, sources, shutdown).await
}

/// A socket file that is removed when the server stops.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves `hardware` and the jobs `sources` show, as configured, until `shutdown` resolves.
pub async fn serve(
    config: Config,
    hardware: Hardware,
    sources: Sources,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    config.validate()?;
    std::fs::create_dir_all(&config.run_dir).map_err(|source| ServerError::RunDir {
        path: config.run_dir.clone(),
        source,
    })?;
    let plugin_path = plugin_socket(&config.run_dir, &config.node);
    let query_path = query_socket(&config.run_dir, &config.node);
    // Before the ledger is touched: a live agent owns it.
    for path in [&plugin_path, &query_path] {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning { path: path.clone() });
        }
    }
    let store = LedgerStore::open(&config.state_dir, &config.node)?;
    let processes = sources.processes.clone();
    let details = sources.details.clone();
    let incarnation = now_ms(SystemTime::now());
    let agent = NodeAgent::start(
        &config.node,
        hardware,
        config.reserve(),
        store,
        sources,
        config.unseen_job_grace,
        SystemTime::now(),
    )?;
    let stats = Arc::new(NodeStats::default());
    let (views, views_rx) = watch::channel(agent.view());
    let agent = Arc::new(Mutex::new(agent));
    let (events, events_rx) = mpsc::unbounded_channel();
    let executors = Executors::new(
        agent.clone(),
        processes,
        ExecutorSettings {
            node: config.node.clone(),
            state_dir: config.state_dir.clone(),
            executor_path: config
                .executor_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("harvest-executor")),
            allow_root: config.allow_root_executors,
            start_timeout: config.executor_start_timeout,
            stop_grace: config.executor_stop_grace,
            cpu_weight: config.lease_cpu_weight,
            cgroup_parent: config
                .lease_cgroup_parent
                .clone()
                .unwrap_or_else(|| harvest_group(&config.node)),
            reclaim: ReclaimPolicy {
                order: config.reclaim_order,
                move_executors: config.reclaim_move,
            },
            reclaim_timeout: config.reclaim_timeout,
            reclaim_teardown_delay: config.reclaim_teardown_delay,
            cpu_idle: config.lease_cpu_idle,
            stats: stats.clone(),
        },
        events,
        views.clone(),
    );
    executors.adopt().await;
    let interference = crate::interference::monitor::spawn(
        crate::interference::monitor::Setup {
            cfg: config.interference.clone(),
            node: config.node.clone(),
            run_dir: config.run_dir.clone(),
            proc_root: config.proc_root.clone(),
            lease_weight: config.lease_cpu_weight,
            lease_parent: config
                .lease_cgroup_parent
                .clone()
                .unwrap_or_else(|| harvest_group(&config.node)),
        },
        agent.clone(),
        executors.clone(),
        stats.clone(),
    );

    let gid = config
        .plugin_socket_group
        .as_deref()
        .map(|g| resolve_gid(g, &config.group_file))
        .transpose()?;
    let plugin_mode = if gid.is_some() { 0o660 } else { 0o600 };
    let (plugin, _plugin_file) = bind(&plugin_path, plugin_mode, gid)?;
    let (query, _query_file) = bind(&query_path, 0o666, None)?;
    tracing::info!(node = %config.node, plugin = %plugin_path.display(),
        query = %query_path.display(), "harvestd ready");
    let (stop_session, session_stopped) = oneshot::channel::<()>();
    let session = config.scheduler.clone().map(|url| {
        let settings = SessionSettings {
            url,
            node: config.node.clone(),
            heartbeat: config.heartbeat_interval,
            backoff_max: config.reconnect_backoff_max,
            incarnation,
            stats: stats.clone(),
        };
        tokio::spawn(session::run(
            settings,
            executors.clone(),
            views_rx,
            events_rx,
            async move {
                let _ = session_stopped.await;
            },
        ))
    });

    let drain_watch = tokio::spawn(watch_drain(
        details,
        config.node.clone(),
        stats.clone(),
        config.drain_check_interval,
    ));
    let metrics = match &config.metrics_listen {
        Some(addr) => {
            let listener =
                tokio::net::TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|source| ServerError::MetricsBind {
                        addr: addr.clone(),
                        source,
                    })?;
            let sources = crate::metrics::Sources {
                agent: agent.clone(),
                executors: executors.clone(),
                stats: stats.clone(),
            };
            Some(tokio::spawn(crate::metrics::serve(listener, sources)))
        }
        None => None,
    };
    let plugin_slots = Arc::new(Semaphore::new(config.max_connections));
    let query_slots = Arc::new(Semaphore::new(config.max_connections));
    let mut tick = tokio::time::interval(config.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let read_timeout = config.read_timeout;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = plugin.accept() => match accepted {
                Ok((stream, _)) => spawn_conn(stream, &plugin_slots, {
                    let agent = agent.clone();
                    let views = views.clone();
                    let executors = executors.clone();
                    move |s| serve_plugin(s, agent, views, executors, read_timeout)
                }),
                Err(e) => tracing::warn!(error = %e, "accept on the plugin socket failed"),
            },
            accepted = query.accept() => match accepted {
                Ok((stream, _)) => spawn_conn(stream, &query_slots, {
                    let agent = agent.clone();
                    move |s| serve_query(s, agent, read_timeout)
                }),
                Err(e) => tracing::warn!(error = %e, "accept on the query socket failed"),
            },
            _ = tick.tick() => {
                if let Err(e) = lock(&agent).reconcile(SystemTime::now()) {
                    tracing::warn!(error = %e, "reconcile failed; the ledger is unchanged");
                }
                publish(&agent, &views);
                let executors = executors.clone();
                tokio::spawn(async move { executors.tick(SystemTime::now()).await });
            }
        }
    }
    drain_watch.abort();
    if let Some(task) = metrics {
        task.abort();
    }
    tracing::info!("shutting down; executors keep running and are re-adopted at the next start");
    interference.stop().await;
    let _ = stop_session.send(());
    if let Some(task) = session {
        let _ = task.await;
    }
    lock(&agent).save();
    Ok(())
}

/// Asks Slurm every `interval` whether it drains this node (or has it down) and records the
/// answer in `stats`, which the scheduler session reports: the scheduler then revokes the
/// node's leases and places none there. An unreachable Slurm changes nothing (logged).
async fn watch_drain(
    details: Arc<dyn crate::scontrol::JobDetails>,
    node: String,
    stats: Arc<NodeStats>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (d, n) = (details.clone(), node.clone());
        let state = match tokio::task::spawn_blocking(move || d.node_state(&n)).await {
            Ok(Ok(Some(state))) => state,
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot ask Slurm for the node's state");
                continue;
            }
            Err(_) => continue,
        };
        let draining = crate::scontrol::is_draining(&state);
        if draining != stats.draining() {
            tracing::warn!(node = %node, slurm_state = %state, draining,
            "Slurm's node state changed: {}", if draining {
                "no new leases here, and the scheduler revokes the ones here"
            } else {
                "leases may come here again"
            });
        }
        stats.set_draining(draining);
    }
}

/// Publishes the agent's view to the scheduler session when it changed.
pub(crate) fn publish(agent: &Mutex<NodeAgent>, views: &watch::Sender<NodeView>) {
    let view = lock(agent).view();
    views.send_if_modified(|old| {
        if *old == view {
            return false;
        }
        *old = view;
        true
    });
}

pub(crate) fn lock(agent: &Mutex<NodeAgent>) -> MutexGuard<'_, NodeAgent> {
    // A panic while holding the lock leaves a ledger that is still consistent (every change is
    // a single map operation), so keep serving rather than poisoning the agent for good.
    agent.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `serve` for the connection if a slot is free, else answers "busy".
fn spawn_conn<F, Fut>(mut stream: UnixStream, slots: &Arc<Semaphore>, serve: F)
where
    F: FnOnce(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            let fut = serve(stream);
            tokio::spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        Err(_) => {
            tracing::warn!("all connection slots busy; refusing a connection");
            tokio::spawn(async move {
                let reply = AgentReply::error("harvestd is busy: too many connections, retry");
                if let Ok(bytes) = encode(&reply) {
                    let _ = stream.write_all(&bytes).await;
                }
            });
        }
    }
}

/// Reads one line of at most [`MAX_MESSAGE_BYTES`] within `timeout`.
async fn read_line(stream: &mut UnixStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let limited = (&mut *stream).take(MAX_MESSAGE_BYTES as u64 + 1);
    let mut reader = BufReader::new(limited);
    let read = reader.read_until(b'\n', &mut line);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(format!("no complete message within {timeout:?}")),
        Ok(Err(e)) => Err(format!("reading the message: {e}")),
        Ok(Ok(_)) if line.len() > MAX_MESSAGE_BYTES => Err(format!(
            "message exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )),
        Ok(Ok(0)) => Err("connection closed before a message arrived".into()),
        Ok(Ok(_)) => Ok(line),
    }
}

async fn reply<T: Serialize>(stream: &mut UnixStream, body: &T, timeout: Duration) {
    let bytes = match encode(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            return;
        }
    };
    match tokio::time::timeout(timeout, stream.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "client left before the reply"),
        Err(_) => tracing::warn!("client did not take the reply within {timeout:?}"),
    }
}

/// One plugin message. A step start is answered only once every executor on the step's
/// resources has moved off them or is gone (bounded by `reclaim_timeout`): the batch job's
/// tasks never start beside a function on their CPUs.
async fn serve_plugin(
    mut stream: UnixStream,
    agent: Arc<Mutex<NodeAgent>>,
    views: watch::Sender<NodeView>,
    executors: Executors,
    timeout: Duration,
) {
    let answer = match read_line(&mut stream, timeout).await {
        Err(e) => AgentReply::error(e),
        Ok(line) => match decode::<PluginMessage>(&line) {
            Ok(msg) => {
                let arrived = std::time::Instant::now();
                let reply = lock(&agent).handle(&msg, SystemTime::now());
                if matches!(msg, PluginMessage::StepStart(_)) && reply.error.is_none() {
                    executors.reclaim(arrived).await;
                }
                publish(&agent, &views);
                reply
            }
            Err(e) => AgentReply::error(e.to_string()),
        },
    };
    if let Some(e) = &answer.error {
        tracing::warn!(error = %e, "plugin message refused");
    }
    reply(&mut stream, &answer, timeout).await;
}

async fn serve_query(mut stream: UnixStream, agent: Arc<Mutex<NodeAgent>>, timeout: Duration) {
    let answer = match read_line(&mut stream, timeout).await {
        Err(e) => QueryReply {
            view: None,
            error: Some(e),
        },
        Ok(line) => match decode::<QueryRequest>(&line) {
            Ok(QueryRequest::Status) => QueryReply {
                view: Some(lock(&agent).view()),
                error: None,
            },
            Err(e) => QueryReply {
                view: None,
                error: Some(e.to_string()),
            },
        },
    };
    reply(&mut stream, &answer, timeout).await;
}

/// Binds a socket with `mode` (and group `gid`) already set when it appears at `path`: it is
/// bound under a temp name, given its mode, then renamed into place. A stale socket from a
/// killed agent is replaced; a live one is an error.
fn bind(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), ServerError> {
    let bind_err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        tracing::info!(path = %path.display(), "removing a stale socket");
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    let tmp_file = SocketFile(tmp.clone());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(bind_err)?;
    }
    std::fs::rename(&tmp, path).map_err(bind_err)?;
    std::mem::forget(tmp_file);
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// A group name (looked up in `group_file`) or a numeric gid.
pub fn resolve_gid(group: &str, group_file: &Path) -> Result<u32, ServerError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string(group_file).map_err(|source| ServerError::GroupFile {
        file: group_file.to_path_buf(),
        source,
    })?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            Some((name, gid))
        })
        .find_map(|(name, gid)| (name == group).then_some(gid))
        .ok_or_else(|| ServerError::NoGroup {
            group: group.to_owned(),
            file: group_file.to_path_buf(),
        })
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
