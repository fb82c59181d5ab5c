//! harvestd against a fake scheduler (a real AgentGateway server on 127.0.0.1, mutual TLS with a
//! test CA): register, heartbeat slot reports, reconnection after a scheduler restart, refused
//! orders, and a scheduler whose certificate is not from the agent's CA. Needs no root: no lease
//! here gets as far as a cgroup.

mod support;

use std::time::Duration;

use harvest_agent::fake_scheduler::{FakeScheduler, event_of, register, slots};
use harvest_proto::v1;
use support::Harvestd;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_re_registers_after_a_scheduler_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = format!("sess{}", std::process::id());
    let (server_tls, tls_lines) = support::tls(dir.path(), &node);
    let mut sched =
        FakeScheduler::start_tls("127.0.0.1:0".parse().unwrap(), Some(server_tls.clone()))
            .await
            .unwrap();
    // The node's users: 4242 (primary group 4242), a system account and a user below the
    // minimum uid.
    let passwd = dir.path().join("passwd");
    std::fs::write(
        &passwd,
        "u4242:x:4242:4242::/nonexistent:/bin/sh\n\
         svc:x:4300:4300::/nonexistent:/usr/sbin/nologin\n\
         low:x:500:500::/nonexistent:/bin/sh\n",
    )
    .unwrap();
    let mut agent = Harvestd::start(
        dir.path(),
        &node,
        &sched.url(),
        &format!(
            "heartbeat_interval = \"200ms\"\nreconnect_backoff_max = \"300ms\"\n\
             passwd_file = {passwd:?}\n{tls_lines}"
        ),
    );
    let reg = sched
        .wait_for(WAIT, register)
        .await
        .unwrap_or_else(|| panic!("no Register; log:\n{}", agent.log()));
    assert_eq!(reg.node, node);
    assert_eq!(reg.heartbeat_ms, 200);
    assert!(reg.executors.is_empty());
    // Slot reports keep coming with nothing changing: they are the heartbeat.
    let first = sched.wait_for(WAIT, slots).await.unwrap();
    let version = first.version.unwrap();
    let view = first.view.unwrap();
    assert_eq!(view.name, node);
    let started = std::time::Instant::now();
    let mut last = version;
    for _ in 0..3 {
        let r = sched.wait_for(WAIT, slots).await.unwrap();
        let v = r.version.unwrap();
        assert!(v.is_newer_than(&last), "{v:?} after {last:?}");
        assert_eq!(v.incarnation, version.incarnation);
        last = v;
    }
    // Three more reports at a 200 ms heartbeat: well under 3 s even on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // The scheduler restarts on the same address: the agent registers again, same incarnation,
    // later sequence.
    let addr = sched.addr;
    sched.stop().await;
    let mut sched = FakeScheduler::start_tls(addr, Some(server_tls))
        .await
        .unwrap();
    let again = sched
        .wait_for(WAIT, register)
        .await
        .unwrap_or_else(|| panic!("no re-Register; log:\n{}", agent.log()));
    assert_eq!(again.node, node);
    let r = sched.wait_for(WAIT, slots).await.unwrap().version.unwrap();
    assert_eq!(r.incarnation, version.incarnation);
    assert!(r.is_newer_than(&last));
    assert!(agent.alive());

    // Orders the agent refuses come back as `failed` with the reason.
    let create_as = |id: &str, uid: u32, gid: u32, cores: u32| {
        v1::scheduler_message::Msg::Create(v1::CreateExecutor {
            lease_id: id.into(),
            uid,
            gid,
            cores,
            memory_mib: 64,
            library: Some(v1::FunctionLibrary {
                source: Some(v1::function_library::Source::Path("/nonexistent.so".into())),
            }),
            ..Default::default()
        })
    };
    let create = |id: &str, uid: u32, cores: u32| create_as(id, uid, uid, cores);
    assert!(sched.send(create("root", 0, 1)).await);
    let failed = sched.wait_for(WAIT, |m| event_of(m, "root")).await.unwrap();
    let v1::executor_event::Event::Failed(reason) = failed else {
        panic!("{failed:?}")
    };
    assert!(reason.contains("allow_root_executors"), "{reason}");
    // Whom it runs as is the agent's decision, whatever the scheduler says.
    for (id, uid, gid, says) in [
        ("group-root", 4242, 0, "not the primary group of u4242"),
        ("low", 500, 500, "min_executor_uid = 1000"),
        ("svc", 4300, 4300, "system account"),
        ("ghost", 4343, 4343, "not a user on this node"),
    ] {
        assert!(sched.send(create_as(id, uid, gid, 1)).await);
        let failed = sched.wait_for(WAIT, |m| event_of(m, id)).await.unwrap();
        let v1::executor_event::Event::Failed(reason) = failed else {
            panic!("{id}: {failed:?}")
        };
        assert!(reason.contains(says), "{id}: {reason}");
    }
    assert!(sched.send(create("huge", 4242, 4096)).await);
    let failed = sched.wait_for(WAIT, |m| event_of(m, "huge")).await.unwrap();
    let v1::executor_event::Event::Failed(reason) = failed else {
        panic!("{failed:?}")
    };
    assert!(reason.contains("4096 CPUs wanted"), "{reason}");
    let v1::executor_event::Event::Exited(reason) = ({
        sched
            .send(v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                lease_id: "nothing".into(),
                reason: "test".into(),
                cause: v1::EndCause::Released as i32,
            }))
            .await;
        sched
            .wait_for(WAIT, |m| event_of(m, "nothing"))
            .await
            .unwrap()
    }) else {
        panic!()
    };
    assert!(reason.contains("no lease nothing"), "{reason}");

    // SIGTERM ends the agent cleanly even with a session open.
    let status = agent
        .terminate(Duration::from_secs(10))
        .expect("harvestd exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", agent.log());
    sched.stop().await;
}

