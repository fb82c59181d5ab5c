//! The real signal sources. Each reads one kind of OS interface, takes every root as a parameter
//! (tests point them at temp directories), and reports what this node cannot give as
//! unavailable, never as zero.
//!
//! - [`CgroupSignals`]: CPU time and throttling (`cpu.stat`, v1 `cpuacct.usage`), memory in use,
//!   and, from `/proc/<pid>/task/*/schedstat` of the group's tasks, CPU time where no cgroup
//!   keeps it (Slurm's v1 jobs have no `cpuacct` group) and run-queue wait.
//! - [`PressureSignals`]: PSI, system-wide (`/proc/pressure/*`) and per group where the group
//!   sits in a v2 tree.
//! - [`ProgressSignals`]: the batch job's own progress counter, `<progress_dir>/<job id>`.
//! - [`PerfSignals`]: hardware counters (instructions, cycles, LLC misses) need a PMU.
//! - [`GpuSignals`]: GPU utilization, memory and clock event (throttle) reasons, MIG instances'
//!   memory, and each GPU job's slowdown, from a [`GpuTelemetry`] ([`NvmlTelemetry`], or
//!   [`FakeTelemetry`] in tests).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nvml_wrapper::Nvml;

use super::signals::{Collector, Source, Target, Targets, names};
use crate::cgroup::Cgroups;

/// The groups of the jobs and leases, with their targets.
fn groups(targets: &Targets) -> impl Iterator<Item = (Target, &Path)> {
    let jobs = targets
        .jobs
        .iter()
        .map(|j| (Target::Job(j.job_id), j.group.as_path()));
    let leases = targets
        .leases
        .iter()
        .map(|l| (Target::Lease(l.id.clone()), l.group.as_path()));
    jobs.chain(leases)
}

/// CPU, throttling and memory of each job and lease group.
#[derive(Debug)]
pub struct CgroupSignals {
    pub cgroups: Arc<dyn Cgroups>,
    pub proc_root: PathBuf,
}

/// Run and wait time of a set of tasks, in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SchedTotals {
    pub run_ns: u64,
    pub wait_ns: u64,
    pub tasks: usize,
}

impl CgroupSignals {
    /// The pids of `group` and every group below it.
    fn tree_pids(&self, group: &Path) -> Vec<u32> {
        let mut pids = Vec::new();
        let mut stack = vec![group.to_path_buf()];
        while let Some(g) = stack.pop() {
            pids.extend(self.cgroups.pids(&g).unwrap_or_default());
            for child in self.cgroups.children(&g).unwrap_or_default() {
                stack.push(g.join(child));
            }
        }
        pids
    }

    /// Sums `<proc>/<pid>/task/*/schedstat` ("run_ns wait_ns slices") over `pids`; a task that
    /// exits while read is skipped.
    pub fn sched(&self, pids: &[u32]) -> Option<SchedTotals> {
        let mut t = SchedTotals::default();
        let mut seen_file = false;
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(self.proc_root.join(pid.to_string()).join("task"))
            else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                seen_file = true;
                let mut f = text.split_whitespace().map(|v| v.parse::<u64>().ok());
                if let (Some(Some(run)), Some(Some(wait))) = (f.next(), f.next()) {
                    t.run_ns += run;
                    t.wait_ns += wait;
                    t.tasks += 1;
                }
            }
        }
        seen_file.then_some(t)
    }
}

impl Source for CgroupSignals {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        for (target, group) in groups(targets) {
            let stat = match self.cgroups.cpu_stat(group) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%target, error = %e, "no cpu stat");
                    Default::default()
                }
            };
            let pids = self.tree_pids(group);
            let sched = self.sched(&pids);
            let secs = |ns: u64| ns as f64 / 1e9;
            match (stat.usage_ns, sched) {
                (Some(ns), _) => out.counter(target.clone(), names::CPU, secs(ns)),
                (None, Some(s)) => out.counter(target.clone(), names::CPU, secs(s.run_ns)),
                (None, None) if !pids.is_empty() => out.unavailable(format!(
                    "cpu time of {target}: no cpuacct group and no {}/<pid>/task/*/schedstat",
                    self.proc_root.display()
                )),
                (None, None) => {}
            }
            match sched {
                Some(s) => out.counter(target.clone(), names::RUNQ_WAIT, secs(s.wait_ns)),
                None if !pids.is_empty() => out.unavailable(format!(
                    "run-queue wait: no {}/<pid>/task/*/schedstat (kernel without CONFIG_SCHED_INFO)",
                    self.proc_root.display()
                )),
                None => {}
            }
            if let Some(ns) = stat.throttled_ns {
                out.counter(target.clone(), names::THROTTLED, secs(ns));
            }
            if let Ok(bytes) = self.cgroups.memory_usage(group) {
                out.gauge(target, names::MEMORY_MIB, bytes as f64 / f64::from(1 << 20));
            }
        }
    }
}

