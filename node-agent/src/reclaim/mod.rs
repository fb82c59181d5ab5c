//! Reclaim planning: which executors leave a batch step's resources, and how.
//!
//! Pure logic over the ledger. When a step starts (and on every reconcile tick, as a backstop),
//! [`plan`] decides for every lease that now collides with a batch job:
//! - it holds CPUs or GPUs a job now holds: **move** it to other idle CPUs when
//!   [`ReclaimPolicy::move_executors`] is on and enough idle CPUs remain (its lease lives on),
//!   else **evict** it (frozen, then killed; the lease is revoked with the job's id);
//! - a job said `--harvest=off`: every lease is evicted;
//! - batch memory plus function memory exceed the node's: leases are evicted, in the policy's
//!   order, until the rest fit.
//!
//! The order ([`ReclaimOrder`], `reclaim_order` in harvestd's configuration) decides which leases
//! get the remaining idle CPUs when several must move, and which are evicted first for memory.
//! The default, `newest-first`, loses the least work: the leases that started last have run the
//! shortest and are the cheapest to restart elsewhere.
//!
//! [`crate::reclaimer`] carries a plan out on the step-start critical path.

use std::collections::BTreeSet;

use harvest_core::CpuSet;
use serde::{Deserialize, Serialize};

use crate::discover::Hardware;
use crate::lease::{LeaseRecord, choose_cpus};
use crate::ledger::{JobRecord, Ledger, Reserve};

/// Which leases go first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReclaimOrder {
    /// The most recently created lease first (least work lost).
    #[default]
    NewestFirst,
    /// The oldest lease first (leases cannot hold a node for long).
    OldestFirst,
    /// The lease holding the most memory first (fewest evictions to free memory).
    LargestFirst,
}

/// How the agent reclaims (harvestd configuration keys `reclaim_order`, `reclaim_move`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimPolicy {
    pub order: ReclaimOrder,
    /// Move an executor to other idle CPUs instead of evicting it, when enough are idle.
    pub move_executors: bool,
}

impl Default for ReclaimPolicy {
    fn default() -> Self {
        Self {
            order: ReclaimOrder::NewestFirst,
            move_executors: true,
        }
    }
}

/// What happens to one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Freeze and kill the executor; the lease ends (revoked) for `reason`.
    Evict { lease: String, reason: String },
    /// Confine the executor to `to` instead of its CPUs; the lease lives on.
    Move {
        lease: String,
        to: CpuSet,
        reason: String,
    },
}

impl Action {
    pub fn lease(&self) -> &str {
        match self {
            Self::Evict { lease, .. } | Self::Move { lease, .. } => lease,
        }
    }
}

