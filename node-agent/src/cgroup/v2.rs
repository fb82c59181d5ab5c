//! The cgroup v2 backend: one unified hierarchy.
//!
//! Controllers must be enabled in a parent's `cgroup.subtree_control` before a child can use
//! them, so [`V2::create`] enables what the spec needs on every level above the new group.
//!
//! Device access is not confined on v2: it takes an eBPF program (`BPF_CGROUP_DEVICE`) attached
//! to the group, which this backend does not attach; [`Cgroups::confinement`] says so at start.

use std::path::{Path, PathBuf};

use harvest_core::CpuSet;

use super::{
    CgroupError, CgroupVersion, Cgroups, Confinement, CpuQuota, CpuStat, GroupSpec, Support,
    check_group, child_dirs, keyed_u64, kill_pids, parse_cpus, parse_pids, parse_u64, read,
    read_optional, remove_tree, wait_frozen, write,
};

/// cgroup v2, rooted at the unified mount point.
#[derive(Debug, Clone)]
pub struct V2 {
    root: PathBuf,
    /// The root offers the pids controller (`cgroup.controllers`; a tree without that file, a
    /// test's fake, is taken to offer it).
    pids: bool,
}

/// Set once a group without `memory.swap.max` (a kernel without swap accounting) was logged.
static NO_SWAP_FILE: std::sync::Once = std::sync::Once::new();

impl V2 {
    pub fn new(root: PathBuf) -> Self {
        let pids = std::fs::read_to_string(root.join("cgroup.controllers"))
            .map_or(true, |c| c.split_whitespace().any(|c| c == "pids"));
        Self { root, pids }
    }

    fn dir(&self, group: &Path) -> Result<PathBuf, CgroupError> {
        check_group(group)?;
        Ok(self.root.join(group))
    }

    /// Whether the group reports itself frozen in `cgroup.events`.
    fn frozen_state(&self, dir: &Path) -> Result<String, CgroupError> {
        let events = read(&dir.join("cgroup.events"))?;
        let frozen = events
            .lines()
            .find_map(|l| l.strip_prefix("frozen "))
            .unwrap_or("0");
        Ok(frozen.trim().to_owned())
    }
}

