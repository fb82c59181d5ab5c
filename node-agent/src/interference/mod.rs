//! Interference monitoring and control: functions on idle cores must cost the batch jobs beside
//! them (almost) nothing, and where they do, harvest backs off on its own.
//!
//! Every `period` the [`monitor::Monitor`] samples signals of each batch job, each executor and
//! the node, hands them to the detectors and to each lease's own freeze-probe, lets each lease's
//! [`controller::Controller`] decide its control level (only the leases that hurt a job are
//! throttled), applies them to the lease cgroups, and publishes the verdicts ([`NodeStats`] carries it to
//! the scheduler with every slot report, which stops placing on a node whose level is not
//! `none`). The layers, each behind a trait with a fake in [`testing`]:
//!
//! - [`signals`]: what a sample is ([`signals::Reading`]s of cumulative counters and gauges per
//!   [`signals::Target`]) and the per-second [`signals::Snapshot`] the detectors read.
//! - [`sources`]: the real signal sources: cgroup CPU time, throttling and memory (with
//!   `/proc/<pid>/task/*/schedstat` for CPU time and run-queue wait where Slurm's v1 jobs have no
//!   `cpuacct` group), PSI (system-wide and per group where a v2 tree has the group), the batch
//!   job's own progress counter, hardware counters (perf) and GPUs (NVML). A source that this
//!   node cannot read says so ("unavailable"), never reports zeros.
//! - [`detector`]: the pluggable detectors: `threshold` (the job's signals against its own
//!   baseline) and `freeze-probe` (briefly freeze the executors and compare the job's progress
//!   with and without them; the probe's cost is bounded and counted).
//! - [`attribution`]: which lease hurts: per-lease verdicts (culprit, harmless, unknown) with a
//!   confidence, and the memory of the level that held a culprit beside a job.
//! - [`controller`]: the escalation ladder (lower CPU weight → CPU quota → freeze → evict) with
//!   hold times, relaxation, back-off after a failed relaxation, and the [`controller::Actuator`]
//!   that applies a level to lease cgroups.
//! - [`monitor`]: the task harvestd runs (sample → detect → probe → decide → act → publish).
//! - [`settings`]: the `[interference]` table of harvestd's configuration.
//!
//! docs/interference.md explains the signals, the decisions and the defaults.

pub mod attribution;
pub mod controller;
pub mod detector;
pub mod monitor;
pub mod settings;
pub mod signals;
pub mod sources;
#[cfg(test)]
pub mod testing;

#[cfg(test)]
mod attribution_tests;
#[cfg(test)]
mod tests;

use harvest_proto::v1::InterferenceLevel;
use harvest_proto::views::level_name;
pub use settings::{InterferenceConfig, Mode};

/// The control levels, from none to evict. Its [`InterferenceLevel`] (`From`) is what
/// `InterferenceState.level` carries; [`Level::name`] is that level's short name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    /// Lease groups at the lowest CPU weight.
    Weight,
    /// Lease groups capped at this percentage of their CPUs' time.
    Quota(u32),
    /// Lease groups frozen.
    Freeze,
    /// Leases ended with `EndCause::Interference`.
    Evict,
}

impl From<Level> for InterferenceLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::None => Self::None,
            Level::Weight => Self::Weight,
            Level::Quota(_) => Self::Quota,
            Level::Freeze => Self::Freeze,
            Level::Evict => Self::Evict,
        }
    }
}

impl Level {
    /// "none", "weight", "quota", "freeze" or "evict" (the wire level's name).
    pub fn name(self) -> &'static str {
        level_name(self.into())
    }

    /// How hard the level holds the leases back, for comparing levels: a lower quota is
    /// harder (the derived order compares quota percentages the other way round).
    pub fn severity(self) -> (u8, u32) {
        match self {
            Self::None => (0, 0),
            Self::Weight => (1, 0),
            Self::Quota(p) => (2, 100u32.saturating_sub(p)),
            Self::Freeze => (3, 0),
            Self::Evict => (4, 0),
        }
    }

    /// `quota 25%` for a quota level, else the name.
    pub fn describe(self) -> String {
        match self {
            Self::Quota(p) => format!("quota {p}%"),
            other => other.name().to_owned(),
        }
    }
}
