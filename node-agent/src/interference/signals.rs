//! What a sample is: readings of cumulative counters and gauges per target, and the per-second
//! snapshot the detectors read.
//!
//! Sources report counters in natural units (seconds of CPU time, seconds stalled, units of
//! progress, instructions) and gauges as they are (MiB, percent). [`Snapshot::between`] turns
//! two samples into rates: a counter's rate per second of wall time, so `cpu` becomes cores in
//! use, `runq_wait` the average number of the target's tasks waiting for a CPU, `psi.cpu.some`
//! the fraction of time some task stalled. A counter that went backwards (a restarted job, a
//! task that exited) has no rate for that interval.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use harvest_core::CpuSet;

/// Who a reading is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    Node,
    /// A batch job, by Slurm job id.
    Job(u32),
    /// A lease's executor group, by lease id.
    Lease(String),
    /// A physical GPU, by NVML index.
    Gpu(u32),
    /// A MIG instance, by its `MIG-...` UUID.
    Mig(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Node => write!(f, "node"),
            Self::Job(j) => write!(f, "batch.{j}"),
            Self::Lease(l) => write!(f, "lease.{l}"),
            Self::Gpu(g) => write!(f, "gpu.{g}"),
            Self::Mig(uuid) => write!(f, "mig.{uuid}"),
        }
    }
}

/// Whether a value accumulates (its rate is what matters) or is a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// The signal names sources use and detectors read.
pub mod names {
    /// CPU time, seconds (rate: cores in use).
    pub const CPU: &str = "cpu";
    /// Time the target's tasks spent runnable but waiting for a CPU, seconds (rate: tasks waiting).
    pub const RUNQ_WAIT: &str = "runq_wait";
    /// Time throttled by a CPU quota, seconds (rate: fraction of time).
    pub const THROTTLED: &str = "throttled";
    /// Memory in use, MiB (gauge).
    pub const MEMORY_MIB: &str = "memory_mib";
    /// The job's own progress counter, in its units (rate: units per second).
    pub const PROGRESS: &str = "progress";
    /// Retired instructions and cycles, counts (rates per second; IPC is derived).
    pub const INSTRUCTIONS: &str = "instructions";
    pub const CYCLES: &str = "cycles";
    /// Last-level-cache misses, counts (rate per second).
    pub const LLC_MISSES: &str = "llc_misses";
    /// Instructions per cycle, derived from the two rates.
    pub const IPC: &str = "ipc";
    /// Progress per second of CPU time the job got, derived: what the job achieves with the
    /// CPU it has. Cache and memory-bandwidth interference lower it; time-slicing by other
    /// work on the job's CPUs (which lowers `cpu` instead) does not.
    pub const EFFICIENCY: &str = "progress_per_cpu_s";
    /// PSI stall time, seconds (rate: fraction of time), per resource and kind.
    pub const PSI_CPU_SOME: &str = "psi.cpu.some";
    pub const PSI_MEMORY_SOME: &str = "psi.memory.some";
    pub const PSI_MEMORY_FULL: &str = "psi.memory.full";
    pub const PSI_IO_SOME: &str = "psi.io.some";
    /// GPU utilization, percent (gauge), and GPU memory in use, MiB (gauge, `memory_mib`).
    /// NVML has no utilization for a GPU in MIG mode nor for a MIG instance: those report
    /// memory only.
    pub const GPU_UTIL_PCT: &str = "util_pct";
    /// 1 while a GPU's clocks are lowered for power or heat (NVML's clock event reasons
    /// `sw_power_cap`, `hw_slowdown`, `hw_thermal_slowdown`, `sw_thermal_slowdown`,
    /// `hw_power_brake_slowdown`), else 0 (gauge). On a GPU it is the GPU's; on a batch job the
    /// largest over the GPUs it holds (MIG instances share their GPU's clocks).
    pub const GPU_SLOWDOWN: &str = "gpu_slowdown";
}

/// One value of one signal of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub target: Target,
    pub signal: &'static str,
    pub kind: Kind,
    pub value: f64,
}

