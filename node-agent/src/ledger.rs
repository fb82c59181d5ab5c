//! The ledger of batch allocations on one node, and the idle slots it leaves.
//!
//! Each job is held from its first `StepStart` (or from the moment the cgroup tree shows it)
//! until its last step ends, `JobEnd` arrives, or its cgroup disappears. A job holds the union
//! of its steps' CPUs and GPUs and of its cgroup's CPUs; its memory is its cgroup's limit (or the
//! largest step limit). All resource arithmetic of the agent is here, in [`Ledger::view`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use harvest_core::step::{StepAllocation, StepId};
use harvest_core::{CpuBreakdown, CpuSet, GpuBreakdown, MemoryBreakdown, NodeView};
use serde::{Deserialize, Serialize};

use crate::discover::Hardware;
use crate::lease::LeaseRecord;
use crate::scontrol::SlurmAlloc;
use crate::slurm::JobCgroup;

/// What the OS and daemons keep: never lent to functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reserve {
    /// Whole cores, taken from the lowest-numbered ones.
    pub cores: u32,
    pub memory_mib: u64,
}

/// One step's allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    pub step_id: StepId,
    pub cpus: CpuSet,
    pub memory_mib: Option<u64>,
    pub gpus: Vec<u32>,
}

/// A job's allocation as read from its cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupAlloc {
    pub cpus: CpuSet,
    pub memory_mib: Option<u64>,
}

/// One job on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub uid: Option<u32>,
    /// `false` once any step said `--harvest=off`: then nothing on the node is idle.
    pub harvest: bool,
    pub steps: Vec<StepRecord>,
    /// The job's cgroup allocation, once the tree has shown it.
    pub cgroup: Option<CgroupAlloc>,
    /// Found in the cgroup tree without a `StepStart`: it ends only with `JobEnd` or its cgroup.
    pub recovered: bool,
    /// When the job entered the ledger, in ms since the Unix epoch.
    pub added_ms: u64,
    /// What `scontrol` said about a recovered job (memory when its cgroup has no limit, GPUs).
    #[serde(default)]
    pub slurm: Option<SlurmAlloc>,
    /// Whether `slurm`'s GPUs are the job's GPUs on this node, replacing what its steps
    /// reported (`slurm_constrains_gpus`: Slurm's devices cgroup keeps the job off every other
    /// GPU). A step whose devices cgroup cannot say which GPUs it got is reported holding every
    /// GPU of the node; Slurm's record then narrows it, off the step's start path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpus_from_slurm: bool,
}

impl JobRecord {
    pub(crate) fn cpus(&self) -> CpuSet {
        let steps = self
            .steps
            .iter()
            .fold(CpuSet::new(), |a, s| a.union(&s.cpus));
        match &self.cgroup {
            Some(c) => steps.union(&c.cpus),
            None => steps,
        }
    }

    /// The job's memory in MiB; `None` when unconstrained.
    pub(crate) fn memory_mib(&self) -> Option<u64> {
        let steps_max = self
            .steps
            .iter()
            .map(|s| s.memory_mib)
            .try_fold(0, |a, m| m.map(|m| a.max(m)));
        // The job's own limit (its cgroup's, else Slurm's word) bounds every step of the job.
        let job_limit = self
            .cgroup
            .as_ref()
            .and_then(|c| c.memory_mib)
            .or_else(|| self.slurm.as_ref().and_then(|s| s.memory_mib));
        match job_limit {
            Some(job) => Some(job.max(steps_max.unwrap_or(0))),
            None if self.steps.is_empty() => None,
            None => steps_max,
        }
    }

    /// The lendable GPU units ([`crate::discover::GpuUnit`]) the job holds: Slurm's GRES
    /// indices are unit ids; a step's GPUs (from its devices cgroup) are GPU indices, each
    /// holding every unit of its GPU (all MIG instances of a MIG GPU).
    pub(crate) fn gpus(&self, hw: &Hardware) -> BTreeSet<u32> {
        self.gpu_units(&hw.gpus.units())
    }

    /// [`JobRecord::gpus`] over the node's `units`.
    pub fn gpu_units(&self, node_units: &[crate::discover::GpuUnit]) -> BTreeSet<u32> {
        let mut units: BTreeSet<u32> = self
            .slurm
            .iter()
            .flat_map(|s| s.gpus.iter().copied())
            .collect();
        if !self.gpus_from_slurm {
            units.extend(crate::discover::units_of_gpus(
                node_units,
                self.steps.iter().flat_map(|s| s.gpus.iter().copied()),
            ));
        }
        units
    }

