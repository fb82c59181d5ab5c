//! The cgroup backend of this host against its real cgroups (needs root): v1 on the project's
//! machines (hybrid layout), v2 where the host is pure v2 (checked on the GPU machine).
//!
//! Test groups live under `harvest_test_<pid>_<name>` at the top of each hierarchy: beside,
//! never inside, the memory cgroup the machine's supervisor runs in. A Drop guard kills what is
//! left in them and removes them even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use harvest_agent::cgroup::{
    self, CgroupVersion, Cgroups, DEFAULT_CGROUP_ROOT, DEFAULT_MOUNTINFO, GroupSpec,
    weight_to_shares,
};
use harvest_core::CpuSet;

/// The test's own base group, removed (with everything in it) on drop.
struct TestBase {
    cg: Box<dyn Cgroups>,
    base: PathBuf,
    children: Vec<Child>,
}

impl TestBase {
    fn new(name: &str) -> Self {
        assert!(
            rustix_is_root(),
            "these tests drive real cgroups and need root (CI runs as root)"
        );
        let cg = cgroup::open(Path::new(DEFAULT_CGROUP_ROOT), Path::new(DEFAULT_MOUNTINFO))
            .expect("this machine's cgroups");
        eprintln!("testing the real cgroup {:?} backend", cg.version());
        let base = PathBuf::from(format!("harvest_test_{}_{name}", std::process::id()));
        Self {
            cg,
            base,
            children: Vec::new(),
        }
    }

    fn group(&self, leaf: &str) -> PathBuf {
        self.base.join(leaf)
    }

    fn spawn_sleep(&mut self) -> u32 {
        let child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }
}

