//! Root never touches a user-writable path by name (issue 14): a function library whose
//! constructor (run by dlopen, as the lease's user, in the lease directory) plants `ready`,
//! `executor.log`, `activity` and `functions.so` as symlinks to a root-only canary file, to
//! `/dev/zero`, as FIFOs, or as dangling symlinks to paths root would create. The canary's text
//! never comes back (`harvest lease acquire --json`, `harvest leases --json`, the executor's
//! address, the dashboard's `/api/cluster`), nothing outside the lease directory is created or
//! changed, the node stays `up` and harvestd's RSS stays bounded; 200 acquisitions against a
//! symlinker that keeps re-planting create nothing outside the lease directory.
//!
//! Needs `deploy/local-cluster up --nodes 2` with harvestd and harvest-scheduler running, a built
//! `harvest` CLI, `cc`, root and munged. Creates the regular user `harvest-user` when missing and
//! runs the CLI as that user with `runuser`. harvestd's RSS is read from
//! `/proc/<pid>/status` (pid from `$HARVEST_CLUSTER_DIR/run/harvestd-<node>.pid`). For the
//! attacks the test moves each harvestd into a v1 memory cgroup of its own capped at the RSS
//! bound ([`MemoryCap`], beside the machine's own groups, moved back and removed afterwards): a
//! regression that reads `/dev/zero` without bound gets harvestd killed by the cgroup's OOM
//! killer, which fails the test (the node goes down), not the machine.

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harvest_system_tests::fixtures::{
    Cli, FUNCTIONS_C, Scratch, TEST_USER, scheduler_url, test_user,
};
use harvest_system_tests::{LocalCluster, poll};

/// harvestd's resident memory must stay under this (it is ~20-60 MiB on the local cluster).
const RSS_BOUND_KIB: u64 = 512 * 1024;
/// The v1 memory hierarchy.
const MEMORY_ROOT: &str = "/sys/fs/cgroup/memory";

/// A process moved into a memory cgroup of its own with a hard limit, for the test's length.
struct MemoryCap {
    pid: u32,
    group: PathBuf,
    /// The process's memory cgroup before (relative to [`MEMORY_ROOT`]).
    home: PathBuf,
}

impl MemoryCap {
    fn new(pid: u32, limit_bytes: u64) -> Result<Self> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .with_context(|| format!("pid {pid} is gone"))?;
        let home = cgroups
            .lines()
            .find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
                ctl.split(',')
                    .any(|c| c == "memory")
                    .then(|| PathBuf::from(path.trim_start_matches('/')))
            })
            .context("no v1 memory cgroup in /proc/<pid>/cgroup")?;
        let group =
            Path::new(MEMORY_ROOT).join(format!("harvest_test_cap_{}_{pid}", std::process::id()));
        std::fs::create_dir_all(&group).with_context(|| format!("creating {}", group.display()))?;
        let cap = Self { pid, group, home };
        std::fs::write(
            cap.group.join("memory.limit_in_bytes"),
            limit_bytes.to_string(),
        )
        .context("setting memory.limit_in_bytes")?;
        std::fs::write(cap.group.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", cap.group.display()))?;
        Ok(cap)
    }
}

impl Drop for MemoryCap {
    fn drop(&mut self) {
        let home = Path::new(MEMORY_ROOT).join(&self.home).join("cgroup.procs");
        // Gone (killed by the cap) is fine: the group is empty then.
        let _ = std::fs::write(&home, self.pid.to_string());
        for _ in 0..50 {
            if std::fs::remove_dir(&self.group).is_ok() || !self.group.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.group.display());
    }
}

/// How long the node must stay `up` after the attack.
const STAY_UP: Duration = Duration::from_secs(30);
/// Acquisitions against the concurrent symlinker, and the most time they may take.
const RACE_ROUNDS: usize = 200;
const RACE_BUDGET: Duration = Duration::from_secs(600);

/// What the constructor plants (compiled in with -DMODE=...).
const PLANTER_C: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void plant(const char *name, const char *target) {
    unlink(name);
    if (target == NULL) {
        mkfifo(name, 0666);
    } else {
        symlink(target, name);
    }
}

static void plant_all(int round) {
    char dangling[512];
    snprintf(dangling, sizeof dangling, "%s/created-%d", OUTSIDE, round);
#if MODE == 0
    const char *t = CANARY;
#elif MODE == 1
    const char *t = "/dev/zero";
#elif MODE == 2
    const char *t = NULL; /* FIFOs */
#else
    const char *t = dangling;
#endif
    plant("ready", t);
    plant("activity", t);
    plant("executor.log", t);
    plant("functions.so", t);
    plant("ready.tmp", t);
}

__attribute__((constructor)) static void harvest_planter(void) {
    plant_all(0);
#if RACE
    /* A child that keeps re-planting for a while (it dies with the lease's cgroup). */
    if (fork() == 0) {
        struct timespec ms = {0, 1000000};
        for (int i = 1; i < 3000; i++) {
            plant_all(i % 8);
            nanosleep(&ms, NULL);
        }
        _exit(0);
    }
#endif
}
"#;

