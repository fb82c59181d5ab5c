//! Unit tests of the lease book: no network, time driven by hand.

use std::time::Duration;

use harvest_core::{CpuSet, NodeView};
use harvest_policies::Resources;
use harvest_proto::v1::{self, EndCause, LeaseState, scheduler_message::Msg};

use super::{
    BookError, DESTROY_RESEND_AFTER, Health, LeaseBook, Limits, Now, Order, ReportExtras,
    ReportOutcome,
};
use crate::identity::Identity;
use harvest_core::invoke::auth::LeaseSecret;

fn limits() -> Limits {
    Limits {
        default_lifetime: Duration::from_secs(60),
        max_lifetime: Duration::from_secs(3600),
        default_memory_per_core_mib: 256,
        heartbeat_miss_limit: 5,
        default_agent_heartbeat: Duration::from_secs(1),
        ended_leases_kept: 3,
        default_idle_timeout: Duration::from_secs(300),
    }
}

fn book(policy: &str) -> LeaseBook {
    LeaseBook::new(
        limits(),
        harvest_policies::builtin_framework(policy).unwrap(),
        "t",
    )
}

fn user(uid: u32) -> Identity {
    Identity {
        uid,
        gid: uid,
        name: format!("u{uid}"),
    }
}

/// A node of `total` CPUs with the first `batch` held by a batch job; memory likewise.
fn view(name: &str, total: u32, batch: u32, mem_total: u64, mem_batch: u64) -> NodeView {
    let mut v = NodeView {
        name: name.into(),
        ..NodeView::default()
    };
    v.cpus.total = CpuSet::first_n(total);
    v.cpus.batch = (0..batch).collect();
    v.cpus.idle = (batch..total).collect();
    v.memory_mib.total = mem_total;
    v.memory_mib.batch = mem_batch;
    v.memory_mib.idle = mem_total - mem_batch;
    v
}

fn ver(incarnation: u64, sequence: u64) -> v1::ReportVersion {
    v1::ReportVersion {
        incarnation,
        sequence,
    }
}

fn request(cores: u32, memory_mib: u64) -> v1::AcquireLeaseRequest {
    v1::AcquireLeaseRequest {
        cores,
        memory_mib,
        library: Some(v1::FunctionLibrary {
            source: Some(v1::function_library::Source::Path("/lib.so".into())),
        }),
        ..Default::default()
    }
}

fn ready(cpus: &[u32]) -> v1::ExecutorInfo {
    v1::ExecutorInfo {
        cpus: cpus.to_vec(),
        address: "127.0.0.1:9".into(),
        ..Default::default()
    }
}

fn up(book: &mut LeaseBook, name: &str, v: &NodeView, now: Now) {
    book.register(name, Duration::from_secs(1), &[], |_| String::new(), now);
    assert_eq!(
        book.report(name, ver(1, 1), v, now),
        Ok(ReportOutcome::Applied)
    );
}

#[test]
fn a_lease_goes_to_a_node_with_idle_cores_and_is_ordered_there() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 4, 1000, 1000), now);
    up(&mut b, "n2", &view("n2", 4, 1, 1000, 100), now);
    let (lease, order) = b.place(&request(2, 0), &user(1000), now).unwrap();
    assert_eq!(lease.node, "n2");
    assert_eq!(lease.state, LeaseState::Pending as i32);
    assert_eq!(lease.memory_mib, 512, "default memory per core");
    let Msg::Create(create) = order.msg else {
        panic!("expected CreateExecutor")
    };
    assert_eq!(
        (order.node.as_str(), create.uid, create.cores),
        ("n2", 1000, 2)
    );
    assert_eq!(create.lease_id, lease.id);
    // The pending lease already counts: one of n2's three idle cores is left.
    assert_eq!(b.free("n2").unwrap().cores, 1);
    let active = b.executor_ready(&lease.id, &ready(&[2, 3])).unwrap();
    assert_eq!(active.state, LeaseState::Active as i32);
    assert_eq!(active.cpus, [2, 3]);
}

