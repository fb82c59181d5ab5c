//! Batch jobs: from SWF records to jobs on a cluster, and the Slurm-like queue that starts them.
//!
//! Jobs get whole nodes (Slurm's exclusive allocation, as on Piz Daint): `ceil(procs / cores)`
//! nodes, the processors spread evenly over them. What a job does not use on its nodes (cores
//! beyond its processors, memory beyond its footprint) is what functions can harvest, together
//! with the nodes no job holds.
//!
//! The queue is FCFS with EASY backfill (Slurm's `sched/backfill` in its simplest form): the head
//! job starts when enough nodes are free; otherwise it gets a reservation at the earliest time
//! the running jobs' requested time limits free enough nodes (the shadow time), and later jobs
//! (at most `depth` of them, like `bf_max_job_test`) start now if they fit and either end before
//! the shadow time or use only nodes the head job will not need. In replay mode jobs start when
//! the trace says they did (submit + wait), in order, as soon as nodes allow.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::swf::{SwfError, SwfJob, SwfReader};

/// How batch jobs are placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BatchMode {
    /// FCFS with EASY backfill.
    Easy,
    /// Start times from the trace (submit + wait).
    Replay,
}

/// A job as the simulator runs it. Times in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchJob {
    pub id: u64,
    pub submit_ms: u64,
    pub run_ms: u64,
    /// The time limit the scheduler plans with (requested time, else the run time).
    pub req_ms: u64,
    pub nodes: u32,
    pub procs: u64,
    pub mem_per_proc_mib: Option<u64>,
    /// Known to be sensitive to co-location (interference-aware policies avoid its nodes).
    pub sensitive: bool,
    pub replay_start_ms: Option<u64>,
}

impl BatchJob {
    /// Cores on the `i`-th of the job's nodes.
    pub fn cores_on(&self, i: u32) -> u32 {
        let n = u64::from(self.nodes);
        (self.procs / n + u64::from(u64::from(i) < self.procs % n)) as u32
    }
}

/// Why trace records were not simulated.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SourceStats {
    pub records: u64,
    pub jobs: u64,
    pub skipped_no_runtime: u64,
    pub skipped_no_procs: u64,
    pub skipped_too_large: u64,
    pub skipped_no_wait: u64,
    pub skipped_before_start: u64,
}

/// Reads jobs lazily, `copies` times each (to scale a trace to a larger cluster).
#[derive(Debug)]
pub struct JobSource {
    reader: SwfReader,
    buf: VecDeque<BatchJob>,
    pub copies: u32,
    cores: u32,
    cluster_nodes: u32,
    end_ms: u64,
    max_records: Option<u64>,
    sensitive_fraction: f64,
    replay: bool,
    rng: Rng,
    /// The first record's submit time: simulated time 0 (traces start days into their epoch).
    origin: Option<i64>,
    /// Records submitted earlier than this many seconds after the first are skipped.
    start_s: i64,
    pub stats: SourceStats,
}

impl JobSource {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reader: SwfReader,
        start_s: u64,
        copies: u32,
        cores: u32,
        cluster_nodes: u32,
        end_ms: u64,
        max_records: Option<u64>,
        sensitive_fraction: f64,
        replay: bool,
        seed: u64,
    ) -> Self {
        Self {
            reader,
            buf: VecDeque::new(),
            copies: copies.max(1),
            cores,
            cluster_nodes,
            end_ms,
            max_records,
            sensitive_fraction,
            replay,
            rng: Rng::new(seed).fork(0xb7),
            origin: None,
            start_s: start_s as i64,
            stats: SourceStats::default(),
        }
    }

    fn convert(&mut self, j: &SwfJob) -> Option<BatchJob> {
        let Some(run) = j.run.filter(|&r| r > 0) else {
            self.stats.skipped_no_runtime += 1;
            return None;
        };
        let Some(procs) = j.procs() else {
            self.stats.skipped_no_procs += 1;
            return None;
        };
        let nodes = procs.div_ceil(u64::from(self.cores));
        if nodes > u64::from(self.cluster_nodes) {
            self.stats.skipped_too_large += 1;
            return None;
        }
        let origin = *self.origin.get_or_insert(j.submit + self.start_s);
        if j.submit < origin {
            self.stats.skipped_before_start += 1;
            return None;
        }
        let submit_ms = (j.submit - origin) as u64 * 1000;
        let replay_start_ms = match (self.replay, j.wait) {
            (false, _) => None,
            (true, Some(w)) => Some(submit_ms + w as u64 * 1000),
            (true, None) => {
                self.stats.skipped_no_wait += 1;
                return None;
            }
        };
        let run_ms = run as u64 * 1000;
        Some(BatchJob {
            id: j.id,
            submit_ms,
            run_ms,
            req_ms: j
                .req_time
                .filter(|&r| r > 0)
                .map_or(run_ms, |r| r as u64 * 1000),
            nodes: nodes as u32,
            procs,
            mem_per_proc_mib: j.mem_per_proc_kib().map(|k| k.div_ceil(1024)),
            sensitive: false,
            replay_start_ms,
        })
    }

    /// The submit time of the next job, reading the trace as needed.
    pub fn peek_ms(&mut self) -> Result<Option<u64>, SwfError> {
        while self.buf.is_empty() {
            let counted = self.stats.records - self.stats.skipped_before_start;
            if self.max_records.is_some_and(|m| counted >= m) {
                return Ok(None);
            }
            let Some(rec) = self.reader.next().transpose()? else {
                return Ok(None);
            };
            self.stats.records += 1;
            let Some(job) = self.convert(&rec) else {
                continue;
            };
            if job.submit_ms >= self.end_ms {
                return Ok(None);
            }
            for copy in 0..self.copies {
                let mut j = job;
                j.id = job.id * u64::from(self.copies) + u64::from(copy);
                j.sensitive = self.rng.unit() < self.sensitive_fraction;
                self.stats.jobs += 1;
                self.buf.push_back(j);
            }
        }
        Ok(self.buf.front().map(|j| j.submit_ms))
    }

    pub fn pop(&mut self) -> Option<BatchJob> {
        self.buf.pop_front()
    }
}

