//! The cgroup v1 backend: one hierarchy per controller.
//!
//! A group is the same relative path in each managed hierarchy (cpuset, memory, cpu, freezer,
//! pids, devices: those that are mounted). v1 cpuset refuses a task until `cpuset.cpus` and
//! `cpuset.mems` are set, so every level this backend creates gets both (the parent's for
//! intermediate levels, the spec's for the leaf). A device list is written to a new leaf before
//! any task joins it: `devices.deny a` is refused once a group has children.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harvest_core::CpuSet;

use super::{
    CgroupError, CgroupVersion, Cgroups, Confinement, CpuQuota, CpuStat, GroupSpec, Support,
    append, check_group, child_dirs, keyed_u64, kill_pids, parse_cpus, parse_pids, parse_u64, read,
    read_optional, remove_tree, wait_frozen, weight_to_shares, write,
};

/// The hierarchies this backend creates groups in, in creation order.
const MANAGED: &[&str] = &["cpuset", "memory", "cpu", "freezer", "pids", "devices"];
/// Present only where the kernel accounts swap (`CONFIG_MEMCG_SWAP` and `swapaccount=1`).
const MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
/// v1 reports "no limit" as a huge page-aligned number; anything at or above this is unlimited.
const UNLIMITED_FLOOR: u64 = 1 << 62;

/// cgroup v1, with each controller's mount point.
#[derive(Debug, Clone)]
pub struct V1 {
    controllers: BTreeMap<String, PathBuf>,
    mountinfo: PathBuf,
    /// The memory hierarchy has `memory.memsw.*` (swap is accounted, so it can be limited).
    memsw: bool,
}

impl V1 {
    /// A backend over the given controller mount points. cpuset and memory are required.
    pub fn new(
        controllers: BTreeMap<String, PathBuf>,
        mountinfo: PathBuf,
    ) -> Result<Self, CgroupError> {
        let mut v1 = Self {
            controllers,
            mountinfo,
            memsw: false,
        };
        v1.hierarchy("cpuset")?;
        v1.memsw = v1.hierarchy("memory")?.join(MEMSW_LIMIT).exists();
        Ok(v1)
    }

    /// The mount point of `controller`.
    pub fn hierarchy(&self, controller: &str) -> Result<&Path, CgroupError> {
        self.controllers
            .get(controller)
            .map(PathBuf::as_path)
            .ok_or_else(|| CgroupError::NoController {
                controller: controller.to_owned(),
                mountinfo: self.mountinfo.clone(),
            })
    }

    fn dir(&self, controller: &str, group: &Path) -> Result<PathBuf, CgroupError> {
        check_group(group)?;
        Ok(self.hierarchy(controller)?.join(group))
    }

    /// The managed hierarchies that are mounted.
    fn managed(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        MANAGED
            .iter()
            .filter_map(|c| self.controllers.get(*c).map(|p| (*c, p.as_path())))
    }

    /// Creates each missing level of `group` in the cpuset hierarchy, writing cpus and mems.
    fn create_cpuset(&self, group: &Path, spec: &GroupSpec) -> Result<(), CgroupError> {
        let root = self.hierarchy("cpuset")?;
        let mut dir = root.to_path_buf();
        let levels: Vec<_> = group.components().collect();
        for (i, level) in levels.iter().enumerate() {
            let parent = dir.clone();
            dir.push(level);
            let leaf = i + 1 == levels.len();
            let created = mkdir(&dir)?;
            let inherit = |file: &str| -> Result<CpuSet, CgroupError> {
                let p = parent.join(file);
                parse_cpus(&p, &read(&p)?)
            };
            let wanted = |value: &Option<CpuSet>| if leaf { value.clone() } else { None };
            let (mems, cpus) = if created {
                (
                    wanted(&spec.mems).map_or_else(|| inherit("cpuset.mems"), Ok)?,
                    wanted(&spec.cpus).map_or_else(|| inherit("cpuset.cpus"), Ok)?,
                )
            } else {
                match (wanted(&spec.mems), wanted(&spec.cpus)) {
                    (None, None) => continue,
                    (m, c) => (
                        m.map_or_else(|| inherit_own(&dir, "cpuset.mems"), Ok)?,
                        c.map_or_else(|| inherit_own(&dir, "cpuset.cpus"), Ok)?,
                    ),
                }
            };
            write(&dir.join("cpuset.mems"), &mems.to_list())?;
            write(&dir.join("cpuset.cpus"), &cpus.to_list())?;
        }
        Ok(())
    }
}

