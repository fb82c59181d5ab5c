//! The function client: runs as the ordinary user, leases one core on the node, invokes the
//! thrashing function until told to stop, and records when each invocation completed. A real
//! client runs on another node; this one runs on the batch job's node, so it pins itself to its
//! lease's CPUs, off the job's.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use harvest_client::{LeaseExt, LeaseRequest, Library, Polling};
use harvest_core::CpuSet;
use serde::{Deserialize, Serialize};

/// The hidden client the experiment runs as the function user.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    #[arg(long)]
    scheduler: String,
    #[arg(long)]
    lib: PathBuf,
    #[arg(long, default_value = "thrash")]
    function: String,
    /// Written once the first lease is ready.
    #[arg(long)]
    ready_file: PathBuf,
    /// The client stops when this file appears.
    #[arg(long)]
    stop_file: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
}

/// A function or memory client's result (interference's and remote-memory's clients).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientOut {
    /// When each invocation or operation completed (Unix ms).
    pub(crate) completions_unix_ms: Vec<i64>,
    pub(crate) leases: Vec<String>,
    pub(crate) errors: Vec<String>,
}

/// The hidden client: leases one core, invokes the function until told to stop; after a lease
/// ends (evicted), it asks for another, as a real client would.
pub fn run_client(a: ClientArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let library = Library::read(&a.lib)?;
    // The cluster's scheduler speaks TLS: its CA comes from `deploy/local-cluster env`.
    let mut sched = rt.block_on(crate::cluster::connect_scheduler(&a.scheduler))?;
    let mut out = ClientOut::default();
    let t0 = Instant::now();
    let max = Duration::from_secs(a.max_seconds);
    while !a.stop_file.exists() && t0.elapsed() < max {
        let mut req = LeaseRequest::new(1, library.clone());
        req.memory_mib = 256;
        req.lifetime = Some(max);
        let lease = match rt.block_on(sched.acquire(&req)) {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(format!("acquire: {e}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        out.leases.push(lease.id.clone());
        if let Err(e) = pin_to(&lease.cpus) {
            out.errors
                .push(format!("lease {}: pinning the client: {e:#}", lease.id));
        }
        if !a.ready_file.exists() {
            std::fs::write(&a.ready_file, &lease.id)?;
        }
        let mut conn = lease.connect(Polling::Block)?;
        let mut buf = Vec::new();
        while !a.stop_file.exists() && t0.elapsed() < max {
            match conn.invoke_into(&a.function, &[], Some(Duration::from_secs(30)), &mut buf) {
                Ok(()) => out.completions_unix_ms.push(now_ms()),
                Err(e) => {
                    out.errors.push(format!("lease {}: {e}", lease.id));
                    break;
                }
            }
        }
        let _ = rt.block_on(sched.release(&lease.id));
    }
    let tmp = a.out.with_extension("tmp");
    std::fs::File::create(&tmp)?.write_all(serde_json::to_string(&out)?.as_bytes())?;
    std::fs::rename(&tmp, &a.out)?;
    Ok(())
}

/// Pins every thread of this process to `cpus` (`taskset`, as the workspace has no `unsafe` for
/// `sched_setaffinity`).
pub(crate) fn pin_to(cpus: &[u32]) -> Result<()> {
    anyhow::ensure!(!cpus.is_empty(), "the lease names no CPU");
    let list = cpus.iter().copied().collect::<CpuSet>().to_list();
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &list])
        .arg(std::process::id().to_string())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "taskset: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
