//! A trace in memory: its jobs, how they were allocated, its own utilization, and the job
//! stream one simulation runs (time-shifted copies, jobs already running at the start).
//!
//! Loading keeps 40 bytes a job (RICC's 447,794 jobs take 18 MB), so windows and copies are
//! index ranges instead of re-reading the gzip file.

use std::path::Path;

use serde::Serialize;

use super::batch::BatchJob;
use crate::machine::Machine;
use crate::swf::{SwfError, SwfHeader, SwfReader};

/// One usable record, times in seconds of the trace's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceJob {
    pub id: u64,
    pub submit: i64,
    /// `None` when the trace has no wait time (its start is then taken as the submit time).
    pub wait: Option<i64>,
    pub run: i64,
    pub req: i64,
    pub procs: u32,
    /// Memory per processor (standard SWF: used, else requested), MiB.
    pub mem_proc_mib: Option<u32>,
    /// Memory per node (Alea's extended SWF), MiB.
    pub mem_node_mib: Option<u32>,
    /// The fair-share account: [`account`] of the SWF user and group.
    pub account: u64,
    /// The job's queue, an index into [`Trace::queues`].
    pub queue: Option<u32>,
}

/// The account of jobs whose trace gives neither user nor group (they share one account).
pub const UNKNOWN_ACCOUNT: u64 = 1 << 33;

/// A job's fair-share account: its user, else its group (kept apart from the users' numbers,
/// so group 5 is not user 5), else [`UNKNOWN_ACCOUNT`]. Below 2^34 (see `BatchJob::account`).
pub fn account(user: Option<u32>, group: Option<u32>) -> u64 {
    match (user, group) {
        (Some(u), _) => u64::from(u),
        (None, Some(g)) => (1 << 32) | u64::from(g),
        (None, None) => UNKNOWN_ACCOUNT,
    }
}

impl TraceJob {
    /// When the trace's scheduler started it (submit + wait; submit when the wait is unknown).
    pub fn start(&self) -> i64 {
        self.submit + self.wait.unwrap_or(0).max(0)
    }
}

/// What was read and what was left out.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TraceCounts {
    pub records: u64,
    pub jobs: u64,
    pub skipped_no_runtime: u64,
    pub skipped_no_procs: u64,
    pub without_wait: u64,
    /// Jobs with memory (used, else requested), and of them those whose record gives the
    /// memory used (SWF field 7; Alea's extended SWF gives only requested memory).
    pub with_memory: u64,
    pub with_used_memory: u64,
}

/// How batch jobs get cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationMode {
    /// Decide from the trace's data (see [`Trace::auto_allocation`]).
    Auto,
    /// Core-granular: jobs share nodes (Slurm's `select/cons_tres` without `--exclusive`).
    Shared,
    /// Whole nodes: `ceil(procs / cores)` nodes a job.
    Exclusive,
}

/// Share of jobs whose processor count is a multiple of the node size above which the trace is
/// taken as node-exclusive.
pub const EXCLUSIVE_MIN_FULL_NODE_SHARE: f64 = 0.9;

/// A whole trace.
#[derive(Debug, Clone)]
pub struct Trace {
    pub header: SwfHeader,
    /// Sorted by submit time.
    pub jobs: Vec<TraceJob>,
    pub counts: TraceCounts,
    /// The trace's queue names (SWF field 15's numbers, or Alea's names), by [`TraceJob::queue`].
    pub queues: Vec<String>,
}

impl Trace {
    pub fn load(path: &Path) -> Result<Self, SwfError> {
        Self::from_reader(SwfReader::open(path)?)
    }