impl Drop for TestBase {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if self.cg.exists(&self.base) {
            let _ = self.cg.kill(&self.base);
        }
        // Killed tasks leave their cgroup asynchronously: retry rmdir for a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.cg.remove(&self.base).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// An interface file of `group`: in the v1 `controller` hierarchy, or in the unified tree.
fn file(version: CgroupVersion, controller: &str, group: &Path, name: &str) -> PathBuf {
    let root = Path::new(DEFAULT_CGROUP_ROOT);
    match version {
        CgroupVersion::V1 => root.join(controller).join(group).join(name),
        CgroupVersion::V2 => root.join(group).join(name),
    }
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

fn poll(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what} not within 5 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn create_reads_back_cpus_memory_and_weight_on_every_level() {
    let t = TestBase::new("create");
    let all = t.cg.cpus(Path::new("")).unwrap();
    let last: CpuSet = [all.iter().last().unwrap()].into_iter().collect();
    let g = t.group("lease_a");
    let spec = GroupSpec {
        cpus: Some(last.clone()),
        mems: Some([0].into_iter().collect()),
        memory_limit_bytes: Some(64 << 20),
        cpu_weight: Some(100),
        ..GroupSpec::default()
    };
    t.cg.create(&g, &spec).unwrap();
    assert!(t.cg.exists(&g));
    assert_eq!(t.cg.cpus(&g).unwrap(), last);
    assert_eq!(t.cg.memory_limit(&g).unwrap(), Some(64 << 20));
    // The intermediate level got the root's CPUs and memory nodes.
    assert_eq!(t.cg.cpus(&t.base).unwrap(), all);
    let v = t.cg.version();
    assert_eq!(t.cg.memory_limit(&t.base).unwrap(), None, "unlimited");
    match v {
        CgroupVersion::V1 => {
            assert!(!read(file(v, "cpuset", &t.base, "cpuset.mems")).is_empty());
            let shares = read(file(v, "cpu", &g, "cpu.shares"));
            assert_eq!(shares, weight_to_shares(100).unwrap().to_string());
        }
        CgroupVersion::V2 => {
            assert_eq!(read(file(v, "", &g, "cpuset.mems.effective")), "0");
            assert_eq!(read(file(v, "", &g, "cpu.weight")), "100");
        }
    }

    t.cg.create(&t.group("lease_b"), &GroupSpec::default())
        .unwrap();
    assert_eq!(t.cg.children(&t.base).unwrap(), ["lease_a", "lease_b"]);
    assert_eq!(t.cg.cpus(&t.group("lease_b")).unwrap(), all, "inherits");
}

#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn attach_freeze_thaw_kill_and_remove_a_real_process() {
    let mut t = TestBase::new("life");
    let g = t.group("lease");
    t.cg.create(
        &g,
        &GroupSpec {
            cpus: Some([0].into_iter().collect()),
            mems: Some([0].into_iter().collect()),
            memory_limit_bytes: Some(32 << 20),
            cpu_weight: None,
            ..GroupSpec::default()
        },
    )
    .unwrap();
    let pid = t.spawn_sleep();
    t.cg.attach(&g, pid).unwrap();
    assert_eq!(t.cg.pids(&g).unwrap(), [pid]);
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v = t.cg.version();
    let wanted: Vec<String> = match v {
        CgroupVersion::V1 => ["cpuset", "memory", "freezer"]
            .iter()
            .map(|c| format!(":{c}:/{}", g.display()))
            .collect(),
        CgroupVersion::V2 => vec![format!("0::/{}", g.display())],
    };
    for want in &wanted {
        assert!(
            own.lines().any(|l| l.ends_with(want.as_str())),
            "{want} in {own}"
        );
    }
    let affinity = read(PathBuf::from(format!("/proc/{pid}/status")));
    assert!(
        affinity
            .lines()
            .any(|l| l.starts_with("Cpus_allowed_list:") && l.trim_end().ends_with('0')),
        "{affinity}"
    );

    t.cg.freeze(&g).unwrap();
    match v {
        CgroupVersion::V1 => assert_eq!(read(file(v, "freezer", &g, "freezer.state")), "FROZEN"),
        CgroupVersion::V2 => assert!(read(file(v, "", &g, "cgroup.events")).contains("frozen 1")),
    }
    t.cg.thaw(&g).unwrap();
    match v {
        CgroupVersion::V1 => assert_eq!(read(file(v, "freezer", &g, "freezer.state")), "THAWED"),
        CgroupVersion::V2 => poll("the group to thaw", || {
            read(file(v, "", &g, "cgroup.events")).contains("frozen 0")
        }),
    }

    t.cg.kill(&g).unwrap();
    let mut child = t.children.pop().unwrap();
    let mut status = None;
    poll("the killed sleep to exit", || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.unwrap().signal(), Some(9));
    poll("the group to empty", || t.cg.pids(&g).unwrap().is_empty());

    t.cg.remove(&t.base).unwrap();
    for ctl in ["cpuset", "memory", "cpu", "freezer"] {
        let dir = file(v, ctl, &t.base, "");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

/// CPU time `pid` has run, from `/proc/<pid>/schedstat` (nanoseconds; both cgroup versions).
fn cpu_ns(pid: u32) -> u64 {
    read(PathBuf::from(format!("/proc/{pid}/schedstat")))
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("schedstat's first field")
}

#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn a_probe_pause_holds_a_spinning_task_near_the_floor_but_never_stops_it() {
    let mut t = TestBase::new("pause");
    let g = t.group("lease");
    t.cg.create(
        &g,
        &GroupSpec {
            cpus: Some([0].into_iter().collect()),
            mems: Some([0].into_iter().collect()),
            ..GroupSpec::default()
        },
    )
    .unwrap();
    let child = Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .unwrap();
    let pid = child.id();
    t.children.push(child);
    t.cg.attach(&g, pid).unwrap();
    let ran = |over: Duration| {
        let before = cpu_ns(pid);
        std::thread::sleep(over);
        Duration::from_nanos(cpu_ns(pid) - before)
    };
    t.cg.set_cpu_quota(&g, Some(harvest_agent::leases::control::PROBE_QUOTA))
        .unwrap();
    // Let the quota take hold (the current period may still hold its old budget).
    std::thread::sleep(Duration::from_millis(200));
    let paused = ran(Duration::from_secs(1));
    // 1 ms every 100 ms: about 10 ms a second. It still runs, so an executor whose agent never
    // ends the pause still answers; and it is held near the floor (a busy shared CPU gives less).
    assert!(paused > Duration::ZERO, "a paused task must still run");
    assert!(
        paused < Duration::from_millis(40),
        "paused, it ran {paused:?} in 1 s"
    );
    // The freezer, by contrast, stops it outright until someone thaws it.
    t.cg.set_cpu_quota(&g, None).unwrap();
    t.cg.freeze(&g).unwrap();
    let frozen = ran(Duration::from_millis(500));
    t.cg.thaw(&g).unwrap();
    assert_eq!(frozen, Duration::ZERO, "a frozen task ran {frozen:?}");
}

#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn group_names_outside_the_hierarchy_are_refused() {
    let t = TestBase::new("names");
    let err =
        t.cg.create(Path::new("../escape"), &GroupSpec::default())
            .unwrap_err();
    assert!(err.to_string().contains("../escape"), "{err}");
    assert!(!t.cg.exists(Path::new("../escape")));
}

/// A char device node `name` (major:minor) in `dir`, as a GPU's would be under a `dev_root`.
fn mknod(dir: &Path, name: &str, major: u32, minor: u32) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("mknod")
        .arg(&path)
        .args(["c", &major.to_string(), &minor.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "mknod {}", path.display());
    path
}

/// Runs `script` with `sh` inside `group` (the shell waits for a line on stdin until it is
/// attached) and returns what it printed (stdout and stderr together).
fn run_in(t: &TestBase, group: &Path, script: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sh")
        .args(["-c", &format!("read go; exec 2>&1; {script}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    t.cg.attach(group, child.id()).unwrap();
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn a_lease_group_denies_devices_it_was_not_lent_caps_its_tasks_and_cannot_swap() {
    use harvest_agent::cgroup::devices::{BASIC, NVIDIA_MAJOR, lease_devices};
    use harvest_agent::cgroup::{Confinement, Support};
    let t = TestBase::new("confine");
    let v = t.cg.version();
    let dev = tempfile::tempdir().unwrap();
    let lent = mknod(dev.path(), "nvidia0", NVIDIA_MAJOR, 0);
    let other = mknod(dev.path(), "nvidia1", NVIDIA_MAJOR, 1);
    // Lent GPU 0 only: its numbers come from the node.
    let gpu0 = harvest_agent::discover::GpuUnit {
        id: 0,
        gpu: 0,
        uuid: String::new(),
        memory_total_mib: 0,
        mig: None,
    };
    let devices = lease_devices(dev.path(), std::path::Path::new("/nonexistent"), &[gpu0]).unwrap();
    assert_eq!(devices.len(), BASIC.len() + 1, "{devices:?}");
    let g = t.group("lease");
    let limit = 64u64 << 20;
    t.cg.create(
        &g,
        &GroupSpec {
            memory_limit_bytes: Some(limit),
            pids_max: Some(8),
            no_swap: true,
            devices: Some(devices),
            ..GroupSpec::default()
        },
    )
    .unwrap();
    let c: Confinement = t.cg.confinement();
    assert_eq!(c.pids, Support::Enforced);
    let pids = match v {
        CgroupVersion::V1 => file(v, "pids", &g, "pids.max"),
        CgroupVersion::V2 => file(v, "", &g, "pids.max"),
    };
    assert_eq!(read(pids), "8");
    match v {
        CgroupVersion::V1 => {
            let memsw = file(v, "memory", &g, "memory.memsw.limit_in_bytes");
            if memsw.exists() {
                assert_eq!(c.no_swap, Support::Enforced);
                assert_eq!(read(memsw), limit.to_string(), "memory and swap together");
            } else {
                assert!(matches!(c.no_swap, Support::Unavailable(_)), "{c:?}");
                eprintln!("this kernel does not account swap: memsw not checked");
            }
            let list = read(file(v, "devices", &g, "devices.list"));
            assert!(list.lines().any(|l| l == "c 195:0 rw"), "{list}");
            assert!(list.lines().any(|l| l == "c 1:3 rw"), "{list}");
            assert!(!list.contains("a *:*") && !list.contains("195:1"), "{list}");
        }
        CgroupVersion::V2 => {
            assert_eq!(read(file(v, "", &g, "memory.swap.max")), "0");
            assert!(matches!(c.devices, Support::Unavailable(_)), "{c:?}");
        }
    }

    // A process in the group: the lent node passes the devices cgroup (no driver behind it:
    // ENXIO, "No such device or address"), the other one is refused (EPERM), /dev/null works.
    let out = run_in(
        &t,
        &g,
        &format!(
            "cat {} </dev/null; cat {}; echo null-ok >/dev/null && echo null-ok",
            lent.display(),
            other.display()
        ),
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("nvidia0") && l.contains("No such device or address")),
        "{out}"
    );
    if v == CgroupVersion::V1 {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("nvidia1") && l.contains("Operation not permitted")),
            "{out}"
        );
    }
    assert!(lines.contains(&"null-ok"), "{out}");

    // At most 8 tasks: forks past it fail and the group never holds more.
    let out = run_in(
        &t,
        &g,
        "i=0; while [ $i -lt 20 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo done",
    );
    let pids = t.cg.pids(&g).unwrap();
    assert!(
        pids.len() <= 8,
        "{} tasks in a group capped at 8: {out}",
        pids.len()
    );
    assert!(out.contains("fork"), "no fork failure reported: {out}");
}

/// A lease lent one MIG instance: its GPU's node and that instance's two access files pass the
/// v1 devices cgroup (no driver behind them: ENXIO), a sibling instance's access file and
/// another GPU are refused (EPERM). The access files' major (237) is one no driver has here.
#[test]
#[ignore = "needs root: drives the host's real cgroups (scripts/test-all runs it)"]
fn a_lease_lent_a_mig_instance_opens_its_access_files_and_not_its_siblings() {
    use harvest_agent::cgroup::devices::{NVIDIA_MAJOR, lease_devices};
    use harvest_agent::discover::{GpuUnit, MigRef};
    let t = TestBase::new("mig");
    if t.cg.version() != CgroupVersion::V1 {
        eprintln!("skipped: only v1 confines devices");
        return;
    }
    let dev = tempfile::tempdir().unwrap();
    std::fs::create_dir(dev.path().join("nvidia-caps")).unwrap();
    let parent = mknod(dev.path(), "nvidia0", NVIDIA_MAJOR, 0);
    let other_gpu = mknod(dev.path(), "nvidia1", NVIDIA_MAJOR, 1);
    let own_gi = mknod(dev.path(), "nvidia-caps/nvidia-cap11", 237, 11);
    let own_ci = mknod(dev.path(), "nvidia-caps/nvidia-cap12", 237, 12);
    let sibling_gi = mknod(dev.path(), "nvidia-caps/nvidia-cap21", 237, 21);
    let minors = dev.path().join("mig-minors");
    std::fs::write(
        &minors,
        "config 1\nmonitor 2\ngpu0/gi1/access 11\ngpu0/gi1/ci0/access 12\n\
         gpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\n",
    )
    .unwrap();
    let unit = GpuUnit {
        id: 0,
        gpu: 0,
        uuid: "MIG-test".into(),
        memory_total_mib: 0,
        mig: Some(MigRef {
            gpu_instance_id: Some(1),
            compute_instance_id: Some(0),
        }),
    };
    let devices = lease_devices(dev.path(), &minors, &[unit]).unwrap();
    let g = t.group("lease");
    t.cg.create(
        &g,
        &GroupSpec {
            devices: Some(devices),
            ..GroupSpec::default()
        },
    )
    .unwrap();
    let out = run_in(
        &t,
        &g,
        &format!(
            "for f in {} {} {} {} {}; do cat $f </dev/null; done; echo end",
            parent.display(),
            own_gi.display(),
            own_ci.display(),
            sibling_gi.display(),
            other_gpu.display()
        ),
    );
    let says = |path: &std::path::Path, what: &str| {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        out.lines()
            .any(|l| l.contains(&format!("{name}:")) && l.contains(what))
    };
    for passes in [&parent, &own_gi, &own_ci] {
        assert!(says(passes, "No such device or address"), "{out}");
    }
    for refused in [&sibling_gi, &other_gpu] {
        assert!(says(refused, "Operation not permitted"), "{out}");
    }
    assert!(out.contains("end"), "{out}");
}
