//! `harvest-scheduler`: the cluster view, leases and placement.
//!
//! The scheduler keeps soft state built from the node agents' reports, places leases through
//! `harvest-policies`, and never sits on the invocation path (clients talk to executors directly).
//! After a restart the agents re-register with their running executors and the leases are
//! adopted, so nothing a client holds is lost.
//!
//! - [`config`]: the TOML configuration and its named defaults; [`cli`]: the binary's command
//!   line (the man page is made from it).
//! - [`identity`]: munge credentials (`unmunge`) behind the [`identity::Authenticator`] trait.
//! - [`book`]: the pure lease and node logic (placement, states, expiry, heartbeats, adoption).
//! - [`state`]: what the services share (the book, the agents' order channels, waiters).
//! - [`gateway`]: `AgentGateway.Session`, one stream per agent.
//! - [`service`]: the `Scheduler` service for clients.
//! - [`error`]: request errors and their one conversion to `tonic::Status`.
//! - [`metrics`]: Prometheus metrics; [`timeline`]: the utilization ring buffer and recent
//!   events; [`http`]: the dashboard, its JSON and `/metrics` on `http_listen`.
//! - [`tls`]: mutual TLS on the port and an agent's node from its client certificate.

pub mod access;
pub mod book;
pub mod cli;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod primary;
pub mod service;
pub mod state;
pub mod timeline;
pub mod tls;
pub mod validate;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use harvest_proto::v1::{
    agent_gateway_server::AgentGatewayServer, scheduler_server::SchedulerServer,
};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::book::{LeaseBook, Limits, Now};
use crate::config::Config;
use crate::identity::{Authenticator, Unmunge};
use crate::state::Shared;

/// Requests served at once per connection; more wait (each acquisition runs `unmunge` and
/// waits for an executor).
pub const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 64;

/// The scheduler could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] harvest_proto::tls::TlsFileError),
    #[error(transparent)]
    Lock(#[from] primary::LockError),
    #[error(transparent)]
    Advertise(#[from] harvest_proto::advertise::AdvertiseError),
}

/// The lease book a configuration describes.
pub fn book_for(config: &Config) -> Result<LeaseBook, ServeError> {
    let framework =
        harvest_policies::builtin_framework(&config.policy).map_err(config::ConfigError::Policy)?;
    let limits = Limits {
        default_lifetime: Duration::from_millis(config.default_lifetime_ms),
        max_lifetime: Duration::from_millis(config.max_lifetime_ms),
        default_memory_per_core_mib: config.default_memory_per_core_mib,
        heartbeat_miss_limit: config.heartbeat_miss_limit,
        default_agent_heartbeat: Duration::from_millis(config.default_agent_heartbeat_ms),
        ended_leases_kept: config.ended_leases_kept,
        default_idle_timeout: Duration::from_millis(config.default_idle_timeout_ms),
    };
    // Lease ids start with the scheduler's start time, so ids stay unique across restarts.
    let prefix = format!("{:x}", Now::current().unix_ms);
    Ok(LeaseBook::new(limits, framework, prefix))
}

/// Binds `config.listen` and serves with munge authentication until `shutdown` completes.
/// With `primary_lock`, first waits as a standby until this scheduler holds the lock
/// ([`primary`]); a standby binds nothing, so clients and agents find the primary.
/// Checks first that `advertise` (or, unset, the address it defaults to) is this host's.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    config.validate()?;
    let mut config = config;
    config.advertise = Some(harvest_proto::advertise::resolve_host_port(
        "advertise",
        "listen",
        config.listen_addr()?,
        config.advertise.as_deref(),
        &harvest_proto::advertise::SystemHost::default(),
    )?);
    let auth = Arc::new(Unmunge::new(
        config.unmunge.clone(),
        config.munge_socket.clone(),
        config.auth_timeout(),
        config.auth_max_concurrent,
    ));
    run_with(config, auth, shutdown).await
}

/// [`run`] with another authenticator (tests).
pub async fn run_with(
    config: Config,
    auth: Arc<dyn Authenticator>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    config.validate()?;
    let addr = config.listen_addr()?;
    tokio::pin!(shutdown);
    let _primary = match &config.primary_lock {
        Some(path) => {
            let whoami = format!(
                "pid {} listen {addr} advertise {} since_unix_ms {}",
                std::process::id(),
                config.advertise.as_deref().unwrap_or("-"),
                Now::current().unix_ms
            );
            let poll = Duration::from_millis(config.standby_poll_ms);
            tokio::select! {
                lock = primary::wait(path, &whoami, poll) => Some(lock?),
                () = &mut shutdown => return Ok(()),
            }
        }
        None => None,
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let http = match config.http_addr()? {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?,
        ),
        None => None,
    };
    serve_with(config, auth, listener, http, shutdown).await
}