#[test]
fn a_memory_lease_needs_idle_memory_and_no_core_and_counts_as_held() {
    let now = Now::current();
    let mut b = book("first-fit");
    // n1: every core and most memory held by batch; n2: every core held, 3000 MiB idle.
    up(&mut b, "n1", &view("n1", 4, 4, 1000, 900), now);
    up(&mut b, "n2", &view("n2", 4, 4, 4000, 1000), now);
    let req = v1::AcquireLeaseRequest {
        memory: Some(v1::MemorySpec {
            region_mib: 2048,
            cpu_millis: 0,
        }),
        ..Default::default()
    };
    let (lease, order) = b.place(&req, &user(1000), now).unwrap();
    assert_eq!(lease.node, "n2");
    let held = 2048 + harvest_core::region::OVERHEAD_MIB;
    assert_eq!(lease.memory_mib, held);
    assert_eq!(
        lease.memory,
        Some(v1::MemorySpec {
            region_mib: 2048,
            cpu_millis: harvest_core::region::DEFAULT_CPU_MILLIS,
        })
    );
    let Msg::Create(create) = order.msg else {
        panic!("expected CreateExecutor")
    };
    assert_eq!((create.cores, create.memory_mib), (0, held));
    assert!(create.library.is_none());
    assert_eq!(create.memory, lease.memory);
    // The region is not idle while held: another one of the same size does not fit anywhere.
    assert_eq!(b.free("n2").unwrap().mem_mib, 3000 - held);
    let e = b.place(&req, &user(1001), now).unwrap_err();
    assert!(matches!(e, BookError::Unschedulable { .. }), "{e}");
    // A function lease is refused without cores; a memory lease with them.
    let e = b
        .place(
            &v1::AcquireLeaseRequest {
                cores: 1,
                ..req.clone()
            },
            &user(1000),
            now,
        )
        .unwrap_err();
    assert!(e.to_string().contains("no cores or GPUs"), "{e}");
}

#[test]
fn a_replica_avoids_the_nodes_it_names_and_says_so_when_none_is_left() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 4000, 0), now);
    up(&mut b, "n2", &view("n2", 4, 0, 4000, 0), now);
    let req = v1::AcquireLeaseRequest {
        memory: Some(v1::MemorySpec {
            region_mib: 512,
            cpu_millis: 0,
        }),
        ..Default::default()
    };
    let (primary, _) = b.place(&req, &user(1000), now).unwrap();
    let replica = v1::AcquireLeaseRequest {
        avoid_nodes: vec![primary.node.clone(), "no-such-node".into()],
        ..req.clone()
    };
    let (second, _) = b.place(&replica, &user(1000), now).unwrap();
    assert_ne!(second.node, primary.node);
    let both = v1::AcquireLeaseRequest {
        avoid_nodes: vec!["n1".into(), "n2".into()],
        ..req
    };
    let e = b.place(&both, &user(1000), now).unwrap_err();
    assert!(e.to_string().contains("asked for another node"), "{e}");
}

#[test]
fn the_agents_own_report_of_a_lease_is_not_counted_twice() {
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 4, 1, 1000, 0), now);
    let (lease, _) = b.place(&request(2, 100), &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[1, 2])).unwrap();
    let mut v = view("n1", 4, 1, 1000, 0);
    v.cpus.function = [1, 2].into_iter().collect();
    v.cpus.idle = [3].into_iter().collect();
    v.memory_mib.function = 100;
    v.memory_mib.idle = 900;
    b.report("n1", ver(1, 2), &v, now).unwrap();
    assert_eq!(b.free("n1").unwrap(), Resources::new(1, 900, 0));
}

