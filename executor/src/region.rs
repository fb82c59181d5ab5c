//! A memory lease's region: one shared anonymous mapping, made by the supervisor before it forks
//! any worker, so every connection's worker reads and writes the same bytes.
//!
//! `MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE`: shared across `fork`; no swap reserved up front
//! (a 1 TiB region costs nothing until used); a page is charged to the memory cgroup of the
//! process that first touches it (a read too: shared anonymous memory is shmem, which allocates
//! on any fault), a worker in the lease's cgroup, so the lease's memory limit
//! bounds what the region can hold. The region is never read or written through a Rust
//! reference: other workers change it at any time (there is no ordering between connections,
//! as with RDMA), so every access is a raw copy between it and a worker's own buffer.

use std::io;
use std::ptr::NonNull;

use harvest_core::invoke::memory::Range;

/// The mapped region; unmapped on drop.
#[derive(Debug)]
pub struct MemoryRegion {
    base: NonNull<u8>,
    len: u64,
}

/// A region could not be mapped.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot map a memory region of {bytes} bytes: {source} (with vm.overcommit_memory=2 the region must fit the commit limit)"
)]
pub struct RegionError {
    pub bytes: u64,
    pub source: io::Error,
}

impl MemoryRegion {
    /// Maps `len` bytes of zeroed, shared, not yet allocated memory.
    pub fn map(len: u64) -> Result<Self, RegionError> {
        let err = |source| RegionError { bytes: len, source };
        let size = usize::try_from(len)
            .ok()
            .filter(|&s| s > 0)
            .ok_or_else(|| err(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a new anonymous mapping with no address hint touches no existing memory; the
        // result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(err(io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| err(io::Error::other("mmap returned a null address")))?;
        Ok(Self { base, len })
    }

    /// The region's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where `len` bytes at `offset` start, if they lie inside the region.
    fn at(&self, offset: u64, len: usize) -> Option<*mut u8> {
        let end = offset.checked_add(len as u64)?;
        if end > self.len {
            return None;
        }
        // SAFETY: offset + len <= self.len, the mapping's length, so the pointer stays inside
        // (or one past the end of) the mapping; self.len fits usize (checked in `map`).
        Some(unsafe { self.base.as_ptr().add(offset as usize) })
    }

    /// Copies `range` into the start of `dst`; false (and nothing copied) when the range is
    /// outside the region or longer than `dst`.
    pub fn read(&self, range: Range, dst: &mut [u8]) -> bool {
        let len = range.len as usize;
        let Some(src) = self.at(range.offset, len).filter(|_| len <= dst.len()) else {
            return false;
        };
        // SAFETY: `src` is valid for `len` bytes of the mapping (checked by `at`), `dst` for at
        // least `len`; the mapping is this process's and never overlaps a Rust allocation. Other
        // workers may write the same bytes meanwhile: a raw copy, never a reference, so that
        // race gives mixed bytes (documented: no ordering between connections), not UB in Rust.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), len) };
        true
    }

    /// Copies `src` into the region at `offset`; false (and nothing copied) when it does not
    /// fit.
    pub fn write(&self, offset: u64, src: &[u8]) -> bool {
        let Some(dst) = self.at(offset, src.len()) else {
            return false;
        };
        // SAFETY: as in `read`, with the roles swapped: `dst` is valid for `src.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
        true
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns (its length fit usize at `map`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_refuses_what_does_not_fit() {
        let r = MemoryRegion::map(8192).unwrap();
        assert_eq!(r.len(), 8192);
        let mut buf = [1u8; 16];
        assert!(r.read(Range { offset: 0, len: 16 }, &mut buf));
        assert_eq!(buf, [0; 16], "a new region reads as zeros");
        assert!(r.write(8190, b"ab"));
        assert!(r.read(
            Range {
                offset: 8190,
                len: 2
            },
            &mut buf
        ));
        assert_eq!(&buf[..2], b"ab");
        assert!(!r.write(8191, b"ab"));
        assert!(!r.write(u64::MAX, b"a"));
        assert!(!r.read(
            Range {
                offset: 8192,
                len: 1
            },
            &mut buf
        ));
        assert!(
            !r.read(Range { offset: 0, len: 17 }, &mut buf),
            "dst too short"
        );
    }

    #[test]
    fn workers_forked_after_the_mapping_share_it() {
        let r = MemoryRegion::map(4096).unwrap();
        // SAFETY: the test child only writes to the region and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            r.write(100, b"from the child");
            // SAFETY: leave the forked test process at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut buf = [0u8; 14];
        assert!(r.read(
            Range {
                offset: 100,
                len: 14
            },
            &mut buf
        ));
        assert_eq!(&buf, b"from the child");
    }
}
