//! Leases: asking the scheduler for cores, memory and GPUs, and giving them back.
//!
//! [`SchedulerClient`] talks to `harvest-scheduler` over gRPC (control plane only). A [`Lease`]
//! names its executor's address; [`Lease::connect`] opens the direct connection invocations
//! use ([`crate::invoke`]), so the scheduler is never on the invocation path.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use harvest_proto::v1::{self, scheduler_client};
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{CredentialError, CredentialSource};
use crate::invoke::{ExecutorConnection, InvokeError, Polling};

/// How long connecting to the scheduler may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message sent (a shipped library travels inside AcquireLease).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A lease operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid scheduler address {url:?}: {message}")]
    Address { url: String, message: String },
    #[error(
        "cannot reach the scheduler at {url}: is it running? deploy/local-cluster up starts one ({source})"
    )]
    Unreachable {
        url: String,
        source: tonic::transport::Error,
    },
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("cannot read the function library {path}: {source}")]
    Library {
        path: String,
        source: std::io::Error,
    },
    /// The scheduler answered with an error.
    #[error("{op}: {message} ({code:?})")]
    Refused {
        op: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("lease {id} has no usable executor address {address:?}")]
    NoExecutor { id: String, address: String },
    #[error("the scheduler's CA: {0}")]
    Ca(#[from] harvest_proto::tls::TlsFileError),
    #[error("TLS towards the scheduler at {url}: {source}")]
    Tls {
        url: String,
        source: tonic::transport::Error,
    },
}

impl LeaseError {
    fn from_status(op: &'static str, url: &str, s: tonic::Status) -> Self {
        // A dead connection shows up as UNAVAILABLE with a transport message.
        if s.code() == tonic::Code::Unavailable && s.message().contains("transport") {
            return Self::Refused {
                op,
                code: s.code(),
                message: format!(
                    "cannot reach the scheduler at {url}: is it running? deploy/local-cluster up starts one ({})",
                    s.message()
                ),
            };
        }
        Self::Refused {
            op,
            code: s.code(),
            message: s.message().to_owned(),
        }
    }

    /// The gRPC code when the scheduler refused.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Where the executor finds the function library.
#[derive(Debug, Clone)]
pub enum Library {
    /// The shared object's bytes, shipped in the request.
    Content(Vec<u8>),
    /// A path readable by the lease's user on the node.
    Path(String),
}

impl Library {
    /// Reads a local file to ship it.
    pub fn read(path: &Path) -> Result<Self, LeaseError> {
        std::fs::read(path)
            .map(Self::Content)
            .map_err(|source| LeaseError::Library {
                path: path.display().to_string(),
                source,
            })
    }
}

/// What a lease asks for.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub cores: u32,
    /// 0: the scheduler's default per core.
    pub memory_mib: u64,
    pub gpus: u32,
    /// `None`: the scheduler's default lifetime.
    pub lifetime: Option<Duration>,
    /// No invocation and no renewal for this long ends the lease (`None`: the scheduler's
    /// default).
    pub idle_timeout: Option<Duration>,
    pub library: Library,
    /// Busy-poll window after each invocation: `None` the executor's default, `Some(None)`
    /// always hot, `Some(Some(d))` that long.
    pub hot_window: Option<Option<Duration>>,
    /// Timeout of invocations that ask for none (`None`: the executor's default).
    pub default_timeout: Option<Duration>,
}

impl LeaseRequest {
    pub fn new(cores: u32, library: Library) -> Self {
        Self {
            cores,
            memory_mib: 0,
            gpus: 0,
            lifetime: None,
            idle_timeout: None,
            library,
            hot_window: None,
            default_timeout: None,
        }
    }
}

/// A lease as the scheduler describes it.
pub use harvest_proto::views::LeaseView as Lease;
pub use harvest_proto::views::cause_name;

/// What a client does with a lease's executor.
pub trait LeaseExt {
    fn executor_addr(&self) -> Result<SocketAddr, LeaseError>;

    /// Opens a direct connection to the lease's executor. Open one per core for parallelism;
    /// `submit`/`wait_into` on a connection invoke asynchronously.
    fn connect(&self, polling: Polling) -> Result<ExecutorConnection, InvokeError>;
}

impl LeaseExt for Lease {
    fn executor_addr(&self) -> Result<SocketAddr, LeaseError> {
        self.executor_address
            .parse()
            .map_err(|_| LeaseError::NoExecutor {
                id: self.id.clone(),
                address: self.executor_address.clone(),
            })
    }

    fn connect(&self, polling: Polling) -> Result<ExecutorConnection, InvokeError> {
        let addr = self
            .executor_addr()
            .map_err(|e| InvokeError::Request(e.to_string()))?;
        ExecutorConnection::connect(addr, polling)
    }
}

