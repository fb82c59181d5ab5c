//! Honest bookkeeping: what functions were offered, served, refused and lost, and what the
//! batch jobs submitted in the window waited and how much they were slowed.
//!
//! A reclaimed lease is a failure: the core time it used is *wasted*, and its work is *lost*
//! unless a retry (`--retries`) places it again and it completes. So per stream
//! `offered = served + refused + lost + in flight at the stop`.

use serde::Serialize;

use super::batch::BatchJob;
use super::demand::FnRequest;
use super::engine::Running;

/// One stream's accounts, in core-milliseconds until [`StreamAccount::hours`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamAccount {
    pub requests: u64,
    pub leases_started: u64,
    pub reclaims: u64,
    pub retries: u64,
    pub refused_requests: u64,
    pub offered_core_hours: f64,
    pub served_core_hours: f64,
    pub refused_core_hours: f64,
    pub lost_to_reclaim_core_hours: f64,
    pub wasted_core_hours: f64,
    pub in_flight_core_hours: f64,
    pub invocations_offered: f64,
    pub invocations_served: f64,
}

/// Invocation waits (lease placement delay, weighted by invocations) in 1 ms buckets to 60 s.
const WAIT_BUCKETS: usize = 60_001;

/// Every stream's accounts and the invocation waits.
#[derive(Debug, Clone)]
pub struct Accounts {
    pub streams: Vec<StreamAccount>,
    waits: Vec<f64>,
}

impl Accounts {
    pub fn new(streams: usize) -> Self {
        Self {
            streams: vec![StreamAccount::default(); streams.max(1)],
            waits: vec![0.0; WAIT_BUCKETS],
        }
    }

    fn s(&mut self, r: &FnRequest) -> &mut StreamAccount {
        let i = usize::from(r.stream).min(self.streams.len() - 1);
        &mut self.streams[i]
    }

    pub fn offered(&mut self, r: &FnRequest) {
        let s = self.s(r);
        s.requests += 1;
        s.offered_core_hours += r.work_core_ms();
        s.invocations_offered += r.invocations;
    }

    pub fn served(&mut self, r: &FnRequest, _ran_ms: u64, wait_ms: u64) {
        let s = self.s(r);
        s.served_core_hours += r.work_core_ms();
        s.invocations_served += r.invocations;
        self.waits[(wait_ms as usize).min(WAIT_BUCKETS - 1)] += r.invocations;
    }

    pub fn started(&mut self, r: &FnRequest) {
        self.s(r).leases_started += 1;
    }

    pub fn reclaimed(&mut self, r: &FnRequest, used_core_ms: f64, retry: bool, _in_window: bool) {
        let s = self.s(r);
        s.reclaims += 1;
        s.wasted_core_hours += used_core_ms;
        if retry {
            s.retries += 1;
        } else {
            s.lost_to_reclaim_core_hours += r.work_core_ms();
        }
    }

    /// Never placed within the wait limit; a retry that finds no room is lost to reclaim.
    pub fn refused(&mut self, r: &FnRequest, was_retry: bool) {
        let s = self.s(r);
        if was_retry {
            s.lost_to_reclaim_core_hours += r.work_core_ms();
        } else {
            s.refused_requests += 1;
            s.refused_core_hours += r.work_core_ms();
        }
    }

    pub fn in_flight(&mut self, r: &FnRequest) {
        self.s(r).in_flight_core_hours += r.work_core_ms();
    }

    /// Converts core-milliseconds to core-hours (once, at the end).
    pub fn hours(&mut self) {
        for s in &mut self.streams {
            for v in [
                &mut s.offered_core_hours,
                &mut s.served_core_hours,
                &mut s.refused_core_hours,
                &mut s.lost_to_reclaim_core_hours,
                &mut s.wasted_core_hours,
                &mut s.in_flight_core_hours,
            ] {
                *v /= 3.6e6;
            }
        }
    }

