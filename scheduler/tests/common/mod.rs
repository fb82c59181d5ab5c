//! Test harness: the real scheduler on 127.0.0.1:0 with the fake authenticator and mutual TLS
//! (a throw-away CA per test process), fake agents speaking the real AgentGateway protocol with
//! their node's certificate, and a fake executor that answers invocations.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use harvest_client::identity::Fixed;
use harvest_client::{LeaseRequest, Library, SchedulerClient};
use harvest_core::invoke::{self, ErrorCode, Frame};
use harvest_core::{CpuSet, NodeView};
use harvest_proto::tls::testing::{Pair, Pki};
use harvest_proto::v1::{
    self, agent_gateway_client::AgentGatewayClient, agent_message, executor_event,
};
use harvest_scheduler::config::Config;
use harvest_scheduler::identity::FakeAuthenticator;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// The test process's CA (agents' and scheduler's alike), in the target's temp directory.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("scheduler-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki::new(&dir, "harvest")
    })
}

/// The scheduler's certificate from the test CA (made once: tests run in parallel).
pub fn server_pair() -> &'static Pair {
    static SERVER: OnceLock<Pair> = OnceLock::new();
    SERVER.get_or_init(|| pki().server())
}

/// TLS as agent `node` (its certificate from the test CA, made once per node).
pub fn agent_tls(node: &str) -> ClientTlsConfig {
    static NODES: Mutex<Vec<(String, Pair)>> = Mutex::new(Vec::new());
    let mut nodes = NODES.lock().unwrap();
    let pair = match nodes.iter().find(|(n, _)| n == node) {
        Some((_, p)) => p.clone(),
        None => {
            let p = pki().node(node);
            nodes.push((node.to_owned(), p.clone()));
            p
        }
    };
    pki().client_tls(Some(&pair))
}

/// A running scheduler.
pub struct Scheduler {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts one on `addr` (port 0: any free port).
    pub async fn start(config: Config, addr: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            harvest_scheduler::serve(config, Arc::new(FakeAuthenticator), listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Shuts it down and waits until it has stopped serving.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }

    pub async fn client(&self, uid: u32) -> SchedulerClient {
        SchedulerClient::connect_tls(
            &self.addr.to_string(),
            Arc::new(Fixed(format!("uid:{uid}"))),
            &pki().ca(),
        )
        .await
        .unwrap()
    }
}

/// A configuration for fast tests, with mutual TLS.
pub fn config() -> Config {
    let server = server_pair();
    Config {
        tls_cert: Some(server.cert.clone()),
        tls_key: Some(server.key.clone()),
        tls_client_ca: Some(pki().ca()),
        listen: "127.0.0.1:0".into(),
        policy: "first-fit".into(),
        tick_ms: 20,
        executor_start_timeout_ms: 2000,
        placement_wait_ms: 100,
        ..Config::default()
    }
}

pub fn request(cores: u32, memory_mib: u64) -> LeaseRequest {
    let mut r = LeaseRequest::new(cores, Library::Path("/opt/lib.so".into()));
    r.memory_mib = memory_mib;
    r
}

/// A node of `total` CPUs, the first `batch` held by a batch job, 1000 MiB, 100 held by it.
pub fn view(name: &str, total: u32, batch: u32) -> NodeView {
    let mut v = NodeView {
        name: name.into(),
        ..NodeView::default()
    };
    v.cpus.total = CpuSet::first_n(total);
    v.cpus.batch = (0..batch).collect();
    v.cpus.idle = (batch..total).collect();
    v.memory_mib.total = 1000;
    v.memory_mib.batch = 100;
    v.memory_mib.idle = 900;
    v
}

/// How a fake agent answers CreateExecutor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Start a fake executor and report it ready.
    Ready,
    /// Report the start failed.
    Fail,
    /// Say nothing.
    Silent,
    /// The first start is cut short by a batch job (exited, cause reclaimed); later ones are
    /// ready.
    ReclaimFirst,
}

