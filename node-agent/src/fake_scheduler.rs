//! A fake scheduler for tests: a real `AgentGateway` gRPC server on 127.0.0.1 that records
//! everything agents send and lets the test send orders down the latest session.
//!
//! Used by this crate's black-box tests and by the system tests (`system-tests/tests/executors.rs`);
//! harvestd itself never runs it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harvest_proto::v1;
use harvest_proto::v1::agent_gateway_server::{AgentGateway, AgentGatewayServer};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Orders = mpsc::Sender<Result<v1::SchedulerMessage, Status>>;

#[derive(Debug, Clone)]
struct Gateway {
    received: mpsc::UnboundedSender<v1::AgentMessage>,
    orders: Arc<Mutex<Option<Orders>>>,
}

#[tonic::async_trait]
impl AgentGateway for Gateway {
    type SessionStream = Pin<Box<dyn Stream<Item = Result<v1::SchedulerMessage, Status>> + Send>>;

    async fn session(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let received = self.received.clone();
        // The session takes orders before the test can see anything the agent sent on it: a
        // test that saw the Register may send at once.
        let (tx, rx) = mpsc::channel(16);
        *self.orders.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        tokio::spawn(async move {
            while let Some(Ok(m)) = inbound.next().await {
                if received.send(m).is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running fake scheduler.
#[derive(Debug)]
pub struct FakeScheduler {
    pub addr: SocketAddr,
    received: mpsc::UnboundedReceiver<v1::AgentMessage>,
    orders: Arc<Mutex<Option<Orders>>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeScheduler {
    /// Serves plaintext on `addr` (port 0: a free one).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        Self::start_tls(addr, None).await
    }

    /// Serves on `addr` over `tls` (plaintext without).
    pub async fn start_tls(
        addr: SocketAddr,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> std::io::Result<Self> {
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).map_err(std::io::Error::other)?;
        }
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (received_tx, received) = mpsc::unbounded_channel();
        let orders = Arc::new(Mutex::new(None));
        let gateway = Gateway {
            received: received_tx,
            orders: orders.clone(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = server
                .add_service(AgentGatewayServer::new(gateway))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            received,
            orders,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Its URL (`http://`; an agent with TLS speaks it as `https://`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits up to `timeout` for a message for which `pick` returns `Some`; earlier messages
    /// are dropped.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut pick: impl FnMut(&v1::AgentMessage) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.received.recv()).await {
                Ok(Some(m)) => {
                    if let Some(v) = pick(&m) {
                        return Some(v);
                    }
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends an order down the latest session; false when no agent is connected.
    pub async fn send(&self, msg: v1::scheduler_message::Msg) -> bool {
        let tx = self
            .orders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match tx {
            Some(tx) => tx
                .send(Ok(v1::SchedulerMessage { msg: Some(msg) }))
                .await
                .is_ok(),
            None => false,
        }
    }

    /// Sends `order` and waits up to `wait` for its lease's first event: the executor's info
    /// once it is ready, else what came instead (`Failed`, `Exited`, or `None` for nothing, or no
    /// session to send on) for the caller to report beside the agent's log. An order that finds
    /// no open session (the agent is reconnecting) is sent again on the next one, as a real
    /// scheduler's would be, until `wait` has passed.
    pub async fn start_executor(
        &mut self,
        order: v1::CreateExecutor,
        wait: Duration,
    ) -> Result<v1::ExecutorInfo, Option<v1::executor_event::Event>> {
        let lease = order.lease_id.clone();
        let deadline = Instant::now() + wait;
        while !self
            .send(v1::scheduler_message::Msg::Create(order.clone()))
            .await
        {
            if Instant::now() >= deadline {
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.wait_for(wait, |m| event_of(m, &lease)).await {
            Some(v1::executor_event::Event::Ready(info)) => Ok(info),
            other => Err(other),
        }
    }

    /// Stops serving and drops every session (as a scheduler restart would).
    pub async fn stop(mut self) {
        self.orders.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The `Register` in a message.
pub fn register(m: &v1::AgentMessage) -> Option<v1::Register> {
    match &m.msg {
        Some(v1::agent_message::Msg::Register(r)) => Some(r.clone()),
        _ => None,
    }
}

/// The `SlotReport` in a message.
pub fn slots(m: &v1::AgentMessage) -> Option<v1::SlotReport> {
    match &m.msg {
        Some(v1::agent_message::Msg::Slots(r)) => Some(r.clone()),
        _ => None,
    }
}

/// An order to start an executor for `lease` as `uid:gid` on one core with `memory_mib`, the
/// library's bytes inline and `secret`, calls that ask for no timeout given `default_timeout_ms`;
/// everything else at the protocol's defaults (no GPU, no idle timeout or expiry, the executor's
/// own output limit). Tests change what they need with struct update syntax.
pub fn create_order(
    lease: &str,
    (uid, gid): (u32, u32),
    memory_mib: u64,
    library: Vec<u8>,
    default_timeout_ms: u32,
    secret: &[u8],
) -> v1::CreateExecutor {
    v1::CreateExecutor {
        lease_id: lease.into(),
        uid,
        gid,
        cores: 1,
        memory_mib,
        library: Some(v1::FunctionLibrary {
            source: Some(v1::function_library::Source::Content(library)),
        }),
        options: Some(v1::ExecutorOptions {
            default_timeout_ms,
            ..Default::default()
        }),
        secret: secret.to_vec(),
        ..Default::default()
    }
}

/// The `ExecutorEvent` of `lease` in a message.
pub fn event_of(m: &v1::AgentMessage, lease: &str) -> Option<v1::executor_event::Event> {
    match &m.msg {
        Some(v1::agent_message::Msg::Executor(e)) if e.lease_id == lease => e.event.clone(),
        _ => None,
    }
}
