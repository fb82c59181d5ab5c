//! What the invariants are checked against: the processes and cgroups on this machine (executors
//! and their cpusets, batch jobs' cpusets, leftover lease cgroups), Slurm's view of its jobs
//! (`scontrol show job -d`) and the scheduler's view of each agent (`harvest nodes --json`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use harvest_core::CpuSet;

use crate::cluster::Cluster;

/// `/proc/PID/comm` of an executor (15 characters at most).
const EXECUTOR_COMM: &str = "harvest-executo";

/// A running harvest-executor process.
#[derive(Debug, Clone)]
pub struct Executor {
    pub pid: u32,
    /// A forked worker (its parent is an executor) rather than a lease's supervisor.
    pub worker: bool,
    /// The node whose lease group holds it (`harvest_<node>/...` in the cpuset hierarchy).
    pub node: Option<String>,
    pub cpus: BTreeSet<u32>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn cpus_of(list: &str) -> BTreeSet<u32> {
    CpuSet::parse_list(list.trim())
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn ppid(pid: u32) -> Option<u32> {
    read(Path::new(&format!("/proc/{pid}/stat")))?
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn comm(pid: u32) -> Option<String> {
    read(Path::new(&format!("/proc/{pid}/comm"))).map(|c| c.trim().to_owned())
}

/// Every live harvest-executor (supervisors and workers), with the CPUs its cpuset allows.
pub fn executors(cgroup_root: &Path) -> Vec<Executor> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if comm(pid).as_deref() != Some(EXECUTOR_COMM) {
            continue;
        }
        let state = read(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or_default();
        if state
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        {
            continue;
        }
        let worker = ppid(pid).and_then(comm).is_some_and(|c| c == EXECUTOR_COMM);
        let cpuset = read(Path::new(&format!("/proc/{pid}/cpuset"))).unwrap_or_default();
        let cpuset = cpuset.trim().trim_start_matches('/');
        let node = cpuset
            .split('/')
            .find_map(|s| s.strip_prefix("harvest_"))
            .map(str::to_owned);
        let dir = cgroup_root.join("cpuset").join(cpuset);
        let cpus = read(&dir.join("cpuset.effective_cpus"))
            .or_else(|| read(&dir.join("cpuset.cpus")))
            .map(|l| cpus_of(&l))
            .unwrap_or_default();
        out.push(Executor {
            pid,
            worker,
            node,
            cpus,
        });
    }
    out
}

/// Each batch job's CPUs on `node`, from its cpuset cgroup (`slurm_<node>/uid_*/job_*`).
pub fn job_cpus(cgroup_root: &Path, node: &str) -> BTreeMap<String, BTreeSet<u32>> {
    let base = cgroup_root.join("cpuset").join(format!("slurm_{node}"));
    let mut out = BTreeMap::new();
    let Ok(uids) = std::fs::read_dir(&base) else {
        return out;
    };
    for uid in uids.flatten() {
        let Ok(jobs) = std::fs::read_dir(uid.path()) else {
            continue;
        };
        for job in jobs.flatten() {
            let name = job.file_name().to_string_lossy().into_owned();
            if !name.starts_with("job_") {
                continue;
            }
            // The guarantee is about the job's tasks: its cgroup exists (with its CPUs) a moment
            // before the step's tasks start, while the plugin and the agent reclaim, and a moment
            // after they ended. Only a job with a task running counts.
            if !has_task(&job.path(), 3) {
                continue;
            }
            if let Some(l) = read(&job.path().join("cpuset.cpus")) {
                let cpus = cpus_of(&l);
                if !cpus.is_empty() {
                    out.insert(name, cpus);
                }
            }
        }
    }
    out
}

/// Whether `dir` or a group below it (to `depth` levels) holds a process that is not Slurm's own
/// `slurmstepd` (a job's task: its batch script, or what it runs).
fn has_task(dir: &Path, depth: usize) -> bool {
    let procs = read(&dir.join("cgroup.procs")).unwrap_or_default();
    let task = procs.lines().any(|pid| {
        read(Path::new(&format!("/proc/{}/comm", pid.trim())))
            .is_some_and(|comm| comm.trim() != "slurmstepd")
    });
    task || (depth > 0
        && std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .any(|e| has_task(&e.path(), depth - 1))
        }))
}

/// Executors whose CPUs overlap a batch job's on their node now: (executor pid, job).
pub fn executors_on_batch_cpus(cgroup_root: &Path, nodes: &[String]) -> Vec<(u32, String)> {
    let execs = executors(cgroup_root);
    let mut hits = Vec::new();
    for node in nodes {
        let jobs = job_cpus(cgroup_root, node);
        for e in execs.iter().filter(|e| e.node.as_deref() == Some(node)) {
            for (job, cpus) in &jobs {
                if !e.cpus.is_disjoint(cpus) {
                    hits.push((e.pid, format!("{node}/{job}")));
                }
            }
        }
    }
    hits
}

/// Lease cgroups left under the agents' groups (`<controller>/harvest_<node>/*`).
pub fn lease_cgroups(cgroup_root: &Path, nodes: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(controllers) = std::fs::read_dir(cgroup_root) else {
        return out;
    };
    for c in controllers.flatten() {
        for node in nodes {
            let group = c.path().join(format!("harvest_{node}"));
            let Ok(children) = std::fs::read_dir(&group) else {
                continue;
            };
            out.extend(
                children
                    .flatten()
                    .filter(|ch| ch.path().is_dir())
                    .map(|ch| ch.path()),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The CPUs Slurm gave running jobs on each node (`scontrol -d -o show job`: `Nodes=n1
/// CPU_IDs=0-1`).
pub fn slurm_batch_cpus(cluster: &Cluster) -> Result<BTreeMap<String, BTreeSet<u32>>> {
    let out = cluster
        .command("scontrol")
        .args(["-d", "-o", "show", "job"])
        .output()
        .context("scontrol show job")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for line in text.lines() {
        if !line.contains("JobState=RUNNING") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for (k, w) in words.iter().enumerate() {
            let (Some(nodes), Some(cpus)) = (
                w.strip_prefix("Nodes="),
                words.get(k + 1).and_then(|n| n.strip_prefix("CPU_IDs=")),
            ) else {
                continue;
            };
            map.entry(nodes.to_owned())
                .or_default()
                .extend(cpus_of(cpus));
        }
    }
    Ok(map)
}

/// Per node: (batch CPUs, function CPUs).
pub type NodeCpus = BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)>;

/// Each node's batch and function CPUs as the scheduler holds them from the agents' reports
/// (`harvest nodes --json`).
pub fn harvest_cpus(cluster: &Cluster, harvest: &Path) -> Result<NodeCpus> {
    let out = cluster
        .command(harvest)
        .args(["nodes", "--json"])
        .output()
        .context("harvest nodes --json")?;
    anyhow::ensure!(
        out.status.success(),
        "harvest nodes: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let list = |x: &serde_json::Value| -> BTreeSet<u32> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_u64())
                    .map(|c| c as u32)
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["name"].as_str()?.to_owned(),
                (list(&n["cpus"]["batch"]), list(&n["cpus"]["function"])),
            ))
        })
        .collect())
}
