//! The harvest client library and the `harvest` CLI.
//!
//! - [`lease`]: acquiring and releasing leases, listing nodes and leases ([`SchedulerClient`]).
//! - [`invoke`]: invoking functions on a lease's executor, client to executor directly
//!   (synchronously with `invoke`, asynchronously with `submit` then `wait_into`).
//! - [`failover`]: revoked leases explained ([`failover::Revocation`]) and invocations retried
//!   on a new lease ([`failover::invoke_with_failover`]).
//! - [`identity`]: munge credentials (`munge -n`), one per request.
//! - [`locate`]: where the scheduler is (`--scheduler`, `HARVEST_SCHEDULER`, config file).
//! - [`doctor`]: `harvest doctor`, the checks of a node and of the scheduler.
//! - [`cli`]: the `harvest` command line over all of the above.

pub mod cli;
pub mod doctor;
pub mod failover;
pub mod identity;
pub mod invoke;
pub mod lease;
pub mod locate;

pub use invoke::{ExecutorConnection, InvokeError, Polling};
pub use lease::{Lease, LeaseError, LeaseExt, LeaseRequest, Library, Node, SchedulerClient};