impl Cgroups for V2 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V2
    }

    fn exists(&self, group: &Path) -> bool {
        self.dir(group).is_ok_and(|d| d.is_dir())
    }

    fn cpus(&self, group: &Path) -> Result<CpuSet, CgroupError> {
        let path = self.dir(group)?.join("cpuset.cpus.effective");
        parse_cpus(&path, &read(&path)?)
    }

    fn memory_limit(&self, group: &Path) -> Result<Option<u64>, CgroupError> {
        let path = self.dir(group)?.join("memory.max");
        let text = read(&path)?;
        if text.trim() == "max" {
            return Ok(None);
        }
        parse_u64(&path, &text).map(Some)
    }

    fn children(&self, group: &Path) -> Result<Vec<String>, CgroupError> {
        child_dirs(&self.dir(group)?)
    }

    fn create(&self, group: &Path, spec: &GroupSpec) -> Result<(), CgroupError> {
        let leaf = self.dir(group)?;
        if let Some(w) = spec.cpu_weight
            && !(1..=10_000).contains(&w)
        {
            return Err(CgroupError::BadWeight(w));
        }
        let mut needed = Vec::new();
        if spec.cpus.is_some() || spec.mems.is_some() {
            needed.push("+cpuset");
        }
        if spec.memory_limit_bytes.is_some() {
            needed.push("+memory");
        }
        if spec.cpu_weight.is_some() {
            needed.push("+cpu");
        }
        let pids_max = spec.pids_max.filter(|_| self.pids);
        if pids_max.is_some() {
            needed.push("+pids");
        }
        let mut dir = self.root.clone();
        for level in group.components() {
            for controller in &needed {
                write(&dir.join("cgroup.subtree_control"), controller)?;
            }
            dir.push(level);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(CgroupError::Create {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        if let Some(mems) = &spec.mems {
            write(&leaf.join("cpuset.mems"), &mems.to_list())?;
        }
        if let Some(cpus) = &spec.cpus {
            write(&leaf.join("cpuset.cpus"), &cpus.to_list())?;
        }
        if let Some(limit) = spec.memory_limit_bytes {
            write(&leaf.join("memory.max"), &limit.to_string())?;
            if spec.no_swap {
                let swap = leaf.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                } else {
                    NO_SWAP_FILE.call_once(|| {
                        tracing::warn!(path = %swap.display(),
                            "no memory.swap.max (the kernel does not account swap): leases may swap");
                    });
                }
            }
        }
        if let Some(max) = pids_max {
            write(&leaf.join("pids.max"), &max.to_string())?;
        }
        if let Some(weight) = spec.cpu_weight {
            write(&leaf.join("cpu.weight"), &weight.to_string())?;
        }
        tracing::debug!(group = %group.display(), ?spec, "created v2 cgroup");
        Ok(())
    }

    fn attach(&self, group: &Path, pid: u32) -> Result<(), CgroupError> {
        write(&self.dir(group)?.join("cgroup.procs"), &pid.to_string())
    }

    fn pids(&self, group: &Path) -> Result<Vec<u32>, CgroupError> {
        let path = self.dir(group)?.join("cgroup.procs");
        parse_pids(&path, &read(&path)?)
    }

    fn freeze(&self, group: &Path) -> Result<(), CgroupError> {
        let dir = self.dir(group)?;
        write(&dir.join("cgroup.freeze"), "1")?;
        wait_frozen(&dir.join("cgroup.events"), "1", || self.frozen_state(&dir))
    }

    fn thaw(&self, group: &Path) -> Result<(), CgroupError> {
        write(&self.dir(group)?.join("cgroup.freeze"), "0")
    }

    fn kill(&self, group: &Path) -> Result<(), CgroupError> {
        let dir = self.dir(group)?;
        let kill_file = dir.join("cgroup.kill");
        if kill_file.exists() {
            return write(&kill_file, "1");
        }
        // Kernels before 5.14 have no cgroup.kill: freeze, kill each pid, thaw.
        self.freeze(group)?;
        let mut stack = vec![dir];
        let result = (|| {
            while let Some(d) = stack.pop() {
                let procs = d.join("cgroup.procs");
                kill_pids(&d, &parse_pids(&procs, &read(&procs)?)?)?;
                stack.extend(child_dirs(&d)?.into_iter().map(|c| d.join(c)));
            }
            Ok(())
        })();
        self.thaw(group)?;
        result
    }

    fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        remove_tree(&self.dir(group)?)
    }

    fn procs_files(&self, group: &Path) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(vec![self.dir(group)?.join("cgroup.procs")])
    }

    fn oom_events_file(&self, group: &Path) -> Result<PathBuf, CgroupError> {
        Ok(self.dir(group)?.join("memory.events"))
    }

    fn set_cpu_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError> {
        if !(1..=10_000).contains(&weight) {
            return Err(CgroupError::BadWeight(weight));
        }
        write(&self.dir(group)?.join("cpu.weight"), &weight.to_string())
    }

    fn set_cpu_idle(&self, group: &Path, idle: bool) -> Result<bool, CgroupError> {
        let path = self.dir(group)?.join("cpu.idle");
        if !path.exists() {
            return Ok(false);
        }
        write(&path, if idle { "1" } else { "0" }).map(|()| true)
    }

    fn set_cpu_quota(&self, group: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        let path = self.dir(group)?.join("cpu.max");
        match quota {
            Some(q) => write(&path, &format!("{} {}", q.quota_us, q.period_us)),
            None => write(&path, "max"),
        }
    }

    fn cpu_stat(&self, group: &Path) -> Result<CpuStat, CgroupError> {
        let path = self.dir(group)?.join("cpu.stat");
        let Some(text) = read_optional(&path)? else {
            return Ok(CpuStat::default());
        };
        let us = |key| keyed_u64(&path, &text, key).map(|v| v.map(|us| us.saturating_mul(1000)));
        Ok(CpuStat {
            usage_ns: us("usage_usec")?,
            nr_throttled: keyed_u64(&path, &text, "nr_throttled")?,
            throttled_ns: us("throttled_usec")?,
        })
    }

    fn memory_usage(&self, group: &Path) -> Result<u64, CgroupError> {
        let path = self.dir(group)?.join("memory.current");
        parse_u64(&path, &read(&path)?)
    }

    fn confinement(&self) -> Confinement {
        Confinement {
            pids: if self.pids {
                Support::Enforced
            } else {
                Support::Unavailable(format!(
                    "{} does not offer the pids controller: a lease may fork or make threads \
                     without bound",
                    self.root.join("cgroup.controllers").display()
                ))
            },
            no_swap: Support::Enforced,
            devices: Support::Unavailable(
                "cgroup v2 confines devices with an eBPF program (BPF_CGROUP_DEVICE), which \
                 harvestd does not attach: a lease may open every device node its user may open, \
                 a lent GPU is only named by CUDA_VISIBLE_DEVICES"
                    .into(),
            ),
        }
    }

    fn pressure_file(&self, group: &Path, resource: &str) -> Option<PathBuf> {
        let file = self.dir(group).ok()?.join(format!("{resource}.pressure"));
        file.is_file().then_some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake unified hierarchy in a temp dir (the kernel's interface files are plain files).
    fn fake() -> (tempfile::TempDir, V2) {
        let dir = tempfile::tempdir().unwrap();
        let v2 = V2::new(dir.path().to_path_buf());
        (dir, v2)
    }

    #[test]
    fn reads_effective_cpus_and_memory_max() {
        let (tmp, v2) = fake();
        let job = tmp.path().join("system.slice/job_7");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("cpuset.cpus"), "0-7\n").unwrap();
        std::fs::write(job.join("cpuset.cpus.effective"), "2-3\n").unwrap();
        std::fs::write(job.join("memory.max"), "524288000\n").unwrap();
        let g = Path::new("system.slice/job_7");
        assert!(v2.exists(g));
        assert_eq!(v2.cpus(g).unwrap().to_list(), "2-3");
        assert_eq!(v2.memory_limit(g).unwrap(), Some(500 << 20));
        std::fs::write(job.join("memory.max"), "max\n").unwrap();
        assert_eq!(v2.memory_limit(g).unwrap(), None);
        assert_eq!(v2.children(Path::new("system.slice")).unwrap(), ["job_7"]);
        std::fs::write(job.join("memory.max"), "lots\n").unwrap();
        let err = v2.memory_limit(g).unwrap_err().to_string();
        assert!(err.contains("memory.max") && err.contains("lots"), "{err}");
    }

    #[test]
    fn create_enables_controllers_and_writes_the_spec() {
        let (tmp, v2) = fake();
        let spec = GroupSpec {
            cpus: Some([1, 2].into_iter().collect()),
            mems: Some([0].into_iter().collect()),
            memory_limit_bytes: Some(256 << 20),
            cpu_weight: Some(50),
            ..GroupSpec::default()
        };
        let g = Path::new("harvest/lease_1");
        v2.create(g, &spec).unwrap();
        let leaf = tmp.path().join("harvest/lease_1");
        let file = |p: &Path, f: &str| std::fs::read_to_string(p.join(f)).unwrap();
        assert_eq!(file(&leaf, "cpuset.cpus"), "1-2");
        assert_eq!(file(&leaf, "cpuset.mems"), "0");
        assert_eq!(file(&leaf, "memory.max"), (256u64 << 20).to_string());
        assert_eq!(file(&leaf, "cpu.weight"), "50");
        assert_eq!(v2.procs_files(g).unwrap(), [leaf.join("cgroup.procs")]);
        assert_eq!(v2.oom_events_file(g).unwrap(), leaf.join("memory.events"));
        // The fake keeps only the last write; the real file accumulates "+cpuset +memory +cpu".
        assert_eq!(
            file(&tmp.path().join("harvest"), "cgroup.subtree_control"),
            "+cpu"
        );
        assert!(matches!(
            v2.create(
                g,
                &GroupSpec {
                    cpu_weight: Some(0),
                    ..GroupSpec::default()
                }
            ),
            Err(CgroupError::BadWeight(0))
        ));
    }

    #[test]
    fn a_lease_group_gets_pids_max_and_no_swap_but_devices_are_reported_unconfined() {
        let (tmp, v2) = fake();
        let g = Path::new("harvest/lease_4");
        let leaf = tmp.path().join(g);
        // The kernel makes memory.swap.max with the group (where it accounts swap).
        std::fs::create_dir_all(&leaf).unwrap();
        std::fs::write(leaf.join("memory.swap.max"), "max").unwrap();
        let spec = GroupSpec {
            memory_limit_bytes: Some(64 << 20),
            pids_max: Some(256),
            no_swap: true,
            devices: Some(crate::cgroup::devices::BASIC.to_vec()),
            ..GroupSpec::default()
        };
        v2.create(g, &spec).unwrap();
        let file = |f: &str| std::fs::read_to_string(leaf.join(f)).unwrap();
        assert_eq!(file("pids.max"), "256");
        assert_eq!(file("memory.swap.max"), "0");
        assert_eq!(file("memory.max"), (64u64 << 20).to_string());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("harvest/cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert!(!leaf.join("devices.deny").exists() && !leaf.join("devices.allow").exists());
        let c = v2.confinement();
        assert_eq!((c.pids, c.no_swap), (Support::Enforced, Support::Enforced));
        assert!(matches!(c.devices, Support::Unavailable(why) if why.contains("BPF")));

        // A root that does not offer pids: reported, and pids.max is not written.
        std::fs::write(tmp.path().join("cgroup.controllers"), "cpuset cpu memory\n").unwrap();
        let v2 = V2::new(tmp.path().to_path_buf());
        assert!(matches!(v2.confinement().pids, Support::Unavailable(why) if why.contains("pids")));
        let g = Path::new("harvest/lease_5");
        v2.create(g, &spec).unwrap();
        assert!(!tmp.path().join(g).join("pids.max").exists());
        // Without memory.swap.max (no swap accounting) the memory limit still holds.
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(g).join("memory.max")).unwrap(),
            (64u64 << 20).to_string()
        );
    }

    #[test]
    fn attach_freeze_thaw_kill_and_remove() {
        let (tmp, v2) = fake();
        let g = Path::new("harvest/lease_2");
        v2.create(g, &GroupSpec::default()).unwrap();
        let leaf = tmp.path().join(g);
        v2.attach(g, 4242).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap(),
            "4242"
        );
        assert_eq!(v2.pids(g).unwrap(), [4242]);

        std::fs::write(leaf.join("cgroup.events"), "populated 1\nfrozen 1\n").unwrap();
        v2.freeze(g).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.freeze")).unwrap(),
            "1"
        );
        v2.thaw(g).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.freeze")).unwrap(),
            "0"
        );

        std::fs::write(leaf.join("cgroup.kill"), "").unwrap();
        v2.kill(g).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cgroup.kill")).unwrap(),
            "1"
        );

        // The fake's interface files are real files, which rmdir refuses; the kernel's go with
        // the directory. Clear them to model that.
        for f in std::fs::read_dir(&leaf).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        std::fs::remove_file(tmp.path().join("harvest/cgroup.subtree_control")).ok();
        v2.remove(Path::new("harvest")).unwrap();
        assert!(!v2.exists(Path::new("harvest")));
        v2.remove(Path::new("harvest")).unwrap();
    }

    #[test]
    fn quota_stats_and_pressure() {
        let (tmp, v2) = fake();
        let g = Path::new("harvest/lease_3");
        v2.create(g, &GroupSpec::default()).unwrap();
        let leaf = tmp.path().join(g);
        let q = CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        };
        v2.set_cpu_quota(g, Some(q)).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        v2.set_cpu_quota(g, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "max"
        );
        v2.set_cpu_weight(g, 7).unwrap();
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpu.weight")).unwrap(),
            "7"
        );
        assert!(v2.set_cpu_weight(g, 0).is_err());
        assert_eq!(v2.cpu_stat(g).unwrap(), CpuStat::default());
        std::fs::write(
            leaf.join("cpu.stat"),
            "usage_usec 2000\nuser_usec 1500\nsystem_usec 500\nnr_periods 3\nnr_throttled 2\nthrottled_usec 40\n",
        )
        .unwrap();
        let st = v2.cpu_stat(g).unwrap();
        assert_eq!(
            (st.usage_ns, st.nr_throttled, st.throttled_ns),
            (Some(2_000_000), Some(2), Some(40_000))
        );
        std::fs::write(leaf.join("memory.current"), "8192\n").unwrap();
        assert_eq!(v2.memory_usage(g).unwrap(), 8192);
        assert_eq!(v2.pressure_file(g, "memory"), None);
        std::fs::write(leaf.join("memory.pressure"), "some avg10=0.00\n").unwrap();
        assert_eq!(
            v2.pressure_file(g, "memory"),
            Some(leaf.join("memory.pressure"))
        );
        std::fs::write(leaf.join("cpu.stat"), "usage_usec lots\n").unwrap();
        assert!(v2.cpu_stat(g).unwrap_err().to_string().contains("lots"));
    }

    #[test]
    fn a_group_that_never_freezes_times_out_with_its_state() {
        let (tmp, v2) = fake();
        let g = Path::new("stuck");
        v2.create(g, &GroupSpec::default()).unwrap();
        std::fs::write(tmp.path().join("stuck/cgroup.events"), "frozen 0\n").unwrap();
        let err = v2.freeze(g).unwrap_err();
        assert!(matches!(err, CgroupError::FreezeTimeout { ref state, .. } if state == "0"));
    }
}
