//! cgroup access behind one trait, in the shape of youki's `libcgroups`.
//!
//! [`Cgroups`] is the only way the agent touches cgroups. [`V1`] drives the per-controller v1
//! hierarchies (the hybrid layout included), [`V2`] the unified hierarchy; [`open`] picks one
//! once from mountinfo. Groups are named by a path relative to the hierarchy root
//! (`slurm_n1/uid_0/job_7`), the same for every controller, so callers never build filesystem
//! paths themselves. Every root is a parameter, so tests run against a temp directory.
//!
//! - [`mountinfo`]: parses mountinfo and decides v1 or v2.
//! - [`v1`], [`v2`]: the two backends.
//! - [`devices`]: the device nodes a lease group allows (v1 devices controller).

pub mod devices;
pub mod mountinfo;
pub mod v1;
pub mod v2;

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use harvest_core::CpuSet;

pub use devices::{DeviceKind, DeviceRule};
pub use mountinfo::Layout;
pub use v1::V1;
pub use v2::V2;

/// The default cgroup root.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The default mountinfo file read to detect the cgroup version.
pub const DEFAULT_MOUNTINFO: &str = "/proc/self/mountinfo";
/// How long [`Cgroups::freeze`] waits for a group to reach the frozen state.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which cgroup version a backend drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// What a new group gets. `None` leaves the setting at the kernel's default (for cpuset: the
/// parent's CPUs and memory nodes, which v1 needs written explicitly).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupSpec {
    pub cpus: Option<CpuSet>,
    /// NUMA memory nodes, in the same list format as CPUs.
    pub mems: Option<CpuSet>,
    pub memory_limit_bytes: Option<u64>,
    /// CPU weight in v2 units, 1..=10000 (100 is the default share).
    pub cpu_weight: Option<u64>,
    /// The most tasks (processes and threads together) the group may hold (`pids.max`).
    pub pids_max: Option<u64>,
    /// With `memory_limit_bytes`: the limit covers swap too, so the group cannot swap (v1
    /// `memory.memsw.limit_in_bytes` = the limit where the kernel accounts swap, v2
    /// `memory.swap.max` = 0).
    pub no_swap: bool,
    /// Every device denied but these (v1 `devices.deny a`, then each `devices.allow`); not
    /// enforced on v2 (see [`Confinement`]).
    pub devices: Option<Vec<DeviceRule>>,
}

/// Whether a backend enforces one of a lease group's limits on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    Enforced,
    /// Not enforced, and why (what a lease can do instead).
    Unavailable(String),
}

/// What a backend enforces beyond CPUs and memory, logged once at start ([`open`]): a limit
/// that is asked for but unavailable is skipped, never silently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    pub pids: Support,
    pub no_swap: Support,
    pub devices: Support,
}

impl Confinement {
    /// Logs each limit: enforced ones at info, unavailable ones as a warning with the reason.
    pub fn log(&self) {
        for (limit, support) in [
            ("pids", &self.pids),
            ("no_swap", &self.no_swap),
            ("devices", &self.devices),
        ] {
            match support {
                Support::Enforced => tracing::info!(limit, "lease groups enforce it"),
                Support::Unavailable(why) => {
                    tracing::warn!(limit, reason = %why, "lease groups cannot enforce it on this host")
                }
            }
        }
    }
}

/// A cap on a group's CPU time: at most `quota_us` of CPU time every `period_us` (v1
/// `cpu.cfs_quota_us`/`cpu.cfs_period_us`, v2 `cpu.max`). `quota_us` may exceed `period_us` for
/// a group with several CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

/// A group's CPU accounting, each field `None` where this host does not keep it for the group
/// (e.g. v1 without a `cpuacct` group: Slurm makes none for its jobs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// CPU time used, in nanoseconds (v1 `cpuacct.usage`, v2 `cpu.stat` `usage_usec`).
    pub usage_ns: Option<u64>,
    /// Periods in which the group hit its quota (`nr_throttled`).
    pub nr_throttled: Option<u64>,
    /// Time spent throttled, in nanoseconds (v1 `throttled_time`, v2 `throttled_usec`).
    pub throttled_ns: Option<u64>,
}

/// A cgroup operation that failed, with the path and value involved.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("creating cgroup directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("removing cgroup directory {path}: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("{path} holds {content:?}: {reason}")]
    Parse {
        path: PathBuf,
        content: String,
        reason: String,
    },
    #[error("malformed line in {path}: {line:?} (expected mountinfo's '... - fstype source opts')")]
    Mountinfo { path: PathBuf, line: String },
    #[error(
        "no cgroup filesystem is mounted under {root} according to {mountinfo}: pass the right --cgroup-root"
    )]
    NotMounted { root: PathBuf, mountinfo: PathBuf },
    #[error("the cgroup v1 controller {controller:?} is not mounted (see {mountinfo})")]
    NoController {
        controller: String,
        mountinfo: PathBuf,
    },
    #[error("group name {0:?} must be a relative path without '..' (e.g. slurm_n1/uid_0/job_7)")]
    BadGroup(PathBuf),
    #[error("CPU weight {0} is out of range: use 1..=10000 (100 is the default)")]
    BadWeight(u64),
    #[error("{path} did not reach the frozen state within {timeout:?} (last state {state:?})")]
    FreezeTimeout {
        path: PathBuf,
        timeout: Duration,
        state: String,
    },
    #[error("sending SIGKILL to pid {pid} of {path}: {source}")]
    Kill {
        path: PathBuf,
        pid: u32,
        source: io::Error,
    },
}

