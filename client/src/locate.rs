//! Where the scheduler is, and how to make credentials: the `--scheduler` flag, then the
//! `HARVEST_SCHEDULER` environment variable, then the client configuration file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable naming the scheduler (`deploy/local-cluster env` exports it).
pub const SCHEDULER_ENV: &str = "HARVEST_SCHEDULER";
/// The environment variable naming the CA (PEM) that signs the scheduler's certificate; with one
/// the client speaks TLS (`deploy/local-cluster env` exports it).
pub const CA_ENV: &str = "HARVEST_CA";
/// The environment variable giving the uid the scheduler runs as (credentials are restricted to
/// it, `munge -u`; default 0).
pub const SCHEDULER_UID_ENV: &str = "HARVEST_SCHEDULER_UID";
/// The environment variable naming the client configuration file.
pub const CONFIG_ENV: &str = "HARVEST_CONFIG";
/// The system-wide client configuration, read when no other is found.
pub const SYSTEM_CONFIG: &str = "/etc/harvest/client.toml";

/// The client configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The scheduler's address, `http://host:port` or `host:port`.
    pub scheduler: Option<String>,
    /// The munge program (default `munge` on PATH).
    pub munge: Option<PathBuf>,
    /// munged's socket (default: munge's own).
    pub munge_socket: Option<PathBuf>,
    /// The uid the scheduler runs as: only it can decode the client's credentials (default 0;
    /// overridden by HARVEST_SCHEDULER_UID).
    pub scheduler_uid: Option<u32>,
    /// The CA (PEM) that signs the scheduler's certificate: the client then speaks TLS and
    /// verifies the scheduler. None: plaintext (a scheduler with `insecure_plaintext`).
    pub ca: Option<PathBuf>,
}

/// The configuration could not be found or used.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("cannot read the client configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid client configuration {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{SCHEDULER_UID_ENV}={0:?} is not a uid (a number such as 0 or 991)")]
    SchedulerUid(String),
    #[error(
        "no scheduler address: pass --scheduler URL, set {SCHEDULER_ENV} (eval \"$(deploy/local-cluster env)\" does), \
         or write scheduler = \"host:port\" in {SYSTEM_CONFIG}"
    )]
    NoScheduler,
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, LocateError> {
        let text = std::fs::read_to_string(path).map_err(|source| LocateError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| LocateError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// The file named by `explicit`, else `$HARVEST_CONFIG`, else
    /// `$XDG_CONFIG_HOME/harvest/client.toml` (or `~/.config/...`), else [`SYSTEM_CONFIG`];
    /// an explicit file must exist, the others are optional.
    pub fn find(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, LocateError> {
        if let Some(path) = explicit {
            return Self::load(path);
        }
        if let Some(path) = env(CONFIG_ENV) {
            return Self::load(Path::new(&path));
        }
        let user = env("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")))
            .map(|d| d.join("harvest/client.toml"));
        for path in user.into_iter().chain([PathBuf::from(SYSTEM_CONFIG)]) {
            if path.exists() {
                return Self::load(&path);
            }
        }
        Ok(Self::default())
    }

    /// The scheduler's address: `flag`, then `$HARVEST_SCHEDULER`, then the file.
    pub fn scheduler(
        &self,
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<String, LocateError> {
        flag.map(str::to_owned)
            .or_else(|| env(SCHEDULER_ENV).filter(|s| !s.is_empty()))
            .or_else(|| self.scheduler.clone())
            .ok_or(LocateError::NoScheduler)
    }

    /// The scheduler's CA: `$HARVEST_CA`, then the file's `ca`; none: plaintext.
    pub fn ca(&self, env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
        env(CA_ENV)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| self.ca.clone())
    }

    /// The scheduler's uid: `$HARVEST_SCHEDULER_UID`, then the file's `scheduler_uid`, then
    /// [`crate::identity::DEFAULT_SCHEDULER_UID`].
    pub fn scheduler_uid(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<u32, LocateError> {
        match env(SCHEDULER_UID_ENV).filter(|s| !s.is_empty()) {
            Some(v) => v.trim().parse().map_err(|_| LocateError::SchedulerUid(v)),
            None => Ok(self
                .scheduler_uid
                .unwrap_or(crate::identity::DEFAULT_SCHEDULER_UID)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedulers_uid_comes_from_the_environment_then_the_file() {
        let file = ClientConfig {
            scheduler_uid: Some(991),
            ..Default::default()
        };
        assert_eq!(file.scheduler_uid(&|_| None).unwrap(), 991);
        assert_eq!(ClientConfig::default().scheduler_uid(&|_| None).unwrap(), 0);
        let env = |k: &str| (k == SCHEDULER_UID_ENV).then(|| "7".to_owned());
        assert_eq!(file.scheduler_uid(&env).unwrap(), 7);
        let bad = |k: &str| (k == SCHEDULER_UID_ENV).then(|| "root".to_owned());
        let e = file.scheduler_uid(&bad).unwrap_err().to_string();
        assert!(
            e.contains("HARVEST_SCHEDULER_UID") && e.contains("root"),
            "{e}"
        );
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_file() {
        let file = ClientConfig {
            scheduler: Some("file:1".into()),
            ..Default::default()
        };
        let env_set = |k: &str| (k == SCHEDULER_ENV).then(|| "env:1".to_owned());
        let env_none = |_: &str| None;
        assert_eq!(file.scheduler(Some("flag:1"), &env_set).unwrap(), "flag:1");
        assert_eq!(file.scheduler(None, &env_set).unwrap(), "env:1");
        assert_eq!(file.scheduler(None, &env_none).unwrap(), "file:1");
        let e = ClientConfig::default()
            .scheduler(None, &env_none)
            .unwrap_err();
        assert!(e.to_string().contains("--scheduler"), "{e}");
    }

    #[test]
    fn the_ca_comes_from_the_environment_then_the_file() {
        let file = ClientConfig {
            ca: Some("/file/ca.pem".into()),
            ..ClientConfig::default()
        };
        let env = |k: &str| (k == CA_ENV).then(|| "/env/ca.pem".to_owned());
        assert_eq!(file.ca(&env), Some(PathBuf::from("/env/ca.pem")));
        assert_eq!(file.ca(&|_| None), Some(PathBuf::from("/file/ca.pem")));
        assert_eq!(ClientConfig::default().ca(&|_| None), None);
    }

    #[test]
    fn the_config_file_is_found_through_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "scheduler = \"127.0.0.1:7\"\n").unwrap();
        let p = path.display().to_string();
        let env = move |k: &str| (k == CONFIG_ENV).then(|| p.clone());
        let c = ClientConfig::find(None, &env).unwrap();
        assert_eq!(c.scheduler.as_deref(), Some("127.0.0.1:7"));
        std::fs::write(&path, "schedular = \"x\"\n").unwrap();
        let e = ClientConfig::find(Some(&path), &|_| None).unwrap_err();
        assert!(e.to_string().contains("schedular"), "{e}");
        let xdg = dir.path().display().to_string();
        let env = move |k: &str| (k == "XDG_CONFIG_HOME").then(|| xdg.clone());
        assert_eq!(ClientConfig::find(None, &env).unwrap().scheduler, None);
    }
}
