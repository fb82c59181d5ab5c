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
    /// How long the executor's workers busy-poll for the next request after each answer
    /// (rFaaS's hot mode: lower latency, the leased cores burnt while waiting). `None` is warm,
    /// a lease's default: workers sleep in `poll`.
    pub hot_window: Option<harvest_core::HotWindow>,
    /// Timeout of invocations that ask for none (`None`: the executor's default).
    pub default_timeout: Option<Duration>,
    /// A memory lease of this region (see [`LeaseRequest::memory`]): `cores`, `gpus` and
    /// `library` are then not sent.
    pub memory: Option<harvest_core::region::MemorySpec>,
    /// Nodes the lease must not go to, by name (a replica away from its primary).
    pub avoid_nodes: Vec<String>,
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
            memory: None,
            avoid_nodes: Vec::new(),
        }
    }

    /// A memory lease: a region of `spec.region_mib` MiB of a node's idle memory, read and
    /// written through its executor (`ExecutorConnection::read`/`write`), served with at most
    /// `spec.cpu_millis` thousandths of one CPU.
    pub fn memory(spec: harvest_core::region::MemorySpec) -> Self {
        Self {
            memory: Some(spec),
            ..Self::new(0, Library::Content(Vec::new()))
        }
    }
}

/// A lease as the scheduler describes it.
pub use harvest_proto::views::LeaseView as Lease;
pub use harvest_proto::views::cause_name;

/// What a client does with a lease's executor.
pub trait LeaseExt {
    fn executor_addr(&self) -> Result<SocketAddr, LeaseError>;

    /// Opens a direct connection to the lease's executor, proving the lease's secret (which only
    /// the owner's answers carry). Open one per core for parallelism; `submit`/`wait_into` on a
    /// connection invoke asynchronously.
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
        let secret = self.secret.as_ref().ok_or_else(|| InvokeError::NoSecret {
            lease: self.id.clone(),
        })?;
        ExecutorConnection::connect(addr, polling, secret)
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

/// A connection to the scheduler, or to whichever of several (a primary and its standbys,
/// `HARVEST_SCHEDULER=https://a:6820,https://b:6820`) serves now.
///
/// A call that fails because the connection failed (refused, reset, the scheduler died
/// mid-answer) is sent again, with a fresh credential, to the next address in the list, round
/// and round for up to [`FAILOVER_TIMEOUT`]: a standby that has taken over answers, and a lone
/// scheduler that restarts is found again. An acquisition carries a request id that every retry
/// repeats, so a scheduler that already placed it (the answer was lost) answers with that lease
/// instead of placing a second one. Refusals the scheduler itself sends are never retried.
#[derive(Debug, Clone)]
pub struct SchedulerClient {
    urls: Vec<String>,
    /// Index in `urls` of the scheduler `rpc` talks to.
    current: usize,
    tls: Option<tonic::transport::ClientTlsConfig>,
    rpc: scheduler_client::SchedulerClient<Channel>,
    credentials: Arc<dyn CredentialSource>,
}

/// How long a call keeps trying the listed schedulers after its connection failed.
pub const FAILOVER_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause between two rounds over every listed scheduler.
const FAILOVER_ROUND_PAUSE: Duration = Duration::from_millis(200);

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

/// The addresses in a comma-separated list (`https://a:6820,https://b:6820`), normalized.
pub fn scheduler_urls(list: &str, tls: bool) -> Result<Vec<String>, LeaseError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| if tls { tls_url(u) } else { normalize_url(u) })
        .collect();
    if urls.is_empty() {
        return Err(LeaseError::Address {
            url: list.to_owned(),
            message: "no scheduler address (give host:port, or several separated by commas)"
                .to_owned(),
        });
    }
    Ok(urls)
}

/// Whether a failed call never got an answer from a scheduler (its connection failed), so
/// that another scheduler, or the same one restarted, may be asked. A status the scheduler sent
/// carries no source error; one tonic made from a transport failure does.
pub fn connection_failed(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && s.source().is_some()
}

/// A fresh id for one acquisition (repeated by its retries).
fn new_request_id() -> Result<String, LeaseError> {
    let random =
        harvest_core::invoke::auth::LeaseSecret::random().map_err(|e| LeaseError::Address {
            url: String::new(),
            message: format!("making a request id: {e}"),
        })?;
    Ok(random.to_hex()[..32].to_owned())
}

type Rpc = scheduler_client::SchedulerClient<Channel>;
type Answer<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send>,
>;

impl SchedulerClient {
    /// Connects to the scheduler at `url` (`http://host:port` or `host:port`, or several
    /// separated by commas) in plaintext (a scheduler with `insecure_plaintext`).
    pub async fn connect(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
    ) -> Result<Self, LeaseError> {
        Self::connect_with(url, credentials, None).await
    }

