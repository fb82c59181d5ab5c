//! Everything about starting one executor that is not a process: the lease directory and its
//! library, the executor's command line, and `harvestd exec-lease`, the step that joins the cgroup
//! and drops root before user code runs.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The library file written for a shipped library, in the lease directory.
pub const LIBRARY_FILE: &str = "functions.so";
/// The file the executor writes its address to.
pub const READY_FILE: &str = "ready";
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
    #[error("the lease carries no function library: ship its bytes or name a path")]
    NoLibrary,
}

/// `<state_dir>/leases/<id>`.
pub fn lease_dir(state_dir: &Path, lease_id: &str) -> PathBuf {
    state_dir.join("leases").join(lease_id)
}

/// Creates the lease directory, owned by `uid:gid` and private to them (0700; `leases/` itself is
/// 0711 so users reach their own directory only), and writes a shipped library into it (0500).
/// Returns the library path the executor loads.
pub fn prepare(
    dir: &Path,
    uid: u32,
    gid: u32,
    library: &LibrarySource,
) -> Result<PathBuf, LaunchError> {
    let dir_err = |source| LaunchError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(dir_err)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
            .map_err(dir_err)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A leftover of an earlier lease with this id: start clean.
            std::fs::remove_dir_all(dir).map_err(dir_err)?;
            std::fs::create_dir(dir).map_err(dir_err)?;
        }
        Err(e) => return Err(dir_err(e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
    chown(dir, Some(uid), Some(gid)).map_err(dir_err)?;
    match library {
        LibrarySource::Path(p) => Ok(p.clone()),
        LibrarySource::Content(bytes) if bytes.is_empty() => Err(LaunchError::NoLibrary),
        LibrarySource::Content(bytes) => {
            let path = dir.join(LIBRARY_FILE);
            let lib_err = |source| LaunchError::Library {
                path: path.clone(),
                source,
            };
            std::fs::write(&path, bytes).map_err(lib_err)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o500))
                .map_err(lib_err)?;
            chown(&path, Some(uid), Some(gid)).map_err(lib_err)?;
            Ok(path)
        }
    }
}

/// harvest-executor's arguments for a lease.
pub fn executor_args(
    library: &Path,
    dir: &Path,
    options: &ServeOptions,
    oom_events: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--lib".into(),
        library.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--ready-file".into(),
        dir.join(READY_FILE).into(),
        "--oom-events".into(),
        oom_events.into(),
        "--activity-file".into(),
        dir.join(ACTIVITY_FILE).into(),
        "--hot".into(),
        match options.hot_window_us {
            w if w < 0 => "always".into(),
            0 => "warm".into(),
            w => format!("{w}us").into(),
        },
    ];
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

/// `harvestd exec-lease`: joins the cgroup (writes this process's pid to each `procs` file),
/// then becomes `program` as `uid:gid` with no supplementary groups (std drops them when root
/// sets a uid). Returns only on failure.
pub fn exec_lease(
    uid: u32,
    gid: u32,
    procs: &[PathBuf],
    program: &Path,
    args: &[OsString],
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
    let e = std::process::Command::new(program)
        .args(args)
        .uid(uid)
        .gid(gid)
        .exec();
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
                Path::new("/lib.so"),
                dir,
                &o,
                Path::new("/cg/memory.oom_control"),
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
                "--ready-file",
                "/s/leases/L1/ready",
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
    }

    #[test]
    fn a_shipped_library_is_private_to_the_lease() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = lease_dir(tmp.path(), "L1");
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        let lib = prepare(&dir, uid, gid, &LibrarySource::Content(b"\x7fELF".to_vec())).unwrap();
        assert_eq!(lib, dir.join(LIBRARY_FILE));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&lib), 0o500);
        assert_eq!(mode(dir.parent().unwrap()), 0o711);
        assert_eq!(std::fs::read(&lib).unwrap(), b"\x7fELF");
        // A second lease with the same id starts from an empty directory.
        let named = prepare(&dir, uid, gid, &LibrarySource::Path("/shared/f.so".into())).unwrap();
        assert_eq!(named, Path::new("/shared/f.so"));
        assert!(!dir.join(LIBRARY_FILE).exists());
        assert!(matches!(
            prepare(&dir, uid, gid, &LibrarySource::Content(Vec::new())),
            Err(LaunchError::NoLibrary)
        ));
    }
}