/// An agent that speaks the real session protocol.
pub struct FakeAgent {
    pub node: String,
    tx: mpsc::Sender<v1::AgentMessage>,
    /// Every order received.
    pub orders: Arc<Mutex<Vec<v1::scheduler_message::Msg>>>,
    /// The executors it runs, by lease.
    pub executors: Arc<Mutex<HashMap<String, v1::ExecutorInfo>>>,
    incarnation: u64,
    task: JoinHandle<()>,
}

impl FakeAgent {
    /// Opens a session and registers, re-reporting `executors`.
    pub async fn connect(
        addr: SocketAddr,
        node: &str,
        heartbeat_ms: u64,
        executors: Vec<v1::ExecutorInfo>,
        answer: Answer,
    ) -> Self {
        Self::try_connect(addr, node, heartbeat_ms, executors, answer)
            .await
            .unwrap()
    }

    /// Like [`connect`](Self::connect), returning the scheduler's refusal instead of panicking.
    pub async fn try_connect(
        addr: SocketAddr,
        node: &str,
        heartbeat_ms: u64,
        executors: Vec<v1::ExecutorInfo>,
        answer: Answer,
    ) -> Result<Self, tonic::Status> {
        Self::try_connect_with(
            addr,
            Some(agent_tls(node)),
            node,
            heartbeat_ms,
            executors,
            answer,
        )
        .await
    }

    /// Registers as `node` over `tls` (plaintext without), whatever the certificate says.
    pub async fn try_connect_with(
        addr: SocketAddr,
        tls: Option<ClientTlsConfig>,
        node: &str,
        heartbeat_ms: u64,
        executors: Vec<v1::ExecutorInfo>,
        answer: Answer,
    ) -> Result<Self, tonic::Status> {
        let endpoint = match tls {
            Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap(),
            None => Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connect: {e}")))?;
        let mut client = AgentGatewayClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        tx.send(v1::AgentMessage {
            msg: Some(agent_message::Msg::Register(v1::Register {
                node: node.into(),
                agent_version: "fake".into(),
                executors: executors.clone(),
                heartbeat_ms,
            })),
        })
        .await
        .unwrap();
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        let orders = Arc::new(Mutex::new(Vec::new()));
        let running: Arc<Mutex<HashMap<String, v1::ExecutorInfo>>> = Arc::new(Mutex::new(
            executors
                .into_iter()
                .map(|e| (e.lease_id.clone(), e))
                .collect(),
        ));
        let (o, r, out) = (orders.clone(), running.clone(), tx.clone());
        let task = tokio::spawn(async move {
            let mut creates = 0u32;
            while let Ok(Some(msg)) = inbound.message().await {
                let Some(msg) = msg.msg else { continue };
                o.lock().unwrap().push(msg.clone());
                match msg {
                    v1::scheduler_message::Msg::Create(c) => {
                        creates += 1;
                        let mut cause = v1::EndCause::Unspecified;
                        let event = match answer {
                            Answer::ReclaimFirst if creates == 1 => {
                                cause = v1::EndCause::Reclaimed;
                                executor_event::Event::Exited("reclaimed by job 9".into())
                            }
                            Answer::Silent => continue,
                            Answer::Fail => executor_event::Event::Failed(
                                "cannot create the lease cgroup: permission denied".into(),
                            ),
                            Answer::Ready | Answer::ReclaimFirst => {
                                let info = v1::ExecutorInfo {
                                    lease_id: c.lease_id.clone(),
                                    uid: c.uid,
                                    cpus: (0..c.cores).collect(),
                                    memory_mib: c.memory_mib,
                                    gpus: vec![],
                                    address: fake_executor().to_string(),
                                    expires_unix_ms: c.expires_unix_ms,
                                    ..Default::default()
                                };
                                // What a real agent keeps for the next Register (never in
                                // the Ready event).
                                let kept = v1::ExecutorInfo {
                                    gid: c.gid,
                                    secret: c.secret.clone(),
                                    idle_timeout_ms: c.idle_timeout_ms,
                                    request_id: c.request_id.clone(),
                                    ..info.clone()
                                };
                                r.lock().unwrap().insert(c.lease_id.clone(), kept);
                                executor_event::Event::Ready(info)
                            }
                        };
                        let _ = out
                            .send(v1::AgentMessage {
                                msg: Some(agent_message::Msg::Executor(v1::ExecutorEvent {
                                    lease_id: c.lease_id,
                                    event: Some(event),
                                    cause: cause as i32,
                                })),
                            })
                            .await;
                    }
                    v1::scheduler_message::Msg::Destroy(d) => {
                        r.lock().unwrap().remove(&d.lease_id);
                    }
                }
            }
        });
        Ok(Self {
            node: node.into(),
            tx,
            orders,
            executors: running,
            incarnation: 1,
            task,
        })
    }

    pub async fn report(&self, sequence: u64, view: &NodeView) {
        self.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Slots(v1::SlotReport {
                    version: Some(v1::ReportVersion {
                        incarnation: self.incarnation,
                        sequence,
                    }),
                    view: Some(view.into()),
                    ..Default::default()
                })),
            })
            .await
            .unwrap();
    }

    /// Sends an executor event as this agent, for any lease.
    pub async fn send_event(&self, lease: &str, event: executor_event::Event, cause: v1::EndCause) {
        self.tx
            .send(v1::AgentMessage {
                msg: Some(agent_message::Msg::Executor(v1::ExecutorEvent {
                    lease_id: lease.into(),
                    event: Some(event),
                    cause: cause as i32,
                })),
            })
            .await
            .unwrap();
    }

    pub fn running(&self) -> Vec<v1::ExecutorInfo> {
        self.executors.lock().unwrap().values().cloned().collect()
    }

    /// Every order the scheduler sent, in order.
    #[allow(dead_code)]
    pub fn orders(&self) -> Vec<v1::scheduler_message::Msg> {
        self.orders.lock().unwrap().clone()
    }

    pub fn destroyed(&self, lease: &str) -> Option<String> {
        self.orders.lock().unwrap().iter().find_map(|o| match o {
            v1::scheduler_message::Msg::Destroy(d) if d.lease_id == lease => Some(d.reason.clone()),
            _ => None,
        })
    }

    /// Ends the session (the agent is gone).
    pub fn disconnect(self) {
        self.task.abort();
    }
}