#[test]
fn a_released_lease_holds_its_cores_until_the_agent_reports_them_idle() {
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 2, 1, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 100), &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[1])).unwrap();
    let mut lent = view("n1", 2, 1, 1000, 0);
    lent.cpus.function = [1].into_iter().collect();
    lent.cpus.idle = CpuSet::new();
    lent.memory_mib.function = 100;
    lent.memory_mib.idle = 900;
    b.report("n1", ver(1, 2), &lent, now).unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 0);
    b.release(&lease.id, &user(1)).unwrap();
    // Released, but the agent is still stopping the executor: nothing to place on.
    assert_eq!(b.free("n1").unwrap().cores, 0);
    assert!(b.place(&request(1, 100), &user(1), now).is_err());
    // A report from before the teardown finished still shows the CPU lent: still taken.
    b.report("n1", ver(1, 3), &lent, now).unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 0);
    // The agent reports it idle: free again.
    b.report("n1", ver(1, 4), &view("n1", 2, 1, 1000, 0), now)
        .unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 1);
    assert!(b.place(&request(1, 100), &user(1), now).is_ok());
}

#[test]
fn a_start_the_agent_reports_failed_frees_its_cores_at_once() {
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 2, 1, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 100), &user(0), now).unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 0);
    // The agent refused it (say, root) and holds nothing for it: no wait for its next report.
    b.end_by_agent(
        &lease.id,
        EndCause::ExecutorFailed,
        "refusing to run as root",
    );
    assert_eq!(b.free("n1").unwrap().cores, 1);
}

#[test]
fn nothing_fits_gives_the_policys_reason_and_reserves_nothing() {
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 2, 1, 1000, 900), now);
    let e = b.place(&request(1, 500), &user(1), now).unwrap_err();
    let BookError::Unschedulable { reason, .. } = &e else {
        panic!("{e}")
    };
    assert!(reason.contains("500 MiB idle memory"), "{reason}");
    let e = b.place(&request(2, 10), &user(1), now).unwrap_err();
    assert!(e.to_string().contains("2 idle core(s)"), "{e}");
    assert_eq!(b.free("n1").unwrap(), Resources::new(1, 100, 0));
    assert!(b.leases().is_empty());
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let now = Now::current();
    let mut b = book("best-fit");
    let e = b.place(&request(0, 10), &user(1), now).unwrap_err();
    assert!(
        matches!(e, BookError::BadRequest(ref m) if m.contains("cores")),
        "{e}"
    );
    let mut r = request(1, 10);
    r.library = None;
    let e = b.place(&r, &user(1), now).unwrap_err();
    assert!(e.to_string().contains("library"), "{e}");
    let mut r = request(1, 10);
    r.lifetime_ms = 7200 * 1000;
    let e = b.place(&r, &user(1), now).unwrap_err();
    assert!(e.to_string().contains("lifetime"), "{e}");
}

#[test]
fn a_node_that_has_not_reported_gets_nothing() {
    let now = Now::current();
    let mut b = book("first-fit");
    b.register("n1", Duration::from_secs(1), &[], |_| String::new(), now);
    assert!(matches!(
        b.place(&request(1, 1), &user(1), now),
        Err(BookError::Unschedulable { .. })
    ));
}

#[test]
fn stale_reports_are_ignored() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    assert_eq!(
        b.report("n1", ver(1, 5), &view("n1", 4, 2, 1000, 0), now),
        Ok(ReportOutcome::Applied)
    );
    assert_eq!(
        b.report("n1", ver(1, 4), &view("n1", 4, 0, 1000, 0), now),
        Ok(ReportOutcome::Stale)
    );
    assert_eq!(
        b.report("n1", ver(1, 5), &view("n1", 4, 0, 1000, 0), now),
        Ok(ReportOutcome::Stale)
    );
    assert_eq!(b.free("n1").unwrap().cores, 2, "the newer report stands");
    assert_eq!(
        b.report("n1", ver(2, 0), &view("n1", 4, 0, 1000, 0), now),
        Ok(ReportOutcome::Applied),
        "a new incarnation is newer whatever its sequence"
    );
    assert_eq!(b.free("n1").unwrap().cores, 4);
    assert!(matches!(
        b.report("n9", ver(9, 9), &view("n9", 1, 0, 1, 0), now),
        Err(BookError::UnknownNode(_))
    ));
}

