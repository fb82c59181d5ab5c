//! The `[interference]` table of harvestd's configuration, every key with a named default.
//!
//! Percentages are whole numbers (`progress_drop_pct = 5` is 5%); durations are strings
//! (`"500ms"`, `"10s"`). docs/interference.md lists every key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config_error::{ConfigError, duration, write_duration};

/// How often signals are sampled and decisions taken.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(1);
/// The detectors that run, by name.
pub const DEFAULT_DETECTORS: &[&str] = &["threshold", "freeze-probe"];
/// Samples of a job alone (no executor running) before its baseline counts.
pub const DEFAULT_BASELINE_SAMPLES: u32 = 3;
/// Samples in a row over a threshold before the threshold detector reports harm.
pub const DEFAULT_CONSECUTIVE: u32 = 3;
/// A job's progress rate this far below its baseline is harm.
pub const DEFAULT_PROGRESS_DROP_PCT: u32 = 5;
/// A job's instructions per cycle this far below its baseline is harm.
pub const DEFAULT_IPC_DROP_PCT: u32 = 5;
/// A job's CPU use this far below its baseline is harm (it is being starved).
pub const DEFAULT_CPU_DROP_PCT: u32 = 10;
/// A job's tasks waiting for a CPU this many percentage points more than in its baseline is harm.
pub const DEFAULT_RUNQ_WAIT_PCT: u32 = 10;
/// How long a freeze-probe keeps a lease paused (and each of its two running windows). The
/// detector keeps its name; the pause is a CPU quota at the kernel's floor, not the freezer.
pub const DEFAULT_PROBE_DURATION: Duration = Duration::from_millis(300);
/// After a probe's pause ends, this long passes before its last window: a paused
/// function bursts (it catches up), which read as harm in that window.
pub const DEFAULT_PROBE_SETTLE: Duration = Duration::from_millis(300);
/// How long the level that held a culprit beside a job is remembered for the next lease of the
/// same owner beside that job (zero: nothing is remembered).
pub const DEFAULT_MEMORY_TTL: Duration = Duration::from_secs(600);
/// How often the freeze-probe runs while executors run beside a batch job and nothing is wrong.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// The most of the executors' time that probes may pause them.
pub const DEFAULT_PROBE_BUDGET_PCT: u32 = 10;
/// A probe that shows the job this much faster without executors found harm.
pub const DEFAULT_PROBE_SLOWDOWN_PCT: u32 = 2;
/// The fewest probes (at one level) the freeze-probe declares harm on.
pub const DEFAULT_PROBE_CONFIRM: u32 = 2;
/// The most recent probes (at one level) the freeze-probe judges together.
pub const DEFAULT_PROBE_WINDOW: u32 = 6;
/// A confirmed slowdown whose lower bound (mean less its standard error) is at least this is
/// severe: the controller climbs two quota steps at once.
pub const DEFAULT_PROBE_JUMP_PCT: u32 = 8;
/// With both detectors on, a threshold finding makes the freeze-probe run at once, and only the
/// probe's confirmation escalates (other work on a shared node moves the thresholds too).
pub const DEFAULT_CONFIRM_WITH_PROBE: bool = true;
/// The CPU weight of lease groups at the `weight` level (v2 units; v1 gets cpu.shares).
pub const DEFAULT_WEIGHT: u64 = 1;
/// The quota steps, in percent of each lease's CPUs.
pub const DEFAULT_QUOTA_PCT: &[u32] = &[50, 25, 10];
/// After a level change, findings are ignored this long (the signals catch up).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);
/// Harm-free time at a level before relaxing one step.
pub const DEFAULT_RELAX_AFTER: Duration = Duration::from_secs(10);
/// The longest hold: a relaxation that fails doubles the hold up to this.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(160);
/// Relaxations from `freeze` that fail in a row before the leases are evicted.
pub const DEFAULT_EVICT_AFTER_FAILED_RELAXES: u32 = 3;
/// How long the node stays at `evict` (no new placements) after an eviction.
pub const DEFAULT_EVICT_HOLD: Duration = Duration::from_secs(30);
/// The sysfs root (hardware performance-monitoring units are listed under it).
pub const DEFAULT_SYSFS_ROOT: &str = "/sys";

/// Whether decisions are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Detect, decide and act.
    Enforce,
    /// Detect and log what would be done; never touch an executor, report level `none`.
    Observe,
}

