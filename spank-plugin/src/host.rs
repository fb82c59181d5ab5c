//! What the plugin needs from Slurm, as a narrow trait: the real implementation wraps the SPANK
//! handle (in `ffi`), the fake in [`testing`] lets the callbacks' logic run in unit tests.

/// Where a callback runs (`spank_context()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// srun.
    Local,
    /// slurmstepd, around a job step.
    Remote,
    /// sbatch or salloc.
    Allocator,
    /// slurmd itself.
    Slurmd,
    /// `slurmstepd spank prolog|epilog`, run by slurmd around the whole job.
    JobScript,
    Unknown,
}

/// How loud a log line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Shown to users of srun/sbatch and in slurmd's log (`slurm_error`).
    Error,
    /// Only in the log of the process (slurmd's for slurmstepd) (`slurm_info`).
    Info,
    Debug,
}

/// The SPANK items the plugin reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    JobId,
    StepId,
    Uid,
}

/// The plugin's view of Slurm for one callback.
pub trait Host {
    fn context(&self) -> Context;
    /// A numeric SPANK item, `None` when Slurm does not have it here.
    fn item(&self, item: Item) -> Option<u32>;
    /// A variable of the job's environment (`spank_getenv`). The user writes it (`export`,
    /// `srun --export`): never read a fact about the step or node from it. Nothing reads it
    /// today; the tests' fake records every read so that a regression fails them.
    fn job_env(&self, name: &str) -> Option<String>;
    /// A variable of the calling process's own environment (slurmstepd's, set by slurmd).
    fn process_env(&self, name: &str) -> Option<String>;
    /// The value the job gave `--harvest`, if it gave one (`spank_option_getopt`).
    fn harvest_option(&self) -> Option<String>;
    fn log(&self, level: Level, msg: &str);
}

/// A scripted [`Host`] that records what was logged.
#[cfg(test)]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    #[derive(Debug, Default)]
    pub struct FakeHost {
        pub context: Option<Context>,
        pub items: HashMap<&'static str, u32>,
        pub job_env: HashMap<String, String>,
        /// Every name asked of [`Host::job_env`].
        pub job_env_reads: RefCell<Vec<String>>,
        pub process_env: HashMap<String, String>,
        pub harvest: Option<String>,
        pub logged: RefCell<Vec<(Level, String)>>,
    }

    impl FakeHost {
        /// A slurmstepd of step `step` of job 42 (uid 1000) on node n1.
        pub fn remote(step: u32) -> Self {
            let mut h = Self {
                context: Some(Context::Remote),
                ..Self::default()
            };
            h.items.insert("job", 42);
            h.items.insert("step", step);
            h.items.insert("uid", 1000);
            h.process_env.insert("SLURMD_NODENAME".into(), "n1".into());
            h
        }

        pub fn lines(&self, level: Level) -> Vec<String> {
            self.logged
                .borrow()
                .iter()
                .filter(|(l, _)| *l == level)
                .map(|(_, m)| m.clone())
                .collect()
        }
    }

    impl Host for FakeHost {
        fn context(&self) -> Context {
            self.context.unwrap_or(Context::Unknown)
        }
        fn item(&self, item: Item) -> Option<u32> {
            let key = match item {
                Item::JobId => "job",
                Item::StepId => "step",
                Item::Uid => "uid",
            };
            self.items.get(key).copied()
        }
        fn job_env(&self, name: &str) -> Option<String> {
            self.job_env_reads.borrow_mut().push(name.to_owned());
            self.job_env.get(name).cloned()
        }
        fn process_env(&self, name: &str) -> Option<String> {
            self.process_env.get(name).cloned()
        }
        fn harvest_option(&self) -> Option<String> {
            self.harvest.clone()
        }
        fn log(&self, level: Level, msg: &str) {
            self.logged.borrow_mut().push((level, msg.to_owned()));
        }
    }
}