#[test]
fn only_the_owner_or_root_releases() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (a, _) = b.place(&request(1, 10), &user(1000), now).unwrap();
    let (c, _) = b.place(&request(1, 10), &user(1000), now).unwrap();
    assert!(matches!(
        b.release(&a.id, &user(1001)),
        Err(BookError::NotOwner {
            owner: 1000,
            uid: 1001,
            ..
        })
    ));
    let order = b.release(&a.id, &user(1000)).unwrap().unwrap();
    assert!(matches!(order.msg, Msg::Destroy(ref d) if d.lease_id == a.id));
    assert_eq!(b.lease(&a.id).unwrap().state, LeaseState::Released as i32);
    assert_eq!(b.release(&a.id, &user(1000)), Ok(None), "idempotent");
    assert!(b.release(&c.id, &user(0)).unwrap().is_some(), "root may");
    // Until the agent reports the executors gone, their cores are not free again.
    assert_eq!(b.free("n1").unwrap().cores, 2);
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), now)
        .unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 4, "both reservations freed");
    assert!(matches!(
        b.release("nope", &user(0)),
        Err(BookError::UnknownLease(_))
    ));
}

#[test]
fn leases_expire_after_their_lifetime() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let mut r = request(2, 10);
    r.lifetime_ms = 2000;
    let (lease, _) = b.place(&r, &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[0, 1])).unwrap();
    // Keep the node alive with reports so only expiry acts.
    b.report(
        "n1",
        ver(1, 2),
        &view("n1", 4, 0, 1000, 0),
        now.after(Duration::from_millis(1500)),
    )
    .unwrap();
    assert!(b.tick(now.after(Duration::from_millis(1999))).is_empty());
    let orders = b.tick(now.after(Duration::from_millis(2000)));
    assert_eq!(orders.len(), 1);
    assert!(matches!(&orders[0].msg, Msg::Destroy(d) if d.lease_id == lease.id));
    assert_eq!(
        b.lease(&lease.id).unwrap().state,
        LeaseState::Expired as i32
    );
    // Held until the agent reports the executor gone, then free.
    assert_eq!(b.free("n1").unwrap().cores, 2);
    let later = now.after(Duration::from_millis(2100));
    b.report("n1", ver(1, 3), &view("n1", 4, 0, 1000, 0), later)
        .unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 4);
}

#[test]
fn a_silent_node_goes_down_its_leases_revoked_and_comes_back_with_a_report() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 10), &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[0])).unwrap();
    // Heartbeat 1 s, miss limit 5: down at 5 s without a report.
    assert!(b.tick(now.after(Duration::from_millis(4999))).is_empty());
    let orders = b.tick(now.after(Duration::from_secs(5)));
    assert_eq!(b.health("n1"), Some(Health::Down));
    let l = b.lease(&lease.id).unwrap();
    assert_eq!(
        (l.state, l.end_reason.as_str()),
        (LeaseState::Revoked as i32, "node down")
    );
    assert!(matches!(&orders[0].msg, Msg::Destroy(d) if d.reason == "node down"));
    assert_eq!(b.free("n1").unwrap(), Resources::ZERO);
    assert!(b.place(&request(1, 10), &user(1), now).is_err());
    let later = now.after(Duration::from_secs(6));
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), later)
        .unwrap();
    assert_eq!(b.health("n1"), Some(Health::Up));
    assert_eq!(b.free("n1").unwrap().cores, 4);
}

