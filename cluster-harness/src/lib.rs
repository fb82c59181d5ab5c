//! The real local cluster (`deploy/local-cluster`), as the system tests and the experiments see
//! it: one harness for both, so that what a test checks and what an experiment measures run on
//! the same understanding of the cluster.
//!
//! [`LocalCluster::from_env`] reads the cluster's environment from `deploy/local-cluster env`
//! (a test or an experiment needs no shell setup); [`LocalCluster::open`] also checks that Slurm
//! answers. Commands run with that environment (`SLURM_CONF`, the cluster's `bin/` first on
//! `PATH`, `HARVEST_SCHEDULER`, `HARVEST_CA`). Jobs submitted through [`LocalCluster::sbatch`] are
//! cancelled when their guard drops, so a failing test leaves no job behind. [`LocalCluster::up`]
//! runs `deploy/local-cluster up` (which starts again whatever daemon is missing).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cluster-harness sits inside the repository")
        .to_path_buf()
}

/// `deploy/local-cluster`.
pub fn script() -> PathBuf {
    repo_root().join("deploy/local-cluster")
}

/// The local cluster's environment, as `deploy/local-cluster env` prints it.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    env: BTreeMap<String, String>,
    /// The cgroup mount root (`HARVEST_CGROUP_ROOT`, normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

impl LocalCluster {
    /// Reads the environment of the running local cluster; fails with a hint when it is not up.
    pub fn from_env() -> Result<Self> {
        let script = script();
        let out = Command::new(&script)
            .arg("env")
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "`deploy/local-cluster env` failed (is the cluster up? run `deploy/local-cluster up`): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let env: BTreeMap<String, String> = parse_exports(&text).into_iter().collect();
        if !env.contains_key("SLURM_CONF") {
            bail!("`deploy/local-cluster env` printed no SLURM_CONF:\n{text}");
        }
        Ok(Self {
            env,
            cgroup_root: PathBuf::from(
                std::env::var("HARVEST_CGROUP_ROOT").unwrap_or_else(|_| "/sys/fs/cgroup".into()),
            ),
        })
    }

    /// The cluster `deploy/local-cluster env` describes, once Slurm answers; an error says how
    /// to start one when it does not.
    pub fn open() -> Result<Self> {
        let cluster = Self::from_env()?;
        match cluster.command("sinfo").arg("-h").output() {
            Ok(o) if o.status.success() => Ok(cluster),
            _ => bail!(
                "the local cluster does not answer: start it with `deploy/local-cluster up --nodes 2`"
            ),
        }
    }

    /// `deploy/local-cluster up` (with `--nodes N` when given): starts whatever is not running
    /// and waits until every node is up; then the cluster's environment.
    pub fn up(nodes: Option<u32>) -> Result<Self> {
        let mut cmd = Command::new(script());
        cmd.arg("up");
        if let Some(n) = nodes {
            cmd.args(["--nodes", &n.to_string()]);
        }
        let status = cmd.status().context("running deploy/local-cluster up")?;
        ensure!(status.success(), "deploy/local-cluster up failed");
        Self::open()
    }

