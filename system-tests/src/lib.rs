//! Helpers for system tests against the real local Slurm cluster.
//!
//! The cluster is the one `deploy/local-cluster up` brings up; [`LocalCluster::from_env`] reads
//! its environment from `deploy/local-cluster env`, so a test needs no shell setup. Tests that use
//! it are `#[ignore = "needs the local cluster: ..."]` and the README's test command runs them after
//! `up`. Jobs submitted through [`LocalCluster::sbatch`] are cancelled when their guard drops, so a
//! failing test leaves no job behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod fixtures;

/// The repository root (this crate lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("system-tests sits inside the repository")
        .to_path_buf()
}

/// The local cluster's environment, as `deploy/local-cluster env` prints it.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    env: Vec<(String, String)>,
    /// The cgroup v1 mount root (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
}

impl LocalCluster {
    /// Reads the environment of the running local cluster; fails with a hint when it is not up.
    pub fn from_env() -> Result<Self> {
        let script = repo_root().join("deploy/local-cluster");
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
        let env = parse_exports(&text);
        if !env.iter().any(|(k, _)| k == "SLURM_CONF") {
            bail!("`deploy/local-cluster env` printed no SLURM_CONF:\n{text}");
        }
        Ok(Self {
            env,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        })
    }

    /// A variable of the cluster's environment.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A command with the cluster's environment set.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
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

    /// Node names and states from `sinfo`.
    pub fn node_states(&self) -> Result<Vec<(String, String)>> {
        let out = self.run("sinfo", &["-h", "-N", "-o", "%N %T"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| (n.to_owned(), s.trim().to_owned()))
            .collect())
    }

    /// Submits a batch job (`sbatch --parsable ARGS`); the job is cancelled when the guard drops.
    pub fn sbatch(&self, args: &[&str]) -> Result<Job<'_>> {
        // Job output goes to the cluster's log directory, not into the test's working directory.
        let output = match self.var("HARVEST_CLUSTER_DIR") {
            Some(dir) => format!("--output={dir}/log/slurm-%j.out"),
            None => "--output=/dev/null".to_owned(),
        };
        let mut full = vec!["--parsable", output.as_str()];
        full.extend_from_slice(args);
        let out = self.run("sbatch", &full)?;
        let id = out
            .trim()
            .split(';')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("sbatch printed no job id: {out:?}"))?;
        Ok(Job { cluster: self, id })
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
}
