//! Which device nodes a lease's processes may open: the list a lease group's v1 devices
//! controller allows after denying everything.
//!
//! The basics every process needs are allowed by number, as runc and youki do by default
//! ([`BASIC`]); a lent GPU's nodes are allowed by the numbers of the device files themselves,
//! read with `stat` under a configurable device root ([`DEFAULT_DEV_ROOT`]) so that tests use
//! device files made with `mknod` in a scratch directory.
//!
//! A MIG instance needs more than its GPU's node: CUDA opens `/dev/nvidia<N>` of the parent GPU
//! and then the instance's two access files, `<dev_root>/nvidia-caps/nvidia-cap<M>` for its GPU
//! instance and for its compute instance, whose minors M the driver lists in
//! `/proc/driver/nvidia-caps/mig-minors` (`gpu<N>/gi<G>/access <M>`,
//! `gpu<N>/gi<G>/ci<C>/access <M>`). Those are what make one instance usable and not another:
//! the parent's node is shared by all instances of the GPU.

use std::path::{Path, PathBuf};

use crate::discover::GpuUnit;

/// Where device nodes are looked up.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// Where the driver lists the minors of the MIG access files.
pub const DEFAULT_MIG_MINORS: &str = "/proc/driver/nvidia-caps/mig-minors";
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
    #[error(
        "MIG instance {uuid} (GPU {gpu}) is lent but NVML gave no GPU/compute instance id: its \
         access files are unknown, so it cannot be confined"
    )]
    MigIds { gpu: u32, uuid: String },
    #[error(
        "MIG instance {uuid} is lent but {file} lists no minor for {entry} (is \
         nvidia_caps_mig_minors right, and the instance still there?): {why}"
    )]
    MigMinor {
        uuid: String,
        file: PathBuf,
        entry: String,
        why: String,
    },
}

/// The devices a lease lent `units` may open: [`BASIC`], each unit's GPU node
/// (`<dev_root>/nvidia<N>`), a MIG instance's two access files (their minors read from
/// `mig_minors`, their numbers from `<dev_root>/nvidia-caps/nvidia-cap<M>`), and NVIDIA's shared
/// nodes found under `dev_root` when any unit is lent. A lent unit without its nodes is an error
/// (the lease could not use it); a missing shared node is left out (logged at debug level).
pub fn lease_devices(
    dev_root: &Path,
    mig_minors: &Path,
    units: &[GpuUnit],
) -> Result<Vec<DeviceRule>, DeviceError> {
    let mut rules = BASIC.to_vec();
    let mut push = |rule: DeviceRule| {
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    };
    let node = |gpu: u32, path: PathBuf| {
        char_device(&path)
            .map(|(major, minor)| DeviceRule::char(major, minor))
            .map_err(|e| match e {
                Some(source) => DeviceError::Stat { gpu, path, source },
                None => DeviceError::NotCharDevice { gpu, path },
            })
    };
    let mut minors: Option<String> = None;
    for unit in units {
        push(node(
            unit.gpu,
            dev_root.join(format!("nvidia{}", unit.gpu)),
        )?);
        let Some(mig) = unit.mig else { continue };
        let (Some(gi), Some(ci)) = (mig.gpu_instance_id, mig.compute_instance_id) else {
            return Err(DeviceError::MigIds {
                gpu: unit.gpu,
                uuid: unit.uuid.clone(),
            });
        };
        let text = match &minors {
            Some(t) => t,
            None => minors.insert(std::fs::read_to_string(mig_minors).map_err(|e| {
                DeviceError::MigMinor {
                    uuid: unit.uuid.clone(),
                    file: mig_minors.to_path_buf(),
                    entry: "any entry".into(),
                    why: e.to_string(),
                }
            })?),
        };
        let gi_entry = format!("gpu{}/gi{gi}/access", unit.gpu);
        let ci_entry = format!("gpu{}/gi{gi}/ci{ci}/access", unit.gpu);
        for entry in [gi_entry, ci_entry] {
            let minor = mig_minor(text, &entry).ok_or_else(|| DeviceError::MigMinor {
                uuid: unit.uuid.clone(),
                file: mig_minors.to_path_buf(),
                entry: entry.clone(),
                why: "no such line".into(),
            })?;
            let path = dev_root.join(format!("nvidia-caps/nvidia-cap{minor}"));
            push(node(unit.gpu, path)?);
        }
    }
    if !units.is_empty() {
        for name in NVIDIA_SHARED {
            let path = dev_root.join(name);
            match char_device(&path) {
                Ok((major, minor)) => push(DeviceRule::char(major, minor)),
                Err(_) => {
                    tracing::debug!(path = %path.display(), "no such NVIDIA device node; not allowed")
                }
            }
        }
    }
    Ok(rules)
}

