//! The lease tasks against recording fakes (cgroups in memory, processes in a table), with the
//! real ledger task over a ledger in a temp dir.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use harvest_core::step::{PluginMessage, StepAllocation, StepId};
use harvest_core::{CpuSet, NodeView};
use harvest_proto::v1::EndCause;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::launch::LOG_FILE;
use super::process::Signal;
use super::testing::{Behaviour, FakeCgroups, FakeProcesses};
use super::*;
use crate::agent::now_ms;
use crate::cgroup::GroupSpec;
use crate::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
use crate::lease::LeaseRequest;
use crate::ledger::Reserve;
use crate::ledger_task;
use crate::reclaim::ReclaimPolicy;
use crate::reclaimer::Reclaimer;
use crate::state::LedgerStore;
use crate::stats::{NodeStats, ReclaimOutcome};

struct Rig {
    state: tempfile::TempDir,
    cgroups: Arc<FakeCgroups>,
    procs: Arc<FakeProcesses>,
    ledger: LedgerHandle,
    exec: LeaseSupervisor,
    reclaimer: Reclaimer,
    stats: Arc<NodeStats>,
    events: mpsc::UnboundedReceiver<LeaseEvent>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// The lease's user: a non-root uid (4242) when the tests run as root (which may chown to it),
/// else the tests' own.
fn me() -> (u32, u32) {
    match rustix::process::getuid().as_raw() {
        0 => (4242, 4242),
        uid => (uid, rustix::process::getgid().as_raw()),
    }
}

/// The account database the rig's agent sees: the lease's user ([`me`], a login shell), another
/// user (its uid + 1, same group),
/// `daemon` (uid 1, a system account) and `nobody`.
#[derive(Debug)]
struct Users;

impl identity::Accounts for Users {
    fn by_uid(&self, uid: u32) -> Result<Option<identity::Account>, String> {
        let (me, group) = me();
        let account = |name: &str, gid: u32, shell: &str| identity::Account {
            name: name.into(),
            uid,
            gid,
            shell: shell.into(),
        };
        Ok(match uid {
            u if u == me => Some(account("me", group, "/bin/bash")),
            u if u == me + 1 => Some(account("other", group, "/bin/sh")),
            1 => Some(account("daemon", 1, "/usr/sbin/nologin")),
            65534 => Some(account("nobody", 65534, "/usr/sbin/nologin")),
            _ => None,
        })
    }
}

const CHECK: Duration = Duration::from_millis(20);

impl Rig {
    fn new() -> Self {
        let state = tempfile::tempdir().unwrap();
        Self::on(
            state,
            Arc::new(FakeCgroups::default()),
            Arc::new(FakeProcesses::default()),
        )
    }

    /// An agent (as if just started) over `state`, `cgroups` and `procs`.
    fn on(state: tempfile::TempDir, cgroups: Arc<FakeCgroups>, procs: Arc<FakeProcesses>) -> Self {
        Self::with_gpus(state, cgroups, procs, &FakeGpus::none(), |_| {})
    }

    /// As [`Rig::on`], with `gpus` (their units' settings made as harvestd makes them) and the
    /// lease settings changed by `tweak`.
    fn with_gpus(
        state: tempfile::TempDir,
        cgroups: Arc<FakeCgroups>,
        procs: Arc<FakeProcesses>,
        gpus: &FakeGpus,
        tweak: impl FnOnce(&mut LeaseSettings),
    ) -> Self {
        let hw = discover(&FakeTopology::uniform(1, 4, 1), &FakeMemory(8000), gpus).unwrap();
        let mut gpu_units: std::collections::BTreeMap<u32, crate::discover::GpuUnit> =
            hw.gpus.units().into_iter().map(|u| (u.id, u)).collect();
        if gpu_units.is_empty() {
            // No GPUs: GPU 1 by UUID for the CUDA_VISIBLE_DEVICES test, GPU 0 without one.
            gpu_units.insert(
                1,
                crate::discover::GpuUnit {
                    id: 1,
                    gpu: 1,
                    uuid: "GPU-uuid-1".to_owned(),
                    memory_total_mib: 0,
                    mig: None,
                },
            );
        }

        let store = LedgerStore::open(state.path(), "n1").unwrap();
        let agent = crate::agent::start(
            "n1",
            hw,
            Reserve {
                cores: 0,
                memory_mib: 1000,
            },
            &store,
            cgroups.as_ref(),
            Duration::from_secs(60),
            SystemTime::now(),
        )
        .unwrap();
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        let ledger = ledger_task::spawn(
            agent,
            Arc::new(store),
            ReclaimPolicy::default(),
            &tracker,
            cancel.clone(),
        );
        let parent = Arc::new(ParentGroup::new(
            cgroups.clone(),
            harvest_group("n1"),
            1,
            true,
        ));
        let (tx, events) = mpsc::unbounded_channel();
        let mut settings = LeaseSettings {
            node: "n1".into(),
            state_dir: state.path().to_path_buf(),
            executor_path: "/opt/harvest/bin/harvest-executor".into(),
            executor_bind: std::net::Ipv4Addr::new(127, 0, 0, 1).into(),
            executor_advertise: std::net::Ipv4Addr::new(127, 0, 0, 1).into(),
            identity: identity::IdentityPolicy {
                min_uid: me().0.min(identity::DEFAULT_MIN_EXECUTOR_UID),
                allow_root: false,
                accounts: Arc::new(Users),
            },
            start_timeout: Duration::from_secs(2),
            stop_grace: Duration::from_millis(100),
            cpu_weight: 1,
            check_interval: CHECK,
            pids_max: 64,
            dev_root: "/nonexistent-dev".into(),
            log_max_bytes: 1 << 20,
            mig_minors: "/nonexistent-mig-minors".into(),
            gpu_units,
            allow_unconfined_gpus: false,
            shared_cpus: harvest_core::CpuSet::parse_list("0-7").unwrap(),
        };
        tweak(&mut settings);
        let exec = LeaseSupervisor::new(
            settings,
            cgroups.clone(),
            procs.clone(),
            ledger.clone(),
            parent,
            tx,
            tracker.clone(),
            cancel.clone(),
        );
        let stats = Arc::new(NodeStats::default());
        let reclaimer = Reclaimer {
            leases: exec.clone(),
            timeout: Duration::from_millis(200),
            teardown_delay: Duration::ZERO,
            stats: stats.clone(),
        };
        Self {
            state,
            cgroups,
            procs,
            ledger,
            exec,
            reclaimer,
            stats,
            events,
            tracker,
            cancel,
        }
    }