    /// The `q` quantile of the served invocations' wait for a lease, ms (60,000 = at least).
    pub fn wait_quantile_ms(&self, q: f64) -> f64 {
        let total: f64 = self.waits.iter().sum();
        if total == 0.0 {
            return 0.0;
        }
        let mut seen = 0.0;
        for (i, w) in self.waits.iter().enumerate() {
            seen += w;
            if seen >= q * total {
                return i as f64;
            }
        }
        (WAIT_BUCKETS - 1) as f64
    }

    pub fn total(&self) -> StreamAccount {
        let mut t = StreamAccount::default();
        for s in &self.streams {
            t.requests += s.requests;
            t.leases_started += s.leases_started;
            t.reclaims += s.reclaims;
            t.retries += s.retries;
            t.refused_requests += s.refused_requests;
            t.offered_core_hours += s.offered_core_hours;
            t.served_core_hours += s.served_core_hours;
            t.refused_core_hours += s.refused_core_hours;
            t.lost_to_reclaim_core_hours += s.lost_to_reclaim_core_hours;
            t.wasted_core_hours += s.wasted_core_hours;
            t.in_flight_core_hours += s.in_flight_core_hours;
            t.invocations_offered += s.invocations_offered;
            t.invocations_served += s.invocations_served;
        }
        t
    }
}

/// The jobs submitted in the measured window: waits, bounded slowdowns, start-time error
/// against the trace, stretch by interference; and completions in the window (throughput).
#[derive(Debug, Clone, Default)]
pub struct JobStats {
    start: u64,
    end: u64,
    outstanding: u64,
    pub submitted: u64,
    pub completed_in_window: u64,
    pub unfinished: u64,
    pub waits_s: Vec<f64>,
    pub trace_waits_s: Vec<f64>,
    pub start_err_s: Vec<f64>,
    pub bsld: Vec<f64>,
    /// Run time over run time alone, per job that was slowed.
    pub stretch: Vec<f64>,
    pub alone_node_s: f64,
    pub extra_core_s: f64,
}

/// Bounded slowdown's floor on the run time (the usual 10 s).
pub const BSLD_MIN_RUN_MS: u64 = 10_000;

impl JobStats {
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            ..Default::default()
        }
    }

    fn in_window(&self, j: &BatchJob) -> bool {
        !j.prestarted && (self.start..self.end).contains(&j.submit_ms)
    }

    pub fn outstanding(&self) -> u64 {
        self.outstanding
    }

    pub fn submitted(&mut self, j: &BatchJob) {
        if self.in_window(j) {
            self.submitted += 1;
            self.outstanding += 1;
        }
    }

    pub fn started(&mut self, j: &BatchJob, now: u64) {
        if !self.in_window(j) {
            return;
        }
        self.waits_s.push((now - j.submit_ms) as f64 / 1e3);
        if let Some(t) = j.trace_start_ms {
            self.trace_waits_s.push((t - j.submit_ms) as f64 / 1e3);
            self.start_err_s.push(now.abs_diff(t) as f64 / 1e3);
        }
    }

    fn bsld_of(j: &BatchJob, end: u64) -> f64 {
        ((end - j.submit_ms) as f64 / j.run_ms.max(BSLD_MIN_RUN_MS) as f64).max(1.0)
    }

    pub(super) fn ended(&mut self, r: &Running, now: u64) {
        if (self.start..self.end).contains(&now) {
            self.completed_in_window += 1;
        }
        if !self.in_window(&r.job) {
            return;
        }
        self.outstanding -= 1;
        self.bsld.push(Self::bsld_of(&r.job, now));
        let ran = (now - r.start_ms) as f64;
        let alone = r.job.run_ms as f64;
        self.alone_node_s += alone / 1e3 * f64::from(r.job.procs);
        self.extra_core_s += (ran - alone).max(0.0) / 1e3 * f64::from(r.job.procs);
        if r.slowed {
            self.stretch.push(ran / alone);
        }
    }

    /// A window job still queued or running at the stop: its bounded slowdown so far (a lower
    /// bound) is kept.
    pub fn unfinished(&mut self, j: &BatchJob, _start: Option<u64>, stop: u64) {
        if self.in_window(j) {
            self.unfinished += 1;
            self.bsld.push(Self::bsld_of(j, stop.max(j.submit_ms)));
        }
    }
}
