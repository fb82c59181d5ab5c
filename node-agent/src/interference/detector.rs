//! Detectors: does anything the executors do hurt a batch job on this node?
//!
//! A [`Detector`] sees every period's [`Snapshot`] and, when it asked for one, the result of a
//! freeze-probe; it answers with a [`Finding`]. Detectors are plugins named in the
//! configuration ([`build`]):
//!
//! - [`Threshold`] (`threshold`): learns each job's baseline while no executor runs beside it
//!   (and from every probe's frozen window), then compares the job's signals against it:
//!   progress rate and IPC dropping, CPU use dropping (starved), run-queue wait rising.
//! - [`FreezeProbe`] (`freeze-probe`), one per lease: every `probe_interval` (sooner after a
//!   suspicious probe, never more often than the probe budget allows) asks the monitor to
//!   freeze that lease for `probe_duration` and compares the job's progress without it against
//!   the windows with it just before and after: the lease's marginal harm. One probe is noisy on
//!   a shared node, so the probes at the lease's current level are judged together (the last
//!   `probe_window` of them) into a verdict ([`super::attribution::judge`]): a culprit is harm
//!   (`severe` when the mean less its standard error reaches `probe_jump_pct`); an unknown whose
//!   mean is above the threshold, or a pending lease above it, is a suspicion (the level holds).

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::Level;
use super::attribution::{Judgement, Verdict, judge};
use super::settings::InterferenceConfig;
use super::signals::{Snapshot, Target, names};

/// What the monitor tells detectors about the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    pub jobs: usize,
    pub leases: usize,
    /// Executors run now (there are leases and they are not frozen by the controller).
    pub executors_active: bool,
    pub level: Level,
}

/// A detector's answer for one period or one probe.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Nothing to say (no executors beside a job, or waiting for a confirmation).
    Quiet,
    /// Executors run beside jobs and no harm is seen.
    Clear,
    /// Cannot judge, and why.
    Blind(String),
    /// Executors hurt `job`: the reason carries the signal values. `severe`: far beyond the
    /// threshold, so the controller may climb more than one step.
    Harm {
        job: u32,
        reason: String,
        severe: bool,
    },
    /// Executors may hurt a job, not yet confirmed: no relaxation meanwhile.
    Suspect(String),
}

/// What a freeze-probe measured for one job: its rate with the executors running (the mean of
/// the windows before and after) and frozen.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeJob {
    pub job_id: u32,
    /// The signal compared: `progress_per_cpu_s`, `progress`, `instructions` or (blind to
    /// memory interference) `cpu`.
    pub signal: &'static str,
    pub rate_on: f64,
    pub rate_off: f64,
}

impl ProbeJob {
    /// How much slower the job ran with the executors, in percent of its rate without them.
    pub fn slowdown_pct(&self) -> Option<f64> {
        (self.rate_off > 0.0).then(|| (1.0 - self.rate_on / self.rate_off) * 100.0)
    }
}

/// One freeze-probe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeResult {
    pub jobs: Vec<ProbeJob>,
    /// How long the lease was paused (the field keeps the freezer's name).
    pub frozen: Duration,
}

/// A pluggable detector.
pub trait Detector: Send + fmt::Debug {
    fn name(&self) -> &'static str;
    /// One period's signals.
    fn observe(&mut self, now: Instant, snap: &Snapshot, ctx: &Context) -> Finding;
    /// Whether a freeze-probe should run now.
    fn wants_probe(&self, _now: Instant, _ctx: &Context) -> bool {
        false
    }
    /// The result of a probe (any detector may learn from it).
    fn probed(&mut self, _now: Instant, _probe: &ProbeResult) -> Finding {
        Finding::Quiet
    }
    /// The control level changed: streaks measured at the old level no longer count.
    fn reset(&mut self) {}
    /// Another detector suspects harm: probe as soon as the budget allows.
    fn suspect(&mut self, _now: Instant) {}
}

/// The detectors the configuration names, in its order.
pub fn build(cfg: &InterferenceConfig) -> Vec<Box<dyn Detector>> {
    cfg.detectors
        .iter()
        .filter_map(|name| -> Option<Box<dyn Detector>> {
            match name.as_str() {
                "threshold" => Some(Box::new(Threshold::new(cfg))),
                "freeze-probe" => Some(Box::new(FreezeProbe::new(cfg))),
                _ => None,
            }
        })
        .collect()
}

/// An exponentially weighted mean.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Ewma {
    value: f64,
    n: u32,
}

