//! The Slurm view: which jobs Slurm's cgroup tree says are running on a node.
//!
//! Slurm's task/cgroup plugin makes one directory per job. Where those directories live, and how
//! they are named, changes between Slurm releases and cgroup versions, so it is decided in ONE
//! place, `job_parents` and [`job_id_of`]; everything else asks [`SlurmView::jobs`].
//!
//! - v1 (Slurm 22.05 here): `<ctl>/slurm_<node>/uid_<uid>/job_<id>/step_<step>/...`
//! - v2 (Slurm 22.05+): `system.slice/<node>_slurmstepd.scope/job_<id>/...` with several slurmds
//!   per host, `system.slice/slurmstepd.scope/job_<id>` with one.

use std::path::{Path, PathBuf};

use harvest_core::CpuSet;

use crate::cgroup::{CgroupError, CgroupVersion, Cgroups};

/// One job's cgroup as found in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCgroup {
    pub job_id: u32,
    /// The job owner's uid, when the layout encodes it.
    pub uid: Option<u32>,
    /// The group, relative to the hierarchy root.
    pub group: PathBuf,
    /// The job's CPUs (OS ids).
    pub cpus: CpuSet,
    /// The job's memory limit in MiB, `None` when the job's memory is not constrained.
    pub memory_mib: Option<u64>,
}

/// Directories that hold job directories of `node`, each with the uid its children belong to.
fn job_parents(
    cgroups: &dyn Cgroups,
    node: &str,
) -> Result<Vec<(PathBuf, Option<u32>)>, CgroupError> {
    match cgroups.version() {
        CgroupVersion::V1 => {
            let node_dir = PathBuf::from(format!("slurm_{node}"));
            if !cgroups.exists(&node_dir) {
                return Ok(Vec::new());
            }
            Ok(cgroups
                .children(&node_dir)?
                .into_iter()
                .filter_map(|d| {
                    let uid = d.strip_prefix("uid_")?.parse().ok()?;
                    Some((node_dir.join(d), Some(uid)))
                })
                .collect())
        }
        CgroupVersion::V2 => Ok([
            format!("system.slice/{node}_slurmstepd.scope"),
            "system.slice/slurmstepd.scope".to_owned(),
        ]
        .into_iter()
        .map(PathBuf::from)
        .filter(|p| cgroups.exists(p))
        .map(|p| (p, None))
        .collect()),
    }
}

/// The job id a job directory's name encodes (`job_123`), or `None` for other directories
/// (`step_*`, `system`).
pub fn job_id_of(dir_name: &str) -> Option<u32> {
    dir_name.strip_prefix("job_")?.parse().ok()
}

/// A node's jobs according to the cgroup tree.
#[derive(Debug)]
pub struct SlurmView<'a> {
    cgroups: &'a dyn Cgroups,
    node: &'a str,
}

impl<'a> SlurmView<'a> {
    pub fn new(cgroups: &'a dyn Cgroups, node: &'a str) -> Self {
        Self { cgroups, node }
    }