/// A node as the scheduler sees it: the agent's view plus `state` (up, down, draining), its
/// reclaim counters and its interference state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    #[serde(flatten)]
    pub view: harvest_core::NodeView,
    pub state: String,
    pub last_report_unix_ms: i64,
    /// Step starts that took resources back from functions on this node.
    pub reclaims: u64,
    /// The agent's counters (reclaim evictions, moves, overruns, latency, ...).
    pub counters: NodeCounters,
    /// Leases on this node the scheduler saw revoked, by cause.
    pub revocations: std::collections::BTreeMap<String, u64>,
    /// Whether functions hurt a batch job here now (`null`: the agent runs no monitor).
    pub interference: Option<Interference>,
}

/// An agent's interference verdict, as `harvest nodes --json` shows it.
pub use harvest_proto::views::InterferenceView as Interference;
/// An agent's counters, as `harvest nodes --json` shows them.
pub use harvest_proto::views::NodeCountersView as NodeCounters;

impl From<v1::NodeStatus> for Node {
    fn from(n: v1::NodeStatus) -> Self {
        let c = n.counters.unwrap_or_default();
        Self {
            view: n.view.as_ref().map(Into::into).unwrap_or_default(),
            state: n.state,
            last_report_unix_ms: n.last_report_unix_ms,
            reclaims: c.reclaims,
            counters: c.into(),
            revocations: n.revocations.into_iter().collect(),
            interference: n.interference.as_ref().map(Interference::from),
        }
    }
}

/// A connection to the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerClient {
    url: String,
    rpc: scheduler_client::SchedulerClient<Channel>,
    credentials: Arc<dyn CredentialSource>,
}

/// `host:port` becomes `http://host:port`.
pub fn normalize_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// `host:port` and `http://host:port` become `https://host:port` (a scheduler with TLS).
pub fn tls_url(url: &str) -> String {
    let url = normalize_url(url);
    match url.strip_prefix("http://") {
        Some(rest) => format!("https://{rest}"),
        None => url,
    }
}

impl SchedulerClient {
    /// Connects to the scheduler at `url` (`http://host:port` or `host:port`) in plaintext
    /// (a scheduler with `insecure_plaintext`).
    pub async fn connect(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
    ) -> Result<Self, LeaseError> {
        Self::connect_with(url, credentials, None).await
    }

    /// Connects to the scheduler at `url` over TLS, verifying its certificate against the CA
    /// (PEM) in `ca` (`HARVEST_CA`, the configuration's `ca`).
    pub async fn connect_tls(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
        ca: &std::path::Path,
    ) -> Result<Self, LeaseError> {
        let ca = harvest_proto::tls::read_ca("ca", ca)?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
        Self::connect_with(url, credentials, Some(tls)).await
    }

