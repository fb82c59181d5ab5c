//! Security II at the scheduler: a credential proves one request, a lease's secret reaches
//! only its owner, listings show others' leases only as totals, caps refuse what goes over,
//! and only operators drain nodes or revoke others' leases. Real scheduler (mutual TLS, fake
//! munge), raw gRPC where the client library would hide what is checked.

mod common;

use common::{Answer, FakeAgent, Scheduler, config, eventually, request, view};
use harvest_proto::binding;
use harvest_proto::v1::{self, scheduler_client::SchedulerClient as Raw};
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn raw(s: &Scheduler) -> Raw<Channel> {
    let ca = harvest_proto::tls::read_ca("ca", &common::pki().ca()).unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", s.addr))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Raw::new(channel)
}

/// The fake munge's credential for `uid`, made for `req`.
fn signed<R: binding::Bound>(uid: u32, mut req: R) -> R {
    let payload = binding::payload(&req);
    req.set_credential(v1::Credential {
        munge: format!("uid:{uid}|{payload}"),
    });
    req
}

fn get(lease: &str) -> v1::GetLeaseRequest {
    v1::GetLeaseRequest {
        lease_id: lease.into(),
        credential: None,
    }
}

/// A scheduler with one 4-core node whose fake agent starts every executor.
async fn cluster(cfg: harvest_scheduler::config::Config) -> (Scheduler, FakeAgent) {
    let s = Scheduler::start(cfg, "127.0.0.1:0").await;
    let agent = FakeAgent::connect(s.addr, "n1", 60_000, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 4, 0)).await;
    let mut c = s.client(1000).await;
    eventually("the node", WAIT, async || {
        (!c.nodes().await.unwrap().is_empty()).then_some(())
    })
    .await;
    (s, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_proves_its_own_request_and_no_other() {
    let (s, _agent) = cluster(config()).await;
    let mut rpc = raw(&s).await;
    let mut alice = s.client(1000).await;
    let lease = alice.acquire(&request(1, 10)).await.unwrap();

    // A credential made for GetLease of this lease, used for ReleaseLease of it: refused, and
    // the lease lives on.
    let for_get = signed(1000, get(&lease.id)).credential.unwrap();
    let e = rpc
        .release_lease(v1::ReleaseLeaseRequest {
            credential: Some(for_get.clone()),
            lease_id: lease.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert!(e.message().contains("made for another request"), "{e}");
    // The same for GetLease of another id.
    let e = rpc
        .get_lease(v1::GetLeaseRequest {
            credential: Some(for_get.clone()),
            lease_id: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // An empty payload (`munge -n`, the old client) proves nothing either.
    let e = rpc
        .list_leases(v1::ListLeasesRequest {
            credential: Some(v1::Credential {
                munge: "uid:1000".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    // Its own request works; every client RPC needs a credential now.
    rpc.get_lease(v1::GetLeaseRequest {
        credential: Some(for_get),
        lease_id: lease.id.clone(),
    })
    .await
    .unwrap();
    let e = rpc
        .list_nodes(v1::ListNodesRequest { credential: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    assert_eq!(alice.get(&lease.id).await.unwrap().state, "active");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_and_its_secret_are_its_owners() {
    let (s, agent) = cluster(config()).await;
    let mut rpc = raw(&s).await;
    let mut req = signed(
        1000,
        v1::AcquireLeaseRequest {
            credential: None,
            cores: 1,
            memory_mib: 10,
            library: Some(v1::FunctionLibrary {
                source: Some(v1::function_library::Source::Path("/opt/lib.so".into())),
            }),
            ..Default::default()
        },
    );
    let acquired = rpc.acquire_lease(req.clone()).await.unwrap().into_inner();
    assert_eq!(acquired.secret.len(), 32, "the owner gets the secret");
    // The agent got the same secret in its order.
    let create = agent
        .orders()
        .into_iter()
        .find_map(|m| match m {
            v1::scheduler_message::Msg::Create(c) if c.lease_id == acquired.id => Some(c),
            _ => None,
        })
        .unwrap();
    assert_eq!(create.secret, acquired.secret);
    // A second lease gets a different one.
    req = signed(1000, req);
    let second = rpc.acquire_lease(req).await.unwrap().into_inner();
    assert_ne!(second.secret, acquired.secret);

    // GetLease: the owner with the secret, an operator without, anyone else refused.
    let mine = rpc
        .get_lease(signed(1000, get(&acquired.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine.secret, acquired.secret);
    let e = rpc
        .get_lease(signed(1001, get(&acquired.id)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(!e.message().contains(&acquired.executor_address));
    let root = rpc
        .get_lease(signed(0, get(&acquired.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(root.secret.is_empty());
    assert_eq!(root.executor_address, acquired.executor_address);

    // ListLeases: never a secret; bob sees none of alice's leases, only totals.
    let list = |uid| signed(uid, v1::ListLeasesRequest { credential: None });
    let alices = rpc.list_leases(list(1000)).await.unwrap().into_inner();
    assert_eq!(alices.leases.len(), 2);
    assert!(alices.leases.iter().all(|l| l.secret.is_empty()));
    assert_eq!(alices.others.unwrap().leases, 0);
    let bobs = rpc.list_leases(list(1001)).await.unwrap().into_inner();
    assert!(bobs.leases.is_empty(), "{:?}", bobs.leases);
    let others = bobs.others.unwrap();
    assert_eq!((others.leases, others.cores, others.users), (2, 2, 1));
    assert_eq!(others.memory_mib, 20);
    let roots = rpc.list_leases(list(0)).await.unwrap().into_inner();
    assert_eq!(roots.leases.len(), 2);
    assert!(roots.others.is_none());
    assert!(roots.leases.iter().all(|l| l.secret.is_empty()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_refuse_the_lease_over_the_limit_with_the_key_to_change() {
    let mut cfg = config();
    cfg.access = toml::from_str("[per_user]\nmax_leases = 2\nmax_cores = 3\n").unwrap();
    let (s, agent) = cluster(cfg).await;
    let mut alice = s.client(1000).await;
    let first = alice.acquire(&request(2, 10)).await.unwrap();
    let e = alice.acquire(&request(2, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("would hold 4 cores") && msg.contains("[access.per_user] max_cores"),
        "{msg}"
    );
    alice.acquire(&request(1, 10)).await.unwrap();
    let e = alice.acquire(&request(1, 10)).await.unwrap_err();
    assert!(e.to_string().contains("max_leases"), "{e}");
    // Another user is not held by alice's usage.
    s.client(1001).await.acquire(&request(1, 10)).await.unwrap();
    // Releasing one makes room (its cores come back with the agent's next report).
    alice.release(&first.id).await.unwrap();
    agent.report(2, &view("n1", 4, 0)).await;
    alice.acquire(&request(1, 10)).await.unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_drain_nodes_and_revoke_others_leases() {
    let mut cfg = config();
    cfg.access.operator_uids = vec![1500];
    let (s, agent) = cluster(cfg).await;
    let mut alice = s.client(1000).await;
    let mut bob = s.client(1001).await;
    let mut operator = s.client(1500).await;
    let a = alice.acquire(&request(1, 10)).await.unwrap();

    let e = bob.revoke(&a.id, "mine now").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    let e = bob.drain_node("n1", true, true, "").await.unwrap_err();
    assert_eq!(e.code(), Some(Code::PermissionDenied), "{e}");
    assert_eq!(alice.get(&a.id).await.unwrap().state, "active");

    let revoked = operator.revoke(&a.id, "maintenance").await.unwrap();
    assert_eq!(
        (revoked.state.as_str(), revoked.end_cause.as_str()),
        ("revoked", "operator")
    );
    assert!(
        revoked.end_reason.contains("uid 1500: maintenance"),
        "{}",
        revoked.end_reason
    );
    let reason = eventually("the DestroyExecutor order", WAIT, async || {
        agent.destroyed(&a.id)
    })
    .await;
    assert!(reason.contains("maintenance"), "{reason}");

    let b = bob.acquire(&request(1, 10)).await.unwrap();
    assert_eq!(
        operator.drain_node("n1", true, true, "disk").await.unwrap(),
        1
    );
    assert_eq!(bob.get(&b.id).await.unwrap().end_cause, "operator");
    assert_eq!(alice.nodes().await.unwrap()[0].state, "drained");
    // Nothing is placed on a drained node, even after its next report.
    agent.report(2, &view("n1", 4, 0)).await;
    let e = alice.acquire(&request(1, 10)).await.unwrap_err();
    assert_eq!(e.code(), Some(Code::ResourceExhausted), "{e}");
    operator.drain_node("n1", false, false, "").await.unwrap();
    assert_eq!(alice.nodes().await.unwrap()[0].state, "up");
    agent.report(3, &view("n1", 4, 0)).await;
    eventually("a placement after the undrain", WAIT, async || {
        alice.acquire(&request(1, 10)).await.ok()
    })
    .await;
    let e = operator
        .drain_node("n9", true, false, "")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(Code::FailedPrecondition), "{e}");
    s.stop().await;
}
