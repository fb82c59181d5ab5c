//! Whom the agent runs an executor as: the scheduler names a uid and gid, the agent decides.
//!
//! An order is refused unless its uid belongs to a real user account: at least
//! `min_executor_uid` (root only with `allow_root_executors`), present in the account database,
//! not a system account (a login shell that refuses logins, such as `/usr/sbin/nologin`: that is
//! how `nobody`, uid 65534, is told apart from a person), and the gid must be the account's
//! primary group. A compromised or fake scheduler then gets at most what a user could have done
//! by logging in, never a service account's or a group's rights.
//!
//! The account database is behind [`Accounts`]: [`Getent`] asks the system's NSS (`getent
//! passwd`, so LDAP/SSSD users are found) and [`PasswdFile`] reads a passwd-format file (tests,
//! or sites that want a fixed list).

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use crate::lease::LeaseError;

/// The lowest uid an executor runs as by default (Debian's and RHEL's first user uid).
pub const DEFAULT_MIN_EXECUTOR_UID: u32 = 1000;
/// Login shells that mark an account as a system account (no person logs in with them).
pub const NOLOGIN_SHELLS: &[&str] = &[
    "/usr/sbin/nologin",
    "/sbin/nologin",
    "/bin/false",
    "/usr/bin/false",
];
/// The longest passwd database the agent reads (a runaway file must not exhaust harvestd).
pub const MAX_PASSWD_BYTES: u64 = 64 << 20;

/// One account of the passwd database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub shell: String,
}