/// One PSI file's `some`/`full` totals, in seconds.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Psi {
    pub some: Option<f64>,
    pub full: Option<f64>,
}

/// Parses `some avg10=0.00 avg60=0.00 avg300=0.00 total=123` lines (total in microseconds).
pub fn parse_psi(text: &str) -> Psi {
    let mut psi = Psi::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let kind = words.next();
        let total = words
            .find_map(|w| w.strip_prefix("total="))
            .and_then(|t| t.parse::<u64>().ok())
            .map(|us| us as f64 / 1e6);
        match kind {
            Some("some") => psi.some = total,
            Some("full") => psi.full = total,
            _ => {}
        }
    }
    psi
}

/// PSI, node-wide and per group.
#[derive(Debug)]
pub struct PressureSignals {
    pub cgroups: Arc<dyn Cgroups>,
    pub proc_root: PathBuf,
}

/// The PSI resources read, with the signal names of their `some` and `full` lines.
const PSI: &[(&str, &str, Option<&str>)] = &[
    ("cpu", names::PSI_CPU_SOME, None),
    (
        "memory",
        names::PSI_MEMORY_SOME,
        Some(names::PSI_MEMORY_FULL),
    ),
    ("io", names::PSI_IO_SOME, None),
];

fn push_psi(
    out: &mut Collector,
    target: &Target,
    text: &str,
    some: &'static str,
    full: Option<&'static str>,
) {
    let psi = parse_psi(text);
    if let Some(v) = psi.some {
        out.counter(target.clone(), some, v);
    }
    if let (Some(name), Some(v)) = (full, psi.full) {
        out.counter(target.clone(), name, v);
    }
}

impl Source for PressureSignals {
    fn name(&self) -> &'static str {
        "psi"
    }

    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        for &(resource, some, full) in PSI {
            let path = self.proc_root.join("pressure").join(resource);
            match std::fs::read_to_string(&path) {
                Ok(text) => push_psi(out, &Target::Node, &text, some, full),
                Err(e) => out.unavailable(format!(
                    "psi: {} unreadable ({e}); kernel without PSI or booted with psi=0",
                    path.display()
                )),
            }
        }
        let mut jobs_without = 0;
        for (target, group) in groups(targets) {
            let mut any = false;
            for &(resource, some, full) in PSI {
                if let Some(file) = self.cgroups.pressure_file(group, resource)
                    && let Ok(text) = std::fs::read_to_string(&file)
                {
                    any = true;
                    push_psi(out, &target, &text, some, full);
                }
            }
            if !any && matches!(target, Target::Job(_)) {
                jobs_without += 1;
            }
        }
        if jobs_without > 0 {
            out.unavailable(
                "psi per cgroup: the batch jobs are in no v2 group (cgroup v1 host); node-wide PSI \
                 and per-task schedstat stand in",
            );
        }
    }
}

/// Batch jobs' own progress counters: `<dir>/<job id>` holds a whole number that only grows
/// (work units done), written by the job as it goes. A file not owned by the job's user (or
/// root) is ignored: nobody may speak for someone else's job.
#[derive(Debug)]
pub struct ProgressSignals {
    pub dir: PathBuf,
}

impl ProgressSignals {
    /// Creates the directory, writable by every user like /tmp (sticky: nobody removes
    /// another's file).
    pub fn prepare(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o1777))
    }
}

