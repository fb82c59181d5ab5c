//! The agent's session with the scheduler (`AgentGateway.Session`, one bidirectional gRPC stream).
//!
//! The agent opens the stream and sends `Register` (its node and the executors it runs now),
//! then a `SlotReport` whenever its view changes and at least every `heartbeat_interval` (the
//! reports are the heartbeat), and the executors' events. The scheduler's `CreateExecutor` and
//! `DestroyExecutor` orders go to [`LeaseSupervisor`]. When the stream breaks (the scheduler restarted,
//! the network failed) the agent reconnects with exponential backoff (from
//! [`DEFAULT_RECONNECT_BACKOFF`] up to `reconnect_backoff_max`) and registers again with its
//! running executors, so their leases survive. Reports carry a version: `incarnation` is the
//! agent's start time in ms, `sequence` grows with every report of that incarnation.
//!
//! The session runs over mutual TLS ([`SessionSettings::tls`]): the agent presents its node's
//! certificate and talks only to a scheduler whose certificate its CA (`tls_ca`) signed, so a
//! fake scheduler on the configured address cannot complete the handshake, let alone send a
//! CreateExecutor. Without TLS (`insecure_plaintext`) it says so loudly at every connection and
//! every [`INSECURE_WARNING_EVERY`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use harvest_core::NodeView;
use harvest_proto::v1;
use harvest_proto::v1::agent_gateway_client::AgentGatewayClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::config::{DEFAULT_RECONNECT_BACKOFF, INSECURE_WARNING_EVERY};
use crate::lease::{ExecutorInfo, LeaseRequest, Recovery, StoredSecret};
use crate::leases::launch::{LibrarySource, ServeOptions};
use crate::leases::{CreateOrder, LeaseEvent, LeaseSupervisor, activity};
use crate::ledger_task::Snapshot;
use crate::stats::NodeStats;

/// Messages queued towards the scheduler per session.
pub const OUTBOUND_QUEUE: usize = 64;

/// How the session runs.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The scheduler, or several separated by commas (a primary and its standbys): each
    /// reconnection tries the next one.
    pub url: String,
    /// The scheduler's CA and this node's certificate; `None`: plaintext (`insecure_plaintext`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub node: String,
    pub heartbeat: Duration,
    pub backoff_max: Duration,
    /// The agent's start time in ms: the reports' incarnation.
    pub incarnation: u64,
    /// Counters, interference and drain state sent with every report.
    pub stats: Arc<NodeStats>,
}

/// Why one session ended (the loop reconnects after any of them).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("TLS settings for the scheduler at {url}: {source}")]
    Tls {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("connecting to the scheduler at {url}: {source}")]
    Connect {
        url: String,
        source: tonic::transport::Error,
    },
    #[error("the scheduler refused the session: {0}")]
    Refused(tonic::Status),
    #[error("the session stream broke: {0}")]
    Broken(tonic::Status),
    #[error("the scheduler closed the session")]
    Closed,
}

