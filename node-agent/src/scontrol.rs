//! What the cgroup tree cannot tell about a job: `scontrol show job -d`.
//!
//! A job found in the cgroup tree without a `StepStart` (the agent was down when it started)
//! has its CPUs from its cpuset, but its memory only when Slurm constrains RAM, and its GPUs not
//! at all under cgroup v1. For such jobs the agent asks Slurm once, through [`JobDetails`]:
//! [`Scontrol`] runs `scontrol show job -d -o <id>` with a deadline, [`FakeJobDetails`] answers
//! from a map in tests.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harvest_core::CpuSet;
use serde::{Deserialize, Serialize};

/// A job's allocation on one node, as Slurm states it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmAlloc {
    /// `Mem=` of the node's detail line, in MiB.
    pub memory_mib: Option<u64>,
    /// GPU indices from `GRES=gpu...(IDX:...)`.
    pub gpus: Vec<u32>,
}

/// `scontrol` failed.
#[derive(Debug, thiserror::Error)]
pub enum ScontrolError {
    #[error("running {program} {what}: {source}")]
    Spawn {
        program: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("{program} {what} did not finish within {timeout:?} (is slurmctld up?)")]
    Timeout {
        program: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("{program} {what} failed: {stderr}")]
    Failed {
        program: PathBuf,
        what: String,
        stderr: String,
    },
}

/// Where a job's per-node details come from.
pub trait JobDetails: std::fmt::Debug + Send + Sync {
    /// The job's allocation on `node`; `None` when Slurm does not know the job (any more) or the
    /// job has nothing on `node`.
    fn job_on_node(&self, job: u32, node: &str) -> Result<Option<SlurmAlloc>, ScontrolError>;

    /// Slurm's state of `node` (`IDLE`, `MIXED+DRAIN`, `DOWN*`, ...); `None` when unknown (a
    /// source that cannot tell).
    fn node_state(&self, _node: &str) -> Result<Option<String>, ScontrolError> {
        Ok(None)
    }
}

/// The real `scontrol`.
#[derive(Debug, Clone)]
pub struct Scontrol {
    pub program: PathBuf,
    pub timeout: Duration,
}

impl Scontrol {
    /// Runs `scontrol ARGS` within the timeout: `Ok((success, stdout, stderr))`.
    fn run(&self, args: &[&str]) -> Result<(bool, String, String), ScontrolError> {
        let what = args.join(" ");
        let spawn = || {
            Command::new(&self.program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        // A program replaced a moment ago can still be open for writing in a forked child
        // (ETXTBSY); that passes within milliseconds.
        let mut tries = 0;
        let mut child = loop {
            match spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => {
                    break other.map_err(|source| ScontrolError::Spawn {
                        program: self.program.clone(),
                        what: what.clone(),
                        source,
                    })?;
                }
            }
        };
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ScontrolError::Timeout {
                        program: self.program.clone(),
                        what,
                        timeout: self.timeout,
                    });
                }
                Err(source) => {
                    return Err(ScontrolError::Spawn {
                        program: self.program.clone(),
                        what,
                        source,
                    });
                }
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Ok((status.success(), out, err))
    }

    fn failed(&self, args: &[&str], stderr: &str) -> ScontrolError {
        ScontrolError::Failed {
            program: self.program.clone(),
            what: args.join(" "),
            stderr: stderr.trim().to_owned(),
        }
    }
}

impl JobDetails for Scontrol {
    fn job_on_node(&self, job: u32, node: &str) -> Result<Option<SlurmAlloc>, ScontrolError> {
        let job = job.to_string();
        let args = ["show", "job", "-d", "-o", &job];
        let (ok, out, err) = self.run(&args)?;
        if !ok {
            if err.contains("Invalid job id") {
                return Ok(None);
            }
            return Err(self.failed(&args, &err));
        }
        Ok(parse_job_details(&out, node))
    }

    fn node_state(&self, node: &str) -> Result<Option<String>, ScontrolError> {
        let args = ["show", "node", "-o", node];
        let (ok, out, err) = self.run(&args)?;
        if !ok {
            return Err(self.failed(&args, &err));
        }
        Ok(parse_node_state(&out))
    }
}

/// The `State=` of `scontrol show node -o` output (e.g. `IDLE+DRAIN`, `DOWN*`).
pub fn parse_node_state(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|t| t.strip_prefix("State="))
        .map(str::to_owned)
}

/// Whether a Slurm node state means no new work may go there: draining or drained, down, or
/// failing (`IDLE+DRAIN`, `MIXED+DRAIN`, `DOWN*`, `ALLOCATED+FAIL`, ...).
pub fn is_draining(state: &str) -> bool {
    state
        .split(['+', '*', '~', '#', '!', '%', '$', '@', '^', '-'])
        .any(|part| {
            matches!(
                part,
                "DRAIN" | "DRAINING" | "DRAINED" | "DOWN" | "FAIL" | "FAILING"
            )
        })
}

/// Fixed answers, for tests.
#[derive(Debug, Clone, Default)]
pub struct FakeJobDetails(pub BTreeMap<u32, SlurmAlloc>);

impl JobDetails for FakeJobDetails {
    fn job_on_node(&self, job: u32, _node: &str) -> Result<Option<SlurmAlloc>, ScontrolError> {
        Ok(self.0.get(&job).cloned())
    }
}

