//! The harvest client library.
//!
//! - [`invoke`]: invoking functions on a lease's executor, client to executor directly.
//!
//! Leases (acquire, release, failover) and the `harvest` CLI's cluster views land with the
//! scheduler issue.

pub mod invoke;

pub use invoke::{ExecutorConnection, InvokeError, Polling};