/// Everything the agent does with cgroups. Implemented by [`V1`] and [`V2`].
pub trait Cgroups: std::fmt::Debug + Send + Sync {
    fn version(&self) -> CgroupVersion;
    /// Whether the group exists (in v1: in the cpuset hierarchy, the one Slurm always uses).
    fn exists(&self, group: &Path) -> bool;
    /// The CPUs the group may run on (v1 `cpuset.cpus`, v2 `cpuset.cpus.effective`).
    fn cpus(&self, group: &Path) -> Result<CpuSet, CgroupError>;
    /// The memory limit in bytes, `None` when unlimited (v1 `memory.limit_in_bytes`, v2
    /// `memory.max`).
    fn memory_limit(&self, group: &Path) -> Result<Option<u64>, CgroupError>;
    /// The names of the group's child groups, sorted.
    fn children(&self, group: &Path) -> Result<Vec<String>, CgroupError>;
    /// Creates the group and any missing parents, and applies `spec`.
    fn create(&self, group: &Path, spec: &GroupSpec) -> Result<(), CgroupError>;
    /// Moves a process into the group.
    fn attach(&self, group: &Path, pid: u32) -> Result<(), CgroupError>;
    /// The pids in the group itself (not its children).
    fn pids(&self, group: &Path) -> Result<Vec<u32>, CgroupError>;
    /// Freezes the group and waits until it is frozen.
    fn freeze(&self, group: &Path) -> Result<(), CgroupError>;
    fn thaw(&self, group: &Path) -> Result<(), CgroupError>;
    /// Kills every process in the group (without waiting for them to exit; a process forked
    /// meanwhile may survive, so callers that need the group empty poll and kill again).
    fn kill(&self, group: &Path) -> Result<(), CgroupError>;
    /// Removes the group and its child groups, bottom-up. A group that does not exist is fine.
    fn remove(&self, group: &Path) -> Result<(), CgroupError>;
    /// The `cgroup.procs` files a process writes its own pid to, to join the group in every
    /// hierarchy it exists in (v1: one per managed controller; v2: one).
    fn procs_files(&self, group: &Path) -> Result<Vec<PathBuf>, CgroupError>;
    /// The file with the group's `oom_kill N` counter (v1 `memory.oom_control`, v2
    /// `memory.events`).
    fn oom_events_file(&self, group: &Path) -> Result<PathBuf, CgroupError>;
    /// Sets the CPU weight (v2 units, 1..=10000; v1 gets the matching `cpu.shares`) of an existing
    /// group; a group that is gone is an error, never re-created.
    fn set_cpu_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError>;
    /// Makes the group SCHED_IDLE (`cpu.idle`, Linux 5.15 and later) or normal again: an idle
    /// group's tasks run only when nothing else wants the CPU, and any other task preempts them
    /// at once. `Ok(false)` when the kernel has no `cpu.idle`.
    fn set_cpu_idle(&self, group: &Path, idle: bool) -> Result<bool, CgroupError>;
    /// Caps the group's CPU time (`None` lifts the cap).
    fn set_cpu_quota(&self, group: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError>;
    /// The group's CPU time and throttling, where the host keeps them for it.
    fn cpu_stat(&self, group: &Path) -> Result<CpuStat, CgroupError>;
    /// Memory in use by the group, in bytes (v1 `memory.usage_in_bytes`, v2 `memory.current`).
    fn memory_usage(&self, group: &Path) -> Result<u64, CgroupError>;
    /// The group's pressure (PSI) file for `resource` (`cpu`, `memory`, `io`) in a v2 tree, when
    /// it exists: the group itself on v2, the same path in the controller-less unified tree on a
    /// hybrid v1 host (only for groups someone placed there).
    fn pressure_file(&self, _group: &Path, _resource: &str) -> Option<PathBuf> {
        None
    }
    /// Which of [`GroupSpec`]'s `pids_max`, `no_swap` and `devices` this host enforces.
    fn confinement(&self) -> Confinement;
}

/// Detects the cgroup version from `mountinfo` (mounts under `root` only) and opens a backend.
pub fn open(root: &Path, mountinfo: &Path) -> Result<Box<dyn Cgroups>, CgroupError> {
    let text = std::fs::read_to_string(mountinfo).map_err(|source| CgroupError::Read {
        path: mountinfo.to_path_buf(),
        source,
    })?;
    let mounts = mountinfo::parse(&text, mountinfo)?;
    let backend: Box<dyn Cgroups> = match mountinfo::layout(&mounts, root, mountinfo)? {
        Layout::V1 { controllers } => Box::new(V1::new(controllers, mountinfo.to_path_buf())?),
        Layout::V2 { root } => Box::new(V2::new(root)),
    };
    tracing::info!(version = ?backend.version(), root = %root.display(), "cgroups detected");
    backend.confinement().log();
    Ok(backend)
}

/// v2's `cpu.weight` to v1's `cpu.shares`: the inverse of the conversion runc and crun use.
pub fn weight_to_shares(weight: u64) -> Result<u64, CgroupError> {
    if !(1..=10_000).contains(&weight) {
        return Err(CgroupError::BadWeight(weight));
    }
    Ok(2 + ((weight - 1) * 262_142) / 9_999)
}

/// Checks that a group name stays inside the hierarchy.
pub(crate) fn check_group(group: &Path) -> Result<(), CgroupError> {
    let ok = group
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::BadGroup(group.to_path_buf()))
    }
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_path_buf(),
        value: value.to_owned(),
        source,
    })
}

