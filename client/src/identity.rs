//! Credentials the client sends: a fresh munge credential per request, bound to it (its payload
//! names the method and hashes the request, see [`harvest_proto::binding`]) and restricted to
//! the scheduler's uid (`munge -u`), behind a trait so tests can send a fixed token to a
//! scheduler that uses a fake authenticator.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The munge program that makes credentials.
pub const DEFAULT_MUNGE: &str = "munge";
/// The uid the scheduler runs as when the configuration does not say (`munge -u`): only a
/// process of this uid can decode the client's credentials.
pub const DEFAULT_SCHEDULER_UID: u32 = 0;

/// A credential could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot run {program}: {source}; install munge (Debian: apt-get install munge)")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}; is munged running?")]
    Failed {
        program: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Makes the credential that proves who the caller is, carrying `payload` (what the request
/// it goes with gives, [`harvest_proto::binding::payload`]). munge credentials decode once (the
/// scheduler refuses replays), so a source makes a new one for every request.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    fn credential(&self, payload: &str) -> Result<String, CredentialError>;
}

/// `munge -u <scheduler uid> -s <payload>`: the caller's uid and gid and the payload, signed
/// with the cluster's key, decodable only by the scheduler's uid.
#[derive(Debug, Clone)]
pub struct Munge {
    pub program: PathBuf,
    /// munged's socket (`munge --socket`); `None` uses munge's default.
    pub socket: Option<PathBuf>,
    /// The uid the scheduler runs as.
    pub scheduler_uid: u32,
}

impl Default for Munge {
    fn default() -> Self {
        Self {
            program: PathBuf::from(DEFAULT_MUNGE),
            socket: None,
            scheduler_uid: DEFAULT_SCHEDULER_UID,
        }
    }
}

impl CredentialSource for Munge {
    fn credential(&self, payload: &str) -> Result<String, CredentialError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-u")
            .arg(self.scheduler_uid.to_string())
            .arg("-s")
            .arg(payload);
        if let Some(socket) = &self.socket {
            cmd.arg("--socket").arg(socket);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CredentialError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(CredentialError::Failed {
                program: self.program.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A fixed token, for tests against a scheduler with a fake authenticator: `<token>|<payload>`,
/// the form the fake authenticator reads (a token that is not `uid:<n>` is refused there).
#[derive(Debug, Clone)]
pub struct Fixed(pub String);

impl CredentialSource for Fixed {
    fn credential(&self, payload: &str) -> Result<String, CredentialError> {
        Ok(format!("{}|{payload}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_munge_says_how_to_get_it() {
        let m = Munge {
            program: PathBuf::from("/nonexistent/munge"),
            ..Munge::default()
        };
        let e = m.credential("p").unwrap_err().to_string();
        assert!(e.contains("apt-get install munge"), "{e}");
    }

    #[test]
    fn a_failing_munge_reports_its_stderr() {
        let m = Munge {
            program: PathBuf::from("false"),
            ..Munge::default()
        };
        assert!(matches!(
            m.credential("p"),
            Err(CredentialError::Failed { .. })
        ));
    }

    #[test]
    fn munge_is_asked_for_the_payload_restricted_to_the_schedulers_uid() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("munge");
        std::fs::write(&script, "#!/bin/sh\necho \"$@\"\n").unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let m = Munge {
            program: script,
            socket: None,
            scheduler_uid: 991,
        };
        assert_eq!(
            m.credential("harvest-v1 GetLease ab").unwrap(),
            "-u 991 -s harvest-v1 GetLease ab"
        );
    }
}
