//! Placement policies: where a lease goes.
//!
//! The scheduler and the trace-driven simulator run exactly this code. It follows the Kubernetes
//! scheduler framework: small traits per extension point, a [`Status`] separate from errors, a
//! [`Registry`] of named plugins, a [`PolicyConfig`] naming which plugins run with which weights,
//! and fakes in [`testing`].
//!
//! - [`resources`]: resource vectors and a node's state in counts ([`NodeState::from_view`]).
//! - [`index`]: the per-free-core buckets, segment tree and GPU set that keep decisions at
//!   10,000 nodes in microseconds.
//! - [`cluster`]: node states, leases (idempotent reserve/unreserve), reclaim plans, candidates.
//! - [`framework`]: the pipeline (hint, filter, score + normalize, reserve).
//! - [`hash`]: a fast hasher for the id-keyed maps on the hot path.
//! - [`plugins`]: fit, first-fit, best-fit, spread, interference, gpu, lease-affinity.
//! - [`registry`], [`config`]: names to plugins, policies to pipelines; the built-in policies.
//! - [`testing`]: fake plugins that record what they were asked.

pub mod cluster;
pub mod config;
pub mod framework;
pub mod hash;
pub mod index;
pub mod plugins;
pub mod registry;
pub mod resources;
pub mod testing;

pub use cluster::{CandidateOrder, Cluster, ClusterError, Lease};
pub use config::{BUILTIN_POLICIES, ConfigError, PolicyConfig, builtin_framework};
pub use framework::{
    Code, Decision, FilterPlugin, Framework, FrameworkError, HintPlugin, MAX_SCORE, PluginSet,
    Rejection, Request, ReservePlugin, ScorePlugin, Status,
};
pub use registry::Registry;
pub use resources::{ClientId, LeaseId, NodeId, NodeState, Resources};
