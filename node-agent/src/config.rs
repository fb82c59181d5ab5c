//! `harvestd run`'s configuration: a TOML file, every key optional with a named default.
//!
//! Every key is documented in docs/node-agent.md. Command-line options (`--run-dir`,
//! `--state-dir`, `--cgroup-root`) override the file; the node name comes from `--node`.

use crate::reclaim::ReclaimOrder;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ledger::Reserve;

/// Where the sockets go when neither the file, `--run-dir` nor `HARVEST_RUN_DIR` says.
pub const DEFAULT_RUN_DIR: &str = "/run/harvest";
/// Where the ledger is kept.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/harvest";
/// Cores kept for the OS and daemons.
pub const DEFAULT_RESERVE_CORES: u32 = 0;
/// Memory kept for the OS and daemons (slurmd, slurmstepd, munged, harvestd itself, page cache
/// headroom): 1 GiB.
pub const DEFAULT_RESERVE_MEMORY_MIB: u64 = 1024;
/// How often the ledger is reconciled with the cgroup tree.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a job reported by the plugin is held without its cgroup ever showing up.
pub const DEFAULT_UNSEEN_JOB_GRACE: Duration = Duration::from_secs(10);
/// How long a client has to send its message.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `scontrol show job` may take before the agent gives up on it.
pub const DEFAULT_SCONTROL_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once, per socket.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// How often the agent reports its slots to the scheduler when nothing changes (its heartbeat).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// The first wait before reconnecting to the scheduler; it doubles up to the maximum.
pub const DEFAULT_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
pub const DEFAULT_RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long an executor has to write its ready file.
pub const DEFAULT_EXECUTOR_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an executor has to exit after SIGTERM before SIGKILL.
pub const DEFAULT_EXECUTOR_STOP_GRACE: Duration = Duration::from_secs(2);
/// The CPU weight of a lease's cgroup in v2 units (v1: 2 cpu.shares): batch work always wins
/// a contended CPU.
pub const DEFAULT_LEASE_CPU_WEIGHT: u64 = 1;
/// How long a synchronous reclaim at step start may take before the step is let go anyway
/// (an overrun, logged and counted). Below the plugin's 100 ms wait for the agent's answer.
pub const DEFAULT_RECLAIM_TIMEOUT: Duration = Duration::from_millis(50);
/// How long an evicted lease's teardown (cgroup removal, ledger write, the revocation event)
/// waits after the step was let go, so as not to compete with the step's start for CPU.
pub const DEFAULT_RECLAIM_TEARDOWN_DELAY: Duration = Duration::from_millis(100);
/// How often Slurm is asked whether it drains this node.
pub const DEFAULT_DRAIN_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often an agent talking plaintext to its scheduler says so again (besides at start).
pub const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(60);
/// The proc filesystem, read to tell whether an executor still runs.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// The most tasks (processes and threads together) one lease's cgroup may hold. A function pool
/// is one executor supervisor plus one worker per connection (at most 64), each with a few
/// threads of its own (a runtime's, OpenMP or BLAS pools sized to the lease's cores): 256 leaves
/// that room, and 100 such leases stay below a 32768 `pid_max`, so a thread or fork bomb stops at
/// its lease and the next batch step can still fork.
pub const DEFAULT_LEASE_PIDS_MAX: u64 = 256;
/// The fewest tasks `lease_pids_max` may allow (the supervisor, a worker and their threads).
pub const MIN_LEASE_PIDS_MAX: u64 = 16;
/// The kernel's largest `pid_max` (`PID_MAX_LIMIT` on 64-bit).
pub const MAX_LEASE_PIDS_MAX: u64 = 4 << 20;
/// The most bytes of an executor's output kept in its `executor.log` (8 MiB): enough for the
/// start-up and error messages a user reads, bounded so a function that prints in a loop cannot
/// fill the state directory's filesystem.
pub const DEFAULT_EXECUTOR_LOG_MAX_BYTES: u64 = 8 << 20;
/// The longest duration any key may give: deadlines are `now + duration`, which must not
/// overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The agent's settings.
/// Where harvestd finds the node's GPUs (`gpu_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuSourceKind {
    #[default]
    Nvml,
    DeviceFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The Slurm node name this agent serves (from `--node`, not the file).
    #[serde(skip)]
    pub node: String,
    /// Where the sockets go (`--run-dir`, `$HARVEST_RUN_DIR` override).
    pub run_dir: PathBuf,
    /// Where `ledger-<node>.json` is kept (`--state-dir` overrides).
    pub state_dir: PathBuf,
    /// The cgroup filesystem root (`--cgroup-root` overrides).
    pub cgroup_root: PathBuf,
    /// Read once to detect the cgroup version.
    pub mountinfo: PathBuf,
    /// Whole cores (the lowest-numbered, all their PUs) kept for the OS and daemons: never idle.
    pub reserve_cores: u32,
    /// MiB kept for the OS, slurmd, slurmstepd, munged, harvestd and page-cache headroom.
    pub reserve_memory_mib: u64,
    /// How often the ledger is compared with the cgroup tree.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reconcile_interval: Duration,
    /// How long a reported job is held while its cgroup never appears.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub unseen_job_grace: Duration,
    /// How long a client has to send its one line (and to take the reply).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub read_timeout: Duration,
    /// Connections served at once per socket; more are answered "busy".
    pub max_connections: usize,
    /// A group name or gid that may also write to the plugin socket (mode 0660).
    pub plugin_socket_group: Option<String>,
    /// Where `plugin_socket_group` names are looked up.
    pub group_file: PathBuf,
    /// The program asked about recovered jobs.
    pub scontrol: PathBuf,
    /// How long `scontrol` may take before it is killed.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub scontrol_timeout: Duration,
    /// The scheduler's URL, `https://host:port`, or several separated by commas (a primary and its
    /// standbys, tried in turn) (`--scheduler`, `$HARVEST_SCHEDULER` override); none: standalone.
    pub scheduler: Option<String>,
    /// The longest time between two slot reports.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub heartbeat_interval: Duration,
    /// The longest wait between reconnection attempts.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reconnect_backoff_max: Duration,
    /// The `harvest-executor` binary; harvestd with a scheduler refuses to start without one.
    /// Unset: beside harvestd, else `PATH`.
    pub executor_path: Option<PathBuf>,
    /// The address executors listen on. The default, `0.0.0.0`, is every interface of the node;
    /// `127.0.0.1` serves clients on this host only. Clients are given
    /// `executor_advertise_address`, not this.
    pub executor_bind_address: std::net::IpAddr,
    /// The address clients are given to reach this node's executors (with each executor's port):
    /// this node's address on the network clients connect from. Unset: `executor_bind_address`
    /// when that is a specific address, else the first non-loopback address this node's host name
    /// resolves to. harvestd refuses to start when it is `0.0.0.0`/`::`, not one of this node's
    /// addresses, or (unset) when the host name resolves to loopback only.
    pub executor_advertise_address: Option<std::net::IpAddr>,
    /// Whether a lease of uid 0 may run (as root, group 0 only).
    pub allow_root_executors: bool,
    /// The lowest uid an executor runs as (0 is refused: root is `allow_root_executors`'s).
    pub min_executor_uid: u32,
    /// A passwd-format file to look lease users up in (their primary group and shell). Unset:
    /// `getent passwd` (NSS).
    pub passwd_file: Option<PathBuf>,
    /// How long an executor has to write its address line to its ready pipe.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub executor_start_timeout: Duration,
    /// SIGTERM to SIGKILL, and how long an emptying cgroup is waited for.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub executor_stop_grace: Duration,
    /// Lease groups' CPU weight in v2 units, 1..=10000 (v1: converted to `cpu.shares`, 1 gives 2);
    /// their parent `harvest_<node>` gets it too, so all functions together weigh that against
    /// batch tasks.
    pub lease_cpu_weight: u64,
    /// The group (relative to each hierarchy's root) lease groups go under. Unset:
    /// `harvest_<node>`.
    pub lease_cgroup_parent: Option<PathBuf>,
    /// Read to tell whether an executor still runs.
    pub proc_root: PathBuf,
    /// The most tasks (processes and threads) one lease's cgroup may hold (`pids.max`),
    /// 16..=4194304: an executor is one supervisor plus a worker per connection (at most 64), each
    /// with a few threads (OpenMP, BLAS pools); 100 such leases stay under a 32768 `pid_max`, so a
    /// thread or fork bomb stops at its lease and the next batch step can fork. Not `RLIMIT_NPROC`,
    /// which counts the user's processes node-wide.
    pub lease_pids_max: u64,
    /// Where device nodes are looked up: a lent GPU N is `<dev_root>/nvidiaN`, and its major:minor
    /// from `stat` is what the v1 devices controller allows.
    pub dev_root: PathBuf,
    /// Where the driver lists the minors of MIG instances' access files (`gpu<N>/gi<G>/access
    /// <M>`, `gpu<N>/gi<G>/ci<C>/access <M>`); a lease lent a MIG instance is allowed
    /// `<dev_root>/nvidia-caps/nvidia-cap<M>` of its two ([gpus.md](gpus.md#mig-instances)).
    pub nvidia_caps_mig_minors: PathBuf,
    /// Lend GPUs on a node whose lease groups cannot confine devices (cgroup v2: harvestd attaches
    /// no BPF device program), where a function could open every GPU of the node. Off: such a node
    /// refuses GPU leases, with an error naming this key.
    pub allow_unconfined_gpus: bool,
    /// Where the node's GPUs come from: `"nvml"` (the driver: names, UUIDs, memory, MIG mode), or
    /// `"device-files"` (the character devices `<dev_root>/nvidiaN` of major 195; no UUIDs, so
    /// `CUDA_VISIBLE_DEVICES` carries indices; for nodes without the driver's library and the local
    /// cluster's fake GPUs). A source that finds nothing reports the GPUs unavailable with its
    /// reason.
    pub gpu_source: GpuSourceKind,
    /// Set where Slurm runs with `ConstrainDevices=yes`: a GPU job that the plugin reports as
    /// holding every GPU (Slurm 22.05's v1 devices list cannot say which) is narrowed to the GRES
    /// indices `scontrol show job -d` gives, asked off the step-start path and again every 30 s
    /// until final. Off: such a job holds every GPU of the node while it runs.
    pub slurm_constrains_gpus: bool,
    /// The most bytes of an executor's stdout and stderr written to its `executor.log`; the rest is
    /// drained and dropped.
    pub executor_log_max_bytes: u64,
    /// Address (`127.0.0.1:9201`) where Prometheus scrapes `/metrics`; none: not served. The
    /// metrics are listed in [metrics.md](metrics.md).
    pub metrics_listen: Option<String>,
    /// Interference monitoring and control (the `[interference]` table; docs/interference.md).
    pub interference: crate::interference::InterferenceConfig,
    /// How long a step start may wait for executors on its resources to be gone
    /// ([reclaim.md](reclaim.md)).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reclaim_timeout: Duration,
    /// How long an evicted lease's teardown waits after the step was let go.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub reclaim_teardown_delay: Duration,
    /// Run all lease groups SCHED_IDLE (`cpu.idle` on `harvest_<node>`, Linux 5.15+): any batch
    /// task preempts a function at once.
    pub lease_cpu_idle: bool,
    /// Which leases go first: `newest-first`, `oldest-first`, `largest-first`.
    pub reclaim_order: ReclaimOrder,
    /// Move an executor to other idle CPUs instead of evicting it, when enough are idle.
    pub reclaim_move: bool,
    /// How often Slurm is asked whether it drains the node (its leases are then revoked).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub drain_check_interval: Duration,
    /// The CA (PEM) that signs the scheduler's certificate: orders come only from a scheduler that
    /// proves one. Unset: required with `scheduler`.
    pub tls_ca: Option<PathBuf>,
    /// This node's client certificate (PEM); its subject CN is the node name. Unset: required with
    /// `scheduler`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1), readable by root only. Unset:
    /// required with `scheduler`.
    pub tls_key: Option<PathBuf>,
    /// Talk to the scheduler without TLS (`--insecure-plaintext` sets it): anyone who answers at
    /// the scheduler's address can start executors here. Tests on a trusted host only; warned at
    /// every connection and every minute.
    pub insecure_plaintext: bool,
    /// The log level, or directives such as "info,harvest_agent=debug" (`RUST_LOG` overrides
    /// it at start); `SIGHUP` re-reads it from this file. Default "info".
    pub log_level: Option<String>,
    /// "text" (plain lines; under systemd without timestamps, with syslog priorities) or
    /// "json" (one object per line). `--log-format` / `HARVEST_LOG_FORMAT` override it.
    pub log_format: Option<harvest_logging::Format>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node: String::new(),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            cgroup_root: PathBuf::from(crate::cgroup::DEFAULT_CGROUP_ROOT),
            mountinfo: PathBuf::from(crate::cgroup::DEFAULT_MOUNTINFO),
            reserve_cores: DEFAULT_RESERVE_CORES,
            reserve_memory_mib: DEFAULT_RESERVE_MEMORY_MIB,
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            unseen_job_grace: DEFAULT_UNSEEN_JOB_GRACE,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            plugin_socket_group: None,
            group_file: PathBuf::from("/etc/group"),
            scontrol: PathBuf::from("scontrol"),
            scontrol_timeout: DEFAULT_SCONTROL_TIMEOUT,
            scheduler: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            reconnect_backoff_max: DEFAULT_RECONNECT_BACKOFF_MAX,
            executor_path: None,
            executor_bind_address: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            executor_advertise_address: None,
            allow_root_executors: false,
            min_executor_uid: crate::leases::identity::DEFAULT_MIN_EXECUTOR_UID,
            passwd_file: None,
            executor_start_timeout: DEFAULT_EXECUTOR_START_TIMEOUT,
            executor_stop_grace: DEFAULT_EXECUTOR_STOP_GRACE,
            lease_cpu_weight: DEFAULT_LEASE_CPU_WEIGHT,
            lease_cgroup_parent: None,
            proc_root: PathBuf::from(DEFAULT_PROC_ROOT),
            lease_pids_max: DEFAULT_LEASE_PIDS_MAX,
            dev_root: PathBuf::from(crate::cgroup::devices::DEFAULT_DEV_ROOT),
            nvidia_caps_mig_minors: PathBuf::from(crate::cgroup::devices::DEFAULT_MIG_MINORS),
            allow_unconfined_gpus: false,
            gpu_source: GpuSourceKind::Nvml,
            slurm_constrains_gpus: false,
            executor_log_max_bytes: DEFAULT_EXECUTOR_LOG_MAX_BYTES,
            metrics_listen: None,
            interference: crate::interference::InterferenceConfig::default(),
            reclaim_timeout: DEFAULT_RECLAIM_TIMEOUT,
            reclaim_teardown_delay: DEFAULT_RECLAIM_TEARDOWN_DELAY,
            lease_cpu_idle: true,
            reclaim_order: ReclaimOrder::default(),
            reclaim_move: true,
            drain_check_interval: DEFAULT_DRAIN_CHECK_INTERVAL,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            insecure_plaintext: false,
            log_level: None,
            log_format: None,
        }
    }
}