    pub fn from_reader(mut reader: SwfReader) -> Result<Self, SwfError> {
        let header = reader.header().clone();
        let mut jobs = Vec::new();
        let mut counts = TraceCounts::default();
        for rec in reader.by_ref() {
            let j = rec?;
            counts.records += 1;
            let Some(run) = j.run.filter(|&r| r > 0) else {
                counts.skipped_no_runtime += 1;
                continue;
            };
            let Some(procs) = j.procs() else {
                counts.skipped_no_procs += 1;
                continue;
            };
            counts.jobs += 1;
            counts.without_wait += u64::from(j.wait.is_none());
            let mem_proc = j.mem_per_proc_kib().map(|k| k.div_ceil(1024) as u32);
            let mem_node = j.mem_per_node_mib().map(|m| m as u32);
            counts.with_memory += u64::from(mem_proc.is_some() || mem_node.is_some());
            counts.with_used_memory +=
                u64::from(!j.extended && j.used_mem_kib.is_some_and(|m| m > 0));
            jobs.push(TraceJob {
                id: j.id,
                submit: j.submit,
                wait: j.wait,
                run,
                req: j.req_time.filter(|&r| r > 0).unwrap_or(run),
                procs: procs.min(u64::from(u32::MAX)) as u32,
                mem_proc_mib: mem_proc,
                mem_node_mib: mem_node,
                account: account(j.user, j.group),
                queue: j.queue,
            });
        }
        jobs.sort_by_key(|j| j.submit);
        Ok(Self {
            header,
            jobs,
            counts,
            queues: reader.queues().to_vec(),
        })
    }

    pub fn first_submit(&self) -> i64 {
        self.jobs.first().map_or(0, |j| j.submit)
    }

    /// Seconds from the first to the last submission.
    pub fn span_s(&self) -> i64 {
        self.jobs.last().map_or(0, |j| j.submit) - self.first_submit()
    }

    /// Node-exclusive when at least [`EXCLUSIVE_MIN_FULL_NODE_SHARE`] of the jobs ask for a
    /// multiple of the node size (they fill nodes), core-granular otherwise; a machine of
    /// several shapes is core-granular. Returns the mode and the figure it was decided on.
    pub fn auto_allocation(&self, m: &Machine) -> (AllocationMode, String) {
        if !m.homogeneous() {
            return (
                AllocationMode::Shared,
                "several node shapes: core-granular".into(),
            );
        }
        let full = self.jobs.iter().filter(|j| j.procs % m.cores == 0).count();
        let share = full as f64 / self.jobs.len().max(1) as f64;
        let mode = if share >= EXCLUSIVE_MIN_FULL_NODE_SHARE {
            AllocationMode::Exclusive
        } else {
            AllocationMode::Shared
        };
        (
            mode,
            format!(
                "{:.1}% of jobs ask for a multiple of {} cores (node-exclusive at >= {:.0}%)",
                100.0 * share,
                m.cores,
                100.0 * EXCLUSIVE_MIN_FULL_NODE_SHARE
            ),
        )
    }

    /// Core utilization of the trace's own schedule over `[from, to)` (trace seconds) on
    /// `cores` cores, and the peak of cores in use at job starts (above `cores` when the
    /// trace's start times over-fill the machine, e.g. because its waits are unknown).
    pub fn own_utilization(&self, from: i64, to: i64, cores: u64) -> (f64, u64) {
        let mut core_s = 0f64;
        let mut edges: Vec<(i64, i64)> = Vec::new();
        for j in &self.jobs {
            let (s, e) = (j.start(), j.start() + j.run);
            if e <= from || s >= to {
                continue;
            }
            core_s += f64::from(j.procs) * (e.min(to) - s.max(from)) as f64;
            edges.push((s.max(from), i64::from(j.procs)));
            edges.push((e.min(to), -i64::from(j.procs)));
        }
        edges.sort_unstable();
        let (mut cur, mut peak) = (0i64, 0i64);
        for (_, d) in edges {
            cur += d;
            peak = peak.max(cur);
        }
        (
            core_s / (cores as f64 * (to - from).max(1) as f64),
            peak.max(0) as u64,
        )
    }

    /// Jobs waiting in the trace's own queue at trace time `t` (submitted, not yet started).
    pub fn own_queue_at(&self, t: i64) -> u64 {
        let end = self.jobs.partition_point(|j| j.submit <= t);
        self.jobs[..end].iter().filter(|j| j.start() > t).count() as u64
    }