/// A fake executor: `reverse` answers its input reversed, anything else "no such function".
/// It challenges each connection as a real executor does but takes any AUTH: the proof itself
/// is the executor's tests' business.
pub fn fake_executor() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut challenge = Vec::new();
                invoke::encode_challenge(&mut challenge, &[0; 32]);
                let mut auth = [0u8; invoke::AUTH_FRAME_BYTES];
                if conn.write_all(&challenge).is_err() || conn.read_exact(&mut auth).is_err() {
                    return;
                }
                loop {
                    let mut prefix = [0u8; invoke::LEN_BYTES];
                    if conn.read_exact(&mut prefix).is_err() {
                        return;
                    }
                    let mut body = vec![0u8; invoke::body_len(prefix)];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut out = Vec::new();
                    match invoke::decode(&body) {
                        Ok(Frame::Invoke {
                            id,
                            function: "reverse",
                            input,
                            ..
                        }) => {
                            let rev: Vec<u8> = input.iter().rev().copied().collect();
                            invoke::encode_result(&mut out, id, &rev).unwrap();
                        }
                        Ok(Frame::Invoke { id, function, .. }) => invoke::encode_error(
                            &mut out,
                            id,
                            ErrorCode::NoSuchFunction,
                            &format!("no function {function}"),
                        ),
                        _ => return,
                    }
                    if conn.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Polls `check` until it returns `Some` or `deadline` passes.
pub async fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
