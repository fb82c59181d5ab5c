//! The real local cluster, as the experiments that run on it see it (`deploy/local-cluster`):
//! the harness the system tests use too (`harvest-cluster-harness`), plus what only result files
//! need.

pub use harvest_cluster_harness::{
    LocalCluster as Cluster, ensure_user, parse_exports, repo_root, wait_for,
};

/// "N CPUs, kernel K" for result files.
pub fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}
