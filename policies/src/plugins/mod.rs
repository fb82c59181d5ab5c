//! The built-in plugins. Each is small and does one thing; policies combine them
//! ([`crate::config`]).
//!
//! | plugin | points | what it does |
//! |---|---|---|
//! | `fit` | filter | the node has the cores, memory and GPUs free |
//! | `first-fit` | score | lower node ids first |
//! | `best-fit` | score | fullest nodes first; wholly idle nodes last (kept for batch) |
//! | `spread` | score | emptiest nodes first |
//! | `interference` | filter, score | no node in an interference state; avoid sensitive batch jobs |
//! | `gpu` | score | CPU leases keep off free GPUs; GPU leases pack GPUs |
//! | `lease-affinity` | hint, score | near the client's other leases and its data |

mod affinity;
mod fit;
mod gpu;
mod interference;
mod packing;

pub use affinity::LeaseAffinity;
pub use fit::Fit;
pub use gpu::GpuAware;
pub use interference::Interference;
pub use packing::{BestFit, FirstFit, Spread};

/// `part / whole` as a 0..=100 score; 100 when `whole` is 0 (nothing to use up).
pub(crate) fn percent(part: u64, whole: u64) -> i64 {
    if whole == 0 {
        return 100;
    }
    (part.min(whole) * 100 / whole) as i64
}
