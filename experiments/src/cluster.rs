//! The real local cluster, as the experiments that run on it see it (`deploy/local-cluster`).
//!
//! The cluster's settings come from the environment (`eval "$(deploy/local-cluster env)"`), else
//! from `deploy/local-cluster env` itself; commands run with them (`SLURM_CONF`, the cluster's
//! `bin/` first on `PATH`, `HARVEST_SCHEDULER`).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The repository's root (experiments/..).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `export K='v'` lines into a map; `"$PATH"` in a value becomes the current PATH.
pub fn parse_exports(text: &str) -> BTreeMap<String, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace("\"$PATH\"", &path).replace(['\'', '"'], "");
            (k.to_owned(), v)
        })
        .collect()
}

/// A running local cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub env: BTreeMap<String, String>,
}

impl Cluster {
    /// The cluster `deploy/local-cluster env` describes; an error says how to start one when
    /// Slurm does not answer.
    pub fn open() -> Result<Self> {
        let script = repo_root().join("deploy/local-cluster");
        let out = Command::new(&script)
            .arg("env")
            .output()
            .with_context(|| format!("running {} env", script.display()))?;
        ensure!(
            out.status.success(),
            "deploy/local-cluster env failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self {
            env: parse_exports(&String::from_utf8_lossy(&out.stdout)),
        };
        let sinfo = cluster.cmd("sinfo").arg("-h").output();
        match sinfo {
            Ok(o) if o.status.success() => Ok(cluster),
            _ => bail!(
                "the local cluster does not answer: start it with `deploy/local-cluster up --nodes 2`"
            ),
        }
    }

    pub fn var(&self, key: &str) -> Result<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("deploy/local-cluster env exports no {key}"))
    }

    /// `program` with the cluster's environment.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        c.envs(&self.env);
        c
    }

    /// A binary the cluster installed (`$HARVEST_CLUSTER_DIR/bin/NAME`).
    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let p = PathBuf::from(self.var("HARVEST_CLUSTER_DIR")?)
            .join("bin")
            .join(name);
        ensure!(
            p.exists(),
            "{} is missing: run deploy/local-cluster up",
            p.display()
        );
        Ok(p)
    }

    pub fn cgroup_root(&self) -> PathBuf {
        PathBuf::from(
            std::env::var("HARVEST_CGROUP_ROOT").unwrap_or_else(|_| "/sys/fs/cgroup".into()),
        )
    }

    /// The nodes `sinfo` lists, in order.
    pub fn node_names(&self) -> Result<Vec<String>> {
        let out = self.cmd("sinfo").args(["-h", "-N", "-o", "%N"]).output()?;
        ensure!(
            out.status.success(),
            "sinfo: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        names.dedup();
        ensure!(!names.is_empty(), "sinfo lists no node");
        Ok(names)
    }

    /// Submits `script` as an exclusive job on `node`; returns its id.
    pub fn sbatch_exclusive(&self, node: &str, script: &str) -> Result<u32> {
        let out = self
            .cmd("sbatch")
            .args([
                "--parsable",
                "--output=/dev/null",
                "-w",
                node,
                "--exclusive",
                "--wrap",
            ])
            .arg(script)
            .output()?;
        ensure!(
            out.status.success(),
            "sbatch: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .split(';')
            .next()
            .and_then(|id| id.parse().ok())
            .with_context(|| format!("sbatch printed no job id: {text:?}"))
    }

    /// Cancels a job (best effort: it may have ended).
    pub fn scancel(&self, id: u32) {
        let _ = self.cmd("scancel").arg(id.to_string()).output();
    }

    /// Waits until the scheduler (`harvest nodes --json`) sees no idle CPU on `node`.
    pub fn wait_node_full(&self, harvest: &PathBuf, node: &str) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cmd(harvest).args(["nodes", "--json"]).output()?;
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let full = v.as_array().is_some_and(|a| {
                    a.iter().any(|n| {
                        n["name"] == node
                            && n["cpus"]["idle"].as_array().is_some_and(Vec::is_empty)
                            && n["cpus"]["batch"].as_array().is_some_and(|b| !b.is_empty())
                    })
                });
                if full {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                bail!("node {node} never showed as full in harvest nodes");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Calls `done` every `every` until it says true; an error after `timeout` names `what`.
pub fn wait_for(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() >= until {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(every);
    }
}

/// Creates a regular user (a uid from 1000 up, shell /bin/sh, no home) for an experiment's
/// leases when it is missing: harvestd refuses system accounts.
pub fn ensure_user(user: &str) -> Result<()> {
    let known = Command::new("id")
        .args(["-u", user])
        .output()?
        .status
        .success();
    if !known {
        let out = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", user])
            .output()?;
        ensure!(
            out.status.success(),
            "useradd {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// "N CPUs, kernel K" for result files.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_become_a_map_with_path_expanded() {
        let m = parse_exports(
            "export SLURM_CONF='/c/slurm.conf'\nexport PATH='/c/bin':\"$PATH\"\nnoise\n",
        );
        assert_eq!(m["SLURM_CONF"], "/c/slurm.conf");
        assert!(m["PATH"].starts_with("/c/bin:"), "{}", m["PATH"]);
    }
}
