//! A slot in memory shared between the supervisor and one worker: which invocation the worker is
//! running and its deadline. The worker writes it around each call (two atomic stores, no system
//! call on the hot path); the supervisor reads it to enforce timeouts and to name the invocation a
//! crash interrupted.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
struct SlotData {
    /// The running invocation's id; meaningful while `deadline_ns` is non-zero.
    id: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds after which the invocation is killed; 0 when idle.
    deadline_ns: AtomicU64,
    /// Invocations begun on this slot (the supervisor notices activity by it changing).
    begun: AtomicU64,
}

/// A shared slot; created before `fork`, so both processes see the same memory.
#[derive(Debug)]
pub struct Slot {
    data: NonNull<SlotData>,
    len: usize,
}

// SAFETY: the slot holds only atomics, which are safe to share between threads.
unsafe impl Send for Slot {}

/// Nanoseconds on CLOCK_MONOTONIC, the clock both processes share.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Slot {
    pub fn new() -> io::Result<Self> {
        let len = std::mem::size_of::<SlotData>();
        // SAFETY: an anonymous shared mapping, zero-filled by the kernel (id 0, idle).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let data = NonNull::new(ptr.cast::<SlotData>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self { data, len })
    }

    fn data(&self) -> &SlotData {
        // SAFETY: the mapping lives as long as `self` and zero is a valid SlotData.
        unsafe { self.data.as_ref() }
    }

    /// The worker starts invocation `id`, to be killed after `deadline_ns`.
    pub fn begin(&self, id: u64, deadline_ns: u64) {
        self.data().begun.fetch_add(1, Ordering::Relaxed);
        self.data().id.store(id, Ordering::Relaxed);
        self.data()
            .deadline_ns
            .store(deadline_ns.max(1), Ordering::Release);
    }

    /// The worker finished its invocation.
    pub fn end(&self) {
        self.data().deadline_ns.store(0, Ordering::Release);
    }

    /// How many invocations have begun on this slot.
    pub fn begun(&self) -> u64 {
        self.data().begun.load(Ordering::Relaxed)
    }

    /// The running invocation and its deadline, if any.
    pub fn running(&self) -> Option<(u64, u64)> {
        let deadline = self.data().deadline_ns.load(Ordering::Acquire);
        (deadline != 0).then(|| (self.data().id.load(Ordering::Relaxed), deadline))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this slot's mapping (in this process only).
        unsafe { libc::munmap(self.data.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_end_running() {
        let s = Slot::new().unwrap();
        assert_eq!(s.running(), None);
        s.begin(42, 1000);
        assert_eq!(s.running(), Some((42, 1000)));
        s.end();
        assert_eq!(s.running(), None);
        s.begin(43, 1000);
        assert_eq!(s.begun(), 2);
        assert!(monotonic_ns() > 0);
    }
}
