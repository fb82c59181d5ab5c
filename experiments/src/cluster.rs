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

/// A scheduler client as the experiments' clients (run as an ordinary user with the cluster's
/// environment) make it: munge identity; TLS with the CA `HARVEST_CA` names (the local
/// cluster's), plaintext without one. `urls` may list a standby after the primary.
pub async fn connect_scheduler(
    urls: &str,
) -> Result<harvest_client::SchedulerClient, harvest_client::LeaseError> {
    let munge = std::sync::Arc::new(harvest_client::identity::Munge::default());
    match std::env::var_os("HARVEST_CA") {
        Some(ca) => {
            harvest_client::SchedulerClient::connect_tls(urls, munge, std::path::Path::new(&ca))
                .await
        }
        None => harvest_client::SchedulerClient::connect(urls, munge).await,
    }
}
