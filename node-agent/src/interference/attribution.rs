//! Attribution: which lease hurts a batch job, how sure harvestd is, and what it remembers.
//!
//! Each lease has its own freeze-probe ([`super::detector::FreezeProbe`]): the monitor freezes
//! that lease alone, the others keep running, and the job's rate with and without it is the
//! lease's marginal harm. [`judge`] turns the lease's recent probes into a [`Judgement`]:
//!
//! - **culprit**: the harm's lower bound (mean less one standard error) is above the threshold
//!   (with at least `probe_confirm` probes), or a full window's mean is above it and its lower
//!   bound above zero (a small harm that is real, though noise hides how large);
//! - **harmless**: the harm's upper bound (mean plus one standard error) is below the threshold;
//! - **unknown**: neither, with a full window: the job's noise is larger than the harm, so
//!   harvestd does not guess (the lease is not throttled for it, nor trusted with a prior);
//! - **pending**: fewer probes than that.
//!
//! The `confidence` is the probability, under a normal approximation of the mean, that the
//! lease's harm is above the threshold: what logs and metrics show beside the verdict.
//!
//! [`JobMemory`] remembers, per batch job and lease owner, the control level that held a
//! culprit within the threshold, so the next lease of that owner beside that job starts there
//! instead of at full speed; its own probes release it as soon as they find it harmless.
//! Entries end with their job or after `memory_ttl`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::Level;

/// A lease's verdict against the jobs beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pending,
    Harmless,
    Unknown,
    Culprit,
}

impl Verdict {
    /// The name logs, JSON and metric labels use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Harmless => "harmless",
            Self::Unknown => "unknown",
            Self::Culprit => "culprit",
        }
    }

    pub const ALL: [Self; 4] = [Self::Pending, Self::Harmless, Self::Unknown, Self::Culprit];
}

/// What a lease's probes say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The job the probes measured (the one hurt most in the latest probe).
    pub job: Option<u32>,
    /// Mean slowdown of that job with the lease running, % (its marginal harm).
    pub mean_pct: f64,
    /// Standard error of that mean (infinite below two probes).
    pub se_pct: f64,
    pub probes: usize,
    /// Probability that the harm is above the threshold (normal approximation).
    pub confidence: f64,
    /// The threshold the verdict was made against, %.
    pub threshold_pct: f64,
}

impl Judgement {
    pub fn pending(threshold_pct: f64) -> Self {
        Self {
            verdict: Verdict::Pending,
            job: None,
            mean_pct: 0.0,
            se_pct: f64::INFINITY,
            probes: 0,
            confidence: 0.5,
            threshold_pct,
        }
    }

    /// The mean less its standard error: how much harm the probes show at least.
    pub fn lower(&self) -> f64 {
        self.mean_pct - self.se_pct
    }

    /// One line for logs and reasons.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:.1}% ± {:.1} over {} probes, p(harm > {:.0}%) = {:.2})",
            self.verdict.name(),
            self.mean_pct,
            self.se_pct,
            self.probes,
            self.threshold_pct,
            self.confidence
        )
    }
}

/// The mean of `v` and its standard error (infinite for fewer than two values).
pub fn mean_se(v: &VecDeque<f64>) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, f64::INFINITY);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// The verdict of `recent` probe slowdowns (%) against `threshold_pct`.
pub fn judge(
    recent: &VecDeque<f64>,
    job: Option<u32>,
    threshold_pct: f64,
    confirm: usize,
    window: usize,
) -> Judgement {
    if recent.is_empty() {
        return Judgement::pending(threshold_pct);
    }
    let n = recent.len();
    let (mean, se) = mean_se(recent);
    let confident = n >= confirm && mean - se > threshold_pct;
    let persistent = n >= window && mean > threshold_pct && mean - se > 0.0;
    let verdict = if confident || persistent {
        Verdict::Culprit
    } else if n >= confirm && mean + se < threshold_pct {
        Verdict::Harmless
    } else if n >= window {
        Verdict::Unknown
    } else {
        Verdict::Pending
    };
    let confidence = if se.is_finite() && se > 0.0 {
        normal_cdf((mean - threshold_pct) / se)
    } else if se == 0.0 {
        if mean > threshold_pct { 1.0 } else { 0.0 }
    } else {
        0.5
    };
    Judgement {
        verdict,
        job,
        mean_pct: mean,
        se_pct: se,
        probes: n,
        confidence,
        threshold_pct,
    }
}

/// The standard normal distribution function (Numerical Recipes' `erfc`, error below 1.2e-7).
pub fn normal_cdf(z: f64) -> f64 {
    let x = -z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * x.abs());
    let poly = -x * x - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc_abs = t * poly.exp();
    let erfc = if x >= 0.0 { erfc_abs } else { 2.0 - erfc_abs };
    (0.5 * erfc).clamp(0.0, 1.0)
}