/// One write of `line` (and a newline) opened for appending: the kernel takes each write of a
/// list file (`devices.allow`) as one rule, and a fake tree keeps every line for its test.
pub(crate) fn append(path: &Path, line: &str) -> Result<(), CgroupError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_path_buf(),
            value: line.to_owned(),
            source,
        })
}

pub(crate) fn parse_cpus(path: &Path, text: &str) -> Result<CpuSet, CgroupError> {
    CpuSet::parse_list(text).map_err(|e| CgroupError::Parse {
        path: path.to_path_buf(),
        content: text.trim().to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        content: text.trim().to_owned(),
        reason: "expected a whole number".into(),
    })
}

/// The value of `key` in a flat keyed file (`cpu.stat`: `usage_usec 123`); `None` when absent.
pub(crate) fn keyed_u64(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then_some(v)
        })
        .map(|v| parse_u64(path, v))
        .transpose()
}

/// Reads a file that may be absent (a controller the group is not in): `None` then.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(crate) fn parse_pids(path: &Path, text: &str) -> Result<Vec<u32>, CgroupError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Parse {
                path: path.to_path_buf(),
                content: l.to_owned(),
                reason: "expected one pid per line".into(),
            })
        })
        .collect()
}

/// Child directory names of `dir`, sorted; a missing `dir` has none.
pub(crate) fn child_dirs(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CgroupError::Read {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CgroupError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `dir` and its subdirectories bottom-up with `rmdir` (cgroup directories hold only
/// kernel files, which go with the directory). A missing `dir` is fine.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), CgroupError> {
    for child in child_dirs(dir)? {
        remove_tree(&dir.join(child))?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CgroupError::Remove {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Sends SIGKILL to every pid of a group; a pid that already exited is fine.
pub(crate) fn kill_pids(path: &Path, pids: &[u32]) -> Result<(), CgroupError> {
    for &pid in pids {
        let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        match rustix::process::kill_process(raw, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                return Err(CgroupError::Kill {
                    path: path.to_path_buf(),
                    pid,
                    source: e.into(),
                });
            }
        }
    }
    Ok(())
}

/// Polls `state` until it returns `want` or [`FREEZE_TIMEOUT`] passes.
pub(crate) fn wait_frozen(
    path: &Path,
    want: &str,
    mut state: impl FnMut() -> Result<String, CgroupError>,
) -> Result<(), CgroupError> {
    let deadline = Instant::now() + FREEZE_TIMEOUT;
    loop {
        let now = state()?;
        if now.trim() == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::FreezeTimeout {
                path: path.to_path_buf(),
                timeout: FREEZE_TIMEOUT,
                state: now.trim().to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversion_matches_runc_at_the_ends() {
        assert_eq!(weight_to_shares(1).unwrap(), 2);
        assert_eq!(weight_to_shares(10_000).unwrap(), 262_144);
        // The default weight lands near the default 1024 shares.
        let d = weight_to_shares(100).unwrap();
        assert!((2_500..=2_700).contains(&d), "{d}");
        assert!(matches!(
            weight_to_shares(0),
            Err(CgroupError::BadWeight(0))
        ));
        assert!(weight_to_shares(10_001).is_err());
    }

    #[test]
    fn group_names_stay_inside_the_hierarchy() {
        assert!(check_group(Path::new("a/b")).is_ok());
        assert!(check_group(Path::new("../a")).is_err());
        assert!(check_group(Path::new("/abs")).is_err());
        assert!(check_group(Path::new("a/../../b")).is_err());
    }
}