impl Ewma {
    fn add(&mut self, x: f64, alpha: f64) {
        self.value = if self.n == 0 {
            x
        } else {
            alpha * x + (1.0 - alpha) * self.value
        };
        self.n = self.n.saturating_add(1);
    }
}

/// Which way a signal moves when the job is hurt.
#[derive(Debug, Clone, Copy)]
enum Bad {
    /// Falls by more than this fraction of its baseline.
    Drop(f64),
    /// Rises by more than this much above its baseline (absolute).
    Rise(f64),
}

#[derive(Debug, Default)]
struct JobState {
    baseline: BTreeMap<&'static str, Ewma>,
    current: BTreeMap<&'static str, Ewma>,
    over: u32,
}

/// Thresholds on each batch job's own signals, relative to its baseline.
#[derive(Debug)]
pub struct Threshold {
    checks: Vec<(&'static str, Bad)>,
    baseline_samples: u32,
    consecutive: u32,
    jobs: BTreeMap<u32, JobState>,
}

/// A drop in a job's CPU use counts as harm only when the job spent at least this share of the
/// CPU time it lost waiting on a run queue (it wanted the CPU and did not get it).
const STARVED_WAIT_SHARE: f64 = 0.1;

/// A job's GPUs slowed for power or heat (a 0/1 signal) count as harm once the share of samples
/// beside executors that show it is this much above the share while the job ran alone: a job
/// that throttles on its own is not hurt by the leases, one that starts throttling beside a
/// lease's busy GPU (shared power and cooling; a MIG sibling shares the very clocks) is.
const GPU_SLOWDOWN_RISE: f64 = 0.5;

/// How fast the baseline follows new samples of a job alone, and the current value follows
/// samples beside executors.
const BASELINE_ALPHA: f64 = 0.2;
const CURRENT_ALPHA: f64 = 0.5;

impl Threshold {
    pub fn new(cfg: &InterferenceConfig) -> Self {
        let pct = |p: u32| f64::from(p) / 100.0;
        Self {
            checks: vec![
                (names::EFFICIENCY, Bad::Drop(pct(cfg.progress_drop_pct))),
                (names::PROGRESS, Bad::Drop(pct(cfg.progress_drop_pct))),
                (names::IPC, Bad::Drop(pct(cfg.ipc_drop_pct))),
                (names::CPU, Bad::Drop(pct(cfg.cpu_drop_pct))),
                (names::RUNQ_WAIT, Bad::Rise(pct(cfg.runq_wait_pct))),
                (names::GPU_SLOWDOWN, Bad::Rise(GPU_SLOWDOWN_RISE)),
            ],
            baseline_samples: cfg.baseline_samples,
            consecutive: cfg.consecutive,
            jobs: BTreeMap::new(),
        }
    }

    /// Compares one job's current values with its baseline; the violations, described.
    fn violations(&self, st: &JobState) -> Vec<String> {
        let mut out = Vec::new();
        // Progress per CPU-second, where known, stands in for progress per second: other work
        // time-slicing the job's CPUs is not interference from executors on other CPUs.
        let efficiency = st.current.contains_key(names::EFFICIENCY)
            && st
                .baseline
                .get(names::EFFICIENCY)
                .is_some_and(|b| b.n >= self.baseline_samples);
        for &(signal, bad) in &self.checks {
            if efficiency && signal == names::PROGRESS {
                continue;
            }
            let (Some(base), Some(cur)) = (st.baseline.get(signal), st.current.get(signal)) else {
                continue;
            };
            if base.n < self.baseline_samples {
                continue;
            }
            let (b, c) = (base.value, cur.value);
            // A job using less CPU is starved only if it waited to run. One that sleeps (on I/O,
            // on a barrier, on results it offloaded to these very functions) uses less CPU and
            // waits on no run queue: not harm, and freeze-probing it costs the leases for
            // nothing. Without a run-queue signal the drop counts, as before.
            if signal == names::CPU
                && let Some(wait) = st.current.get(names::RUNQ_WAIT)
                && wait.value < STARVED_WAIT_SHARE * (b - c)
            {
                continue;
            }
            match bad {
                Bad::Drop(frac) if b > 0.0 && c < b * (1.0 - frac) => out.push(format!(
                    "{signal} {c:.3}/s is {:.1}% below its baseline {b:.3}/s (threshold {:.0}%)",
                    (1.0 - c / b) * 100.0,
                    frac * 100.0
                )),
                Bad::Rise(by) if c > b + by => out.push(format!(
                    "{signal} {c:.3} is above its baseline {b:.3} by more than {by:.2}"
                )),
                _ => {}
            }
        }
        out
    }