impl Source for ProgressSignals {
    fn name(&self) -> &'static str {
        "progress"
    }

    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        for job in &targets.jobs {
            let path = self.dir.join(job.job_id.to_string());
            let Ok(meta) = std::fs::metadata(&path) else {
                out.unavailable(format!(
                    "progress: job {} reports none (it may write {})",
                    job.job_id,
                    path.display()
                ));
                continue;
            };
            if meta.uid() != 0 && job.uid.is_some_and(|u| u != meta.uid()) {
                out.unavailable(format!(
                    "progress: {} belongs to uid {}, not to job {}'s owner: ignored",
                    path.display(),
                    meta.uid(),
                    job.job_id
                ));
                continue;
            }
            match std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
            {
                Some(v) => out.counter(Target::Job(job.job_id), names::PROGRESS, v as f64),
                None => out.unavailable(format!(
                    "progress: {} does not hold a whole number",
                    path.display()
                )),
            }
        }
    }
}

/// Hardware counters per cgroup need the CPU's performance-monitoring unit.
#[derive(Debug)]
pub struct PerfSignals {
    pub sysfs_root: PathBuf,
    reason: Option<String>,
}

impl PerfSignals {
    pub fn new(sysfs_root: PathBuf) -> Self {
        let devices = sysfs_root.join("bus/event_source/devices");
        let pmu = ["cpu", "cpu_core", "armv8_pmuv3_0"]
            .iter()
            .any(|d| devices.join(d).is_dir());
        let reason = if pmu {
            "perf: this node has a hardware PMU, but this harvestd does not count per cgroup yet \
             (instructions, cycles, LLC misses)"
                .to_owned()
        } else {
            format!(
                "perf: no hardware PMU ({}/cpu is missing: a VM without a virtual PMU); no IPC, \
                 LLC misses or memory bandwidth",
                devices.display()
            )
        };
        Self {
            sysfs_root,
            reason: Some(reason),
        }
    }
}

impl Source for PerfSignals {
    fn name(&self) -> &'static str {
        "perf"
    }

    fn read(&mut self, _targets: &Targets, out: &mut Collector) {
        if let Some(r) = &self.reason {
            out.unavailable(r.clone());
        }
    }
}

/// One physical GPU's telemetry at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    /// Busy time, percent; `None` where NVML has none (a GPU in MIG mode).
    pub util_pct: Option<f64>,
    pub memory_used_mib: Option<f64>,
    /// Why the clocks are lowered now (NVML's clock event reasons, by [`THROTTLE_REASONS`]'
    /// names); `None` when NVML could not say.
    pub throttle: Option<Vec<&'static str>>,
    /// Each MIG instance's UUID and memory in use, MiB (NVML has no utilization for them).
    pub mig: Vec<(String, Option<f64>)>,
}

/// NVML's clock event ("throttle") reasons by name, and whether each means the GPU is slowed
/// for power or heat (what a neighbour's load can cause), as opposed to idling or settings.
pub const THROTTLE_REASONS: &[(&str, bool)] = &[
    ("gpu_idle", false),
    ("applications_clocks_setting", false),
    ("sw_power_cap", true),
    ("hw_slowdown", true),
    ("sync_boost", false),
    ("sw_thermal_slowdown", true),
    ("hw_thermal_slowdown", true),
    ("hw_power_brake_slowdown", true),
    ("display_clock_setting", false),
];

/// Where GPU telemetry comes from: NVML on a real node, a fake in tests.
pub trait GpuTelemetry: Send + std::fmt::Debug {
    /// Every GPU's sample, or why there are none.
    fn sample(&mut self) -> Result<Vec<GpuSample>, String>;
}

/// GPU telemetry through NVML, initialised once; without a driver, unavailable.
pub struct NvmlTelemetry {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for NvmlTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.nvml {
            Ok(_) => f.write_str("NvmlTelemetry(NVML)"),
            Err(e) => write!(f, "NvmlTelemetry(unavailable: {e})"),
        }
    }
}

impl NvmlTelemetry {
    pub fn new() -> Self {
        Self {
            nvml: Nvml::init().map_err(|e| format!("nvml: no GPU signals ({e})")),
        }
    }
}

impl Default for NvmlTelemetry {
    fn default() -> Self {
        Self::new()
    }
}