/// Runs sessions until `shutdown` resolves, reconnecting whenever one ends.
pub async fn run(
    settings: SessionSettings,
    executors: LeaseSupervisor,
    mut views: watch::Receiver<Arc<Snapshot>>,
    mut events: mpsc::UnboundedReceiver<LeaseEvent>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut nag = tokio::time::interval(INSECURE_WARNING_EVERY);
    nag.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence = 0u64;
    let mut backoff = DEFAULT_RECONNECT_BACKOFF;
    let urls = crate::config::scheduler_urls(&settings.url);
    let mut next = 0usize;
    loop {
        let url = &urls[next % urls.len()];
        let session = one_session(
            &settings,
            url,
            &executors,
            &mut views,
            &mut events,
            &mut sequence,
        );
        tokio::pin!(session);
        let ended = loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = nag.tick(), if settings.tls.is_none() => warn_plaintext(&settings.url),
                ended = &mut session => break ended,
            }
        };
        let (err, registered) = ended;
        if registered {
            backoff = DEFAULT_RECONNECT_BACKOFF;
        }
        // The next listed scheduler first (a standby may have taken over); the full backoff
        // only after a whole round of them failed.
        next += 1;
        let pause = if next.is_multiple_of(urls.len()) {
            let b = backoff;
            backoff = (backoff * 2).min(settings.backoff_max);
            b
        } else {
            DEFAULT_RECONNECT_BACKOFF
        };
        tracing::warn!(error = %err, next = %urls[next % urls.len()], retry_in = ?pause,
            "scheduler session ended; reconnecting");
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// One session: connect, register, then serve until the stream breaks. Returns why it ended and
/// whether it got as far as registering.
async fn one_session(
    s: &SessionSettings,
    url: &str,
    executors: &LeaseSupervisor,
    views: &mut watch::Receiver<Arc<Snapshot>>,
    events: &mut mpsc::UnboundedReceiver<LeaseEvent>,
    sequence: &mut u64,
) -> (SessionError, bool) {
    let mut client = match connect(s, url).await {
        // Orders carry function libraries: accept what the scheduler accepts from clients.
        Ok(c) => c.max_decoding_message_size(harvest_proto::DEFAULT_MAX_MESSAGE_BYTES),
        Err(e) => return (e, false),
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let register = v1::Register {
        node: s.node.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        executors: registered_executors(&executors.context().ledger.snapshot().ledger),
        heartbeat_ms: u64::try_from(s.heartbeat.as_millis()).unwrap_or(u64::MAX),
    };
    let mut last_view = views.borrow_and_update().view.clone();
    let first = [
        msg(v1::agent_message::Msg::Register(register)),
        report(s, executors, sequence, &last_view),
    ];
    for m in first {
        // The queue is empty and far larger than two messages.
        let _ = tx.try_send(m);
    }
    let mut inbound = match client.session(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return (SessionError::Refused(status), false),
    };
    tracing::info!(url, node = %s.node, executors = executors.running().len(), "registered with the scheduler");
    let mut heartbeat = tokio::time::interval(s.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        let out = tokio::select! {
            received = inbound.message() => match received {
                Ok(Some(order)) => {
                    dispatch(executors, order).await;
                    continue;
                }
                Ok(None) => return (SessionError::Closed, true),
                Err(status) => return (SessionError::Broken(status), true),
            },
            _ = heartbeat.tick() => {
                last_view = views.borrow_and_update().view.clone();
                report(s, executors, sequence, &last_view)
            }
            changed = views.changed() => match changed {
                Ok(()) => {
                    // A snapshot follows every ledger change; the scheduler needs the view's.
                    let view = views.borrow_and_update().view.clone();
                    if view == last_view {
                        continue;
                    }
                    last_view = view;
                    report(s, executors, sequence, &last_view)
                }
                // The agent is shutting down.
                Err(_) => return (SessionError::Closed, true),
            },
            Some(event) = events.recv() => msg(v1::agent_message::Msg::Executor(event_to_wire(event))),
        };
        if tx.send(out).await.is_err() {
            return (SessionError::Closed, true);
        }
    }
}

/// Opens the channel to the scheduler: over mutual TLS (an `http://` URL is spoken as
/// `https://`), or in plaintext when the settings have no TLS.
async fn connect(
    s: &SessionSettings,
    url: &str,
) -> Result<AgentGatewayClient<tonic::transport::Channel>, SessionError> {
    let url = match (&s.tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    let connect_error = |source| SessionError::Connect {
        url: url.clone(),
        source,
    };
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.clone()).map_err(connect_error)?;
    match &s.tls {
        Some(tls) => {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|source| SessionError::Tls {
                    url: url.clone(),
                    source,
                })?;
        }
        None => warn_plaintext(&url),
    }
    let channel = endpoint.connect().await.map_err(connect_error)?;
    Ok(AgentGatewayClient::new(channel))
}

fn warn_plaintext(url: &str) {
    tracing::warn!(
        url,
        "INSECURE: insecure_plaintext = true: the scheduler session runs without TLS; whoever \
         answers at the scheduler's address can start executors on this node. Set tls_ca, \
         tls_cert and tls_key (docs/security.md)"
    );
}

fn msg(m: v1::agent_message::Msg) -> v1::AgentMessage {
    v1::AgentMessage { msg: Some(m) }
}

fn report(
    s: &SessionSettings,
    executors: &LeaseSupervisor,
    sequence: &mut u64,
    view: &NodeView,
) -> v1::AgentMessage {
    *sequence += 1;
    msg(v1::agent_message::Msg::Slots(v1::SlotReport {
        version: Some(v1::ReportVersion {
            incarnation: s.incarnation,
            sequence: *sequence,
        }),
        view: Some(view.into()),
        counters: Some(s.stats.counters().into()),
        interference: s.stats.interference(),
        activity: activity::read_all(
            &executors.context().ledger.snapshot(),
            &executors.context().settings.state_dir,
        )
        .into_iter()
        .map(|a| v1::LeaseActivity {
            lease_id: a.lease,
            last_invocation_unix_ms: a.last_ms,
        })
        .collect(),
        draining: s.stats.draining(),
        leases: executors
            .context()
            .ledger
            .snapshot()
            .ledger
            .leases
            .keys()
            .cloned()
            .collect(),
    }))
}

