//! What one user or one queue may run at once: Slurm's association and QOS limits, as the
//! batch queue applies them.
//!
//! - running jobs per user (an association's `MaxJobs`, a QOS's `MaxJobsPerUser`);
//! - cores per user (a QOS's `MaxTRESPerUser=cpu=N`);
//! - per queue (a partition's QOS): cores of all its running jobs (`GrpTRES=cpu=N`) and cores
//!   per user in it (`MaxTRESPerUser=cpu=N`).
//!
//! A job's cores are its processors (SWF field 5, else 8), in either allocation mode: a
//! node-exclusive job counts what it asked for, not the idle cores of its nodes. A job that
//! would take its user or queue past a limit is held: it waits without blocking anyone, as a
//! Slurm job pending with reason `QOSMaxCpuPerUserLimit` and the like. Queues are the trace's
//! (SWF field 15, or the queue name of Alea's extended SWF), named as the trace names them.

use std::collections::HashMap;

use harvest_policies::hash::IdMap;
use serde::Serialize;

use super::batch::BatchJob;

/// The limits of one queue, by the trace's queue name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueLimit {
    pub queue: String,
    /// Cores of all the queue's running jobs at most (`GrpTRES=cpu`).
    pub cores: Option<u64>,
    /// Cores of one user's running jobs in the queue at most (`MaxTRESPerUser=cpu`).
    pub user_cores: Option<u64>,
}

impl QueueLimit {
    /// Parses `NAME:cores=N,user-cores=M` (either key, or both).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (queue, keys) = text.split_once(':').ok_or_else(|| {
            format!("'{text}': expected NAME:cores=N,user-cores=M (e.g. q_2d:user-cores=200)")
        })?;
        if queue.is_empty() {
            return Err(format!("'{text}': the queue name is empty"));
        }
        let mut limit = Self {
            queue: queue.to_owned(),
            cores: None,
            user_cores: None,
        };
        for kv in keys.split(',') {
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| format!("'{kv}' in '{text}': expected KEY=N"))?;
            let n: u64 =
                value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("'{kv}' in '{text}': {value} is not a core count >= 1")
                })?;
            let slot = match key {
                "cores" => &mut limit.cores,
                "user-cores" => &mut limit.user_cores,
                _ => {
                    return Err(format!(
                        "'{kv}' in '{text}': unknown key '{key}' (keys: cores, user-cores)"
                    ));
                }
            };
            if slot.replace(n).is_some() {
                return Err(format!("'{text}': {key} given twice"));
            }
        }
        Ok(limit)
    }
}

/// The limits of a run (none by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Running jobs of one user at most.
    pub max_running_per_user: Option<u32>,
    /// Cores of one user's running jobs at most.
    pub max_cores_per_user: Option<u64>,
    pub queues: Vec<QueueLimit>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.max_running_per_user.is_none()
            && self.max_cores_per_user.is_none()
            && self.queues.is_empty()
    }

    /// The limits with queue names resolved to the trace's queue numbers (`names[q]`); an
    /// unknown name is an error that lists the trace's queues.
    pub fn resolve(&self, names: &[String]) -> Result<Resolved, String> {
        let mut queue_cores = vec![None; names.len()];
        let mut queue_user_cores = vec![None; names.len()];
        for l in &self.queues {
            let q = names.iter().position(|n| *n == l.queue).ok_or_else(|| {
                format!(
                    "queue '{}' is not in the trace (its queues: {})",
                    l.queue,
                    if names.is_empty() {
                        "none: every job's queue field is -1".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            })?;
            if queue_cores[q].is_some() || queue_user_cores[q].is_some() {
                return Err(format!("queue '{}' is limited twice", l.queue));
            }
            queue_cores[q] = l.cores;
            queue_user_cores[q] = l.user_cores;
        }
        Ok(Resolved {
            jobs: self.max_running_per_user,
            cores: self.max_cores_per_user,
            queue_cores,
            queue_user_cores,
        })
    }
}

/// [`Limits`] by queue number, as the queue checks them.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    jobs: Option<u32>,
    cores: Option<u64>,
    queue_cores: Vec<Option<u64>>,
    queue_user_cores: Vec<Option<u64>>,
}

impl Resolved {
    /// No limit at all (the queue skips every check).
    pub fn is_empty(&self) -> bool {
        self.jobs.is_none()
            && self.cores.is_none()
            && self.queue_cores.iter().all(Option::is_none)
            && self.queue_user_cores.iter().all(Option::is_none)
    }

