//! Who is asking: munge credentials decoded with the cluster's key, behind a narrow trait.
//!
//! The uid comes from the credential, never from the request, and the credential's payload
//! must be the one its request gives ([`harvest_proto::binding`]), so a credential proves one
//! request. [`Unmunge`] runs the `unmunge` tool (munge's own decoder; munged checks the key, the
//! TTL, the `-u` restriction and replays) with a deadline, at most
//! [`Unmunge::max_concurrent`] at a time; [`FakeAuthenticator`] accepts `uid:<n>|<payload>`
//! tokens for tests that have no munged.

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

/// What a valid credential carries: who made it and the payload they signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub who: Identity,
    pub payload: String,
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
    #[error(
        "the credential was made for another request (its payload is {got:?}, this {method} \
         request needs {want:?}): a credential proves one request; make a new one for each \
         (the harvest client does)"
    )]
    WrongPayload {
        method: &'static str,
        got: String,
        want: String,
    },
    #[error(
        "{waiting} credential checks are already waiting (at most {max} run at once): the \
         scheduler is overloaded, retry shortly"
    )]
    Busy { waiting: usize, max: usize },
}

/// The future an authenticator returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Proof, AuthError>> + Send + 'a>>;

/// Decodes a credential into the identity it proves and the payload it carries.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a>;
}

/// The longest credential accepted (munge's are a few hundred bytes; a payload of ours adds
/// under 100).
pub const MAX_CREDENTIAL_BYTES: usize = 4096;

/// The real authenticator: `unmunge` as a subprocess, at most `max_concurrent` at a time (each
/// check forks a process; a flood of requests waits its turn instead of forking without bound).
#[derive(Debug, Clone)]
pub struct Unmunge {
    pub program: PathBuf,
    pub socket: Option<PathBuf>,
    pub timeout: Duration,
    pub max_concurrent: usize,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Checks in flight (running or waiting for a slot) beyond which a new one is refused at
    /// once.
    max_waiting: usize,
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Unmunge {
    /// `max_concurrent` checks run at once; up to 16 times as many are in flight (the rest wait
    /// within `timeout`), more are refused at once with [`AuthError::Busy`].
    pub fn new(
        program: PathBuf,
        socket: Option<PathBuf>,
        timeout: Duration,
        max_concurrent: usize,
    ) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Self {
            program,
            socket,
            timeout,
            max_concurrent,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max_concurrent)),
            max_waiting: max_concurrent * 16,
            waiting: Default::default(),
        }
    }
}

impl Authenticator for Unmunge {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if credential.trim().is_empty() {
                return Err(AuthError::Missing);
            }
            if credential.len() > MAX_CREDENTIAL_BYTES {
                return Err(AuthError::Rejected(format!(
                    "the credential is {} bytes, more than the {MAX_CREDENTIAL_BYTES} a munge \
                     credential takes",
                    credential.len()
                )));
            }
            use std::sync::atomic::Ordering;
            let waiting = self.waiting.fetch_add(1, Ordering::Relaxed);
            let _waiting = scopeguard(|| {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
            });
            if waiting >= self.max_waiting {
                return Err(AuthError::Busy {
                    waiting,
                    max: self.max_concurrent,
                });
            }
            let run = async {
                let _slot = self.slots.acquire().await.map_err(|_| AuthError::Busy {
                    waiting,
                    max: self.max_concurrent,
                })?;
                self.run(credential).await
            };
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

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

impl Unmunge {
    async fn run(&self, credential: &str) -> Result<Proof, AuthError> {
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

/// Parses unmunge's output: metadata (`STATUS:`, `UID:`, `GID:` lines), an empty line, then the
/// payload.
pub fn parse_unmunge(output: &str) -> Result<Proof, AuthError> {
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
    let payload = output
        .split_once("\n\n")
        .map_or("", |(_, p)| p)
        .trim_end_matches('\n')
        .to_owned();
    Ok(Proof {
        who: Identity { uid, gid, name },
        payload,
    })
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

/// A test authenticator: `uid:<n>|<payload>` proves uid n (gid n, name `user<n>`, `root` for 0)
/// with that payload (`uid:<n>` alone: an empty one); anything else is rejected.
#[derive(Debug, Clone, Default)]
pub struct FakeAuthenticator;

impl Authenticator for FakeAuthenticator {
    fn authenticate<'a>(&'a self, credential: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if credential.is_empty() {
                return Err(AuthError::Missing);
            }
            let (credential, payload) = credential.split_once('|').unwrap_or((credential, ""));
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
            Ok(Proof {
                who: Identity {
                    uid,
                    gid: uid,
                    name,
                },
                payload: payload.to_owned(),
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
        let p = parse_unmunge(OUTPUT).unwrap();
        assert_eq!(
            p.who,
            Identity {
                uid: 1000,
                gid: 100,
                name: "alice".into()
            }
        );
        assert_eq!(p.payload, "");
        let with = OUTPUT.replace(
            "LENGTH:          0\n",
            "LENGTH:          12\n\nharvest-v1 x\n",
        );
        assert_eq!(parse_unmunge(&with).unwrap().payload, "harvest-v1 x");
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
        let u = Unmunge::new(
            PathBuf::from("/nonexistent/unmunge"),
            None,
            Duration::from_secs(5),
            4,
        );
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
        let u = Unmunge::new(script, None, Duration::from_millis(200), 4);
        let e = u.authenticate("cred").await.unwrap_err();
        assert!(matches!(e, AuthError::Timeout { .. }), "{e}");
    }

    #[tokio::test]
    async fn checks_beyond_the_bound_are_refused_at_once_and_a_huge_credential_is_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("unmunge");
        let started = dir.path().join("started");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho x >> {}\nexec sleep 30\n",
                started.display()
            ),
        )
        .unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let u = std::sync::Arc::new(Unmunge::new(script, None, Duration::from_secs(3), 1));
        // 16 in flight (1 runs, 15 wait); the 17th is refused without waiting.
        let mut held = Vec::new();
        for _ in 0..16 {
            let u = u.clone();
            held.push(tokio::spawn(async move { u.authenticate("cred").await }));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while u.waiting.load(std::sync::atomic::Ordering::Relaxed) < 16 {
            assert!(std::time::Instant::now() < deadline, "checks never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = u.authenticate("cred").await.unwrap_err();
        assert!(matches!(e, AuthError::Busy { max: 1, .. }), "{e}");
        // Only one unmunge was ever started.
        let lines = std::fs::read_to_string(&started).unwrap_or_default();
        assert_eq!(lines.lines().count(), 1, "{lines}");
        let e = u
            .authenticate(&"M".repeat(MAX_CREDENTIAL_BYTES + 1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, AuthError::Rejected(ref m) if m.contains("bytes")),
            "{e}"
        );
        for h in held {
            h.abort();
        }
    }
}