/// Serves both services on `listener` until `shutdown` completes (no dashboard or metrics).
pub async fn serve(
    config: Config,
    auth: Arc<dyn Authenticator>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with(config, auth, listener, None, shutdown).await
}

/// Serves both services on `listener` and, with `http`, the dashboard and the metrics there
/// (see [`http`]), until `shutdown` completes.
pub async fn serve_with(
    config: Config,
    auth: Arc<dyn Authenticator>,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let book = book_for(&config)?;
    let tls = tls::server_tls(&config)?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    tracing::info!(addr = ?listener.local_addr().ok(), advertise = config.advertise.as_deref(),
        policy = book.policy(), tls = !config.insecure_plaintext, "harvest-scheduler serving");
    let max = config.max_message_bytes;
    let tick = config.tick();
    let recorder = Arc::new(timeline::Recorder::new(
        config.timeline_samples(),
        config.events_kept,
    ));
    let sample_every = Duration::from_millis(config.timeline_sample_ms);
    let window = Duration::from_millis(config.timeline_window_ms);
    let shared = Arc::new(Shared::new(config, auth, book));
    let (stop_tx, stop_rx) = watch::channel(false);
    let reaper = tokio::spawn(reap(shared.clone(), tick, stop_rx.clone()));
    let nag = shared
        .config
        .insecure_plaintext
        .then(|| tokio::spawn(warn_plaintext(stop_rx.clone())));
    let web = http.map(|listener| {
        let recording = tokio::spawn(timeline::run(
            shared.clone(),
            recorder.clone(),
            shared.metrics.clone(),
            sample_every,
            stop_rx.clone(),
        ));
        let web = Arc::new(http::Web {
            shared: shared.clone(),
            recorder,
            metrics: shared.metrics.clone(),
            sample_every,
            window,
        });
        let serving = tokio::spawn(http::serve(listener, web, stop_rx.clone()));
        (recording, serving)
    });
    let scheduler = SchedulerServer::new(service::SchedulerService::new(shared.clone()))
        .max_decoding_message_size(max);
    let gateway = AgentGatewayServer::new(gateway::Gateway::new(shared.clone(), stop_rx))
        .max_encoding_message_size(max);
    let stop = async {
        shutdown.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        shared.lock().detach_all();
    };
    // Orders are small messages on long-lived streams: without TCP_NODELAY each waits for the
    // peer's delayed ACK (about 40 ms per CreateExecutor here).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = server
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .add_service(scheduler)
        .add_service(gateway)
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
    let _ = reaper.await;
    if let Some(nag) = nag {
        let _ = nag.await;
    }
    if let Some((recording, serving)) = web {
        let _ = recording.await;
        let _ = serving.await;
    }
    Ok(result?)
}

/// Says loudly, at start and every [`config::INSECURE_WARNING_EVERY`], that anyone who reaches
/// the port can act as any agent, until shutdown.
async fn warn_plaintext(mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(config::INSECURE_WARNING_EVERY);
    loop {
        tokio::select! {
            _ = interval.tick() => tracing::warn!(
                "INSECURE: insecure_plaintext = true: the scheduler serves plaintext gRPC without \
                 certificates; anyone who reaches its port can register as any node, report on \
                 any lease and receive users' libraries. Configure tls_cert, tls_key and \
                 tls_client_ca (docs/security.md)"
            ),
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// Expires leases and takes down silent nodes every `tick` until shutdown.
async fn reap(shared: Arc<Shared>, tick: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let mut inner = shared.lock();
                let orders = inner.book.tick(Now::current());
                inner.dispatch(orders);
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::book::Health;
    use crate::identity::FakeAuthenticator;

    /// The reaper takes a silent node down on tokio's clock, and stops on shutdown.
    #[tokio::test(start_paused = true)]
    async fn the_reaper_takes_silent_nodes_down_and_stops_on_shutdown() {
        let config = Config {
            insecure_plaintext: true,
            ..Config::default()
        };
        let book = book_for(&config).unwrap();
        let shared = Arc::new(Shared::new(config, Arc::new(FakeAuthenticator), book));
        shared.lock().book.register(
            "n1",
            Duration::from_secs(1),
            &[],
            |_| String::new(),
            Now::current(),
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(reap(shared.clone(), Duration::from_millis(200), stopped));
        // Miss limit 5 x 1 s heartbeat: still up just before 5 s, down after.
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert_eq!(shared.lock().book.health("n1"), Some(Health::Up));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(shared.lock().book.health("n1"), Some(Health::Down));
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
