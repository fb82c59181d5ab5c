//! Process-level limits the executor puts on itself at start, before it loads the function
//! library, so that they hold for the library's constructors, every worker and every program a
//! function starts (the node agent sets the lease cgroup's limits; these are the ones a process
//! sets):
//!
//! - `PR_SET_NO_NEW_PRIVS`: no `execve` of a setuid/setgid binary or one with file capabilities
//!   gains privileges, so a function cannot become anyone but the lease's user.
//! - `RLIMIT_CORE` 0: a crashing function writes no core file (which could fill the node's disk
//!   or leave the function's inputs behind).
//! - `RLIMIT_NOFILE` at most [`MAX_OPEN_FILES`] (soft and hard; lower limits are kept): a function
//!   cannot hold the node's file table.

use std::io;

/// The most open files an executor and its workers may have.
pub const MAX_OPEN_FILES: u64 = 1024;

/// A limit that could not be set.
#[derive(Debug, thiserror::Error)]
#[error("cannot set {what} on the executor: {source}")]
pub struct HardenError {
    what: &'static str,
    source: io::Error,
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), HardenError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(HardenError {
            what,
            source: io::Error::last_os_error(),
        })
    }
}

/// Sets no_new_privs and the rlimits described in the module header on this process.
pub fn harden_process() -> Result<(), HardenError> {
    // SAFETY: prctl with integer arguments only; it changes this process's flags.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check("PR_SET_NO_NEW_PRIVS", rc)?;
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for this process.
    check("RLIMIT_CORE 0", unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &no_core)
    })?;
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `files` is a valid out-pointer.
    check("RLIMIT_NOFILE (reading it)", unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut files)
    })?;
    let max = files.rlim_max.min(MAX_OPEN_FILES);
    let bounded = libc::rlimit {
        rlim_cur: files.rlim_cur.min(max),
        rlim_max: max,
    };
    // SAFETY: a valid rlimit for this process; it only lowers the limits.
    check("RLIMIT_NOFILE", unsafe {
        libc::setrlimit(libc::RLIMIT_NOFILE, &bounded)
    })
}