/// The control levels that held culprits within the threshold, per (job, lease owner).
#[derive(Debug, Default)]
pub struct JobMemory {
    ttl: Duration,
    held: BTreeMap<(u32, u32), (Level, Instant)>,
}

impl JobMemory {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            held: BTreeMap::new(),
        }
    }

    /// `level` held a lease of `uid` within the threshold beside `job` at `now`.
    pub fn remember(&mut self, job: u32, uid: u32, level: Level, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        self.held.insert((job, uid), (level, now));
    }

    /// A lease of `uid` beside `job` is clear at full speed: nothing to remember.
    pub fn forget(&mut self, job: u32, uid: u32) {
        self.held.remove(&(job, uid));
    }

    /// The highest level remembered for `uid` beside any of `jobs`, within the TTL.
    pub fn recall(&self, jobs: &[u32], uid: u32, now: Instant) -> Option<(Level, u32)> {
        jobs.iter()
            .filter_map(|&j| {
                let (level, at) = self.held.get(&(j, uid))?;
                (now.saturating_duration_since(*at) < self.ttl).then_some((*level, j))
            })
            .max_by_key(|(level, _)| level.severity())
    }

    /// Drops entries of jobs that are gone and entries older than the TTL.
    pub fn prune(&mut self, jobs: &[u32], now: Instant) {
        let ttl = self.ttl;
        self.held.retain(|(job, _), (_, at)| {
            jobs.contains(job) && now.saturating_duration_since(*at) < ttl
        });
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(v: &[f64]) -> VecDeque<f64> {
        v.iter().copied().collect()
    }

    #[test]
    fn normal_cdf_matches_known_values() {
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-7);
        assert!((normal_cdf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((normal_cdf(-1.959_964) - 0.025).abs() < 1e-6);
        assert!(normal_cdf(8.0) > 0.999_999);
    }

    #[test]
    fn verdicts_from_recorded_probe_series() {
        // Two probes agreeing on 12 to 14%: a culprit, almost surely.
        let j = judge(&dq(&[12.0, 14.0]), Some(7), 2.0, 2, 6);
        assert_eq!(j.verdict, Verdict::Culprit);
        assert!(j.confidence > 0.99, "{j:?}");
        // Two probes near zero: harmless.
        let j = judge(&dq(&[0.4, -0.6]), Some(7), 2.0, 2, 6);
        assert_eq!(j.verdict, Verdict::Harmless);
        assert!(j.confidence < 0.01, "{j:?}");
        // One probe is never a verdict.
        assert_eq!(
            judge(&dq(&[30.0]), None, 2.0, 2, 6).verdict,
            Verdict::Pending
        );
        // A job whose noise (±10%) is larger than the harm (about 1%), its mean above the
        // threshold by chance: unknown, not a guess either way.
        let noisy = [14.0, -10.0, 12.0, -8.0, 15.0, -5.0];
        let j = judge(&dq(&noisy), Some(7), 2.0, 2, 6);
        assert_eq!(j.verdict, Verdict::Unknown, "{j:?}");
        assert!(j.mean_pct > 2.0 && j.lower() < 0.0, "{j:?}");
        // The same noise around a mean below the threshold: still unknown, not harmless.
        let noisy_low = [12.0, -9.0, 8.0, -11.0, 15.0, -6.0];
        assert_eq!(
            judge(&dq(&noisy_low), Some(7), 2.0, 2, 6).verdict,
            Verdict::Unknown
        );
        // A small harm (3 to 4%) that is real: a full window above the threshold, its lower
        // bound above zero.
        let small = [9.0, -3.0, 8.0, -2.0, 7.0, 2.0];
        assert_eq!(
            judge(&dq(&small), Some(7), 2.0, 2, 6).verdict,
            Verdict::Culprit
        );
    }

    #[test]
    fn memory_recalls_the_level_that_held_and_forgets_with_time_and_the_job() {
        let t0 = Instant::now();
        let mut m = JobMemory::new(Duration::from_secs(60));
        m.remember(7, 1001, Level::Quota(25), t0);
        assert_eq!(m.recall(&[7], 1001, t0), Some((Level::Quota(25), 7)));
        // Another owner's leases are not presumed guilty.
        assert_eq!(m.recall(&[7], 1002, t0), None);
        // Nor beside another job.
        assert_eq!(m.recall(&[8], 1001, t0), None);
        assert_eq!(m.recall(&[7], 1001, t0 + Duration::from_secs(61)), None);
        m.prune(&[8], t0);
        assert!(m.is_empty());
        let mut off = JobMemory::new(Duration::ZERO);
        off.remember(7, 1001, Level::Freeze, t0);
        assert!(off.is_empty());
    }
}
