//! The plugin's arguments from its `plugstack.conf` line, and the `--harvest` job option.
//!
//! ```text
//! optional /path/libharvest_spank.so socket=/run/harvestd-%n.sock default=on timeout_ms=100
//! ```
//!
//! Slurm hands these to every callback as `argv`; they are parsed each time (a few strings), which
//! keeps the plugin free of global state.

use std::path::PathBuf;
use std::time::Duration;

/// The total time the plugin may spend talking to the agent in one callback, unless configured.
pub const DEFAULT_TIMEOUT_MS: u64 = 100;
/// The largest `timeout_ms` accepted: the plugin runs before the job's tasks, so a long wait
/// delays every step on the node.
pub const MAX_TIMEOUT_MS: u64 = 10_000;
/// The cgroup filesystem root, unless `cgroup_root=` says otherwise.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where a process reads its own cgroup membership, unless `proc_self_cgroup=` says otherwise.
pub const DEFAULT_PROC_SELF_CGROUP: &str = "/proc/self/cgroup";
/// Where the node's GPU device files (`nvidia<N>`) are, unless `dev_root=` says otherwise.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// harvestd's default `lease_cgroup_parent`, unless `lease_parent=` says otherwise.
pub const DEFAULT_LEASE_PARENT: &str = "harvest_%n";

/// The plugin's configuration, from its `plugstack.conf` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The agent's socket path; `%n` stands for the Slurm node name.
    pub socket: NodeTemplate,
    /// Whether a job that does not pass `--harvest` lends its node.
    pub default_harvest: bool,
    /// The deadline for one exchange with the agent (connect, write, read).
    pub timeout: Duration,
    pub cgroup_root: PathBuf,
    pub proc_self_cgroup: PathBuf,
    /// Where the node's GPUs are listed as `nvidia<N>` device files.
    pub dev_root: PathBuf,
    /// The agent's lease groups' parent, relative to each cgroup hierarchy's root (harvestd's
    /// `lease_cgroup_parent`); the plugin ends their processes itself when the agent does not
    /// answer a step start (see `evict`).
    pub lease_parent: NodeTemplate,
}

/// A bad `plugstack.conf` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("missing socket=PATH argument (e.g. socket=/run/harvestd-%n.sock)")]
    MissingSocket,
    #[error(
        "unknown argument {0:?}: expected socket=, default=, timeout_ms=, cgroup_root=, proc_self_cgroup=, dev_root= or lease_parent="
    )]
    UnknownKey(String),
    #[error("argument {0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    #[error("default={0:?}: expected on or off")]
    BadDefault(String),
    #[error("timeout_ms={0:?}: expected a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}")]
    BadTimeout(String),
    #[error(
        "path {template:?} (socket= or lease_parent=): unknown escape %{escape} (only %n, the node name, and %% are known)"
    )]
    BadEscape { template: String, escape: char },
}

impl Config {
    /// Parses the arguments of the plugin's `plugstack.conf` line.
    pub fn parse<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<Self, ConfigError> {
        let mut socket = None;
        let mut default_harvest = true;
        let mut timeout = Duration::from_millis(DEFAULT_TIMEOUT_MS);
        let mut cgroup_root = PathBuf::from(DEFAULT_CGROUP_ROOT);
        let mut proc_self_cgroup = PathBuf::from(DEFAULT_PROC_SELF_CGROUP);
        let mut dev_root = PathBuf::from(DEFAULT_DEV_ROOT);
        let mut lease_parent = NodeTemplate::parse(DEFAULT_LEASE_PARENT)?;
        for arg in args {
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(arg.to_owned()))?;
            match key {
                "socket" => socket = Some(NodeTemplate::parse(value)?),
                "default" => {
                    default_harvest = parse_on_off(value)
                        .ok_or_else(|| ConfigError::BadDefault(value.to_owned()))?;
                }
                "timeout_ms" => {
                    let ms: u64 = value
                        .parse()
                        .ok()
                        .filter(|ms| (1..=MAX_TIMEOUT_MS).contains(ms))
                        .ok_or_else(|| ConfigError::BadTimeout(value.to_owned()))?;
                    timeout = Duration::from_millis(ms);
                }
                "cgroup_root" => cgroup_root = PathBuf::from(value),
                "proc_self_cgroup" => proc_self_cgroup = PathBuf::from(value),
                "dev_root" => dev_root = PathBuf::from(value),
                "lease_parent" => lease_parent = NodeTemplate::parse(value)?,
                _ => return Err(ConfigError::UnknownKey(arg.to_owned())),
            }
        }
        Ok(Self {
            socket: socket.ok_or(ConfigError::MissingSocket)?,
            default_harvest,
            timeout,
            cgroup_root,
            proc_self_cgroup,
            dev_root,
            lease_parent,
        })
    }
}

