//! Which device nodes a lease's processes may open: the list a lease group's v1 devices
//! controller allows after denying everything.
//!
//! The basics every process needs are allowed by number, as runc and youki do by default
//! ([`BASIC`]); a lent GPU's nodes are allowed by the numbers of the device files themselves,
//! read with `stat` under a configurable device root ([`DEFAULT_DEV_ROOT`]) so that tests use
//! device files made with `mknod` in a scratch directory.

use std::path::{Path, PathBuf};

/// Where device nodes are looked up.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// The NVIDIA driver's character major (`/dev/nvidia0` is 195:0, `/dev/nvidiactl` 195:255).
pub const NVIDIA_MAJOR: u32 = 195;

/// A character or block device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// One allowed device: read and write (never `mknod`), by major and minor number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    pub kind: DeviceKind,
    pub major: u32,
    /// `None`: every minor of the major (pseudo-terminals).
    pub minor: Option<u32>,
}

impl DeviceRule {
    pub const fn char(major: u32, minor: u32) -> Self {
        Self {
            kind: DeviceKind::Char,
            major,
            minor: Some(minor),
        }
    }

    /// The line the v1 `devices.allow` file takes: `c 1:3 rw`.
    pub fn to_v1(&self) -> String {
        let kind = match self.kind {
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        match self.minor {
            Some(minor) => format!("{kind} {}:{minor} rw", self.major),
            None => format!("{kind} {}:* rw", self.major),
        }
    }
}

/// What every lease may open: `/dev/null` (1:3), `zero` (1:5), `full` (1:7), `random` (1:8),
/// `urandom` (1:9), `tty` (5:0), `ptmx` (5:2) and the pseudo-terminals (136:*): runc's and
/// youki's default list, without `mknod`.
pub const BASIC: &[DeviceRule] = &[
    DeviceRule::char(1, 3),
    DeviceRule::char(1, 5),
    DeviceRule::char(1, 7),
    DeviceRule::char(1, 8),
    DeviceRule::char(1, 9),
    DeviceRule::char(5, 0),
    DeviceRule::char(5, 2),
    DeviceRule {
        kind: DeviceKind::Char,
        major: 136,
        minor: None,
    },
];

/// NVIDIA's shared nodes, allowed (where they exist) when a lease has any GPU: the control
/// device and the unified-memory driver (whose major is dynamic, hence read from the node).
const NVIDIA_SHARED: &[&str] = &["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];

/// A lent GPU whose device node cannot be allowed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "GPU {gpu} is lent but its device node {path} cannot be read: {source} (is dev_root right?)"
    )]
    Stat {
        gpu: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("GPU {gpu} is lent but {path} is not a character device (is dev_root right?)")]
    NotCharDevice { gpu: u32, path: PathBuf },
}

/// The devices a lease with `gpus` (GPU indices, `/dev/nvidia<N>`) may open: [`BASIC`], each
/// lent GPU's node, and NVIDIA's shared nodes found under `dev_root` when any GPU is lent. A
/// lent GPU without its node is an error (the lease could not use it); a missing shared node is
/// left out (logged at debug level).
pub fn lease_devices(dev_root: &Path, gpus: &[u32]) -> Result<Vec<DeviceRule>, DeviceError> {
    let mut rules = BASIC.to_vec();
    for &gpu in gpus {
        let path = dev_root.join(format!("nvidia{gpu}"));
        let (major, minor) = char_device(&path).map_err(|e| match e {
            Some(source) => DeviceError::Stat {
                gpu,
                path: path.clone(),
                source,
            },
            None => DeviceError::NotCharDevice {
                gpu,
                path: path.clone(),
            },
        })?;
        rules.push(DeviceRule::char(major, minor));
    }
    if !gpus.is_empty() {
        for name in NVIDIA_SHARED {
            let path = dev_root.join(name);
            match char_device(&path) {
                Ok((major, minor)) => rules.push(DeviceRule::char(major, minor)),
                Err(_) => {
                    tracing::debug!(path = %path.display(), "no such NVIDIA device node; not allowed")
                }
            }
        }
    }
    Ok(rules)
}

/// The major and minor number of a character device node; `Err(None)` when it is something
/// else, `Err(Some(e))` when it cannot be read.
fn char_device(path: &Path) -> Result<(u32, u32), Option<std::io::Error>> {
    let st = rustix::fs::stat(path).map_err(|e| Some(e.into()))?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::CharacterDevice {
        return Err(None);
    }
    Ok((rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_read_as_devices_allow_lines() {
        assert_eq!(DeviceRule::char(1, 3).to_v1(), "c 1:3 rw");
        assert_eq!(BASIC.last().unwrap().to_v1(), "c 136:* rw");
        let block = DeviceRule {
            kind: DeviceKind::Block,
            major: 8,
            minor: Some(0),
        };
        assert_eq!(block.to_v1(), "b 8:0 rw");
    }

    #[test]
    fn no_gpu_gives_the_basics_and_needs_no_device_files() {
        let rules = lease_devices(Path::new("/nonexistent"), &[]).unwrap();
        assert_eq!(rules, BASIC);
        assert!(!rules.iter().any(|r| r.major == NVIDIA_MAJOR));
    }

    #[test]
    fn a_lent_gpu_without_its_node_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = lease_devices(tmp.path(), &[1]).unwrap_err().to_string();
        assert!(err.contains("GPU 1") && err.contains("nvidia1"), "{err}");
        std::fs::write(tmp.path().join("nvidia1"), "").unwrap();
        let err = lease_devices(tmp.path(), &[1]).unwrap_err().to_string();
        assert!(err.contains("not a character device"), "{err}");
    }

    /// Device nodes made with mknod (root only): the numbers come from the nodes.
    #[test]
    fn lent_gpus_are_allowed_by_the_numbers_of_their_nodes() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mknod = |name: &str, major, minor| {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                tmp.path().join(name),
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o666),
                rustix::fs::makedev(major, minor),
            )
            .unwrap();
        };
        mknod("nvidia0", NVIDIA_MAJOR, 0);
        mknod("nvidia1", NVIDIA_MAJOR, 7);
        mknod("nvidiactl", NVIDIA_MAJOR, 255);
        mknod("nvidia-uvm", 508, 0);
        let rules = lease_devices(tmp.path(), &[1]).unwrap();
        let extra: Vec<String> = rules[BASIC.len()..].iter().map(DeviceRule::to_v1).collect();
        assert_eq!(extra, ["c 195:7 rw", "c 195:255 rw", "c 508:0 rw"]);
    }
}
