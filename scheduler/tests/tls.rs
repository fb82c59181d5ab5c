//! Mutual TLS between agents and the scheduler: the real scheduler on 127.0.0.1:0 with a test
//! CA. An agent is the node its certificate names and reports only on the leases that node
//! holds; a connection without a certificate (or without TLS) is no agent; an agent does not
//! talk to a scheduler whose certificate is not from its CA.

mod common;

use std::time::Duration;

use common::{Answer, FakeAgent, Scheduler, agent_tls, config, eventually, request, view};
use harvest_proto::tls::testing::Pki;
use harvest_proto::v1::{self, executor_event::Event};

const WAIT: Duration = Duration::from_secs(10);
const SLOW_HEARTBEAT_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_may_register_only_as_the_node_its_certificate_names() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let e = FakeAgent::try_connect_with(
        s.addr,
        Some(agent_tls("t1")),
        "t2",
        SLOW_HEARTBEAT_MS,
        vec![],
        Answer::Ready,
    )
    .await
    .err()
    .expect("n1's certificate registered as n2");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("node t1's") && e.message().contains("t2"),
        "{e}"
    );

    // Its own name is fine, and no t2 was ever listed.
    let agent = FakeAgent::connect(s.addr, "t1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    agent.report(1, &view("t1", 2, 0)).await;
    let mut c = s.client(1000).await;
    let names = eventually("t1 listed", WAIT, async || {
        let nodes = c.nodes().await.unwrap();
        (!nodes.is_empty()).then(|| nodes.into_iter().map(|n| n.view.name).collect::<Vec<_>>())
    })
    .await;
    assert_eq!(names, ["t1"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_client_certificate_or_without_tls_is_no_agent() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    // TLS that trusts the scheduler but presents no certificate (as a `harvest` client would).
    let e = FakeAgent::try_connect_with(
        s.addr,
        Some(common::pki().client_tls(None)),
        "t1",
        SLOW_HEARTBEAT_MS,
        vec![],
        Answer::Ready,
    )
    .await
    .err()
    .expect("a certificate-less agent registered");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}");
    assert!(e.message().contains("client certificate"), "{e}");

    // Plaintext gRPC to a TLS port does not get as far as a session.
    let e =
        FakeAgent::try_connect_with(s.addr, None, "t1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready)
            .await
            .err()
            .expect("a plaintext agent registered");
    assert_ne!(e.code(), tonic::Code::Ok, "{e}");

    let mut c = s.client(1000).await;
    assert!(c.nodes().await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_for_a_lease_are_accepted_only_from_the_node_that_holds_it() {
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let holder = FakeAgent::connect(s.addr, "h1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    holder.report(1, &view("h1", 4, 0)).await;
    // The other node has no room, so the lease goes to h1.
    let other = FakeAgent::connect(s.addr, "h2", SLOW_HEARTBEAT_MS, vec![], Answer::Ready).await;
    other.report(1, &view("h2", 1, 1)).await;
    let mut alice = s.client(1000).await;
    let lease = eventually("a lease on h1", WAIT, async || {
        alice.acquire(&request(2, 100)).await.ok()
    })
    .await;
    assert_eq!(
        (lease.node.as_str(), lease.state.as_str()),
        ("h1", "active")
    );

    // h2, with its own valid certificate, claims the executor moved to its address, then that
    // it exited.
    let info = v1::ExecutorInfo {
        lease_id: lease.id.clone(),
        uid: 1000,
        cpus: vec![0],
        memory_mib: 100,
        gpus: vec![],
        address: "127.0.0.1:1".into(),
        expires_unix_ms: 0,
        ..Default::default()
    };
    other
        .send_event(
            &lease.id,
            Event::Ready(info.clone()),
            v1::EndCause::Unspecified,
        )
        .await;
    other
        .send_event(&lease.id, Event::Moved(info), v1::EndCause::Unspecified)
        .await;
    other
        .send_event(
            &lease.id,
            Event::Exited("gone".into()),
            v1::EndCause::Reclaimed,
        )
        .await;
    other
        .send_event(
            &lease.id,
            Event::Failed("no".into()),
            v1::EndCause::ExecutorFailed,
        )
        .await;
    // Messages on one session are handled in order: a report sent after them is applied after
    // them, so once it shows, the events have been judged.
    let mut small = view("h2", 1, 1);
    small.memory_mib.total = 999;
    other.report(2, &small).await;
    eventually("h2's second report", WAIT, async || {
        let nodes = alice.nodes().await.unwrap();
        nodes
            .iter()
            .any(|n| n.view.name == "h2" && n.view.memory_mib.total == 999)
            .then_some(())
    })
    .await;

    let now = alice.get(&lease.id).await.unwrap();
    assert_eq!(now.state, "active", "{now:?}");
    assert_eq!(now.executor_address, lease.executor_address);
    assert_eq!(now.cpus, lease.cpus);
    assert_eq!(now.node, "h1");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_does_not_talk_to_a_scheduler_whose_certificate_is_not_from_its_ca() {
    // A scheduler with a certificate from another CA (which trusts the agents' certificates,
    // the most a fake one could arrange).
    let dir = tempfile::tempdir().unwrap();
    let rogue = Pki::new(dir.path(), "rogue");
    let server = rogue.server();
    let fake = Scheduler::start(
        harvest_scheduler::config::Config {
            tls_cert: Some(server.cert),
            tls_key: Some(server.key),
            ..config()
        },
        "127.0.0.1:0",
    )
    .await;
    let e = FakeAgent::try_connect(fake.addr, "r1", SLOW_HEARTBEAT_MS, vec![], Answer::Ready)
        .await
        .err()
        .expect("the agent trusted a scheduler from another CA");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e}");
    fake.stop().await;
}