    /// Stops every task as harvestd's shutdown does; executors keep running.
    async fn stop(self) -> (tempfile::TempDir, Arc<FakeCgroups>) {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .expect("every task ends at shutdown");
        (self.state, self.cgroups)
    }

    fn gpu_order(&self, id: &str, gpus: u32) -> CreateOrder {
        let mut order = self.order(id, 1, 100);
        order.request.gpus = gpus;
        order
    }

    fn order(&self, id: &str, cores: u32, memory_mib: u64) -> CreateOrder {
        let (uid, gid) = me();
        CreateOrder {
            request: LeaseRequest {
                id: id.into(),
                uid,
                gid,
                cores,
                memory_mib,
                gpus: 0,
                expires_unix_ms: 0,
                recovery: Default::default(),
                memory: None,
            },
            library: LibrarySource::Content(b"\x7fELF fake".to_vec()),
            options: ServeOptions {
                hot_window_us: -1,
                ..ServeOptions::default()
            },
            secret: launch::Secret(vec![0xab; launch::SECRET_BYTES]),
        }
    }

    /// A batch step starts on `cpus`; returns the reclaim plan's outcome.
    async fn batch_job(&self, cpus: &str) -> Option<ReclaimOutcome> {
        let msg = PluginMessage::StepStart(StepAllocation {
            job_id: 7,
            step_id: StepId::BATCH,
            uid: 1000,
            node: "n1".into(),
            cpus: CpuSet::parse_list(cpus).unwrap(),
            memory_mib: Some(500),
            gpus: vec![],
            harvest: true,
        });
        let (reply, plan) = self.ledger.plugin(msg, SystemTime::now()).await.unwrap();
        assert!(reply.error.is_none());
        self.reclaimer.run(plan, Instant::now()).await
    }

    async fn reclaim(&self) -> Option<ReclaimOutcome> {
        let plan = self.ledger.reclaim_plan().await.unwrap();
        self.reclaimer.run(plan, Instant::now()).await
    }

    fn view(&self) -> NodeView {
        self.ledger.snapshot().view.clone()
    }

    fn leases(&self) -> usize {
        self.ledger.snapshot().ledger.leases.len()
    }

    /// The next event, waiting for work done in the lease tasks.
    async fn next_event(&mut self) -> LeaseEvent {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the channel is open")
    }

    /// No event within a while.
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(CHECK * 5, self.events.recv())
            .await
            .is_err()
    }
}

fn set(list: &str) -> CpuSet {
    CpuSet::parse_list(list).unwrap()
}

#[tokio::test]
async fn cuda_visible_devices_names_gpus_by_uuid_where_there_is_one() {
    let rig = Rig::new();
    let s = &rig.exec.context().settings;
    // GPU 1 has a UUID in the rig's settings, GPU 0 (device files) has none.
    assert_eq!(s.cuda_visible_devices(&[0, 1]), "0,GPU-uuid-1");
    assert_eq!(s.cuda_visible_devices(&[1]), "GPU-uuid-1");
    assert_eq!(s.cuda_visible_devices(&[]), "");
}

/// On a host whose lease groups cannot confine devices (cgroup v2), a GPU lease is refused with
/// an error naming the key that allows it, before anything is made; a lease without GPUs still
/// starts. With the key set, the refusal is gone (here the next step fails: no device nodes).
#[tokio::test]
async fn gpu_leases_are_refused_where_devices_cannot_be_confined_unless_allowed() {
    let cgroups = Arc::new(FakeCgroups::default());
    *cgroups.devices_unconfined.lock().unwrap() = Some("cgroup v2 (test)".into());
    let mut rig = Rig::with_gpus(
        tempfile::tempdir().unwrap(),
        cgroups.clone(),
        Arc::new(FakeProcesses::default()),
        &FakeGpus::count(2),
        |_| {},
    );
    rig.exec.create(rig.gpu_order("G1", 1));
    let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
        panic!("a GPU lease started on an unconfined host")
    };
    assert!(
        reason.contains("allow_unconfined_gpus = true") && reason.contains("cgroup v2 (test)"),
        "{reason}"
    );
    assert!(rig.cgroups.spec(&lease_group("n1", "G1")).is_none());
    assert!(rig.procs.launches().is_empty());
    rig.exec.create(rig.order("C1", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    let (state, cgroups) = rig.stop().await;

    let mut rig = Rig::with_gpus(
        state,
        cgroups,
        Arc::new(FakeProcesses::default()),
        &FakeGpus::count(2),
        |s| s.allow_unconfined_gpus = true,
    );
    rig.exec.create(rig.gpu_order("G2", 1));
    let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
        panic!("the GPU lease started without its device node")
    };
    assert!(
        !reason.contains("allow_unconfined_gpus") && reason.contains("nvidia"),
        "{reason}"
    );
    rig.stop().await;
}

