//! A primary and a standby scheduler sharing a `primary_lock`: the standby serves nothing while
//! the primary holds the lock, takes over when it stops, rebuilds the leases from the agents'
//! Register (secrets, groups and request ids included), and answers a retried acquisition with
//! the lease its first try made. Real schedulers on 127.0.0.1, fake agents on the real session
//! protocol, the real client library with both addresses.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Answer, FakeAgent, config, eventually, pki, request, view};
use harvest_client::SchedulerClient;
use harvest_client::identity::Fixed;
use harvest_proto::v1::{self, scheduler_client};
use harvest_scheduler::config::Config;
use harvest_scheduler::identity::FakeAuthenticator;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);
const SLOW_HEARTBEAT_MS: u64 = 60_000;

/// A free port on 127.0.0.1 (bound and let go: the scheduler binds it only once primary).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A scheduler run as `harvest-scheduler` runs it (lock first, then bind), on `addr`.
struct Member {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Member {
    fn start(mut config: Config, addr: SocketAddr) -> Self {
        config.listen = addr.to_string();
        config.standby_poll_ms = 50;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            harvest_scheduler::run_with(config, Arc::new(FakeAuthenticator), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            stop: Some(tx),
            task,
        }
    }

    /// As a killed primary: it stops serving and its lock is released.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn accepts(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

async fn client(urls: &str, uid: u32) -> SchedulerClient {
    SchedulerClient::connect_tls(urls, Arc::new(Fixed(format!("uid:{uid}"))), &pki().ca())
        .await
        .unwrap()
}

/// A raw AcquireLease with the caller's own request id, signed as the fake authenticator wants.
async fn acquire_with_id(addr: SocketAddr, uid: u32, request_id: &str) -> v1::Lease {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(pki().client_tls(None))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut rpc = scheduler_client::SchedulerClient::new(channel);
    let mut req = v1::AcquireLeaseRequest {
        cores: 1,
        memory_mib: 100,
        library: Some(v1::FunctionLibrary {
            source: Some(v1::function_library::Source::Path("/opt/lib.so".into())),
        }),
        request_id: request_id.to_owned(),
        ..Default::default()
    };
    let payload = harvest_proto::binding::payload(&req);
    req.credential = Some(v1::Credential {
        munge: format!("uid:{uid}|{payload}"),
    });
    rpc.acquire_lease(req).await.unwrap().into_inner()
}

fn creates(agent: &FakeAgent) -> usize {
    agent
        .orders()
        .iter()
        .filter(|o| matches!(o, v1::scheduler_message::Msg::Create(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_and_every_lease_keeps_its_id_owner_and_secret() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("primary.lock");
    let shared = Config {
        primary_lock: Some(lock.clone()),
        ..config()
    };
    let (a, b) = (free_addr(), free_addr());
    let primary = Member::start(shared.clone(), a);
    eventually("the primary listening", WAIT, async || {
        accepts(a).then_some(())
    })
    .await;
    let standby = Member::start(shared, b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !accepts(b),
        "a standby must not serve while the primary holds the lock"
    );
    let holder = std::fs::read_to_string(&lock).unwrap();
    assert!(holder.contains(&format!("listen {a}")), "{holder}");

    let agent = FakeAgent::connect(a, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 4, 0)).await;
    let urls = format!("{a},{b}");
    let mut alice = client(&urls, 1000).await;
    let lease = eventually("a first lease", WAIT, async || {
        alice.acquire(&request(1, 100)).await.ok()
    })
    .await;
    let secret = lease.secret.clone().expect("the owner gets the secret");
    let retried = acquire_with_id(a, 1000, "alice-req-1").await;
    assert_eq!(creates(&agent), 2);

    // The primary dies; its agent's session breaks and the agent finds the standby.
    let running = agent.running();
    assert_eq!(running.len(), 2);
    let killed = Instant::now();
    primary.stop().await;
    agent.disconnect();
    eventually("the standby listening", WAIT, async || {
        accepts(b).then_some(())
    })
    .await;
    let took_over = killed.elapsed();
    let agent = FakeAgent::connect(b, "n1", SLOW_HEARTBEAT_MS, running, Answer::Ready).await;
    let mut v = view("n1", 4, 0);
    v.cpus.function = lease.cpus.iter().chain(&retried.cpus).copied().collect();
    v.cpus.idle = (0..4).filter(|c| !v.cpus.function.contains(*c)).collect();
    agent.report(1, &v).await;

    // The same client object, still pointed at the dead primary, fails over by itself: the
    // lease is there with the same id and the owner still gets the same secret.
    let again = alice.get(&lease.id).await.unwrap();
    assert_eq!(alice.url(), format!("https://{b}"));
    assert_eq!(
        (again.state.as_str(), again.executor_address.as_str()),
        ("active", lease.executor_address.as_str())
    );
    assert_eq!(again.secret.as_ref(), Some(&secret));
    // Another user gets neither the lease nor its secret.
    let mut bob = client(&urls, 1001).await;
    assert!(bob.get(&lease.id).await.is_err());

    // The retry of an acquisition whose answer was lost gets the lease its first try made.
    let answer = acquire_with_id(b, 1000, "alice-req-1").await;
    assert_eq!(answer.id, retried.id);
    assert_eq!(answer.secret, retried.secret);
    assert_eq!(
        creates(&agent),
        0,
        "no second executor for a retried request"
    );
    // The same id from another user is another request.
    let other = acquire_with_id(b, 1001, "alice-req-1").await;
    assert_ne!(other.id, retried.id);

    // New leases are placed through the standby.
    let fresh = alice.acquire(&request(1, 100)).await.unwrap();
    assert_eq!(fresh.state, "active");
    eprintln!("the standby listened {took_over:?} after the primary stopped");
    assert!(took_over < Duration::from_secs(5), "{took_over:?}");
    standby.stop().await;
}
