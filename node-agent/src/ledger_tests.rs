use std::path::PathBuf;
use std::time::Duration;

use harvest_core::CpuSet;
use harvest_core::step::{StepAllocation, StepId};

use super::*;
use crate::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
use crate::slurm::JobCgroup;

const GRACE: Duration = Duration::from_secs(10);

/// 1 socket x 4 cores, no SMT, 8000 MiB, 2 GPUs.
fn hw() -> Hardware {
    discover(
        &FakeTopology::uniform(1, 4, 1),
        &FakeMemory(8000),
        &FakeGpus::count(2),
    )
    .unwrap()
}

fn cpus(list: &str) -> CpuSet {
    CpuSet::parse_list(list).unwrap()
}

fn step(job: u32, step: StepId, cpu_list: &str, mem: Option<u64>) -> StepAllocation {
    StepAllocation {
        job_id: job,
        step_id: step,
        uid: 1000,
        node: "n1".into(),
        cpus: cpus(cpu_list),
        memory_mib: mem,
        gpus: vec![],
        harvest: true,
    }
}

fn cg(job: u32, cpu_list: &str, mem: Option<u64>) -> JobCgroup {
    JobCgroup {
        job_id: job,
        uid: Some(1000),
        group: PathBuf::from(format!("slurm_n1/uid_1000/job_{job}")),
        cpus: cpus(cpu_list),
        memory_mib: mem,
    }
}

const NO_RESERVE: Reserve = Reserve {
    cores: 0,
    memory_mib: 0,
};

#[test]
fn an_empty_node_is_all_idle() {
    let v = Ledger::new("n1").view(&hw(), NO_RESERVE);
    assert_eq!(v.name, "n1");
    assert_eq!(v.cpus.idle, cpus("0-3"));
    assert!(v.cpus.batch.is_empty() && v.cpus.function.is_empty());
    assert_eq!((v.memory_mib.total, v.memory_mib.idle), (8000, 8000));
    assert_eq!(v.gpus.idle, [0, 1]);
}

#[test]
fn batch_steps_are_subtracted_and_released_with_the_last_step() {
    let mut l = Ledger::new("n1");
    assert!(l.step_start(&step(7, StepId::EXTERN, "1-2", Some(500)), 0));
    assert!(l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 0));
    // The same message again changes nothing.
    assert!(!l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 5));
    assert!(l.step_start(&step(8, StepId(0), "3", Some(1000)), 0));
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.batch, cpus("1-3"));
    assert_eq!(v.cpus.idle, cpus("0"));
    assert_eq!(v.memory_mib.batch, 1500, "a job's steps share its memory");
    assert_eq!(v.memory_mib.idle, 6500);

    assert!(l.step_end(7, StepId::BATCH));
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.batch, cpus("1-3"), "the extern step still holds 1-2");
    assert!(l.step_end(7, StepId::EXTERN));
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.batch, cpus("3"));
    assert_eq!(v.cpus.idle, cpus("0-2"));
    assert_eq!(v.memory_mib.batch, 1000);
    assert!(!l.step_end(99, StepId(0)), "an unknown job is not a change");
}

#[test]
fn job_end_releases_every_step() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::EXTERN, "0-1", Some(100)), 0);
    l.step_start(&step(7, StepId(0), "0", Some(100)), 0);
    assert!(l.job_end(7));
    let v = l.view(&hw(), NO_RESERVE);
    assert!(v.cpus.batch.is_empty());
    assert_eq!(v.memory_mib.batch, 0);
}

#[test]
fn harvest_off_empties_every_idle_list_while_the_job_runs() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "0", Some(100)), 0);
    let mut off = step(9, StepId::BATCH, "1", Some(100));
    off.harvest = false;
    l.step_start(&off, 0);
    // A later step saying harvest=true does not switch it back on.
    let mut on_again = step(9, StepId(0), "1", Some(100));
    on_again.harvest = true;
    l.step_start(&on_again, 0);
    let v = l.view(&hw(), NO_RESERVE);
    assert!(v.cpus.idle.is_empty());
    assert_eq!(v.memory_mib.idle, 0);
    assert!(v.gpus.idle.is_empty());
    assert_eq!(v.cpus.batch, cpus("0-1"), "batch is still reported");

    l.job_end(9);
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.idle, cpus("1-3"));
    assert_eq!(v.gpus.idle, [0, 1]);
}