/// The check on a fake v2 tree (the real v2 backend over plain files): a GPU lease is refused,
/// naming the key; a lease without GPUs, or with the key set, is not.
#[test]
fn on_a_v2_tree_gpu_leases_are_refused_unless_allow_unconfined_gpus() {
    use super::task::refuse_unconfined_gpus;
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("cgroup.controllers"),
        "cpuset cpu memory pids\n",
    )
    .unwrap();
    let v2 = crate::cgroup::v2::V2::new(tree.path().to_path_buf());
    let err = refuse_unconfined_gpus(1, false, &v2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("asks for 1 GPU") && err.contains("allow_unconfined_gpus = true"),
        "{err}"
    );
    assert!(err.contains("BPF_CGROUP_DEVICE"), "v2's own reason: {err}");
    refuse_unconfined_gpus(0, false, &v2).unwrap();
    refuse_unconfined_gpus(2, true, &v2).unwrap();
    // Where devices are confined (v1, here the fake), nothing is refused.
    refuse_unconfined_gpus(1, false, &FakeCgroups::default()).unwrap();
}

/// A GPU in MIG mode lends its instances one by one: the lease gets an instance, its executor
/// `CUDA_VISIBLE_DEVICES=MIG-<uuid>`, and its devices cgroup the parent GPU's node and that
/// instance's access files only; the other instances stay idle.
#[tokio::test]
async fn a_mig_instance_is_lent_by_its_mig_uuid_with_its_own_access_files() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: mknod needs root");
        return;
    }
    let dev = tempfile::tempdir().unwrap();
    std::fs::create_dir(dev.path().join("nvidia-caps")).unwrap();
    let mknod = |name: &str, major, minor| {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dev.path().join(name),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    };
    mknod("nvidia0", 195, 0);
    mknod("nvidia1", 195, 1);
    for m in [11, 12, 21, 22, 31, 32] {
        mknod(&format!("nvidia-caps/nvidia-cap{m}"), 237, m);
    }
    let minors = dev.path().join("mig-minors");
    std::fs::write(
        &minors,
        "config 1\nmonitor 2\ngpu1/gi1/access 11\ngpu1/gi1/ci0/access 12\n\
         gpu1/gi2/access 21\ngpu1/gi2/ci0/access 22\ngpu1/gi3/access 31\ngpu1/gi3/ci0/access 32\n",
    )
    .unwrap();
    // GPU 0 whole (unit 0), GPU 1 in MIG mode with 3 instances (units 1-3, gi 1-3).
    let mut rig = Rig::with_gpus(
        tempfile::tempdir().unwrap(),
        Arc::new(FakeCgroups::default()),
        Arc::new(FakeProcesses::default()),
        &FakeGpus::with_mig(1, 3),
        |s| {
            s.dev_root = dev.path().to_path_buf();
            s.mig_minors = minors;
        },
    );
    assert_eq!(rig.view().gpus.idle, [0, 1, 2, 3]);
    // A batch step on the whole GPU 0: the lease gets an instance of GPU 1.
    let msg = PluginMessage::StepStart(StepAllocation {
        job_id: 8,
        step_id: StepId::BATCH,
        uid: 1000,
        node: "n1".into(),
        cpus: set("3"),
        memory_mib: Some(100),
        gpus: vec![0],
        harvest: true,
    });
    rig.ledger.plugin(msg, SystemTime::now()).await.unwrap();
    rig.exec.create(rig.gpu_order("M1", 1));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    let v = rig.view();
    assert_eq!(
        (
            v.gpus.batch.clone(),
            v.gpus.function.clone(),
            v.gpus.idle.clone()
        ),
        (vec![0], vec![1], vec![2, 3])
    );
    let launch = &rig.procs.launches()[0];
    let cuda = launch
        .env
        .iter()
        .find(|(k, _)| k == "CUDA_VISIBLE_DEVICES")
        .map(|(_, v)| v.as_str());
    assert_eq!(cuda, Some("MIG-fake-1-0"));
    let spec = rig.cgroups.spec(&lease_group("n1", "M1")).unwrap();
    let devices: Vec<String> = spec.devices.unwrap()[crate::cgroup::devices::BASIC.len()..]
        .iter()
        .map(|r| r.to_v1())
        .collect();
    // GPU 1's node and instance gi1's two access files; not GPU 0, not gi2's or gi3's.
    assert_eq!(devices, ["c 195:1 rw", "c 237:11 rw", "c 237:12 rw"]);
    rig.stop().await;
}