    /// Every job of the node with its CPUs and memory, sorted by job id. A job whose directory
    /// vanishes while it is read (it just ended) is left out.
    pub fn jobs(&self) -> Result<Vec<JobCgroup>, CgroupError> {
        let mut jobs = Vec::new();
        for (parent, uid) in job_parents(self.cgroups, self.node)? {
            for name in self.cgroups.children(&parent)? {
                let Some(job_id) = job_id_of(&name) else {
                    continue;
                };
                let group = parent.join(&name);
                match self.read_job(job_id, uid, &group) {
                    Ok(job) => jobs.push(job),
                    Err(e) if vanished(&e) => {
                        tracing::debug!(job_id, error = %e, "job cgroup vanished while read");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        jobs.sort_by_key(|j| j.job_id);
        Ok(jobs)
    }

    fn read_job(
        &self,
        job_id: u32,
        uid: Option<u32>,
        group: &Path,
    ) -> Result<JobCgroup, CgroupError> {
        let cpus = self.cgroups.cpus(group)?;
        let memory_mib = match self.cgroups.memory_limit(group) {
            Ok(limit) => limit.map(|b| b.div_ceil(1 << 20)),
            // The memory hierarchy may lag the cpuset one while a job starts or ends; an
            // unknown limit counts as unconstrained, which holds more, never less.
            Err(e) if vanished(&e) => None,
            Err(e) => return Err(e),
        };
        Ok(JobCgroup {
            job_id,
            uid,
            group: group.to_path_buf(),
            cpus,
            memory_mib,
        })
    }
}

fn vanished(e: &CgroupError) -> bool {
    matches!(e, CgroupError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fake Slurm cgroup tree (v1 layout) in a temp directory.
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use crate::cgroup::V1;

    /// A temp dir with `cpuset/` and `memory/` v1 hierarchies and a backend over them.
    #[derive(Debug)]
    pub struct FakeTree {
        pub dir: tempfile::TempDir,
        pub v1: V1,
    }

    impl FakeTree {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut controllers = BTreeMap::new();
            for c in ["cpuset", "memory"] {
                let p = dir.path().join(c);
                std::fs::create_dir_all(&p).unwrap();
                controllers.insert(c.to_owned(), p);
            }
            std::fs::write(dir.path().join("cpuset/cpuset.cpus"), "0-3").unwrap();
            std::fs::write(dir.path().join("cpuset/cpuset.mems"), "0").unwrap();
            let v1 = V1::new(controllers, PathBuf::from("fake-mountinfo")).unwrap();
            Self { dir, v1 }
        }

        fn job_dir(&self, ctl: &str, node: &str, uid: u32, job: u32) -> PathBuf {
            self.dir
                .path()
                .join(ctl)
                .join(format!("slurm_{node}/uid_{uid}/job_{job}"))
        }

        /// Adds a job the way Slurm lays it out; `mem_mib: None` writes v1's "unlimited".
        pub fn add_job(&self, node: &str, uid: u32, job: u32, cpus: &str, mem_mib: Option<u64>) {
            let c = self.job_dir("cpuset", node, uid, job);
            std::fs::create_dir_all(c.join("step_batch")).unwrap();
            std::fs::write(c.join("cpuset.cpus"), cpus).unwrap();
            let m = self.job_dir("memory", node, uid, job);
            std::fs::create_dir_all(&m).unwrap();
            let bytes = mem_mib.map_or(9_223_372_036_854_771_712, |m| m << 20);
            std::fs::write(m.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
        }

        pub fn remove_job(&self, node: &str, uid: u32, job: u32) {
            for ctl in ["cpuset", "memory"] {
                let d = self.job_dir(ctl, node, uid, job);
                if Path::new(&d).exists() {
                    std::fs::remove_dir_all(d).unwrap();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::FakeTree;
    use super::*;
    use crate::cgroup::V2;

    #[test]
    fn finds_jobs_of_one_node_only() {
        let tree = FakeTree::new();
        tree.add_job("n1", 1000, 7, "1", Some(500));
        tree.add_job("n1", 0, 9, "0,2", None);
        tree.add_job("n2", 1000, 8, "0", Some(100));
        // Not a job directory: ignored.
        std::fs::create_dir_all(tree.dir.path().join("cpuset/slurm_n1/uid_0/system")).unwrap();
        let jobs = SlurmView::new(&tree.v1, "n1").jobs().unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].job_id, 7);
        assert_eq!(jobs[0].uid, Some(1000));
        assert_eq!(jobs[0].cpus.to_list(), "1");
        assert_eq!(jobs[0].memory_mib, Some(500));
        assert_eq!(jobs[0].group, Path::new("slurm_n1/uid_1000/job_7"));
        assert_eq!(jobs[1].cpus.to_list(), "0,2");
        assert_eq!(jobs[1].memory_mib, None);
        assert!(SlurmView::new(&tree.v1, "n3").jobs().unwrap().is_empty());
    }

    #[test]
    fn a_job_without_memory_cgroup_counts_as_unconstrained() {
        let tree = FakeTree::new();
        tree.add_job("n1", 0, 5, "3", Some(64));
        std::fs::remove_dir_all(tree.dir.path().join("memory/slurm_n1/uid_0/job_5")).unwrap();
        let jobs = SlurmView::new(&tree.v1, "n1").jobs().unwrap();
        assert_eq!(jobs[0].memory_mib, None);
    }

    #[test]
    fn v2_layout_with_per_node_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("system.slice/n1_slurmstepd.scope/job_12");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("cpuset.cpus.effective"), "4-5").unwrap();
        std::fs::write(job.join("memory.max"), (200u64 << 20).to_string()).unwrap();
        let v2 = V2::new(dir.path().to_path_buf());
        let jobs = SlurmView::new(&v2, "n1").jobs().unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].job_id, jobs[0].uid), (12, None));
        assert_eq!(jobs[0].cpus.to_list(), "4-5");
        assert_eq!(jobs[0].memory_mib, Some(200));
        assert!(SlurmView::new(&v2, "n2").jobs().unwrap().is_empty());
    }

    #[test]
    fn job_dir_names() {
        assert_eq!(job_id_of("job_42"), Some(42));
        assert_eq!(job_id_of("step_batch"), None);
        assert_eq!(job_id_of("job_x"), None);
    }
}
