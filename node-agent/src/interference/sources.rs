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
//! - [`NvmlSignals`]: GPU utilization and memory through NVML.

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

/// GPU utilization and memory through NVML, initialised once; without a driver, unavailable.
pub struct NvmlSignals {
    nvml: Result<Nvml, String>,
}

impl std::fmt::Debug for NvmlSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.nvml {
            Ok(_) => f.write_str("NvmlSignals(NVML)"),
            Err(e) => write!(f, "NvmlSignals(unavailable: {e})"),
        }
    }
}

impl NvmlSignals {
    pub fn new() -> Self {
        Self {
            nvml: Nvml::init().map_err(|e| format!("nvml: no GPU signals ({e})")),
        }
    }
}

impl Default for NvmlSignals {
    fn default() -> Self {
        Self::new()
    }
}

impl Source for NvmlSignals {
    fn name(&self) -> &'static str {
        "nvml"
    }

    fn read(&mut self, _targets: &Targets, out: &mut Collector) {
        let nvml = match &self.nvml {
            Ok(n) => n,
            Err(e) => return out.unavailable(e.clone()),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return out.unavailable(format!("nvml: counting devices failed ({e})")),
        };
        for i in 0..count {
            let Ok(dev) = nvml.device_by_index(i) else {
                out.unavailable(format!("nvml: GPU {i} unreadable"));
                continue;
            };
            match dev.utilization_rates() {
                Ok(u) => out.gauge(Target::Gpu(i), names::GPU_UTIL_PCT, f64::from(u.gpu)),
                Err(e) => out.unavailable(format!("nvml: GPU {i} utilization ({e})")),
            }
            if let Ok(m) = dev.memory_info() {
                out.gauge(
                    Target::Gpu(i),
                    names::MEMORY_MIB,
                    m.used as f64 / f64::from(1 << 20),
                );
            }
        }
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
}