#[tokio::test]
async fn a_lease_gets_idle_cpus_its_own_cgroup_and_an_executor_as_its_user() {
    let mut rig = Rig::new();
    rig.batch_job("1").await;
    rig.exec.create(rig.order("L1", 2, 500));
    let LeaseEvent::Ready(info) = rig.next_event().await else {
        panic!("not ready")
    };
    assert_eq!(info.lease_id, "L1");
    assert_eq!(
        info.cpus,
        set("0,2"),
        "idle CPUs only, never the batch job's CPU 1"
    );
    assert_eq!(info.address, "127.0.0.1:41000");
    // The view shows the lease as function resources and idle shrinks.
    let v = rig.view();
    assert_eq!(v.cpus.function, set("0,2"));
    assert_eq!(v.cpus.idle, set("3"));
    assert_eq!(v.memory_mib.function, 500);
    assert_eq!(v.memory_mib.idle, 8000 - 500 - 1000 - 500);
    // The cgroup: cpuset = the chosen CPUs, memory limit = the lease, lowest weight.
    let group = lease_group("n1", "L1");
    assert_eq!(group, Path::new("harvest_n1/lease_L1"));
    let spec = rig.cgroups.spec(&group).unwrap();
    assert_eq!(spec.cpus, Some(set("0,2")));
    assert_eq!(spec.memory_limit_bytes, Some(500 << 20));
    assert_eq!(spec.cpu_weight, Some(1));
    // The pids limit as configured, no swap, and only the basic devices (no GPU is lent).
    assert_eq!(spec.pids_max, Some(64));
    assert!(spec.no_swap);
    assert_eq!(spec.devices.as_deref(), Some(crate::cgroup::devices::BASIC));
    // The process: the configured executor, as the lease's user, joining the group's procs.
    let launch = &rig.procs.launches()[0];
    let (uid, gid) = me();
    assert_eq!((launch.uid, launch.gid), (uid, gid));
    assert_eq!(
        launch.program,
        Path::new("/opt/harvest/bin/harvest-executor")
    );
    assert_eq!(
        launch.procs_files,
        [Path::new("/fake/cpuset/harvest_n1/lease_L1/cgroup.procs")]
    );
    let args: Vec<String> = launch
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let dir = rig.state.path().join("leases/L1");
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(
        after("--lib"),
        dir.join("functions.so").display().to_string()
    );
    assert_eq!(
        after("--oom-events"),
        "/fake/memory/harvest_n1/lease_L1/memory.oom_control"
    );
    assert_eq!(after("--hot"), "always");
    assert_eq!(after("--listen"), "127.0.0.1:0");
    // The secret goes in the environment (never on the command line, which every user can
    // read in /proc).
    assert!(
        launch
            .env
            .contains(&(launch::SECRET_ENV.to_owned(), "ab".repeat(32))),
        "{:?}",
        launch.env
    );
    assert!(!args.iter().any(|a| a.contains("abab")), "{args:?}");
    assert_eq!(
        std::fs::read(dir.join("functions.so")).unwrap(),
        b"\x7fELF fake"
    );
    // The reservation was saved before the executor started; reported for Register.
    let saved = LedgerStore::open(rig.state.path(), "n1")
        .unwrap()
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(saved.leases["L1"].cpus, set("0,2"));
    assert_eq!(rig.exec.running(), std::slice::from_ref(&info));
    // The same order again (a scheduler that re-sent it) is answered with the same executor.
    rig.exec.create(rig.order("L1", 2, 500));
    assert_eq!(rig.next_event().await, LeaseEvent::Ready(info));
    assert_eq!(rig.procs.launches().len(), 1);
    // Another user's order for that id is refused.
    let mut other = rig.order("L1", 1, 100);
    other.request.uid += 1;
    rig.exec.create(other);
    let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
        panic!()
    };
    assert_eq!(reason, "lease L1 already exists on this node");
}

