//! Everything about starting one executor that is not a process: the lease directory and its
//! library, the executor's command line, and `harvestd exec-lease`, the step that joins the cgroup
//! and drops root before user code runs.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Gid, Mode, Uid};

use super::safefs;

/// The library file written for a shipped library, in the lease directory.
pub const LIBRARY_FILE: &str = "functions.so";
/// The executor writes the time of its latest invocation here (Unix ms).
pub const ACTIVITY_FILE: &str = "activity";
/// The executor's stdout and stderr.
pub const LOG_FILE: &str = "executor.log";

/// Where a lease's functions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    /// The shared object's bytes, shipped by the client.
    Content(Vec<u8>),
    /// A path the lease's user can read on this node.
    Path(PathBuf),
}

pub use harvest_core::invoke::auth::{SECRET_BYTES, SECRET_ENV};

/// A lease secret as the scheduler sent it (checked for its length when the lease starts).
/// Never printed: its Debug says only how long it is.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Secret {
    /// The value of [`SECRET_ENV`]; `None` unless the secret is [`SECRET_BYTES`] long.
    pub fn env_value(&self) -> Option<String> {
        harvest_core::invoke::auth::LeaseSecret::from_bytes(&self.0)
            .ok()
            .map(|s| s.to_hex())
    }
}

/// How the executor serves invocations (`ExecutorOptions` on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// -1 always hot, 0 warm, else the busy-poll window in µs.
    pub hot_window_us: i64,
    /// 0: the executor's default.
    pub default_timeout_ms: u32,
    /// 0: the executor's default.
    pub max_output_bytes: u64,
}

/// A lease directory or library that could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("preparing the lease directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("writing the function library {path}: {source}")]
    Library { path: PathBuf, source: io::Error },
    #[error("creating the executor log {path}: {source}")]
    Log { path: PathBuf, source: io::Error },
    #[error("the lease id {0:?} is not a plain file name; the scheduler sent a malformed order")]
    BadId(String),
    #[error("the lease carries no function library: ship its bytes or name a path")]
    NoLibrary,
}

/// What an executor serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// The functions of this library.
    Library(PathBuf),
    /// A memory region of this many bytes (a memory lease).
    Region { bytes: u64 },
}

/// A prepared lease directory: the library the executor loads (none for a memory lease) and
/// its log, open.
#[derive(Debug)]
pub struct Prepared {
    pub library: Option<PathBuf>,
    /// `executor.log`, created by root before the directory was handed over and left root's
    /// (0644 in the user's 0700 directory: the user reads it, only root writes it, through this
    /// fd, never by name): the executor's output goes there through [`super::log`], bounded.
    pub log: File,
}

/// `<state_dir>/leases`: root's, 0711.
pub fn leases_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("leases")
}

/// `<state_dir>/leases/<id>`.
pub fn lease_dir(state_dir: &Path, lease_id: &str) -> PathBuf {
    leases_dir(state_dir).join(lease_id)
}