/// NVML's reason bits as [`THROTTLE_REASONS`]' names.
fn throttle_names(r: nvml_wrapper::bitmasks::device::ThrottleReasons) -> Vec<&'static str> {
    use nvml_wrapper::bitmasks::device::ThrottleReasons as T;
    [
        (T::GPU_IDLE, "gpu_idle"),
        (
            T::APPLICATIONS_CLOCKS_SETTING,
            "applications_clocks_setting",
        ),
        (T::SW_POWER_CAP, "sw_power_cap"),
        (T::HW_SLOWDOWN, "hw_slowdown"),
        (T::SYNC_BOOST, "sync_boost"),
        (T::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
        (T::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
        (T::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
        (T::DISPLAY_CLOCK_SETTING, "display_clock_setting"),
    ]
    .into_iter()
    .filter(|(bit, _)| r.contains(*bit))
    .map(|(_, name)| name)
    .collect()
}

impl GpuTelemetry for NvmlTelemetry {
    fn sample(&mut self) -> Result<Vec<GpuSample>, String> {
        let nvml = self.nvml.as_ref().map_err(Clone::clone)?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("nvml: counting devices failed ({e})"))?;
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let mut out = Vec::new();
        for i in 0..count {
            let Ok(dev) = nvml.device_by_index(i) else {
                continue;
            };
            let mut mig = Vec::new();
            if dev.mig_mode().is_ok_and(|m| m.current == 1) {
                for slot in 0..dev.mig_device_count().unwrap_or(0) {
                    if let Ok(m) = dev.mig_device_by_index(slot)
                        && let Ok(uuid) = m.uuid()
                    {
                        mig.push((uuid, m.memory_info().ok().map(|m| mib(m.used))));
                    }
                }
            }
            out.push(GpuSample {
                index: i,
                util_pct: dev.utilization_rates().ok().map(|u| f64::from(u.gpu)),
                memory_used_mib: dev.memory_info().ok().map(|m| mib(m.used)),
                throttle: dev.current_throttle_reasons().ok().map(throttle_names),
                mig,
            });
        }
        Ok(out)
    }
}

/// GPU signals: each GPU's utilization, memory in use and clock event reasons, each MIG
/// instance's memory in use, and for each batch job holding GPUs whether they are slowed for
/// power or heat ([`names::GPU_SLOWDOWN`], which the threshold detector compares with the job's
/// own baseline).
#[derive(Debug)]
pub struct GpuSignals {
    pub telemetry: Box<dyn GpuTelemetry>,
    /// The node's lendable units: which physical GPU each job's unit is on.
    pub units: Vec<crate::discover::GpuUnit>,
}

impl Source for GpuSignals {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        let gpus = match self.telemetry.sample() {
            Ok(g) => g,
            Err(e) => return out.unavailable(e),
        };
        let mut slowed = std::collections::BTreeMap::new();
        for g in &gpus {
            let t = Target::Gpu(g.index);
            match g.util_pct {
                Some(u) => out.gauge(t.clone(), names::GPU_UTIL_PCT, u),
                None if g.mig.is_empty() => {
                    out.unavailable(format!("nvml: GPU {} utilization", g.index))
                }
                // MIG mode: NVML keeps no utilization, for the GPU or its instances.
                None => {}
            }
            if let Some(m) = g.memory_used_mib {
                out.gauge(t.clone(), names::MEMORY_MIB, m);
            }
            for (uuid, m) in &g.mig {
                if let Some(m) = m {
                    out.gauge(Target::Mig(uuid.clone()), names::MEMORY_MIB, *m);
                }
            }
            let Some(reasons) = &g.throttle else {
                out.unavailable(format!("nvml: GPU {} clock event reasons", g.index));
                continue;
            };
            let mut slow = false;
            for &(name, harmful) in THROTTLE_REASONS {
                let on = reasons.contains(&name);
                slow |= on && harmful;
                out.gauge(t.clone(), throttle_signal(name), f64::from(u8::from(on)));
            }
            out.gauge(t, names::GPU_SLOWDOWN, f64::from(u8::from(slow)));
            slowed.insert(g.index, slow);
        }
        for job in &targets.jobs {
            let on_gpus: Vec<bool> = job
                .gpus
                .iter()
                .filter_map(|id| self.units.iter().find(|u| u.id == *id))
                .filter_map(|u| slowed.get(&u.gpu).copied())
                .collect();
            if !on_gpus.is_empty() {
                let slow = on_gpus.iter().any(|s| *s);
                out.gauge(
                    Target::Job(job.job_id),
                    names::GPU_SLOWDOWN,
                    f64::from(u8::from(slow)),
                );
            }
        }
    }
}