/// Starts the work an order asks for; its outcome comes back as an event.
async fn dispatch(executors: &LeaseSupervisor, order: v1::SchedulerMessage) {
    match order.msg {
        Some(v1::scheduler_message::Msg::Create(c)) => {
            let order = create_from_wire(c);
            tracing::info!(lease = %order.request.id, cores = order.request.cores,
                memory_mib = order.request.memory_mib, uid = order.request.uid, "CreateExecutor");
            executors.create(order);
        }
        Some(v1::scheduler_message::Msg::Destroy(d)) => {
            tracing::info!(lease = %d.lease_id, reason = %d.reason, "DestroyExecutor");
            let cause = v1::EndCause::try_from(d.cause).unwrap_or_default();
            executors.destroy(&d.lease_id, &d.reason, cause).await;
        }
        None => tracing::warn!("empty message from the scheduler; ignored"),
    }
}

/// `CreateExecutor` in the agent's terms.
pub fn create_from_wire(c: v1::CreateExecutor) -> CreateOrder {
    let library = match c.library.and_then(|l| l.source) {
        Some(v1::function_library::Source::Content(bytes)) => LibrarySource::Content(bytes),
        Some(v1::function_library::Source::Path(p)) => LibrarySource::Path(p.into()),
        None => LibrarySource::Content(Vec::new()),
    };
    let options = c
        .options
        .map_or_else(ServeOptions::default, |o| ServeOptions {
            hot_window_us: o.hot_window_us,
            default_timeout_ms: o.default_timeout_ms,
            max_output_bytes: o.max_output_bytes,
        });
    // A spec the scheduler should not have sent (a region of 0 MiB, a CPU share out of bounds)
    // keeps its words for the executor's start, which then fails with them.
    let memory = c.memory.map(|m| harvest_core::region::MemorySpec {
        region_mib: m.region_mib,
        cpu_millis: m.cpu_millis,
    });
    let recovery = Recovery {
        secret: harvest_core::invoke::auth::LeaseSecret::from_bytes(&c.secret)
            .ok()
            .map(|s| StoredSecret::new(&s)),
        idle_timeout_ms: c.idle_timeout_ms,
        request_id: c.request_id,
    };
    CreateOrder {
        request: LeaseRequest {
            id: c.lease_id,
            uid: c.uid,
            gid: c.gid,
            cores: c.cores,
            memory_mib: c.memory_mib,
            gpus: c.gpus,
            expires_unix_ms: c.expires_unix_ms,
            recovery,
            memory,
        },
        library,
        options,
        secret: crate::leases::launch::Secret(c.secret),
    }
}

pub fn info_to_wire(i: &ExecutorInfo) -> v1::ExecutorInfo {
    v1::ExecutorInfo {
        lease_id: i.lease_id.clone(),
        uid: i.uid,
        cpus: i.cpus.iter().collect(),
        memory_mib: i.memory_mib,
        gpus: i.gpus.clone(),
        address: i.address.clone(),
        expires_unix_ms: i.expires_unix_ms,
        memory: i.memory.map(Into::into),
        ..Default::default()
    }
}

/// What `Register` says of each running executor: its event fields plus what a scheduler
/// rebuilds the lease from (owner group, secret, idle timeout, request id). Sent only over the
/// session, which runs over mutual TLS.
pub fn registered_executors(ledger: &crate::ledger::Ledger) -> Vec<v1::ExecutorInfo> {
    ledger
        .leases
        .iter()
        .filter_map(|(id, l)| {
            let info = l.info(id)?;
            Some(v1::ExecutorInfo {
                gid: l.gid,
                secret: l
                    .recovery
                    .secret
                    .as_ref()
                    .and_then(StoredSecret::bytes)
                    .unwrap_or_default(),
                idle_timeout_ms: l.recovery.idle_timeout_ms,
                request_id: l.recovery.request_id.clone(),
                ..info_to_wire(&info)
            })
        })
        .collect()
}

pub fn event_to_wire(e: LeaseEvent) -> v1::ExecutorEvent {
    use v1::executor_event::Event;
    match e {
        LeaseEvent::Ready(info) => v1::ExecutorEvent {
            lease_id: info.lease_id.clone(),
            event: Some(Event::Ready(info_to_wire(&info))),
            cause: v1::EndCause::Unspecified as i32,
        },
        LeaseEvent::Moved(info) => v1::ExecutorEvent {
            lease_id: info.lease_id.clone(),
            event: Some(Event::Moved(info_to_wire(&info))),
            cause: v1::EndCause::Unspecified as i32,
        },
        LeaseEvent::Failed { lease_id, reason } => v1::ExecutorEvent {
            lease_id,
            event: Some(Event::Failed(reason)),
            cause: v1::EndCause::ExecutorFailed as i32,
        },
        LeaseEvent::Exited {
            lease_id,
            reason,
            cause,
        } => v1::ExecutorEvent {
            lease_id,
            event: Some(Event::Exited(reason)),
            cause: cause as i32,
        },
    }
}
