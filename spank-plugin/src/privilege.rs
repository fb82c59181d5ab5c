//! Root back for the plugin's own work in `slurm_spank_user_init`.
//!
//! slurmstepd calls `user_init` after it dropped privileges for the job's user: `initgroups`,
//! `seteuid(job uid)` (spank.h's diagram), with its real and saved uid still root. As the job's
//! user the plugin can neither connect to the agent's socket (root's, mode 0600: only root may
//! speak for Slurm) nor signal a lease's processes (another user's), so for a non-root job every
//! step start would go unreported and the plugin would end every lease on the node itself. Slurm
//! reclaims root the same way around its own per-task setup (`reclaim privileges` →
//! `task_init_privileged`).
//!
//! [`AsRoot::take`] sets the effective uid of the calling thread only (the raw `setresuid`
//! syscall, not glibc's process-wide broadcast) back to root and restores the uid it found when
//! dropped, so no other slurmstepd thread ever runs with a different identity than Slurm gave it,
//! and a panic unwinding through the caller restores it too. Nothing the job's user controls is
//! read by name while it is held: the plugin reads `/proc/self`, the cgroup tree and the node's
//! device directory, and connects to the agent's socket.

use std::io;

use rustix::process::{Uid, geteuid};
use rustix::thread::set_thread_res_uid;

/// The calling thread's effective uid set to root until drop (a no-op when it already was).
#[derive(Debug)]
#[must_use = "root is given back when the guard drops"]
pub struct AsRoot {
    restore: Option<Uid>,
}

impl AsRoot {
    /// Takes root back for this thread. Fails (EPERM) only where neither the real nor the saved
    /// uid is root, which is not slurmstepd.
    pub fn take() -> io::Result<Self> {
        let euid = geteuid();
        if euid.is_root() {
            return Ok(Self { restore: None });
        }
        set_thread_res_uid(None, Some(Uid::ROOT), None)?;
        Ok(Self {
            restore: Some(euid),
        })
    }

    /// The effective uid this guard gives back on drop (None: it changed nothing).
    pub fn restores(&self) -> Option<u32> {
        self.restore.map(Uid::as_raw)
    }
}

impl Drop for AsRoot {
    fn drop(&mut self) {
        if let Some(euid) = self.restore {
            // Root may set its effective uid to any value: this cannot fail short of a kernel
            // refusing root. Should it ever, slurmstepd's own `become_user` before exec still
            // sets every uid of the tasks, so the job's code never runs as root.
            let _ = set_thread_res_uid(None, Some(euid), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread of its own whose effective uid is `euid` (its real and saved uid
    /// stay root, as in slurmstepd after `seteuid`); other test threads are untouched.
    fn on_dropped_thread<T: Send + 'static>(
        euid: u32,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        std::thread::spawn(move || {
            set_thread_res_uid(None, Some(Uid::from_raw(euid)), None).expect("seteuid as root");
            f()
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn takes_root_back_for_the_thread_and_gives_it_back_on_drop() {
        if !geteuid().is_root() {
            eprintln!(
                "skipped: needs root (slurmstepd's real uid); CI runs the unit tests as root"
            );
            return;
        }
        let (during, after, elsewhere) = on_dropped_thread(65534, || {
            // A sibling thread made before the guard (as slurmstepd's other threads are).
            let (ask, asked) = std::sync::mpsc::channel::<()>();
            let sibling = std::thread::spawn(move || {
                asked.recv().unwrap();
                geteuid().as_raw()
            });
            let guard = AsRoot::take().expect("take root back");
            assert_eq!(guard.restores(), Some(65534));
            let during = geteuid().as_raw();
            ask.send(()).unwrap();
            let elsewhere = sibling.join().unwrap();
            drop(guard);
            (during, geteuid().as_raw(), elsewhere)
        });
        assert_eq!(during, 0, "root while the guard is held");
        assert_eq!(after, 65534, "the job user's uid again after drop");
        assert_eq!(elsewhere, 65534, "the change is the holding thread's alone");
        assert!(geteuid().is_root(), "the test thread itself never changed");
    }

    #[test]
    fn a_panic_while_held_still_gives_root_back() {
        if !geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let after = on_dropped_thread(65534, || {
            let r = std::panic::catch_unwind(|| {
                let _guard = AsRoot::take().expect("take root back");
                panic!("the plugin's body panicked");
            });
            assert!(r.is_err());
            geteuid().as_raw()
        });
        assert_eq!(after, 65534);
    }

    #[test]
    fn as_root_already_it_changes_nothing() {
        if !geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let guard = AsRoot::take().unwrap();
        assert_eq!(guard.restores(), None);
    }
}
