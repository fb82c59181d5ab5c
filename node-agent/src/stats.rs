//! What the agent counts and reports beside its view: reclaims, interference, Slurm's drain.
//!
//! One [`NodeStats`] per agent, shared (`Arc`) by the plugin server (reclaims), the interference
//! monitor, the executors and the scheduler session, which copies it into every `SlotReport`
//! (so `harvest nodes --json` and the metrics show it). Counters only grow within one agent
//! incarnation; the scheduler keys them by the report's version.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use harvest_proto::v1;

/// Counters and states, safe to update from any task.
#[derive(Debug, Default)]
pub struct NodeStats {
    reclaims: AtomicU64,
    reclaim_evictions: AtomicU64,
    reclaim_moves: AtomicU64,
    reclaim_overruns: AtomicU64,
    reclaim_latency_us_sum: AtomicU64,
    reclaim_latency_us_max: AtomicU64,
    interference_actions: AtomicU64,
    draining: AtomicBool,
    interference: Mutex<Option<v1::InterferenceState>>,
}

/// A snapshot of the counters: the same shape `harvest nodes --json` shows.
pub use harvest_proto::views::NodeCountersView as Counters;

/// What one reclaim did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReclaimOutcome {
    pub evicted: u64,
    pub moved: u64,
    pub latency: Duration,
    pub overrun: bool,
}

impl NodeStats {
    /// Counts a reclaim that touched at least one executor.
    pub fn record_reclaim(&self, r: ReclaimOutcome) {
        let us = u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX);
        self.reclaims.fetch_add(1, Ordering::Relaxed);
        self.reclaim_evictions
            .fetch_add(r.evicted, Ordering::Relaxed);
        self.reclaim_moves.fetch_add(r.moved, Ordering::Relaxed);
        if r.overrun {
            self.reclaim_overruns.fetch_add(1, Ordering::Relaxed);
        }
        self.reclaim_latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.reclaim_latency_us_max.fetch_max(us, Ordering::Relaxed);
    }

    pub fn record_interference_action(&self) {
        self.interference_actions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Counters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            reclaims: get(&self.reclaims),
            reclaim_evictions: get(&self.reclaim_evictions),
            reclaim_moves: get(&self.reclaim_moves),
            reclaim_overruns: get(&self.reclaim_overruns),
            reclaim_latency_us_sum: get(&self.reclaim_latency_us_sum),
            reclaim_latency_us_max: get(&self.reclaim_latency_us_max),
            interference_actions: get(&self.interference_actions),
        }
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The interference monitor's latest verdict (`None`: no monitor runs).
    pub fn set_interference(&self, state: Option<v1::InterferenceState>) {
        *self.interference.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn interference(&self) -> Option<v1::InterferenceState> {
        self.interference
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reclaims_add_up_and_keep_the_worst_latency() {
        let s = NodeStats::default();
        s.record_reclaim(ReclaimOutcome {
            evicted: 2,
            moved: 0,
            latency: Duration::from_micros(1500),
            overrun: false,
        });
        s.record_reclaim(ReclaimOutcome {
            evicted: 0,
            moved: 1,
            latency: Duration::from_micros(500),
            overrun: true,
        });
        let c = s.counters();
        assert_eq!(
            (
                c.reclaims,
                c.reclaim_evictions,
                c.reclaim_moves,
                c.reclaim_overruns
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(
            (c.reclaim_latency_us_sum, c.reclaim_latency_us_max),
            (2000, 1500)
        );
        let wire = v1::NodeCounters::from(c);
        assert_eq!(wire.reclaims, 2);
    }
}