    fn has_baseline(&self, st: &JobState) -> bool {
        self.checks.iter().any(|(s, _)| {
            st.baseline
                .get(s)
                .is_some_and(|b| b.n >= self.baseline_samples)
        })
    }
}

impl Detector for Threshold {
    fn name(&self) -> &'static str {
        "threshold"
    }

    fn observe(&mut self, _now: Instant, snap: &Snapshot, ctx: &Context) -> Finding {
        let jobs = snap.jobs();
        self.jobs.retain(|j, _| jobs.contains(j));
        let alone = !ctx.executors_active;
        let mut harm = None;
        let mut judged = false;
        let mut blind = Vec::new();
        for job in jobs {
            let target = Target::Job(job);
            let signals: Vec<(&'static str, f64)> = self
                .checks
                .iter()
                .filter_map(|(s, _)| snap.get(&target, s).map(|v| (*s, v)))
                .collect();
            let st = self.jobs.entry(job).or_default();
            if alone {
                for (s, v) in signals {
                    st.baseline.entry(s).or_default().add(v, BASELINE_ALPHA);
                }
                st.current.clear();
                st.over = 0;
                continue;
            }
            for (s, v) in signals {
                st.current.entry(s).or_default().add(v, CURRENT_ALPHA);
            }
            let st = &self.jobs[&job];
            if !self.has_baseline(st) {
                blind.push(job);
                continue;
            }
            judged = true;
            let violations = self.violations(st);
            let st = self.jobs.get_mut(&job).expect("inserted above");
            if violations.is_empty() {
                st.over = 0;
                continue;
            }
            st.over += 1;
            if st.over >= self.consecutive && harm.is_none() {
                harm = Some(Finding::Harm {
                    job,
                    reason: format!(
                        "job {job}: {} ({} samples in a row)",
                        violations.join("; "),
                        st.over
                    ),
                    severe: false,
                });
            }
        }
        if let Some(h) = harm {
            return h;
        }
        if judged {
            Finding::Clear
        } else if !blind.is_empty() {
            Finding::Blind(format!(
                "threshold: no baseline yet for jobs {blind:?} (they started beside executors; \
                 the freeze-probe gives one)"
            ))
        } else {
            Finding::Quiet
        }
    }

    fn probed(&mut self, _now: Instant, probe: &ProbeResult) -> Finding {
        // The frozen window is the job alone, now: a fresh baseline for the probed signal.
        for p in &probe.jobs {
            let st = self.jobs.entry(p.job_id).or_default();
            st.baseline.insert(
                p.signal,
                Ewma {
                    value: p.rate_off,
                    n: self.baseline_samples,
                },
            );
        }
        Finding::Quiet
    }

    fn reset(&mut self) {
        for st in self.jobs.values_mut() {
            st.over = 0;
            st.current.clear();
        }
    }
}

/// Freezes the executors briefly and compares the job's progress with and without them.
#[derive(Debug)]
pub struct FreezeProbe {
    interval: Duration,
    min_gap: Duration,
    threshold_pct: f64,
    jump_pct: f64,
    confirm: usize,
    window: usize,
    last: Option<Instant>,
    /// `None`: due as soon as the budget allows.
    next_due: Option<Instant>,
    /// The slowdowns (%) of the latest probes at the current level, at most `window`.
    recent: VecDeque<f64>,
    /// What those probes say.
    judgement: Judgement,
}

impl FreezeProbe {
    pub fn new(cfg: &InterferenceConfig) -> Self {
        Self {
            interval: cfg.probe_interval.max(cfg.min_probe_gap()),
            min_gap: cfg.min_probe_gap(),
            threshold_pct: f64::from(cfg.probe_slowdown_pct),
            jump_pct: f64::from(cfg.probe_jump_pct),
            confirm: cfg.probe_confirm as usize,
            window: cfg.probe_window.max(cfg.probe_confirm) as usize,
            last: None,
            next_due: None,
            recent: VecDeque::new(),
            judgement: Judgement::pending(f64::from(cfg.probe_slowdown_pct)),
        }
    }

    /// What the probes at the current level say.
    pub fn judgement(&self) -> Judgement {
        self.judgement
    }