    /// `deploy/local-cluster up` on this cluster (its directory): restarts what died. Returns
    /// what `up` said (stderr); fails with it when `up` fails.
    pub fn repair(&self) -> Result<String> {
        let mut cmd = Command::new(script());
        cmd.arg("up");
        if let Some(dir) = self.var("HARVEST_CLUSTER_DIR") {
            cmd.env("HARVEST_CLUSTER_DIR", dir);
        }
        let out = cmd.output().context("running deploy/local-cluster up")?;
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "deploy/local-cluster up failed:\n{said}"
        );
        Ok(said)
    }

    /// A variable of the cluster's environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    /// A variable the caller cannot do without: an error names it.
    pub fn require(&self, name: &str) -> Result<&str> {
        self.var(name)
            .with_context(|| format!("deploy/local-cluster env exports no {name}"))
    }

    /// Every variable of the cluster's environment.
    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// A command with the cluster's environment set.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(&self.env);
        cmd
    }

    /// Runs a command to completion; fails with its stderr when it exits non-zero.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "`{program} {}` exited with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A binary the cluster installed (`$HARVEST_CLUSTER_DIR/bin/NAME`).
    pub fn bin(&self, name: &str) -> Result<PathBuf> {
        let p = PathBuf::from(self.require("HARVEST_CLUSTER_DIR")?)
            .join("bin")
            .join(name);
        ensure!(
            p.exists(),
            "{} is missing: run deploy/local-cluster up",
            p.display()
        );
        Ok(p)
    }

    /// The pid `deploy/local-cluster` recorded for daemon `name` (`harvestd-n1`, `slurmctld`,
    /// `harvest-scheduler`, ...), whether or not it still runs.
    pub fn recorded_pid(&self, name: &str) -> Result<i32> {
        let path = PathBuf::from(self.require("HARVEST_RUN_DIR")?).join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("{} holds no pid", path.display()))
    }

    /// Node names and states from `sinfo`.
    pub fn node_states(&self) -> Result<Vec<(String, String)>> {
        let out = self.run("sinfo", &["-h", "-N", "-o", "%N %T"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_owned(), s.trim().to_owned()))
            .collect())
    }

    /// The nodes `sinfo` lists, in order.
    pub fn node_names(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .run("sinfo", &["-h", "-N", "-o", "%N"])?
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect();
        names.dedup();
        ensure!(!names.is_empty(), "sinfo lists no node");
        Ok(names)
    }

    /// Submits a batch job (`sbatch --parsable ARGS`); the job is cancelled when the guard drops.
    pub fn sbatch(&self, args: &[&str]) -> Result<Job<'_>> {
        // Job output goes to the cluster's log directory, not into the caller's directory.
        let output = match self.var("HARVEST_CLUSTER_DIR") {
            Some(dir) => format!("--output={dir}/log/slurm-%j.out"),
            None => "--output=/dev/null".to_owned(),
        };
        let mut full = vec!["--parsable", output.as_str()];
        full.extend_from_slice(args);
        let out = self.run("sbatch", &full)?;
        let id = parse_job_id(&out)?;
        Ok(Job { cluster: self, id })
    }

    /// Submits a batch job as `user` (`runuser -u USER -- sbatch --parsable ARGS`), as a site's
    /// users do: slurmstepd then runs the job's SPANK `user_init` with that user's effective uid.
    /// Its output goes to `output` (`%j` is the job id), which the user must be able to write.
    /// The job is cancelled when the guard drops.
    pub fn sbatch_as(&self, user: &str, output: &Path, args: &[&str]) -> Result<Job<'_>> {
        let out = self
            .command("runuser")
            .args(["-u", user, "--", "sbatch", "--parsable"])
            .arg(format!("--output={}", output.display()))
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "sbatch as {user} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let id = parse_job_id(&String::from_utf8_lossy(&out.stdout))?;
        Ok(Job { cluster: self, id })
    }

    /// Submits `script` as an exclusive job on `node`, not cancelled on drop; returns its id.
    pub fn sbatch_exclusive(&self, node: &str, script: &str) -> Result<u32> {
        let out = self.run(
            "sbatch",
            &[
                "--parsable",
                "--output=/dev/null",
                "-w",
                node,
                "--exclusive",
                "--wrap",
                script,
            ],
        )?;
        parse_job_id(&out)
    }

    /// Cancels a job (best effort: it may have ended).
    pub fn scancel(&self, id: u32) {
        let _ = self.command("scancel").arg(id.to_string()).output();
    }

    /// A job's state (`RUNNING`, `PENDING`, ...), or `None` once Slurm has forgotten it.
    pub fn job_state(&self, id: u32) -> Result<Option<String>> {
        let out = self.run("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"]);
        match out {
            Ok(s) if s.trim().is_empty() => Ok(None),
            Ok(s) => Ok(Some(s.trim().to_owned())),
            // squeue fails with "Invalid job id" once a finished job has aged out.
            Err(e) if e.to_string().contains("Invalid job id") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The job's cgroup directory in the v1 `controller` hierarchy on `node`, discovered by walking
    /// `slurm_<node>/uid_*/` (never by assuming the uid or Slurm's naming beyond `job_<id>`).
    pub fn job_cgroup(&self, controller: &str, node: &str, job: u32) -> Result<PathBuf> {
        let base = self
            .cgroup_root
            .join(controller)
            .join(format!("slurm_{node}"));
        let want = format!("job_{job}");
        for uid_dir in
            std::fs::read_dir(&base).with_context(|| format!("reading {}", base.display()))?
        {
            let path = uid_dir?.path().join(&want);
            if path.is_dir() {
                return Ok(path);
            }
        }
        bail!("no {want} under {}", base.display())
    }

    /// The pids in lease `lease`'s cpuset cgroup on `node` (`harvest_<node>/lease_<lease>`).
    pub fn lease_pids(&self, node: &str, lease: &str) -> Result<Vec<u32>> {
        let procs = self
            .cgroup_root
            .join("cpuset")
            .join(format!("harvest_{node}"))
            .join(format!("lease_{lease}"))
            .join("cgroup.procs");
        let text = std::fs::read_to_string(&procs)
            .with_context(|| format!("reading {}", procs.display()))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Waits up to `within` for a job to end; returns `scontrol show job`'s JobState and
    /// ExitCode (squeue forgets a job once it ended, scontrol keeps it for MinJobAge).
    pub fn job_end(&self, id: u32, within: Duration) -> Result<(String, String)> {
        let ended = poll(within, || {
            let out = self.run("scontrol", &["show", "job", "-o", &id.to_string()])?;
            let get = |key: &str| {
                out.split_whitespace()
                    .find_map(|t| t.strip_prefix(key))
                    .unwrap_or_default()
                    .to_owned()
            };
            let state = get("JobState=");
            Ok((!matches!(
                state.as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
            ))
            .then(|| (state, get("ExitCode="))))
        })?;
        ended.with_context(|| format!("job {id} did not end within {within:?}"))
    }

    /// What a batch job wrote (`log/slurm-<id>.out` under the cluster's directory).
    pub fn job_output(&self, id: u32) -> Result<String> {
        let path =
            Path::new(self.require("HARVEST_CLUSTER_DIR")?).join(format!("log/slurm-{id}.out"));
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// `harvest nodes --json` (the scheduler's view of every node) with `harvest`.
    pub fn nodes_json(&self, harvest: &Path) -> Result<serde_json::Value> {
        let out = self.command(harvest).args(["nodes", "--json"]).output()?;
        ensure!(
            out.status.success(),
            "harvest nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until the scheduler (`harvest nodes --json`) sees no idle CPU on `node`.
    pub fn wait_node_full(&self, harvest: &Path, node: &str) -> Result<()> {
        wait_for(
            Duration::from_secs(60),
            Duration::from_millis(50),
            &format!("node {node} to show as full in harvest nodes"),
            || {
                Ok(self.nodes_json(harvest).ok().is_some_and(|v| {
                    v.as_array()
                        .is_some_and(|a| a.iter().any(|n| n["name"] == node && node_is_full(n)))
                }))
            },
        )
    }
}

/// Whether a node of `harvest nodes --json` has no idle CPU and some batch CPUs (a job can be
/// RUNNING in squeue a moment before its step starts on the node: this is what the scheduler saw).
pub fn node_is_full(node: &serde_json::Value) -> bool {
    node["cpus"]["idle"].as_array().is_some_and(Vec::is_empty)
        && node["cpus"]["batch"]
            .as_array()
            .is_some_and(|b| !b.is_empty())
}

fn parse_job_id(out: &str) -> Result<u32> {
    out.trim()
        .split(';')
        .next()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("sbatch printed no job id: {out:?}"))
}

/// A submitted job, cancelled on drop.
#[derive(Debug)]
pub struct Job<'a> {
    cluster: &'a LocalCluster,
    pub id: u32,
}

impl Job<'_> {
    /// Waits until the job reaches `state`, failing if it ends first or the deadline passes.
    pub fn wait_state(&self, state: &str, timeout: Duration) -> Result<()> {
        let seen = poll(timeout, || {
            let s = self.cluster.job_state(self.id)?;
            match s.as_deref() {
                Some(s) if s == state => Ok(Some(())),
                None => bail!("job {} left the queue before reaching {state}", self.id),
                _ => Ok(None),
            }
        })?;
        seen.with_context(|| format!("job {} did not reach {state} within {timeout:?}", self.id))
    }

    /// Cancels the job now.
    pub fn cancel(&self) -> Result<()> {
        self.cluster
            .run("scancel", &[&self.id.to_string()])
            .map(drop)
    }
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        let _ = self.cancel();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, an error, or `timeout` passes (`Ok(None)`).
pub fn poll<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
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

/// Creates a regular user (a uid from 1000 up, shell /bin/sh, no home) when it is missing:
/// harvestd refuses leases of system accounts, and functions never run as root.
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

/// Parses `export NAME=value` lines as a shell would for the forms `deploy/local-cluster env`
/// prints: concatenated single-quoted (literal), double-quoted and bare words, where `$NAME` in
/// the latter two expands from this process's environment (for `PATH='/x/bin':"$PATH"`).
pub fn parse_exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                shell_word(v.trim(), |name| std::env::var(name).ok()),
            )
        })
        .collect()
}

