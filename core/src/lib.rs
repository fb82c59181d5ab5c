//! Pure domain types shared by every harvest component.
//!
//! This crate has no OS access (one exception: lease secrets and nonces come from the OS's
//! random number generator, through `ring`) and no async runtime, so that the SPANK plugin (inside slurmstepd),
//! the node agent, the scheduler, the placement policies and the simulator all agree on the same
//! arithmetic without dragging each other's dependencies along.
//!
//! - [`cpuset`]: sets of OS CPU ids, in the Linux list format (`0-3,8`).
//! - [`units`]: memory sizes in Slurm's notation (`512M`, `4G`) and durations (`500ms`, `2s`).
//! - [`node`]: a node's resources broken down by state (batch, function, idle).
//! - [`invoke`]: the client-executor invocation frames; [`invoke::auth`]: lease secrets and the
//!   proof of one that opens every connection.
//! - [`mountinfo`]: the cgroup mounts in `/proc/self/mountinfo` text (agent and doctor).
//! - [`region`]: memory leases (a region of idle memory lent to one owner).
//! - [`query`]: the node agent's read-only status and ledger queries.
//! - [`step`]: what the SPANK plugin tells the node agent about each job step, and the wire framing.

pub mod cpuset;
pub mod hot;
pub mod invoke;
pub mod mountinfo;
pub mod node;
pub mod query;
pub mod region;
pub mod step;
pub mod units;

pub use cpuset::{CpuSet, CpuSetParseError};
pub use hot::HotWindow;
pub use node::{Counts, CpuBreakdown, GpuBreakdown, MemoryBreakdown, NodeView, STATES, Usage};
pub use units::{UnitParseError, format_duration, parse_duration, parse_memory_mib};