    /// When the latest probe ran.
    pub fn last_probe(&self) -> Option<Instant> {
        self.last
    }
}

impl Detector for FreezeProbe {
    fn name(&self) -> &'static str {
        "freeze-probe"
    }

    fn observe(&mut self, _now: Instant, _snap: &Snapshot, ctx: &Context) -> Finding {
        if ctx.leases == 0 || ctx.jobs == 0 {
            // The next executor beside a job is probed as soon as the budget allows.
            self.next_due = None;
            self.recent.clear();
            self.judgement = Judgement::pending(self.threshold_pct);
        }
        Finding::Quiet
    }

    fn reset(&mut self) {
        // A new level: judge it afresh, and soon.
        self.recent.clear();
        self.next_due = None;
        self.judgement = Judgement::pending(self.threshold_pct);
    }

    fn suspect(&mut self, now: Instant) {
        if self.next_due.is_none_or(|d| d > now) {
            self.next_due = Some(now);
        }
    }

    fn wants_probe(&self, now: Instant, ctx: &Context) -> bool {
        ctx.executors_active
            && ctx.jobs > 0
            && self.next_due.is_none_or(|d| now >= d)
            && self
                .last
                .is_none_or(|l| now.saturating_duration_since(l) >= self.min_gap)
    }

    fn probed(&mut self, now: Instant, probe: &ProbeResult) -> Finding {
        self.last = Some(now);
        let worst = probe
            .jobs
            .iter()
            .filter_map(|j| j.slowdown_pct().map(|s| (s, j)))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((slowdown, job)) = worst else {
            self.next_due = Some(now + self.interval);
            return Finding::Blind(
                "freeze-probe: no job had a progress signal (progress file, instructions or \
                 CPU time) during the probe"
                    .into(),
            );
        };
        let blind_note = if job.signal == names::CPU {
            "; CPU time only: blind to cache and memory-bandwidth interference"
        } else {
            ""
        };
        self.recent.push_back(slowdown);
        while self.recent.len() > self.window {
            self.recent.pop_front();
        }
        let n = self.recent.len();
        let j = judge(
            &self.recent,
            Some(job.job_id),
            self.threshold_pct,
            self.confirm,
            self.window,
        );
        self.judgement = j;
        let (mean, se) = (j.mean_pct, j.se_pct);
        let lower = mean - se;
        // Undecided above the threshold: probe again as soon as the budget allows.
        let undecided = j.verdict != Verdict::Culprit
            && n < self.window
            && (slowdown > self.threshold_pct || mean > self.threshold_pct);
        self.next_due = Some(
            now + if undecided {
                self.min_gap
            } else {
                self.interval
            },
        );
        if j.verdict != Verdict::Culprit {
            if j.verdict == Verdict::Unknown && mean > self.threshold_pct {
                // The job's noise is larger than the harm: no guess either way. The level
                // holds (no relaxation into what may be harm, no escalation on a guess).
                return Finding::Suspect(format!(
                    "freeze-probe: job {}: {}: its noise is larger than the harm; holding",
                    job.job_id,
                    j.describe()
                ));
            }
            if !undecided {
                return Finding::Clear;
            }
            let why = format!(
                "freeze-probe: job {} {mean:.1}% slower on average over {n} probes (± {se:.1}, \
                 last {slowdown:.1}%; threshold {:.0}%): probing again",
                job.job_id, self.threshold_pct
            );
            tracing::info!(
                job = job.job_id,
                slowdown_pct = slowdown,
                mean_pct = mean,
                se_pct = se,
                signal = job.signal,
                rate_on = job.rate_on,
                rate_off = job.rate_off,
                probes = n,
                "freeze-probe suspects harm; confirming"
            );
            return Finding::Suspect(why);
        }
        let each: Vec<String> = self.recent.iter().map(|s| format!("{s:.1}")).collect();
        let severe = n >= self.confirm && lower >= self.jump_pct;
        Finding::Harm {
            job: job.job_id,
            reason: format!(
                "freeze-probe: job {} ran {mean:.1}% (± {se:.1}) slower beside executors, on \
                 average over the last {n} probes ({}%; last: {} {:.1}/s vs {:.1}/s with them \
                 frozen {} ms; threshold {:.0}%{}){blind_note}",
                job.job_id,
                each.join(", "),
                job.signal,
                job.rate_on,
                job.rate_off,
                probe.frozen.as_millis(),
                self.threshold_pct,
                if severe { ", severe" } else { "" },
            ),
            severe,
        }
    }
}
