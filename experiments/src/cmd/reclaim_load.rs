//! Background load for the reclaim benchmark (`reclaim --background churn`): what else a node's
//! agent does while a batch step starts.
//!
//! - **Scrapes**, the whole run: the node's harvestd `/metrics` and the scheduler's, every
//!   [`SCRAPE_INTERVAL`] each (a Prometheus at a 100 ms interval, far more often than a real one).
//! - **Lease churn**, in the rounds with a function: a second lease of the bench user is asked
//!   for on the same node just before the step starts, so that its reservation, cgroup and
//!   executor start race the step's reclaim (it lands on the node's other CPU and is reclaimed by
//!   the same step, or finds no idle CPU). It is paused in the idle rounds, whose step must stay
//!   a step onto idle CPUs: the baseline.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::cluster::Cluster;

/// How often each endpoint is scraped.
pub const SCRAPE_INTERVAL: Duration = Duration::from_millis(100);
/// The most a scrape reads (a few hundred KiB at most here).
const MAX_SCRAPE_BYTES: u64 = 8 << 20;

/// Which background load runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Background {
    /// Nothing else: the agent only serves the benchmark.
    #[default]
    None,
    /// Metric scrapes throughout and a lease start racing each reclaim.
    Churn,
}

/// What the background load did, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub background: String,
    pub scrape_interval_ms: u64,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    /// Second leases asked for in function rounds, and how many got an executor.
    pub churn_leases_asked: u64,
    pub churn_leases_granted: u64,
}

/// The running scrapers.
#[derive(Debug)]
pub struct Scrapers {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

/// `host:port` and path of an `http://host:port/path` URL.
fn split_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("http://")?;
    Some(rest.split_once('/').map_or((rest, "/"), |(h, _)| {
        (h, &url[url.len() - (rest.len() - h.len())..])
    }))
}

/// One GET; true on a 200 with a body.
fn scrape(url: &str) -> bool {
    let Some((host, path)) = split_url(url) else {
        return false;
    };
    let Some(addr) = host.to_socket_addrs().ok().and_then(|mut a| a.next()) else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut body = Vec::new();
    let read = s.take(MAX_SCRAPE_BYTES).read_to_end(&mut body);
    read.is_ok() && body.starts_with(b"HTTP/1.1 200")
}

/// The metrics URLs of `node`'s agent and of the scheduler, from the cluster's environment.
pub fn metrics_urls(cluster: &Cluster, node: &str) -> Result<Vec<String>> {
    let mut urls = vec![cluster.require("HARVEST_SCHEDULER_METRICS")?.to_owned()];
    let agents = cluster.require("HARVEST_AGENT_METRICS")?;
    let agent = agents
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{node}=")))
        .with_context(|| format!("HARVEST_AGENT_METRICS names no agent for {node}: {agents}"))?;
    urls.push(agent.to_owned());
    Ok(urls)
}

impl Scrapers {
    /// One thread per URL, scraping every [`SCRAPE_INTERVAL`] until [`stop`](Self::stop).
    pub fn start(urls: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = urls
            .into_iter()
            .map(|url| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let counter = if scrape(&url) { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(SCRAPE_INTERVAL);
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops and joins the threads; returns (ok, failed) scrapes.
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A second lease asked for in the background: `harvest lease acquire` as its own process.
#[derive(Debug)]
pub struct ChurnLease(Child);

impl ChurnLease {
    /// Starts asking (returns at once).
    pub fn ask(
        cluster: &Cluster,
        harvest: &std::path::Path,
        lib: &std::path::Path,
    ) -> Result<Self> {
        let child = cluster
            .command("runuser")
            .args(["-u", super::reclaim::BENCH_USER, "--"])
            .arg(harvest)
            .args(["--scheduler", cluster.require("HARVEST_SCHEDULER")?])
            .args(["lease", "acquire", "--lib"])
            .arg(lib)
            .args(["--cores", "1", "--mem", "64M", "--lifetime", "1m", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting harvest lease acquire")?;
        Ok(Self(child))
    }

    /// Waits for the answer (bounded); releases the lease if one was granted and is still
    /// there. Returns whether it was granted.
    pub fn finish(mut self, cluster: &Cluster, harvest: &std::path::Path) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while matches!(self.0.try_wait(), Ok(None)) {
            if std::time::Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut out = String::new();
        if let Some(mut o) = self.0.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        let granted = self.0.wait().is_ok_and(|s| s.success());
        if granted
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out)
            && let Some(id) = v["id"].as_str()
        {
            // Most were reclaimed with the step; release whatever was not.
            let _ = cluster
                .command("runuser")
                .args(["-u", super::reclaim::BENCH_USER, "--"])
                .arg(harvest)
                .args(["lease", "release", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9201/metrics"),
            Some(("127.0.0.1:9201", "/metrics"))
        );
        assert_eq!(split_url("http://h:1"), Some(("h:1", "/")));
        assert_eq!(split_url("https://h/x"), None);
    }

    #[test]
    fn a_scrape_of_nothing_listening_fails_quickly() {
        // Port 1 on loopback: nothing listens there.
        assert!(!scrape("http://127.0.0.1:1/metrics"));
    }
}