/// Creates the lease directory and everything root puts in it, then hands it over: `leases/`
/// (root's, 0711, so users reach their own directory only), the directory (0700), a shipped
/// library (0500) and the log (0644, root's). Every file is created relative to the directory's fd with
/// `O_EXCL|O_NOFOLLOW` while the directory is still root's; only then is it chowned to
/// `uid:gid`, so no name root creates can be planted by the user (see [`super::safefs`]).
/// `library` is `None` for a memory lease.
pub fn prepare(
    state_dir: &Path,
    lease_id: &str,
    uid: u32,
    gid: u32,
    library: Option<&LibrarySource>,
) -> Result<Prepared, LaunchError> {
    // Checked before any path is built: `Path::join` drops a `.` component, so "." would name
    // `leases/` itself.
    if !safefs::is_plain_name(lease_id) {
        return Err(LaunchError::BadId(lease_id.to_owned()));
    }
    let (parent, name) = (leases_dir(state_dir), lease_id);
    let dir = &lease_dir(state_dir, lease_id);
    let dir_err = |source| LaunchError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(&parent).map_err(dir_err)?;
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o711)).map_err(dir_err)?;
    // A leftover of an earlier lease with this id: start clean (following nothing it holds).
    safefs::remove_entry(&parent, name).map_err(dir_err)?;
    let parent_fd = safefs::open_dir(&parent).map_err(dir_err)?;
    rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700))
        .map_err(|e| dir_err(e.into()))?;
    let dir_fd = safefs::open_dir(dir).map_err(dir_err)?;
    rustix::fs::fchmod(&dir_fd, Mode::from_raw_mode(0o700)).map_err(|e| dir_err(e.into()))?;
    let owner = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let library = match library {
        None => None,
        Some(LibrarySource::Path(p)) => Some(p.clone()),
        Some(LibrarySource::Content(bytes)) if bytes.is_empty() => {
            return Err(LaunchError::NoLibrary);
        }
        Some(LibrarySource::Content(bytes)) => {
            let path = dir.join(LIBRARY_FILE);
            let lib_err = |source| LaunchError::Library {
                path: path.clone(),
                source,
            };
            let mut f = safefs::create_new(&dir_fd, LIBRARY_FILE, 0o500).map_err(lib_err)?;
            f.write_all(bytes).map_err(lib_err)?;
            rustix::fs::fchown(&f, owner.0, owner.1).map_err(|e| lib_err(e.into()))?;
            Some(path)
        }
    };
    let log_path = dir.join(LOG_FILE);
    let log_err = |source| LaunchError::Log {
        path: log_path.clone(),
        source,
    };
    let log = safefs::create_new(&dir_fd, LOG_FILE, 0o644).map_err(log_err)?;
    // The hand-over: from here on every name in the directory is the user's.
    rustix::fs::fchown(&dir_fd, owner.0, owner.1).map_err(|e| dir_err(e.into()))?;
    Ok(Prepared { library, log })
}

/// harvest-executor's arguments for a lease.
pub fn executor_args(
    workload: &Workload,
    dir: &Path,
    options: &ServeOptions,
    oom_events: &Path,
    bind: std::net::IpAddr,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = match workload {
        Workload::Library(path) => vec!["--lib".into(), path.into()],
        Workload::Region { bytes } => vec!["--region".into(), bytes.to_string().into()],
    };
    args.extend::<[OsString; _]>([
        "--listen".into(),
        std::net::SocketAddr::new(bind, 0).to_string().into(),
        "--oom-events".into(),
        oom_events.into(),
        "--activity-file".into(),
        dir.join(ACTIVITY_FILE).into(),
        "--hot".into(),
        harvest_core::HotWindow::from_wire_us(options.hot_window_us)
            .to_string()
            .into(),
    ]);
    if options.default_timeout_ms > 0 {
        args.push("--timeout".into());
        args.push(format!("{}ms", options.default_timeout_ms).into());
    }
    if options.max_output_bytes > 0 {
        args.push("--max-output".into());
        args.push(options.max_output_bytes.to_string().into());
    }
    args
}

/// The option harvest-executor takes for its ready pipe (the descriptor it writes its address
/// line to); `exec-lease --ready-pipe` appends it with the descriptor's number.
pub const READY_FD_OPTION: &str = "--ready-fd";

/// The open-file limit an executor gets (soft and hard; lower if harvestd's own hard limit is
/// lower): its connections (64) and a function's files fit, and with the lease's pids limit it
/// bounds the kernel file objects one lease can hold.
pub const EXECUTOR_NOFILE: u64 = 4096;

/// What exec-lease sets on itself before the exec, kept across it: no privileges gained by
/// `execve` (a setuid binary or file capabilities), no core dumps (a dump of a function's
/// memory written where the user may not expect it), at most [`EXECUTOR_NOFILE`] open files.
/// Not `RLIMIT_NPROC`: it counts the user's processes on the whole node, not the lease's; the
/// lease's cgroup `pids.max` is the bound.
pub fn limit_self() -> io::Result<()> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let err = |what: &str, e: rustix::io::Errno| {
        let e = io::Error::from(e);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    rustix::thread::set_no_new_privs(true).map_err(|e| err("setting no_new_privs", e))?;
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, none).map_err(|e| err("setting RLIMIT_CORE to 0", e))?;
    let hard = getrlimit(Resource::Nofile).maximum;
    let nofile = Some(hard.map_or(EXECUTOR_NOFILE, |h| h.min(EXECUTOR_NOFILE)));
    let files = Rlimit {
        current: nofile,
        maximum: nofile,
    };
    setrlimit(Resource::Nofile, files).map_err(|e| err("setting RLIMIT_NOFILE", e))
}