    /// Whether a step reported GPUs that Slurm's record has not settled yet.
    pub(crate) fn gpus_unsettled(&self) -> bool {
        !self.gpus_from_slurm && self.steps.iter().any(|s| !s.gpus.is_empty())
    }
}

/// What a reconcile pass changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub added: Vec<u32>,
    pub dropped: Vec<u32>,
    pub updated: Vec<u32>,
    /// Jobs whose steps reported GPUs that Slurm's record has not settled (not a change).
    pub gpus_unsettled: Vec<u32>,
}

impl ReconcileReport {
    pub fn changed(&self) -> bool {
        !(self.added.is_empty() && self.dropped.is_empty() && self.updated.is_empty())
    }
}

/// The batch allocations of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub node: String,
    pub jobs: BTreeMap<u32, JobRecord>,
    /// Jobs that ended by message while their cgroup may linger: not re-added from the tree.
    pub ended: BTreeSet<u32>,
    /// Function leases by id, with their executors (absent in ledgers from before executors).
    #[serde(default)]
    pub leases: BTreeMap<String, LeaseRecord>,
}

impl Ledger {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            ..Self::default()
        }
    }

    /// Records a step; returns whether the ledger changed.
    pub fn step_start(&mut self, step: &StepAllocation, now_ms: u64) -> bool {
        self.ended.remove(&step.job_id);
        let job = self.jobs.entry(step.job_id).or_insert_with(|| JobRecord {
            uid: Some(step.uid),
            harvest: step.harvest,
            steps: Vec::new(),
            cgroup: None,
            recovered: false,
            added_ms: now_ms,
            slurm: None,
            gpus_from_slurm: false,
        });
        let before = job.clone();
        job.harvest &= step.harvest;
        job.uid = Some(step.uid);
        let record = StepRecord {
            step_id: step.step_id,
            cpus: step.cpus.clone(),
            memory_mib: step.memory_mib,
            gpus: step.gpus.clone(),
        };
        match job.steps.iter_mut().find(|s| s.step_id == step.step_id) {
            Some(s) => *s = record,
            None => {
                job.steps.push(record);
                job.steps.sort_by_key(|s| s.step_id);
            }
        }
        *job != before
    }

    /// Forgets a step; the job goes with its last step (unless it was recovered from the tree,
    /// whose other steps the ledger never saw).
    pub fn step_end(&mut self, job_id: u32, step_id: StepId) -> bool {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return false;
        };
        let before = job.steps.len();
        job.steps.retain(|s| s.step_id != step_id);
        let changed = job.steps.len() != before;
        if job.steps.is_empty() && !job.recovered {
            self.jobs.remove(&job_id);
            self.ended.insert(job_id);
            return true;
        }
        changed
    }

    pub fn job_end(&mut self, job_id: u32) -> bool {
        let inserted = self.ended.insert(job_id);
        self.jobs.remove(&job_id).is_some() || inserted
    }

    /// Records what Slurm says about a job; returns whether the ledger changed.
    /// Records what Slurm said of a job; with `gpus_final`, its GPUs replace what the job's
    /// steps reported ([`JobRecord::gpus_from_slurm`]). Returns whether anything changed.
    pub fn set_slurm(&mut self, job_id: u32, alloc: SlurmAlloc, gpus_final: bool) -> bool {
        match self.jobs.get_mut(&job_id) {
            Some(job)
                if job.slurm.as_ref() != Some(&alloc) || job.gpus_from_slurm != gpus_final =>
            {
                job.slurm = Some(alloc);
                job.gpus_from_slurm = gpus_final;
                true
            }
            _ => false,
        }
    }

    /// Jobs whose steps reported GPUs that Slurm's record has not settled.
    pub fn gpus_unsettled(&self) -> Vec<u32> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.gpus_unsettled())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Brings the ledger in line with the cgroup tree: jobs the tree shows are held (added when
    /// missing), jobs whose cgroup is gone are dropped. A job the tree has never shown is kept for
    /// `grace` after it was added, so a `StepStart` that beats its cgroup is not lost.
    pub fn reconcile(
        &mut self,
        tree: &[JobCgroup],
        now_ms: u64,
        grace: Duration,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let in_tree: BTreeMap<u32, &JobCgroup> = tree.iter().map(|j| (j.job_id, j)).collect();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        self.jobs.retain(|id, job| {
            let keep = in_tree.contains_key(id)
                || (job.cgroup.is_none() && now_ms.saturating_sub(job.added_ms) < grace_ms);
            if !keep {
                report.dropped.push(*id);
            }
            keep
        });
        self.ended.retain(|id| in_tree.contains_key(id));
        for (id, cg) in in_tree {
            if self.ended.contains(&id) {
                continue;
            }
            let alloc = CgroupAlloc {
                cpus: cg.cpus.clone(),
                memory_mib: cg.memory_mib,
            };
            match self.jobs.get_mut(&id) {
                Some(job) if job.cgroup.as_ref() != Some(&alloc) => {
                    job.cgroup = Some(alloc);
                    report.updated.push(id);
                }
                Some(_) => {}
                None => {
                    self.jobs.insert(
                        id,
                        JobRecord {
                            uid: cg.uid,
                            harvest: true,
                            steps: Vec::new(),
                            cgroup: Some(alloc),
                            recovered: true,
                            added_ms: now_ms,
                            slurm: None,
                            gpus_from_slurm: false,
                        },
                    );
                    report.added.push(id);
                }
            }
        }
        report
    }

    /// The node's view: hardware minus the reserve minus batch jobs (minus everything while a
    /// job said harvest=off) minus what function leases hold.
    pub fn view(&self, hw: &Hardware, reserve: Reserve) -> NodeView {
        let total_cpus = hw.topology.cpus.clone();
        let batch_cpus = self
            .jobs
            .values()
            .fold(CpuSet::new(), |a, j| a.union(&j.cpus()))
            .intersection(&total_cpus);
        let reserved_cpus = hw.lowest_cores(reserve.cores);
        let harvest_off = self.jobs.values().any(|j| !j.harvest);

        let total_mem = hw.memory_mib;
        let batch_mem = self
            .jobs
            .values()
            .map(JobRecord::memory_mib)
            .try_fold(0u64, |a, m| m.map(|m| a.saturating_add(m)))
            .unwrap_or(total_mem)
            .min(total_mem);

        let total_gpus = hw.gpu_indices();
        let held_gpus: BTreeSet<u32> = self.jobs.values().flat_map(|j| j.gpus(hw)).collect();
        let batch_gpus: Vec<u32> = total_gpus
            .iter()
            .copied()
            .filter(|g| held_gpus.contains(g))
            .collect();

        let function_cpus = self
            .leases
            .values()
            .fold(CpuSet::new(), |a, l| a.union(&l.cpus))
            .intersection(&total_cpus);
        let function_mem = self
            .leases
            .values()
            .fold(0u64, |a, l| a.saturating_add(l.memory_mib))
            .min(total_mem);
        let function_gpus: BTreeSet<u32> = self
            .leases
            .values()
            .flat_map(|l| l.gpus.iter().copied())
            .filter(|g| total_gpus.contains(g))
            .collect();

        let (idle_cpus, idle_mem, idle_gpus) = if harvest_off {
            (CpuSet::new(), 0, Vec::new())
        } else {
            (
                total_cpus
                    .difference(&batch_cpus)
                    .difference(&reserved_cpus)
                    .difference(&function_cpus),
                total_mem
                    .saturating_sub(batch_mem)
                    .saturating_sub(reserve.memory_mib)
                    .saturating_sub(function_mem),
                total_gpus
                    .iter()
                    .copied()
                    .filter(|g| !held_gpus.contains(g) && !function_gpus.contains(g))
                    .collect(),
            )
        };
        NodeView {
            name: self.node.clone(),
            cpus: CpuBreakdown {
                total: total_cpus,
                batch: batch_cpus,
                function: function_cpus,
                idle: idle_cpus,
            },
            memory_mib: MemoryBreakdown {
                total: total_mem,
                batch: batch_mem,
                function: function_mem,
                idle: idle_mem,
            },
            gpus: GpuBreakdown {
                total: total_gpus,
                batch: batch_gpus,
                function: function_gpus.into_iter().collect(),
                idle: idle_gpus,
            },
        }
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