#[test]
fn the_reserve_is_whole_low_cores_and_memory() {
    let smt = discover(
        &FakeTopology::uniform(1, 4, 2),
        &FakeMemory(8000),
        &FakeGpus::none(),
    )
    .unwrap();
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "3", Some(1000)), 0);
    let reserve = Reserve {
        cores: 1,
        memory_mib: 1024,
    };
    let v = l.view(&smt, reserve);
    // Core 0 is PUs 0 and 4.
    assert_eq!(v.cpus.idle, cpus("1-2,5-7"));
    assert_eq!(v.cpus.total, cpus("0-7"));
    assert_eq!(v.memory_mib.idle, 8000 - 1000 - 1024);
    let huge = Reserve {
        cores: 0,
        memory_mib: 1 << 40,
    };
    assert_eq!(l.view(&smt, huge).memory_mib.idle, 0, "never negative");
}

#[test]
fn unconstrained_memory_holds_all_of_it() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "0", None), 0);
    l.step_start(&step(8, StepId::BATCH, "1", Some(100)), 0);
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.memory_mib.batch, 8000);
    assert_eq!(v.memory_mib.idle, 0);
}

#[test]
fn gpus_of_steps_are_batch() {
    let mut l = Ledger::new("n1");
    let mut s = step(7, StepId::BATCH, "0", Some(100));
    s.gpus = vec![1, 5];
    l.step_start(&s, 0);
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.gpus.batch, [1], "only GPUs the node has");
    assert_eq!(v.gpus.idle, [0]);
}

#[test]
fn slurms_record_settles_a_step_reported_holding_every_gpu_only_when_it_is_final() {
    use crate::scontrol::SlurmAlloc;
    let mut l = Ledger::new("n1");
    // The plugin could not read which GPUs the step got: every GPU of the node.
    let mut s = step(7, StepId::BATCH, "0", Some(100));
    s.gpus = vec![0, 1];
    l.step_start(&s, 0);
    assert_eq!(l.gpus_unsettled(), [7]);
    assert_eq!(l.view(&hw(), NO_RESERVE).gpus.batch, [0, 1]);
    let slurm = SlurmAlloc {
        memory_mib: Some(100),
        gpus: vec![1],
    };
    // Slurm's word that does not bind (slurm_constrains_gpus off) narrows nothing.
    assert!(l.set_slurm(7, slurm.clone(), false));
    assert_eq!(l.view(&hw(), NO_RESERVE).gpus.batch, [0, 1]);
    assert_eq!(l.gpus_unsettled(), [7]);
    // Final: the job holds GPU 1 only; GPU 0 is idle again, and nothing is left to settle.
    assert!(l.set_slurm(7, slurm.clone(), true));
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(
        (v.gpus.batch.clone(), v.gpus.idle.clone()),
        (vec![1], vec![0])
    );
    assert!(l.gpus_unsettled().is_empty());
    assert!(
        !l.set_slurm(7, slurm, true),
        "the same answer changes nothing"
    );
    // A job that reported no GPUs has nothing to settle.
    l.step_start(&step(8, StepId::BATCH, "1", Some(100)), 0);
    assert!(l.gpus_unsettled().is_empty());
}

/// GPU 0 whole (unit 0) and GPU 1 in MIG mode with 3 instances (units 1, 2, 3).
fn mig_hw() -> Hardware {
    discover(
        &FakeTopology::uniform(1, 4, 1),
        &FakeMemory(8000),
        &FakeGpus::with_mig(1, 3),
    )
    .unwrap()
}