#[test]
fn running_executors_are_adopted_after_a_restart() {
    let now = Now::current();
    let mut b = book("first-fit");
    let running = v1::ExecutorInfo {
        lease_id: "old-7".into(),
        uid: 1000,
        cpus: vec![2, 3],
        memory_mib: 300,
        gpus: vec![],
        address: "127.0.0.1:4000".into(),
        expires_unix_ms: now.unix_ms + 10_000,
        ..Default::default()
    };
    let orders = b.register(
        "n1",
        Duration::from_secs(1),
        std::slice::from_ref(&running),
        |uid| format!("name{uid}"),
        now,
    );
    assert!(orders.is_empty());
    let l = b.lease("old-7").unwrap().clone();
    assert_eq!(l.state, LeaseState::Active as i32);
    assert_eq!(
        (l.uid, l.user.as_str(), l.cpus.as_slice()),
        (1000, "name1000", &[2, 3][..])
    );
    assert_eq!(
        b.free("n1").unwrap(),
        Resources::ZERO,
        "nothing free before a report"
    );
    // The agent's report includes the executor in `function`: two cores idle, counted once.
    let mut v = view("n1", 4, 0, 1000, 0);
    v.cpus.function = [2, 3].into_iter().collect();
    v.cpus.idle = [0, 1].into_iter().collect();
    v.memory_mib.function = 300;
    v.memory_mib.idle = 700;
    b.report("n1", ver(1, 1), &v, now).unwrap();
    assert_eq!(b.free("n1").unwrap(), Resources::new(2, 700, 0));
    // The adopted lease keeps its expiry and its owner's rights.
    assert!(matches!(
        b.release("old-7", &user(1001)),
        Err(BookError::NotOwner { .. })
    ));
    b.report("n1", ver(1, 2), &v, now.after(Duration::from_secs(9)))
        .unwrap();
    b.tick(now.after(Duration::from_secs(10)));
    assert_eq!(b.lease("old-7").unwrap().state, LeaseState::Expired as i32);
}

#[test]
fn a_reregistering_agent_is_told_to_stop_executors_of_ended_leases() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 10), &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[0])).unwrap();
    b.release(&lease.id, &user(1)).unwrap();
    let info = v1::ExecutorInfo {
        lease_id: lease.id.clone(),
        uid: 1,
        cpus: vec![0],
        ..Default::default()
    };
    let orders = b.register(
        "n1",
        Duration::from_secs(1),
        &[info],
        |_| String::new(),
        now,
    );
    assert!(
        matches!(&orders[..], [o] if matches!(&o.msg, Msg::Destroy(d) if d.lease_id == lease.id))
    );
}

#[test]
fn a_late_ready_for_a_failed_lease_is_refused() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 10), &user(1), now).unwrap();
    assert!(
        b.end(&lease.id, EndCause::ExecutorFailed, "timed out")
            .is_some()
    );
    assert!(
        b.end(&lease.id, EndCause::ExecutorFailed, "again")
            .is_none()
    );
    assert!(matches!(
        b.executor_ready(&lease.id, &ready(&[0])),
        Err(BookError::NotPending { .. })
    ));
    assert_eq!(
        b.free("n1").unwrap().cores,
        3,
        "held until the agent reports"
    );
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), now)
        .unwrap();
    assert_eq!(b.free("n1").unwrap().cores, 4);
}

#[test]
fn only_the_most_recent_ended_leases_are_kept() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 8, 0, 1000, 0), now);
    let ids: Vec<String> = (0..5)
        .map(|_| b.place(&request(1, 1), &user(1), now).unwrap().0.id)
        .collect();
    for id in &ids {
        b.release(id, &user(1)).unwrap();
    }
    let kept: Vec<String> = b.leases().into_iter().map(|l| l.id).collect();
    assert_eq!(kept.len(), 3);
    assert!(!kept.contains(&ids[0]) && kept.contains(&ids[4]));
}

