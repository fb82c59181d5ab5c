//! Black-box tests: the real scheduler on 127.0.0.1:0, fake agents on the real session
//! protocol, and the real client library.

mod common;

use std::time::Duration;

use common::{Answer, FakeAgent, Scheduler, config, eventually, request, view};
use harvest_client::{LeaseExt, Polling};
use harvest_core::invoke::ErrorCode;

const WAIT: Duration = Duration::from_secs(10);
const SLOW_HEARTBEAT_MS: u64 = 60_000;

async fn node_known(s: &Scheduler, node: &str, idle: usize) {
    let mut c = s.client(0).await;
    eventually("the node's report", WAIT, async || {
        let nodes = c.nodes().await.unwrap();
        nodes
            .iter()
            .any(|n| n.view.name == node && n.view.cpus.idle.len() == idle)
            .then_some(())
    })
    .await;
}

/// Acquires 2 cores as soon as the scheduler has applied a report that frees them; returns the
/// error the placement then ran into (the tests' agents never let a start succeed here).
async fn acquire_once_placeable(
    c: &mut harvest_client::SchedulerClient,
) -> harvest_client::lease::LeaseError {
    eventually(
        "a placement past RESOURCE_EXHAUSTED",
        WAIT,
        async || match c.acquire(&request(2, 10)).await {
            Err(e) if e.code() == Some(tonic::Code::ResourceExhausted) => None,
            Err(e) => Some(e),
            Ok(l) => panic!("unexpected lease {l:?}"),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_invoke_list_and_release_a_lease() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let agent = FakeAgent::connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 4, 1)).await;
    node_known(&s, "n1", 3).await;

    let mut alice = s.client(1000).await;
    let lease = alice.acquire(&request(2, 300)).await.unwrap();
    assert_eq!(
        (lease.node.as_str(), lease.state.as_str()),
        ("n1", "active")
    );
    assert_eq!(
        (lease.uid, lease.cpus.len(), lease.memory_mib),
        (1000, 2, 300)
    );

    // The invocation goes to the executor directly.
    let mut conn = lease.connect(Polling::Block).unwrap();
    assert_eq!(conn.invoke("reverse", b"abc", None).unwrap(), b"cba");
    let e = conn.invoke("nope", b"", None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoSuchFunction));

    let nodes = alice.nodes().await.unwrap();
    assert_eq!(nodes[0].state, "up");
    assert_eq!(nodes[0].view.cpus.total.len(), 4);
    let leases = alice.leases().await.unwrap();
    assert!(
        lease.secret.is_some(),
        "the owner's answer carries the secret"
    );
    let listed = harvest_client::Lease {
        secret: None,
        ..lease.clone()
    };
    assert_eq!(leases, vec![listed], "a listing never does");

    // Only 1 core left: a second 2-core lease does not fit.
    let e = alice.acquire(&request(2, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");

    let mut bob = s.client(1001).await;
    let e = bob.release(&lease.id).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::PermissionDenied), "{e}");
    alice.release(&lease.id).await.unwrap();
    let reason = eventually("the DestroyExecutor order", WAIT, async || {
        agent.destroyed(&lease.id)
    })
    .await;
    assert!(reason.contains("released"), "{reason}");
    let after = alice.leases().await.unwrap();
    assert_eq!(after[0].state, "released");
    let e = alice.release("no-such-lease").await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::NotFound));
    // Until the agent reports the executor gone, its cores stay taken; then they are free again.
    let e = alice.acquire(&request(3, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    // An acquisition waits (placement_wait_ms) for the report that gives the cores back.
    let three = request(3, 10);
    let (again, ()) = tokio::join!(alice.acquire(&three), async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        agent.report(2, &view("n1", 4, 1)).await;
    });
    let again = again.unwrap();
    assert_eq!(again.cpus.len(), 3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_unschedulable_requests_are_refused_with_reasons() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let mut nobody = harvest_client::SchedulerClient::connect_tls(
        &s.addr.to_string(),
        std::sync::Arc::new(harvest_client::identity::Fixed("forged".into())),
        &common::pki().ca(),
    )
    .await
    .unwrap();
    let e = nobody.acquire(&request(1, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Unauthenticated), "{e}");

    let mut c = s.client(1000).await;
    let e = c.acquire(&request(1, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    assert!(e.to_string().contains("0 node(s) known"), "{e}");
    let e = c.acquire(&request(0, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::InvalidArgument));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_silent_executor_start_frees_the_reservation() {
    let s = Scheduler::start(
        harvest_scheduler::config::Config {
            executor_start_timeout_ms: 300,
            ..config()
        },
        "127.0.0.1:0",
    )
    .await;
    let failing = FakeAgent::connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Fail).await;
    failing.report(1, &view("n1", 2, 0)).await;
    node_known(&s, "n1", 2).await;
    let mut c = s.client(1000).await;
    let e = c.acquire(&request(2, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");
    assert!(e.to_string().contains("permission denied"), "{e}");

    // The same node, now an agent that never answers: the start times out.
    // A second agent for a node whose agent is connected is refused...
    let e = FakeAgent::try_connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Silent)
        .await
        .err()
        .expect("a second agent for a live node is refused");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    assert!(e.message().contains("--node n1"), "{e}");
    // ... and accepted once the first one has gone.
    failing.disconnect();
    let silent = eventually("the first agent's session to end", WAIT, async || {
        FakeAgent::try_connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Silent)
            .await
            .ok()
    })
    .await;
    // The failed start's cores are free once the node reports them idle.
    silent.report(2, &view("n1", 2, 0)).await;
    let e = acquire_once_placeable(&mut c).await;
    assert_eq!(e.code(), Some(tonic::Code::DeadlineExceeded), "{e}");
    let leases = c.leases().await.unwrap();
    assert!(leases.iter().all(|l| l.state == "failed"), "{leases:?}");
    let timed_out = &leases.last().unwrap().id;
    eventually(
        "a DestroyExecutor for the timed-out start",
        WAIT,
        async || silent.destroyed(timed_out),
    )
    .await;
    // Both reservations were freed once the node reports: the full node is placeable (the
    // start times out again).
    silent.report(3, &view("n1", 2, 0)).await;
    let e = acquire_once_placeable(&mut c).await;
    assert_eq!(e.code(), Some(tonic::Code::DeadlineExceeded), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_a_batch_job_cuts_short_is_placed_again() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let agent = FakeAgent::connect(
        s.addr,
        "n1",
        SLOW_HEARTBEAT_MS,
        vec![],
        Answer::ReclaimFirst,
    )
    .await;
    agent.report(1, &view("n1", 4, 0)).await;
    node_known(&s, "n1", 4).await;
    let mut c = s.client(1000).await;
    let lease = c.acquire(&request(1, 10)).await.unwrap();
    assert_eq!(lease.state, "active");
    let leases = c.leases().await.unwrap();
    let first = leases
        .iter()
        .find(|l| l.id != lease.id)
        .expect("the first, reclaimed attempt is listed");
    assert_eq!(
        (
            first.state.as_str(),
            first.end_cause.as_str(),
            first.end_reason.as_str()
        ),
        ("revoked", "reclaimed", "reclaimed by job 9")
    );
    let n1 = c.nodes().await.unwrap().remove(0);
    assert_eq!(n1.revocations.get("reclaimed"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_and_their_executors_are_destroyed() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let agent = FakeAgent::connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 2, 0)).await;
    node_known(&s, "n1", 2).await;
    let mut c = s.client(1000).await;
    let mut r = request(1, 10);
    r.lifetime = Some(Duration::from_millis(300));
    let lease = c.acquire(&r).await.unwrap();
    let reason = eventually("expiry", WAIT, async || agent.destroyed(&lease.id)).await;
    assert_eq!(reason, "lease expired");
    assert!(agent.running().is_empty());
    let leases = c.leases().await.unwrap();
    assert_eq!(leases[0].state, "expired");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_misses_its_heartbeats_goes_down_and_its_leases_are_revoked() {
    let s = Scheduler::start(
        harvest_scheduler::config::Config {
            heartbeat_miss_limit: 3,
            ..config()
        },
        "127.0.0.1:0",
    )
    .await;
    // Heartbeat 100 ms: down after 300 ms without a report.
    let agent = FakeAgent::connect(s.addr, "n1", 100, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 2, 0)).await;
    node_known(&s, "n1", 2).await;
    let mut c = s.client(1000).await;
    let lease = c.acquire(&request(1, 10)).await.unwrap();
    let revoked = eventually("revocation", WAIT, async || {
        let l = c
            .leases()
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.id == lease.id)?;
        (l.state == "revoked").then_some(l)
    })
    .await;
    assert_eq!(revoked.end_reason, "node down");
    assert_eq!(c.nodes().await.unwrap()[0].state, "down");
    let e = c.acquire(&request(1, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted));
    // A new report brings it back.
    agent.report(2, &view("n1", 2, 0)).await;
    eventually("the node up again", WAIT, async || {
        (c.nodes().await.unwrap()[0].state == "up").then_some(())
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_report_does_not_overwrite_a_newer_one() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let agent = FakeAgent::connect(s.addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(5, &view("n1", 4, 3)).await;
    node_known(&s, "n1", 1).await;
    agent.report(4, &view("n1", 4, 0)).await;
    // A later, newer report is the marker that the stale one was processed (one stream, in order).
    agent.report(6, &view("n1", 4, 2)).await;
    node_known(&s, "n1", 2).await;
    let mut c = s.client(0).await;
    let e = c.acquire(&request(3, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_leases_survive_a_scheduler_restart() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let addr = s.addr;
    let agent = FakeAgent::connect(addr, "n1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 4, 0)).await;
    node_known(&s, "n1", 4).await;
    let mut c = s.client(1000).await;
    let lease = c.acquire(&request(2, 200)).await.unwrap();
    let running = agent.running();
    s.stop().await;
    agent.disconnect();

    // A new scheduler on the same address; the agent re-registers with its executors.
    let s = Scheduler::start(config(), &addr.to_string()).await;
    let agent = FakeAgent::connect(addr, "n1", SLOW_HEARTBEAT_MS, running, Answer::Ready).await;
    let mut v = view("n1", 4, 0);
    v.cpus.function = [0, 1].into_iter().collect();
    v.cpus.idle = [2, 3].into_iter().collect();
    agent.report(1, &v).await;
    node_known(&s, "n1", 2).await;
    let mut c = s.client(1000).await;
    let adopted = c.leases().await.unwrap();
    assert_eq!(adopted.len(), 1);
    let a = &adopted[0];
    assert_eq!(
        (
            a.id.as_str(),
            a.state.as_str(),
            a.uid,
            &a.cpus,
            &a.executor_address
        ),
        (
            lease.id.as_str(),
            "active",
            1000,
            &lease.cpus,
            &lease.executor_address
        )
    );
    // Its executor still answers the owner, whose client kept the secret (the new scheduler
    // has none for an adopted lease), and its cores are not placed twice.
    assert!(a.secret.is_none());
    let mut conn = lease.connect(Polling::Block).unwrap();
    assert_eq!(conn.invoke("reverse", b"xy", None).unwrap(), b"yx");
    let e = c.acquire(&request(3, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(tonic::Code::ResourceExhausted), "{e}");
    c.release(&lease.id).await.unwrap();
    eventually("DestroyExecutor after release", WAIT, async || {
        agent.destroyed(&lease.id)
    })
    .await;
    s.stop().await;
}
