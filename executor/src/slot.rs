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
    /// CLOCK_MONOTONIC ns when the running invocation began.
    started_ns: AtomicU64,
    /// Finished invocations by duration: counts per [`DURATION_BUCKETS_NS`] bound (the last
    /// one unbounded), and the sum of durations.
    buckets: [AtomicU64; DURATION_BUCKETS],
    sum_ns: AtomicU64,
}

/// Upper bounds of the duration buckets in ns (10 µs .. 10 s; one more bucket is unbounded).
pub const DURATION_BUCKETS_NS: [u64; 7] = [
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
];
/// Buckets in a slot: one per bound plus the unbounded one.
pub const DURATION_BUCKETS: usize = DURATION_BUCKETS_NS.len() + 1;

/// Finished invocations by duration (not cumulative: bucket `i` counts durations in
/// `(bound[i-1], bound[i]]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Durations {
    pub buckets: [u64; DURATION_BUCKETS],
    pub sum_ns: u64,
}

impl Durations {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn add(&mut self, other: &Durations) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }
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
        self.data()
            .started_ns
            .store(monotonic_ns(), Ordering::Relaxed);
        self.data().id.store(id, Ordering::Relaxed);
        self.data()
            .deadline_ns
            .store(deadline_ns.max(1), Ordering::Release);
    }

    /// The worker finished its invocation: its duration is counted.
    pub fn end(&self) {
        let d = self.data();
        let took = monotonic_ns().saturating_sub(d.started_ns.load(Ordering::Relaxed));
        let i = DURATION_BUCKETS_NS
            .iter()
            .position(|&b| took <= b)
            .unwrap_or(DURATION_BUCKETS - 1);
        d.buckets[i].fetch_add(1, Ordering::Relaxed);
        d.sum_ns.fetch_add(took, Ordering::Relaxed);
        d.deadline_ns.store(0, Ordering::Release);
    }

    /// The finished invocations' durations so far.
    pub fn durations(&self) -> Durations {
        let d = self.data();
        Durations {
            buckets: std::array::from_fn(|i| d.buckets[i].load(Ordering::Relaxed)),
            sum_ns: d.sum_ns.load(Ordering::Relaxed),
        }
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
        s.end();
        let d = s.durations();
        assert_eq!(d.count(), 2);
        assert!(d.buckets[0] + d.buckets[1] == 2, "two quick ones: {d:?}");
        assert!(monotonic_ns() > 0);
    }
}
