//! The scheduler's configuration: TOML on disk, every key with a named default, validated once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the scheduler listens for clients and agents (one address, both services): every
/// interface, so that agents and clients on other hosts reach it.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:6820";
/// Lifetime of a lease that asks for none.
pub const DEFAULT_LIFETIME_MS: u64 = 10 * 60 * 1000;
/// A lease with neither an invocation nor a RenewLease for this long ends (the client went
/// away); 0 turns idle timeouts off. The client library renews well within it.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 5 * 60 * 1000;
/// The longest lifetime a lease may ask for.
pub const DEFAULT_MAX_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;
/// Memory per core of a lease that asks for no memory (like Slurm's DefMemPerCPU).
pub const DEFAULT_MEMORY_PER_CORE_MIB: u64 = 256;
/// A node is down after this many heartbeat intervals without a report.
pub const DEFAULT_HEARTBEAT_MISS_LIMIT: u32 = 5;
/// The heartbeat interval assumed for an agent that registers without one.
pub const DEFAULT_AGENT_HEARTBEAT_MS: u64 = 1000;
/// How long AcquireLease waits for the agent to report the executor ready.
pub const DEFAULT_EXECUTOR_START_TIMEOUT_MS: u64 = 10_000;
/// How long AcquireLease waits for a placement when no node has room right now (resources of an
/// ending lease come back with the agent's next report, within a heartbeat). 0 refuses at once.
pub const DEFAULT_PLACEMENT_WAIT_MS: u64 = 2000;
/// How often a standby scheduler tries to take the primary lock.
pub const DEFAULT_STANDBY_POLL_MS: u64 = 200;
/// How often a waiting AcquireLease tries to place again.
pub const PLACEMENT_RETRY: Duration = Duration::from_millis(20);
/// How often expiry and heartbeats are checked.
pub const DEFAULT_TICK_MS: u64 = 200;
/// The placement policy (one of `harvest_policies::BUILTIN_POLICIES`).
pub const DEFAULT_POLICY: &str = "best-fit";
/// The `unmunge` program that decodes credentials.
pub const DEFAULT_UNMUNGE: &str = "unmunge";
/// Credential checks (`unmunge` processes) run at once; more wait their turn.
pub const DEFAULT_AUTH_MAX_CONCURRENT: usize = 16;
/// How long decoding one credential may take.
pub const DEFAULT_AUTH_TIMEOUT_MS: u64 = 5000;
/// Largest request accepted (a shipped function library travels inside AcquireLease).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = harvest_proto::DEFAULT_MAX_MESSAGE_BYTES;
/// How many ended leases `ListLeases` still shows.
pub const DEFAULT_ENDED_LEASES_KEPT: usize = 1000;
/// The password database used to name the uid of an adopted lease.
pub const DEFAULT_PASSWD: &str = "/etc/passwd";
/// How often the dashboard's utilization timeline is sampled.
pub const DEFAULT_TIMELINE_SAMPLE_MS: u64 = 5000;
/// How far back the timeline reaches (the ring buffer holds window / sample samples).
pub const DEFAULT_TIMELINE_WINDOW_MS: u64 = 60 * 60 * 1000;
/// How many recent events (revocations, reclaims, interference) the dashboard keeps.
pub const DEFAULT_EVENTS_KEPT: usize = 200;

