//! What the job's cgroup says it got: OS CPU ids and a memory limit, on cgroup v1 or v2.
//!
//! All knowledge of where Slurm puts a job's cgroup lives in this module. slurmstepd sits in its
//! step's cgroup by the time `slurm_spank_user_init` runs (checked on Slurm 22.05, v1:
//! `cpuset:/slurm_n1/uid_0/job_6/step_0`), so the job's directory is found by cutting
//! `/proc/self/cgroup` at the `job_<id>` component; when that fails (the stepd was not moved, or
//! another callback), the usual layouts are searched. Roots are parameters, so tests build a fake
//! tree in a temporary directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use harvest_core::step::StepId;
use harvest_core::{CpuSet, CpuSetParseError};

/// A v1 `memory.limit_in_bytes` at or above this is "no limit" (the kernel prints
/// `PAGE_COUNTER_MAX * PAGE_SIZE`, 9223372036854771712 on x86_64).
pub const V1_UNLIMITED_BYTES: u64 = 1 << 62;
/// How deep the v2 search for a job directory goes below the root.
pub const V2_SEARCH_DEPTH: usize = 4;

const MIB: u64 = 1024 * 1024;

/// Which job to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobKey<'a> {
    pub node: &'a str,
    pub uid: u32,
    pub job_id: u32,
}

/// What the job's cgroup grants it on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResources {
    /// OS CPU ids (`cpuset.cpus`, or `cpuset.cpus.effective` on v2).
    pub cpus: CpuSet,
    /// The memory limit in MiB, `None` when unlimited.
    pub memory_mib: Option<u64>,
}

/// Reads a job's resources from wherever its cgroups are.
pub trait JobCgroups {
    fn job_resources(&self, job: JobKey<'_>) -> Result<JobResources, CgroupError>;
    /// The `devices.list` of the step's v1 devices cgroup (`ConstrainDevices=yes`): what Slurm
    /// lets the step open, for [`crate::gpus::step_gpus`].
    fn step_devices_list(&self, job: JobKey<'_>, step: StepId) -> Result<String, CgroupError>;
}

/// The job's cgroup could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup directory for job {job_id} ({controller}); looked at {searched:?}")]
    NotFound {
        job_id: u32,
        controller: &'static str,
        searched: Vec<PathBuf>,
    },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Cpus {
        path: PathBuf,
        source: CpuSetParseError,
    },
    #[error("no v1 devices hierarchy under {root} (cgroup v2, or ConstrainDevices is off)")]
    NoDevices { root: PathBuf },
    #[error("{path}: {value:?} is not a memory limit in bytes (or \"max\")")]
    Memory { path: PathBuf, value: String },
}

/// The cgroup filesystem as the kernel shows it.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    /// Where the hierarchies are mounted (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// This process's membership (`/proc/self/cgroup`).
    pub proc_self_cgroup: PathBuf,
}

/// One line of `/proc/self/cgroup`: `id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Membership {
    controllers: Vec<String>,
    path: String,
}

impl CgroupFs {
    pub fn new(root: impl Into<PathBuf>, proc_self_cgroup: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            proc_self_cgroup: proc_self_cgroup.into(),
        }
    }

    fn memberships(&self) -> Vec<Membership> {
        // Unreadable membership only loses the fast path; the search below still runs.
        let text = fs::read_to_string(&self.proc_self_cgroup).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                Some(Membership {
                    controllers: controllers
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    path: path.to_owned(),
                })
            })
            .collect()
    }

    /// The job's directory in the v1 hierarchy of `controller`.
    fn v1_job_dir(
        &self,
        own: &[Membership],
        controller: &'static str,
        job: JobKey<'_>,
    ) -> Result<PathBuf, CgroupError> {
        let mount = self.root.join(controller);
        let mut searched = Vec::new();
        let from_self = own
            .iter()
            .find(|m| m.controllers.iter().any(|c| c == controller))
            .and_then(|m| cut_at_job(&m.path, job.job_id))
            .map(|rel| mount.join(rel));
        let guesses = [
            format!(
                "slurm_{}/uid_{}/{}",
                job.node,
                job.uid,
                job_dir_name(job.job_id)
            ),
            format!("slurm/uid_{}/{}", job.uid, job_dir_name(job.job_id)),
        ];
        for dir in from_self
            .into_iter()
            .chain(guesses.iter().map(|g| mount.join(g)))
        {
            if dir.is_dir() {
                return Ok(dir);
            }
            searched.push(dir);
        }
        Err(CgroupError::NotFound {
            job_id: job.job_id,
            controller,
            searched,
        })
    }

    /// The job's directory in the v2 hierarchy.
    fn v2_job_dir(&self, own: &[Membership], job: JobKey<'_>) -> Result<PathBuf, CgroupError> {
        let from_self = own
            .iter()
            .find(|m| m.controllers.is_empty())
            .and_then(|m| cut_at_job(&m.path, job.job_id))
            .map(|rel| self.root.join(rel));
        if let Some(dir) = from_self.as_ref().filter(|d| d.is_dir()) {
            return Ok(dir.clone());
        }
        // Slurm's v2 layout is `<slurmstepd scope>/job_<id>`; the scope's name differs between
        // releases and with several slurmd per host, so search, preferring this node's scope.
        let mut found = Vec::new();
        find_dirs(
            &self.root,
            &job_dir_name(job.job_id),
            V2_SEARCH_DEPTH,
            &mut found,
        );
        let node_scope = |p: &PathBuf| p.to_string_lossy().contains(job.node);
        if let Some(dir) = found.iter().find(|p| node_scope(p)).or(found.first()) {
            return Ok(dir.clone());
        }
        Err(CgroupError::NotFound {
            job_id: job.job_id,
            controller: "unified",
            searched: from_self.into_iter().chain([self.root.clone()]).collect(),
        })
    }
}

