//! Which cgroup hierarchies are mounted, read once from `/proc/self/mountinfo`.
//!
//! A host is "v1" when at least one v1 controller hierarchy is mounted under the cgroup root
//! (that includes the hybrid layout, whose v2 tree carries no controllers), and "v2" when the
//! root itself is a `cgroup2` mount. Only mounts under the configured root count, so a test can
//! point both the mountinfo file and the root at a temp directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::CgroupError;

pub use harvest_core::mountinfo::CgroupMount;

/// What was found under the cgroup root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1 (or hybrid): each controller's hierarchy mount point.
    V1 {
        controllers: BTreeMap<String, PathBuf>,
    },
    /// Pure v2: the unified hierarchy's mount point.
    V2 { root: PathBuf },
}

/// The key under which a v1 layout keeps the hybrid host's controller-less unified tree (read
/// only for per-group PSI; no group is ever made there by the v1 backend itself).
pub const UNIFIED: &str = "unified";

/// Parses mountinfo text into its cgroup mounts (harvest-core's parser, shared with `harvest
/// doctor`); a malformed line is an error naming the file and the line.
pub fn parse(text: &str, source: &Path) -> Result<Vec<CgroupMount>, CgroupError> {
    harvest_core::mountinfo::parse(text).map_err(|e| CgroupError::Mountinfo {
        path: source.to_path_buf(),
        line: e.line,
    })
}

/// Decides the layout from the mounts under `root`.
pub fn layout(mounts: &[CgroupMount], root: &Path, source: &Path) -> Result<Layout, CgroupError> {
    let under: Vec<&CgroupMount> = mounts
        .iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect();
    let mut controllers = BTreeMap::new();
    for m in under.iter().filter(|m| !m.unified) {
        for c in &m.controllers {
            controllers.insert(c.clone(), m.mount_point.clone());
        }
    }
    if controllers.keys().any(|c| !c.starts_with("name=")) {
        if let Some(m) = under.iter().find(|m| m.unified) {
            controllers.insert(UNIFIED.to_owned(), m.mount_point.clone());
        }
        return Ok(Layout::V1 { controllers });
    }
    if let Some(m) = under.iter().find(|m| m.unified && m.mount_point == root) {
        return Ok(Layout::V2 {
            root: m.mount_point.clone(),
        });
    }
    Err(CgroupError::NotMounted {
        root: root.to_path_buf(),
        mountinfo: source.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hybrid layout of the machines this project runs on.
    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_host_is_v1_with_each_controller() {
        let src = Path::new("mountinfo");
        let mounts = parse(HYBRID, src).unwrap();
        assert_eq!(mounts.len(), 6);
        let Layout::V1 { controllers } = layout(&mounts, Path::new("/sys/fs/cgroup"), src).unwrap()
        else {
            panic!("expected v1");
        };
        assert_eq!(controllers["cpuset"], Path::new("/sys/fs/cgroup/cpuset"));
        assert_eq!(controllers["memory"], Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            controllers["name=systemd"],
            Path::new("/sys/fs/cgroup/systemd")
        );
        assert!(!controllers.contains_key("rw"));
        assert_eq!(controllers[UNIFIED], Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn co_mounted_controllers_share_a_mount_point() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let mounts = parse(text, Path::new("m")).unwrap();
        let Layout::V1 { controllers } =
            layout(&mounts, Path::new("/sys/fs/cgroup"), Path::new("m")).unwrap()
        else {
            panic!("expected v1");
        };
        assert_eq!(controllers["cpu"], controllers["cpuacct"]);
    }

    #[test]
    fn pure_v2_root_is_v2() {
        let text = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let mounts = parse(text, Path::new("m")).unwrap();
        assert_eq!(
            layout(&mounts, Path::new("/sys/fs/cgroup"), Path::new("m")).unwrap(),
            Layout::V2 {
                root: PathBuf::from("/sys/fs/cgroup")
            }
        );
    }

    #[test]
    fn nothing_under_the_root_is_an_error_naming_both_paths() {
        let mounts = parse(HYBRID, Path::new("m")).unwrap();
        let err = layout(&mounts, Path::new("/elsewhere"), Path::new("m")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/elsewhere") && msg.contains('m'), "{msg}");
    }

    #[test]
    fn escaped_mount_points_and_bad_lines() {
        let text = "1 2 0:1 / /tmp/a\\040b rw - cgroup2 cgroup2 rw\n";
        let mounts = parse(text, Path::new("m")).unwrap();
        assert_eq!(mounts[0].mount_point, Path::new("/tmp/a b"));
        assert!(parse("garbage without separator\n", Path::new("m")).is_err());
    }
}