/// A batch job to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTarget {
    pub job_id: u32,
    /// The job owner, when the cgroup layout tells (a progress file must belong to them).
    pub uid: Option<u32>,
    /// The job's cgroup, relative to the hierarchy root.
    pub group: PathBuf,
    pub cpus: CpuSet,
    /// The GPU units ([`crate::discover::GpuUnit`] ids) the job holds.
    pub gpus: Vec<u32>,
}

/// A lease whose executor runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTarget {
    pub id: String,
    /// The lease's owner (what attribution remembers a culprit by).
    pub uid: u32,
    pub group: PathBuf,
    /// The lease's CPUs (a quota is a share of these).
    pub cores: u32,
}

/// What is on the node now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    pub jobs: Vec<JobTarget>,
    pub leases: Vec<LeaseTarget>,
}

/// Where a source writes its readings and the parts it cannot read.
#[derive(Debug, Default)]
pub struct Collector {
    pub readings: Vec<Reading>,
    /// Human-readable: "perf: no hardware PMU (...)".
    pub unavailable: Vec<String>,
}

impl Collector {
    pub fn counter(&mut self, target: Target, signal: &'static str, value: f64) {
        self.readings.push(Reading {
            target,
            signal,
            kind: Kind::Counter,
            value,
        });
    }

    pub fn gauge(&mut self, target: Target, signal: &'static str, value: f64) {
        self.readings.push(Reading {
            target,
            signal,
            kind: Kind::Gauge,
            value,
        });
    }

    pub fn unavailable(&mut self, what: impl Into<String>) {
        let what = what.into();
        if !self.unavailable.contains(&what) {
            self.unavailable.push(what);
        }
    }
}

/// A signal source. `read` never fails: what it cannot read it reports as unavailable.
pub trait Source: Send + fmt::Debug {
    fn name(&self) -> &'static str;
    fn read(&mut self, targets: &Targets, out: &mut Collector);
}

/// One sample: every source's readings at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub values: BTreeMap<(Target, &'static str), (Kind, f64)>,
    pub unavailable: Vec<String>,
}

impl Sample {
    /// Reads every source once.
    pub fn take(sources: &mut [Box<dyn Source>], targets: &Targets) -> Self {
        let mut out = Collector::default();
        for s in sources.iter_mut() {
            s.read(targets, &mut out);
        }
        let mut sample = Self {
            unavailable: out.unavailable,
            ..Self::default()
        };
        for r in out.readings {
            sample
                .values
                .insert((r.target, r.signal), (r.kind, r.value));
        }
        sample
    }

    pub fn get(&self, target: &Target, signal: &'static str) -> Option<f64> {
        self.values.get(&(target.clone(), signal)).map(|(_, v)| *v)
    }
}

/// Below this many cores in use a job's progress per CPU-second is too noisy to derive.
pub const MIN_CPU_FOR_EFFICIENCY: f64 = 0.05;

/// Below this many cores in use in every window of a probe, a job is idle (asleep, waiting on
/// I/O): its CPU time and instructions read as noise (0 against 0.0002 cores is "100% slower"),
/// so a probe takes no reading of those from it.
pub const MIN_CPU_FOR_PROBE: f64 = 0.05;

/// Rates and gauges over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub values: BTreeMap<(Target, &'static str), f64>,
    pub unavailable: Vec<String>,
    pub interval: Duration,
}