/// A configuration that cannot be used.
pub use crate::config_error::{ConfigError, duration, write_duration};

impl Config {
    /// Reads a TOML file; every key not in it keeps its default.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Checks the settings once, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let ok_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !ok_name(&self.node) {
            return Err(ConfigError::Invalid {
                key: "--node",
                value: format!("{:?}", self.node),
                hint: "give the Slurm node name, e.g. --node n1 (letters, digits, '-', '_', '.')",
            });
        }
        if let Some(level) = &self.log_level
            && harvest_logging::filter(level).is_err()
        {
            return Err(ConfigError::Invalid {
                key: "log_level",
                value: format!("{level:?}"),
                hint: "give a level (error, warn, info, debug, trace) or directives such as \
                       \"info,harvest_agent=debug\"",
            });
        }
        if let Some(addr) = self.executor_advertise_address
            && addr.is_unspecified()
        {
            return Err(ConfigError::Invalid {
                key: "executor_advertise_address",
                value: addr.to_string(),
                hint: "clients connect to the advertised address: give this node's address on \
                       the cluster network (or 127.0.0.1 for clients on this host only), or leave \
                       it unset for the address of this node's host name",
            });
        }
        for (key, d) in [
            ("reconcile_interval", self.reconcile_interval),
            ("read_timeout", self.read_timeout),
            ("scontrol_timeout", self.scontrol_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("executor_start_timeout", self.executor_start_timeout),
            ("reclaim_timeout", self.reclaim_timeout),
            ("drain_check_interval", self.drain_check_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    value: format!("{d:?}"),
                    hint: "must be above zero, e.g. \"1s\"",
                });
            }
        }
        let i = &self.interference;
        for (key, d) in [
            ("reconcile_interval", self.reconcile_interval),
            ("unseen_job_grace", self.unseen_job_grace),
            ("read_timeout", self.read_timeout),
            ("scontrol_timeout", self.scontrol_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
            ("executor_start_timeout", self.executor_start_timeout),
            ("executor_stop_grace", self.executor_stop_grace),
            ("reclaim_timeout", self.reclaim_timeout),
            ("reclaim_teardown_delay", self.reclaim_teardown_delay),
            ("drain_check_interval", self.drain_check_interval),
            ("interference.period", i.period),
            ("interference.probe_duration", i.probe_duration),
            ("interference.probe_interval", i.probe_interval),
            ("interference.settle", i.settle),
            ("interference.relax_after", i.relax_after),
            ("interference.max_hold", i.max_hold),
            ("interference.evict_hold", i.evict_hold),
        ] {
            if d > MAX_DURATION {
                return Err(ConfigError::Invalid {
                    key,
                    value: format!("{d:?}"),
                    hint: "must be at most 365 days (\"8760h\")",
                });
            }
        }
        if self.min_executor_uid == 0 {
            return Err(ConfigError::Invalid {
                key: "min_executor_uid",
                value: "0".into(),
                hint: "use the site's first user uid (1000 on Debian and RHEL); root is allowed only by allow_root_executors",
            });
        }
        if !(1..=10_000).contains(&self.lease_cpu_weight) {
            return Err(ConfigError::Invalid {
                key: "lease_cpu_weight",
                value: self.lease_cpu_weight.to_string(),
                hint: "use 1..=10000 (v2 cpu.weight units; 1 is the lowest)",
            });
        }
        if !(MIN_LEASE_PIDS_MAX..=MAX_LEASE_PIDS_MAX).contains(&self.lease_pids_max) {
            return Err(ConfigError::Invalid {
                key: "lease_pids_max",
                value: self.lease_pids_max.to_string(),
                hint: "use 16..=4194304 tasks per lease (processes and threads; default 256)",
            });
        }
        if self.executor_log_max_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "executor_log_max_bytes",
                value: "0".into(),
                hint: "must be at least 1 (default 8388608, 8 MiB)",
            });
        }
        if !self.dev_root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "dev_root",
                value: format!("{}", self.dev_root.display()),
                hint: "give an absolute directory, e.g. \"/dev\"",
            });
        }
        if !self.nvidia_caps_mig_minors.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "nvidia_caps_mig_minors",
                value: format!("{}", self.nvidia_caps_mig_minors.display()),
                hint: "give an absolute path, e.g. \"/proc/driver/nvidia-caps/mig-minors\"",
            });
        }
        if let Some(parent) = &self.lease_cgroup_parent
            && (parent.as_os_str().is_empty()
                || !parent
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))))
        {
            return Err(ConfigError::Invalid {
                key: "lease_cgroup_parent",
                value: format!("{}", parent.display()),
                hint: "give a relative cgroup path without '..', e.g. \"harvest_n1\"",
            });
        }
        if let Some(list) = &self.scheduler
            && let Some(url) = scheduler_urls(list)
                .into_iter()
                .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ConfigError::Invalid {
                key: "scheduler",
                value: format!("{url:?}"),
                hint: "give the scheduler's URL, e.g. https://127.0.0.1:6820 (http:// is spoken \
                       as https:// with TLS), or several separated by commas (a primary and its \
                       standbys)",
            });
        }
        if let Some(addr) = &self.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid {
                key: "metrics_listen",
                value: format!("{addr:?}"),
                hint: "give an address and port, e.g. \"127.0.0.1:9201\"",
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                value: "0".into(),
                hint: "must be at least 1",
            });
        }
        self.interference.validate()?;
        if self.scheduler.is_some() && !self.insecure_plaintext {
            for (key, value) in [
                ("tls_ca", &self.tls_ca),
                ("tls_cert", &self.tls_cert),
                ("tls_key", &self.tls_key),
            ] {
                if value.is_none() {
                    return Err(ConfigError::Invalid {
                        key,
                        value: "unset".into(),
                        hint: "the scheduler session uses mutual TLS: set tls_ca, tls_cert and \
                               tls_key (deploy/local-cluster up makes them; docs/security.md); \
                               only for a test on a trusted host: insecure_plaintext = true",
                    });
                }
            }
        }
        Ok(())
    }

    /// The scheduler session's TLS (the scheduler's CA, this node's certificate), read and
    /// checked now; `None` with `insecure_plaintext`.
    pub fn scheduler_tls(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, harvest_proto::tls::TlsFileError> {
        use harvest_proto::tls::{read_ca, read_identity};
        if self.insecure_plaintext {
            return Ok(None);
        }
        let path = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
        let ca = read_ca("tls_ca", &path(&self.tls_ca))?;
        let identity = read_identity(
            ("tls_cert", &path(&self.tls_cert)),
            ("tls_key", &path(&self.tls_key)),
        )?;
        Ok(Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(identity),
        ))
    }

    pub fn reserve(&self) -> Reserve {
        Reserve {
            cores: self.reserve_cores,
            memory_mib: self.reserve_memory_mib,
        }
    }
}

