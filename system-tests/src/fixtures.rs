//! Fixtures shared by the system tests: the test user, a C function library, built binaries,
//! scratch directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use harvest_core::CpuSet;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::{LocalCluster, node_is_full, poll, repo_root};

/// The unprivileged user the tests run functions as (created when missing): a regular account
/// (uid from 1000 up, a login shell), since harvestd refuses system accounts.
pub const TEST_USER: &str = "harvest-user";

/// C-ABI test functions: `echo`, `crash`, `spin`, `hog` (allocates and touches N MiB, N the
/// decimal input), `whereami` (`exe=`, `cpus=`, `uid=` lines, then `/proc/self/cgroup`), `burn`,
/// `hold`, `threads` (a bounded thread bomb that reports how many it made), `open_path` (opens
/// the input path: `opened` or `errno=N`) and `chatter` (writes N KiB to stdout).
pub const FUNCTIONS_C: &str = include_str!("functions.c");

/// Compiles [`FUNCTIONS_C`] into `dir/libfunctions.so`, readable by every user.
pub fn build_library(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("functions.c");
    let lib = dir.join("libfunctions.so");
    std::fs::write(&src, FUNCTIONS_C)?;
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .context("running cc (a C compiler is needed; Debian: apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "cc failed on {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644))?;
    Ok(lib)
}

/// [`TEST_USER`]'s uid and gid, creating the regular user (no home) when it is missing.
pub fn test_user() -> Result<(u32, u32)> {
    regular_user(TEST_USER)
}

/// A regular user's uid and gid (a uid from 1000 up, shell `/bin/sh`, no home), created when
/// missing: harvestd runs functions only as such accounts.
pub fn regular_user(name: &str) -> Result<(u32, u32)> {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", name])
            .output()?;
        ensure!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        id("-u").with_context(|| format!("no uid for {name}"))?,
        id("-g").with_context(|| format!("no gid for {name}"))?,
    ))
}

/// The secret of the leases a test orders from harvestd directly (CreateExecutor): one per test
/// process, proved on every connection to their executors.
pub fn lease_secret() -> &'static harvest_core::invoke::auth::LeaseSecret {
    static SECRET: std::sync::OnceLock<harvest_core::invoke::auth::LeaseSecret> =
        std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        harvest_core::invoke::auth::LeaseSecret::random().expect("the system's random generator")
    })
}

/// The user in the primary group the local cluster's scheduler caps at one live lease
/// (`[[access.per_group]] gid = 2900`, deploy/local-cluster).
pub const CAPPED_USER: &str = "harvest-capped-user";
/// That group's gid (deploy/local-cluster's `HARVEST_CAPPED_GID`).
pub const CAPPED_GID: u32 = 2900;