/// Finds `node`'s detail group (`Nodes=... CPU_IDs=... Mem=... GRES=...`) in `scontrol show job
/// -d -o` output.
pub fn parse_job_details(text: &str, node: &str) -> Option<SlurmAlloc> {
    let mut found: Option<SlurmAlloc> = None;
    let mut in_group = false;
    for token in text.split_whitespace() {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        match key {
            "Nodes" => {
                in_group = expand_hostlist(value).iter().any(|n| n == node);
                if in_group {
                    found = Some(SlurmAlloc::default());
                }
            }
            "Mem" if in_group => {
                if let Some(f) = found.as_mut() {
                    f.memory_mib = value.parse().ok();
                }
            }
            "GRES" if in_group => {
                if let Some(f) = found.as_mut() {
                    f.gpus = gpu_indices(value);
                }
            }
            _ => {}
        }
    }
    found
}

/// GPU indices of a GRES string: `gpu:a100:2(IDX:0-1),nic:1(IDX:0)` gives 0 and 1.
fn gpu_indices(gres: &str) -> Vec<u32> {
    let mut out = CpuSet::new();
    let mut rest = gres;
    while let Some(start) = rest.find("gpu") {
        rest = &rest[start..];
        let Some(open) = rest.find("(IDX:") else {
            break;
        };
        let Some(close) = rest[open..].find(')') else {
            break;
        };
        if let Ok(set) = CpuSet::parse_list(&rest[open + 5..open + close]) {
            out = out.union(&set);
        }
        rest = &rest[open + close..];
    }
    out.iter().collect()
}

/// Expands a Slurm hostlist (`n[1-3,5],gpu07`) into names, keeping zero padding.
pub fn expand_hostlist(list: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        let (Some(open), Some(close)) = (part.find('['), part.find(']')) else {
            names.push(part.to_owned());
            continue;
        };
        let (prefix, suffix) = (&part[..open], &part[close + 1..]);
        for range in part[open + 1..close].split(',') {
            let (lo, hi) = range.split_once('-').unwrap_or((range, range));
            let width = lo.len();
            let (Ok(l), Ok(h)) = (lo.parse::<u64>(), hi.parse::<u64>()) else {
                continue;
            };
            for n in l..=h.min(l + 100_000) {
                names.push(format!("{prefix}{n:0width$}{suffix}"));
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_states_that_drain_are_told_apart() {
        let text = "NodeName=n1 Arch=x86_64 CoresPerSocket=1 CPUAlloc=0 CPUTot=2 \
            State=IDLE+DRAIN ThreadsPerCore=1 Reason=maintenance [root@2026-11-27T17:00:00]";
        assert_eq!(parse_node_state(text).as_deref(), Some("IDLE+DRAIN"));
        assert_eq!(parse_node_state("NodeName=n1"), None);
        for s in [
            "IDLE+DRAIN",
            "MIXED+DRAIN",
            "DOWN*",
            "DOWN",
            "ALLOCATED+FAIL",
            "DRAINED",
        ] {
            assert!(is_draining(s), "{s}");
        }
        for s in [
            "IDLE",
            "MIXED",
            "ALLOCATED",
            "IDLE+COMPLETING",
            "IDLE*",
            "MIXED+PLANNED",
        ] {
            assert!(!is_draining(s), "{s}");
        }
    }

    /// Trimmed from a real `scontrol show job -d -o` on the local cluster, plus a second node.
    const TWO_NODES: &str = "JobId=101 JobName=wrap UserId=root(0) JobState=RUNNING \
        NodeList=n[1-2] TRES=cpu=2,mem=600M,node=2 JOB_GRES=gpu:2 \
        Nodes=n1 CPU_IDs=0 Mem=300 GRES=gpu:a100:1(IDX:1) \
        Nodes=n2 CPU_IDs=1 Mem=200 GRES= MinMemoryNode=300M";

    #[test]
    fn finds_the_nodes_own_memory_and_gpus() {
        assert_eq!(
            parse_job_details(TWO_NODES, "n1"),
            Some(SlurmAlloc {
                memory_mib: Some(300),
                gpus: vec![1]
            })
        );
        assert_eq!(
            parse_job_details(TWO_NODES, "n2"),
            Some(SlurmAlloc {
                memory_mib: Some(200),
                gpus: vec![]
            })
        );
        assert_eq!(parse_job_details(TWO_NODES, "n3"), None);
    }

    #[test]
    fn hostlists_and_gres_lists() {
        assert_eq!(expand_hostlist("n[1-3,5]"), ["n1", "n2", "n3", "n5"]);
        assert_eq!(expand_hostlist("gpu[07-08],x"), ["gpu07", "gpu08", "x"]);
        assert_eq!(expand_hostlist("n1"), ["n1"]);
        assert_eq!(gpu_indices("gpu:h200:4(IDX:0-1,3)"), [0, 1, 3]);
        assert_eq!(gpu_indices("gpu(IDX:2),gpu:b(IDX:0)"), [0, 2]);
        assert!(gpu_indices("").is_empty());
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it() {
        let s = Scontrol {
            program: PathBuf::from("/nonexistent/scontrol"),
            timeout: Duration::from_secs(1),
        };
        let err = s.job_on_node(1, "n1").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/scontrol"), "{err}");
    }

    #[test]
    fn a_hanging_program_is_cut_off_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("scontrol");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Scontrol {
            program: fake,
            timeout: Duration::from_millis(200),
        };
        let t0 = Instant::now();
        assert!(matches!(
            s.job_on_node(1, "n1"),
            Err(ScontrolError::Timeout { .. })
        ));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_script_standing_in_for_scontrol_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("scontrol");
        std::fs::write(&fake, format!("#!/bin/sh\necho '{TWO_NODES}'\n")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = Scontrol {
            program: fake,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(s.job_on_node(101, "n1").unwrap().unwrap().gpus, [1]);
    }
}