/// Interference monitoring and control settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterferenceConfig {
    /// Run the monitor.
    pub enabled: bool,
    /// `"enforce"` acts on what the detectors find; `"observe"` only logs what it would do.
    pub mode: Mode,
    /// Sampling and decision period.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub period: Duration,
    /// Which detectors run.
    pub detectors: Vec<String>,
    /// Where batch jobs write their progress counters (`<dir>/<job id>`). Unset:
    /// `<run_dir>/progress`.
    pub progress_dir: Option<PathBuf>,
    /// Where the PMU is looked for.
    pub sysfs_root: PathBuf,
    /// Samples alone before a baseline counts.
    pub baseline_samples: u32,
    /// Samples over a threshold before harm.
    pub consecutive: u32,
    /// Progress (per CPU-second) drop that is harm.
    pub progress_drop_pct: u32,
    /// IPC drop that is harm.
    pub ipc_drop_pct: u32,
    /// CPU-use drop that is harm.
    pub cpu_drop_pct: u32,
    /// Run-queue wait rise (points) that is harm.
    pub runq_wait_pct: u32,
    /// Frozen window (and each running window).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub probe_duration: Duration,
    /// Wait after a probe's pause before its last window (a paused function bursts).
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub probe_settle: Duration,
    /// Probe period while nothing is wrong.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub probe_interval: Duration,
    /// Most of the executors' time probes may pause.
    pub probe_budget_pct: u32,
    /// Probe slowdown (%) that is harm (see the freeze-probe above).
    pub probe_slowdown_pct: u32,
    /// Fewest probes (at one level) harm is declared on.
    pub probe_confirm: u32,
    /// Most recent probes (at one level) judged together.
    pub probe_window: u32,
    /// Confirmed slowdown (mean less its standard error) that is severe.
    pub probe_jump_pct: u32,
    /// Threshold findings need the probe's confirmation.
    pub confirm_with_probe: bool,
    /// CPU weight at the `weight` level.
    pub weight: u64,
    /// Quota steps, % of the lease's CPUs, decreasing.
    pub quota_pct: Vec<u32>,
    /// Findings ignored after a change.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub settle: Duration,
    /// Harm-free hold before relaxing.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub relax_after: Duration,
    /// Longest hold after failed relaxations.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub max_hold: Duration,
    /// Failed relaxations from freeze before eviction.
    pub evict_after_failed_relaxes: u32,
    /// Time at `evict` before `none`.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub evict_hold: Duration,
    /// How long the level that held a culprit is remembered per (job, owner); `"0s"` remembers
    /// nothing.
    #[serde(deserialize_with = "duration", serialize_with = "write_duration")]
    pub memory_ttl: Duration,
}

impl Default for InterferenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::Enforce,
            period: DEFAULT_PERIOD,
            detectors: DEFAULT_DETECTORS.iter().map(|d| (*d).to_owned()).collect(),
            progress_dir: None,
            sysfs_root: PathBuf::from(DEFAULT_SYSFS_ROOT),
            baseline_samples: DEFAULT_BASELINE_SAMPLES,
            consecutive: DEFAULT_CONSECUTIVE,
            progress_drop_pct: DEFAULT_PROGRESS_DROP_PCT,
            ipc_drop_pct: DEFAULT_IPC_DROP_PCT,
            cpu_drop_pct: DEFAULT_CPU_DROP_PCT,
            runq_wait_pct: DEFAULT_RUNQ_WAIT_PCT,
            probe_duration: DEFAULT_PROBE_DURATION,
            probe_settle: DEFAULT_PROBE_SETTLE,
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_budget_pct: DEFAULT_PROBE_BUDGET_PCT,
            probe_slowdown_pct: DEFAULT_PROBE_SLOWDOWN_PCT,
            probe_confirm: DEFAULT_PROBE_CONFIRM,
            probe_window: DEFAULT_PROBE_WINDOW,
            probe_jump_pct: DEFAULT_PROBE_JUMP_PCT,
            confirm_with_probe: DEFAULT_CONFIRM_WITH_PROBE,
            weight: DEFAULT_WEIGHT,
            quota_pct: DEFAULT_QUOTA_PCT.to_vec(),
            settle: DEFAULT_SETTLE,
            relax_after: DEFAULT_RELAX_AFTER,
            max_hold: DEFAULT_MAX_HOLD,
            evict_after_failed_relaxes: DEFAULT_EVICT_AFTER_FAILED_RELAXES,
            evict_hold: DEFAULT_EVICT_HOLD,
            memory_ttl: DEFAULT_MEMORY_TTL,
        }
    }
}

/// The detectors [`InterferenceConfig::detectors`] may name.
pub const KNOWN_DETECTORS: &[&str] = &["threshold", "freeze-probe"];

impl InterferenceConfig {
    /// The progress directory: the configured one, else `<run_dir>/progress`.
    pub fn progress_dir(&self, run_dir: &Path) -> PathBuf {
        self.progress_dir
            .clone()
            .unwrap_or_else(|| run_dir.join("progress"))
    }

    /// The shortest gap between two probes that keeps them within the budget.
    pub fn min_probe_gap(&self) -> Duration {
        self.probe_duration * 100 / self.probe_budget_pct.max(1)
    }

