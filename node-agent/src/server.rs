//! `harvestd run`: wiring only. It builds the parts, starts each as a task on one
//! [`TaskTracker`] under one [`CancellationToken`], and on shutdown cancels them all and waits
//! for every one (no task is aborted or left behind):
//!
//! ```text
//!  plugin socket ──Plugin──▶ ┌─────────────┐ ──snapshots (watch)──▶ query socket, session,
//!  (sockets.rs)   ◀─reply──  │ ledger task │                        metrics, interference
//!      │                     │ (ledger_task)│ ──snapshots──▶ saver ──spawn_blocking──▶ disk
//!      │ plan                └─────────────┘
//!      ▼                        ▲  Reserve, Executor, Move, Remove, Reconcile{tree}, SetSlurm
//!  reclaimer ──Evict/Move──▶ lease tasks (leases/, one per lease, sole writer of its cgroup)
//!      ▲                        ▲  End (session: DestroyExecutor)   ▲ Control (interference)
//!  reconcile loop (tree + scontrol read first, off the hot path)
//! ```
//!
//! The step-start path is plugin socket → ledger task (memory only) → reclaim → reply; nothing on
//! it waits for the disk or `scontrol`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{self, AgentError, now_ms};
use crate::cgroup::{self, CgroupError};
use crate::config::{Config, ConfigError};
use crate::discover::{DiscoverError, Hardware, discover_real};
use crate::leases::process::{OsProcesses, find_executor};
use crate::leases::{LeaseSettings, LeaseSupervisor, ParentGroup, harvest_group};
use crate::ledger_task;
use crate::query::{plugin_socket, query_socket};
use crate::reclaim::ReclaimPolicy;
use crate::reclaimer::Reclaimer;
use crate::reconcile::{Reconciler, drain_loop, reconcile_loop};
use crate::scontrol::Scontrol;
use crate::session::{self, SessionSettings};
use crate::sockets::{self, BindError, Served};
use crate::sources::Sources;
use crate::state::{LedgerStore, StateError, Store};
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
    #[error(transparent)]
    Bind(#[from] BindError),
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
    #[error(transparent)]
    Tls(#[from] harvest_proto::tls::TlsFileError),
    #[error(transparent)]
    Advertise(#[from] harvest_proto::advertise::AdvertiseError),
    #[error("cannot serve metrics on metrics_listen = {addr}: {source}")]
    MetricsBind {
        addr: String,
        source: std::io::Error,
    },
}

/// Discovers the real hardware and cgroups, then serves until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    config.validate()?;
    // With a scheduler, the executors' bind and advertised addresses, proven to be this node's
    // before anything else (a lease would otherwise fail only when its executor starts, or hand clients an
    // address nobody answers at).
    // A standalone agent (no scheduler) starts no executors.
    let mut config = config;
    if config.scheduler.is_some() {
        config.executor_advertise_address = Some(executor_addresses(
            &config,
            &harvest_proto::advertise::SystemHost::default(),
        )?);
    }
    let hardware = match config.gpu_source {
        crate::config::GpuSourceKind::Nvml => discover_real()?,
        crate::config::GpuSourceKind::DeviceFiles => {
            crate::discover::discover_with(&crate::discover::DeviceFileGpus {
                dev_root: config.dev_root.clone(),
            })?
        }
    };
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
    if config.executor_path.is_none() {
        let path = std::env::var("PATH").ok();
        config.executor_path = find_executor(None, own_exe.as_deref(), path.as_deref());
        if config.executor_path.is_none() && config.scheduler.is_some() {
            return Err(ServerError::NoExecutor {
                beside: own_exe.map_or_else(|| "?".into(), |p| p.display().to_string()),
            });
        }
    }
    let store = LedgerStore::open(&config.state_dir, &config.node)?;
    serve(config, hardware, sources, Arc::new(store), shutdown).await
}

/// Checks that `executor_bind_address` (when a specific one) and the advertised address are this
/// node's, and returns the address clients are to be given ([`harvest_proto::advertise`]).
pub fn executor_addresses(
    config: &Config,
    host: &dyn harvest_proto::advertise::HostLookup,
) -> Result<std::net::IpAddr, ServerError> {
    use harvest_proto::advertise;
    let bind = config.executor_bind_address;
    if !bind.is_unspecified() {
        advertise::check_local("executor_bind_address", bind)?;
    }
    let advertised = advertise::resolve(
        "executor_advertise_address",
        "executor_bind_address",
        bind,
        config.executor_advertise_address,
        host,
    )?;
    if !bind.is_unspecified() && advertised != bind {
        tracing::warn!(%bind, %advertised,
            "executors listen on executor_bind_address but clients are given \
             executor_advertise_address: only a forwarding address (NAT) between them works");
    }
    tracing::info!(%bind, %advertised, "executor addresses");
    Ok(advertised)
}

/// The address clients are given for executors: `executor_advertise_address` (as [`run`]
/// resolved it), else a specific `executor_bind_address`.
/// A standalone agent starts no executors: any address will do.
fn advertised_executor_address(config: &Config) -> Result<std::net::IpAddr, ServerError> {
    let addr = config
        .executor_advertise_address
        .unwrap_or(config.executor_bind_address);
    if addr.is_unspecified() && config.scheduler.is_some() {
        return Err(harvest_proto::advertise::AdvertiseError::Unspecified {
            key: "executor_advertise_address",
            addr,
        }
        .into());
    }
    Ok(addr)
}

/// Serves `hardware` and the jobs `sources` show, as configured, with the ledger in `store`,
/// until `shutdown` resolves.
pub async fn serve(
    config: Config,
    hardware: Hardware,
    sources: Sources,
    store: Arc<dyn Store>,
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
    let incarnation = now_ms(SystemTime::now());
    let units = hardware.gpus.units();
    let shared_cpus = hardware.topology.cpus.clone();
    let gpu_units = units.iter().map(|u| (u.id, u.clone())).collect();
    let node_agent = agent::start(
        &config.node,
        hardware,
        config.reserve(),
        store.as_ref(),
        sources.cgroups.as_ref(),
        config.unseen_job_grace,
        SystemTime::now(),
    )?;
    let gid = config
        .plugin_socket_group
        .as_deref()
        .map(|g| resolve_gid(g, &config.group_file))
        .transpose()?;
    let metrics_listener = match &config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr.as_str()).await.map_err(
            |source| ServerError::MetricsBind {
                addr: addr.clone(),
                source,
            },
        )?),
        None => None,
    };

    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let stats = Arc::new(NodeStats::default());
    let policy = ReclaimPolicy {
        order: config.reclaim_order,
        move_executors: config.reclaim_move,
    };
    let awaiting_slurm = node_agent.awaiting_slurm();
    let ledger = ledger_task::spawn(node_agent, store, policy, &tracker, cancel.clone());
    let lease_parent = config
        .lease_cgroup_parent
        .clone()
        .unwrap_or_else(|| harvest_group(&config.node));
    let parent = Arc::new(ParentGroup::new(
        sources.cgroups.clone(),
        lease_parent.clone(),
        config.lease_cpu_weight,
        config.lease_cpu_idle,
    ));
    let (events, events_rx) = mpsc::unbounded_channel();
    let leases = LeaseSupervisor::new(
        LeaseSettings {
            node: config.node.clone(),
            state_dir: config.state_dir.clone(),
            executor_path: config
                .executor_path
                .clone()
                .unwrap_or_else(|| PathBuf::from("harvest-executor")),
            executor_bind: config.executor_bind_address,
            executor_advertise: advertised_executor_address(&config)?,
            identity: crate::leases::identity::IdentityPolicy {
                min_uid: config.min_executor_uid,
                allow_root: config.allow_root_executors,
                accounts: match &config.passwd_file {
                    Some(file) => Arc::new(crate::leases::identity::PasswdFile(file.clone())),
                    None => Arc::new(crate::leases::identity::Getent::default()),
                },
            },
            start_timeout: config.executor_start_timeout,
            stop_grace: config.executor_stop_grace,
            cpu_weight: config.lease_cpu_weight,
            check_interval: crate::leases::DEFAULT_CHECK_INTERVAL,
            pids_max: config.lease_pids_max,
            dev_root: config.dev_root.clone(),
            log_max_bytes: config.executor_log_max_bytes,
            mig_minors: config.nvidia_caps_mig_minors.clone(),
            gpu_units,
            allow_unconfined_gpus: config.allow_unconfined_gpus,
            shared_cpus,
        },
        sources.cgroups.clone(),
        sources.processes.clone(),
        ledger.clone(),
        parent,
        events,
        tracker.clone(),
        cancel.clone(),
    );
    leases.adopt().await;
    let reclaimer = Reclaimer {
        leases: leases.clone(),
        timeout: config.reclaim_timeout,
        teardown_delay: config.reclaim_teardown_delay,
        stats: stats.clone(),
    };

    let plugin_mode = if gid.is_some() { 0o660 } else { 0o600 };
    let (plugin, _plugin_file) = sockets::bind(&plugin_path, plugin_mode, gid)?;
    let (query, _query_file) = sockets::bind(&query_path, 0o666, None)?;
    tracing::info!(node = %config.node, plugin = %plugin_path.display(),
        query = %query_path.display(), "harvestd ready");
    tracker.spawn(sockets::serve(
        plugin,
        query,
        Served {
            ledger: ledger.clone(),
            reclaimer: reclaimer.clone(),
            read_timeout: config.read_timeout,
            max_connections: config.max_connections,
        },
        tracker.clone(),
        cancel.clone(),
    ));
    tracker.spawn(reconcile_loop(
        Reconciler {
            node: config.node.clone(),
            cgroups: sources.cgroups.clone(),
            details: sources.details.clone(),
            ledger: ledger.clone(),
            reclaimer,
            awaiting_slurm,
            slurm_constrains_gpus: config.slurm_constrains_gpus,
            gpus_asked: Default::default(),
        },
        config.reconcile_interval,
        cancel.clone(),
    ));
    tracker.spawn(drain_loop(
        sources.details.clone(),
        config.node.clone(),
        stats.clone(),
        config.drain_check_interval,
        cancel.clone(),
    ));
    if let Some(listener) = metrics_listener {
        let sources = crate::metrics::Sources {
            ledger: ledger.clone(),
            state_dir: config.state_dir.clone(),
            stats: stats.clone(),
        };
        tracker.spawn(crate::metrics::serve(
            listener,
            sources,
            tracker.clone(),
            cancel.clone(),
        ));
    }
    if let Some(url) = config.scheduler.clone() {
        let tls = config.scheduler_tls()?;
        let settings = SessionSettings {
            url,
            tls,
            node: config.node.clone(),
            heartbeat: config.heartbeat_interval,
            backoff_max: config.reconnect_backoff_max,
            incarnation,
            stats: stats.clone(),
        };
        let stop = cancel.clone();
        tracker.spawn(session::run(
            settings,
            leases.clone(),
            ledger.subscribe(),
            events_rx,
            async move { stop.cancelled().await },
        ));
    }
    let monitor = crate::interference::monitor::start(
        crate::interference::monitor::Setup {
            cfg: config.interference.clone(),
            node: config.node.clone(),
            run_dir: config.run_dir.clone(),
            proc_root: config.proc_root.clone(),
            lease_weight: config.lease_cpu_weight,
            lease_parent,
            gpu_units: units,
        },
        ledger.clone(),
        leases.clone(),
        sources.cgroups.clone(),
        stats.clone(),
    );
    // The monitor gives every lease its normal control back when it stops, before the lease
    // tasks do: it gets its own token, cancelled first.
    let monitor_cancel = CancellationToken::new();
    let monitor_task = monitor.map(|m| {
        let stop = monitor_cancel.clone();
        tokio::spawn(m.run(async move { stop.cancelled().await }))
    });
    tracker.close();

    shutdown.await;
    tracing::info!("shutting down; executors keep running and are re-adopted at the next start");
    monitor_cancel.cancel();
    if let Some(task) = monitor_task {
        let _ = task.await;
    }
    cancel.cancel();
    tracker.wait().await;
    Ok(())
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
