//! Helpers for system tests against the real local Slurm cluster.
//!
//! The cluster is the one `deploy/local-cluster up` brings up; the harness it is driven through
//! ([`LocalCluster`], [`Job`], [`poll`]) is `harvest-cluster-harness`, shared with the
//! experiments, re-exported here. Tests that use it are `#[ignore = "needs the local cluster:
//! ..."]` and the README's test command runs them after `up`. [`fixtures`] holds what several
//! tests build on the cluster (the CLI installed for a test user, function libraries, scratch
//! directories); [`cuda`] the CUDA function library and the batch busy loop, built with
//! plain `cc` (they need no cluster and, to build, no GPU).

pub use harvest_cluster_harness::{
    Job, LocalCluster, node_is_full, parse_exports, poll, repo_root,
};

pub mod cuda;
pub mod fixtures;
