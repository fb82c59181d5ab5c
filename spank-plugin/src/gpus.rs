//! The GPUs a step got, from the step's devices cgroup (v1), never from the job's environment.
//!
//! `SLURM_STEP_GPUS`, `SLURM_JOB_GPUS` and `CUDA_VISIBLE_DEVICES` arrive in slurmstepd inside the
//! environment the user submitted (`srun --export`, `export` in a batch script) and are
//! overwritten by Slurm's GRES plugin only on nodes with GRES configured: they are not facts.
//! SPANK in Slurm 22.05 has no item for a step's GRES. What Slurm does set, and the user cannot,
//! is the step's devices cgroup (`ConstrainDevices=yes`): its `devices.list`.
//!
//! NVIDIA's driver numbers its GPUs `/dev/nvidia<N>` = `c 195:<N>`, the index NVML and Slurm's
//! `gres.conf` use. The rule, in [`step_gpus`]:
//!
//! - a node without `/dev/nvidia<N>` has no GPUs: the step has none;
//! - a `devices.list` that lists what the step may open (a default-deny cgroup) gives the node's
//!   GPUs it allows;
//! - anything else (no devices cgroup, cgroup v2, unreadable, or the kernel's `a *:* rwm`, which
//!   is all a default-allow v1 cgroup shows even when Slurm denied single GPUs in it, as
//!   Slurm 22.05's `task/cgroup` does) cannot say which GPUs the step has: it is reported as
//!   holding every GPU of the node, so that the agent keeps all of them for batch.

use std::fs;
use std::path::Path;

/// The character-device major of NVIDIA GPUs (`NV_MAJOR_DEVICE_NUMBER`).
pub const NVIDIA_MAJOR: u32 = 195;
/// The highest GPU minor: 254 is `nvidia-modeset`, 255 `nvidiactl`.
pub const MAX_GPU_MINOR: u32 = 253;

/// The GPUs of this node: the indices of `<dev_root>/nvidia<N>`. An unreadable `dev_root` is
/// a node without GPUs (there is nothing the agent could lend either).
pub fn node_gpus(dev_root: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dev_root) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let digits = name.to_str()?.strip_prefix("nvidia")?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse().ok().filter(|n| *n <= MAX_GPU_MINOR)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The step's GPUs and, when they are "all of the node's" for want of a readable list, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepGpus {
    pub gpus: Vec<u32>,
    pub all_because: Option<String>,
}

/// The step's GPUs, from the node's GPUs and the step's `devices.list` (or why it has none).
pub fn step_gpus(node: &[u32], devices_list: Result<String, String>) -> StepGpus {
    if node.is_empty() {
        return StepGpus {
            gpus: Vec::new(),
            all_because: None,
        };
    }
    let all = |why: String| StepGpus {
        gpus: node.to_vec(),
        all_because: Some(why),
    };
    let text = match devices_list {
        Ok(text) => text,
        Err(why) => return all(why),
    };
    let Some(rules) = parse_list(&text) else {
        return all(format!("cannot parse devices.list {:?}", text.trim()));
    };
    if rules.iter().any(|r| r.kind == 'a') {
        return all("the step's devices cgroup allows every device (a *:* rwm)".into());
    }
    let gpus = node
        .iter()
        .copied()
        .filter(|gpu| {
            rules.iter().any(|r| {
                r.kind == 'c'
                    && r.major.is_none_or(|m| m == NVIDIA_MAJOR)
                    && r.minor.is_none_or(|m| m == *gpu)
            })
        })
        .collect();
    StepGpus {
        gpus,
        all_because: None,
    }
}

/// One `devices.list` line: `c 195:0 rwm`, `a *:* rwm`; `None` stands for `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rule {
    kind: char,
    major: Option<u32>,
    minor: Option<u32>,
}

fn parse_list(text: &str) -> Option<Vec<Rule>> {
    let num = |s: &str| -> Option<Option<u32>> {
        if s == "*" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut parts = line.split_whitespace();
            let kind = parts.next()?;
            let (major, minor) = parts.next()?.split_once(':')?;
            let kind = match kind {
                "a" | "b" | "c" => kind.chars().next()?,
                _ => return None,
            };
            Some(Rule {
                kind,
                major: num(major)?,
                minor: num(minor)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_gpus_reports_none_whatever_the_cgroup() {
        let none = step_gpus(&[], Err("no devices cgroup".into()));
        assert_eq!((none.gpus, none.all_because), (vec![], None));
        let none = step_gpus(&[], Ok("a *:* rwm\n".into()));
        assert!(none.gpus.is_empty());
    }

    #[test]
    fn a_default_deny_list_gives_the_gpus_it_allows() {
        let list = "c 1:3 rwm\nc 195:255 rwm\nc 195:1 rw\nc 195:3 rwm\nc 136:* rwm\n";
        let got = step_gpus(&[0, 1, 2, 3], Ok(list.into()));
        assert_eq!((got.gpus, got.all_because), (vec![1, 3], None));
        let got = step_gpus(&[0, 1], Ok("c 195:* rwm\n".into()));
        assert_eq!(got.gpus, vec![0, 1]);
        let got = step_gpus(&[0, 1], Ok("c 1:3 rwm\n".into()));
        assert_eq!((got.gpus, got.all_because), (vec![], None));
    }

    #[test]
    fn what_cannot_be_read_holds_every_gpu_of_the_node() {
        for list in [
            Ok("a *:* rwm\n".to_owned()),
            Ok("garbage".to_owned()),
            Err("no devices cgroup".to_owned()),
        ] {
            let got = step_gpus(&[0, 2], list.clone());
            assert_eq!(got.gpus, vec![0, 2], "{list:?}");
            assert!(got.all_because.is_some(), "{list:?}");
        }
    }

    #[test]
    fn node_gpus_are_the_nvidia_device_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "nvidia0",
            "nvidia3",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia255",
            "null",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        assert_eq!(node_gpus(dir.path()), vec![0, 3]);
        assert!(node_gpus(&dir.path().join("absent")).is_empty());
    }
}
