//! Who serves when several schedulers are configured: the one that holds the lock on
//! `primary_lock`, a file on storage their hosts share (the role Slurm gives its
//! StateSaveLocation when a backup controller takes over).
//!
//! The lock is `flock(2)` (through `std::fs::File::try_lock`): the kernel releases it the moment
//! its holder exits or is killed, so a standby that polls every `standby_poll_ms` takes over
//! within that time after the primary dies on the same host; across hosts on NFSv4 (where
//! Linux maps `flock` to byte-range locks) the server releases a dead host's lock when its NFS
//! lease expires (90 s by default). No consensus protocol of our own: the scheduler's state
//! is rebuilt from the agents (they hold the executors and what the leases need, secrets
//! included), so whoever holds the lock needs nothing from the one before.
//!
//! A primary that hangs but does not die keeps the lock (as a hung slurmctld keeps its
//! StateSaveLocation); see docs/scheduler.md.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock could not be used at all (not merely held by another scheduler).
#[derive(Debug, thiserror::Error)]
#[error("primary_lock {path}: {source}")]
pub struct LockError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct PrimaryLock {
    _file: File,
}

/// Opens (creating, mode 0600) the lock file.
fn open(path: &Path) -> Result<File, LockError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|source| LockError {
            path: path.to_owned(),
            source,
        })
}

/// Takes the lock once without waiting: `Ok(None)` while another scheduler holds it.
/// On success the file says who holds it (`whoami`), for operators.
pub fn try_take(path: &Path, whoami: &str) -> Result<Option<PrimaryLock>, LockError> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(source)) => {
            return Err(LockError {
                path: path.to_owned(),
                source,
            });
        }
    }
    let note = format!("{whoami}\n");
    let written = file
        .set_len(0)
        .and_then(|()| (&file).write_all(note.as_bytes()));
    if let Err(e) = written {
        // Only the note failed; the lock itself is ours.
        tracing::warn!(path = %path.display(), error = %e, "cannot write who holds the primary lock");
    }
    Ok(Some(PrimaryLock { _file: file }))
}

/// Waits until this scheduler holds the lock (polling every `poll`), logging that it is a
/// standby and who holds the lock now (what the holder wrote in it, at most 256 bytes).
pub async fn wait(path: &Path, whoami: &str, poll: Duration) -> Result<PrimaryLock, LockError> {
    let mut said = false;
    loop {
        if let Some(lock) = try_take(path, whoami)? {
            if said {
                tracing::warn!(path = %path.display(), "the primary's lock was released: this scheduler takes over");
            }
            return Ok(lock);
        }
        if !said {
            let holder = std::fs::read(path)
                .map(|b| {
                    String::from_utf8_lossy(&b[..b.len().min(256)])
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            tracing::info!(path = %path.display(), %holder,
                "standby: another scheduler holds the primary lock; serving nothing until it is released");
            said = true;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_next_takes_over_when_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let first = try_take(&path, "pid 1 listen a")
            .unwrap()
            .expect("free lock");
        assert!(try_take(&path, "pid 2 listen b").unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid 1 listen a\n");
        drop(first);
        let second = try_take(&path, "pid 2 listen b")
            .unwrap()
            .expect("released");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid 2 listen b\n");
        drop(second);
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("primary.lock");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let e = try_take(&path, "me").unwrap_err();
        assert!(e.to_string().contains("primary.lock"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_waits_then_takes_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("primary.lock");
        let first = try_take(&path, "first").unwrap().unwrap();
        let p = path.clone();
        let standby =
            tokio::spawn(async move { wait(&p, "second", Duration::from_millis(10)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!standby.is_finished());
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(1), standby)
            .await
            .expect("took over")
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
    }
}
