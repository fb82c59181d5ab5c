//! The plugin's own reclaim, for when the agent does not answer a step start.
//!
//! The agent normally ends or moves the leases a new step needs before it answers. When it cannot
//! answer (SIGKILLed and not yet restarted, stopped, hung, or its socket gone), nobody would, and
//! functions would run on the step's CPUs until the agent returns. The batch job always wins, so
//! the plugin (root, in slurmstepd, before the step's tasks start) SIGKILLs every process of every
//! lease group on the node itself: without the agent it cannot tell which leases would fit beside
//! the step (CPUs, memory, GPUs), so it ends them all. The agent, once back, finds their executors
//! gone and ends those leases; their callers get an explicit error and fail over.
//!
//! The lease groups are `<cgroup_root>/cpuset/<parent>/lease_*` on v1 and
//! `<cgroup_root>/<parent>/lease_*` on v2, where `<parent>` is harvestd's `lease_cgroup_parent`
//! (`harvest_<node>` by default; the plugin's `lease_parent=`). Those directories are root's (the
//! agent makes them), and a pid comes from the kernel's `cgroup.procs`. Before a signal is sent,
//! the process is pinned with a pidfd and `/proc/<pid>/cgroup` must still put it in a lease group
//! under `<parent>`, so a pid reused by another process meanwhile is never signalled.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

/// How long the plugin waits for the lease groups to empty after the signals.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(200);
/// The most bytes read from one `cgroup.procs` (about 100,000 pids).
const PROCS_MAX_BYTES: u64 = 1 << 20;
/// How deep below a lease group the search for its processes goes (a lease's nested groups).
const DEPTH: usize = 3;

/// Where to look and how long to try.
#[derive(Debug, Clone)]
pub struct Evictor {
    pub cgroup_root: PathBuf,
    /// The lease groups' parent, relative to each hierarchy's root (`harvest_n1`).
    pub parent: PathBuf,
    /// Where `<pid>/cgroup` is read (`/proc`; a fake in tests).
    pub proc_root: PathBuf,
    pub deadline: Duration,
}

/// What an eviction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// Lease groups found.
    pub leases: usize,
    /// Processes signalled (SIGKILL), each counted once.
    pub killed: usize,
    /// Lease groups still holding processes at the deadline.
    pub left: Vec<PathBuf>,
}

impl Evictor {
    /// The parent's directories in the hierarchies that exist: v1's cpuset, or v2's unified tree.
    fn parents(&self) -> Vec<PathBuf> {
        [
            self.cgroup_root.join("cpuset").join(&self.parent),
            self.cgroup_root.join(&self.parent),
        ]
        .into_iter()
        .filter(|d| d.is_dir())
        .collect()
    }

    /// The lease groups (`lease_*`) under the parent.
    pub fn lease_groups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for parent in self.parents() {
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.flatten() {
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if is_dir && e.file_name().to_string_lossy().starts_with("lease_") {
                    out.push(e.path());
                }
            }
        }
        out.sort();
        out
    }

    /// SIGKILLs every process of every lease group, then waits (up to the deadline) until the
    /// groups are empty.
    pub fn evict_all(&self) -> Evicted {
        let groups = self.lease_groups();
        let mut done = Evicted {
            leases: groups.len(),
            ..Evicted::default()
        };
        if groups.is_empty() {
            return done;
        }
        let until = Instant::now() + self.deadline;
        let mut signalled = std::collections::BTreeSet::new();
        loop {
            let mut busy = Vec::new();
            for g in &groups {
                let pids = procs(g, DEPTH);
                if !pids.is_empty() {
                    busy.push(g.clone());
                }
                for pid in pids {
                    if self.kill(pid) {
                        signalled.insert(pid);
                    }
                }
            }
            // A frozen task takes its SIGKILL only once thawed, and a harvestd killed in the
            // middle of a freeze-probe leaves its lease frozen: thaw every lease group.
            self.thaw_all();
            if busy.is_empty() || Instant::now() >= until {
                done.killed = signalled.len();
                done.left = busy;
                return done;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Thaws every lease group under the parent: v1's `freezer.state`, v2's `cgroup.freeze`
    /// (only files that exist are written; cgroupfs holds no links).
    fn thaw_all(&self) {
        let trees = [
            (
                self.cgroup_root.join("freezer").join(&self.parent),
                "freezer.state",
                "THAWED",
            ),
            (self.cgroup_root.join(&self.parent), "cgroup.freeze", "0"),
        ];
        for (parent, file, value) in trees {
            let Ok(entries) = fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path().join(file);
                if e.file_name().to_string_lossy().starts_with("lease_") && path.is_file() {
                    let _ = fs::write(&path, value);
                }
            }
        }
    }

    /// SIGKILLs `pid` if it is (still) in a lease group under the parent.
    fn kill(&self, pid: u32) -> bool {
        let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        let Ok(fd) = pidfd_open(pid, PidfdFlags::empty()) else {
            return false;
        };
        // Pinned: if the pid now names another process, that one's cgroup is read and it is
        // spared; if the process read from cgroup.procs died since, the signal finds nothing.
        if !self.in_lease_group(pid.as_raw_nonzero().get()) {
            return false;
        }
        pidfd_send_signal(&fd, Signal::KILL).is_ok()
    }

    /// Whether `/proc/<pid>/cgroup` places the process in `<parent>/lease_*` in some hierarchy.
    fn in_lease_group(&self, pid: i32) -> bool {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let Some(text) = read_bounded(&path, 64 * 1024) else {
            return false;
        };
        let prefix = format!("/{}/lease_", self.parent.display());
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|p| p.starts_with(&prefix))
    }
}

