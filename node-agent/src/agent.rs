//! The agent's state machine: plugin messages and reconcile passes in, ledger changes out.
//!
//! [`NodeAgent`] is plain synchronous code over the [`Cgroups`] trait and a [`LedgerStore`], so
//! it is tested with a fake cgroup tree in a temp dir; [`crate::server`] puts it behind sockets.
//! Every change to the ledger is saved before the plugin gets its answer.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harvest_core::step::{AgentReply, PluginMessage};
use harvest_core::{CpuSet, NodeView};

use crate::cgroup::{CgroupError, Cgroups};
use crate::discover::Hardware;
use crate::lease::{ExecutorProcess, LeaseError, LeaseRecord, LeaseRequest, check_id, place};
use crate::ledger::{Ledger, ReconcileReport, Reserve};
use crate::reclaim::{Action, ReclaimPolicy, plan};
use crate::scontrol::JobDetails;
use crate::slurm::SlurmView;
use crate::state::{LedgerStore, StateError};

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

/// One node's agent.
#[derive(Debug)]
pub struct NodeAgent {
    node: String,
    hardware: Hardware,
    reserve: Reserve,
    ledger: Ledger,
    store: LedgerStore,
    cgroups: Arc<dyn Cgroups>,
    details: Arc<dyn JobDetails>,
    unseen_grace: Duration,
}

/// What the agent reads the node's jobs from.
#[derive(Debug)]
pub struct Sources {
    pub cgroups: Arc<dyn Cgroups>,
    pub details: Arc<dyn JobDetails>,
    /// Starts and watches executor processes (used by [`crate::executor`], not by the agent).
    pub processes: Arc<dyn crate::executor::process::Processes>,
}

impl NodeAgent {
    /// Loads the saved ledger (an unreadable one is moved aside), reconciles it with the cgroup
    /// tree, and saves the result: after this the agent holds every job Slurm runs on the node.
    pub fn start(
        node: &str,
        hardware: Hardware,
        reserve: Reserve,
        store: LedgerStore,
        sources: Sources,
        unseen_grace: Duration,
        now: SystemTime,
    ) -> Result<Self, AgentError> {
        let ledger = match store.load() {
            Ok(Some(l)) if l.node != node => {
                return Err(AgentError::WrongNode {
                    path: store.path().display().to_string(),
                    found: l.node,
                    wanted: node.to_owned(),
                });
            }
            Ok(Some(l)) => {
                tracing::info!(jobs = l.jobs.len(), path = %store.path().display(), "ledger loaded");
                l
            }
            Ok(None) => Ledger::new(node),
            Err(e @ StateError::Corrupt { .. }) => {
                let moved = store.quarantine()?;
                tracing::error!(error = %e, moved_to = %moved.display(),
                    "unreadable ledger moved aside; rebuilding from the cgroup tree");
                Ledger::new(node)
            }
            Err(e) => return Err(e.into()),
        };
        let mut agent = Self {
            node: node.to_owned(),
            hardware,
            reserve,
            ledger,
            store,
            cgroups: sources.cgroups,
            details: sources.details,
            unseen_grace,
        };
        agent.reconcile(now)?;
        agent.store.save(&agent.ledger)?;
        Ok(agent)
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

    /// The cgroup backend (shared with the executors, which make the lease groups).
    pub fn cgroups(&self) -> Arc<dyn Cgroups> {
        self.cgroups.clone()
    }

    /// Places a lease on the idle resources and records it (saved before this returns), so the
    /// view's `function` columns hold it from now on.
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
        };
        self.ledger.leases.insert(req.id.clone(), record.clone());
        self.save();
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
        self.save();
        Ok(())
    }

    /// What must leave the batch jobs' resources now ([`crate::reclaim::plan`]).
    pub fn reclaim_plan(&self, policy: ReclaimPolicy) -> Vec<Action> {
        plan(&self.ledger, &self.hardware, self.reserve, policy)
    }

    /// Records a lease's executor moved to `cpus`.
    pub fn move_lease(&mut self, id: &str, cpus: CpuSet) {
        if let Some(lease) = self.ledger.leases.get_mut(id) {
            lease.cpus = cpus;
            self.save();
        }
    }

    /// Forgets a lease (its executor and cgroup must be gone by now): its resources are idle again.
    pub fn remove_lease(&mut self, id: &str) -> Option<LeaseRecord> {
        let lease = self.ledger.leases.remove(id)?;
        self.save();
        Some(lease)
    }

    /// Applies one plugin message and answers it. The plugin runs inside slurmstepd and must
    /// never fail a job because of the agent, so a save failure is logged, not answered as an
    /// error: the in-memory ledger already holds the step's resources.
    pub fn handle(&mut self, msg: &PluginMessage, now: SystemTime) -> AgentReply {
        let node = match msg {
            PluginMessage::StepStart(a) => &a.node,
            PluginMessage::StepEnd { node, .. } | PluginMessage::JobEnd { node, .. } => node,
        };
        if node != &self.node {
            return AgentReply::error(format!(
                "message for node {node:?} reached the harvestd of node {:?}: check the plugin's socket path",
                self.node
            ));
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
        if changed {
            self.save();
        }
        AgentReply::ok()
    }

    /// One reconcile pass against the cgroup tree; saves when anything changed.
    pub fn reconcile(&mut self, now: SystemTime) -> Result<ReconcileReport, AgentError> {
        let tree = SlurmView::new(self.cgroups.as_ref(), &self.node).jobs()?;
        let report = self.ledger.reconcile(&tree, now_ms(now), self.unseen_grace);
        for &job in &report.added {
            // Only Slurm knows a recovered job's GPUs, and its memory when RAM is unconstrained.
            match self.details.job_on_node(job, &self.node) {
                Ok(Some(alloc)) => {
                    self.ledger.set_slurm(job, alloc);
                }
                Ok(None) => tracing::debug!(job, "scontrol does not know the job on this node"),
                Err(e) => tracing::warn!(job, error = %e,
                    "no Slurm details for a recovered job; holding what its cgroup shows"),
            }
        }
        if report.changed() {
            tracing::info!(added = ?report.added, dropped = ?report.dropped,
                updated = ?report.updated, "reconciled the ledger with the cgroup tree");
            self.save();
        }
        Ok(report)
    }

    /// Saves the ledger; a failure is logged (the next change tries again).
    pub fn save(&self) {
        if let Err(e) = self.store.save(&self.ledger) {
            tracing::error!(error = %e, "could not save the ledger; a restart now would rely on the cgroup tree alone");
        }
    }
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