/// How often a scheduler serving plaintext says so again (besides at start).
pub const INSECURE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// A configuration that cannot be used; each variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("listen = {0:?} is not an address such as 127.0.0.1:6820")]
    Listen(String),
    #[error("http_listen = {0:?} is not an address such as 127.0.0.1:6821")]
    HttpListen(String),
    #[error(
        "timeline_window_ms = {window} is shorter than timeline_sample_ms = {sample}: the window \
         must hold at least one sample"
    )]
    Timeline { window: u64, sample: u64 },
    #[error("{key} = {value} must be greater than 0")]
    Zero { key: &'static str, value: u64 },
    #[error("{key} = {value} is longer than {MAX_DURATION_MS} ms (365 days)")]
    TooLong { key: &'static str, value: u64 },
    #[error("default_lifetime_ms = {default} is longer than max_lifetime_ms = {max}")]
    Lifetime { default: u64, max: u64 },
    #[error("policy: {0}")]
    Policy(#[from] harvest_policies::ConfigError),
    #[error(
        "{key} is not set: agents and the scheduler talk over mutual TLS, so the scheduler needs \
         tls_cert, tls_key and tls_client_ca (deploy/local-cluster up makes them; docs/security.md \
         says how). Only for a test on a trusted host: insecure_plaintext = true"
    )]
    TlsMissing { key: &'static str },
    #[error("log_level: {0}")]
    LogLevel(harvest_logging::LogError),
}

/// The longest time any `*_ms` key may give: a lease's expiry is its start plus its lifetime, in
/// Unix milliseconds (an `i64`) and on the monotonic clock, and neither sum may overflow.
pub const MAX_DURATION_MS: u64 = 365 * 24 * 60 * 60 * 1000;

/// The scheduler's configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of both services (`--listen` overrides); `0.0.0.0` binds every interface.
    pub listen: String,
    /// `host:port` agents and clients reach this scheduler at: what their `scheduler` URLs and
    /// this scheduler's certificate name (`--advertise` overrides). It is logged at start and
    /// written to `primary_lock`, and checked once: a name must resolve to an address of this
    /// host, an address must be one (never `0.0.0.0`). Unset: `listen` when that is a specific
    /// address, else the first non-loopback address of this host's name, with `listen`'s port. A
    /// file that a primary and its standby share leaves it unset or each host passes
    /// `--advertise`.
    pub advertise: Option<String>,
    /// Placement policy: one of harvest-policies' built-ins (`first-fit`, `best-fit`, `spread`,
    /// `interference-aware`, `gpu-aware`, `lease-affinity`, `harvest`).
    pub policy: String,
    /// Lifetime of a lease that asks for none.
    pub default_lifetime_ms: u64,
    /// A lease with neither an invocation nor a `RenewLease` for this long ends (cause `idle`: its
    /// client went away); 0: never.
    pub default_idle_timeout_ms: u64,
    /// Longest lifetime accepted (longer: INVALID_ARGUMENT).
    pub max_lifetime_ms: u64,
    /// Memory of a lease that asks for none, per core.
    pub default_memory_per_core_mib: u64,
    /// A node is down after this many of its heartbeat intervals without a report.
    pub heartbeat_miss_limit: u32,
    /// Heartbeat interval of an agent whose Register gives none.
    pub default_agent_heartbeat_ms: u64,
    /// How long AcquireLease waits for the executor to be ready.
    pub executor_start_timeout_ms: u64,
    /// How long AcquireLease retries placement (every 20 ms) when no node has room now, before
    /// RESOURCE_EXHAUSTED; an ended lease's resources come back with its agent's next report. 0
    /// refuses at once.
    pub placement_wait_ms: u64,
    /// How often expiry and heartbeats are checked.
    pub tick_ms: u64,
    /// The program that decodes credentials.
    pub unmunge: PathBuf,
    /// munged's socket (`unmunge --socket`). Unset: munge's default.
    pub munge_socket: Option<PathBuf>,
    /// How long decoding one credential may take (waiting for a turn included).
    pub auth_timeout_ms: u64,
    /// `unmunge` processes run at once; up to 16 times as many checks wait, more are UNAVAILABLE at
    /// once (a flood of requests cannot fork without bound).
    pub auth_max_concurrent: usize,
    /// Largest AcquireLease (a shipped library travels inside it) and largest order sent to an
    /// agent.
    pub max_message_bytes: usize,
    /// How many ended leases `ListLeases` still shows.
    pub ended_leases_kept: usize,
    /// Where the user name of an adopted lease's uid is looked up.
    pub passwd: PathBuf,
    /// The dashboard (`/`), its JSON (`/api/cluster`) and Prometheus metrics (`/metrics`), over
    /// HTTP (`--http` overrides); none: not served. See [metrics.md](metrics.md).
    pub http_listen: Option<String>,
    /// How often the dashboard's utilization timeline samples the cluster.
    pub timeline_sample_ms: u64,
    /// How far back the timeline reaches (at least one sample).
    pub timeline_window_ms: u64,
    /// Recent reclaim, interference and node events the dashboard keeps.
    pub events_kept: usize,
    /// The scheduler's certificate chain (PEM), presented to agents and clients; it must name the
    /// address they connect to (e.g. SAN `IP:127.0.0.1`, `DNS:scheduler.example`). Unset: required.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM), readable by the scheduler's user only. Unset: required.
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signs the agents' client certificates; a certificate's subject CN is its
    /// node's name. Unset: required.
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plaintext gRPC without certificates (`--insecure-plaintext` sets it): anyone who
    /// reaches the port can register as any node. Tests on a trusted host only; warned at start and
    /// every minute.
    pub insecure_plaintext: bool,
    /// Operators, caps per user and group.
    pub access: crate::access::AccessConfig,
    /// A file on storage every scheduler host shares (as Slurm's StateSaveLocation): the scheduler
    /// that holds its lock serves, others wait as standbys and take over when it is released (see
    /// [High availability](#high-availability)); none: serve at once, alone.
    pub primary_lock: Option<PathBuf>,
    /// How often a standby tries to take `primary_lock`.
    pub standby_poll_ms: u64,
    /// The log level, or directives such as "info,harvest_scheduler=debug" (`RUST_LOG`
    /// overrides it at start); `SIGHUP` re-reads it from this file. Default "info".
    pub log_level: Option<String>,
    /// "text" (plain lines; under systemd without timestamps, with syslog priorities) or
    /// "json" (one object per line). `--log-format` / `HARVEST_LOG_FORMAT` override it.
    pub log_format: Option<harvest_logging::Format>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.to_owned(),
            advertise: None,
            policy: DEFAULT_POLICY.to_owned(),
            default_lifetime_ms: DEFAULT_LIFETIME_MS,
            max_lifetime_ms: DEFAULT_MAX_LIFETIME_MS,
            default_memory_per_core_mib: DEFAULT_MEMORY_PER_CORE_MIB,
            heartbeat_miss_limit: DEFAULT_HEARTBEAT_MISS_LIMIT,
            default_agent_heartbeat_ms: DEFAULT_AGENT_HEARTBEAT_MS,
            executor_start_timeout_ms: DEFAULT_EXECUTOR_START_TIMEOUT_MS,
            placement_wait_ms: DEFAULT_PLACEMENT_WAIT_MS,
            tick_ms: DEFAULT_TICK_MS,
            unmunge: PathBuf::from(DEFAULT_UNMUNGE),
            munge_socket: None,
            auth_timeout_ms: DEFAULT_AUTH_TIMEOUT_MS,
            auth_max_concurrent: DEFAULT_AUTH_MAX_CONCURRENT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            ended_leases_kept: DEFAULT_ENDED_LEASES_KEPT,
            default_idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            passwd: PathBuf::from(DEFAULT_PASSWD),
            http_listen: None,
            timeline_sample_ms: DEFAULT_TIMELINE_SAMPLE_MS,
            timeline_window_ms: DEFAULT_TIMELINE_WINDOW_MS,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            insecure_plaintext: false,
            events_kept: DEFAULT_EVENTS_KEPT,
            access: crate::access::AccessConfig::default(),
            primary_lock: None,
            standby_poll_ms: DEFAULT_STANDBY_POLL_MS,
            log_level: None,
            log_format: None,
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let config = Self::read(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file without validating it (command-line options may still complete it).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(config)
    }

    /// Checks every key; the error names the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        harvest_policies::PolicyConfig::builtin(&self.policy)?;
        if let Some(level) = &self.log_level {
            harvest_logging::filter(level).map_err(ConfigError::LogLevel)?;
        }
        let positive = [
            ("default_lifetime_ms", self.default_lifetime_ms),
            ("max_lifetime_ms", self.max_lifetime_ms),
            ("heartbeat_miss_limit", u64::from(self.heartbeat_miss_limit)),
            (
                "default_agent_heartbeat_ms",
                self.default_agent_heartbeat_ms,
            ),
            ("executor_start_timeout_ms", self.executor_start_timeout_ms),
            ("tick_ms", self.tick_ms),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("auth_max_concurrent", self.auth_max_concurrent as u64),
            ("max_message_bytes", self.max_message_bytes as u64),
            ("timeline_sample_ms", self.timeline_sample_ms),
            ("events_kept", self.events_kept as u64),
            ("standby_poll_ms", self.standby_poll_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Zero { key, value });
            }
        }
        for (key, value) in [
            ("default_lifetime_ms", self.default_lifetime_ms),
            ("max_lifetime_ms", self.max_lifetime_ms),
            ("default_idle_timeout_ms", self.default_idle_timeout_ms),
            (
                "default_agent_heartbeat_ms",
                self.default_agent_heartbeat_ms,
            ),
            ("executor_start_timeout_ms", self.executor_start_timeout_ms),
            ("placement_wait_ms", self.placement_wait_ms),
            ("tick_ms", self.tick_ms),
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("standby_poll_ms", self.standby_poll_ms),
            ("timeline_sample_ms", self.timeline_sample_ms),
            ("timeline_window_ms", self.timeline_window_ms),
        ] {
            if value > MAX_DURATION_MS {
                return Err(ConfigError::TooLong { key, value });
            }
        }
        if self.default_lifetime_ms > self.max_lifetime_ms {
            return Err(ConfigError::Lifetime {
                default: self.default_lifetime_ms,
                max: self.max_lifetime_ms,
            });
        }
        self.http_addr()?;
        if self.timeline_window_ms < self.timeline_sample_ms {
            return Err(ConfigError::Timeline {
                window: self.timeline_window_ms,
                sample: self.timeline_sample_ms,
            });
        }
        if !self.insecure_plaintext {
            for (key, value) in [
                ("tls_cert", &self.tls_cert),
                ("tls_key", &self.tls_key),
                ("tls_client_ca", &self.tls_client_ca),
            ] {
                if value.is_none() {
                    return Err(ConfigError::TlsMissing { key });
                }
            }
        }
        Ok(())
    }

    /// The dashboard and metrics address, when configured.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        self.http_listen
            .as_deref()
            .map(|a| a.parse().map_err(|_| ConfigError::HttpListen(a.to_owned())))
            .transpose()
    }

    /// How many timeline samples the window holds.
    pub fn timeline_samples(&self) -> usize {
        (self.timeline_window_ms / self.timeline_sample_ms.max(1)).max(1) as usize
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::Listen(self.listen.clone()))
    }

    pub fn executor_start_timeout(&self) -> Duration {
        Duration::from_millis(self.executor_start_timeout_ms)
    }

    pub fn placement_wait(&self) -> Duration {
        Duration::from_millis(self.placement_wait_ms)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_used_for_missing_keys() {
        let plaintext = Config {
            insecure_plaintext: true,
            ..Config::default()
        };
        plaintext.validate().unwrap();
        let c: Config = toml::from_str("policy = \"first-fit\"").unwrap();
        assert_eq!(c.policy, "first-fit");
        assert_eq!(c.listen, DEFAULT_LISTEN);
        assert_eq!(
            c.executor_start_timeout_ms,
            DEFAULT_EXECUTOR_START_TIMEOUT_MS
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "polcy = \"best-fit\"").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("polcy"), "{e}");

        std::fs::write(&path, "policy = \"fastest\"").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("fastest") && e.contains("first-fit"), "{e}");

        std::fs::write(&path, "tick_ms = 0").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("tick_ms"), "{e}");

        std::fs::write(&path, "default_lifetime_ms = 10\nmax_lifetime_ms = 5").unwrap();
        assert!(matches!(
            Config::load(&path).unwrap_err(),
            ConfigError::Lifetime { .. }
        ));

        std::fs::write(&path, "listen = \"nowhere\"").unwrap();
        assert!(matches!(
            Config::load(&path).unwrap_err(),
            ConfigError::Listen(_)
        ));

        std::fs::write(&path, "http_listen = \"localhost\"").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("http_listen"), "{e}");
        std::fs::write(
            &path,
            "timeline_sample_ms = 10000\ntimeline_window_ms = 5000",
        )
        .unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.contains("timeline_window_ms"), "{e}");
        std::fs::write(
            &path,
            "http_listen = \"127.0.0.1:6821\"\ninsecure_plaintext = true",
        )
        .unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(
            c.http_addr().unwrap(),
            Some("127.0.0.1:6821".parse().unwrap())
        );
        assert_eq!(c.timeline_samples(), 720);
    }

    /// Found with the `scheduler_config` fuzz target (its body panicked on this input):
    /// `max_lifetime_ms` near `i64::MAX` passed validation, and a lease asking for that lifetime
    /// overflowed its expiry (`unix_ms + lifetime`, a panic with overflow checks).
    #[test]
    fn durations_past_a_year_are_refused_naming_the_key() {
        let c: Config =
            toml::from_str("insecure_plaintext = true\nmax_lifetime_ms = 9223372036854775807\n")
                .unwrap();
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::TooLong {
                    key: "max_lifetime_ms",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("365 days"), "{e}");
        let c: Config =
            toml::from_str("insecure_plaintext = true\ntick_ms = 31536000001\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().starts_with("tick_ms"));
        let c: Config = toml::from_str(&format!(
            "insecure_plaintext = true\nmax_lifetime_ms = {MAX_DURATION_MS}\n"
        ))
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn tls_is_required_unless_plaintext_is_asked_for() {
        let e = Config::default().validate().unwrap_err().to_string();
        assert!(
            e.contains("tls_cert") && e.contains("insecure_plaintext"),
            "{e}"
        );
        let c = Config {
            tls_cert: Some("s.pem".into()),
            tls_key: Some("s.key".into()),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("tls_client_ca is not set"), "{e}");
        Config {
            tls_client_ca: Some("ca.pem".into()),
            ..c
        }
        .validate()
        .unwrap();
    }
}