/// A fake scheduler on the agent's configured address with a certificate from another CA (that
/// even trusts the agent's certificate): the handshake fails, so it never hears a Register and
/// its CreateExecutor goes nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_whose_certificate_is_not_from_the_agents_ca_gets_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let node = format!("rogue{}", std::process::id());
    let (_, tls_lines) = support::tls(dir.path(), &node);
    let other = tempfile::tempdir().unwrap();
    let rogue = harvest_proto::tls::testing::Pki::new(other.path(), "rogue");
    let cert = rogue.server();
    let rogue_tls = tonic::transport::ServerTlsConfig::new().identity(
        harvest_proto::tls::read_identity(("cert", &cert.cert), ("key", &cert.key)).unwrap(),
    );
    let mut sched = FakeScheduler::start_tls("127.0.0.1:0".parse().unwrap(), Some(rogue_tls))
        .await
        .unwrap();
    let mut agent = Harvestd::start(
        dir.path(),
        &node,
        &sched.url(),
        &format!("heartbeat_interval = \"200ms\"\nreconnect_backoff_max = \"300ms\"\n{tls_lines}"),
    );
    // Several reconnection attempts fit in this wait.
    assert!(
        sched
            .wait_for(Duration::from_secs(3), register)
            .await
            .is_none(),
        "the agent registered with a scheduler from another CA; log:\n{}",
        agent.log()
    );
    assert!(
        !sched
            .send(v1::scheduler_message::Msg::Create(v1::CreateExecutor {
                lease_id: "evil".into(),
                uid: 4242,
                gid: 0,
                cores: 1,
                ..Default::default()
            }))
            .await
    );
    let log = agent.log();
    assert!(log.contains("connecting to the scheduler"), "{log}");
    assert!(!log.contains("CreateExecutor"), "{log}");
    assert!(agent.alive());
    sched.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_schedulers_the_agent_registers_with_whichever_serves() {
    let dir = tempfile::tempdir().unwrap();
    let node = format!("ha{}", std::process::id());
    let (server_tls, tls_lines) = support::tls(dir.path(), &node);
    // The first address has nothing behind it (a dead primary); the second serves.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut standby =
        FakeScheduler::start_tls("127.0.0.1:0".parse().unwrap(), Some(server_tls.clone()))
            .await
            .unwrap();
    let urls = format!("http://{dead},{}", standby.url());
    let mut agent = Harvestd::start(
        dir.path(),
        &node,
        &urls,
        &format!("heartbeat_interval = \"200ms\"\nreconnect_backoff_max = \"300ms\"\n{tls_lines}"),
    );
    let reg = standby.wait_for(WAIT, register).await.unwrap_or_else(|| {
        panic!(
            "no Register with the second scheduler; log:\n{}",
            agent.log()
        )
    });
    assert_eq!(reg.node, node);
    // Its reports list the leases it holds (none yet).
    let report = standby.wait_for(WAIT, slots).await.unwrap();
    assert!(report.leases.is_empty());
    // The second one goes away and one serves at the first address: the agent follows.
    standby.stop().await;
    let mut primary = FakeScheduler::start_tls(dead, Some(server_tls))
        .await
        .unwrap();
    let again = primary.wait_for(WAIT, register).await.unwrap_or_else(|| {
        panic!(
            "no Register with the first scheduler; log:\n{}",
            agent.log()
        )
    });
    assert_eq!(again.node, node);
    assert!(agent.alive());
}