fn job_list(ids: &[u32]) -> String {
    ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// The actions that give every batch job what it holds, in the order they should run.
pub fn plan(
    ledger: &Ledger,
    hw: &Hardware,
    reserve: Reserve,
    policy: ReclaimPolicy,
) -> Vec<Action> {
    let jobs = |pred: &dyn Fn(&JobRecord) -> bool| -> Vec<u32> {
        ledger
            .jobs
            .iter()
            .filter(|(_, j)| pred(j))
            .map(|(id, _)| *id)
            .collect()
    };
    let mut ordered: Vec<(&String, &LeaseRecord)> = ledger.leases.iter().collect();
    match policy.order {
        ReclaimOrder::NewestFirst => {
            ordered.sort_by_key(|(id, l)| (std::cmp::Reverse(l.created_ms), (*id).clone()));
        }
        ReclaimOrder::OldestFirst => ordered.sort_by_key(|(id, l)| (l.created_ms, (*id).clone())),
        ReclaimOrder::LargestFirst => {
            ordered.sort_by_key(|(id, l)| (std::cmp::Reverse(l.memory_mib), (*id).clone()));
        }
    }
    let off = jobs(&|j| !j.harvest);
    if !off.is_empty() {
        let reason = format!("reclaimed: job {} said --harvest=off", job_list(&off));
        return ordered
            .into_iter()
            .map(|(id, _)| Action::Evict {
                lease: id.clone(),
                reason: reason.clone(),
            })
            .collect();
    }
    let batch_cpus = ledger
        .jobs
        .values()
        .fold(CpuSet::new(), |a, j| a.union(&j.cpus()));
    // CPUs nobody holds: what moved executors may take.
    let mut pool = ledger.view(hw, reserve).cpus.idle;
    let mut actions: Vec<Action> = Vec::new();
    for (id, lease) in &ordered {
        let by_gpu = jobs(&|j| j.gpus(hw).iter().any(|g| lease.gpus.contains(g)));
        let by_cpu = jobs(&|j| !j.cpus().is_disjoint(&lease.cpus));
        if by_gpu.is_empty() && by_cpu.is_empty() {
            continue;
        }
        let mut by: BTreeSet<u32> = by_gpu.iter().copied().collect();
        by.extend(by_cpu.iter().copied());
        let by: Vec<u32> = by.into_iter().collect();
        let keep = lease.cpus.difference(&batch_cpus);
        let need = (lease.cpus.len() - keep.len()) as u32;
        let extra = (policy.move_executors && by_gpu.is_empty())
            .then(|| choose_cpus(&hw.topology, &pool, need))
            .flatten();
        match extra {
            Some(extra) => {
                pool = pool.difference(&extra);
                actions.push(Action::Move {
                    lease: (*id).clone(),
                    to: keep.union(&extra),
                    reason: format!("moved off the CPUs of job {}", job_list(&by)),
                });
            }
            None => {
                // Its CPUs that no job holds are free for the leases still to be moved.
                pool = pool.union(&keep);
                actions.push(Action::Evict {
                    lease: (*id).clone(),
                    reason: format!("reclaimed by job {}", job_list(&by)),
                });
            }
        }
    }
    // Memory: jobs with no known limit hold the whole node.
    let batch_mem = ledger
        .jobs
        .values()
        .map(JobRecord::memory_mib)
        .try_fold(0u64, |a, m| m.map(|m| a.saturating_add(m)))
        .unwrap_or(hw.memory_mib);
    let evicted = |actions: &[Action], id: &str| {
        actions
            .iter()
            .any(|a| matches!(a, Action::Evict { lease, .. } if lease == id))
    };
    let mut function_mem: u64 = ordered
        .iter()
        .filter(|(id, _)| !evicted(&actions, id))
        .map(|(_, l)| l.memory_mib)
        .sum();
    for (id, lease) in &ordered {
        if batch_mem.saturating_add(function_mem) <= hw.memory_mib {
            break;
        }
        if evicted(&actions, id) {
            continue;
        }
        function_mem -= lease.memory_mib;
        actions.retain(|a| a.lease() != id.as_str());
        actions.push(Action::Evict {
            lease: (*id).clone(),
            reason: "reclaimed: batch jobs need the node's memory".to_owned(),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{FakeGpus, FakeMemory, FakeTopology, discover};
    use crate::ledger::StepRecord;
    use harvest_core::step::StepId;

    fn hw() -> Hardware {
        // 8 CPUs (4 cores x 2 threads), 16000 MiB, 2 GPUs.
        discover(
            &FakeTopology::uniform(1, 4, 2),
            &FakeMemory(16000),
            &FakeGpus::count(2),
        )
        .unwrap()
    }

    fn set(list: &str) -> CpuSet {
        CpuSet::parse_list(list).unwrap()
    }

    fn lease(cpus: &str, mem: u64, created_ms: u64) -> LeaseRecord {
        LeaseRecord {
            uid: 1000,
            gid: 1000,
            cpus: set(cpus),
            memory_mib: mem,
            gpus: Vec::new(),
            expires_unix_ms: 0,
            created_ms,
            executor: None,
            recovery: Default::default(),
            memory: None,
        }
    }

    fn job(cpus: &str, mem: Option<u64>, gpus: Vec<u32>) -> JobRecord {
        JobRecord {
            uid: Some(1000),
            harvest: true,
            steps: vec![StepRecord {
                step_id: StepId::BATCH,
                cpus: set(cpus),
                memory_mib: mem,
                gpus,
            }],
            cgroup: None,
            recovered: false,
            added_ms: 0,
            gpus_from_slurm: false,
            slurm: None,
        }
    }

    fn ledger(leases: Vec<(&str, LeaseRecord)>, jobs: Vec<(u32, JobRecord)>) -> Ledger {
        let mut l = Ledger::new("n1");
        l.leases = leases.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        l.jobs = jobs.into_iter().collect();
        l
    }

    const NO_RESERVE: Reserve = Reserve {
        cores: 0,
        memory_mib: 0,
    };

    #[test]
    fn nothing_to_do_without_collisions() {
        let l = ledger(
            vec![("a", lease("4-5", 100, 1))],
            vec![(7, job("0-1", Some(100), vec![]))],
        );
        assert!(plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()).is_empty());
    }

    #[test]
    fn a_lease_moves_to_idle_cpus_when_enough_are_left_and_keeps_the_rest() {
        let l = ledger(
            vec![("a", lease("2-3", 100, 1))],
            vec![(7, job("0-2", Some(100), vec![]))],
        );
        let got = plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default());
        let [Action::Move { lease, to, reason }] = got.as_slice() else {
            panic!("{got:?}")
        };
        assert_eq!(lease, "a");
        assert_eq!(to.len(), 2);
        assert!(to.contains(3), "keeps its CPU the job did not take: {to}");
        assert!(to.is_disjoint(&set("0-2")), "{to}");
        assert_eq!(reason, "moved off the CPUs of job 7");
    }

    #[test]
    fn a_memory_lease_stays_beside_a_job_on_every_cpu_and_goes_when_its_memory_is_needed() {
        let memory = |mib: u64, created_ms| LeaseRecord {
            memory: Some(harvest_core::region::MemorySpec {
                region_mib: mib - harvest_core::region::OVERHEAD_MIB,
                cpu_millis: 100,
            }),
            ..lease("", mib, created_ms)
        };
        // A job on every CPU, with room beside it for the region: nothing to do.
        let l = ledger(
            vec![("m", memory(6000, 1))],
            vec![(7, job("0-7", Some(10_000), vec![]))],
        );
        assert!(plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()).is_empty());
        // A new step needs the memory: the lease is evicted before its tasks start.
        let l = ledger(
            vec![("m", memory(6000, 1))],
            vec![
                (7, job("0-3", Some(5_000), vec![])),
                (8, job("4-7", Some(6_000), vec![])),
            ],
        );
        assert_eq!(
            plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()),
            [Action::Evict {
                lease: "m".into(),
                reason: "reclaimed: batch jobs need the node's memory".into(),
            }]
        );
    }

    #[test]
    fn without_moves_or_room_the_lease_is_evicted_naming_the_job() {
        let l = ledger(
            vec![("a", lease("2-3", 100, 1))],
            vec![(42, job("0-7", Some(100), vec![]))],
        );
        let evict = vec![Action::Evict {
            lease: "a".into(),
            reason: "reclaimed by job 42".into(),
        }];
        assert_eq!(plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()), evict);
        let l = ledger(
            vec![("a", lease("2-3", 100, 1))],
            vec![(42, job("2", Some(100), vec![]))],
        );
        let no_moves = ReclaimPolicy {
            move_executors: false,
            ..ReclaimPolicy::default()
        };
        assert_eq!(plan(&l, &hw(), NO_RESERVE, no_moves), evict);
    }

    #[test]
    fn the_order_decides_who_gets_the_last_idle_cpus() {
        // The job takes 0-5; a (old) and b (new) each lose one CPU and nothing is idle: the
        // newest, b, finds no room and is evicted, which frees its CPU 7 for a.
        let l = ledger(
            vec![("a", lease("5-6", 100, 1)), ("b", lease("4,7", 100, 2))],
            vec![(9, job("0-5", Some(100), vec![]))],
        );
        let newest = plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default());
        assert_eq!(
            newest,
            [
                Action::Evict {
                    lease: "b".into(),
                    reason: "reclaimed by job 9".into()
                },
                Action::Move {
                    lease: "a".into(),
                    to: set("6-7"),
                    reason: "moved off the CPUs of job 9".into()
                }
            ]
        );
        // With one idle CPU (the job takes 0-4 only), the newest lease (b) moves first.
        let l = ledger(
            vec![("a", lease("4,6", 100, 1)), ("b", lease("3,7", 100, 2))],
            vec![(9, job("0-4", Some(100), vec![]))],
        );
        let newest = plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default());
        assert!(
            matches!(&newest[0], Action::Move { lease, .. } if lease == "b"),
            "{newest:?}"
        );
        assert!(
            matches!(&newest[1], Action::Evict { lease, .. } if lease == "a"),
            "{newest:?}"
        );
        let oldest = plan(
            &l,
            &hw(),
            NO_RESERVE,
            ReclaimPolicy {
                order: ReclaimOrder::OldestFirst,
                move_executors: true,
            },
        );
        assert!(
            matches!(&oldest[0], Action::Move { lease, .. } if lease == "a"),
            "{oldest:?}"
        );
    }

    #[test]
    fn gpus_taken_mean_eviction() {
        let mut a = lease("6", 100, 1);
        a.gpus = vec![1];
        let l = ledger(vec![("a", a)], vec![(5, job("0", Some(100), vec![1]))]);
        assert_eq!(
            plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()),
            [Action::Evict {
                lease: "a".into(),
                reason: "reclaimed by job 5".into()
            }]
        );
    }

    /// A step on one MIG instance evicts the lease on that instance only; a step with the MIG
    /// GPU's node (instances not known) evicts every lease on the GPU.
    #[test]
    fn a_step_on_a_mig_instance_takes_back_that_instance_only() {
        use crate::scontrol::SlurmAlloc;
        let hw = discover(
            &FakeTopology::uniform(1, 4, 2),
            &FakeMemory(16000),
            &FakeGpus::with_mig(1, 3),
        )
        .unwrap();
        let on = |unit: u32, cpu: &str| {
            let mut l = lease(cpu, 100, 1);
            l.gpus = vec![unit];
            l
        };
        let mut settled = job("0", Some(100), vec![1]);
        settled.slurm = Some(SlurmAlloc {
            memory_mib: Some(100),
            gpus: vec![2],
        });
        settled.gpus_from_slurm = true;
        let l = ledger(
            vec![("i1", on(1, "5")), ("i2", on(2, "6")), ("g0", on(0, "7"))],
            vec![(5, settled)],
        );
        let evicted: Vec<String> = plan(&l, &hw, NO_RESERVE, ReclaimPolicy::default())
            .into_iter()
            .map(|a| match a {
                Action::Evict { lease, .. } => lease,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(evicted, ["i2"]);
        let l = ledger(
            vec![("i1", on(1, "5")), ("i2", on(2, "6")), ("g0", on(0, "7"))],
            vec![(5, job("0", Some(100), vec![1]))],
        );
        let mut evicted: Vec<String> = plan(&l, &hw, NO_RESERVE, ReclaimPolicy::default())
            .into_iter()
            .map(|a| match a {
                Action::Evict { lease, .. } => lease,
                other => panic!("{other:?}"),
            })
            .collect();
        evicted.sort();
        assert_eq!(evicted, ["i1", "i2"]);
    }

    #[test]
    fn memory_is_freed_in_policy_order_until_the_rest_fits() {
        let leases = vec![
            ("small-old", lease("5", 2000, 1)),
            ("big-mid", lease("6", 6000, 2)),
            ("small-new", lease("7", 2000, 3)),
        ];
        // The job needs 9000 of 16000: 10000 of functions must shrink to 7000.
        let jobs = vec![(3, job("0", Some(9000), vec![]))];
        let l = ledger(leases, jobs);
        let evicted = |p: ReclaimPolicy| -> Vec<String> {
            plan(&l, &hw(), NO_RESERVE, p)
                .into_iter()
                .map(|a| a.lease().to_owned())
                .collect()
        };
        assert_eq!(evicted(ReclaimPolicy::default()), ["small-new", "big-mid"]);
        let largest = ReclaimPolicy {
            order: ReclaimOrder::LargestFirst,
            move_executors: true,
        };
        assert_eq!(evicted(largest), ["big-mid"]);
        let oldest = ReclaimPolicy {
            order: ReclaimOrder::OldestFirst,
            move_executors: true,
        };
        assert_eq!(evicted(oldest), ["small-old", "big-mid"]);
    }

    #[test]
    fn a_moved_lease_that_memory_needs_is_evicted_instead() {
        let l = ledger(
            vec![("a", lease("1", 10000, 1))],
            vec![(3, job("0-1", Some(9000), vec![]))],
        );
        assert_eq!(
            plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default()),
            [Action::Evict {
                lease: "a".into(),
                reason: "reclaimed: batch jobs need the node's memory".into()
            }]
        );
    }

    #[test]
    fn harvest_off_evicts_everything() {
        let mut j = job("0", Some(10), vec![]);
        j.harvest = false;
        let l = ledger(
            vec![("a", lease("5", 10, 1)), ("b", lease("6", 10, 2))],
            vec![(8, j)],
        );
        let got = plan(&l, &hw(), NO_RESERVE, ReclaimPolicy::default());
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|a| matches!(a,
            Action::Evict { reason, .. } if reason == "reclaimed: job 8 said --harvest=off")));
    }
}