#[test]
fn an_idle_lease_ends_unless_invoked_or_renewed() {
    use crate::book::ReportExtras;
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let mut req = request(1, 10);
    req.idle_timeout_ms = 10_000;
    let (idle, _) = b.place(&req, &user(7), now).unwrap();
    b.executor_ready(&idle.id, &ready(&[1])).unwrap();
    let (used, _) = b.place(&req, &user(7), now).unwrap();
    b.executor_ready(&used.id, &ready(&[2])).unwrap();
    let (renewed, _) = b.place(&req, &user(7), now).unwrap();
    b.executor_ready(&renewed.id, &ready(&[3])).unwrap();
    // 8 s later: one lease was invoked (the agent says so), one renewed by its client.
    let later = now.after(Duration::from_secs(8));
    let orders = b.report_extras(
        "n1",
        ReportExtras {
            activity: vec![v1::LeaseActivity {
                lease_id: used.id.clone(),
                last_invocation_unix_ms: later.unix_ms,
            }],
            ..Default::default()
        },
        later,
    );
    assert!(orders.is_empty());
    assert!(matches!(
        b.renew(&renewed.id, &user(8), later),
        Err(BookError::NotOwner { .. })
    ));
    let l = b.renew(&renewed.id, &user(7), later).unwrap();
    assert_eq!(l.last_active_unix_ms, later.unix_ms);
    // The node keeps reporting (its heartbeat); then the idle lease's 10 s are over.
    let eleven = now.after(Duration::from_secs(11));
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), eleven)
        .unwrap();
    let orders = b.tick(eleven);
    let ended: Vec<&str> = orders
        .iter()
        .filter_map(|o| match &o.msg {
            Msg::Destroy(d) => Some(d.lease_id.as_str()),
            Msg::Create(_) => None,
        })
        .collect();
    let why: Vec<String> = orders.iter().map(|o| format!("{:?}", o.msg)).collect();
    assert_eq!(ended, [idle.id.as_str()], "{why:?}");
    let gone = b.lease(&idle.id).unwrap();
    assert_eq!(gone.state, LeaseState::Expired as i32);
    assert_eq!(gone.end_cause, EndCause::Idle as i32);
    assert!(
        gone.end_reason.contains("no invocation and no renewal"),
        "{}",
        gone.end_reason
    );
    for live in [&used.id, &renewed.id] {
        assert_eq!(b.lease(live).unwrap().state, LeaseState::Active as i32);
    }
}

#[test]
fn a_node_slurm_drains_revokes_its_leases_and_takes_none() {
    use crate::book::ReportExtras;
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 10), &user(7), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[1])).unwrap();
    let draining = ReportExtras {
        draining: true,
        ..Default::default()
    };
    let orders = b.report_extras("n1", draining.clone(), now);
    let [order] = orders.as_slice() else {
        panic!("{orders:?}")
    };
    let Msg::Destroy(d) = &order.msg else {
        panic!("{order:?}")
    };
    assert_eq!(
        (d.lease_id.as_str(), d.cause),
        (lease.id.as_str(), EndCause::NodeDrained as i32)
    );
    assert_eq!(
        b.lease(&lease.id).unwrap().state,
        LeaseState::Revoked as i32
    );
    assert_eq!(b.nodes()[0].state, "draining");
    assert_eq!(b.nodes()[0].revocations.get("node_drained"), Some(&1));
    // Every report while it drains keeps it closed to placement.
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), now)
        .unwrap();
    b.report_extras("n1", draining, now);
    assert!(matches!(
        b.place(&request(1, 10), &user(7), now),
        Err(BookError::Unschedulable { .. })
    ));
    // Undrained, it takes leases again.
    b.report("n1", ver(1, 3), &view("n1", 4, 0, 1000, 0), now)
        .unwrap();
    b.report_extras("n1", ReportExtras::default(), now);
    assert!(b.place(&request(1, 10), &user(7), now).is_ok());
    assert_eq!(b.nodes()[0].state, "up");
}

