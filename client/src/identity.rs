//! Credentials the client sends: a fresh munge credential per request (`munge -n`), behind a
//! trait so tests can send a fixed token to a scheduler that uses a fake authenticator.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The munge program that makes credentials.
pub const DEFAULT_MUNGE: &str = "munge";

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

/// Makes the credential that proves who the caller is. munge credentials decode once (the
/// scheduler refuses replays), so a source makes a new one for every request.
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    fn credential(&self) -> Result<String, CredentialError>;
}

/// `munge -n`: an empty payload, the caller's uid and gid signed with the cluster's key.
#[derive(Debug, Clone)]
pub struct Munge {
    pub program: PathBuf,
    /// munged's socket (`munge --socket`); `None` uses munge's default.
    pub socket: Option<PathBuf>,
}

impl Default for Munge {
    fn default() -> Self {
        Self {
            program: PathBuf::from(DEFAULT_MUNGE),
            socket: None,
        }
    }
}

impl CredentialSource for Munge {
    fn credential(&self) -> Result<String, CredentialError> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-n");
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

/// A fixed token, for tests against a scheduler with a fake authenticator.
#[derive(Debug, Clone)]
pub struct Fixed(pub String);

impl CredentialSource for Fixed {
    fn credential(&self) -> Result<String, CredentialError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_munge_says_how_to_get_it() {
        let m = Munge {
            program: PathBuf::from("/nonexistent/munge"),
            socket: None,
        };
        let e = m.credential().unwrap_err().to_string();
        assert!(e.contains("apt-get install munge"), "{e}");
    }

    #[test]
    fn a_failing_munge_reports_its_stderr() {
        let m = Munge {
            program: PathBuf::from("sh"),
            socket: None,
        };
        // `sh -n` parses stdin (empty) and succeeds: a credential that is empty.
        assert_eq!(m.credential().unwrap(), "");
        let m = Munge {
            program: PathBuf::from("false"),
            socket: None,
        };
        assert!(matches!(
            m.credential(),
            Err(CredentialError::Failed { .. })
        ));
    }
}
