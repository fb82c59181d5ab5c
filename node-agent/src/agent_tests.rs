use std::time::{Duration, SystemTime};

use harvest_core::CpuSet;
use harvest_core::step::{PluginMessage, StepAllocation, StepId};

use super::*;
use crate::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
use crate::ledger::Reserve;
use crate::scontrol::FakeJobDetails;
use crate::slurm::testing::FakeTree;
use crate::state::LedgerStore;

const GRACE: Duration = Duration::from_secs(10);

fn hw() -> Hardware {
    discover(
        &FakeTopology::uniform(1, 4, 1),
        &FakeMemory(8000),
        &FakeGpus::none(),
    )
    .unwrap()
}

fn reserve() -> Reserve {
    Reserve {
        cores: 0,
        memory_mib: 1000,
    }
}

fn start(tree: &FakeTree, state: &std::path::Path, t: SystemTime) -> NodeAgent {
    super::start(
        "n1",
        hw(),
        reserve(),
        &LedgerStore::open(state, "n1").unwrap(),
        &tree.v1,
        GRACE,
        t,
    )
    .unwrap()
}

/// What the saver does after a change (the ledger task's, off the hot path).
fn save(a: &NodeAgent, state: &std::path::Path) {
    LedgerStore::open(state, "n1")
        .unwrap()
        .save(a.ledger())
        .unwrap();
}

fn tree_of(tree: &FakeTree) -> Vec<crate::slurm::JobCgroup> {
    read_tree(&tree.v1, "n1").unwrap()
}

fn step_start(job: u32, cpus: &str, mem: u64, harvest: bool) -> PluginMessage {
    PluginMessage::StepStart(StepAllocation {
        job_id: job,
        step_id: StepId::BATCH,
        uid: 1000,
        node: "n1".into(),
        cpus: CpuSet::parse_list(cpus).unwrap(),
        memory_mib: Some(mem),
        gpus: vec![],
        harvest,
    })
}

#[test]
fn a_restart_without_shutdown_keeps_every_job_and_its_harvest_choice() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    let t0 = SystemTime::now();
    tree.add_job("n1", 1000, 7, "1", Some(500));
    let mut a = start(&tree, state.path(), t0);
    assert!(a.handle(&step_start(7, "1", 500, false), t0).0.ok);
    save(&a, state.path());
    let before = a.view();
    assert!(before.cpus.idle.is_empty(), "harvest=off: {before:?}");
    // No shutdown, no final save: as after SIGKILL.
    drop(a);
    let b = start(&tree, state.path(), t0 + Duration::from_secs(1));
    assert_eq!(b.view(), before);
    assert!(!b.ledger().jobs[&7].harvest);
}

#[test]
fn start_up_adds_jobs_found_in_the_tree_and_drops_jobs_that_ended_meanwhile() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    let t0 = SystemTime::now();
    tree.add_job("n1", 1000, 7, "1", Some(500));
    let mut a = start(&tree, state.path(), t0);
    a.handle(&step_start(7, "1", 500, true), t0);
    save(&a, state.path());
    drop(a);

    // While the agent was down job 7 ended (its JobEnd was lost) and job 8 started.
    tree.remove_job("n1", 1000, 7);
    tree.add_job("n1", 0, 8, "2-3", Some(300));
    let b = start(&tree, state.path(), t0 + Duration::from_secs(2));
    let v = b.view();
    assert_eq!(v.cpus.batch.to_list(), "2-3");
    assert_eq!(v.cpus.idle.to_list(), "0-1");
    assert_eq!(v.memory_mib.batch, 300);
    assert_eq!(v.memory_mib.idle, 8000 - 300 - 1000);
    assert!(b.ledger().jobs[&8].recovered);
}

#[test]
fn a_missed_job_end_is_caught_by_the_next_reconcile() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    let t0 = SystemTime::now();
    tree.add_job("n1", 1000, 7, "0-1", Some(500));
    let mut a = start(&tree, state.path(), t0);
    a.handle(&step_start(7, "0-1", 500, true), t0);
    assert_eq!(a.view().cpus.batch.to_list(), "0-1");
    tree.remove_job("n1", 1000, 7);
    let report = a.reconcile(&tree_of(&tree), t0 + Duration::from_secs(1));
    assert_eq!(report.dropped, [7]);
    assert_eq!(a.view().cpus.idle.to_list(), "0-3");
}

#[test]
fn messages_for_another_node_are_refused() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    let mut a = start(&tree, state.path(), SystemTime::now());
    let (reply, changed) = a.handle(
        &PluginMessage::JobEnd {
            job_id: 1,
            node: "n2".into(),
        },
        SystemTime::now(),
    );
    assert!(!reply.ok && !changed);
    assert!(reply.error.unwrap().contains("\"n2\""));
}

#[test]
fn a_corrupt_ledger_is_moved_aside_and_rebuilt_from_the_tree() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    tree.add_job("n1", 1000, 4, "3", Some(100));
    std::fs::write(state.path().join("ledger-n1.json"), "garbage").unwrap();
    let a = start(&tree, state.path(), SystemTime::now());
    assert_eq!(a.view().cpus.batch.to_list(), "3");
    assert!(state.path().join("ledger-n1.json.corrupt").exists());
}

#[test]
fn a_ledger_of_another_node_stops_the_start() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    let store = LedgerStore::open(state.path(), "n1").unwrap();
    store.save(&Ledger::new("n2")).unwrap();
    let err = super::start(
        "n1",
        hw(),
        reserve(),
        &store,
        &tree.v1,
        GRACE,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, AgentError::WrongNode { .. }), "{err}");
}

#[test]
fn a_recovered_job_gets_its_gpus_and_unconstrained_memory_from_slurm() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    // No memory limit in the cgroup (ConstrainRAMSpace=no): only scontrol knows it.
    tree.add_job("n1", 1000, 11, "2", None);
    let details = FakeJobDetails(
        [(
            11,
            crate::scontrol::SlurmAlloc {
                memory_mib: Some(700),
                gpus: vec![1],
            },
        )]
        .into(),
    );
    let hw = discover(
        &FakeTopology::uniform(1, 4, 1),
        &FakeMemory(8000),
        &FakeGpus::count(2),
    )
    .unwrap();
    let mut a = super::start(
        "n1",
        hw,
        reserve(),
        &LedgerStore::open(state.path(), "n1").unwrap(),
        &tree.v1,
        GRACE,
        SystemTime::now(),
    )
    .unwrap();
    // Until Slurm answers, the job without a memory limit holds all memory.
    assert_eq!(a.awaiting_slurm(), [11]);
    assert_eq!(a.view().memory_mib.idle, 0);
    // What the reconcile loop then does, off the ledger task.
    for (job, alloc) in slurm_details(&details, "n1", &a.awaiting_slurm()) {
        assert!(a.set_slurm(job, alloc, false));
    }
    assert!(a.awaiting_slurm().is_empty());
    let v = a.view();
    assert_eq!(v.cpus.batch.to_list(), "2");
    assert_eq!(v.memory_mib.batch, 700);
    assert_eq!(v.gpus.batch, [1]);
    assert_eq!(v.gpus.idle, [0]);
}

#[test]
fn without_slurm_details_a_recovered_job_without_memory_limit_holds_all_memory() {
    let tree = FakeTree::new();
    let state = tempfile::tempdir().unwrap();
    tree.add_job("n1", 1000, 11, "2", None);
    let a = start(&tree, state.path(), SystemTime::now());
    assert_eq!(a.view().memory_mib.idle, 0);
}