/// Creates [`CAPPED_USER`] with primary group [`CAPPED_GID`] when missing; returns its uid.
pub fn capped_user() -> Result<u32> {
    let has_group = Command::new("getent")
        .args(["group", &CAPPED_GID.to_string()])
        .output()?
        .status
        .success();
    if !has_group {
        let out = Command::new("groupadd")
            .args(["-g", &CAPPED_GID.to_string(), "harvest-capped"])
            .output()?;
        ensure!(
            out.status.success(),
            "groupadd harvest-capped: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("id").args(["-u", CAPPED_USER]).output()?;
    if !out.status.success() {
        let out = Command::new("useradd")
            .args([
                "-M",
                "-s",
                "/bin/sh",
                "-g",
                &CAPPED_GID.to_string(),
                CAPPED_USER,
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "useradd {CAPPED_USER}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (uid, gid) = regular_user(CAPPED_USER)?;
    ensure!(
        gid == CAPPED_GID,
        "{CAPPED_USER}'s primary group is {gid}, not {CAPPED_GID}"
    );
    Ok(uid)
}

/// A binary of the workspace's debug build (`scripts/test-all` builds them all first).
pub fn target_bin(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join(name);
    ensure!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    Ok(bin)
}

/// The value of a `key=value` line (as `whereami` prints them).
pub fn field<'a>(out: &'a str, key: &str) -> Result<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .with_context(|| format!("no {key}= in {out:?}"))
}

/// A temporary directory every user can read (mode 0755), removed on drop.
#[derive(Debug)]
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `harvest` CLI of the debug build, copied where the test user can run it, talking to one
/// scheduler.
#[derive(Debug)]
pub struct Cli {
    pub bin: PathBuf,
    pub scheduler: String,
    /// The scheduler's CA (`HARVEST_CA`): the CLI speaks TLS with it.
    pub ca: Option<String>,
}

impl Cli {
    /// Copies the CLI into `dir` (mode 0755); it verifies the scheduler with the CA that the
    /// test's `HARVEST_CA`, else the cluster's, names.
    pub fn install(dir: &Path, scheduler: String, cluster: &LocalCluster) -> Result<Self> {
        let bin = dir.join("harvest");
        std::fs::copy(target_bin("harvest")?, &bin)?;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
        let ca = std::env::var("HARVEST_CA")
            .ok()
            .filter(|c| !c.is_empty())
            .or_else(|| cluster.var("HARVEST_CA").map(str::to_owned));
        Ok(Self { bin, scheduler, ca })
    }

    /// The command `harvest ARGS` as root (`user` None) or as `user`, not yet run.
    pub fn command(&self, user: Option<&str>, args: &[&str]) -> Command {
        self.command_as(user, None, args)
    }

    /// Like [`command`](Self::command), with `group` as the user's group when given
    /// (`runuser -g`).
    pub fn command_as(&self, user: Option<&str>, group: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = match user {
            None => Command::new(&self.bin),
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u]);
                if let Some(g) = group {
                    c.args(["-g", g]);
                }
                c.arg("--").arg(&self.bin);
                c
            }
        };
        if let Some(ca) = &self.ca {
            // runuser keeps the environment, so the test user's CLI sees it too.
            cmd.env("HARVEST_CA", ca);
        }
        cmd.arg("--scheduler").arg(&self.scheduler).args(args);
        cmd
    }

    /// Runs `harvest ARGS` as root (`user` None) or as `user`.
    pub fn run(&self, user: Option<&str>, args: &[&str]) -> Result<Output> {
        Ok(self.command(user, args).stdin(Stdio::null()).output()?)
    }

    /// `harvest lease acquire --json` of one core and 128 MiB for 5 minutes with `lib`, as
    /// `user` (and `group`, as [`command_as`](Self::command_as)); not checked: refusals are
    /// what several tests look for.
    pub fn acquire(&self, user: Option<&str>, group: Option<&str>, lib: &str) -> Result<Output> {
        let args = [
            "lease",
            "acquire",
            "--lib",
            lib,
            "--cores",
            "1",
            "--mem",
            "128M",
            "--lifetime",
            "5m",
            "--json",
        ];
        Ok(self
            .command_as(user, group, &args)
            .stdin(Stdio::null())
            .output()?)
    }

    pub fn ok(&self, user: Option<&str>, args: &[&str]) -> Result<String> {
        let out = self.run(user, args)?;
        ensure!(
            out.status.success(),
            "`harvest {}` as {user:?} exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `harvest ARGS` as root (`user` None) or as `user`, its output parsed as JSON.
    pub fn json(&self, user: Option<&str>, args: &[&str]) -> Result<Value> {
        Ok(serde_json::from_str(&self.ok(user, args)?)?)
    }

    /// `node`'s entry of `harvest nodes --json`.
    pub fn node(&self, node: &str) -> Result<Value> {
        let nodes = self.json(None, &["nodes", "--json"])?;
        nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == node))
            .cloned()
            .with_context(|| format!("no node {node} in harvest nodes --json: {nodes}"))
    }

    /// Waits until this CLI's scheduler sees all of `node`'s CPUs taken by batch jobs.
    pub fn wait_node_full(&self, node: &str) -> Result<()> {
        let full = poll(Duration::from_secs(30), || {
            Ok(node_is_full(&self.node(node)?).then_some(()))
        })?;
        full.with_context(|| format!("the scheduler never saw {node} full"))
    }

    /// `harvest nodes` rows: (name, state, idle CPUs, batch CPUs).
    pub fn nodes(&self) -> Result<Vec<(String, String, CpuSet, CpuSet)>> {
        let set = |s: &str| -> Result<CpuSet> {
            if s == "-" {
                Ok(CpuSet::default())
            } else {
                Ok(s.parse()?)
            }
        };
        self.ok(None, &["nodes"])?
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                ensure!(f.len() >= 5, "short row {l:?}");
                Ok((f[0].to_owned(), f[1].to_owned(), set(f[2])?, set(f[3])?))
            })
            .collect()
    }

    /// `harvest leases` rows of `user`: (id, node, cpus, state).
    pub fn leases_of(&self, user: &str) -> Result<Vec<(String, String, String, String)>> {
        Ok(self
            .ok(None, &["leases"])?
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 6 && f[2] == user)
                    .then(|| (f[0].into(), f[1].into(), f[3].into(), f[5].into()))
            })
            .collect())
    }
}

/// A job script that reports which of `pids` are alive when it starts (`alive PID STATE COMM`
/// lines, then `checked`). A zombie (state Z: dead, its memory freed, only its exit status left
/// for a parent to reap) is not alive.
pub fn alive_check(pids: &[u32]) -> String {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    format!(
        "for p in {}; do s=$(sed -n 's/.*) \\(.\\).*/\\1/p' /proc/$p/stat 2>/dev/null); \
         if [ -n \"$s\" ] && [ \"$s\" != Z ]; then echo alive $p $s $(cat /proc/$p/comm); fi; done; \
         echo checked",
        list.join(" ")
    )
}

/// What most cluster tests start from: the cluster, the CLI installed in a scratch directory
/// (removed on drop) for the test user, who is created when missing, and the C function library
/// ([`FUNCTIONS_C`]) built there.
#[derive(Debug)]
pub struct ClusterRig {
    pub cluster: LocalCluster,
    pub cli: Cli,
    pub scratch: Scratch,
    pub lib: String,
}