/// The output pipe's capacity: room for a burst of output while the drain catches up, and for
/// the executor's output after a harvestd restart (below).
pub const OUTPUT_PIPE_BYTES: usize = 1 << 20;

/// When stdout is a pipe (the lease task's log drain): grows it to [`OUTPUT_PIPE_BYTES`] and
/// opens a read end of the same pipe that the program inherits and never reads. While harvestd
/// drains the pipe this changes nothing; when it cannot (harvestd restarted: a re-adopted
/// executor's drain is gone), a write does not fail with EPIPE, whose SIGPIPE would kill a worker
/// that prints (workers run with default signals): it lands in the pipe, and once that is full
/// it blocks until the invocation's timeout. Returns the read end, to keep until the exec.
fn keep_output_open() -> io::Result<Option<rustix::fd::OwnedFd>> {
    use rustix::fs::{FileType, Mode, OFlags};
    let stdout = std::io::stdout();
    let stat = rustix::fs::fstat(&stdout).map_err(io::Error::from)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Fifo {
        return Ok(None);
    }
    // Best effort: a smaller pipe only means less room.
    let _ = rustix::pipe::fcntl_setpipe_size(&stdout, OUTPUT_PIPE_BYTES);
    // Reopening a pipe through /proc gives an end in the mode asked for. Not O_CLOEXEC: the
    // program inherits it.
    let reader = rustix::fs::open(
        "/proc/self/fd/1",
        OFlags::RDONLY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| {
        let e = io::Error::from(e);
        io::Error::new(
            e.kind(),
            format!("opening a read end of the output pipe: {e}"),
        )
    })?;
    Ok(Some(reader))
}

