//! `harvest-executor`: the process that runs a lease's functions.
//!
//! `harvestd` starts one executor per lease, in the lease's cgroup, as the lease's user. The
//! executor loads the function library (C ABI, as in rFaaS:
//! `uint32_t fn(void *in, uint32_t in_len, void *out)` returns the number of output bytes) and
//! serves invocations straight from clients over TCP ([`harvest_core::invoke`] frames): the
//! scheduler is never on this path.
//!
//! Layout:
//! - [`cli`]: the command line, shared by the binary and the benchmarks.
//! - [`config`]: what the agent passes on the command line, validated.
//! - [`harden`]: no_new_privs and rlimits, set on the executor at start.
//! - [`handshake`]: the lease-secret challenge every connection answers before it gets a worker.
//! - [`library`]: the loaded function library and symbol lookup.
//! - [`ready`]: `--ready-fd`, the address line on an inherited pipe.
//! - [`region`]: a memory lease's region, mapped shared before any worker forks.
//! - [`buffer`]: output buffers with a guard page, so an overflowing function crashes cleanly.
//! - [`slot`]: a shared-memory slot per worker saying which invocation runs and until when.
//! - [`worker`]: serves one connection: read, run, answer; busy-polls in the hot window.
//! - [`supervisor`]: accepts connections, forks a worker per connection, and turns a worker's
//!   crash, OOM kill or timeout into an explicit error frame for the caller.
//!
//! Isolation model: a function runs in a forked worker, never in the supervisor, so a crash takes
//! down one connection's worker; the supervisor keeps the connection's socket, tells the caller
//! what happened, and closes it. The client reconnects for its next invocation.
//!
//! Memory leases: with `--region SIZE` the executor maps a region and its workers serve the
//! reserved names `harvest.mem.*` (read, write, scatter/gather by offset; see
//! [`harvest_core::invoke::memory`]) from it; `--lib` is then optional.
//!
//! Access: only the lease's owner may invoke. The executor takes the lease secret from
//! `HARVEST_LEASE_SECRET` at start (and removes it from its environment), and the supervisor
//! serves a connection only once it has proved the secret ([`handshake`]).

pub mod buffer;
pub mod cli;
pub mod config;
pub mod handshake;
pub mod harden;
pub mod library;
pub mod ready;
pub mod region;
pub mod slot;
pub mod supervisor;
pub mod worker;

pub use config::{ExecutorConfig, HotWindow};