/// The pids in `dir`'s `cgroup.procs` and in its subgroups' (to `depth` levels).
fn procs(dir: &Path, depth: usize) -> Vec<u32> {
    let mut out: Vec<u32> = read_bounded(&dir.join("cgroup.procs"), PROCS_MAX_BYTES)
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default();
    if depth > 0
        && let Ok(entries) = fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(procs(&e.path(), depth - 1));
            }
        }
    }
    out
}

fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let mut text = String::new();
    fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().unwrap()
    }

    /// A fake tree: `groups` lease groups under cpuset/harvest_n1 listing the pids given, and a
    /// fake /proc saying which cgroup each pid is in.
    struct Tree {
        tmp: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            let tmp = tempfile::tempdir().unwrap();
            fs::create_dir_all(tmp.path().join("cg/cpuset/harvest_n1")).unwrap();
            fs::create_dir_all(tmp.path().join("proc")).unwrap();
            Self { tmp }
        }

        fn group(&self, name: &str, pids: &[u32]) -> PathBuf {
            let dir = self.tmp.path().join("cg/cpuset/harvest_n1").join(name);
            fs::create_dir_all(&dir).unwrap();
            let list: String = pids.iter().map(|p| format!("{p}\n")).collect();
            fs::write(dir.join("cgroup.procs"), list).unwrap();
            dir
        }

        fn proc_says(&self, pid: u32, cgroup: &str) {
            let dir = self.tmp.path().join("proc").join(pid.to_string());
            fs::create_dir_all(&dir).unwrap();
            fs::write(
                dir.join("cgroup"),
                format!("12:memory:/elsewhere\n4:cpuset:{cgroup}\n"),
            )
            .unwrap();
        }

        fn evictor(&self) -> Evictor {
            Evictor {
                cgroup_root: self.tmp.path().join("cg"),
                parent: PathBuf::from("harvest_n1"),
                proc_root: self.tmp.path().join("proc"),
                deadline: Duration::from_millis(50),
            }
        }
    }

    fn killed(child: &mut Child) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Some(status) = child.try_wait().unwrap() {
                return status.signal() == Some(9);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn frozen_lease_groups_are_thawed_so_that_their_sigkill_lands() {
        let tree = Tree::new();
        let mut a = sleeper();
        let g = tree.group("lease_a", &[a.id()]);
        tree.proc_says(a.id(), "/harvest_n1/lease_a");
        let _ = g;
        let v1 = tree.tmp.path().join("cg/freezer/harvest_n1/lease_a");
        fs::create_dir_all(&v1).unwrap();
        fs::write(v1.join("freezer.state"), "FROZEN\n").unwrap();
        let v2 = tree.tmp.path().join("cg/harvest_n1/lease_b");
        fs::create_dir_all(&v2).unwrap();
        fs::write(v2.join("cgroup.freeze"), "1\n").unwrap();
        fs::write(v2.join("cgroup.procs"), "").unwrap();
        tree.evictor().evict_all();
        assert_eq!(
            fs::read_to_string(v1.join("freezer.state")).unwrap(),
            "THAWED"
        );
        assert_eq!(fs::read_to_string(v2.join("cgroup.freeze")).unwrap(), "0");
        assert!(killed(&mut a));
    }

    #[test]
    fn kills_the_processes_of_lease_groups_and_spares_a_pid_now_elsewhere() {
        let tree = Tree::new();
        let (mut a, mut b, mut c) = (sleeper(), sleeper(), sleeper());
        tree.group("lease_x", &[a.id()]);
        // A nested group of a lease is searched too.
        let y = tree.group("lease_y", &[]);
        fs::create_dir_all(y.join("inner")).unwrap();
        fs::write(y.join("inner/cgroup.procs"), format!("{}\n", b.id())).unwrap();
        // c is listed, but /proc says it is in a job's group now (a reused pid): spared.
        tree.group("lease_z", &[c.id()]);
        // Not a lease group: never looked at.
        tree.group("other", &[c.id()]);
        tree.proc_says(a.id(), "/harvest_n1/lease_x");
        tree.proc_says(b.id(), "/harvest_n1/lease_y/inner");
        tree.proc_says(c.id(), "/slurm_n1/uid_0/job_3/step_0");

        let done = tree.evictor().evict_all();
        assert_eq!(done.leases, 3, "{done:?}");
        assert_eq!(done.killed, 2, "{done:?}");
        assert!(killed(&mut a), "a lease's process was not killed");
        assert!(killed(&mut b), "a nested group's process was not killed");
        assert_eq!(
            c.try_wait().unwrap(),
            None,
            "a process outside was signalled"
        );
        // The fake cgroup.procs never empties, so the groups are reported left at the deadline.
        assert_eq!(done.left.len(), 3, "{done:?}");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    #[test]
    fn nothing_to_do_without_lease_groups_or_parent() {
        let tree = Tree::new();
        assert_eq!(tree.evictor().evict_all(), Evicted::default());
        let mut e = tree.evictor();
        e.parent = PathBuf::from("harvest_n9");
        assert_eq!(e.evict_all(), Evicted::default());
    }

    #[test]
    fn the_v2_layout_is_found_too() {
        let tree = Tree::new();
        let dir = tree.tmp.path().join("cg/harvest_n1/lease_v2");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), "").unwrap();
        let groups = tree.evictor().lease_groups();
        assert!(groups.contains(&dir), "{groups:?}");
    }
}