    /// Checks the table once, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, hint: &'static str| {
            Err(ConfigError::Invalid { key, value, hint })
        };
        for (key, d) in [
            ("interference.period", self.period),
            ("interference.probe_duration", self.probe_duration),
            ("interference.probe_interval", self.probe_interval),
            ("interference.relax_after", self.relax_after),
        ] {
            if d.is_zero() {
                return bad(key, format!("{d:?}"), "must be above zero, e.g. \"1s\"");
            }
        }
        if self.max_hold < self.relax_after {
            return bad(
                "interference.max_hold",
                format!("{:?}", self.max_hold),
                "must be at least relax_after",
            );
        }
        for name in &self.detectors {
            if !KNOWN_DETECTORS.contains(&name.as_str()) {
                return bad(
                    "interference.detectors",
                    format!("{name:?}"),
                    "known detectors: \"threshold\", \"freeze-probe\"",
                );
            }
        }
        for (key, pct) in [
            ("interference.progress_drop_pct", self.progress_drop_pct),
            ("interference.ipc_drop_pct", self.ipc_drop_pct),
            ("interference.cpu_drop_pct", self.cpu_drop_pct),
            ("interference.runq_wait_pct", self.runq_wait_pct),
            ("interference.probe_slowdown_pct", self.probe_slowdown_pct),
            ("interference.probe_jump_pct", self.probe_jump_pct),
        ] {
            if !(1..=99).contains(&pct) {
                return bad(key, pct.to_string(), "use a percentage in 1..=99");
            }
        }
        if !(1..=50).contains(&self.probe_budget_pct) {
            return bad(
                "interference.probe_budget_pct",
                self.probe_budget_pct.to_string(),
                "use 1..=50 (percent of the executors' time a probe may pause them)",
            );
        }
        for (key, n) in [
            ("interference.baseline_samples", self.baseline_samples),
            ("interference.consecutive", self.consecutive),
            ("interference.probe_confirm", self.probe_confirm),
            (
                "interference.evict_after_failed_relaxes",
                self.evict_after_failed_relaxes,
            ),
        ] {
            if n == 0 {
                return bad(key, "0".into(), "must be at least 1");
            }
        }
        if self.probe_window < self.probe_confirm {
            return bad(
                "interference.probe_window",
                self.probe_window.to_string(),
                "must be at least probe_confirm (the window holds the probes confirmed on)",
            );
        }
        if !(1..=10_000).contains(&self.weight) {
            return bad(
                "interference.weight",
                self.weight.to_string(),
                "use 1..=10000 (v2 cpu.weight units; 1 is the lowest)",
            );
        }
        let descending = self.quota_pct.windows(2).all(|w| w[0] > w[1]);
        if !descending || self.quota_pct.iter().any(|p| !(1..=99).contains(p)) {
            return bad(
                "interference.quota_pct",
                format!("{:?}", self.quota_pct),
                "give decreasing percentages in 1..=99, e.g. [50, 25, 10] (or [] for no quota step)",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn defaults_apply_without_the_table_and_keys_are_read_with_it() {
        let c = Config::parse("", Path::new("a.toml")).unwrap();
        assert_eq!(c.interference, InterferenceConfig::default());
        assert!(c.interference.enabled);
        assert_eq!(c.interference.mode, Mode::Enforce);
        c.interference.validate().unwrap();
        let c = Config::parse(
            "[interference]\nmode = \"observe\"\nperiod = \"500ms\"\nquota_pct = [40, 20]\n\
             detectors = [\"threshold\"]\nprogress_dir = \"/tmp/p\"\n",
            Path::new("a.toml"),
        )
        .unwrap();
        let i = &c.interference;
        assert_eq!(i.mode, Mode::Observe);
        assert_eq!(i.period, Duration::from_millis(500));
        assert_eq!(i.quota_pct, [40, 20]);
        assert_eq!(i.detectors, ["threshold"]);
        assert_eq!(i.progress_dir(Path::new("/run/h")), Path::new("/tmp/p"));
        assert_eq!(
            InterferenceConfig::default().progress_dir(Path::new("/run/h")),
            Path::new("/run/h/progress")
        );
        // 300 ms within a 10% budget: at most one probe every 3 s.
        assert_eq!(
            InterferenceConfig::default().min_probe_gap(),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::parse("[interference]\nperiode = \"1s\"\n", Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("periode"), "{err}");
        let check = |f: &dyn Fn(&mut InterferenceConfig), key: &str| {
            let mut c = InterferenceConfig::default();
            f(&mut c);
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        };
        check(&|c| c.period = Duration::ZERO, "interference.period");
        check(&|c| c.quota_pct = vec![25, 50], "interference.quota_pct");
        check(&|c| c.quota_pct = vec![100], "interference.quota_pct");
        check(
            &|c| c.detectors = vec!["magic".into()],
            "interference.detectors",
        );
        check(
            &|c| c.probe_budget_pct = 90,
            "interference.probe_budget_pct",
        );
        check(&|c| c.weight = 0, "interference.weight");
        check(&|c| c.consecutive = 0, "interference.consecutive");
        check(&|c| c.probe_window = 1, "interference.probe_window");
        check(&|c| c.probe_jump_pct = 0, "interference.probe_jump_pct");
        check(
            &|c| c.max_hold = Duration::from_secs(1),
            "interference.max_hold",
        );
        let mut ok = InterferenceConfig {
            quota_pct: vec![],
            ..InterferenceConfig::default()
        };
        ok.validate().unwrap();
        ok.detectors.clear();
        ok.validate().unwrap();
    }
}