fn shell_word(word: &str, var: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (_, '$') => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        name.push(n);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if name.is_empty() {
                    out.push('$');
                } else {
                    out.push_str(&var(&name).unwrap_or_default());
                }
            }
            (_, c) => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_outside_single_quotes() {
        let var = |n: &str| (n == "PATH").then(|| "/usr/bin:/bin".to_owned());
        assert_eq!(
            shell_word("'/x/bin':\"$PATH\"", var),
            "/x/bin:/usr/bin:/bin"
        );
        assert_eq!(shell_word("'$PATH'", var), "$PATH");
        assert_eq!(shell_word("a$NOPE-b", var), "a-b");
        assert_eq!(shell_word("cost$", var), "cost$");
    }

    #[test]
    fn parses_export_lines() {
        let env =
            parse_exports("export SLURM_CONF='/a b/slurm.conf'\nexport X=1\n# c\nexport Y=\"2\"\n");
        assert_eq!(
            env,
            vec![
                ("SLURM_CONF".into(), "/a b/slurm.conf".into()),
                ("X".into(), "1".into()),
                ("Y".into(), "2".into())
            ]
        );
    }

    #[test]
    fn job_ids_come_from_parsable_output() {
        assert_eq!(parse_job_id("42\n").unwrap(), 42);
        assert_eq!(parse_job_id("42;cluster\n").unwrap(), 42);
        assert!(parse_job_id("Submitted batch job 42").is_err());
    }
}