/// `harvestd exec-lease`: joins the cgroup (writes this process's pid to each `procs` file),
/// sets [`limit_self`], then becomes `program` as `uid:gid` with no supplementary groups (std
/// drops them when root sets a uid). With `ready_pipe`, this process's stdin is the write end of the lease task's
/// ready pipe: it moves to a new descriptor that the program inherits and is named to it with
/// `--ready-fd N`; the program's stdin is `/dev/null`. Returns only on failure.
pub fn exec_lease(
    uid: u32,
    gid: u32,
    procs: &[PathBuf],
    program: &Path,
    args: &[OsString],
    ready_pipe: bool,
) -> io::Error {
    let pid = std::process::id().to_string();
    for file in procs {
        if let Err(e) = std::fs::write(file, &pid) {
            return io::Error::new(
                e.kind(),
                format!("joining the lease cgroup via {}: {e}", file.display()),
            );
        }
    }
    if let Err(e) = limit_self() {
        return e;
    }
    let _own_reader = match keep_output_open() {
        Ok(fd) => fd,
        Err(e) => return e,
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).uid(uid).gid(gid);
    // Kept open until the exec; dup(2) leaves the copy without FD_CLOEXEC, so the program
    // inherits it.
    let _ready = if ready_pipe {
        match rustix::io::dup(std::io::stdin()) {
            Ok(fd) => {
                cmd.arg(READY_FD_OPTION)
                    .arg(fd.as_raw_fd().to_string())
                    .stdin(std::process::Stdio::null());
                Some(fd)
            }
            Err(e) => {
                return io::Error::new(e.kind(), format!("passing on the ready pipe (stdin): {e}"));
            }
        }
    } else {
        None
    };
    let e = cmd.exec();
    io::Error::new(
        e.kind(),
        format!("starting {} as uid {uid}: {e}", program.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_carry_the_options() {
        let dir = Path::new("/s/leases/L1");
        let args = |o: ServeOptions| -> Vec<String> {
            executor_args(
                &Workload::Library("/lib.so".into()),
                dir,
                &o,
                Path::new("/cg/memory.oom_control"),
                std::net::Ipv4Addr::LOCALHOST.into(),
            )
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
        };
        let a = args(ServeOptions::default());
        assert_eq!(
            a,
            [
                "--lib",
                "/lib.so",
                "--listen",
                "127.0.0.1:0",
                "--oom-events",
                "/cg/memory.oom_control",
                "--activity-file",
                "/s/leases/L1/activity",
                "--hot",
                "warm"
            ]
        );
        let a = args(ServeOptions {
            hot_window_us: -1,
            default_timeout_ms: 500,
            max_output_bytes: 4096,
        });
        assert!(
            a.ends_with(&[
                "always".into(),
                "--timeout".into(),
                "500ms".into(),
                "--max-output".into(),
                "4096".into()
            ]),
            "{a:?}"
        );
        assert!(
            args(ServeOptions {
                hot_window_us: 250,
                ..Default::default()
            })
            .contains(&"250us".to_string())
        );
        // A memory lease's executor serves its region and loads no library.
        let region: Vec<String> = executor_args(
            &Workload::Region { bytes: 1 << 30 },
            dir,
            &ServeOptions::default(),
            Path::new("/cg/memory.oom_control"),
            std::net::Ipv4Addr::LOCALHOST.into(),
        )
        .into_iter()
        .map(|a| a.into_string().unwrap())
        .collect();
        assert_eq!(region[..3], ["--region", "1073741824", "--listen"]);
        assert!(!region.contains(&"--lib".to_string()));
    }

    #[test]
    fn a_shipped_library_is_private_to_the_lease() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = lease_dir(tmp.path(), "L1");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let prepared = prepare(
            tmp.path(),
            "L1",
            uid,
            gid,
            Some(&LibrarySource::Content(b"\x7fELF".to_vec())),
        )
        .unwrap();
        let lib = prepared.library.unwrap();
        assert_eq!(lib, dir.join(LIBRARY_FILE));
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o644);
        // Root's: the user cannot write to it, only unlink the name.
        let root_owned = std::fs::metadata(dir.join(LOG_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&root_owned),
            rustix::process::getuid().as_raw()
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lib), 0o500);
        assert_eq!(mode(dir.parent().unwrap()), 0o711);
        assert_eq!(std::fs::read(&lib).unwrap(), b"\x7fELF");
        // A second lease with the same id starts from an empty directory.
        let named = prepare(
            tmp.path(),
            "L1",
            uid,
            gid,
            Some(&LibrarySource::Path("/shared/f.so".into())),
        )
        .unwrap();
        assert_eq!(named.library.as_deref(), Some(Path::new("/shared/f.so")));
        assert!(!dir.join(LIBRARY_FILE).exists());
        assert!(matches!(
            prepare(
                tmp.path(),
                "L1",
                uid,
                gid,
                Some(&LibrarySource::Content(Vec::new()))
            ),
            Err(LaunchError::NoLibrary)
        ));
        // A memory lease's directory has its log and no library.
        let memory = prepare(tmp.path(), "L1", uid, gid, None).unwrap();
        assert_eq!(memory.library, None);
        assert!(!dir.join(LIBRARY_FILE).exists());
        assert!(dir.join(LOG_FILE).exists());
    }
}

#[cfg(test)]
mod planted {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn a_leftover_directory_full_of_symlinks_is_removed_without_following_them() {
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, "secret").unwrap();
        let dir = lease_dir(tmp.path(), "L1");
        std::fs::create_dir_all(&dir).unwrap();
        for name in [LIBRARY_FILE, LOG_FILE, ACTIVITY_FILE, "ready"] {
            symlink(&canary, dir.join(name)).unwrap();
        }
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let mut prepared = prepare(
            tmp.path(),
            "L1",
            uid,
            gid,
            Some(&LibrarySource::Content(b"lib".to_vec())),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "secret");
        assert_eq!(std::fs::read(dir.join(LIBRARY_FILE)).unwrap(), b"lib");
        prepared.log.write_all(b"log line").unwrap();
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), "secret");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_lease_id_that_is_not_a_plain_name_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = LibrarySource::Path("/x.so".into());
        std::fs::create_dir_all(lease_dir(tmp.path(), "L0")).unwrap();
        for id in ["..", ".", "", "a/b", "../leases"] {
            assert!(
                matches!(
                    prepare(tmp.path(), id, 0, 0, Some(&lib)),
                    Err(LaunchError::BadId(_))
                ),
                "{id}"
            );
        }
        assert!(lease_dir(tmp.path(), "L0").exists());
    }
}