impl ClusterRig {
    /// `name` names the scratch directory.
    pub fn new(name: &str) -> Result<Self> {
        let cluster = LocalCluster::from_env()?;
        let scratch = Scratch::new(name)?;
        let cli = Cli::install(&scratch.0, scheduler_url(&cluster)?, &cluster)?;
        let lib = build_library(&scratch.0)?
            .to_str()
            .context("utf-8 path")?
            .to_owned();
        test_user()?;
        Ok(Self {
            cluster,
            cli,
            scratch,
            lib,
        })
    }
}

/// The scheduler's URL: HARVEST_SCHEDULER in the test's environment wins (a scheduler of one's
/// own), as for the CLI, else the one the cluster exports.
pub fn scheduler_url(cluster: &LocalCluster) -> Result<String> {
    match std::env::var("HARVEST_SCHEDULER") {
        Ok(url) if !url.is_empty() => Ok(url),
        _ => Ok(cluster
            .var("HARVEST_SCHEDULER")
            .context("`deploy/local-cluster env` exports no HARVEST_SCHEDULER: is harvest-scheduler part of the cluster?")?
            .to_owned()),
    }
}

/// The real SPANK plugin registered to report to sockets of a test's choosing, undone on drop.
/// The registration `up` wrote (`plugstack.conf.d/harvest.conf`) is rewritten and restored; when
/// there is none, the plugin is built, installed by content hash and registered under
/// `test_conf`. slurmstepd re-reads plugstack.conf at every step, so nothing restarts.
#[derive(Debug)]
pub struct PluginRegistration<'a> {
    cluster: &'a LocalCluster,
    conf: PathBuf,
    /// The file's content before the test, when `up` had registered the plugin.
    original: Option<String>,
}

impl<'a> PluginRegistration<'a> {
    /// `socket_template` is the plugin's `socket=` (with `%n` for the node name).
    pub fn new(cluster: &'a LocalCluster, socket_template: &Path, test_conf: &str) -> Result<Self> {
        let dir = PathBuf::from(
            cluster
                .var("HARVEST_CLUSTER_DIR")
                .context("no HARVEST_CLUSTER_DIR")?,
        );
        let confd = dir.join("etc/plugstack.conf.d");
        let registered = confd.join("harvest.conf");
        let (conf, original, so) = if registered.is_file() {
            let text = std::fs::read_to_string(&registered)?;
            let so = text
                .split_whitespace()
                .nth(1)
                .with_context(|| format!("no plugin path in {}: {text:?}", registered.display()))?
                .to_owned();
            (registered, Some(text), PathBuf::from(so))
        } else {
            (confd.join(test_conf), None, install_plugin(&dir)?)
        };
        let line = format!(
            "optional {} socket={} default=on timeout_ms=100\n",
            so.display(),
            socket_template.display()
        );
        let tmp = conf.with_extension("tmp");
        std::fs::write(&tmp, line)?;
        std::fs::rename(&tmp, &conf)?;
        let reg = Self {
            cluster,
            conf,
            original,
        };
        if reg.original.is_none() {
            reg.regenerate()?;
        }
        Ok(reg)
    }

    /// `up` rewrites plugstack.conf from plugstack.conf.d and leaves running daemons alone.
    fn regenerate(&self) -> Result<()> {
        let script = repo_root().join("deploy/local-cluster");
        let out = self
            .cluster
            .command(script.to_str().context("utf-8 path")?)
            .arg("up")
            .output()?;
        ensure!(
            out.status.success(),
            "deploy/local-cluster up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for PluginRegistration<'_> {
    fn drop(&mut self) {
        match &self.original {
            Some(text) => {
                let tmp = self.conf.with_extension("tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &self.conf);
                }
            }
            None => {
                let _ = std::fs::remove_file(&self.conf);
                let _ = self.regenerate();
            }
        }
    }
}

/// Builds the plugin and installs it by content hash (never over a file slurmstepd maps).
pub fn install_plugin(cluster_dir: &Path) -> Result<PathBuf> {
    let root = repo_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "harvest-spank"])
        .current_dir(&root)
        .status()?;
    ensure!(status.success(), "building harvest-spank failed");
    let built = root.join("target/release/libharvest_spank.so");
    let sum = Command::new("sha256sum").arg(&built).output()?;
    let sum = String::from_utf8(sum.stdout)?;
    let dest = cluster_dir
        .join("lib")
        .join(format!("libharvest_spank-{}.so", &sum[..16]));
    if !dest.exists() {
        std::fs::create_dir_all(cluster_dir.join("lib"))?;
        let tmp = dest.with_extension("tmp");
        std::fs::copy(&built, &tmp)?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_key() {
        let out = "exe=/x/harvest-executor\ncpus=1\nuid=999\n";
        assert_eq!(field(out, "cpus").unwrap(), "1");
        assert_eq!(field(out, "uid").unwrap(), "999");
        assert!(field(out, "gid").is_err());
    }
}
