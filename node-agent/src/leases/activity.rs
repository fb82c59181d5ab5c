//! Executors' activity files: `LAST_MS [COUNT SUM_NS B0 .. B7]` (harvest-executor's
//! `--activity-file`; the bucket bounds are 10 µs, 100 µs, 1 ms, 10 ms, 100 ms, 1 s, 10 s and
//! unbounded, per-bucket counts of finished invocations' execution time).

use std::path::Path;

use super::launch::{ACTIVITY_FILE, lease_dir};
use super::safefs;
use crate::ledger_task::Snapshot;

/// The most of an activity file read (a full line is under 250 bytes).
pub const ACTIVITY_FILE_MAX: usize = 1024;

/// Upper bounds of the executors' duration buckets, in seconds.
pub const DURATION_BOUNDS_S: [f64; 7] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// What one executor's activity file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    pub lease: String,
    /// The latest invocation (or accepted connection), Unix ms.
    pub last_ms: i64,
    pub invocations: u64,
    pub duration_sum_ns: u64,
    /// Per-bucket counts, [`DURATION_BOUNDS_S`] then the unbounded bucket.
    pub buckets: Vec<u64>,
}

impl Activity {
    /// Parses a file's text; `None` when its first field is not a time.
    pub fn parse(lease: String, text: &str) -> Option<Self> {
        let mut f = text.split_whitespace().map(str::parse::<u64>);
        let last_ms = i64::try_from(f.next()?.ok()?).ok()?;
        let rest: Vec<u64> = f.map_while(Result::ok).collect();
        let (invocations, duration_sum_ns, buckets) = match rest.as_slice() {
            [count, sum, buckets @ ..] if buckets.len() == DURATION_BOUNDS_S.len() + 1 => {
                (*count, *sum, buckets.to_vec())
            }
            _ => (0, 0, Vec::new()),
        };
        Some(Self {
            lease,
            last_ms,
            invocations,
            duration_sum_ns,
            buckets,
        })
    }
}

/// What each ready executor's activity file says (its latest invocation, how many finished and
/// how long they took); leases whose executor has written none yet are left out. Reads files:
/// call it from a reader (a metrics scrape), never with state held. The file is the user's: it
/// is read only if it is a regular file the lease's user owns (no symlink, FIFO or device), and
/// at most [`ACTIVITY_FILE_MAX`] bytes of it.
pub fn read_all(snapshot: &Snapshot, state_dir: &Path) -> Vec<Activity> {
    snapshot
        .ledger
        .leases
        .iter()
        .filter(|(id, _)| snapshot.is_ready(id))
        .filter_map(|(id, lease)| {
            let dir = lease_dir(state_dir, id);
            let bytes =
                safefs::read_bounded_in(&dir, ACTIVITY_FILE, ACTIVITY_FILE_MAX, Some(lease.uid))
                    .map_err(|e| {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::debug!(lease = %id, error = %e, "activity file refused");
                        }
                    })
                    .ok()?;
            Activity::parse(id.clone(), &String::from_utf8_lossy(&bytes))
        })
        .collect()
}