/// The waiting jobs and the planned ends of the running ones.
#[derive(Debug)]
pub struct BatchQueue {
    pub mode: BatchMode,
    pub depth: usize,
    queue: VecDeque<BatchJob>,
    /// `(planned end, running slot, nodes)`.
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

    pub fn track_start(&mut self, planned_end_ms: u64, slot: u32, nodes: u32) {
        self.planned_ends.insert((planned_end_ms, slot, nodes));
    }

    pub fn track_end(&mut self, planned_end_ms: u64, slot: u32, nodes: u32) {
        self.planned_ends.remove(&(planned_end_ms, slot, nodes));
    }

    /// The head job, removed, if it may start now on `free` nodes.
    pub fn pop_head(&mut self, now: u64, free: u32) -> Option<BatchJob> {
        let head = self.queue.front()?;
        if head.replay_start_ms.is_some_and(|s| s > now) || head.nodes > free {
            return None;
        }
        self.queue.pop_front()
    }

    /// Jobs behind a blocked head that EASY backfill starts now, removed from the queue.
    pub fn backfill(&mut self, now: u64, mut free: u32) -> Vec<BatchJob> {
        if self.mode != BatchMode::Easy || self.queue.len() < 2 || free == 0 {
            return Vec::new();
        }
        let need = self.queue[0].nodes;
        let mut avail = free;
        let mut shadow = u64::MAX;
        for &(end, _, nodes) in &self.planned_ends {
            avail += nodes;
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
            if j.nodes <= free && (ends_in_time || j.nodes <= extra) {
                if !ends_in_time {
                    extra -= j.nodes;
                }
                free -= j.nodes;
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

    fn job(id: u64, nodes: u32, req_s: u64) -> BatchJob {
        BatchJob {
            id,
            submit_ms: 0,
            run_ms: req_s * 1000,
            req_ms: req_s * 1000,
            nodes,
            procs: u64::from(nodes) * 4,
            mem_per_proc_mib: None,
            sensitive: false,
            replay_start_ms: None,
        }
    }

    #[test]
    fn cores_are_spread_evenly() {
        let j = BatchJob {
            procs: 10,
            nodes: 3,
            ..job(1, 3, 1)
        };
        assert_eq!((j.cores_on(0), j.cores_on(1), j.cores_on(2)), (4, 3, 3));
    }

    #[test]
    fn easy_backfills_short_jobs_and_jobs_that_use_spare_nodes_only() {
        // 10 nodes; a running job holds 6 until t=100 s; 4 are free.
        let mut q = BatchQueue::new(BatchMode::Easy, 100);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50)); // head: needs 8, shadow at 100 s, extra = 10 - 8 = 2
        q.submit(job(2, 3, 200)); // too long and more than extra: waits
        q.submit(job(3, 3, 90)); // ends before the shadow: backfilled
        q.submit(job(4, 1, 500)); // long but fits in extra (2): backfilled
        q.submit(job(5, 1, 500)); // fits in free (0 left after 3+1)? no: free is 0
        assert!(q.pop_head(0, 4).is_none());
        let started: Vec<u64> = q.backfill(0, 4).iter().map(|j| j.id).collect();
        assert_eq!(started, [3, 4]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn backfill_depth_bounds_the_scan_and_replay_waits_for_the_trace_time() {
        let mut q = BatchQueue::new(BatchMode::Easy, 1);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50));
        q.submit(job(2, 5, 10)); // does not fit
        q.submit(job(3, 1, 10)); // would fit but is beyond depth 1
        assert!(q.backfill(0, 4).is_empty());

        let mut r = BatchQueue::new(BatchMode::Replay, 100);
        r.submit(BatchJob {
            replay_start_ms: Some(5_000),
            ..job(1, 1, 10)
        });
        assert!(r.pop_head(4_999, 10).is_none());
        assert_eq!(r.pop_head(5_000, 10).map(|j| j.id), Some(1));
    }
}
