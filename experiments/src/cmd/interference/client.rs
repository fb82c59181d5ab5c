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
    #[command(flatten)]
    files: ClientFiles,
}

/// What an experiment and its hidden client agree on (interference's and remote-memory's):
/// where the client says its first lease is ready, the file whose appearance stops it, where its
/// result goes, and the most it runs.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ClientFiles {
    /// Written once the first lease is ready: its id.
    #[arg(long)]
    pub(crate) ready_file: PathBuf,
    /// The client stops when this file appears.
    #[arg(long)]
    pub(crate) stop_file: PathBuf,
    /// The client's result (JSON), written whole when it ends.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The most the client runs (seconds).
    #[arg(long, default_value_t = 900)]
    pub(crate) max_seconds: u64,
}

impl ClientFiles {
    /// The most the client runs.
    pub(crate) fn max(&self) -> Duration {
        Duration::from_secs(self.max_seconds)
    }

    /// Whether the client is to stop: the stop file appeared, or `max` has passed since `t0`.
    pub(crate) fn stopped(&self, t0: Instant) -> bool {
        self.stop_file.exists() || t0.elapsed() >= self.max()
    }

    /// Says the first lease, `lease`, is ready (later leases leave the file as it is).
    pub(crate) fn ready(&self, lease: &str) -> std::io::Result<()> {
        if self.ready_file.exists() {
            return Ok(());
        }
        std::fs::write(&self.ready_file, lease)
    }

    /// Writes the result to `out` whole (beside it, then renamed): the experiment reads a
    /// complete file or none.
    pub(crate) fn write_out(&self, text: &str) -> std::io::Result<()> {
        write_whole(&self.out, text.as_bytes())
    }
}

/// Writes `bytes` to `path` whole: to `<path>.tmp`, then renamed over `path`, so a reader sees
/// all of it or nothing.
pub(crate) fn write_whole(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp)?.write_all(bytes)?;
    std::fs::rename(&tmp, path)
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
    let files = &a.files;
    while !files.stopped(t0) {
        let mut req = LeaseRequest::new(1, library.clone());
        req.memory_mib = 256;
        req.lifetime = Some(files.max());
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
        files.ready(&lease.id)?;
        let mut conn = lease.connect(Polling::Block)?;
        let mut buf = Vec::new();
        while !files.stopped(t0) {
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
    files.write_out(&serde_json::to_string(&out)?)?;
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
