//! The periodic loops that bring Slurm's view in, each gathering it first (blocking work in
//! `spawn_blocking`, never while any state is held) and only then handing it to the ledger task:
//! - [`reconcile_loop`]: every `reconcile_interval`, the cgroup tree; `scontrol` for the jobs it
//!   added (bounded by `scontrol_timeout`); then reclaim as a backstop (jobs the tree showed
//!   before any plugin report, a report that came too late).
//! - [`drain_loop`]: every `drain_check_interval`, whether Slurm drains the node.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::agent::{read_tree, slurm_details};
use crate::cgroup::Cgroups;
use crate::ledger_task::LedgerHandle;
use crate::reclaimer::Reclaimer;
use crate::scontrol::JobDetails;
use crate::stats::NodeStats;

/// What the reconcile loop reads and where it sends it.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub node: String,
    pub cgroups: Arc<dyn Cgroups>,
    pub details: Arc<dyn JobDetails>,
    pub ledger: LedgerHandle,
    pub reclaimer: Reclaimer,
    /// Jobs recovered at start that still need Slurm's details (asked on the first pass).
    pub awaiting_slurm: Vec<u32>,
    /// `slurm_constrains_gpus`: Slurm's record of a job's GPUs is what it can open, so it
    /// settles a job whose steps reported every GPU of the node for want of a readable list.
    pub slurm_constrains_gpus: bool,
    /// When Slurm was last asked about a job's GPUs (asked again after [`GPU_ASK_AGAIN`]).
    pub gpus_asked: std::collections::HashMap<u32, Instant>,
}

/// How long after an unanswered question about a job's GPUs `scontrol` is asked again.
pub const GPU_ASK_AGAIN: Duration = Duration::from_secs(30);

impl Reconciler {
    /// One pass: tree, ledger, Slurm's details for new jobs, backstop reclaim.
    pub async fn pass(&mut self) {
        let (cg, node) = (self.cgroups.clone(), self.node.clone());
        let tree = match tokio::task::spawn_blocking(move || read_tree(cg.as_ref(), &node)).await {
            Ok(Ok(tree)) => tree,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reconcile failed; the ledger is unchanged");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the cgroup tree panicked");
                return;
            }
        };
        let Ok(report) = self.ledger.reconcile(tree, SystemTime::now()).await else {
            return;
        };
        let mut added = std::mem::take(&mut self.awaiting_slurm);
        added.extend(report.added);
        for job in &report.dropped {
            self.gpus_asked.remove(job);
        }
        if self.slurm_constrains_gpus {
            let now = Instant::now();
            for job in report.gpus_unsettled {
                let due = self
                    .gpus_asked
                    .get(&job)
                    .is_none_or(|at| now.duration_since(*at) >= GPU_ASK_AGAIN);
                if due && !added.contains(&job) {
                    self.gpus_asked.insert(job, now);
                    added.push(job);
                }
            }
        }
        if !added.is_empty() {
            let (d, node) = (self.details.clone(), self.node.clone());
            let found =
                tokio::task::spawn_blocking(move || slurm_details(d.as_ref(), &node, &added))
                    .await
                    .unwrap_or_default();
            for (job, alloc) in found {
                let _ = self
                    .ledger
                    .set_slurm(job, alloc, self.slurm_constrains_gpus)
                    .await;
            }
        }
        if let Ok(plan) = self.ledger.reclaim_plan().await {
            self.reclaimer.run(plan, Instant::now()).await;
        }
    }
}

/// Runs [`Reconciler::pass`] every `interval` until `cancel` fires.
pub async fn reconcile_loop(mut r: Reconciler, interval: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = r.pass() => {}
        }
    }
}

/// Asks Slurm every `interval` whether it drains this node (or has it down) and records the
/// answer in `stats`, which the scheduler session reports: the scheduler then revokes the
/// node's leases and places none there. An unreachable Slurm changes nothing (logged).
pub async fn drain_loop(
    details: Arc<dyn JobDetails>,
    node: String,
    stats: Arc<NodeStats>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (d, n) = (details.clone(), node.clone());
        let asked = tokio::task::spawn_blocking(move || d.node_state(&n));
        let state = tokio::select! {
            () = cancel.cancelled() => return,
            r = asked => match r {
                Ok(Ok(Some(state))) => state,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot ask Slurm for the node's state");
                    continue;
                }
                Err(_) => continue,
            },
        };
        let draining = crate::scontrol::is_draining(&state);
        if draining != stats.draining() {
            tracing::warn!(node = %node, slurm_state = %state, draining,
            "Slurm's node state changed: {}", if draining {
                "no new leases here, and the scheduler revokes the ones here"
            } else {
                "leases may come here again"
            });
        }
        stats.set_draining(draining);
    }
}