/// The minor of one `mig-minors` entry (`gpu0/gi1/access 12`).
fn mig_minor(text: &str, entry: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let (name, minor) = line.trim().split_once(char::is_whitespace)?;
        (name == entry).then(|| minor.trim().parse().ok()).flatten()
    })
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

    /// A character device node `dir/name` (root only: the tests that call it check).
    fn mknod_char(dir: &Path, name: &str, major: u32, minor: u32) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join(name),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .unwrap();
    }

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
        let rules =
            lease_devices(Path::new("/nonexistent"), Path::new("/nonexistent"), &[]).unwrap();
        assert_eq!(rules, BASIC);
        assert!(!rules.iter().any(|r| r.major == NVIDIA_MAJOR));
    }

    #[test]
    fn a_lent_gpu_without_its_node_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let none = Path::new("/nonexistent");
        let err = lease_devices(tmp.path(), none, &[whole(1)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("GPU 1") && err.contains("nvidia1"), "{err}");
        std::fs::write(tmp.path().join("nvidia1"), "").unwrap();
        let err = lease_devices(tmp.path(), none, &[whole(1)])
            .unwrap_err()
            .to_string();
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
        let mknod = |name: &str, major, minor| mknod_char(tmp.path(), name, major, minor);
        mknod("nvidia0", NVIDIA_MAJOR, 0);
        mknod("nvidia1", NVIDIA_MAJOR, 7);
        mknod("nvidiactl", NVIDIA_MAJOR, 255);
        mknod("nvidia-uvm", 508, 0);
        let rules = lease_devices(tmp.path(), Path::new("/nonexistent"), &[whole(1)]).unwrap();
        let extra: Vec<String> = rules[BASIC.len()..].iter().map(DeviceRule::to_v1).collect();
        assert_eq!(extra, ["c 195:7 rw", "c 195:255 rw", "c 508:0 rw"]);
    }

    fn whole(gpu: u32) -> GpuUnit {
        GpuUnit {
            id: gpu,
            gpu,
            uuid: format!("GPU-{gpu}"),
            memory_total_mib: 0,
            mig: None,
        }
    }

    fn mig(id: u32, gpu: u32, gi: Option<u32>, ci: Option<u32>) -> GpuUnit {
        GpuUnit {
            id,
            gpu,
            uuid: format!("MIG-{id}"),
            memory_total_mib: 0,
            mig: Some(crate::discover::MigRef {
                gpu_instance_id: gi,
                compute_instance_id: ci,
            }),
        }
    }

    const MINORS: &str = "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n\
        gpu0/gi2/access 21\ngpu0/gi2/ci0/access 22\ngpu1/gi1/access 30\n";

    #[test]
    fn mig_minors_are_read_by_exact_entry() {
        assert_eq!(mig_minor(MINORS, "gpu0/gi2/access"), Some(21));
        assert_eq!(mig_minor(MINORS, "gpu0/gi2/ci0/access"), Some(22));
        assert_eq!(mig_minor(MINORS, "gpu0/gi1/ci1/access"), None);
        assert_eq!(mig_minor(MINORS, "gpu1/gi1"), None);
    }

    /// Errors that say which instance and which file, before any node is looked at twice.
    #[test]
    fn a_mig_instance_without_its_access_files_is_an_error_naming_them() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("nvidia0"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(NVIDIA_MAJOR, 0),
        )
        .unwrap();
        let minors = tmp.path().join("mig-minors");
        let err = lease_devices(tmp.path(), &minors, &[mig(1, 0, Some(1), Some(0))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MIG-1") && err.contains("mig-minors"), "{err}");
        std::fs::write(&minors, MINORS).unwrap();
        let err = lease_devices(tmp.path(), &minors, &[mig(1, 0, Some(3), Some(0))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpu0/gi3/access"), "{err}");
        let err = lease_devices(tmp.path(), &minors, &[mig(1, 0, None, Some(0))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no GPU/compute instance id"), "{err}");
        // The entry exists but its node was never made.
        let err = lease_devices(tmp.path(), &minors, &[mig(1, 0, Some(1), Some(0))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("nvidia-cap12"), "{err}");
    }

    /// A MIG instance gets its GPU's node and its own two access files, not its sibling's.
    #[test]
    fn a_mig_instance_is_allowed_its_gpu_and_its_own_access_files() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("nvidia-caps")).unwrap();
        let mknod = |name: &str, major, minor| mknod_char(tmp.path(), name, major, minor);
        mknod("nvidia0", NVIDIA_MAJOR, 0);
        mknod("nvidiactl", NVIDIA_MAJOR, 255);
        for m in [12, 13, 21, 22] {
            mknod(&format!("nvidia-caps/nvidia-cap{m}"), 237, m);
        }
        let minors = tmp.path().join("mig-minors");
        std::fs::write(&minors, MINORS).unwrap();
        let rules = lease_devices(tmp.path(), &minors, &[mig(2, 0, Some(2), Some(0))]).unwrap();
        let extra: Vec<String> = rules[BASIC.len()..].iter().map(DeviceRule::to_v1).collect();
        assert_eq!(
            extra,
            ["c 195:0 rw", "c 237:21 rw", "c 237:22 rw", "c 195:255 rw"]
        );
        // Two instances of one GPU: the GPU's node once, each instance's files.
        let rules = lease_devices(
            tmp.path(),
            &minors,
            &[mig(1, 0, Some(1), Some(0)), mig(2, 0, Some(2), Some(0))],
        )
        .unwrap();
        assert_eq!(rules.len(), BASIC.len() + 6, "{rules:?}");
    }
}