impl Snapshot {
    /// Counters as rates per second between `prev` and `cur`, `dt` apart; gauges as in `cur`.
    /// IPC is derived where instructions and cycles both have rates.
    pub fn between(prev: &Sample, cur: &Sample, dt: Duration) -> Self {
        let secs = dt.as_secs_f64();
        let mut values = BTreeMap::new();
        for (key, &(kind, v)) in &cur.values {
            match kind {
                Kind::Gauge => {
                    values.insert(key.clone(), v);
                }
                Kind::Counter => {
                    if let Some(&(Kind::Counter, before)) = prev.values.get(key)
                        && v >= before
                        && secs > 0.0
                    {
                        values.insert(key.clone(), (v - before) / secs);
                    }
                }
            }
        }
        let ipc: Vec<_> = values
            .iter()
            .filter(|((_, s), _)| *s == names::INSTRUCTIONS)
            .filter_map(|((t, _), &ins)| {
                let cyc = *values.get(&(t.clone(), names::CYCLES))?;
                (cyc > 0.0).then(|| ((t.clone(), names::IPC), ins / cyc))
            })
            .collect();
        values.extend(ipc);
        let efficiency: Vec<_> = values
            .iter()
            .filter(|((_, s), _)| *s == names::PROGRESS)
            .filter_map(|((t, _), &p)| {
                let cpu = *values.get(&(t.clone(), names::CPU))?;
                (cpu > MIN_CPU_FOR_EFFICIENCY).then(|| ((t.clone(), names::EFFICIENCY), p / cpu))
            })
            .collect();
        values.extend(efficiency);
        Self {
            values,
            unavailable: cur.unavailable.clone(),
            interval: dt,
        }
    }

    pub fn get(&self, target: &Target, signal: &'static str) -> Option<f64> {
        self.values.get(&(target.clone(), signal)).copied()
    }

    /// The jobs that have any value in this snapshot.
    pub fn jobs(&self) -> Vec<u32> {
        let mut jobs: Vec<u32> = self
            .values
            .keys()
            .filter_map(|(t, _)| match t {
                Target::Job(j) => Some(*j),
                _ => None,
            })
            .collect();
        jobs.dedup();
        jobs
    }

    /// `batch.12.cpu` → value, for `InterferenceState.signals`.
    pub fn named(&self) -> BTreeMap<String, f64> {
        self.values
            .iter()
            .map(|((t, s), v)| (format!("{t}.{s}"), *v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(readings: &[(Target, &'static str, Kind, f64)]) -> Sample {
        let mut s = Sample::default();
        for (t, n, k, v) in readings {
            s.values.insert((t.clone(), *n), (*k, *v));
        }
        s
    }

    #[test]
    fn counters_become_rates_gauges_stay_and_resets_drop_out() {
        let j = Target::Job(7);
        let prev = sample(&[
            (j.clone(), names::CPU, Kind::Counter, 10.0),
            (j.clone(), names::PROGRESS, Kind::Counter, 500.0),
            (j.clone(), names::INSTRUCTIONS, Kind::Counter, 1e9),
            (j.clone(), names::CYCLES, Kind::Counter, 1e9),
        ]);
        let cur = sample(&[
            (j.clone(), names::CPU, Kind::Counter, 11.0),
            // The job restarted its counter: no rate this interval.
            (j.clone(), names::PROGRESS, Kind::Counter, 10.0),
            (j.clone(), names::INSTRUCTIONS, Kind::Counter, 4e9),
            (j.clone(), names::CYCLES, Kind::Counter, 3e9),
            (j.clone(), names::MEMORY_MIB, Kind::Gauge, 300.0),
            // New this sample: no rate yet.
            (Target::Node, names::PSI_CPU_SOME, Kind::Counter, 1.0),
        ]);
        let s = Snapshot::between(&prev, &cur, Duration::from_millis(500));
        assert_eq!(s.get(&j, names::CPU), Some(2.0));
        assert_eq!(s.get(&j, names::PROGRESS), None);
        assert_eq!(s.get(&j, names::MEMORY_MIB), Some(300.0));
        assert_eq!(s.get(&j, names::IPC), Some(1.5));
        // No progress rate this interval: no efficiency either.
        assert_eq!(s.get(&j, names::EFFICIENCY), None);
        let next = sample(&[
            (j.clone(), names::CPU, Kind::Counter, 11.5),
            (j.clone(), names::PROGRESS, Kind::Counter, 110.0),
        ]);
        let s2 = Snapshot::between(&cur, &next, Duration::from_secs(1));
        assert_eq!(s2.get(&j, names::EFFICIENCY), Some(200.0));
        assert_eq!(s.get(&Target::Node, names::PSI_CPU_SOME), None);
        assert_eq!(s.jobs(), [7]);
        assert_eq!(s.named()["batch.7.cpu"], 2.0);
    }
}