/// The per-reason signal name (`throttle.<reason>`), static as signal names are.
fn throttle_signal(reason: &str) -> &'static str {
    match reason {
        "gpu_idle" => "throttle.gpu_idle",
        "applications_clocks_setting" => "throttle.applications_clocks_setting",
        "sw_power_cap" => "throttle.sw_power_cap",
        "hw_slowdown" => "throttle.hw_slowdown",
        "sync_boost" => "throttle.sync_boost",
        "sw_thermal_slowdown" => "throttle.sw_thermal_slowdown",
        "hw_thermal_slowdown" => "throttle.hw_thermal_slowdown",
        "hw_power_brake_slowdown" => "throttle.hw_power_brake_slowdown",
        _ => "throttle.display_clock_setting",
    }
}

/// Fixed GPU telemetry, for tests: answers whatever `samples` holds now.
#[derive(Debug, Clone)]
pub struct FakeTelemetry {
    pub samples: Arc<std::sync::Mutex<Result<Vec<GpuSample>, String>>>,
}

impl FakeTelemetry {
    pub fn new(samples: Vec<GpuSample>) -> Self {
        Self {
            samples: Arc::new(std::sync::Mutex::new(Ok(samples))),
        }
    }
    pub fn set(&self, samples: Vec<GpuSample>) {
        *self.samples.lock().unwrap() = Ok(samples);
    }
}

impl GpuTelemetry for FakeTelemetry {
    fn sample(&mut self) -> Result<Vec<GpuSample>, String> {
        self.samples.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::{CpuStat, GroupSpec};
    use crate::interference::signals::{JobTarget, LeaseTarget};
    use crate::leases::testing::FakeCgroups;

    fn targets() -> Targets {
        Targets {
            jobs: vec![JobTarget {
                job_id: 7,
                uid: Some(1000),
                group: PathBuf::from("slurm_n1/uid_1000/job_7"),
                cpus: [0].into_iter().collect(),
                gpus: Vec::new(),
            }],
            leases: vec![LeaseTarget {
                id: "L1".into(),
                uid: 1001,
                group: PathBuf::from("harvest_n1/lease_L1"),
                cores: 1,
            }],
        }
    }

    #[test]
    fn psi_lines_parse_to_seconds() {
        let p = parse_psi(
            "some avg10=1.00 avg60=0.50 avg300=0.10 total=2500000\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n",
        );
        assert_eq!(p.some, Some(2.5));
        assert_eq!(p.full, Some(0.001));
        assert_eq!(parse_psi("garbage"), Psi::default());
    }

    #[test]
    fn cgroup_signals_fall_back_to_schedstat_where_no_cpuacct_group_is() {
        let tmp = tempfile::tempdir().unwrap();
        let cg = Arc::new(FakeCgroups::default());
        let t = targets();
        cg.create(&t.jobs[0].group, &GroupSpec::default()).unwrap();
        cg.create(&t.leases[0].group, &GroupSpec::default())
            .unwrap();
        cg.populated.lock().unwrap().push(t.jobs[0].group.clone());
        // The lease group keeps CPU time and throttling; the job's only has its task (pid 1).
        cg.cpu_stats.lock().unwrap().insert(
            t.leases[0].group.clone(),
            CpuStat {
                usage_ns: Some(3_000_000_000),
                nr_throttled: Some(1),
                throttled_ns: Some(500_000_000),
            },
        );
        for (tid, stat) in [
            ("1", "2000000000 250000000 10\n"),
            ("2", "1000000000 0 3\n"),
        ] {
            let d = tmp.path().join("1/task").join(tid);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("schedstat"), stat).unwrap();
        }
        let mut src = CgroupSignals {
            cgroups: cg,
            proc_root: tmp.path().to_path_buf(),
        };
        let mut out = Collector::default();
        src.read(&t, &mut out);
        let get = |target: &Target, s: &str| {
            out.readings
                .iter()
                .find(|r| &r.target == target && r.signal == s)
                .map(|r| r.value)
        };
        let job = Target::Job(7);
        let lease = Target::Lease("L1".into());
        assert_eq!(get(&job, names::CPU), Some(3.0));
        assert_eq!(get(&job, names::RUNQ_WAIT), Some(0.25));
        assert_eq!(get(&lease, names::CPU), Some(3.0));
        assert_eq!(get(&lease, names::THROTTLED), Some(0.5));
        // The lease group has no task in the fake: no schedstat, and nothing claimed missing.
        assert_eq!(get(&lease, names::RUNQ_WAIT), None);
        assert!(out.unavailable.is_empty(), "{:?}", out.unavailable);
    }