#[tokio::test]
async fn a_memory_lease_shares_every_cpu_capped_and_serves_its_region_without_a_library() {
    let mut rig = Rig::new();
    // A job on every CPU: nothing is idle, and a memory lease still starts beside it.
    rig.batch_job("0-7").await;
    let spec = harvest_core::region::MemorySpec::new(256, 200).unwrap();
    let mut order = rig.order("M1", 0, spec.held_mib());
    order.request.memory = Some(spec);
    order.library = LibrarySource::Content(Vec::new());
    rig.exec.create(order);
    let LeaseEvent::Ready(info) = rig.next_event().await else {
        panic!("not ready")
    };
    assert!(info.cpus.is_empty(), "holds no CPU: {}", info.cpus);
    assert_eq!(info.memory, Some(spec));
    let v = rig.view();
    assert_eq!(v.memory_mib.function, spec.held_mib());
    assert!(v.cpus.function.is_empty());
    let group = lease_group("n1", "M1");
    let cg = rig.cgroups.spec(&group).unwrap();
    // Every CPU, at the lowest weight, capped at 200 thousandths of one CPU.
    assert_eq!(cg.cpus, Some(set("0-7")));
    assert_eq!(cg.cpu_weight, Some(super::task::MEMORY_LEASE_CPU_WEIGHT));
    assert_eq!(cg.memory_limit_bytes, Some(spec.held_mib() << 20));
    let quota = rig.cgroups.quotas.lock().unwrap().get(&group).copied();
    assert_eq!(quota.flatten().map(|q| q.quota_us), Some(20_000));
    let launch = &rig.procs.launches()[0];
    let args: Vec<String> = launch
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(after("--region"), (256u64 << 20).to_string());
    assert!(!args.contains(&"--lib".to_string()), "{args:?}");
    assert!(!rig.state.path().join("leases/M1/functions.so").exists());
    // An interference quota level is a percent of the cap, and level none restores the cap
    // (it never lifts it).
    for (quota_pct, want_us) in [(Some(50), 10_000), (None, 20_000)] {
        let to = LeaseControl {
            weight: 1,
            quota_pct,
            frozen: false,
        };
        rig.exec
            .try_send("M1", LeaseMessage::Control(Control::Set { from: None, to }))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let q = rig.cgroups.quotas.lock().unwrap().get(&group).copied();
            if q.flatten().map(|q| q.quota_us) == Some(want_us) {
                break;
            }
            assert!(Instant::now() < deadline, "quota never {want_us}: {q:?}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test]
async fn refused_leases_say_why_and_hold_nothing() {
    let mut rig = Rig::new();
    let mut root = rig.order("R", 1, 100);
    root.request.uid = 0;
    rig.exec.create(root);
    let LeaseEvent::Failed { lease_id, reason } = rig.next_event().await else {
        panic!()
    };
    assert_eq!(lease_id, "R");
    assert!(
        reason.contains("uid 0") && reason.contains("allow_root_executors"),
        "{reason}"
    );
    // Not the user's primary group, a system account, an unknown user: refused, nothing runs.
    for (id, uid, gid, says) in [
        ("G", me().0, me().1 + 1, "not the primary group"),
        ("Sys", 1, 1, "min_executor_uid"),
        ("Nobody", 65534, 65534, "system account"),
        (
            "Who",
            3_999_999_999,
            3_999_999_999,
            "not a user on this node",
        ),
    ] {
        let mut order = rig.order(id, 1, 100);
        (order.request.uid, order.request.gid) = (uid, gid);
        rig.exec.create(order);
        let LeaseEvent::Failed { lease_id, reason } = rig.next_event().await else {
            panic!()
        };
        assert_eq!(lease_id, id);
        assert!(reason.contains(says), "{id}: {reason}");
    }
    rig.exec.create(rig.order("Big", 5, 100));
    let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
        panic!()
    };
    assert_eq!(reason, "lease Big: 5 CPUs wanted, only 4 idle (0-3)");
    rig.exec.create(rig.order("../x", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Failed { .. }));
    assert!(rig.procs.launches().is_empty());
    assert!(rig.view().cpus.function.is_empty());
    assert_eq!(rig.leases(), 0);
}

#[tokio::test]
async fn destroy_stops_the_executor_and_frees_everything() {
    let mut rig = Rig::new();
    rig.exec.create(rig.order("L1", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    rig.exec
        .destroy("L1", "released by its user", EndCause::Released)
        .await;
    assert_eq!(
        rig.next_event().await,
        LeaseEvent::Exited {
            lease_id: "L1".into(),
            reason: "released by its user".into(),
            cause: EndCause::Released,
        }
    );
    assert_eq!(rig.procs.signals(), [(1000, Signal::Term)]);
    assert!(rig.procs.running().is_empty());
    let group = lease_group("n1", "L1");
    assert_eq!(
        *rig.cgroups.killed.lock().unwrap(),
        std::slice::from_ref(&group)
    );
    assert!(!rig.cgroups.exists(&group));
    assert!(!rig.state.path().join("leases/L1").exists());
    assert_eq!(rig.view().cpus.idle, set("0-3"));
    assert_eq!(rig.view().memory_mib.function, 0);
    // The executor's exit came too, but the lease was already ending: one event only.
    assert!(rig.quiet().await);
    // An unknown lease is answered, so the scheduler can forget it.
    rig.exec.destroy("nope", "", EndCause::Released).await;
    let LeaseEvent::Exited { reason, .. } = rig.next_event().await else {
        panic!()
    };
    assert!(reason.contains("no lease nope"), "{reason}");
}

#[tokio::test]
async fn an_executor_that_ignores_sigterm_is_killed_after_the_grace() {
    let mut rig = Rig::new();
    rig.procs.set_behaviour(Behaviour::IgnoresTerm);
    rig.exec.create(rig.order("L1", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    assert!(rig.exec.end("L1", "bye".into(), EndCause::Released).await);
    assert_eq!(
        rig.procs.signals(),
        [(1000, Signal::Term), (1000, Signal::Kill)]
    );
    assert!(rig.procs.running().is_empty());
    // Ending it again is answered: it is gone.
    assert!(!rig.exec.end("L1", "again".into(), EndCause::Released).await);
}

#[tokio::test]
async fn an_order_without_a_full_secret_starts_nothing() {
    let mut rig = Rig::new();
    for secret in [Vec::new(), vec![1; 31]] {
        let mut order = rig.order("L1", 1, 100);
        order.secret = launch::Secret(secret.clone());
        rig.exec.create(order);
        let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
            panic!()
        };
        assert!(
            reason.contains(&format!("secret of {} bytes", secret.len())),
            "{reason}"
        );
        assert!(rig.procs.launches().is_empty());
        assert!(!rig.cgroups.exists(&lease_group("n1", "L1")));
        assert!(!rig.state.path().join("leases/L1").exists());
        assert_eq!(rig.leases(), 0);
    }
}

#[tokio::test]
async fn a_crashed_executor_is_reported_and_its_lease_freed() {
    let mut rig = Rig::new();
    rig.exec.create(rig.order("L1", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    rig.procs.exit(1000, "killed by signal 11");
    assert_eq!(
        rig.next_event().await,
        LeaseEvent::Exited {
            lease_id: "L1".into(),
            reason: "executor exited (killed by signal 11)".into(),
            cause: EndCause::ExecutorFailed,
        }
    );
    assert_eq!(rig.leases(), 0);
    assert!(!rig.cgroups.exists(&lease_group("n1", "L1")));
}

#[tokio::test]
async fn an_executor_that_never_gets_ready_fails_the_lease_with_its_log() {
    let mut rig = Rig::new();
    rig.procs.set_behaviour(Behaviour::NeverReady);
    let dir = rig.state.path().join("leases/L1");
    rig.exec.create(rig.order("L1", 1, 100));
    let LeaseEvent::Failed { reason, .. } = rig.next_event().await else {
        panic!()
    };
    assert!(
        reason.contains("did not become ready within 2s"),
        "{reason}"
    );
    // Root created the log before the start; the fake writes nothing to it.
    assert!(reason.contains("its log: (empty)"), "{reason}");
    assert!(rig.procs.running().is_empty());
    assert!(!dir.exists());
    assert_eq!(rig.leases(), 0);
}

#[tokio::test]
async fn expired_leases_and_vanished_executors_end_by_themselves() {
    let mut rig = Rig::new();
    let mut order = rig.order("old", 1, 100);
    order.request.expires_unix_ms = i64::try_from(now_ms(SystemTime::now())).unwrap() + 2000;
    rig.exec.create(order);
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    rig.exec.create(rig.order("gone", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    // A process that vanishes (the fake drops its exit too; a re-adopted one, whose exit
    // nobody waits on, is caught by its pid check: see the restart test).
    rig.procs.vanish(1001);
    let mut got = vec![rig.next_event().await, rig.next_event().await];
    got.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(
        got,
        [
            LeaseEvent::Exited {
                lease_id: "gone".into(),
                reason: "executor exited (forgotten)".into(),
                cause: EndCause::ExecutorFailed,
            },
            LeaseEvent::Exited {
                lease_id: "old".into(),
                reason: "the lease expired".into(),
                cause: EndCause::Expired,
            },
        ]
    );
    assert_eq!(rig.leases(), 0);
}

#[tokio::test]
async fn after_a_restart_live_executors_are_re_adopted_and_the_rest_cleaned_up() {
    let mut rig = Rig::new();
    // One after the other, so "alive" gets pid 1000 and "dead" 1001.
    rig.exec.create(rig.order("alive", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    rig.exec.create(rig.order("dead", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    // A group no lease owns, e.g. left by a crash between mkdir and the ledger save.
    rig.cgroups
        .create(&lease_group("n1", "stray"), &GroupSpec::default())
        .unwrap();
    // A populated group no lease owns: another agent's, by misconfiguration. Never killed.
    let foreign = lease_group("n1", "foreign");
    rig.cgroups.create(&foreign, &GroupSpec::default()).unwrap();
    rig.cgroups.populated.lock().unwrap().push(foreign.clone());
    let (state, cgroups) = rig.stop().await;
    // The new agent's process table: "alive" (pid 1000) still runs, "dead" (1001) does not.
    let procs = Arc::new(FakeProcesses::default());
    procs.adopt_running(1000, 10_000);
    let mut rig = Rig::on(state, cgroups, procs);
    rig.exec.adopt().await;
    let running = rig.exec.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].lease_id, "alive");
    // It had been ready (the ledger kept its address), so it exited rather than failed.
    let LeaseEvent::Exited {
        lease_id,
        reason,
        cause: EndCause::ExecutorFailed,
    } = rig.next_event().await
    else {
        panic!()
    };
    assert_eq!(lease_id, "dead");
    assert!(reason.contains("harvestd restarted"), "{reason}");
    assert!(!rig.cgroups.exists(&lease_group("n1", "stray")));
    assert!(rig.cgroups.exists(&foreign));
    assert!(!rig.cgroups.killed.lock().unwrap().contains(&foreign));
    assert!(!rig.cgroups.exists(&lease_group("n1", "dead")));
    assert!(rig.cgroups.exists(&lease_group("n1", "alive")));
    // The parent of every lease group competes with batch tasks at the lease weight.
    let parent = rig.cgroups.spec(&harvest_group("n1")).unwrap();
    assert_eq!(parent.cpu_weight, Some(1));
    assert_eq!(
        rig.cgroups.idle.lock().unwrap().get(&harvest_group("n1")),
        Some(&true)
    );
    assert_eq!(rig.view().cpus.function.len(), 1);
    // The adopted executor is watched by its task: when it dies its lease ends.
    rig.procs.vanish(1000);
    assert!(
        matches!(rig.next_event().await, LeaseEvent::Exited { ref lease_id, .. } if lease_id == "alive")
    );
}

#[tokio::test]
async fn a_batch_job_on_a_leased_cpu_moves_the_lease_to_an_idle_one() {
    let mut rig = Rig::new();
    rig.exec.create(rig.order("L1", 1, 100));
    let LeaseEvent::Ready(first) = rig.next_event().await else {
        panic!()
    };
    rig.exec.create(rig.order("L2", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    assert!(rig.reclaim().await.is_none(), "nothing collides yet");
    // A job starts on L1's CPU (Slurm does not know about leases): the job wins, and with
    // CPUs still idle L1 moves instead of dying.
    let outcome = rig.batch_job(&first.cpus.to_list()).await.unwrap();
    assert_eq!(
        (outcome.moved, outcome.evicted, outcome.overrun),
        (1, 0, false)
    );
    let LeaseEvent::Moved(moved) = rig.next_event().await else {
        panic!("expected a move")
    };
    assert_eq!(moved.lease_id, "L1");
    assert!(moved.cpus.is_disjoint(&first.cpus), "{}", moved.cpus);
    let spec = rig.cgroups.spec(&lease_group("n1", "L1")).unwrap();
    assert_eq!(spec.cpus.as_ref(), Some(&moved.cpus), "the cgroup follows");
    assert!(rig.quiet().await, "L2 is untouched");
    let v = rig.view();
    assert!(v.cpus.function.is_disjoint(&v.cpus.batch));
    assert_eq!(v.cpus.function.len(), 2);
    assert_eq!(rig.stats.counters().reclaim_moves, 1);
}

#[tokio::test]
async fn a_job_taking_every_cpu_evicts_the_executors_before_reclaim_returns() {
    let mut rig = Rig::new();
    rig.exec.adopt().await; // as at harvestd's start: the parent is SCHED_IDLE at weight 1
    rig.exec.create(rig.order("L1", 1, 100));
    rig.exec.create(rig.order("L2", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    let outcome = rig.batch_job("0-3").await.unwrap();
    assert_eq!(
        (outcome.moved, outcome.evicted, outcome.overrun),
        (0, 2, false)
    );
    // Both groups were frozen and killed before reclaim returned.
    let killed = rig.cgroups.killed.lock().unwrap().clone();
    assert!(killed.contains(&lease_group("n1", "L1")), "{killed:?}");
    assert!(killed.contains(&lease_group("n1", "L2")), "{killed:?}");
    // The leases then end, revoked for the job, and the executor's exit is not a crash.
    let mut got = [rig.next_event().await, rig.next_event().await];
    got.sort_by_key(|e| format!("{e:?}"));
    for (e, id) in got.iter().zip(["L1", "L2"]) {
        assert_eq!(
            *e,
            LeaseEvent::Exited {
                lease_id: id.into(),
                reason: "reclaimed by job 7".into(),
                cause: EndCause::Reclaimed,
            }
        );
    }
    assert!(rig.view().cpus.function.is_empty());
    // A second step start sees nothing left to reclaim: no second count.
    assert!(rig.reclaim().await.is_none());
    let c = rig.stats.counters();
    assert_eq!(
        (c.reclaims, c.reclaim_evictions, c.reclaim_overruns),
        (1, 2, 0)
    );
    // The parent's boost for the killed tasks' exit is undone.
    let parent = rig.cgroups.spec(&harvest_group("n1")).unwrap();
    assert_eq!(parent.cpu_weight, Some(1));
    assert_eq!(
        rig.cgroups.idle.lock().unwrap().get(&harvest_group("n1")),
        Some(&true)
    );
}

#[tokio::test]
async fn an_eviction_is_served_while_the_lease_waits_for_a_slow_start() {
    // The executor never gets ready: the lease task waits for its ready file. An eviction
    // meanwhile kills it at once, without waiting for the start timeout.
    let mut rig = Rig::new();
    rig.procs.set_behaviour(Behaviour::NeverReady);
    rig.exec.create(rig.order("L1", 1, 100));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.procs.running().is_empty() {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let t0 = Instant::now();
    let outcome = rig.batch_job("0-3").await.unwrap();
    assert_eq!((outcome.evicted, outcome.overrun), (1, false));
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // A start cut short by a batch job is a revocation, not a failed executor.
    let LeaseEvent::Exited { cause, .. } = rig.next_event().await else {
        panic!()
    };
    assert_eq!(cause, EndCause::Reclaimed);
    assert_eq!(rig.leases(), 0);
}

#[tokio::test]
async fn an_executor_that_will_not_die_is_an_overrun_and_the_step_goes_on() {
    let mut rig = Rig::new();
    rig.exec.create(rig.order("L1", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    // Its group keeps a process whatever is killed.
    rig.cgroups
        .populated
        .lock()
        .unwrap()
        .push(lease_group("n1", "L1"));
    let started = Instant::now();
    let outcome = rig.batch_job("0-3").await.unwrap();
    assert!(outcome.overrun);
    // Bounded by reclaim_timeout (200 ms in the rig), not by the executor.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(rig.stats.counters().reclaim_overruns, 1);
}

#[tokio::test]
async fn an_executor_that_dies_before_it_is_ready_fails_with_its_log() {
    let mut rig = Rig::new();
    rig.procs.set_behaviour(Behaviour::NeverReady);
    rig.exec.create(rig.order("L1", 1, 100));
    let log = rig.state.path().join("leases/L1").join(LOG_FILE);
    // Wait until it runs, then let it die the way a failed exec-lease does.
    let deadline = Instant::now() + Duration::from_secs(5);
    while rig.procs.running().is_empty() {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let said = "harvestd exec-lease: joining the lease cgroup: No space left on device\n";
    rig.procs.write_output(1000, said.as_bytes());
    // The log holds it (through the drain) before the exit: poll for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&log).unwrap_or_default() != said {
        assert!(
            Instant::now() < deadline,
            "the output never reached {}",
            log.display()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    rig.procs.exit(1000, "exit status 127");
    let event = rig.next_event().await;
    let LeaseEvent::Failed { reason, .. } = event else {
        panic!("{event:?}")
    };
    assert!(
        reason.starts_with("executor exited (exit status 127) before it was ready"),
        "{reason}"
    );
    assert!(reason.contains("No space left on device"), "{reason}");
    assert_eq!(rig.leases(), 0);
}

#[tokio::test]
async fn interference_controls_reach_the_lease_group_through_its_task() {
    let mut rig = Rig::new();
    rig.exec.create(rig.order("L1", 2, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    let group = lease_group("n1", "L1");
    let quota_us = |rig: &Rig| {
        let quotas = rig.cgroups.quotas.lock().unwrap();
        quotas.get(&group).copied().flatten().map(|q| q.quota_us)
    };
    let send = |rig: &Rig, c: Control| rig.exec.try_send("L1", LeaseMessage::Control(c)).unwrap();
    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "never {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let quarter = LeaseControl {
        weight: 1,
        quota_pct: Some(25),
        frozen: false,
    };
    send(
        &rig,
        Control::Set {
            from: None,
            to: quarter,
        },
    );
    // 25% of 2 CPUs.
    until("capped", || quota_us(&rig) == Some(50_000)).await;
    // A probe pauses by quota, never by the freezer: if the agent stops before the pause ends,
    // the executor still runs (1 ms every 100 ms) and answers.
    send(&rig, Control::ProbePause);
    until("paused", || quota_us(&rig) == Some(1000)).await;
    assert!(!rig.cgroups.frozen.lock().unwrap().contains(&group));
    send(&rig, Control::ProbeResume);
    until("resumed to the level's cap", || {
        quota_us(&rig) == Some(50_000)
    })
    .await;
    // The freeze level freezes, and the eviction's thaw thaws.
    let frozen = LeaseControl {
        frozen: true,
        ..quarter
    };
    send(
        &rig,
        Control::Set {
            from: Some(quarter),
            to: frozen,
        },
    );
    until("frozen", || {
        rig.cgroups.frozen.lock().unwrap().contains(&group)
    })
    .await;
    send(&rig, Control::Thaw);
    until("thawed", || {
        !rig.cgroups.frozen.lock().unwrap().contains(&group)
    })
    .await;
    // With no level set since it started, a pause ends uncapped (a function lease).
    rig.exec.create(rig.order("L2", 1, 100));
    assert!(matches!(rig.next_event().await, LeaseEvent::Ready(_)));
    let g2 = lease_group("n1", "L2");
    rig.exec
        .try_send("L2", LeaseMessage::Control(Control::ProbePause))
        .unwrap();
    let q2 = |rig: &Rig| rig.cgroups.quotas.lock().unwrap().get(&g2).copied();
    until("L2 paused", || q2(&rig).flatten().is_some()).await;
    rig.exec
        .try_send("L2", LeaseMessage::Control(Control::ProbeResume))
        .unwrap();
    until("L2 uncapped", || q2(&rig) == Some(None)).await;
    assert_eq!(
        rig.exec
            .try_send("nope", LeaseMessage::Control(Control::Thaw)),
        Err(SendError::Unknown("nope".into()))
    );
}

#[test]
fn activity_files_give_the_latest_invocation_count_and_durations() {
    let a = Activity::parse("L".into(), "1700000000123 5 3000000 1 3 1 0 0 0 0 0\n").unwrap();
    assert_eq!(
        (a.last_ms, a.invocations, a.duration_sum_ns, a.buckets.len()),
        (1_700_000_000_123, 5, 3_000_000, 8)
    );
    // A time alone (an executor that has not finished an invocation yet) is still activity.
    let a = Activity::parse("L".into(), "1700000000123\n").unwrap();
    assert_eq!(
        (a.last_ms, a.invocations, a.buckets.len()),
        (1_700_000_000_123, 0, 0)
    );
    assert_eq!(Activity::parse("L".into(), "garbage"), None);
}

#[tokio::test]
async fn a_ready_line_that_is_not_an_address_fails_the_start_without_echoing_it() {
    for line in [
        "root:$6$secret:19000:0:99999:7:::\n",
        "\0\0\0\0\0\0\0\0\n",
        "127.0.0.1\n",
    ] {
        let mut rig = Rig::new();
        rig.procs.set_behaviour(Behaviour::ReadyLine(line));
        rig.exec.create(rig.order("L1", 1, 100));
        let event = rig.next_event().await;
        let LeaseEvent::Failed { reason, .. } = event else {
            panic!("{event:?}")
        };
        assert!(reason.contains("not an IP address and port"), "{reason}");
        assert!(!reason.contains("secret"), "{reason}");
        assert!(rig.exec.running().is_empty());
        assert_eq!(rig.leases(), 0);
    }
}

#[tokio::test]
async fn an_endless_ready_line_is_cut_at_the_bound() {
    let mut rig = Rig::new();
    let long: &'static str = Box::leak("9".repeat(task::READY_LINE_MAX * 4).into_boxed_str());
    rig.procs.set_behaviour(Behaviour::ReadyLine(long));
    rig.exec.create(rig.order("L1", 1, 100));
    let event = rig.next_event().await;
    let LeaseEvent::Failed { reason, .. } = event else {
        panic!("{event:?}")
    };
    assert!(reason.contains("longer than"), "{reason}");
}

#[test]
fn ready_lines_are_socket_addresses_only() {
    use task::{ReadyError, parse_ready_line};
    assert_eq!(
        parse_ready_line(b" 127.0.0.1:4000 ").unwrap(),
        "127.0.0.1:4000".parse().unwrap()
    );
    assert_eq!(
        parse_ready_line(b"[::1]:80").unwrap(),
        "[::1]:80".parse().unwrap()
    );
    for bad in [&b"localhost:80"[..], b"", b"1.2.3.4", b"\xff\xfe"] {
        assert!(
            matches!(parse_ready_line(bad), Err(ReadyError::NotAnAddress(_))),
            "{bad:?}"
        );
    }
}

/// Executors bind `executor_bind` (here 127.0.0.2) and clients are given the advertised address
/// (127.0.0.3) with the port the executor bound.
#[tokio::test]
async fn clients_are_given_the_advertised_address_not_the_bound_one() {
    let mut rig = Rig::with_gpus(
        tempfile::tempdir().unwrap(),
        Arc::new(FakeCgroups::default()),
        Arc::new(FakeProcesses::default()),
        &FakeGpus::none(),
        |s| {
            s.executor_bind = std::net::Ipv4Addr::new(127, 0, 0, 2).into();
            s.executor_advertise = std::net::Ipv4Addr::new(127, 0, 0, 3).into();
        },
    );
    rig.exec.create(rig.order("A1", 1, 100));
    let LeaseEvent::Ready(info) = rig.next_event().await else {
        panic!("not ready")
    };
    let args = &rig.procs.launches()[0].args;
    let listen = args.iter().position(|a| a == "--listen").unwrap();
    assert_eq!(args[listen + 1], "127.0.0.2:0", "{args:?}");
    assert_eq!(info.address, "127.0.0.3:41000");
    rig.stop().await;
}