    /// Connects with `tls` (over `https://`), or in plaintext without.
    pub async fn connect_with(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, LeaseError> {
        let url = if tls.is_some() {
            tls_url(url)
        } else {
            normalize_url(url)
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| LeaseError::Address {
                url: url.clone(),
                message: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|source| LeaseError::Tls {
                url: url.clone(),
                source,
            })?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| LeaseError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let rpc = scheduler_client::SchedulerClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            url,
            rpc,
            credentials,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn credential(&self) -> Result<Option<v1::Credential>, LeaseError> {
        Ok(Some(v1::Credential {
            munge: self.credentials.credential()?,
        }))
    }

    /// Acquires a lease; returns once its executor listens.
    pub async fn acquire(&mut self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        let library = match &req.library {
            Library::Content(b) => v1::function_library::Source::Content(b.clone()),
            Library::Path(p) => v1::function_library::Source::Path(p.clone()),
        };
        let executor = (req.hot_window.is_some() || req.default_timeout.is_some()).then(|| {
            v1::ExecutorOptions {
                hot_window_us: match req.hot_window {
                    None => 0,
                    Some(None) => -1,
                    Some(Some(d)) => d.as_micros().min(i64::MAX as u128) as i64,
                },
                default_timeout_ms: req
                    .default_timeout
                    .map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
                max_output_bytes: 0,
            }
        });
        let msg = v1::AcquireLeaseRequest {
            credential: self.credential()?,
            cores: req.cores,
            memory_mib: req.memory_mib,
            gpus: req.gpus,
            lifetime_ms: req.lifetime.map_or(0, |d| d.as_millis() as u64),
            idle_timeout_ms: req.idle_timeout.map_or(0, |d| d.as_millis() as u64),
            library: Some(v1::FunctionLibrary {
                source: Some(library),
            }),
            executor,
        };
        let url = self.url.clone();
        self.rpc
            .acquire_lease(msg)
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| LeaseError::from_status("acquire lease", &url, s))
    }

    /// Releases a lease (its executor stops).
    pub async fn release(&mut self, id: &str) -> Result<(), LeaseError> {
        let msg = v1::ReleaseLeaseRequest {
            credential: self.credential()?,
            lease_id: id.to_owned(),
        };
        let url = self.url.clone();
        self.rpc
            .release_lease(msg)
            .await
            .map(|_| ())
            .map_err(|s| LeaseError::from_status("release lease", &url, s))
    }

    /// Every node the scheduler knows.
    pub async fn nodes(&mut self) -> Result<Vec<Node>, LeaseError> {
        let url = self.url.clone();
        let resp = self
            .rpc
            .list_nodes(v1::ListNodesRequest {})
            .await
            .map_err(|s| LeaseError::from_status("list nodes", &url, s))?;
        Ok(resp
            .into_inner()
            .nodes
            .into_iter()
            .map(Node::from)
            .collect())
    }

    /// One lease as it is now, live or recently ended.
    pub async fn get(&mut self, id: &str) -> Result<Lease, LeaseError> {
        let url = self.url.clone();
        self.rpc
            .get_lease(v1::GetLeaseRequest {
                lease_id: id.to_owned(),
            })
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| LeaseError::from_status("get lease", &url, s))
    }

    /// Says the lease is still used (its idle clock restarts); returns it as it is now.
    pub async fn renew(&mut self, id: &str) -> Result<Lease, LeaseError> {
        let msg = v1::RenewLeaseRequest {
            credential: self.credential()?,
            lease_id: id.to_owned(),
        };
        let url = self.url.clone();
        self.rpc
            .renew_lease(msg)
            .await
            .map(|r| r.into_inner().into())
            .map_err(|s| LeaseError::from_status("renew lease", &url, s))
    }

    /// Every lease the scheduler holds (live ones and recently ended ones).
    pub async fn leases(&mut self) -> Result<Vec<Lease>, LeaseError> {
        let url = self.url.clone();
        let resp = self
            .rpc
            .list_leases(v1::ListLeasesRequest {})
            .await
            .map_err(|s| LeaseError::from_status("list leases", &url, s))?;
        Ok(resp
            .into_inner()
            .leases
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_leases_get_readable_states() {
        let l = Lease::from(v1::Lease {
            id: "a".into(),
            state: v1::LeaseState::Revoked as i32,
            ..Default::default()
        });
        assert_eq!(l.state, "revoked");
        assert!(l.executor_addr().is_err());
    }

    #[test]
    fn node_json_has_harvestd_keys_plus_state_reclaims_and_interference() {
        let mut view = v1::NodeView {
            name: "n1".into(),
            ..Default::default()
        };
        view.cpus = Some(v1::CpuBreakdown {
            idle: vec![1],
            ..Default::default()
        });
        view.memory_mib = Some(v1::MemoryBreakdown {
            idle: 700,
            ..Default::default()
        });
        let node = Node::from(v1::NodeStatus {
            view: Some(view),
            state: "up".into(),
            last_report_unix_ms: 5,
            counters: Some(v1::NodeCounters {
                reclaims: 3,
                reclaim_evictions: 2,
                ..Default::default()
            }),
            interference: Some(v1::InterferenceState {
                level: v1::InterferenceLevel::Quota.into(),
                signals: [("batch.cpu_usage".to_owned(), 0.9)].into_iter().collect(),
                ..Default::default()
            }),
            revocations: [("reclaimed".to_owned(), 2)].into_iter().collect(),
            ..Default::default()
        });
        let v = serde_json::to_value(&node).unwrap();
        assert_eq!(v["name"], "n1");
        assert_eq!(v["cpus"]["idle"], serde_json::json!([1]));
        assert_eq!(v["memory_mib"]["idle"], 700);
        assert_eq!(v["gpus"]["total"], serde_json::json!([]));
        assert_eq!(v["state"], "up");
        assert_eq!(v["reclaims"], 3);
        assert_eq!(v["counters"]["reclaim_evictions"], 2);
        assert_eq!(v["revocations"]["reclaimed"], 2);
        assert_eq!(v["interference"]["level"], "quota");
        assert_eq!(v["interference"]["signals"]["batch.cpu_usage"], 0.9);
        let quiet = serde_json::to_value(Node::from(v1::NodeStatus::default())).unwrap();
        assert_eq!(quiet["interference"], serde_json::Value::Null);
        assert_eq!(quiet["reclaims"], 0);
    }

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(normalize_url("127.0.0.1:6820"), "http://127.0.0.1:6820");
        assert_eq!(normalize_url("http://h:1"), "http://h:1");
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_says_how_to_start_one() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let creds = Arc::new(crate::identity::Fixed("x".into()));
        let e = SchedulerClient::connect(&format!("127.0.0.1:{port}"), creds)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot reach the scheduler") && e.contains("local-cluster up"),
            "{e}"
        );
    }
}
