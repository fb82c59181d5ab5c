//! Root's file operations inside a user-writable directory (a lease directory), done the way
//! youki and systemd do them: relative to a directory fd, never following a symlink, never
//! reusing an existing name, checking what was opened with `fstat`, and reading at most a bound.
//!
//! A lease's user owns its directory once it is handed over, so every name in it may be a
//! symlink to a root-only file, a FIFO, a device or a file of any size, and may change between
//! two calls. What this module guarantees:
//! - [`create_new`] creates a new file or fails (`O_CREAT|O_EXCL|O_NOFOLLOW`): it never writes
//!   through a planted name.
//! - [`read_bounded`] opens with `O_NOFOLLOW|O_NONBLOCK` (a symlink fails with `ELOOP`, a FIFO
//!   neither blocks nor is read), refuses anything but a regular file (optionally owned by a given
//!   uid, so a hard link to someone else's file is refused too) and reads at most `limit` bytes.
//! - [`read_tail`] reads the last bytes of a file root already holds open.
//!
//! The directory's own path is trusted up to and including its last component: the parent
//! (`<state_dir>/leases`, root's, 0711) is not writable by users, so they cannot swap the
//! lease directory itself, only its contents.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{CWD, FileType, Mode, OFlags};

/// Opens `path` as a directory, refusing a symlink as its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Whether `name` is one plain path component (no `/`, not `.` or `..`, no NUL), so that joining
/// it to a directory cannot leave that directory.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