    /// The account runs as many jobs as it may (`running` counted, `pass` added): none of its
    /// jobs may start.
    pub fn account_full(&self, account: u64, running: &Use, pass: Option<&Use>) -> bool {
        self.jobs
            .is_some_and(|m| running.jobs(account) + pass.map_or(0, |p| p.jobs(account)) >= m)
    }

    /// `job` may not start now: it would take its user or queue past a limit, with what is
    /// `running` and what this `pass` chose counted.
    pub fn holds(&self, job: &BatchJob, running: &Use, pass: Option<&Use>) -> bool {
        if self.account_full(job.account, running, pass) {
            return true;
        }
        let cores = u64::from(job.procs);
        let a = job.account;
        let pass = |f: &dyn Fn(&Use) -> u64| pass.map_or(0, f);
        if self
            .cores
            .is_some_and(|m| running.cores(a) + pass(&|p| p.cores(a)) + cores > m)
        {
            return true;
        }
        let Some(q) = job.queue else {
            return false;
        };
        let q = q as usize;
        if self
            .queue_cores
            .get(q)
            .copied()
            .flatten()
            .is_some_and(|m| running.queue(q) + pass(&|p| p.queue(q)) + cores > m)
        {
            return true;
        }
        self.queue_user_cores
            .get(q)
            .copied()
            .flatten()
            .is_some_and(|m| running.queue_user(q, a) + pass(&|p| p.queue_user(q, a)) + cores > m)
    }
}

/// What runs (or what one pass chose) by account and queue: jobs and cores.
#[derive(Debug, Clone, Default)]
pub struct Use {
    by_account: IdMap<u64, (u32, u64)>,
    by_queue: Vec<u64>,
    by_queue_user: HashMap<(u32, u64), u64>,
}

impl Use {
    /// `job` starts (`up`) or ends.
    pub fn add(&mut self, job: &BatchJob, up: bool) {
        let cores = u64::from(job.procs);
        let step = |v: &mut u64| {
            *v = if up {
                *v + cores
            } else {
                v.saturating_sub(cores)
            }
        };
        let a = self.by_account.entry(job.account).or_default();
        a.0 = if up { a.0 + 1 } else { a.0.saturating_sub(1) };
        step(&mut a.1);
        if let Some(q) = job.queue {
            let q = q as usize;
            if self.by_queue.len() <= q {
                self.by_queue.resize(q + 1, 0);
            }
            step(&mut self.by_queue[q]);
            step(
                self.by_queue_user
                    .entry((q as u32, job.account))
                    .or_default(),
            );
        }
    }

    pub fn clear(&mut self) {
        self.by_account.clear();
        self.by_queue.clear();
        self.by_queue_user.clear();
    }

    fn jobs(&self, account: u64) -> u32 {
        self.by_account.get(&account).map_or(0, |a| a.0)
    }

    fn cores(&self, account: u64) -> u64 {
        self.by_account.get(&account).map_or(0, |a| a.1)
    }

    fn queue(&self, q: usize) -> u64 {
        self.by_queue.get(q).copied().unwrap_or(0)
    }

    fn queue_user(&self, q: usize, account: u64) -> u64 {
        self.by_queue_user
            .get(&(q as u32, account))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_limits_parse_with_clear_errors() {
        assert_eq!(
            QueueLimit::parse("q_2d:user-cores=200"),
            Ok(QueueLimit {
                queue: "q_2d".into(),
                cores: None,
                user_cores: Some(200)
            })
        );
        assert_eq!(
            QueueLimit::parse("1:cores=64,user-cores=8").map(|l| (l.cores, l.user_cores)),
            Ok((Some(64), Some(8)))
        );
        for (bad, says) in [
            ("q_2d", "expected NAME:"),
            (":cores=1", "name is empty"),
            ("q:cores", "expected KEY=N"),
            ("q:cores=0", "not a core count"),
            ("q:cpus=4", "unknown key 'cpus'"),
            ("q:cores=4,cores=5", "given twice"),
        ] {
            let e = QueueLimit::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let l = Limits {
            queues: vec![QueueLimit::parse("q_9:cores=1").unwrap()],
            ..Limits::default()
        };
        let e = l.resolve(&["q_1d".into(), "q_2d".into()]).unwrap_err();
        assert!(e.contains("q_9") && e.contains("q_1d, q_2d"), "{e}");
    }
}
