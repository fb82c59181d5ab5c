//! Output buffers that end at a guard page.
//!
//! A function is told nothing about its output buffer's size (the rFaaS ABI has no `out_len`), so
//! one that writes too much must fail loudly, not corrupt the worker: the buffer ends exactly at a
//! `PROT_NONE` page, and an overflow is a SIGSEGV that the supervisor reports as a crash.

use std::io;
use std::ptr::NonNull;

/// A writable buffer that starts [`OUTPUT_PHASE`] bytes into a page and ends at an inaccessible
/// guard page.
#[derive(Debug)]
pub struct GuardedBuffer {
    base: NonNull<u8>,
    mapped: usize,
    capacity: usize,
}

/// Where a function's output starts modulo a page (and so modulo 64): the RESULT header is
/// [`harvest_core::invoke::RESULT_HEAD_BYTES`] (32) bytes, so an output at 32 modulo 64 is copied
/// into the socket in phase (see `harvest_core::invoke` on why that matters); 32-byte alignment
/// still suits vector stores.
pub const OUTPUT_PHASE: usize =
    harvest_core::invoke::RESULT_HEAD_BYTES % harvest_core::invoke::ALIGN;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(p).unwrap_or(4096).max(4096)
}

impl GuardedBuffer {
    /// A buffer of at least `capacity` bytes (rounded up to whole pages).
    pub fn new(capacity: usize) -> io::Result<Self> {
        let page = page_size();
        let rounded = (capacity.max(1) + OUTPUT_PHASE).div_ceil(page) * page;
        let capacity = rounded - OUTPUT_PHASE;
        let mapped = rounded + page;
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        let buf = Self {
            base,
            mapped,
            capacity,
        };
        // SAFETY: the guard page lies inside the mapping made above.
        let rc =
            unsafe { libc::mprotect(base.as_ptr().add(rounded).cast(), page, libc::PROT_NONE) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(buf)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        // SAFETY: OUTPUT_PHASE is within the first page of the mapping.
        unsafe { self.base.as_ptr().add(OUTPUT_PHASE) }
    }

    /// The whole buffer, writable (for the executor's own outputs, such as a region's bytes).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `capacity` bytes from OUTPUT_PHASE are mapped writable for the life of `self`,
        // and `&mut self` makes this the only reference to them.
        unsafe { std::slice::from_raw_parts_mut(self.as_mut_ptr(), self.capacity) }
    }

    /// The first `len` bytes (clamped to the capacity).
    pub fn as_slice(&self, len: usize) -> &[u8] {
        // SAFETY: `capacity` bytes from OUTPUT_PHASE are mapped readable for the life of `self`.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(OUTPUT_PHASE), len.min(self.capacity))
        }
    }
}

impl Drop for GuardedBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_pages_and_is_writable() {
        let mut b = GuardedBuffer::new(10).unwrap();
        assert!(b.capacity() >= 10 && (b.capacity() + OUTPUT_PHASE).is_multiple_of(4096));
        assert_eq!(b.as_mut_ptr() as usize % 64, OUTPUT_PHASE);
        let cap = b.capacity();
        // SAFETY: writes stay within the capacity.
        unsafe { std::ptr::write_bytes(b.as_mut_ptr(), 7, cap) };
        assert!(b.as_slice(cap).iter().all(|&x| x == 7));
        assert_eq!(b.as_slice(cap + 100).len(), cap);
    }
}
