//! The cgroup mounts in `/proc/self/mountinfo` text: what the node agent detects its cgroup
//! backend from and what `harvest doctor` checks a node's cgroup mode with, so that both read the
//! file the same way. Text in, mounts out: the caller reads the file.

use std::path::PathBuf;

/// The v1 controllers whose names appear as super options of a `cgroup` mount.
pub const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// One cgroup mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    pub mount_point: PathBuf,
    /// `true` for `cgroup2`, `false` for a v1 `cgroup` hierarchy.
    pub unified: bool,
    /// The v1 controllers of the hierarchy (`cpu`, `cpuset`, `name=systemd`, ...); empty for v2.
    pub controllers: Vec<String>,
}

/// A line that is not mountinfo's `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS ... - FSTYPE SOURCE
/// SUPER_OPTS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed mountinfo line {line:?} (expected '... - fstype source opts')")]
pub struct MalformedLine {
    pub line: String,
}

/// Parses mountinfo text into its cgroup mounts. Lines that are not cgroup mounts are skipped;
/// a line without the ` - ` separator, or a cgroup line without a mount point, is an error naming
/// the line.
pub fn parse(text: &str) -> Result<Vec<CgroupMount>, MalformedLine> {
    let mut mounts = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let malformed = || MalformedLine {
            line: line.to_owned(),
        };
        let (left, right) = line.split_once(" - ").ok_or_else(malformed)?;
        let mut right = right.split_whitespace();
        let fstype = right.next().unwrap_or_default();
        let _source = right.next();
        let super_opts = right.next().unwrap_or_default();
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        let mount_point = left.split_whitespace().nth(4).ok_or_else(malformed)?;
        let unified = fstype == "cgroup2";
        let controllers = if unified {
            Vec::new()
        } else {
            super_opts
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o) || o.starts_with("name="))
                .map(str::to_owned)
                .collect()
        };
        mounts.push(CgroupMount {
            mount_point: PathBuf::from(unescape(mount_point)),
            unified,
            controllers,
        });
    }
    Ok(mounts)
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(char::from(b));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn cgroup_mounts_with_their_controllers() {
        let m = parse(HYBRID).unwrap();
        assert_eq!(m.len(), 3, "the tmpfs is not a cgroup mount: {m:?}");
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[0].controllers, ["cpu", "cpuacct"]);
        assert!(!m[0].unified);
        assert_eq!(m[1].controllers, ["name=systemd"], "xattr is no controller");
        assert!(m[2].unified && m[2].controllers.is_empty());
    }

    #[test]
    fn escaped_mount_points_and_bad_lines() {
        let m = parse("1 2 0:1 / /tmp/a\\040b rw - cgroup2 cgroup2 rw\n").unwrap();
        assert_eq!(m[0].mount_point, Path::new("/tmp/a b"));
        assert_eq!(unescape("a\\x"), "a\\x", "a backslash without octal stays");
        let e = parse("garbage without separator\n").unwrap_err();
        assert_eq!(e.line, "garbage without separator");
        assert!(
            parse("1 2 - cgroup cgroup rw,cpu\n").is_err(),
            "no mount point"
        );
        assert!(parse("\n\n").unwrap().is_empty());
    }
}
