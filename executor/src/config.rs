//! The executor's configuration, as `harvestd` passes it on the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use harvest_core::invoke::auth::LeaseSecret;

/// Default time a function may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default size of each worker's output buffer.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Default largest accepted input.
pub const DEFAULT_MAX_INPUT_BYTES: usize = 64 << 20;
/// The largest output buffer and input accepted (1 GiB): far below the 4 GiB a frame's `u32`
/// length can describe, and more than a function should move through one invocation.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 30;
/// Default output limit of an executor with a memory region: a 4 MiB read and some room.
pub const DEFAULT_REGION_MAX_OUTPUT_BYTES: usize = (4 << 20) + 64;
/// Default input limit of an executor with a memory region: a 4 MiB write, with room for a
/// `writev`'s longest range list ([`harvest_core::invoke::memory::MAX_LIST_BYTES`]).
pub const DEFAULT_REGION_MAX_INPUT_BYTES: usize = (4 << 20) + (16 << 10);
pub use harvest_core::invoke::memory::{MAX_REGION_BYTES, MIN_REGION_BYTES};
/// Default number of concurrent authenticated connections (each one a worker process).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default number of connections that have not yet proved the lease secret; past it the oldest
/// such connection is closed, so peers that hold connections open cannot lock the owner out.
pub const DEFAULT_MAX_PENDING: usize = 64;
/// Default time a new connection has to prove the lease secret (its AUTH frame).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Default time a worker waits for the rest of a frame that has begun to arrive (no byte for
/// this long: the connection is closed and its worker freed).
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variable the executor reads its lease secret from (64 hex digits); it is
/// removed from the environment at start, so neither workers nor the programs functions start
/// inherit it.
pub const SECRET_ENV: &str = "HARVEST_LEASE_SECRET";

pub use harvest_core::HotWindow;

/// Everything an executor needs to run.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Where to accept clients (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The function library (a shared object with C-ABI functions); `None` for a memory lease's
    /// executor, which serves only its region.
    pub library: Option<PathBuf>,
    /// A memory lease's region size in bytes ([`MIN_REGION_BYTES`] to [`MAX_REGION_BYTES`]): the
    /// supervisor maps it before forking workers, which serve `harvest.mem.*` from it.
    pub region_bytes: Option<u64>,
    pub hot_window: HotWindow,
    /// Used when an invocation asks for no timeout of its own.
    pub default_timeout: Duration,
    /// Size of each worker's output buffer (at most [`MAX_PAYLOAD_BYTES`]).
    pub max_output_bytes: usize,
    /// Largest accepted input (at most [`MAX_PAYLOAD_BYTES`]).
    pub max_input_bytes: usize,
    /// Authenticated connections served at once (each one a worker process).
    pub max_connections: usize,
    /// Connections still in the handshake at once; a new one past this closes the oldest.
    pub max_pending: usize,
    /// How long a new connection has to send a valid AUTH.
    pub handshake_timeout: Duration,
    /// How long a worker waits for the next byte of a frame that has begun to arrive.
    pub frame_timeout: Duration,
    /// The lease secret every connection must prove (see `harvest_core::invoke::auth`).
    pub secret: LeaseSecret,
    /// A cgroup file with an `oom_kill N` line (v1 `memory.oom_control`, v2 `memory.events`), read
    /// to tell an OOM kill from another SIGKILL. Without it such a kill is reported as a crash
    /// that may have been an OOM kill.
    pub oom_events: Option<PathBuf>,
    /// A file the supervisor writes the time of the latest invocation to (Unix ms, text), at
    /// most once per [`ACTIVITY_WRITE_INTERVAL`]: the agent reads it for idle timeouts.
    pub activity_file: Option<PathBuf>,
}

/// How often (at most) the activity file is rewritten.
pub const ACTIVITY_WRITE_INTERVAL: Duration = Duration::from_secs(1);

impl ExecutorConfig {
    /// A configuration with the defaults for everything but the library and the lease secret
    /// (and no memory region).
    pub fn new(library: PathBuf, secret: LeaseSecret) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            library: Some(library),
            region_bytes: None,
            hot_window: HotWindow::For(Duration::from_millis(1)),
            default_timeout: DEFAULT_TIMEOUT,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_input_bytes: DEFAULT_MAX_INPUT_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending: DEFAULT_MAX_PENDING,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            secret,
            oom_events: None,
            activity_file: None,
        }
    }
}
