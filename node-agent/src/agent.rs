//! The agent's state machine: plugin messages, lease changes and reconcile passes in, ledger
//! changes out.
//!
//! [`NodeAgent`] is plain synchronous code: no disk, no subprocess, no cgroup access. The
//! ledger task ([`crate::ledger_task`]) owns the one instance and feeds it commands; whatever is
//! slow (reading the cgroup tree, asking `scontrol`, saving) is done by others before or after,
//! never while the state is held. [`load`] and [`start_view`] are the start-up path.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harvest_core::step::{AgentReply, PluginMessage};
use harvest_core::{CpuSet, NodeView};

use crate::cgroup::{CgroupError, Cgroups};
use crate::discover::Hardware;
use crate::lease::{ExecutorProcess, LeaseError, LeaseRecord, LeaseRequest, check_id, place};
use crate::ledger::{Ledger, ReconcileReport, Reserve};
use crate::reclaim::{Action, ReclaimPolicy, plan};
use crate::scontrol::{JobDetails, SlurmAlloc};
use crate::slurm::{JobCgroup, SlurmView};
use crate::state::{StateError, Store};

/// Why the agent could not start or reconcile.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("reading Slurm's cgroup tree: {0}")]
    Cgroup(#[from] CgroupError),
    #[error(
        "the ledger {path} belongs to node {found:?}, not {wanted:?}: pass the right --node or --state-dir"
    )]
    WrongNode {
        path: String,
        found: String,
        wanted: String,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One node's agent: the hardware, the reserve and the ledger. Pure: nothing here blocks.
#[derive(Debug, Clone)]
pub struct NodeAgent {
    node: String,
    hardware: Hardware,
    reserve: Reserve,
    ledger: Ledger,
    unseen_grace: Duration,
}

/// The saved ledger of `node` (an unreadable one is moved aside and a new one begun).
pub fn load(store: &dyn Store, node: &str) -> Result<Ledger, AgentError> {
    match store.load() {
        Ok(Some(l)) if l.node != node => Err(AgentError::WrongNode {
            path: store.path().display().to_string(),
            found: l.node,
            wanted: node.to_owned(),
        }),
        Ok(Some(l)) => {
            tracing::info!(jobs = l.jobs.len(), leases = l.leases.len(),
                path = %store.path().display(), "ledger loaded");
            Ok(l)
        }
        Ok(None) => Ok(Ledger::new(node)),
        Err(e @ StateError::Corrupt { .. }) => {
            let moved = store.quarantine()?;
            tracing::error!(error = %e, moved_to = %moved.display(),
                "unreadable ledger moved aside; rebuilding from the cgroup tree");
            Ok(Ledger::new(node))
        }
        Err(e) => Err(e.into()),
    }
}

/// Slurm's cgroup tree for `node` (blocking: call it off the async runtime's hot paths).
pub fn read_tree(cgroups: &dyn Cgroups, node: &str) -> Result<Vec<JobCgroup>, CgroupError> {
    SlurmView::new(cgroups, node).jobs()
}

/// What Slurm says of the jobs a reconcile pass added (blocking, bounded by the `scontrol`
/// timeout): only Slurm knows a recovered job's GPUs, and its memory when RAM is unconstrained.
pub fn slurm_details(details: &dyn JobDetails, node: &str, jobs: &[u32]) -> Vec<(u32, SlurmAlloc)> {
    jobs.iter()
        .filter_map(|&job| match details.job_on_node(job, node) {
            Ok(Some(alloc)) => Some((job, alloc)),
            Ok(None) => {
                tracing::debug!(job, "scontrol does not know the job on this node");
                None
            }
            Err(e) => {
                tracing::warn!(job, error = %e,
                    "no Slurm details for a recovered job; holding what its cgroup shows");
                None
            }
        })
        .collect()
}

/// The start-up path, blocking and before anything is served: the saved ledger reconciled with
/// the cgroup tree, then saved. After this the agent holds every job Slurm's tree shows on the
/// node. `scontrol` is not asked here (a hanging slurmctld must not hold the agent's start):
/// the jobs still waiting for Slurm's details ([`NodeAgent::awaiting_slurm`]) hold what their
/// cgroup shows, all memory when it has no limit, until the reconcile loop gets the details.
pub fn start(
    node: &str,
    hardware: Hardware,
    reserve: Reserve,
    store: &dyn Store,
    cgroups: &dyn Cgroups,
    unseen_grace: Duration,
    now: SystemTime,
) -> Result<NodeAgent, AgentError> {
    let ledger = load(store, node)?;
    let mut agent = NodeAgent::new(node, hardware, reserve, ledger, unseen_grace);
    let tree = read_tree(cgroups, node)?;
    agent.reconcile(&tree, now);
    store.save(agent.ledger())?;
    Ok(agent)
}

impl NodeAgent {
    pub fn new(
        node: &str,
        hardware: Hardware,
        reserve: Reserve,
        ledger: Ledger,
        unseen_grace: Duration,
    ) -> Self {
        Self {
            node: node.to_owned(),
            hardware,
            reserve,
            ledger,
            unseen_grace,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn view(&self) -> NodeView {
        self.ledger.view(&self.hardware, self.reserve)
    }

    pub fn hardware(&self) -> &Hardware {
        &self.hardware
    }

    /// Places a lease on the idle resources and records it, so the view's `function` columns
    /// hold it from now on.
    pub fn reserve_lease(
        &mut self,
        req: &LeaseRequest,
        now: SystemTime,
    ) -> Result<LeaseRecord, LeaseError> {
        check_id(&req.id)?;
        if self.ledger.leases.contains_key(&req.id) {
            return Err(LeaseError::Exists(req.id.clone()));
        }
        let placement = place(&self.hardware.topology, &self.view(), req)?;
        let record = LeaseRecord {
            uid: req.uid,
            gid: req.gid,
            cpus: placement.cpus,
            memory_mib: placement.memory_mib,
            gpus: placement.gpus,
            expires_unix_ms: req.expires_unix_ms,
            created_ms: now_ms(now),
            executor: None,
            recovery: req.recovery.clone(),
            memory: req.memory,
        };
        self.ledger.leases.insert(req.id.clone(), record.clone());
        Ok(record)
    }

    /// Records a lease's executor process (and, once ready, its address).
    pub fn set_executor(&mut self, id: &str, executor: ExecutorProcess) -> Result<(), LeaseError> {
        let lease = self
            .ledger
            .leases
            .get_mut(id)
            .ok_or_else(|| LeaseError::Unknown(id.to_owned()))?;
        lease.executor = Some(executor);
        Ok(())
    }

    /// What must leave the batch jobs' resources now ([`crate::reclaim::plan`]).
    pub fn reclaim_plan(&self, policy: ReclaimPolicy) -> Vec<Action> {
        plan(&self.ledger, &self.hardware, self.reserve, policy)
    }

    /// Records a lease's executor moved to `cpus`; false for an unknown lease.
    pub fn move_lease(&mut self, id: &str, cpus: CpuSet) -> bool {
        match self.ledger.leases.get_mut(id) {
            Some(lease) => {
                lease.cpus = cpus;
                true
            }
            None => false,
        }
    }

    /// Forgets a lease (its executor and cgroup must be gone by now): its resources are idle again.
    pub fn remove_lease(&mut self, id: &str) -> Option<LeaseRecord> {
        self.ledger.leases.remove(id)
    }

    /// Applies one plugin message and answers it; the flag says whether the ledger changed.
    /// The plugin runs inside slurmstepd and must never fail a job because of the agent: only a
    /// message for another node is refused.
    pub fn handle(&mut self, msg: &PluginMessage, now: SystemTime) -> (AgentReply, bool) {
        let node = match msg {
            PluginMessage::StepStart(a) => &a.node,
            PluginMessage::StepEnd { node, .. } | PluginMessage::JobEnd { node, .. } => node,
        };
        if node != &self.node {
            let reply = AgentReply::error(format!(
                "message for node {node:?} reached the harvestd of node {:?}: check the plugin's socket path",
                self.node
            ));
            return (reply, false);
        }
        let changed = match msg {
            PluginMessage::StepStart(a) => {
                if !a.cpus.is_subset(&self.hardware.topology.cpus) {
                    tracing::warn!(job = a.job_id, step = %a.step_id, cpus = %a.cpus,
                        node_cpus = %self.hardware.topology.cpus, "step CPUs outside this node's CPUs");
                }
                self.ledger.step_start(a, now_ms(now))
            }
            PluginMessage::StepEnd {
                job_id, step_id, ..
            } => self.ledger.step_end(*job_id, *step_id),
            PluginMessage::JobEnd { job_id, .. } => self.ledger.job_end(*job_id),
        };
        tracing::debug!(?msg, changed, "plugin message");
        (AgentReply::ok(), changed)
    }

    /// One reconcile pass against a cgroup tree read beforehand. The jobs it adds are
    /// completed from Slurm by the caller ([`slurm_details`], then [`set_slurm`](Self::set_slurm)).
    pub fn reconcile(&mut self, tree: &[JobCgroup], now: SystemTime) -> ReconcileReport {
        let mut report = self.ledger.reconcile(tree, now_ms(now), self.unseen_grace);
        report.gpus_unsettled = self.ledger.gpus_unsettled();
        if report.changed() {
            tracing::info!(added = ?report.added, dropped = ?report.dropped,
                updated = ?report.updated, "reconciled the ledger with the cgroup tree");
        }
        report
    }

    /// The jobs recovered from the cgroup tree that Slurm has not described yet.
    pub fn awaiting_slurm(&self) -> Vec<u32> {
        self.ledger
            .jobs
            .iter()
            .filter(|(_, j)| j.recovered && j.slurm.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records what Slurm says of a job; with `gpus_final` its GPUs replace the steps'
    /// ([`crate::ledger::JobRecord::gpus_from_slurm`]). False when nothing changed (or the job
    /// is gone meanwhile).
    pub fn set_slurm(&mut self, job: u32, alloc: SlurmAlloc, gpus_final: bool) -> bool {
        self.ledger.set_slurm(job, alloc, gpus_final)
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