/// Creates the new file `name` in `dir` with `mode` and opens it for reading and writing; fails
/// with `AlreadyExists` when the name exists in any form (file, symlink, FIFO), without touching
/// what it names.
pub fn create_new(dir: impl AsFd, name: &str, mode: u32) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    // The umask may have narrowed `mode`; set it exactly, through the fd.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// Reads at most `limit` bytes of the regular file `name` in `dir` (see the module docs); with
/// `owner`, the file must belong to that uid.
pub fn read_bounded(
    dir: impl AsFd,
    name: &str,
    limit: usize,
    owner: Option<u32>,
) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = check_regular(&fd)?;
    if let Some(uid) = owner
        && st.st_uid != uid
    {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {}, not by uid {uid}", st.st_uid),
        ));
    }
    let mut bytes = Vec::with_capacity(limit.min(4096));
    File::from(fd)
        .take(u64::try_from(limit).unwrap_or(u64::MAX))
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_bounded`] on the file `name` in the directory `dir`.
pub fn read_bounded_in(
    dir: &Path,
    name: &str,
    limit: usize,
    owner: Option<u32>,
) -> io::Result<Vec<u8>> {
    read_bounded(open_dir(dir)?, name, limit, owner)
}

/// The last `limit` bytes (at most) of a regular file root holds open, read at an offset so that
/// whatever the file's size, at most `limit` bytes are read.
pub fn read_tail(file: &File, limit: usize) -> io::Result<Vec<u8>> {
    let st = check_regular(file)?;
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let from = size.saturating_sub(u64::try_from(limit).unwrap_or(u64::MAX));
    let mut bytes = vec![0u8; usize::try_from(size - from).unwrap_or(limit).min(limit)];
    let mut filled = 0;
    while filled < bytes.len() {
        let offset = from + filled as u64;
        match rustix::io::pread(file, &mut bytes[filled..], offset) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// Removes `name` from the directory `parent` (root's): a directory with everything in it, or
/// whatever else the name is (a symlink is removed, never followed). A missing name is fine.
pub fn remove_entry(parent: &Path, name: &str) -> io::Result<()> {
    if !is_plain_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    let path = parent.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        // std's remove_dir_all walks with openat/unlinkat and O_NOFOLLOW on Linux since Rust
        // 1.58.1 (CVE-2022-21658): a symlink inside is unlinked, never followed, and a directory
        // swapped for a symlink mid-walk fails instead of escaping. The top path cannot be
        // swapped: `parent` is root's.
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
        Ok(_) => std::fs::remove_file(&path),
    }
}

fn check_regular(fd: impl AsFd) -> io::Result<rustix::fs::Stat> {
    let st = rustix::fs::fstat(fd)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(st),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file but a {other:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, Instant};

    const CANARY: &str = "canary-secret-3f9a";

    fn dir_with_canary() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let canary = tmp.path().join("canary");
        std::fs::write(&canary, CANARY).unwrap();
        std::fs::create_dir(tmp.path().join("lease")).unwrap();
        (tmp, canary)
    }

    #[test]
    fn a_symlink_to_a_canary_is_refused() {
        let (tmp, canary) = dir_with_canary();
        let lease = tmp.path().join("lease");
        symlink(&canary, lease.join("ready")).unwrap();
        let err = read_bounded_in(&lease, "ready", 100, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc_eloop()), "{err}");
        assert!(!err.to_string().contains(CANARY));
        // Nor can the lease directory itself be a symlink.
        symlink(&lease, tmp.path().join("link")).unwrap();
        assert!(open_dir(&tmp.path().join("link")).is_err());
    }

    fn libc_eloop() -> i32 {
        rustix::io::Errno::LOOP.raw_os_error()
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let (tmp, _) = dir_with_canary();
        let lease = tmp.path().join("lease");
        rustix::fs::mkfifoat(CWD, lease.join("activity"), Mode::from_raw_mode(0o600)).unwrap();
        let started = Instant::now();
        let err = read_bounded_in(&lease, "activity", 100, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn dev_zero_is_refused() {
        let (tmp, _) = dir_with_canary();
        let lease = tmp.path().join("lease");
        // A symlink to it is refused as a symlink; the device itself as not a regular file.
        symlink("/dev/zero", lease.join("activity")).unwrap();
        assert!(read_bounded_in(&lease, "activity", 100, None).is_err());
        let dev = open_dir(Path::new("/dev")).unwrap();
        let err = read_bounded(&dev, "zero", 100, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_huge_file_is_read_only_up_to_the_bound() {
        let (tmp, _) = dir_with_canary();
        let lease = tmp.path().join("lease");
        let rw = |p: &Path| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .unwrap()
        };
        let f = rw(&lease.join("activity"));
        // Sparse: 1 TiB on paper, nothing on disk.
        f.set_len(1 << 40).unwrap();
        let read = read_bounded_in(&lease, "activity", 4096, None).unwrap();
        assert_eq!(read.len(), 4096);
        let tail = read_tail(&f, 600).unwrap();
        assert_eq!(tail.len(), 600);
        let mut small = rw(&lease.join("log"));
        small.write_all(b"0123456789").unwrap();
        assert_eq!(read_tail(&small, 4).unwrap(), b"6789");
        assert_eq!(read_tail(&small, 100).unwrap(), b"0123456789");
    }

    #[test]
    fn a_file_of_another_owner_is_refused_when_an_owner_is_asked() {
        let (tmp, _) = dir_with_canary();
        let lease = tmp.path().join("lease");
        std::fs::write(lease.join("activity"), "1 2").unwrap();
        let me = rustix::process::getuid().as_raw();
        assert_eq!(
            read_bounded_in(&lease, "activity", 100, Some(me)).unwrap(),
            b"1 2"
        );
        let err = read_bounded_in(&lease, "activity", 100, Some(me + 1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn an_existing_name_is_never_overwritten() {
        let (tmp, canary) = dir_with_canary();
        let lease = tmp.path().join("lease");
        let dir = open_dir(&lease).unwrap();
        symlink(&canary, lease.join("functions.so")).unwrap();
        let err = create_new(&dir, "functions.so", 0o500).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // A dangling symlink is not followed to create its target either.
        symlink(tmp.path().join("created"), lease.join("executor.log")).unwrap();
        assert!(create_new(&dir, "executor.log", 0o600).is_err());
        assert!(!tmp.path().join("created").exists());
        std::fs::write(lease.join("plain"), "keep").unwrap();
        assert!(create_new(&dir, "plain", 0o600).is_err());
        assert_eq!(
            std::fs::read_to_string(lease.join("plain")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_to_string(&canary).unwrap(), CANARY);
        let mut new = create_new(&dir, "new", 0o640).unwrap();
        new.write_all(b"x").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lease.join("new"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn removal_follows_no_symlink() {
        let (tmp, canary) = dir_with_canary();
        let lease = tmp.path().join("lease");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "x").unwrap();
        symlink(&outside, lease.join("dir-link")).unwrap();
        symlink(&canary, lease.join("file-link")).unwrap();
        remove_entry(tmp.path(), "lease").unwrap();
        assert!(!lease.exists());
        assert!(outside.join("keep").exists());
        assert!(canary.exists());
        // A symlink in the parent's place of a lease directory is unlinked, not followed.
        symlink(&outside, tmp.path().join("L2")).unwrap();
        remove_entry(tmp.path(), "L2").unwrap();
        assert!(outside.join("keep").exists());
        remove_entry(tmp.path(), "missing").unwrap();
        assert!(remove_entry(tmp.path(), "../x").is_err());
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_name("19a2b3c-4-0123456789abcdef"));
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }
}