/// Builds a library of the test functions plus the planter, readable by every user.
fn build_planter(
    dir: &Path,
    mode: u32,
    race: bool,
    canary: &Path,
    outside: &Path,
) -> Result<String> {
    let src = dir.join(format!("planter-{mode}-{race}.c"));
    let lib = dir.join(format!("libplanter-{mode}-{race}.so"));
    std::fs::write(&src, format!("{FUNCTIONS_C}\n{PLANTER_C}"))?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1"])
        .arg(format!("-DMODE={mode}"))
        .arg(format!("-DRACE={}", u8::from(race)))
        .arg(format!("-DCANARY=\"{}\"", canary.display()))
        .arg(format!("-DOUTSIDE=\"{}\"", outside.display()))
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .output()
        .context("running cc (a C compiler is needed)")?;
    ensure!(
        out.status.success(),
        "cc failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644))?;
    Ok(lib.to_str().context("utf-8 path")?.to_owned())
}

/// A root-only file of random text, and what it looked like.
struct Canary {
    path: PathBuf,
    text: String,
    mtime: i64,
}

impl Canary {
    fn new(secret_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(secret_dir)?;
        std::fs::set_permissions(secret_dir, std::fs::Permissions::from_mode(0o755))?;
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("canary-{text}");
        let path = secret_dir.join("canary");
        std::fs::write(&path, &text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let mtime = std::fs::metadata(&path)?.mtime();
        Ok(Self { path, text, mtime })
    }

    /// The canary is neither in `what` nor changed on disk.
    fn absent_from(&self, label: &str, what: &str) -> Result<()> {
        ensure!(
            !what.contains(&self.text),
            "the canary's text came back in {label}: {what}"
        );
        Ok(())
    }

    fn untouched(&self) -> Result<()> {
        let meta = std::fs::symlink_metadata(&self.path)?;
        ensure!(meta.is_file(), "the canary is no longer a file");
        ensure!(meta.mtime() == self.mtime, "the canary was modified");
        ensure!(meta.mode() & 0o777 == 0o600, "the canary's mode changed");
        ensure!(
            std::fs::read_to_string(&self.path)? == self.text,
            "the canary's text changed"
        );
        Ok(())
    }
}

struct Rig {
    cluster: LocalCluster,
    cli: Cli,
    _scratch: Scratch,
    dir: PathBuf,
    canary: Canary,
    /// Where dangling symlinks point: root must never create anything here.
    outside: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Result<Self> {
        let cluster = LocalCluster::from_env()?;
        test_user()?;
        let scratch = Scratch::new(name)?;
        let dir = scratch.0.clone();
        let cli = Cli::install(&dir, scheduler_url(&cluster)?, &cluster)?;
        let canary = Canary::new(&dir.join("secret"))?;
        let outside = dir.join("outside");
        std::fs::create_dir_all(&outside)?;
        // Root-owned 0755: the user cannot create there, root could.
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            cluster,
            cli,
            _scratch: scratch,
            dir,
            canary,
            outside,
        })
    }

    fn acquire(&self, lib: &str) -> Result<(String, serde_json::Value)> {
        let out = self.cli.acquire(Some(TEST_USER), None, lib)?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        self.canary.absent_from("lease acquire's stdout", &stdout)?;
        self.canary.absent_from("lease acquire's stderr", &stderr)?;
        ensure!(
            out.status.success(),
            "lease acquire failed ({}): {stderr}",
            out.status
        );
        Ok((stdout.clone(), serde_json::from_str(&stdout)?))
    }

    fn release(&self, id: &str) {
        let _ = self.cli.run(Some(TEST_USER), &["lease", "release", id]);
    }

    /// Nothing was created where the dangling symlinks point, and the canary is as it was.
    fn nothing_outside(&self) -> Result<()> {
        self.canary.untouched()?;
        let created: Vec<_> = std::fs::read_dir(&self.outside)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(
            created.is_empty(),
            "files appeared outside the lease directory: {created:?}"
        );
        let secret: Vec<_> = std::fs::read_dir(self.dir.join("secret"))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(
            secret.len() == 1,
            "the canary's directory changed: {secret:?}"
        );
        Ok(())
    }

    /// Caps every node's harvestd at the RSS bound (see [`MemoryCap`]).
    fn cap_agents(&self) -> Result<Vec<MemoryCap>> {
        let mut caps = Vec::new();
        for (node, ..) in self.cli.nodes()? {
            caps.push(MemoryCap::new(
                self.harvestd_pid(&node)?,
                RSS_BOUND_KIB * 1024,
            )?);
        }
        ensure!(!caps.is_empty(), "no node to cap");
        Ok(caps)
    }

    fn harvestd_pid(&self, node: &str) -> Result<u32> {
        let dir = self
            .cluster
            .var("HARVEST_CLUSTER_DIR")
            .context("no HARVEST_CLUSTER_DIR")?;
        let file = Path::new(dir).join(format!("run/harvestd-{node}.pid"));
        Ok(std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?
            .trim()
            .parse()?)
    }

    fn rss_kib(pid: u32) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("harvestd (pid {pid}) is gone"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }

    /// `node` is `up` for [`STAY_UP`] and its harvestd stays alive under [`RSS_BOUND_KIB`].
    fn node_stays_healthy(&self, node: &str) -> Result<()> {
        let pid = self.harvestd_pid(node)?;
        let until = Instant::now() + STAY_UP;
        while Instant::now() < until {
            let nodes = self.cli.nodes()?;
            let state = nodes
                .iter()
                .find(|n| n.0 == node)
                .map(|n| n.1.clone())
                .with_context(|| format!("{node} is no longer listed"))?;
            ensure!(state == "up", "{node} went {state}");
            let rss = Self::rss_kib(pid)?;
            ensure!(
                rss < RSS_BOUND_KIB,
                "harvestd on {node} holds {rss} KiB resident (bound {RSS_BOUND_KIB})"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    }

    /// The canary is absent from every answer about leases and from the dashboard.
    fn answers_are_clean(&self) -> Result<()> {
        for user in [None, Some(TEST_USER)] {
            let leases = self.cli.ok(user, &["leases", "--json"])?;
            self.canary.absent_from("harvest leases --json", &leases)?;
        }
        if let Some(dashboard) = self.cluster.var("HARVEST_DASHBOARD") {
            let url = format!("{}/api/cluster", dashboard.trim_end_matches('/'));
            let out = Command::new("curl")
                .args(["-fsS", "--max-time", "10", &url])
                .output();
            if let Ok(out) = out {
                self.canary
                    .absent_from("/api/cluster", &String::from_utf8_lossy(&out.stdout))?;
            }
        }
        Ok(())
    }
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn planted_symlinks_fifos_and_devices_get_nothing_from_root() -> Result<()> {
    let rig = Rig::new("harvest-security-paths")?;
    let _caps = rig.cap_agents()?;
    // 0: symlinks to the canary, 1: to /dev/zero, 2: FIFOs, 3: dangling symlinks to `outside`.
    for mode in 0..4 {
        let lib = build_planter(&rig.dir, mode, false, &rig.canary.path, &rig.outside)?;
        let (text, acquired) = rig.acquire(&lib)?;
        let id = acquired["id"].as_str().context("no lease id")?.to_owned();
        let node = acquired["node"]
            .as_str()
            .context("no lease node")?
            .to_owned();
        let result = (|| -> Result<()> {
            // The executor's address is an address, whatever `ready` says.
            let address = acquired["executor_address"]
                .as_str()
                .with_context(|| format!("no executor_address in {text}"))?;
            address
                .parse::<SocketAddr>()
                .with_context(|| format!("mode {mode}: the address {address:?} is no address"))?;
            // An invocation writes the activity file (the user's own business if it blocks).
            let _ = rig
                .cli
                .run(Some(TEST_USER), &["invoke", "--lease", &id, "--fn", "echo"]);
            rig.answers_are_clean()?;
            rig.node_stays_healthy(&node)?;
            rig.nothing_outside()
        })();
        rig.release(&id);
        result.with_context(|| format!("planter mode {mode}, lease {id} on {node}"))?;
    }
    rig.nothing_outside()
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn acquisitions_against_a_concurrent_symlinker_create_nothing_outside() -> Result<()> {
    let rig = Rig::new("harvest-security-race")?;
    let lib = build_planter(&rig.dir, 3, true, &rig.canary.path, &rig.outside)?;
    let started = Instant::now();
    let mut nodes = std::collections::BTreeSet::new();
    for round in 0..RACE_ROUNDS {
        ensure!(
            started.elapsed() < RACE_BUDGET,
            "only {round} of {RACE_ROUNDS} acquisitions within {RACE_BUDGET:?}"
        );
        let (_, acquired) = rig.acquire(&lib)?;
        let id = acquired["id"].as_str().context("no lease id")?.to_owned();
        if let Some(node) = acquired["node"].as_str() {
            nodes.insert(node.to_owned());
        }
        // Give the re-planting child a moment against the running lease, then end it.
        std::thread::sleep(Duration::from_millis(20));
        rig.release(&id);
        rig.nothing_outside()
            .with_context(|| format!("after acquisition {round} (lease {id})"))?;
    }
    // Every lease ended: nothing the planters left behind survives outside either.
    let ended = poll(Duration::from_secs(30), || {
        let leases = rig.cli.ok(Some(TEST_USER), &["leases", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&leases)?;
        let live = v
            .as_array()
            .into_iter()
            .flatten()
            .any(|l| matches!(l["state"].as_str(), Some("active" | "pending")));
        Ok((!live).then_some(()))
    })?;
    ensure!(ended.is_some(), "leases still live after the loop");
    rig.nothing_outside()?;
    for node in &nodes {
        rig.node_stays_healthy(node)?;
    }
    Ok(())
}