impl Account {
    /// Parses one `name:passwd:uid:gid:gecos:home:shell` line.
    pub fn parse(line: &str) -> Option<Self> {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() != 7 {
            return None;
        }
        Some(Self {
            name: f[0].to_owned(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            shell: f[6].trim_end().to_owned(),
        })
    }

    /// A system account: its shell refuses logins.
    pub fn is_system(&self) -> bool {
        NOLOGIN_SHELLS.contains(&self.shell.as_str())
    }
}

/// The account database.
pub trait Accounts: Debug + Send + Sync {
    /// The account of `uid`; `Ok(None)`: no such user. `Err` says why the database was not read.
    fn by_uid(&self, uid: u32) -> Result<Option<Account>, String>;
}

/// A passwd-format file (`/etc/passwd` or a test's).
#[derive(Debug, Clone)]
pub struct PasswdFile(pub PathBuf);

impl Accounts for PasswdFile {
    fn by_uid(&self, uid: u32) -> Result<Option<Account>, String> {
        use std::io::Read;
        let file = std::fs::File::open(&self.0)
            .map_err(|e| format!("reading {}: {e}", self.0.display()))?;
        let mut text = String::new();
        file.take(MAX_PASSWD_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading {}: {e}", self.0.display()))?;
        Ok(text
            .lines()
            .filter_map(Account::parse)
            .find(|a| a.uid == uid))
    }
}

/// The system's account database through NSS (`getent passwd <uid>`).
#[derive(Debug, Clone)]
pub struct Getent(pub PathBuf);

impl Default for Getent {
    fn default() -> Self {
        Self(PathBuf::from("getent"))
    }
}

impl Accounts for Getent {
    fn by_uid(&self, uid: u32) -> Result<Option<Account>, String> {
        let out = Command::new(&self.0)
            .args(["passwd", &uid.to_string()])
            .output()
            .map_err(|e| format!("running {} passwd {uid}: {e}", self.0.display()))?;
        match out.status.code() {
            Some(0) => Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(Account::parse)
                .find(|a| a.uid == uid)),
            // getent: "One or more supplied key could not be found in the database."
            Some(2) => Ok(None),
            _ => Err(format!(
                "{} passwd {uid} failed ({}): {}",
                self.0.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
}

/// Who may run executors on this node.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    pub min_uid: u32,
    /// uid 0 may run (as root, with root's primary group): the one exception to `min_uid`.
    pub allow_root: bool,
    pub accounts: Arc<dyn Accounts>,
}

impl IdentityPolicy {
    /// Whether lease `id` may run as `uid`:`gid`; the error says what to do.
    pub fn check(&self, id: &str, uid: u32, gid: u32) -> Result<(), LeaseError> {
        let id = id.to_owned();
        if uid == 0 && !self.allow_root {
            return Err(LeaseError::Root { id });
        }
        if uid != 0 && uid < self.min_uid {
            return Err(LeaseError::UidBelowMinimum {
                id,
                uid,
                min: self.min_uid,
            });
        }
        let account = match self.accounts.by_uid(uid) {
            Ok(Some(a)) => a,
            Ok(None) => return Err(LeaseError::NoSuchUser { id, uid }),
            Err(error) => return Err(LeaseError::Accounts { id, uid, error }),
        };
        if uid != 0 && account.is_system() {
            return Err(LeaseError::SystemAccount {
                id,
                uid,
                user: account.name,
                shell: account.shell,
            });
        }
        if gid != account.gid {
            return Err(LeaseError::NotPrimaryGroup {
                id,
                uid,
                user: account.name,
                gid,
                primary: account.gid,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        svc:x:999:999::/var/lib/svc:/bin/sh\n\
        alice:x:1001:1001:Alice:/home/alice:/bin/bash\n\
        bob:x:1002:100::/home/bob:/bin/zsh\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        broken line\n";

    fn policy(min_uid: u32, allow_root: bool) -> (tempfile::TempDir, IdentityPolicy) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        std::fs::write(&path, PASSWD).unwrap();
        let accounts = Arc::new(PasswdFile(path));
        (
            dir,
            IdentityPolicy {
                min_uid,
                allow_root,
                accounts,
            },
        )
    }

    #[test]
    fn users_run_with_their_primary_group_only() {
        let (_d, p) = policy(DEFAULT_MIN_EXECUTOR_UID, false);
        assert_eq!(p.check("L", 1001, 1001), Ok(()));
        assert_eq!(p.check("L", 1002, 100), Ok(()));
        let e = p.check("L", 1001, 0).unwrap_err();
        assert!(matches!(
            e,
            LeaseError::NotPrimaryGroup {
                primary: 1001,
                gid: 0,
                ..
            }
        ));
        let text = e.to_string();
        assert!(text.contains("alice") && text.contains("1001"), "{text}");
        assert!(matches!(
            p.check("L", 1002, 1001),
            Err(LeaseError::NotPrimaryGroup { .. })
        ));
    }

    #[test]
    fn system_and_unknown_accounts_are_refused() {
        let (_d, p) = policy(DEFAULT_MIN_EXECUTOR_UID, false);
        assert!(matches!(
            p.check("L", 999, 999),
            Err(LeaseError::UidBelowMinimum {
                uid: 999,
                min: 1000,
                ..
            })
        ));
        assert!(matches!(
            p.check("L", 1, 1),
            Err(LeaseError::UidBelowMinimum { .. })
        ));
        let e = p.check("L", 65534, 65534).unwrap_err();
        assert!(matches!(e, LeaseError::SystemAccount { .. }), "{e}");
        assert!(e.to_string().contains("/usr/sbin/nologin"), "{e}");
        assert!(matches!(
            p.check("L", 4242, 4242),
            Err(LeaseError::NoSuchUser { uid: 4242, .. })
        ));
        // The minimum is the site's: 999 runs once it is lowered.
        let (_d, low) = policy(500, false);
        assert_eq!(low.check("L", 999, 999), Ok(()));
    }

    #[test]
    fn root_only_when_allowed_and_with_group_root() {
        let (_d, p) = policy(DEFAULT_MIN_EXECUTOR_UID, false);
        assert!(matches!(p.check("L", 0, 0), Err(LeaseError::Root { .. })));
        let (_d, p) = policy(DEFAULT_MIN_EXECUTOR_UID, true);
        assert_eq!(p.check("L", 0, 0), Ok(()));
        assert!(matches!(
            p.check("L", 0, 1001),
            Err(LeaseError::NotPrimaryGroup { .. })
        ));
        // allow_root is about uid 0 only: other low uids stay refused.
        assert!(matches!(
            p.check("L", 1, 1),
            Err(LeaseError::UidBelowMinimum { .. })
        ));
    }

    #[test]
    fn an_unreadable_database_refuses_and_says_where() {
        let p = IdentityPolicy {
            min_uid: 1000,
            allow_root: false,
            accounts: Arc::new(PasswdFile(PathBuf::from("/nonexistent/passwd"))),
        };
        let e = p.check("L", 1001, 1001).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/passwd"), "{e}");
    }

    #[test]
    fn getent_finds_root_and_misses_unknown_uids() {
        let g = Getent::default();
        let Ok(root) = g.by_uid(0) else {
            return; // no getent on this machine
        };
        assert_eq!(root.map(|a| a.gid), Some(0));
        assert_eq!(g.by_uid(3_999_999_999), Ok(None));
    }
}
