//! Recording fakes for the executor's OS resources: cgroups kept in memory and processes that
//! exist only in a table, so tests drive every path (ready, crash, ignored SIGTERM, restart)
//! without root.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use harvest_core::CpuSet;
use tokio::sync::oneshot;

use super::process::{Launch, LaunchIo, ProcessError, Processes, Signal, Spawned};
use crate::cgroup::{
    CgroupError, CgroupVersion, Cgroups, Confinement, CpuQuota, CpuStat, GroupSpec, Support,
};

/// cgroups in memory: what was created with which spec, and what was removed.
#[derive(Debug, Default)]
pub struct FakeCgroups {
    pub groups: Mutex<BTreeMap<PathBuf, GroupSpec>>,
    pub removed: Mutex<Vec<PathBuf>>,
    pub killed: Mutex<Vec<PathBuf>>,
    /// Groups that report a process (pid 1) in `pids`.
    pub populated: Mutex<Vec<PathBuf>>,
    /// CPU caps set with `set_cpu_quota` (`None`: lifted).
    pub quotas: Mutex<BTreeMap<PathBuf, Option<CpuQuota>>>,
    /// `cpu.idle` as set with `set_cpu_idle`.
    pub idle: Mutex<BTreeMap<PathBuf, bool>>,
    /// Groups frozen now.
    pub frozen: Mutex<Vec<PathBuf>>,
    /// What `cpu_stat` and `memory_usage` answer, per group (absent: nothing known, 0 bytes).
    pub cpu_stats: Mutex<BTreeMap<PathBuf, CpuStat>>,
    /// Set: the host cannot confine devices, for this reason (as on cgroup v2).
    pub devices_unconfined: Mutex<Option<String>>,
}

impl FakeCgroups {
    pub fn spec(&self, group: &Path) -> Option<GroupSpec> {
        self.groups.lock().unwrap().get(group).cloned()
    }
}