    #[test]
    fn progress_files_are_read_only_from_the_jobs_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let mut src = ProgressSignals {
            dir: tmp.path().join("progress"),
        };
        src.prepare().unwrap();
        let mut t = targets();
        let mut out = Collector::default();
        src.read(&t, &mut out);
        assert!(out.readings.is_empty());
        assert!(
            out.unavailable[0].contains("job 7 reports none"),
            "{:?}",
            out.unavailable
        );

        std::fs::write(src.dir.join("7"), "00000000000000001234\n").unwrap();
        // Written by this test's user: only accepted if that is the job's owner (or root).
        let me = std::fs::metadata(src.dir.join("7")).unwrap().uid();
        t.jobs[0].uid = Some(me);
        let mut out = Collector::default();
        src.read(&t, &mut out);
        assert_eq!(out.readings[0].value, 1234.0);
        if me != 0 {
            t.jobs[0].uid = Some(me + 1);
            let mut out = Collector::default();
            src.read(&t, &mut out);
            assert!(out.readings.is_empty());
            assert!(out.unavailable[0].contains("ignored"));
        }
        std::fs::write(src.dir.join("7"), "soon\n").unwrap();
        t.jobs[0].uid = Some(me);
        let mut out = Collector::default();
        src.read(&t, &mut out);
        assert!(out.unavailable[0].contains("whole number"));
    }

    #[test]
    fn missing_sources_say_unavailable_and_report_no_zeros() {
        let tmp = tempfile::tempdir().unwrap();
        let mut perf = PerfSignals::new(tmp.path().to_path_buf());
        let mut out = Collector::default();
        perf.read(&targets(), &mut out);
        assert!(out.readings.is_empty());
        assert!(
            out.unavailable[0].contains("no hardware PMU"),
            "{:?}",
            out.unavailable
        );

        let mut psi = PressureSignals {
            cgroups: Arc::new(FakeCgroups::default()),
            proc_root: tmp.path().to_path_buf(),
        };
        let mut out = Collector::default();
        psi.read(&targets(), &mut out);
        assert!(out.readings.is_empty());
        assert!(
            out.unavailable
                .iter()
                .any(|u| u.contains("kernel without PSI"))
        );
        assert!(out.unavailable.iter().any(|u| u.contains("psi per cgroup")));

        std::fs::create_dir_all(tmp.path().join("pressure")).unwrap();
        for r in ["cpu", "memory", "io"] {
            std::fs::write(
                tmp.path().join("pressure").join(r),
                "some avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n\
                 full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            )
            .unwrap();
        }
        let mut out = Collector::default();
        psi.read(&targets(), &mut out);
        let names: Vec<_> = out.readings.iter().map(|r| r.signal).collect();
        assert_eq!(
            names,
            [
                names::PSI_CPU_SOME,
                names::PSI_MEMORY_SOME,
                names::PSI_MEMORY_FULL,
                names::PSI_IO_SOME
            ]
        );
        assert!(out.readings.iter().all(|r| r.target == Target::Node));
    }

    fn reading(out: &Collector, target: &Target, signal: &str) -> Option<f64> {
        out.readings
            .iter()
            .find(|r| &r.target == target && r.signal == signal)
            .map(|r| r.value)
    }

    /// GPU 0 whole and slowed for heat, GPU 1 in MIG mode (no utilization) with 3 instances:
    /// the GPUs' signals, the instances' memory, and each GPU job's slowdown by its units.
    #[test]
    fn gpu_signals_carry_throttle_reasons_mig_memory_and_each_jobs_slowdown() {
        use crate::discover::{FakeGpus, GpuReport};
        let units = FakeGpus::with_mig(1, 3).0.units();
        assert!(matches!(FakeGpus::none().0, GpuReport::Unavailable { .. }));
        let fake = FakeTelemetry::new(vec![
            GpuSample {
                index: 0,
                util_pct: Some(97.0),
                memory_used_mib: Some(1024.0),
                throttle: Some(vec!["hw_thermal_slowdown", "sw_power_cap"]),
                mig: vec![],
            },
            GpuSample {
                index: 1,
                util_pct: None,
                memory_used_mib: Some(3000.0),
                throttle: Some(vec!["gpu_idle"]),
                mig: vec![
                    ("MIG-fake-1-0".into(), Some(100.0)),
                    ("MIG-fake-1-1".into(), Some(2900.0)),
                    ("MIG-fake-1-2".into(), None),
                ],
            },
        ]);
        let mut gpu = GpuSignals {
            telemetry: Box::new(fake.clone()),
            units,
        };
        let mut t = targets();
        t.jobs[0].gpus = vec![2]; // job 7: an instance of GPU 1
        let mut j8 = t.jobs[0].clone();
        j8.job_id = 8;
        j8.gpus = vec![0]; // job 8: GPU 0
        let mut j9 = t.jobs[0].clone();
        j9.job_id = 9;
        j9.gpus = vec![]; // job 9: no GPU, no GPU signal
        t.jobs.extend([j8, j9]);
        let mut out = Collector::default();
        gpu.read(&t, &mut out);
        let g0 = Target::Gpu(0);
        let g1 = Target::Gpu(1);
        assert_eq!(reading(&out, &g0, names::GPU_UTIL_PCT), Some(97.0));
        assert_eq!(reading(&out, &g0, names::MEMORY_MIB), Some(1024.0));
        assert_eq!(
            reading(&out, &g0, "throttle.hw_thermal_slowdown"),
            Some(1.0)
        );
        assert_eq!(reading(&out, &g0, "throttle.sw_power_cap"), Some(1.0));
        assert_eq!(reading(&out, &g0, "throttle.gpu_idle"), Some(0.0));
        assert_eq!(reading(&out, &g0, names::GPU_SLOWDOWN), Some(1.0));
        // Idle is a clock event reason, not a slowdown.
        assert_eq!(reading(&out, &g1, "throttle.gpu_idle"), Some(1.0));
        assert_eq!(reading(&out, &g1, names::GPU_SLOWDOWN), Some(0.0));
        // MIG mode: no utilization anywhere, and that is not reported as a failure.
        assert_eq!(reading(&out, &g1, names::GPU_UTIL_PCT), None);
        assert!(out.unavailable.is_empty(), "{:?}", out.unavailable);
        let mig = |u: &str| reading(&out, &Target::Mig(u.into()), names::MEMORY_MIB);
        assert_eq!(
            (
                mig("MIG-fake-1-0"),
                mig("MIG-fake-1-1"),
                mig("MIG-fake-1-2")
            ),
            (Some(100.0), Some(2900.0), None)
        );
        assert_eq!(
            reading(&out, &Target::Job(7), names::GPU_SLOWDOWN),
            Some(0.0)
        );
        assert_eq!(
            reading(&out, &Target::Job(8), names::GPU_SLOWDOWN),
            Some(1.0)
        );
        assert_eq!(reading(&out, &Target::Job(9), names::GPU_SLOWDOWN), None);

        // A GPU whose reasons NVML cannot give, and one without utilization outside MIG mode.
        fake.set(vec![GpuSample {
            index: 0,
            util_pct: None,
            memory_used_mib: None,
            throttle: None,
            mig: vec![],
        }]);
        let mut out = Collector::default();
        gpu.read(&t, &mut out);
        assert_eq!(out.unavailable.len(), 2, "{:?}", out.unavailable);
        assert_eq!(reading(&out, &Target::Job(8), names::GPU_SLOWDOWN), None);
        *fake.samples.lock().unwrap() = Err("nvml: no GPU signals (test)".into());
        let mut out = Collector::default();
        gpu.read(&t, &mut out);
        assert!(out.readings.is_empty());
        assert_eq!(out.unavailable, ["nvml: no GPU signals (test)"]);
    }

    /// Without a driver the real telemetry says why, every time; never zeros.
    #[test]
    fn real_telemetry_without_a_driver_is_unavailable() {
        let mut t = NvmlTelemetry::new();
        if let Err(e) = t.sample() {
            assert!(e.starts_with("nvml"), "{e}");
        }
    }
}