#[test]
fn each_mig_instance_is_a_unit_of_its_own_in_the_view() {
    use crate::scontrol::SlurmAlloc;
    let hw = mig_hw();
    let v = Ledger::new("n1").view(&hw, NO_RESERVE);
    assert_eq!(v.gpus.total, [0, 1, 2, 3]);
    assert_eq!(v.gpus.idle, [0, 1, 2, 3]);
    // A step whose devices cgroup has GPU 1's node may use any of its instances: all batch.
    let mut l = Ledger::new("n1");
    let mut s = step(7, StepId::BATCH, "0", Some(100));
    s.gpus = vec![1];
    l.step_start(&s, 0);
    let v = l.view(&hw, NO_RESERVE);
    assert_eq!(
        (v.gpus.batch.clone(), v.gpus.idle.clone()),
        (vec![1, 2, 3], vec![0])
    );
    // Slurm's GRES index (a MIG device's) settles it to the one instance.
    l.set_slurm(
        7,
        SlurmAlloc {
            memory_mib: Some(100),
            gpus: vec![2],
        },
        true,
    );
    let v = l.view(&hw, NO_RESERVE);
    assert_eq!(
        (v.gpus.batch.clone(), v.gpus.idle.clone()),
        (vec![2], vec![0, 1, 3])
    );
    // A lease on instance 3 is function; the others stay idle.
    l.leases.insert("L".into(), lease("3", 100, vec![3], 1));
    let v = l.view(&hw, NO_RESERVE);
    assert_eq!(
        (v.gpus.function.clone(), v.gpus.idle.clone()),
        (vec![3], vec![0, 1])
    );
}

#[test]
fn cpus_outside_the_node_are_ignored() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "2,64", Some(1)), 0);
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.batch, cpus("2"));
}

#[test]
fn reconcile_adds_jobs_from_the_tree_and_drops_vanished_ones() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 0);
    let r = l.reconcile(
        &[cg(7, "1", Some(500)), cg(8, "2-3", Some(200))],
        1000,
        GRACE,
    );
    assert_eq!(r.added, [8]);
    assert_eq!(r.updated, [7]);
    assert!(l.jobs[&8].recovered);
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.batch, cpus("1-3"));
    assert_eq!(v.memory_mib.batch, 700);

    // Nothing new: no change.
    let r = l.reconcile(
        &[cg(7, "1", Some(500)), cg(8, "2-3", Some(200))],
        2000,
        GRACE,
    );
    assert!(!r.changed());

    // A recovered job survives StepEnd of a step it never reported.
    assert!(!l.step_end(8, StepId::BATCH));
    assert!(l.jobs.contains_key(&8));

    // Both cgroups gone (JobEnd missed): both dropped at once, well within the grace.
    let r = l.reconcile(&[], 3000, GRACE);
    assert_eq!(r.dropped, [7, 8]);
    assert!(l.view(&hw(), NO_RESERVE).cpus.batch.is_empty());
}

#[test]
fn a_step_whose_cgroup_never_shows_is_kept_for_the_grace_only() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 1_000);
    assert!(!l.reconcile(&[], 1_000 + 9_999, GRACE).changed());
    assert_eq!(l.reconcile(&[], 1_000 + 10_000, GRACE).dropped, [7]);
}

#[test]
fn an_ended_job_is_not_re_added_while_its_cgroup_lingers() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 0);
    l.reconcile(&[cg(7, "1", Some(500))], 10, GRACE);
    assert!(l.step_end(7, StepId::BATCH));
    let r = l.reconcile(&[cg(7, "1", Some(500))], 20, GRACE);
    assert!(r.added.is_empty(), "{r:?}");
    assert!(l.view(&hw(), NO_RESERVE).cpus.batch.is_empty());
    // Once the cgroup is gone the tombstone goes too.
    l.reconcile(&[], 30, GRACE);
    assert!(l.ended.is_empty());
}

#[test]
fn a_recovered_job_with_unconstrained_memory_holds_all_memory() {
    let mut l = Ledger::new("n1");
    l.reconcile(&[cg(5, "0", None)], 0, GRACE);
    assert_eq!(l.view(&hw(), NO_RESERVE).memory_mib.idle, 0);
    // Its job cgroup limit bounds steps that report none.
    let mut l = Ledger::new("n1");
    l.step_start(&step(6, StepId::BATCH, "0", None), 0);
    l.reconcile(&[cg(6, "0", Some(300))], 0, GRACE);
    assert_eq!(l.view(&hw(), NO_RESERVE).memory_mib.batch, 300);
}