impl JobCgroups for CgroupFs {
    fn job_resources(&self, job: JobKey<'_>) -> Result<JobResources, CgroupError> {
        let own = self.memberships();
        let v1 = own
            .iter()
            .any(|m| m.controllers.iter().any(|c| c == "cpuset"))
            || self.root.join("cpuset").is_dir();
        if v1 {
            let cpuset = self.v1_job_dir(&own, "cpuset", job)?;
            let cpus = read_cpus(&cpuset.join("cpuset.cpus"))?;
            let memory = self.v1_job_dir(&own, "memory", job)?;
            let memory_mib = read_v1_limit(&memory.join("memory.limit_in_bytes"))?;
            Ok(JobResources { cpus, memory_mib })
        } else {
            let dir = self.v2_job_dir(&own, job)?;
            let cpus = read_cpus(&dir.join("cpuset.cpus.effective"))?;
            let memory_mib = read_v2_max(&dir.join("memory.max"))?;
            Ok(JobResources { cpus, memory_mib })
        }
    }

    fn step_devices_list(&self, job: JobKey<'_>, step: StepId) -> Result<String, CgroupError> {
        let own = self.memberships();
        let v1 = own
            .iter()
            .any(|m| m.controllers.iter().any(|c| c == "devices"))
            || self.root.join("devices").is_dir();
        if !v1 {
            return Err(CgroupError::NoDevices {
                root: self.root.clone(),
            });
        }
        let dir = self
            .v1_job_dir(&own, "devices", job)?
            .join(step_dir_name(step));
        read(&dir.join("devices.list"))
    }
}

/// The name Slurm gives a step's cgroup directory under its job's: `step_0`, `step_batch`,
/// `step_extern`, `step_interactive`.
fn step_dir_name(step: StepId) -> String {
    format!("step_{step}")
}

/// The name Slurm gives a job's cgroup directory. Slurm 26.05 and later name it by a new job
/// identifier instead; this is the one place to teach that.
fn job_dir_name(job_id: u32) -> String {
    format!("job_{job_id}")
}

/// `path` up to and including its `job_<id>` component, without the leading `/`.
fn cut_at_job(path: &str, job_id: u32) -> Option<String> {
    let want = job_dir_name(job_id);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let at = parts.iter().position(|p| *p == want)?;
    Some(parts[..=at].join("/"))
}

fn find_dirs(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if entry.file_name() == name {
            found.push(path);
        } else {
            find_dirs(&path, name, depth - 1, found);
        }
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_cpus(path: &Path) -> Result<CpuSet, CgroupError> {
    CpuSet::parse_list(&read(path)?).map_err(|source| CgroupError::Cpus {
        path: path.to_owned(),
        source,
    })
}

fn parse_bytes(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Memory {
        path: path.to_owned(),
        value: text.trim().to_owned(),
    })
}

fn read_v1_limit(path: &Path) -> Result<Option<u64>, CgroupError> {
    let bytes = parse_bytes(path, &read(path)?)?;
    Ok((bytes < V1_UNLIMITED_BYTES).then_some(bytes / MIB))
}

fn read_v2_max(path: &Path) -> Result<Option<u64>, CgroupError> {
    let text = read(path)?;
    if text.trim() == "max" {
        return Ok(None);
    }
    Ok(Some(parse_bytes(path, &text)? / MIB))
}

#[cfg(test)]
#[path = "cgroup_tests.rs"]
mod tests;