impl V1 {
    /// `memory.limit_in_bytes`, and with `no_swap` the same for memory and swap together where
    /// the kernel accounts swap. The kernel keeps memsw >= the limit at every write, so memsw is
    /// lifted first (a group's earlier, lower memsw would refuse a higher limit).
    fn write_memory_limit(&self, dir: &Path, limit: u64, no_swap: bool) -> Result<(), CgroupError> {
        let memsw = no_swap && self.memsw;
        if memsw {
            write(&dir.join(MEMSW_LIMIT), "-1")?;
        }
        write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        if memsw {
            write(&dir.join(MEMSW_LIMIT), &limit.to_string())?;
        }
        Ok(())
    }
}

/// The group's own current value of a cpuset file.
fn inherit_own(dir: &Path, file: &str) -> Result<CpuSet, CgroupError> {
    let p = dir.join(file);
    parse_cpus(&p, &read(&p)?)
}

/// `mkdir`, reporting whether the directory is new.
fn mkdir(dir: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

impl Cgroups for V1 {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }

    fn exists(&self, group: &Path) -> bool {
        self.dir("cpuset", group).is_ok_and(|d| d.is_dir())
    }

    fn cpus(&self, group: &Path) -> Result<CpuSet, CgroupError> {
        let path = self.dir("cpuset", group)?.join("cpuset.cpus");
        parse_cpus(&path, &read(&path)?)
    }

    fn memory_limit(&self, group: &Path) -> Result<Option<u64>, CgroupError> {
        let path = self.dir("memory", group)?.join("memory.limit_in_bytes");
        let bytes = parse_u64(&path, &read(&path)?)?;
        Ok((bytes < UNLIMITED_FLOOR).then_some(bytes))
    }

    fn children(&self, group: &Path) -> Result<Vec<String>, CgroupError> {
        child_dirs(&self.dir("cpuset", group)?)
    }

    fn create(&self, group: &Path, spec: &GroupSpec) -> Result<(), CgroupError> {
        check_group(group)?;
        let shares = spec.cpu_weight.map(weight_to_shares).transpose()?;
        self.create_cpuset(group, spec)?;
        for (controller, root) in self.managed().filter(|(c, _)| *c != "cpuset") {
            let mut dir = root.to_path_buf();
            for level in group.components() {
                dir.push(level);
                mkdir(&dir)?;
            }
            match controller {
                "memory" => {
                    if let Some(limit) = spec.memory_limit_bytes {
                        self.write_memory_limit(&dir, limit, spec.no_swap)?;
                    }
                }
                "cpu" => {
                    if let Some(shares) = shares {
                        write(&dir.join("cpu.shares"), &shares.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(max) = spec.pids_max {
                        write(&dir.join("pids.max"), &max.to_string())?;
                    }
                }
                "devices" => {
                    if let Some(rules) = &spec.devices {
                        append(&dir.join("devices.deny"), "a")?;
                        for rule in rules {
                            append(&dir.join("devices.allow"), &rule.to_v1())?;
                        }
                    }
                }
                _ => {}
            }
        }
        if shares.is_some() && !self.controllers.contains_key("cpu") {
            return Err(CgroupError::NoController {
                controller: "cpu".into(),
                mountinfo: self.mountinfo.clone(),
            });
        }
        tracing::debug!(group = %group.display(), ?spec, "created v1 cgroup");
        Ok(())
    }

    fn attach(&self, group: &Path, pid: u32) -> Result<(), CgroupError> {
        check_group(group)?;
        for (_, root) in self.managed() {
            let dir = root.join(group);
            if dir.is_dir() {
                write(&dir.join("cgroup.procs"), &pid.to_string())?;
            }
        }
        Ok(())
    }

    fn pids(&self, group: &Path) -> Result<Vec<u32>, CgroupError> {
        let path = self.dir("cpuset", group)?.join("cgroup.procs");
        parse_pids(&path, &read(&path)?)
    }

    fn freeze(&self, group: &Path) -> Result<(), CgroupError> {
        let state = self.dir("freezer", group)?.join("freezer.state");
        write(&state, "FROZEN")?;
        wait_frozen(&state, "FROZEN", || read(&state))
    }

    fn thaw(&self, group: &Path) -> Result<(), CgroupError> {
        write(&self.dir("freezer", group)?.join("freezer.state"), "THAWED")
    }

    fn kill(&self, group: &Path) -> Result<(), CgroupError> {
        // Freeze first so that nothing forks between reading the pids and killing them. Not
        // waiting for FROZEN: a task that has not reached the freezer yet (in uninterruptible
        // sleep, or starved of CPU) takes its SIGKILL all the same, and a caller that must see
        // the group empty polls and kills again (a freezing task may still fork once).
        let frozen = self.controllers.contains_key("freezer");
        if frozen {
            write(&self.dir("freezer", group)?.join("freezer.state"), "FROZEN")?;
        }
        let root = self.dir("cpuset", group)?;
        let mut stack = vec![root];
        let result = (|| {
            while let Some(dir) = stack.pop() {
                let procs = dir.join("cgroup.procs");
                kill_pids(&dir, &parse_pids(&procs, &read(&procs)?)?)?;
                stack.extend(child_dirs(&dir)?.into_iter().map(|c| dir.join(c)));
            }
            Ok(())
        })();
        if frozen {
            self.thaw(group)?;
        }
        result
    }

    fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        check_group(group)?;
        for (_, root) in self.managed() {
            remove_tree(&root.join(group))?;
        }
        Ok(())
    }

    fn procs_files(&self, group: &Path) -> Result<Vec<PathBuf>, CgroupError> {
        check_group(group)?;
        Ok(self
            .managed()
            .map(|(_, root)| root.join(group))
            .filter(|dir| dir.is_dir())
            .map(|dir| dir.join("cgroup.procs"))
            .collect())
    }

    fn oom_events_file(&self, group: &Path) -> Result<PathBuf, CgroupError> {
        Ok(self.dir("memory", group)?.join("memory.oom_control"))
    }

    fn set_cpu_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError> {
        let shares = weight_to_shares(weight)?;
        write(
            &self.dir("cpu", group)?.join("cpu.shares"),
            &shares.to_string(),
        )
    }

    fn set_cpu_idle(&self, group: &Path, idle: bool) -> Result<bool, CgroupError> {
        let path = self.dir("cpu", group)?.join("cpu.idle");
        if !path.exists() {
            return Ok(false);
        }
        write(&path, if idle { "1" } else { "0" }).map(|()| true)
    }

    fn set_cpu_quota(&self, group: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        let dir = self.dir("cpu", group)?;
        match quota {
            Some(q) => {
                write(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
                write(&dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())
            }
            None => write(&dir.join("cpu.cfs_quota_us"), "-1"),
        }
    }

    fn cpu_stat(&self, group: &Path) -> Result<CpuStat, CgroupError> {
        let mut stat = CpuStat::default();
        // cpu and cpuacct may be separate hierarchies (they are on the hosts harvest is tested
        // on), and Slurm's v1 jobs are in neither: each part is read where it exists.
        if self.controllers.contains_key("cpuacct") {
            let path = self.dir("cpuacct", group)?.join("cpuacct.usage");
            if let Some(text) = read_optional(&path)? {
                stat.usage_ns = Some(parse_u64(&path, &text)?);
            }
        }
        if self.controllers.contains_key("cpu") {
            let path = self.dir("cpu", group)?.join("cpu.stat");
            if let Some(text) = read_optional(&path)? {
                stat.nr_throttled = keyed_u64(&path, &text, "nr_throttled")?;
                stat.throttled_ns = keyed_u64(&path, &text, "throttled_time")?;
            }
        }
        Ok(stat)
    }

    fn memory_usage(&self, group: &Path) -> Result<u64, CgroupError> {
        let path = self.dir("memory", group)?.join("memory.usage_in_bytes");
        parse_u64(&path, &read(&path)?)
    }

    fn confinement(&self) -> Confinement {
        let mounted = |c: &str, why: &str| {
            if self.controllers.contains_key(c) {
                Support::Enforced
            } else {
                Support::Unavailable(format!(
                    "the v1 {c} controller is not mounted (see {}): {why}",
                    self.mountinfo.display()
                ))
            }
        };
        Confinement {
            pids: mounted("pids", "a lease may fork or make threads without bound"),
            no_swap: if self.memsw {
                Support::Enforced
            } else {
                Support::Unavailable(
                    "the kernel does not account swap (no memory.memsw.limit_in_bytes; boot with \
                     swapaccount=1): a lease may swap beyond its memory limit"
                        .into(),
                )
            },
            devices: mounted(
                "devices",
                "a lease may open every device node its user may open",
            ),
        }
    }

    fn pressure_file(&self, group: &Path, resource: &str) -> Option<PathBuf> {
        check_group(group).ok()?;
        let file = self
            .controllers
            .get(super::mountinfo::UNIFIED)?
            .join(group)
            .join(format!("{resource}.pressure"));
        file.is_file().then_some(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::DeviceRule;

    #[test]
    fn a_new_group_is_joined_through_every_managed_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let mut controllers = BTreeMap::new();
        for c in ["cpuset", "memory", "cpu", "freezer", "pids"] {
            std::fs::create_dir_all(tmp.path().join(c)).unwrap();
            controllers.insert(c.to_owned(), tmp.path().join(c));
        }
        std::fs::write(tmp.path().join("cpuset/cpuset.cpus"), "0-3").unwrap();
        std::fs::write(tmp.path().join("cpuset/cpuset.mems"), "0").unwrap();
        let v1 = V1::new(controllers, PathBuf::from("fake")).unwrap();
        let g = Path::new("harvest_n1/lease_L1");
        let spec = GroupSpec {
            cpus: Some([2].into_iter().collect()),
            mems: None,
            memory_limit_bytes: Some(64 << 20),
            cpu_weight: Some(1),
            ..GroupSpec::default()
        };
        v1.create(g, &spec).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("cpuset/harvest_n1/lease_L1/cpuset.cpus"), "2");
        assert_eq!(read("cpuset/harvest_n1/lease_L1/cpuset.mems"), "0");
        assert_eq!(read("cpuset/harvest_n1/cpuset.cpus"), "0-3");
        assert_eq!(
            read("memory/harvest_n1/lease_L1/memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu/harvest_n1/lease_L1/cpu.shares"), "2");
        // Every managed hierarchy that is mounted (here: no devices), cpuset first.
        let files = v1.procs_files(g).unwrap();
        let want: Vec<PathBuf> = ["cpuset", "memory", "cpu", "freezer", "pids"]
            .iter()
            .map(|c| tmp.path().join(c).join(g).join("cgroup.procs"))
            .collect();
        assert_eq!(files, want);
        assert_eq!(
            v1.oom_events_file(g).unwrap(),
            tmp.path().join("memory").join(g).join("memory.oom_control")
        );
    }

    /// A fake v1 tree with `controllers` mounted (and the root files cpuset needs).
    fn fake_v1(controllers: &[&str], memsw: bool) -> (tempfile::TempDir, V1) {
        let tmp = tempfile::tempdir().unwrap();
        let mut mounted = BTreeMap::new();
        for c in controllers {
            std::fs::create_dir_all(tmp.path().join(c)).unwrap();
            mounted.insert((*c).to_owned(), tmp.path().join(c));
        }
        std::fs::write(tmp.path().join("cpuset/cpuset.cpus"), "0-3").unwrap();
        std::fs::write(tmp.path().join("cpuset/cpuset.mems"), "0").unwrap();
        if memsw {
            std::fs::write(tmp.path().join("memory").join(MEMSW_LIMIT), "-1").unwrap();
        }
        (tmp, V1::new(mounted, PathBuf::from("fake")).unwrap())
    }

    fn lease_spec() -> GroupSpec {
        GroupSpec {
            memory_limit_bytes: Some(64 << 20),
            pids_max: Some(128),
            no_swap: true,
            devices: Some(vec![DeviceRule::char(1, 3), DeviceRule::char(195, 1)]),
            ..GroupSpec::default()
        }
    }

    #[test]
    fn a_lease_group_gets_its_pids_limit_no_swap_and_device_list() {
        let all = ["cpuset", "memory", "cpu", "freezer", "pids", "devices"];
        let (tmp, v1) = fake_v1(&all, true);
        assert_eq!(
            v1.confinement(),
            Confinement {
                pids: Support::Enforced,
                no_swap: Support::Enforced,
                devices: Support::Enforced
            }
        );
        let g = Path::new("harvest_n1/lease_L1");
        v1.create(g, &lease_spec()).unwrap();
        let read = |c: &str, f: &str| std::fs::read_to_string(tmp.path().join(c).join(g).join(f));
        let read = |c, f| read(c, f).unwrap();
        assert_eq!(read("pids", "pids.max"), "128");
        let limit = (64u64 << 20).to_string();
        assert_eq!(read("memory", "memory.limit_in_bytes"), limit);
        // Lifted first (an earlier, lower memsw would refuse the limit), then set to it.
        assert_eq!(read("memory", MEMSW_LIMIT), limit);
        assert_eq!(read("devices", "devices.deny"), "a\n");
        assert_eq!(read("devices", "devices.allow"), "c 1:3 rw\nc 195:1 rw\n");
        // The parent level only exists: it keeps the root's (allow-all) list and no limits.
        let parent = tmp.path().join("devices/harvest_n1");
        assert!(parent.is_dir() && !parent.join("devices.deny").exists());
        assert!(!tmp.path().join("pids/harvest_n1/pids.max").exists());
        // Joined through every hierarchy.
        let files = v1.procs_files(g).unwrap();
        assert_eq!(files.len(), all.len());
        assert!(files.contains(&tmp.path().join("devices").join(g).join("cgroup.procs")));
    }

    #[test]
    fn without_memsw_pids_or_devices_the_limits_are_reported_unavailable_and_skipped() {
        let (tmp, v1) = fake_v1(&["cpuset", "memory", "cpu", "freezer"], false);
        let c = v1.confinement();
        for (limit, support, want) in [
            ("pids", &c.pids, "pids controller is not mounted"),
            ("no_swap", &c.no_swap, "swapaccount=1"),
            ("devices", &c.devices, "devices controller is not mounted"),
        ] {
            assert!(
                matches!(support, Support::Unavailable(why) if why.contains(want)),
                "{limit}: {support:?}"
            );
        }
        let g = Path::new("harvest_n1/lease_L1");
        v1.create(g, &lease_spec()).unwrap();
        let dir = tmp.path().join("memory").join(g);
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap(),
            (64u64 << 20).to_string()
        );
        assert!(!dir.join(MEMSW_LIMIT).exists());
        assert!(!tmp.path().join("pids").exists());
    }

    #[test]
    fn quota_and_stats_in_separate_cpu_and_cpuacct_hierarchies() {
        let tmp = tempfile::tempdir().unwrap();
        let mut controllers = BTreeMap::new();
        for c in ["cpuset", "memory", "cpu", "cpuacct", "unified"] {
            std::fs::create_dir_all(tmp.path().join(c)).unwrap();
            controllers.insert(c.to_owned(), tmp.path().join(c));
        }
        let v1 = V1::new(controllers, PathBuf::from("fake")).unwrap();
        let g = Path::new("harvest_n1/lease_L1");
        for c in ["cpu", "memory", "unified"] {
            std::fs::create_dir_all(tmp.path().join(c).join(g)).unwrap();
        }
        let file = |p: &str| tmp.path().join(p);
        v1.set_cpu_quota(
            g,
            Some(CpuQuota {
                quota_us: 25_000,
                period_us: 100_000,
            }),
        )
        .unwrap();
        let read = |p: &str| std::fs::read_to_string(file(p)).unwrap();
        assert_eq!(read("cpu/harvest_n1/lease_L1/cpu.cfs_quota_us"), "25000");
        assert_eq!(read("cpu/harvest_n1/lease_L1/cpu.cfs_period_us"), "100000");
        v1.set_cpu_quota(g, None).unwrap();
        assert_eq!(read("cpu/harvest_n1/lease_L1/cpu.cfs_quota_us"), "-1");
        v1.set_cpu_weight(g, 1).unwrap();
        assert_eq!(read("cpu/harvest_n1/lease_L1/cpu.shares"), "2");
        assert!(v1.set_cpu_weight(Path::new("harvest_n1/gone"), 1).is_err());
        assert!(!file("cpu/harvest_n1/gone").exists());

        // No cpuacct group (like Slurm's jobs) and no cpu.stat yet: nothing known, no error.
        assert_eq!(v1.cpu_stat(g).unwrap(), CpuStat::default());
        std::fs::write(
            file("cpu/harvest_n1/lease_L1/cpu.stat"),
            "nr_periods 10\nnr_throttled 4\nthrottled_time 7000\n",
        )
        .unwrap();
        std::fs::create_dir_all(file("cpuacct/harvest_n1/lease_L1")).unwrap();
        std::fs::write(
            file("cpuacct/harvest_n1/lease_L1/cpuacct.usage"),
            "123456\n",
        )
        .unwrap();
        let st = v1.cpu_stat(g).unwrap();
        assert_eq!(
            (st.usage_ns, st.nr_throttled, st.throttled_ns),
            (Some(123_456), Some(4), Some(7000))
        );
        std::fs::write(
            file("memory/harvest_n1/lease_L1/memory.usage_in_bytes"),
            "4096\n",
        )
        .unwrap();
        assert_eq!(v1.memory_usage(g).unwrap(), 4096);

        // PSI only where the group sits in the unified tree.
        assert_eq!(v1.pressure_file(g, "cpu"), None);
        std::fs::write(
            file("unified/harvest_n1/lease_L1/cpu.pressure"),
            "some avg10=0.00\n",
        )
        .unwrap();
        assert_eq!(
            v1.pressure_file(g, "cpu"),
            Some(file("unified/harvest_n1/lease_L1/cpu.pressure"))
        );
        assert_eq!(v1.pressure_file(Path::new("../x"), "cpu"), None);
    }
}