#[test]
fn ledger_round_trips_through_json() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "1", Some(500)), 0);
    l.reconcile(&[cg(8, "2", None)], 0, GRACE);
    l.job_end(9);
    let text = serde_json::to_string(&l).unwrap();
    let back: Ledger = serde_json::from_str(&text).unwrap();
    assert_eq!(back, l);
}

fn lease(cpu_list: &str, mem: u64, gpus: Vec<u32>, created_ms: u64) -> LeaseRecord {
    LeaseRecord {
        uid: 1000,
        gid: 1000,
        cpus: cpus(cpu_list),
        memory_mib: mem,
        gpus,
        expires_unix_ms: 0,
        created_ms,
        executor: None,
        recovery: Default::default(),
        memory: None,
    }
}

#[test]
fn leases_are_function_resources_and_leave_idle() {
    let mut l = Ledger::new("n1");
    l.step_start(&step(7, StepId::BATCH, "0", Some(1000)), 0);
    l.leases.insert("a".into(), lease("2", 500, vec![1], 1));
    l.leases.insert("b".into(), lease("3", 250, vec![], 2));
    let v = l.view(&hw(), NO_RESERVE);
    assert_eq!(v.cpus.function, cpus("2-3"));
    assert_eq!(v.cpus.idle, cpus("1"));
    assert_eq!(v.memory_mib.function, 750);
    assert_eq!(v.memory_mib.idle, 8000 - 1000 - 750);
    assert_eq!(
        (v.gpus.function.clone(), v.gpus.idle.clone()),
        (vec![1], vec![0])
    );
    assert!(evictions(&l).is_empty());
    // A ledger saved before leases existed still loads.
    let old = r#"{"node":"n1","jobs":{},"ended":[]}"#;
    assert_eq!(
        serde_json::from_str::<Ledger>(old).unwrap(),
        Ledger::new("n1")
    );
}

/// What the reclaim plan evicts (moves off), as (lease, reason).
fn evictions(l: &Ledger) -> Vec<(String, String)> {
    let no_moves = crate::reclaim::ReclaimPolicy {
        move_executors: false,
        ..Default::default()
    };
    crate::reclaim::plan(l, &hw(), Reserve::default(), no_moves)
        .into_iter()
        .map(|a| match a {
            crate::reclaim::Action::Evict { lease, reason } => (lease, reason),
            other => panic!("a move without moves allowed: {other:?}"),
        })
        .collect()
}

#[test]
fn batch_jobs_reclaim_what_they_take() {
    let mut l = Ledger::new("n1");
    l.leases.insert("cpu".into(), lease("1", 100, vec![], 1));
    l.leases.insert("gpu".into(), lease("2", 100, vec![0], 2));
    l.leases.insert("old".into(), lease("3", 3000, vec![], 3));
    l.leases.insert("new".into(), lease("3", 3000, vec![], 4));
    assert!(evictions(&l).is_empty());
    // Job 7 lands on CPU 1 with a GPU the "gpu" lease holds, and 3000 MiB: batch 3000 plus
    // function 6200 exceed 8000, so the newest memory lease goes too (the older one then fits).
    let mut s = step(7, StepId::BATCH, "0-1", Some(3000));
    s.gpus = vec![0];
    l.step_start(&s, 10);
    let mut got = evictions(&l);
    got.sort();
    assert_eq!(
        got,
        [
            ("cpu".to_owned(), "reclaimed by job 7".to_owned()),
            ("gpu".to_owned(), "reclaimed by job 7".to_owned()),
            (
                "new".to_owned(),
                "reclaimed: batch jobs need the node's memory".to_owned()
            ),
        ]
    );
    // --harvest=off takes everything back.
    let mut off = step(8, StepId::BATCH, "0", Some(10));
    off.harvest = false;
    l.step_start(&off, 11);
    let got = evictions(&l);
    assert_eq!(got.len(), 4);
    assert!(
        got.iter()
            .all(|(_, r)| r == "reclaimed: job 8 said --harvest=off"),
        "{got:?}"
    );
}
