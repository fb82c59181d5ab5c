//! Batch jobs and the Slurm-like queue that starts them.
//!
//! A job needs `units` of the cluster: cores when jobs share nodes (core-granular), whole nodes
//! when they are node-exclusive (see [`super::alloc`]). The queue is FCFS with EASY backfill
//! (Slurm's `sched/backfill` in its simplest form): the head job starts when enough units are
//! free; otherwise it gets a reservation at the earliest time the running jobs' requested time
//! limits free enough units (the shadow time), and later jobs (at most `depth` of them, like
//! `bf_max_job_test`) start now if they fit and either end before the shadow time or use only
//! units the head job will not need. In replay mode a job enters the queue at the trace's own
//! start time and starts as soon as it fits (at once, when the trace fits the model).

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::trace::TraceJob;

/// How batch jobs are placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BatchMode {
    /// FCFS with EASY backfill.
    Easy,
    /// The trace's own start times (submit + wait).
    Replay,
}

/// A job as the simulator runs it. Times in milliseconds of simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchJob {
    pub id: u64,
    /// Which time-shifted copy of the trace it comes from.
    pub copy: u32,
    pub submit_ms: u64,
    /// Run time alone (interference stretches it).
    pub run_ms: u64,
    /// The time limit the scheduler plans with (requested time, else the run time).
    pub req_ms: u64,
    pub procs: u32,
    /// Cores or nodes, by allocation mode (set by the engine).
    pub units: u32,
    pub mem_proc_mib: Option<u32>,
    pub mem_node_mib: Option<u32>,
    /// Known to be sensitive to co-location (interference-aware policies avoid its nodes).
    pub sensitive: bool,
    /// When the trace started it (simulated time), if the trace says.
    pub trace_start_ms: Option<u64>,
    /// Running at simulated time 0 per the trace (a window's warm start).
    pub prestarted: bool,
}

impl BatchJob {
    pub fn from_trace(j: &TraceJob, copy: u32, submit_ms: u64) -> Self {
        Self {
            id: j.id,
            copy,
            submit_ms,
            run_ms: j.run as u64 * 1000,
            req_ms: j.req.max(j.run) as u64 * 1000,
            procs: j.procs,
            units: j.procs,
            mem_proc_mib: j.mem_proc_mib,
            mem_node_mib: j.mem_node_mib,
            sensitive: false,
            trace_start_ms: None,
            prestarted: false,
        }
    }
}

/// The waiting jobs and the planned ends of the running ones.
#[derive(Debug)]
pub struct BatchQueue {
    pub mode: BatchMode,
    pub depth: usize,
    queue: VecDeque<BatchJob>,
    /// `(planned end, running slot, units)`.
    planned_ends: BTreeSet<(u64, u32, u32)>,
}

impl BatchQueue {
    pub fn new(mode: BatchMode, depth: usize) -> Self {
        Self {
            mode,
            depth,
            queue: VecDeque::new(),
            planned_ends: BTreeSet::new(),
        }
    }

    pub fn submit(&mut self, job: BatchJob) {
        self.queue.push_back(job);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn track_start(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends.insert((planned_end_ms, slot, units));
    }

    pub fn track_end(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends.remove(&(planned_end_ms, slot, units));
    }

    /// The head job, removed, if it may start now on `free` units.
    pub fn pop_head(&mut self, free: u32) -> Option<BatchJob> {
        if self.queue.front()?.units > free {
            return None;
        }
        self.queue.pop_front()
    }

    /// Replay: every queued job that fits in `free`, in queue order, removed.
    pub fn replay_ready(&mut self, mut free: u32) -> Vec<BatchJob> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.queue.len() && free > 0 {
            if self.queue[i].units <= free {
                free -= self.queue[i].units;
                out.push(self.queue.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Jobs behind a blocked head that EASY backfill starts now, removed from the queue.
    pub fn backfill(&mut self, now: u64, mut free: u32) -> Vec<BatchJob> {
        if self.mode != BatchMode::Easy || self.queue.len() < 2 || free == 0 {
            return Vec::new();
        }
        let need = self.queue[0].units;
        let mut avail = free;
        let mut shadow = u64::MAX;
        for &(end, _, units) in &self.planned_ends {
            avail += units;
            if avail >= need {
                shadow = end.max(now);
                break;
            }
        }
        let mut extra = avail.saturating_sub(need);
        let mut chosen = Vec::new();
        let limit = self.queue.len().min(self.depth + 1);
        let mut i = 1;
        let mut scanned = 1;
        while i < self.queue.len() && scanned < limit && free > 0 {
            scanned += 1;
            let j = &self.queue[i];
            let ends_in_time = now + j.req_ms <= shadow;
            if j.units <= free && (ends_in_time || j.units <= extra) {
                if !ends_in_time {
                    extra -= j.units;
                }
                free -= j.units;
                chosen.push(self.queue.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, units: u32, req_s: u64) -> BatchJob {
        BatchJob {
            id,
            copy: 0,
            submit_ms: 0,
            run_ms: req_s * 1000,
            req_ms: req_s * 1000,
            procs: units,
            units,
            mem_proc_mib: None,
            mem_node_mib: None,
            sensitive: false,
            trace_start_ms: None,
            prestarted: false,
        }
    }

    #[test]
    fn easy_backfills_short_jobs_and_jobs_that_use_spare_units_only() {
        // 10 units; a running job holds 6 until t=100 s; 4 are free.
        let mut q = BatchQueue::new(BatchMode::Easy, 100);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50)); // head: needs 8, shadow at 100 s, extra = 10 - 8 = 2
        q.submit(job(2, 3, 200)); // too long and more than extra: waits
        q.submit(job(3, 3, 90)); // ends before the shadow: backfilled
        q.submit(job(4, 1, 500)); // long but fits in extra (2): backfilled
        q.submit(job(5, 1, 500)); // fits in extra but free is 0 after 3 + 1
        assert!(q.pop_head(4).is_none());
        let started: Vec<u64> = q.backfill(0, 4).iter().map(|j| j.id).collect();
        assert_eq!(started, [3, 4]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn backfill_depth_bounds_the_scan_and_replay_starts_whatever_fits() {
        let mut q = BatchQueue::new(BatchMode::Easy, 1);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50));
        q.submit(job(2, 5, 10)); // does not fit
        q.submit(job(3, 1, 10)); // would fit but is beyond depth 1
        assert!(q.backfill(0, 4).is_empty());

        let mut r = BatchQueue::new(BatchMode::Replay, 100);
        r.submit(job(1, 3, 10));
        r.submit(job(2, 5, 10));
        r.submit(job(3, 1, 10));
        let ids: Vec<u64> = r.replay_ready(4).iter().map(|j| j.id).collect();
        assert_eq!(
            ids,
            [1, 3],
            "job 2 waits for room, job 3 does not wait behind it"
        );
    }
}