    /// The jobs one copy contributes: trace time `origin` is simulated time 0; records
    /// submitted before `origin` but running at it per the trace start at 0 with what is left
    /// of their run (`prestarted`); records submitted before `origin` but still waiting at it
    /// per the trace are in the queue at 0 (submit 0, their trace start kept); records up to
    /// `horizon_s` of simulated time follow.
    pub fn copy_jobs(&self, origin: i64, horizon_s: i64, copy: u32, out: &mut Vec<BatchJob>) {
        let first = self.jobs.partition_point(|j| j.submit < origin);
        for j in &self.jobs[..first] {
            let (s, e) = (j.start(), j.start() + j.run);
            if s >= origin {
                // Queued at the origin: leaving it out would drop load the trace's machine
                // ran in the window (KTH: 46 of its 76 points in the first window).
                let mut b = BatchJob::from_trace(j, copy, 0);
                b.trace_start_ms = Some((s - origin) as u64 * 1000);
                out.push(b);
            } else if e > origin {
                let left = e - origin;
                out.push(BatchJob {
                    prestarted: true,
                    submit_ms: 0,
                    run_ms: left as u64 * 1000,
                    req_ms: (j.req - (origin - s)).max(left) as u64 * 1000,
                    trace_start_ms: Some(0),
                    ..BatchJob::from_trace(j, copy, 0)
                });
            }
        }
        for j in &self.jobs[first..] {
            let t = j.submit - origin;
            if t >= horizon_s {
                break;
            }
            let mut b = BatchJob::from_trace(j, copy, t as u64 * 1000);
            // A trace start before the submit (clock noise) counts as the submit.
            b.trace_start_ms = Some(((j.start() - origin).max(t)) as u64 * 1000);
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(text: &'static str) -> Trace {
        Trace::from_reader(
            SwfReader::from_reader(Path::new("t.swf"), Box::new(text.as_bytes())).unwrap(),
        )
        .unwrap()
    }

    const T: &str = "; MaxNodes: 2\n; MaxProcs: 8\n\
        1 0 0 100 4 -1 -1 4 200 -1 1 1 1 -1 1 -1 -1 -1\n\
        2 50 10 100 8 -1 1024 8 100 -1 1 1 1 -1 1 -1 -1 -1\n\
        3 300 -1 10 2 -1 -1 2 -1 -1 1 1 1 -1 1 -1 -1 -1\n";

    #[test]
    fn own_utilization_is_exact() {
        let t = trace(T);
        // [0,100): job 1 (4 cores, 0-100) and job 2 (8 cores, 60-160) -> 4*100 + 8*40 = 720
        // core-s of 800.
        let (u, peak) = t.own_utilization(0, 100, 8);
        assert!((u - 0.9).abs() < 1e-12, "{u}");
        assert_eq!(peak, 12, "the trace over-fills 8 cores at t=60");
        assert_eq!(t.counts.without_wait, 1);
        assert_eq!(t.counts.with_memory, 1);
        assert_eq!(
            t.counts.with_used_memory, 1,
            "job 2 used 1024 KiB a processor"
        );
        // At 55 job 2 (submitted 50, started 60) waits; at 60 it has started.
        assert_eq!((t.own_queue_at(55), t.own_queue_at(60)), (1, 0));
    }

    #[test]
    fn copies_start_with_the_jobs_running_at_the_origin() {
        let t = trace(T);
        let mut out = Vec::new();
        t.copy_jobs(80, 1000, 0, &mut out);
        // Job 1 (0-100) and job 2 (60-160) are running at 80; job 3 is submitted at 220.
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|b| b.copy == 0));
        assert!(out[0].prestarted && out[0].run_ms == 20_000);
        assert_eq!(out[0].req_ms, 120_000, "what is left of the 200 s limit");
        assert!(out[1].prestarted && out[1].run_ms == 80_000);
        assert_eq!(
            (out[2].submit_ms, out[2].trace_start_ms),
            (220_000, Some(220_000))
        );
    }

    #[test]
    fn copies_keep_the_jobs_queued_at_the_origin() {
        let t = trace(T);
        let mut out = Vec::new();
        // At 55 job 1 runs (0-100) and job 2 (submitted 50, started 60) waits in the queue.
        t.copy_jobs(55, 1000, 0, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out[0].prestarted && out[0].run_ms == 45_000);
        let queued = out[1];
        assert_eq!(queued.id, 2);
        assert!(!queued.prestarted, "queued, not running");
        assert_eq!(queued.submit_ms, 0);
        assert_eq!(queued.trace_start_ms, Some(5_000));
        assert_eq!(queued.run_ms, 100_000, "its whole run is still to come");
    }

    #[test]
    fn allocation_is_decided_from_the_data() {
        let t = trace(T);
        let m = crate::machine::machine_for(
            Path::new("t.swf"),
            &t.header,
            &crate::machine::MachineFlags::default(),
        )
        .unwrap();
        // 2 of 3 jobs ask for a multiple of 4 cores: 67% < 90%.
        assert_eq!(t.auto_allocation(&m).0, AllocationMode::Shared);
    }
}
