//! The ledger on disk: one JSON file per node in the state directory, replaced atomically.
//!
//! Every change is written to a temp file in the same directory, synced, and renamed over the
//! old file, then the directory is synced: after a crash (SIGKILL, power loss) the file holds
//! either the old or the new ledger, never a torn one. Saving is slow (two fsyncs), so harvestd
//! never saves on the step-start path: the ledger task publishes each change and a saver task
//! ([`crate::ledger_task`]) writes the latest one, coalescing changes that arrive meanwhile.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::ledger::Ledger;

/// A ledger file that could not be read or written. The I/O error is part of the message and not
/// a `source` (harvestd prints the chain with `{:#}`: it would say it twice).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("creating the state directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("reading the ledger {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("writing the ledger {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the ledger {path} is not valid: {error}")]
    Corrupt { path: PathBuf, error: String },
}

/// Where a ledger is kept. [`LedgerStore`] is the real one; tests put slow or failing stores
/// behind this trait to show that nothing on the step-start path waits for the disk.
pub trait Store: std::fmt::Debug + Send + Sync {
    /// Where it is (for messages).
    fn path(&self) -> &Path;
    /// The saved ledger, `None` when there is none yet.
    fn load(&self) -> Result<Option<Ledger>, StateError>;
    /// Replaces the saved ledger atomically.
    fn save(&self, ledger: &Ledger) -> Result<(), StateError>;
    /// Moves an unreadable ledger aside; returns where it went.
    fn quarantine(&self) -> Result<PathBuf, StateError>;
}

impl Store for LedgerStore {
    fn path(&self) -> &Path {
        LedgerStore::path(self)
    }
    fn load(&self) -> Result<Option<Ledger>, StateError> {
        LedgerStore::load(self)
    }
    fn save(&self, ledger: &Ledger) -> Result<(), StateError> {
        LedgerStore::save(self, ledger)
    }
    fn quarantine(&self) -> Result<PathBuf, StateError> {
        LedgerStore::quarantine(self)
    }
}

/// Where one node's ledger lives.
#[derive(Debug, Clone)]
pub struct LedgerStore {
    path: PathBuf,
}

impl LedgerStore {
    /// The store for `node` in `state_dir` (created if missing).
    pub fn open(state_dir: &Path, node: &str) -> Result<Self, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|error| StateError::CreateDir {
            path: state_dir.to_path_buf(),
            error,
        })?;
        Ok(Self {
            path: state_dir.join(format!("ledger-{node}.json")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved ledger, `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Ledger>, StateError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(StateError::Read {
                    path: self.path.clone(),
                    error,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                error: e.to_string(),
            })
    }

    /// Moves an unreadable ledger aside (`<file>.corrupt`) so the agent can rebuild from the
    /// cgroup tree; returns where it went.
    pub fn quarantine(&self) -> Result<PathBuf, StateError> {
        let to = self.path.with_extension("json.corrupt");
        std::fs::rename(&self.path, &to).map_err(|error| StateError::Write {
            path: to.clone(),
            error,
        })?;
        Ok(to)
    }

    /// Replaces the saved ledger atomically.
    pub fn save(&self, ledger: &Ledger) -> Result<(), StateError> {
        let err = |error| StateError::Write {
            path: self.path.clone(),
            error,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self
            .path
            .with_extension(format!("json.tmp-{}", std::process::id()));
        let mut bytes = serde_json::to_vec_pretty(ledger).map_err(|e| err(e.into()))?;
        bytes.push(b'\n');
        // Root's alone: the ledger keeps the leases' secrets (lease::Recovery).
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use harvest_core::step::{StepAllocation, StepId};

    use super::*;

    #[test]
    fn an_io_failure_is_said_once_in_the_printed_chain() {
        let e = StateError::Write {
            path: "/var/lib/harvest/ledger-n1.json".into(),
            error: std::io::Error::from_raw_os_error(28),
        };
        let printed = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            printed.matches("No space left on device").count(),
            1,
            "{printed}"
        );
        assert!(printed.contains("ledger-n1.json"), "{printed}");
    }

    #[test]
    fn saves_and_loads_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(&dir.path().join("state"), "n1").unwrap();
        assert_eq!(store.load().unwrap(), None);
        let mut l = Ledger::new("n1");
        l.step_start(
            &StepAllocation {
                job_id: 3,
                step_id: StepId::BATCH,
                uid: 0,
                node: "n1".into(),
                cpus: [1].into_iter().collect(),
                memory_mib: Some(500),
                gpus: vec![],
                harvest: false,
            },
            0,
        );
        store.save(&l).unwrap();
        store.save(&l).unwrap();
        assert_eq!(store.load().unwrap(), Some(l));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["ledger-n1.json"]);
    }

    #[test]
    fn the_ledger_keeps_lease_secrets_for_root_alone_and_older_ledgers_still_load() {
        use crate::lease::{LeaseRecord, Recovery, StoredSecret};
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(dir.path(), "n1").unwrap();
        let secret = harvest_core::invoke::auth::LeaseSecret::random().unwrap();
        let mut l = Ledger::new("n1");
        l.leases.insert(
            "L1".into(),
            LeaseRecord {
                uid: 1000,
                gid: 1000,
                cpus: [1].into_iter().collect(),
                memory_mib: 64,
                gpus: vec![],
                expires_unix_ms: 0,
                created_ms: 0,
                executor: None,
                recovery: Recovery {
                    secret: Some(StoredSecret::new(&secret)),
                    idle_timeout_ms: 5000,
                    request_id: "r1".into(),
                },
                memory: Some(harvest_core::region::MemorySpec {
                    region_mib: 16,
                    cpu_millis: 100,
                }),
            },
        );
        store.save(&l).unwrap();
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let back = store.load().unwrap().unwrap();
        let kept = &back.leases["L1"].recovery;
        assert_eq!(
            kept.secret.as_ref().and_then(StoredSecret::bytes),
            Some(secret.as_bytes().to_vec())
        );
        assert_eq!(
            (kept.idle_timeout_ms, kept.request_id.as_str()),
            (5000, "r1")
        );
        assert_eq!(back.leases["L1"].memory, l.leases["L1"].memory);
        // Debug output (logs) never shows it.
        assert!(!format!("{back:?}").contains(&secret.to_hex()));
        // A ledger written before leases kept anything for recovery, or before memory leases.
        let mut old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(store.path()).unwrap()).unwrap();
        let lease = old["leases"]["L1"].as_object_mut().unwrap();
        assert!(lease.remove("recovery").is_some());
        assert!(lease.remove("memory").is_some());
        std::fs::write(store.path(), old.to_string()).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.leases["L1"].recovery, Recovery::default());
        assert_eq!(back.leases["L1"].memory, None);
    }

    #[test]
    fn a_corrupt_ledger_is_reported_with_its_path_and_can_be_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = LedgerStore::open(dir.path(), "n1").unwrap();
        std::fs::write(store.path(), "{ half a ledger").unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("ledger-n1.json"), "{err}");
        let moved = store.quarantine().unwrap();
        assert!(moved.exists());
        assert_eq!(store.load().unwrap(), None);
    }
}