fn missing(group: &Path) -> CgroupError {
    CgroupError::Read {
        path: group.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

impl Cgroups for FakeCgroups {
    fn version(&self) -> CgroupVersion {
        CgroupVersion::V1
    }
    fn exists(&self, group: &Path) -> bool {
        self.groups.lock().unwrap().contains_key(group)
    }
    fn cpus(&self, group: &Path) -> Result<CpuSet, CgroupError> {
        self.spec(group)
            .and_then(|s| s.cpus)
            .ok_or_else(|| missing(group))
    }
    fn memory_limit(&self, group: &Path) -> Result<Option<u64>, CgroupError> {
        self.spec(group)
            .map(|s| s.memory_limit_bytes)
            .ok_or_else(|| missing(group))
    }
    fn children(&self, group: &Path) -> Result<Vec<String>, CgroupError> {
        Ok(self
            .groups
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.parent() == Some(group))
            .filter_map(|k| k.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }
    fn create(&self, group: &Path, spec: &GroupSpec) -> Result<(), CgroupError> {
        self.groups
            .lock()
            .unwrap()
            .insert(group.to_path_buf(), spec.clone());
        Ok(())
    }
    fn attach(&self, _group: &Path, _pid: u32) -> Result<(), CgroupError> {
        Ok(())
    }
    fn pids(&self, group: &Path) -> Result<Vec<u32>, CgroupError> {
        let populated = self.populated.lock().unwrap().iter().any(|g| g == group);
        Ok(if populated { vec![1] } else { Vec::new() })
    }
    fn freeze(&self, group: &Path) -> Result<(), CgroupError> {
        let mut frozen = self.frozen.lock().unwrap();
        if !frozen.iter().any(|g| g == group) {
            frozen.push(group.to_path_buf());
        }
        Ok(())
    }
    fn thaw(&self, group: &Path) -> Result<(), CgroupError> {
        self.frozen.lock().unwrap().retain(|g| g != group);
        Ok(())
    }
    fn kill(&self, group: &Path) -> Result<(), CgroupError> {
        self.killed.lock().unwrap().push(group.to_path_buf());
        Ok(())
    }
    fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        self.groups
            .lock()
            .unwrap()
            .retain(|k, _| !k.starts_with(group));
        self.removed.lock().unwrap().push(group.to_path_buf());
        Ok(())
    }
    fn procs_files(&self, group: &Path) -> Result<Vec<PathBuf>, CgroupError> {
        Ok(vec![
            Path::new("/fake/cpuset").join(group).join("cgroup.procs"),
        ])
    }
    fn oom_events_file(&self, group: &Path) -> Result<PathBuf, CgroupError> {
        Ok(Path::new("/fake/memory")
            .join(group)
            .join("memory.oom_control"))
    }
    fn set_cpu_weight(&self, group: &Path, weight: u64) -> Result<(), CgroupError> {
        let mut groups = self.groups.lock().unwrap();
        let spec = groups.get_mut(group).ok_or_else(|| missing(group))?;
        spec.cpu_weight = Some(weight);
        Ok(())
    }
    fn set_cpu_idle(&self, group: &Path, idle: bool) -> Result<bool, CgroupError> {
        if !self.exists(group) {
            return Err(missing(group));
        }
        self.idle.lock().unwrap().insert(group.to_path_buf(), idle);
        Ok(true)
    }
    fn set_cpu_quota(&self, group: &Path, quota: Option<CpuQuota>) -> Result<(), CgroupError> {
        if !self.exists(group) {
            return Err(missing(group));
        }
        self.quotas
            .lock()
            .unwrap()
            .insert(group.to_path_buf(), quota);
        Ok(())
    }
    fn cpu_stat(&self, group: &Path) -> Result<CpuStat, CgroupError> {
        Ok(self
            .cpu_stats
            .lock()
            .unwrap()
            .get(group)
            .copied()
            .unwrap_or_default())
    }
    fn memory_usage(&self, _group: &Path) -> Result<u64, CgroupError> {
        Ok(0)
    }
    fn confinement(&self) -> Confinement {
        Confinement {
            pids: Support::Enforced,
            no_swap: Support::Enforced,
            devices: match self.devices_unconfined.lock().unwrap().clone() {
                Some(why) => Support::Unavailable(why),
                None => Support::Enforced,
            },
        }
    }
}

/// How a fake process behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Writes its address line to the ready pipe at once and exits on SIGTERM.
    Normal,
    /// Closes its ready pipe without writing to it.
    NeverReady,
    /// Writes this to the ready pipe instead of an address line.
    ReadyLine(&'static str),
    /// Ready, but only SIGKILL ends it.
    IgnoresTerm,
}

#[derive(Debug)]
struct FakeProcess {
    start_time: u64,
    exit: Option<oneshot::Sender<String>>,
}

#[derive(Debug)]
struct FakeState {
    next_pid: u32,
    behaviour: Behaviour,
    running: HashMap<u32, FakeProcess>,
    launches: Vec<Launch>,
    signals: Vec<(u32, Signal)>,
    /// Each running process's output pipe (its stdout), closed when it exits.
    outputs: HashMap<u32, std::fs::File>,
}

/// Processes in a table. `spawn` writes the ready line the way harvest-executor does.
#[derive(Debug)]
pub struct FakeProcesses {
    state: Mutex<FakeState>,
}

impl Default for FakeProcesses {
    fn default() -> Self {
        Self {
            state: Mutex::new(FakeState {
                next_pid: 1000,
                behaviour: Behaviour::Normal,
                running: HashMap::new(),
                launches: Vec::new(),
                signals: Vec::new(),
                outputs: HashMap::new(),
            }),
        }
    }
}

impl FakeProcesses {
    pub fn set_behaviour(&self, b: Behaviour) {
        self.state.lock().unwrap().behaviour = b;
    }
    pub fn launches(&self) -> Vec<Launch> {
        self.state.lock().unwrap().launches.clone()
    }
    pub fn signals(&self) -> Vec<(u32, Signal)> {
        self.state.lock().unwrap().signals.clone()
    }
    pub fn running(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.state.lock().unwrap().running.keys().copied().collect();
        pids.sort_unstable();
        pids
    }
    /// Ends `pid` as if it crashed or exited; its exit future resolves with `how`.
    pub fn exit(&self, pid: u32, how: &str) {
        let mut st = self.state.lock().unwrap();
        st.outputs.remove(&pid);
        if let Some(mut p) = st.running.remove(&pid)
            && let Some(tx) = p.exit.take()
        {
            let _ = tx.send(how.to_owned());
        }
    }
    /// Writes `bytes` to `pid`'s output (its stdout and stderr), as the process would.
    pub fn write_output(&self, pid: u32, bytes: &[u8]) {
        let mut st = self.state.lock().unwrap();
        let out = st.outputs.get_mut(&pid).expect("a running fake process");
        std::io::Write::write_all(out, bytes).unwrap();
    }
    /// Forgets `pid` without resolving its exit future: a process this agent did not start
    /// (re-adopted) that died.
    pub fn vanish(&self, pid: u32) {
        self.state.lock().unwrap().running.remove(&pid);
    }
    /// Registers a running process this fake did not start (one a previous agent started).
    pub fn adopt_running(&self, pid: u32, start_time: u64) {
        self.state.lock().unwrap().running.insert(
            pid,
            FakeProcess {
                start_time,
                exit: None,
            },
        );
    }
}

impl Processes for FakeProcesses {
    fn spawn(&self, launch: &Launch, io: LaunchIo) -> Result<Spawned, ProcessError> {
        let mut st = self.state.lock().unwrap();
        let pid = st.next_pid;
        st.next_pid += 1;
        let start_time = u64::from(pid) * 10;
        let (tx, rx) = oneshot::channel();
        st.running.insert(
            pid,
            FakeProcess {
                start_time,
                exit: Some(tx),
            },
        );
        st.launches.push(launch.clone());
        // What a real executor does with --ready-fd: one address line, then the pipe is closed
        // (a never-ready one closes it at once, as one that dies would).
        let mut ready = std::fs::File::from(io.ready);
        match st.behaviour {
            Behaviour::NeverReady => {}
            Behaviour::ReadyLine(line) => {
                std::io::Write::write_all(&mut ready, line.as_bytes()).unwrap();
            }
            _ => std::io::Write::write_all(
                &mut ready,
                format!("127.0.0.1:{}\n", 40000 + pid).as_bytes(),
            )
            .unwrap(),
        }
        drop(ready);
        st.outputs.insert(pid, std::fs::File::from(io.output));
        Ok(Spawned {
            pid,
            start_time,
            exit: Box::pin(async move { rx.await.unwrap_or_else(|_| "forgotten".to_owned()) }),
        })
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        self.state
            .lock()
            .unwrap()
            .running
            .get(&pid)
            .map(|p| p.start_time)
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), ProcessError> {
        let behaviour = {
            let mut st = self.state.lock().unwrap();
            st.signals.push((pid, signal));
            st.behaviour
        };
        match (signal, behaviour) {
            (Signal::Term, Behaviour::IgnoresTerm) => {}
            (Signal::Term, _) => self.exit(pid, "killed by signal 15"),
            (Signal::Kill, _) => self.exit(pid, "killed by signal 9"),
        }
        Ok(())
    }
}