#[test]
fn a_node_whose_executors_hurt_a_job_takes_no_new_leases() {
    use crate::book::ReportExtras;
    let now = Now::current();
    let mut b = book("best-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let interfering = ReportExtras {
        interference: Some(v1::InterferenceState {
            level: v1::InterferenceLevel::Quota.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(
        b.report_extras("n1", interfering, now).is_empty(),
        "nothing revoked"
    );
    assert!(matches!(
        b.place(&request(1, 10), &user(7), now),
        Err(BookError::Unschedulable { .. })
    ));
    assert_eq!(
        b.nodes()[0]
            .interference
            .as_ref()
            .map(v1::InterferenceState::current_level),
        Some(v1::InterferenceLevel::Quota)
    );
    b.report("n1", ver(1, 2), &view("n1", 4, 0, 1000, 0), now)
        .unwrap();
    let calm = ReportExtras {
        interference: Some(v1::InterferenceState {
            level: v1::InterferenceLevel::None.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    b.report_extras("n1", calm, now);
    assert!(b.place(&request(1, 10), &user(7), now).is_ok());
}

#[test]
fn lease_ids_are_unpredictable() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 8, 0, 4000, 0), now);
    let suffix = |id: &str| id.rsplit('-').next().unwrap().to_owned();
    let (first, _) = b.place(&request(1, 0), &user(1000), now).unwrap();
    let (second, _) = b.place(&request(1, 0), &user(1000), now).unwrap();
    assert!(first.id.starts_with("t-1-"), "{}", first.id);
    assert!(second.id.starts_with("t-2-"), "{}", second.id);
    for id in [&first.id, &second.id] {
        let s = suffix(id);
        assert_eq!(s.len(), 16, "{id}");
        assert!(s.bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
    }
    assert_ne!(suffix(&first.id), suffix(&second.id));
}

#[test]
fn only_the_node_that_holds_a_lease_may_report_on_it() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    up(&mut b, "n2", &view("n2", 4, 0, 1000, 0), now);
    let (lease, order) = b.place(&request(1, 10), &user(1000), now).unwrap();
    assert_eq!(order.node, "n1");
    b.check_holder("n1", &lease.id).unwrap();
    assert_eq!(
        b.check_holder("n2", &lease.id),
        Err(BookError::NotHolder {
            lease: lease.id.clone(),
            node: "n2".into(),
            holder: "n1".into(),
        })
    );
    // A lease the book does not know is no one's.
    b.check_holder("n2", "no-such-lease").unwrap();
}

#[test]
fn an_adopted_lease_keeps_what_its_agent_kept_and_a_duplicate_of_a_request_is_ordered_away() {
    let now = Now::current();
    let mut b = book("first-fit");
    let secret = LeaseSecret::random().unwrap();
    let kept = v1::ExecutorInfo {
        lease_id: "old-1".into(),
        uid: 1000,
        gid: 2900,
        cpus: vec![0],
        memory_mib: 100,
        address: "127.0.0.1:4000".into(),
        expires_unix_ms: now.unix_ms + 60_000,
        secret: secret.as_bytes().to_vec(),
        idle_timeout_ms: 7_000,
        request_id: "req-a".into(),
        ..Default::default()
    };
    // The same request answered twice (the client's retry was placed anew while this node's
    // agent had not registered yet): the second executor is a duplicate.
    let duplicate = v1::ExecutorInfo {
        lease_id: "old-2".into(),
        cpus: vec![1],
        ..kept.clone()
    };
    // An agent from before secrets were kept: gid falls back to uid, no secret.
    let legacy = v1::ExecutorInfo {
        lease_id: "old-3".into(),
        uid: 1001,
        gid: 0,
        cpus: vec![2],
        secret: Vec::new(),
        idle_timeout_ms: 0,
        request_id: String::new(),
        ..kept.clone()
    };
    let orders = b.register(
        "n1",
        Duration::from_secs(1),
        &[kept, duplicate, legacy],
        |uid| format!("name{uid}"),
        now,
    );
    assert!(
        matches!(&orders[..], [o] if matches!(&o.msg, Msg::Destroy(d)
            if d.lease_id == "old-2" && d.reason.contains("duplicate of lease old-1"))),
        "{orders:?}"
    );
    assert!(b.lease("old-2").is_none());
    assert_eq!(
        b.secret("old-1").map(LeaseSecret::to_hex),
        Some(secret.to_hex())
    );
    assert_eq!(b.lease_gid("old-1"), Some(2900));
    assert_eq!(b.lease("old-1").unwrap().idle_timeout_ms, 7_000);
    assert_eq!(b.by_request(1000, "req-a").as_deref(), Some("old-1"));
    assert_eq!(
        b.by_request(1001, "req-a"),
        None,
        "request ids are per user"
    );
    assert_eq!(b.by_request(1000, ""), None, "an empty id is no id");
    assert!(b.secret("old-3").is_none());
    assert_eq!(b.lease_gid("old-3"), Some(1001));
    assert_eq!(
        b.lease("old-3").unwrap().idle_timeout_ms,
        limits().default_idle_timeout.as_millis() as u64
    );
    // Idle timeouts count from adoption, with the kept one: old-1 idles out after 7 s.
    b.tick(now.after(Duration::from_secs(8)));
    assert_eq!(b.lease("old-1").unwrap().state, LeaseState::Expired as i32);
    assert_eq!(
        b.by_request(1000, "req-a"),
        None,
        "an ended lease answers no retry"
    );
}

#[test]
fn a_placed_lease_carries_its_request_id_to_the_agent_and_answers_retries() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let req = v1::AcquireLeaseRequest {
        request_id: "r-1".into(),
        ..request(1, 10)
    };
    let (lease, order) = b.place(&req, &user(5), now).unwrap();
    assert!(matches!(&order.msg, Msg::Create(c) if c.request_id == "r-1"));
    assert_eq!(b.by_request(5, "r-1"), Some(lease.id.clone()));
    b.release(&lease.id, &user(5)).unwrap();
    assert_eq!(b.by_request(5, "r-1"), None);
}

#[test]
fn a_lost_destroy_is_sent_again_while_the_agent_still_lists_the_lease() {
    let now = Now::current();
    let mut b = book("first-fit");
    up(&mut b, "n1", &view("n1", 4, 0, 1000, 0), now);
    let (lease, _) = b.place(&request(1, 10), &user(1), now).unwrap();
    b.executor_ready(&lease.id, &ready(&[0])).unwrap();
    b.release(&lease.id, &user(1)).unwrap();
    let listing = |leases: &[&str]| ReportExtras {
        leases: leases.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let destroys = |orders: &[Order]| {
        orders
            .iter()
            .filter(|o| matches!(&o.msg, Msg::Destroy(d) if d.lease_id == lease.id))
            .count()
    };
    // First seen still running: the original order may be on its way.
    let o = b.report_extras("n1", listing(&[&lease.id]), now);
    assert_eq!(destroys(&o), 0);
    let o = b.report_extras(
        "n1",
        listing(&[&lease.id]),
        now.after(Duration::from_millis(500)),
    );
    assert_eq!(destroys(&o), 0);
    // Still there after DESTROY_RESEND_AFTER: sent again, and again after as long.
    let t = now.after(DESTROY_RESEND_AFTER);
    assert_eq!(
        destroys(&b.report_extras("n1", listing(&[&lease.id]), t)),
        1
    );
    let t2 = t.after(Duration::from_millis(100));
    assert_eq!(
        destroys(&b.report_extras("n1", listing(&[&lease.id]), t2)),
        0
    );
    let t3 = t.after(DESTROY_RESEND_AFTER);
    assert_eq!(
        destroys(&b.report_extras("n1", listing(&[&lease.id]), t3)),
        1
    );
    // Gone from the agent's list: forgotten; a live lease is never destroyed this way.
    let (live, _) = b.place(&request(1, 10), &user(1), now).unwrap();
    let t4 = t3.after(DESTROY_RESEND_AFTER * 3);
    let o = b.report_extras("n1", listing(&[&live.id]), t4);
    assert!(o.is_empty(), "{o:?}");
    let o = b.report_extras(
        "n1",
        listing(&[&live.id]),
        t4.after(DESTROY_RESEND_AFTER * 3),
    );
    assert!(o.is_empty(), "{o:?}");
}