/// A path in which `%n` is replaced by the Slurm node name (several slurmd on one host share one
/// `plugstack.conf`, and each has its own agent and lease groups): `socket=`, `lease_parent=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeTemplate(String);

impl NodeTemplate {
    /// Checks the template's escapes once, so that [`NodeTemplate::for_node`] cannot fail.
    pub fn parse(template: &str) -> Result<Self, ConfigError> {
        let mut chars = template.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                match chars.next() {
                    Some('n' | '%') => {}
                    other => {
                        return Err(ConfigError::BadEscape {
                            template: template.to_owned(),
                            escape: other.unwrap_or(' '),
                        });
                    }
                }
            }
        }
        Ok(Self(template.to_owned()))
    }

    /// The socket path of the agent of `node`.
    pub fn for_node(&self, node: &str) -> PathBuf {
        let mut out = String::with_capacity(self.0.len() + node.len());
        let mut chars = self.0.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            // `parse` admitted only `%n` and `%%`.
            match chars.next() {
                Some('n') => out.push_str(node),
                Some(other) => out.push(other),
                None => {}
            }
        }
        PathBuf::from(out)
    }
}

/// The `--harvest=on|off` job option's value; `None` for anything else.
pub fn parse_on_off(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" | "1" => Some(true),
        "off" | "no" | "false" | "0" => Some(false),
        _ => None,
    }
}

/// What a user who typed `--harvest=<value>` is told.
pub fn bad_option_message(value: &str) -> String {
    format!(
        "harvest: invalid --harvest={value:?}: use --harvest=on (lend this job's idle cores and \
         memory to short functions) or --harvest=off (no functions on this job's nodes)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_line_and_defaults() {
        let c = Config::parse([
            "socket=/run/h-%n.sock",
            "default=off",
            "timeout_ms=250",
            "cgroup_root=/tmp/cg",
        ])
        .unwrap();
        assert_eq!(c.socket.for_node("n2"), PathBuf::from("/run/h-n2.sock"));
        assert!(!c.default_harvest);
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.cgroup_root, PathBuf::from("/tmp/cg"));
        assert_eq!(c.proc_self_cgroup, PathBuf::from(DEFAULT_PROC_SELF_CGROUP));

        let d = Config::parse(["socket=/s"]).unwrap();
        assert!(d.default_harvest);
        assert_eq!(d.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(d.cgroup_root, PathBuf::from(DEFAULT_CGROUP_ROOT));
    }

    #[test]
    fn rejects_bad_arguments_naming_them() {
        assert_eq!(Config::parse([]), Err(ConfigError::MissingSocket));
        assert_eq!(
            Config::parse(["socket=/s", "defualt=on"]),
            Err(ConfigError::UnknownKey("defualt=on".into()))
        );
        assert_eq!(
            Config::parse(["socket=/s", "verbose"]),
            Err(ConfigError::NotKeyValue("verbose".into()))
        );
        assert_eq!(
            Config::parse(["socket=/s", "default=maybe"]),
            Err(ConfigError::BadDefault("maybe".into()))
        );
        for bad in ["0", "-5", "10001", "1.5", ""] {
            assert_eq!(
                Config::parse(["socket=/s", &format!("timeout_ms={bad}")]),
                Err(ConfigError::BadTimeout(bad.into())),
                "{bad}"
            );
        }
        let e = Config::parse(["socket=/run/%h.sock"]).unwrap_err();
        assert_eq!(
            e,
            ConfigError::BadEscape {
                template: "/run/%h.sock".into(),
                escape: 'h'
            }
        );
        assert!(e.to_string().contains("%n"), "{e}");
    }

    #[test]
    fn socket_template_expands_node_and_percent() {
        let t = NodeTemplate::parse("/r/%n/a%%b-%n.sock").unwrap();
        assert_eq!(t.for_node("n1"), PathBuf::from("/r/n1/a%b-n1.sock"));
        assert_eq!(
            NodeTemplate::parse("/plain").unwrap().for_node("x"),
            PathBuf::from("/plain")
        );
        assert!(NodeTemplate::parse("/trailing%").is_err());
    }

    #[test]
    fn on_off_values() {
        for on in ["on", "ON", "yes", "true", "1"] {
            assert_eq!(parse_on_off(on), Some(true), "{on}");
        }
        for off in ["off", "Off", "no", "false", "0"] {
            assert_eq!(parse_on_off(off), Some(false), "{off}");
        }
        for bad in ["", "maybe", "onn"] {
            assert_eq!(parse_on_off(bad), None, "{bad}");
        }
        assert!(bad_option_message("maybe").contains("--harvest=off"));
    }
}
