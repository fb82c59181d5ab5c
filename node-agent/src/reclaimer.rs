//! The step-start critical path: from a plan ([`crate::reclaim::plan`]) to "every lease is off these
//! resources". Moves go to the lease tasks (each rewrites its own cpuset); evictions too (each
//! freezes and kills its own group), all at once, while the lease groups' parent runs at a high
//! weight so that killed tasks get the CPU to exit. Returns when every evicted group is empty or
//! the reclaim timeout is up (an overrun, logged and counted); the leases' teardown follows
//! after the step started.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::leases::{EXIT_CPU_WEIGHT, Evicted, LeaseMessage, LeaseSupervisor};
use crate::reclaim::Action;
use crate::stats::{NodeStats, ReclaimOutcome};

/// How reclaim runs (harvestd configuration keys `reclaim_timeout`,
/// `reclaim_teardown_delay`).
#[derive(Debug, Clone)]
pub struct Reclaimer {
    pub leases: LeaseSupervisor,
    /// How long a synchronous reclaim may take before the step is let go regardless.
    pub timeout: Duration,
    /// How long an evicted lease's teardown waits after the step was let go.
    pub teardown_delay: Duration,
    pub stats: Arc<NodeStats>,
}

impl Reclaimer {
    /// Carries out `actions` within the timeout from `started` (when the plugin's report
    /// arrived). `None` when there was nothing to do.
    pub async fn run(&self, actions: Vec<Action>, started: Instant) -> Option<ReclaimOutcome> {
        if actions.is_empty() {
            return None;
        }
        let deadline = started + self.timeout;
        let mut evictions: Vec<(String, String)> = Vec::new();
        let mut moves = Vec::new();
        for action in actions {
            match action {
                Action::Move { lease, to, reason } => {
                    let (done, moved) = oneshot::channel();
                    let msg = LeaseMessage::Move {
                        cpus: to,
                        reason: reason.clone(),
                        done,
                    };
                    if self.leases.send(&lease, msg).await.is_ok() {
                        moves.push((lease, reason, moved));
                    }
                }
                Action::Evict { lease, reason } => evictions.push((lease, reason)),
            }
        }
        let mut moved = 0u64;
        for (lease, reason, answer) in moves {
            match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(Ok(true)) => moved += 1,
                Ok(Ok(false)) => {
                    evictions.push((lease, format!("reclaimed: {reason}, and moving failed")))
                }
                // Gone meanwhile, or too slow to answer: evict it.
                _ => evictions.push((lease, format!("reclaimed: {reason}"))),
            }
        }
        let boost =
            (!evictions.is_empty()).then(|| self.leases.context().parent.boost(EXIT_CPU_WEIGHT));
        let mut answers = Vec::new();
        for (lease, reason) in &evictions {
            let (gone, answer) = oneshot::channel();
            let msg = LeaseMessage::Evict {
                reason: reason.clone(),
                gone,
                teardown_delay: self.teardown_delay,
            };
            if self.leases.send(lease, msg).await.is_ok() {
                answers.push((lease.clone(), answer));
            }
        }
        let signalled = started.elapsed();
        let mut evicted = Vec::new();
        let mut overrun = false;
        for (lease, answer) in answers {
            match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(Ok(Evicted { empty, first })) => {
                    overrun |= !empty;
                    if first {
                        evicted.push(lease);
                    }
                }
                // The task ended meanwhile: its group was removed after it was emptied.
                Ok(Err(_)) => {}
                Err(_) => {
                    overrun = true;
                    evicted.push(lease);
                }
            }
        }
        drop(boost);
        if evicted.is_empty() && moved == 0 && !overrun {
            return None;
        }
        let outcome = ReclaimOutcome {
            evicted: evicted.len() as u64,
            moved,
            latency: started.elapsed(),
            overrun,
        };
        self.stats.record_reclaim(outcome);
        if outcome.overrun {
            tracing::error!(leases = ?evicted, timeout = ?self.timeout,
                latency_us = outcome.latency.as_micros() as u64,
                signalled_us = signalled.as_micros() as u64,
                "reclaim overrun: executors still alive when the batch step was let go");
        } else {
            tracing::info!(evicted = ?evicted, moved, latency_us = outcome.latency.as_micros() as u64,
                signalled_us = signalled.as_micros() as u64, "reclaimed for a batch step");
        }
        Some(outcome)
    }
}
