//! Who is asking: munge credentials decoded with the cluster's key, behind a narrow trait.
//!
//! The uid comes from the credential, never from the request. [`Unmunge`] runs the `unmunge`
//! tool (munge's own decoder; munged checks the key, the TTL and replays) with a deadline;
//! [`FakeAuthenticator`] accepts `uid:<n>` tokens for tests that have no munged.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// The user a credential proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The user's name as munge (or the password database) knows it; empty when unknown.
    pub name: String,
}

impl Identity {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// A credential that proves nobody.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credential in the request: the client must send a munge credential (munge -n)")]
    Missing,
    #[error("cannot run {program}: {source}; is munge installed?")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} gave no answer within {waited:?}; is munged running?")]
    Timeout { program: PathBuf, waited: Duration },
    #[error("munge rejected the credential: {0}")]
    Rejected(String),
    #[error("unexpected output from unmunge ({what}): {output:?}")]
    Output { what: &'static str, output: String },
}

/// The future an authenticator returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Identity, AuthError>> + Send + 'a>>;

/// Decodes a credential into the identity it proves.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a>;
}

/// The real authenticator: `unmunge` as a subprocess.
#[derive(Debug, Clone)]
pub struct Unmunge {
    pub program: PathBuf,
    pub socket: Option<PathBuf>,
    pub timeout: Duration,
}

impl Authenticator for Unmunge {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if credential.trim().is_empty() {
                return Err(AuthError::Missing);
            }
            let run = self.run(credential);
            match tokio::time::timeout(self.timeout, run).await {
                Ok(result) => result,
                Err(_) => Err(AuthError::Timeout {
                    program: self.program.clone(),
                    waited: self.timeout,
                }),
            }
        })
    }
}

impl Unmunge {
    async fn run(&self, credential: &str) -> Result<Identity, AuthError> {
        let spawn_err = |source| AuthError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut cmd = tokio::process::Command::new(&self.program);
        if let Some(socket) = &self.socket {
            cmd.arg("--socket").arg(socket);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_err)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin
            .write_all(credential.as_bytes())
            .await
            .map_err(spawn_err)?;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr.trim().trim_start_matches("unmunge: Error: ");
            return Err(AuthError::Rejected(if reason.is_empty() {
                status_line(&stdout).unwrap_or("unmunge failed").to_owned()
            } else {
                reason.to_owned()
            }));
        }
        parse_unmunge(&stdout)
    }
}

fn status_line(output: &str) -> Option<&str> {
    field(output, "STATUS")
}

fn field<'a>(output: &'a str, key: &str) -> Option<&'a str> {
    output.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// `root (0)` -> ("root", 0); a bare `1000` -> ("", 1000).
fn name_and_id(value: &str) -> Option<(String, u32)> {
    match value.rsplit_once('(') {
        Some((name, id)) => Some((
            name.trim().to_owned(),
            id.trim_end_matches(')').trim().parse().ok()?,
        )),
        None => Some((String::new(), value.trim().parse().ok()?)),
    }
}

/// Parses unmunge's metadata (`STATUS:`, `UID:`, `GID:` lines).
pub fn parse_unmunge(output: &str) -> Result<Identity, AuthError> {
    let bad = |what| AuthError::Output {
        what,
        output: output.to_owned(),
    };
    let status = status_line(output).ok_or_else(|| bad("no STATUS line"))?;
    if !status.starts_with("Success") {
        return Err(AuthError::Rejected(status.to_owned()));
    }
    let (name, uid) = field(output, "UID")
        .and_then(name_and_id)
        .ok_or_else(|| bad("no UID line"))?;
    let (_, gid) = field(output, "GID")
        .and_then(name_and_id)
        .ok_or_else(|| bad("no GID line"))?;
    Ok(Identity { uid, gid, name })
}

/// The name of `uid` in a password database file (`/etc/passwd` format); empty when unknown.
pub fn passwd_name(passwd: &Path, uid: u32) -> String {
    let Ok(text) = std::fs::read_to_string(passwd) else {
        return String::new();
    };
    text.lines()
        .find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let id: u32 = f.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
        .unwrap_or_default()
}

/// A test authenticator: `uid:<n>` proves uid n (gid n, name `user<n>`, `root` for 0); anything
/// else is rejected.
#[derive(Debug, Clone, Default)]
pub struct FakeAuthenticator;

impl Authenticator for FakeAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if credential.is_empty() {
                return Err(AuthError::Missing);
            }
            let uid: u32 = credential
                .strip_prefix("uid:")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    AuthError::Rejected(format!("bad fake credential {credential:?}"))
                })?;
            let name = if uid == 0 {
                "root".to_owned()
            } else {
                format!("user{uid}")
            };
            Ok(Identity {
                uid,
                gid: uid,
                name,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "STATUS:          Success (0)\nENCODE_HOST:     localhost (127.0.0.1)\n\
        TTL:             300\nUID:             alice (1000)\nGID:             users (100)\nLENGTH:          0\n";

    #[test]
    fn parses_uid_and_gid_from_unmunge() {
        let id = parse_unmunge(OUTPUT).unwrap();
        assert_eq!(
            id,
            Identity {
                uid: 1000,
                gid: 100,
                name: "alice".into()
            }
        );
    }

    #[test]
    fn a_failed_status_or_missing_uid_is_refused() {
        let replayed = OUTPUT.replace("Success (0)", "Replayed credential (15)");
        assert!(matches!(
            parse_unmunge(&replayed),
            Err(AuthError::Rejected(s)) if s.contains("Replayed")
        ));
        let no_uid: String = OUTPUT
            .lines()
            .filter(|l| !l.starts_with("UID"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(matches!(
            parse_unmunge(&no_uid),
            Err(AuthError::Output { .. })
        ));
    }

    #[test]
    fn passwd_names_come_from_the_given_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("passwd");
        std::fs::write(
            &p,
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n",
        )
        .unwrap();
        assert_eq!(passwd_name(&p, 1001), "bob");
        assert_eq!(passwd_name(&p, 7), "");
    }

    #[tokio::test]
    async fn a_missing_unmunge_says_so() {
        let u = Unmunge {
            program: PathBuf::from("/nonexistent/unmunge"),
            socket: None,
            timeout: Duration::from_secs(5),
        };
        let e = u.authenticate("cred").await.unwrap_err();
        assert!(matches!(e, AuthError::Spawn { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_hanging_unmunge_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("unmunge");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let u = Unmunge {
            program: script,
            socket: None,
            timeout: Duration::from_millis(200),
        };
        let e = u.authenticate("cred").await.unwrap_err();
        assert!(matches!(e, AuthError::Timeout { .. }), "{e}");
    }
}
