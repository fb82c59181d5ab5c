//! The bodies of harvest's fuzz targets: every parser that reads bytes from outside the process.
//!
//! Each `pub fn <target>(data: &[u8])` takes any bytes, must never panic, and asserts what must
//! hold of what it parsed (a decoded frame encodes back to the same frame, a parsed
//! configuration re-validates the same way, ...): a panic is a bug found. They are called from
//! two places:
//!
//! - `fuzz_targets/<target>.rs`, libFuzzer's entry points, built by `cargo fuzz` with coverage
//!   and AddressSanitizer (`scripts/fuzz`, the bounded run);
//! - `tests/corpus.rs`, which runs each body over the committed seeds (`corpus/<target>/`) and a
//!   few thousand deterministic mutations of them as a plain `cargo test` (the test suite's short
//!   stage).
//!
//! Modules: [`frames`] (invocation frames, plugin-agent messages), [`memory`] (memory
//! leases' `harvest.mem.*` inputs), [`trace`] (SWF), [`configs`]
//! (harvestd, scheduler and policy TOML, the SPANK plugin's `plugstack.conf` arguments).

pub mod configs;
pub mod frames;
pub mod memory;
pub mod trace;

/// The SPANK plugin's argument parser, compiled from its own source: the plugin crate builds only
/// a `cdylib` (it references symbols only slurmstepd provides), so nothing can link it as a
/// library. The file depends on std and thiserror alone.
#[path = "../../spank-plugin/src/config.rs"]
pub mod spank;

pub use configs::{agent_config, policy_config, scheduler_config, spank_args};
pub use frames::{invoke_frame, plugin_message};
pub use memory::memory_op;
pub use trace::swf_trace;

/// A target's body: any bytes in, a panic when a bug is found.
pub type Body = fn(&[u8]);

/// Every target, by the name `cargo fuzz` and `corpus/` use, with its body.
pub const TARGETS: [(&str, Body); 8] = [
    ("invoke_frame", invoke_frame),
    ("memory_op", memory_op),
    ("plugin_message", plugin_message),
    ("swf_trace", swf_trace),
    ("agent_config", agent_config),
    ("scheduler_config", scheduler_config),
    ("policy_config", policy_config),
    ("spank_args", spank_args),
];
