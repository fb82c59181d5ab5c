//! Executor processes behind one narrow trait: start one inside its cgroup as its user, tell
//! whether a pid is still the process that was started, and signal it.
//!
//! [`OsProcesses`] starts `harvestd exec-lease ...` as root, which writes its own pid into the
//! lease's `cgroup.procs` files and then `exec`s harvest-executor as the lease's uid and gid with
//! no supplementary groups ([`super::launch::exec_lease`]): the executor is inside its cgroup,
//! and no longer root, before it loads any user code. The pid stays the same across the `exec`.
//! The ready pipe's write end reaches exec-lease as its stdin and the executor as `--ready-fd N`.

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;

/// Resolves with a description of how the process ended ("exit status 1", "killed by signal 9").
pub type ExitFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// What to start, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub uid: u32,
    pub gid: u32,
    /// Written with the process's own pid before `exec` (see [`crate::cgroup::Cgroups::procs_files`]).
    pub procs_files: Vec<PathBuf>,
    /// The working directory (the lease directory).
    pub dir: PathBuf,
    /// The log's path, for messages (the process gets a pipe into it, [`LaunchIo::output`]).
    pub log: PathBuf,
    /// The only environment variables the process gets, besides `PATH`.
    pub env: Vec<(String, String)>,
}

/// The descriptors a started executor gets: the write end of its output pipe (stdout and
/// stderr, drained into its log by [`super::log`]) and the write end of its ready pipe, both made
/// by the lease task (never opened by name in the user's directory).
#[derive(Debug)]
pub struct LaunchIo {
    pub output: std::os::fd::OwnedFd,
    pub ready: std::os::fd::OwnedFd,
}

/// A started process.
pub struct Spawned {
    pub pid: u32,
    pub start_time: u64,
    /// Resolves when the process exits (and reaps it).
    pub exit: ExitFuture,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("pid", &self.pid)
            .field("start_time", &self.start_time)
            .finish_non_exhaustive()
    }
}

/// Which signal to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Kill,
}

/// A process operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("passing on the output pipe of the executor log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the started process vanished before its pid could be read")]
    NoPid,
    #[error("sending {signal:?} to pid {pid}: {source}")]
    Signal {
        pid: u32,
        signal: Signal,
        source: std::io::Error,
    },
}

/// Starting and watching executor processes.
pub trait Processes: std::fmt::Debug + Send + Sync {
    /// Starts `launch` with `io`; the caller keeps no copy of the ready pipe's write end, so its
    /// read end sees end-of-file once the process is gone.
    fn spawn(&self, launch: &Launch, io: LaunchIo) -> Result<Spawned, ProcessError>;
    /// The start time of `pid` while it runs (`None` once it has exited or is a zombie).
    fn start_time(&self, pid: u32) -> Option<u64>;
    /// Signals `pid`; a process that is already gone is fine.
    fn signal(&self, pid: u32, signal: Signal) -> Result<(), ProcessError>;
}

/// Real processes, started through `<helper> exec-lease`.
#[derive(Debug, Clone)]
pub struct OsProcesses {
    /// The harvestd binary that runs `exec-lease`.
    pub helper: PathBuf,
    /// The proc filesystem (`/proc`).
    pub proc_root: PathBuf,
}

impl Processes for OsProcesses {
    fn spawn(&self, launch: &Launch, io: LaunchIo) -> Result<Spawned, ProcessError> {
        let LaunchIo { output, ready } = io;
        let output_err = output.try_clone().map_err(|source| ProcessError::Log {
            path: launch.log.clone(),
            source,
        })?;
        let mut cmd = tokio::process::Command::new(&self.helper);
        cmd.arg("exec-lease")
            .arg("--uid")
            .arg(launch.uid.to_string())
            .arg("--gid")
            .arg(launch.gid.to_string())
            .arg("--ready-pipe");
        for f in &launch.procs_files {
            cmd.arg("--procs").arg(f);
        }
        cmd.arg("--")
            .arg(&launch.program)
            .args(&launch.args)
            .current_dir(&launch.dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(ready))
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_err))
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: self.helper.clone(),
            source,
        })?;
        let pid = child.id().ok_or(ProcessError::NoPid)?;
        // The start time survives the exec; 0 if the process is already gone (the exit future
        // then reports how it ended).
        let start_time = self.start_time(pid).unwrap_or(0);
        let exit = Box::pin(async move {
            match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("could not wait for the process: {e}"),
            }
        });
        Ok(Spawned {
            pid,
            start_time,
            exit,
        })
    }

    fn start_time(&self, pid: u32) -> Option<u64> {
        let stat =
            std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("stat")).ok()?;
        parse_start_time(&stat)
    }

    fn signal(&self, pid: u32, signal: Signal) -> Result<(), ProcessError> {
        let Some(raw) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return Ok(());
        };
        let sig = match signal {
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Kill => rustix::process::Signal::KILL,
        };
        match rustix::process::kill_process(raw, sig) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(ProcessError::Signal {
                pid,
                signal,
                source: e.into(),
            }),
        }
    }
}

/// `exit status N` or `killed by signal N`.
pub fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot); `None` for a zombie
/// or a malformed line. The command name (field 2) may hold spaces and parentheses, so fields
/// are counted after its last `)`.
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state (field 3) come fields 4..; the start time is field 22.
    fields.nth(22 - 4)?.parse().ok()
}

/// Where the executor binary is: `configured`, else `harvest-executor` beside `own_exe`, else
/// the first `harvest-executor` on `path`.
pub fn find_executor(
    configured: Option<&Path>,
    own_exe: Option<&Path>,
    path: Option<&str>,
) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let beside = own_exe
        .and_then(Path::parent)
        .map(|d| d.join("harvest-executor"))
        .filter(|p| p.is_file());
    beside.or_else(|| {
        path?
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join("harvest-executor"))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_and_zombies_have_none() {
        let line = "4242 (harvest (exe) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(line), Some(987654));
        let zombie = line.replace(") S 1", ") Z 1");
        assert_eq!(parse_start_time(&zombie), None);
        assert_eq!(parse_start_time("garbage"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_start_time(&own).is_some(), "{own}");
    }

    #[test]
    fn the_executor_is_found_in_config_then_beside_harvestd_then_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let own = bin.join("harvestd");
        let conf = Path::new("/opt/x/harvest-executor");
        assert_eq!(find_executor(Some(conf), Some(&own), None).unwrap(), conf);
        assert_eq!(find_executor(None, Some(&own), None), None);
        std::fs::write(other.join("harvest-executor"), "").unwrap();
        let path = format!("/nonexistent:{}", other.display());
        assert_eq!(
            find_executor(None, Some(&own), Some(&path)).unwrap(),
            other.join("harvest-executor")
        );
        std::fs::write(bin.join("harvest-executor"), "").unwrap();
        assert_eq!(
            find_executor(None, Some(&own), Some(&path)).unwrap(),
            bin.join("harvest-executor")
        );
    }
}