/// The schedulers of a comma-separated list (a primary and its standbys), in order.
pub fn scheduler_urls(list: &str) -> Vec<String> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        vec![list.to_owned()]
    } else {
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found with the `agent_config` fuzz target (its body panicked on this input): a duration of
    /// about 10^19 s passed validation, and `Instant::now() + executor_start_timeout` (or any
    /// other such deadline) panicked when the first lease started.
    #[test]
    fn durations_past_a_year_are_refused_naming_the_key() {
        let node = |text: &str| {
            let mut c = Config::parse(text, Path::new("x.toml")).unwrap();
            c.node = "n1".into();
            c
        };
        let e = node("executor_start_timeout = \"3000000000000000h\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`executor_start_timeout`"), "{e}");
        assert!(e.contains("365 days"), "{e}");
        let e = node("[interference]\nmax_hold = \"8761h\"")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`interference.max_hold`"), "{e}");
        node("reclaim_teardown_delay = \"8760h\"")
            .validate()
            .unwrap();
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.reserve_memory_mib, DEFAULT_RESERVE_MEMORY_MIB);
        assert_eq!(c.run_dir, Path::new(DEFAULT_RUN_DIR));
    }

    #[test]
    fn lease_hardening_keys() {
        let c = Config::default();
        assert_eq!(c.lease_pids_max, 256);
        assert_eq!(c.dev_root, Path::new("/dev"));
        assert_eq!(c.executor_log_max_bytes, 8 << 20);
        let c = Config::parse(
            "lease_pids_max = 64\ndev_root = \"/tmp/fakedev\"\nexecutor_log_max_bytes = 4096\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(
            (
                c.lease_pids_max,
                c.dev_root.as_path(),
                c.executor_log_max_bytes
            ),
            (64, Path::new("/tmp/fakedev"), 4096)
        );
    }

    #[test]
    fn gpu_confinement_keys() {
        let c = Config::default();
        assert_eq!(
            c.nvidia_caps_mig_minors,
            Path::new("/proc/driver/nvidia-caps/mig-minors")
        );
        assert!(
            !c.allow_unconfined_gpus,
            "unconfined GPUs are refused by default"
        );
        let c = Config::parse(
            "allow_unconfined_gpus = true\nnvidia_caps_mig_minors = \"/tmp/mig-minors\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert!(c.allow_unconfined_gpus);
        assert_eq!(c.nvidia_caps_mig_minors, Path::new("/tmp/mig-minors"));
    }

    #[test]
    fn executor_identity_keys() {
        let c = Config::default();
        assert_eq!(c.min_executor_uid, 1000);
        assert_eq!(c.passwd_file, None);
        let mut c = Config::parse(
            "min_executor_uid = 5000\npasswd_file = \"/etc/harvest/passwd\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.min_executor_uid, 5000);
        assert_eq!(
            c.passwd_file.as_deref(),
            Some(Path::new("/etc/harvest/passwd"))
        );
        c.node = "n1".into();
        c.min_executor_uid = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("min_executor_uid"), "{e}");
    }

    #[test]
    fn keys_and_durations_are_read() {
        let c = Config::parse(
            "reserve_cores = 2\nreserve_memory_mib = 4096\nreconcile_interval = \"500ms\"\n\
             plugin_socket_group = \"slurm\"\nstate_dir = \"/tmp/s\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.reserve().cores, 2);
        assert_eq!(c.reserve().memory_mib, 4096);
        assert_eq!(c.reconcile_interval, Duration::from_millis(500));
        assert_eq!(c.plugin_socket_group.as_deref(), Some("slurm"));
        assert_eq!(c.state_dir, Path::new("/tmp/s"));
        let c = Config::parse(
            "scheduler = \"http://127.0.0.1:7070\"\nheartbeat_interval = \"250ms\"\n\
             allow_root_executors = true\nexecutor_path = \"/opt/h/harvest-executor\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.scheduler.as_deref(), Some("http://127.0.0.1:7070"));
        assert_eq!(c.heartbeat_interval, Duration::from_millis(250));
        assert!(c.allow_root_executors);
        assert_eq!(
            c.executor_path.as_deref(),
            Some(Path::new("/opt/h/harvest-executor"))
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let err = Config::parse("reserve_core = 1\n", Path::new("agent.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("agent.toml") && msg.contains("reserve_core"),
            "{msg}"
        );
        let err = Config::parse("read_timeout = \"5\"\n", Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("--node"), "{err}");
        c.node = "n1".into();
        c.validate().unwrap();
        c.node = "../etc".into();
        assert!(c.validate().is_err());
        c.node = "n1".into();
        c.scheduler = Some("127.0.0.1:7070".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("scheduler") && err.contains("http://"),
            "{err}"
        );
        c.scheduler = Some("http://127.0.0.1:7070".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("tls_ca") && err.contains("insecure_plaintext"),
            "{err}"
        );
        c.tls_ca = Some("ca.pem".into());
        c.tls_cert = Some("n1.pem".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("`tls_key`"), "{err}");
        c.tls_key = Some("n1.key".into());
        c.validate().unwrap();
        let missing = c.scheduler_tls().unwrap_err().to_string();
        assert!(missing.starts_with("tls_ca = ca.pem"), "{missing}");
        c.tls_ca = None;
        c.insecure_plaintext = true;
        c.validate().unwrap();
        assert!(c.scheduler_tls().unwrap().is_none());
        c.lease_cpu_weight = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lease_cpu_weight")
        );
        c.lease_cpu_weight = DEFAULT_LEASE_CPU_WEIGHT;
        c.lease_cgroup_parent = Some("/sys/fs/cgroup/x".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lease_cgroup_parent")
        );
        c.lease_cgroup_parent = Some("harvest_test/n1".into());
        c.validate().unwrap();
        c.metrics_listen = Some("localhost".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("metrics_listen")
        );
        c.metrics_listen = Some("127.0.0.1:9201".into());
        c.validate().unwrap();
        for (key, bad) in [
            ("lease_pids_max", "lease_pids_max = 8"),
            ("lease_pids_max", "lease_pids_max = 5000000"),
            ("executor_log_max_bytes", "executor_log_max_bytes = 0"),
            ("dev_root", "dev_root = \"dev\""),
            (
                "nvidia_caps_mig_minors",
                "nvidia_caps_mig_minors = \"mig-minors\"",
            ),
        ] {
            let mut bad = Config::parse(bad, Path::new("x.toml")).unwrap();
            bad.node = "n1".into();
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.starts_with(&format!("`{key}`")), "{err}");
        }
        c.reconcile_interval = Duration::ZERO;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("reconcile_interval")
        );
    }
}