    /// Connects to the scheduler at `url` (or the first of several, comma-separated, that
    /// answers) over TLS, verifying its certificate against the CA (PEM) in `ca` (`HARVEST_CA`,
    /// the configuration's `ca`).
    pub async fn connect_tls(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
        ca: &std::path::Path,
    ) -> Result<Self, LeaseError> {
        let ca = harvest_proto::tls::read_ca("ca", ca)?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca);
        Self::connect_with(url, credentials, Some(tls)).await
    }

    /// Connects with `tls` (over `https://`), or in plaintext without, to the first of the
    /// comma-separated addresses in `url` that answers.
    pub async fn connect_with(
        url: &str,
        credentials: Arc<dyn CredentialSource>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, LeaseError> {
        let urls = scheduler_urls(url, tls.is_some())?;
        let mut last = None;
        for (i, u) in urls.iter().enumerate() {
            match open(u, tls.as_ref()).await {
                Ok(rpc) => {
                    return Ok(Self {
                        urls,
                        current: i,
                        tls,
                        rpc,
                        credentials,
                    });
                }
                // A bad address or TLS setting is the same for every entry: say so at once.
                Err(e @ (LeaseError::Address { .. } | LeaseError::Tls { .. })) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one address"))
    }

    /// The scheduler this client talks to now.
    pub fn url(&self) -> &str {
        &self.urls[self.current]
    }

    /// Every scheduler address this client may fail over to.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// `req` with a credential for it (bound to its method and content).
    fn signed<R: harvest_proto::binding::Bound>(&self, mut req: R) -> Result<R, LeaseError> {
        let payload = harvest_proto::binding::payload(&req);
        req.set_credential(v1::Credential {
            munge: self.credentials.credential(&payload)?,
        });
        Ok(req)
    }

    /// Sends `req` (signed afresh for every try) with `send`; after a connection failure, to
    /// the next scheduler that accepts a connection, for up to [`FAILOVER_TIMEOUT`].
    async fn call<R, T>(
        &mut self,
        op: &'static str,
        req: R,
        send: impl Fn(Rpc, R) -> Answer<T>,
    ) -> Result<T, LeaseError>
    where
        R: harvest_proto::binding::Bound + Clone,
    {
        let deadline = tokio::time::Instant::now() + FAILOVER_TIMEOUT;
        loop {
            let msg = self.signed(req.clone())?;
            let status = match send(self.rpc.clone(), msg).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => s,
            };
            if !connection_failed(&status) || tokio::time::Instant::now() >= deadline {
                return Err(LeaseError::from_status(op, self.url(), status));
            }
            if !self.fail_over(deadline).await {
                return Err(LeaseError::from_status(op, self.url(), status));
            }
        }
    }

    /// Connects to the next listed scheduler that accepts (after the current one, wrapping
    /// round to it), pausing between rounds; `false` when `deadline` passes first.
    async fn fail_over(&mut self, deadline: tokio::time::Instant) -> bool {
        loop {
            for step in 1..=self.urls.len() {
                let i = (self.current + step) % self.urls.len();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return false;
                }
                let opened = tokio::time::timeout(left, open(&self.urls[i], self.tls.as_ref()));
                if let Ok(Ok(rpc)) = opened.await {
                    self.rpc = rpc;
                    self.current = i;
                    return true;
                }
            }
            if tokio::time::Instant::now() + FAILOVER_ROUND_PAUSE >= deadline {
                return false;
            }
            tokio::time::sleep(FAILOVER_ROUND_PAUSE).await;
        }
    }

    /// Acquires a lease; returns once its executor listens.
    pub async fn acquire(&mut self, req: &LeaseRequest) -> Result<Lease, LeaseError> {
        let library = match &req.library {
            Library::Content(b) => v1::function_library::Source::Content(b.clone()),
            Library::Path(p) => v1::function_library::Source::Path(p.clone()),
        };
        let executor = (req.hot_window.is_some() || req.default_timeout.is_some()).then(|| {
            v1::ExecutorOptions {
                hot_window_us: req
                    .hot_window
                    .unwrap_or(harvest_core::HotWindow::WARM)
                    .to_wire_us(),
                default_timeout_ms: req
                    .default_timeout
                    .map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32),
                max_output_bytes: 0,
            }
        });
        let memory = req.memory.map(v1::MemorySpec::from);
        let msg = v1::AcquireLeaseRequest {
            credential: None,
            cores: if memory.is_some() { 0 } else { req.cores },
            memory_mib: req.memory_mib,
            gpus: if memory.is_some() { 0 } else { req.gpus },
            lifetime_ms: req.lifetime.map_or(0, |d| d.as_millis() as u64),
            idle_timeout_ms: req.idle_timeout.map_or(0, |d| d.as_millis() as u64),
            library: memory.is_none().then_some(v1::FunctionLibrary {
                source: Some(library),
            }),
            executor,
            request_id: new_request_id()?,
            memory,
            avoid_nodes: req.avoid_nodes.clone(),
        };
        self.call("acquire lease", msg, |mut rpc, m| {
            Box::pin(async move { rpc.acquire_lease(m).await })
        })
        .await
        .map(Into::into)
    }

    /// Releases a lease (its executor stops).
    pub async fn release(&mut self, id: &str) -> Result<(), LeaseError> {
        let msg = v1::ReleaseLeaseRequest {
            credential: None,
            lease_id: id.to_owned(),
        };
        self.call("release lease", msg, |mut rpc, m| {
            Box::pin(async move { rpc.release_lease(m).await })
        })
        .await
        .map(|_| ())
    }

    /// Every node the scheduler knows.
    pub async fn nodes(&mut self) -> Result<Vec<Node>, LeaseError> {
        let msg = v1::ListNodesRequest { credential: None };
        let resp = self
            .call("list nodes", msg, |mut rpc, m| {
                Box::pin(async move { rpc.list_nodes(m).await })
            })
            .await?;
        Ok(resp.nodes.into_iter().map(Node::from).collect())
    }

    /// One lease as it is now, live or recently ended.
    pub async fn get(&mut self, id: &str) -> Result<Lease, LeaseError> {
        let msg = v1::GetLeaseRequest {
            lease_id: id.to_owned(),
            credential: None,
        };
        self.call("get lease", msg, |mut rpc, m| {
            Box::pin(async move { rpc.get_lease(m).await })
        })
        .await
        .map(Into::into)
    }

    /// Says the lease is still used (its idle clock restarts); returns it as it is now.
    pub async fn renew(&mut self, id: &str) -> Result<Lease, LeaseError> {
        let msg = v1::RenewLeaseRequest {
            credential: None,
            lease_id: id.to_owned(),
        };
        self.call("renew lease", msg, |mut rpc, m| {
            Box::pin(async move { rpc.renew_lease(m).await })
        })
        .await
        .map(Into::into)
    }

    /// The caller's leases (live ones and recently ended ones; every user's for an operator).
    pub async fn leases(&mut self) -> Result<Vec<Lease>, LeaseError> {
        Ok(self.leases_and_others().await?.0)
    }

    /// The caller's leases, and what other users' live leases hold together (`None` for an
    /// operator, who gets every lease).
    pub async fn leases_and_others(
        &mut self,
    ) -> Result<(Vec<Lease>, Option<v1::LeaseTotals>), LeaseError> {
        let msg = v1::ListLeasesRequest { credential: None };
        let resp = self
            .call("list leases", msg, |mut rpc, m| {
                Box::pin(async move { rpc.list_leases(m).await })
            })
            .await?;
        Ok((
            resp.leases.into_iter().map(Into::into).collect(),
            resp.others,
        ))
    }

    /// Operators: stop placing leases on `node` (`drain`, with the reason) or allow it again;
    /// with `revoke`, its live leases end now. Returns how many were revoked.
    pub async fn drain_node(
        &mut self,
        node: &str,
        drain: bool,
        revoke: bool,
        reason: &str,
    ) -> Result<u32, LeaseError> {
        let msg = v1::DrainNodeRequest {
            credential: None,
            node: node.to_owned(),
            undrain: !drain,
            revoke_leases: revoke,
            reason: reason.to_owned(),
        };
        self.call("drain node", msg, |mut rpc, m| {
            Box::pin(async move { rpc.drain_node(m).await })
        })
        .await
        .map(|r| r.revoked)
    }

    /// Operators: end any lease now.
    pub async fn revoke(&mut self, id: &str, reason: &str) -> Result<Lease, LeaseError> {
        let msg = v1::RevokeLeaseRequest {
            credential: None,
            lease_id: id.to_owned(),
            reason: reason.to_owned(),
        };
        self.call("revoke lease", msg, |mut rpc, m| {
            Box::pin(async move { rpc.revoke_lease(m).await })
        })
        .await
        .map(Into::into)
    }
}

/// A channel to one scheduler, connected now (so that an unreachable one is known at once).
async fn open(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Rpc, LeaseError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| LeaseError::Address {
            url: url.to_owned(),
            message: e.to_string(),
        })?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|source| LeaseError::Tls {
                url: url.to_owned(),
                source,
            })?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| LeaseError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    Ok(
        scheduler_client::SchedulerClient::new(channel)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    )
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
