//! The node the experiment runs on: the cluster's environment, its harvestd (restarted with each
//! phase's configuration, as `deploy/local-cluster` runs it) and the machine's load.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::client::now_ms;
use crate::cluster::Cluster as LocalCluster;

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, in ticks).
pub(crate) fn cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPUs busy on the whole machine between two `cpu_ticks`.
pub(crate) fn busy_cpus(a: (u64, u64), b: (u64, u64)) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = b.1.saturating_sub(a.1) as f64;
    if total == 0.0 {
        return 0.0;
    }
    b.0.saturating_sub(a.0) as f64 / total * cpus
}

/// Waits until the machine runs less than 0.3 CPUs of other work, up to `max`; returns the
/// load seen last.
pub(crate) fn wait_quiet(max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    loop {
        let Some(a) = cpu_ticks() else {
            return f64::NAN;
        };
        std::thread::sleep(Duration::from_secs(2));
        let Some(b) = cpu_ticks() else {
            return f64::NAN;
        };
        let busy = busy_cpus(a, b);
        if busy < 0.3 || Instant::now() >= deadline {
            return busy;
        }
    }
}

/// The local cluster, and the node the experiment runs on.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) local: LocalCluster,
    pub(crate) dir: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) scheduler: String,
    pub(crate) node: String,
    /// The harvestd this experiment started (to stop and reap it).
    pub(crate) agent: Option<Child>,
}

impl Cluster {
    /// The cluster that is up (the environment's `HARVEST_CLUSTER_DIR`, else the default; as
    /// scripts/test-all's), or a one-node one brought up now.
    pub(crate) fn open() -> Result<Self> {
        let local = match LocalCluster::open() {
            Ok(c) => {
                eprintln!(
                    "interference: using the local cluster that is up (deploy/local-cluster env)"
                );
                c
            }
            Err(_) => {
                eprintln!("interference: no cluster is up; deploy/local-cluster up --nodes 1");
                LocalCluster::up(Some(1))?
            }
        };
        let node = local
            .node_names()?
            .into_iter()
            .next()
            .context("sinfo lists no node")?;
        Ok(Self {
            dir: local.require("HARVEST_CLUSTER_DIR")?.into(),
            run_dir: local.require("HARVEST_RUN_DIR")?.into(),
            scheduler: local.require("HARVEST_SCHEDULER")?.to_owned(),
            node,
            local,
            agent: None,
        })
    }

    pub(crate) fn command(&self, program: &str) -> Command {
        self.local.command(program)
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("harvestd-{}.pid", self.node))
    }

    /// Restarts the node's harvestd as the cluster runs it (its `etc/harvestd-<node>.toml`, if
    /// the cluster writes one), with `extra` TOML appended (none: exactly the cluster's).
    pub(crate) fn restart_agent(&mut self, extra: Option<&str>) -> Result<()> {
        let base = self
            .dir
            .join("etc")
            .join(format!("harvestd-{}.toml", self.node));
        let config = match extra {
            None => base.exists().then(|| base.clone()),
            Some(extra) => {
                let mut text = std::fs::read_to_string(&base).unwrap_or_default();
                text.push_str("\n# Added by harvest-experiments interference.\n");
                text.push_str(extra);
                let path = self
                    .dir
                    .join("etc")
                    .join(format!("harvestd-{}.interference.toml", self.node));
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
        };
        let config = config.as_deref();
        if let Some(mut child) = self.agent.take() {
            kill_term(child.id())?;
            child.wait()?;
        } else if let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "harvestd")
        {
            kill_term(pid)?;
            wait_for(Duration::from_secs(30), "harvestd to stop", || {
                !Path::new(&format!("/proc/{pid}")).exists()
            })?;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(
            self.dir
                .join("log")
                .join(format!("harvestd-{}.out", self.node)),
        )?;
        let mut cmd = self.command("setsid");
        cmd.arg(self.dir.join("bin/harvestd"))
            .args(["run", "--node", &self.node, "--run-dir"])
            .arg(&self.run_dir)
            .arg("--state-dir")
            .arg(self.dir.join("agent").join(&self.node))
            .args(["--scheduler", &self.scheduler]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting harvestd")?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))?;
        self.agent = Some(child);
        let node = self.node.clone();
        wait_for(
            Duration::from_secs(30),
            "harvestd to report to the scheduler",
            || {
                self.nodes_json()
                    .ok()
                    .and_then(|v| node_entry(&v, &node))
                    .is_some_and(|n| {
                        n["state"] == "up"
                            && now_ms() - n["last_report_unix_ms"].as_i64().unwrap_or(0) < 1500
                    })
            },
        )?;
        Ok(())
    }

    pub(crate) fn nodes_json(&self) -> Result<serde_json::Value> {
        let out = self.command("harvest").args(["nodes", "--json"]).output()?;
        ensure!(
            out.status.success(),
            "harvest nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// How many CPUs the node has (its view's `cpus.total`).
    pub(crate) fn node_cpus(&self) -> Result<usize> {
        let nodes = self.nodes_json()?;
        let node = node_entry(&nodes, &self.node)
            .with_context(|| format!("harvest nodes does not list node {}", self.node))?;
        node["cpus"]["total"]
            .as_array()
            .map(Vec::len)
            .with_context(|| {
                format!(
                    "node {} has no cpus.total in harvest nodes --json",
                    self.node
                )
            })
    }

    /// The node's interference state now (`null` when the agent reports none).
    pub(crate) fn interference(&self) -> serde_json::Value {
        self.nodes_json()
            .ok()
            .and_then(|v| node_entry(&v, &self.node))
            .map_or(serde_json::Value::Null, |n| n["interference"].clone())
    }
}

fn node_entry(v: &serde_json::Value, node: &str) -> Option<serde_json::Value> {
    v.as_array()?.iter().find(|n| n["name"] == node).cloned()
}

fn kill_term(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

pub(crate) fn wait_for(
    timeout: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    crate::cluster::wait_for(timeout, Duration::from_millis(100), what, || Ok(done()))
}

/// Caps a lease's CPU at `pct`% of one CPU (a CFS quota over a 100 ms period), as harvestd's
/// `quota` level would, but fixed: the experiment's static points of the frontier. The lease's
/// group is found by its name (`lease_<id>`) under `/sys/fs/cgroup` (v1's `cpu` hierarchy or the
/// v2 tree), wherever the cluster's configuration put it.
pub(crate) fn cap_lease(lease_id: &str, pct: u32) -> Result<()> {
    let name = format!("lease_{lease_id}");
    let root = Path::new("/sys/fs/cgroup");
    let mut found = Vec::new();
    find_dirs(root, &name, 5, &mut found);
    let mut capped = 0;
    let quota = 100_000 * u64::from(pct) / 100;
    for dir in &found {
        if dir.join("cpu.cfs_quota_us").exists() {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000")?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota.to_string())
                .with_context(|| format!("capping {}", dir.display()))?;
            capped += 1;
        } else if dir.join("cpu.max").exists() {
            std::fs::write(dir.join("cpu.max"), format!("{quota} 100000"))
                .with_context(|| format!("capping {}", dir.display()))?;
            capped += 1;
        }
    }
    ensure!(
        capped > 0,
        "no cgroup of lease {lease_id} with a CPU quota under {} (found {found:?})",
        root.display()
    );
    Ok(())
}

fn find_dirs(dir: &Path, name: &str, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        // Symlinked hierarchies (cpu -> cpu,cpuacct) are seen once, through their real name.
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name().to_str() == Some(name) {
            out.push(path);
        } else if depth > 0 {
            find_dirs(&path, name, depth - 1, out);
        }
    }
}
