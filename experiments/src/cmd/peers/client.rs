//! The Rust client's side of compare-peers (`harvest-experiments peers-client`, hidden), run as
//! an ordinary user: one lease through `harvest_client`, then the plan's workloads, measured as
//! python/bench/peers.py measures them; one JSON object on stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harvest_client::{ExecutorConnection, LeaseExt, LeaseRequest, Library, Polling};
use harvest_core::CpuSet;

use super::cpu::tree_cpu_s;
use super::{DriverOutput, Workload, WorkloadResult, percentile};

/// Arguments of the hidden `peers-client`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Scheduler addresses, comma-separated.
    #[arg(long)]
    pub scheduler: String,
    /// The function library (peer.c: `echo`, `kernel`).
    #[arg(long)]
    pub lib: PathBuf,
    /// The workloads (JSON).
    #[arg(long)]
    pub plan: PathBuf,
    /// Cores of the lease; as many connections serve the concurrent calls.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Pids whose process trees count as the framework (comma-separated).
    #[arg(long, default_value = "")]
    pub cpu_roots: String,
    /// rFaaS's hot invocations: the lease's executor is always hot (its workers busy-poll for
    /// requests, `--hot always`) and the first connection (the sequential calls') busy-polls for
    /// its answers, a core spent waiting on each side; the other connections block. Without it
    /// the lease is warm (the default: workers sleep in `poll`) and every connection blocks.
    #[arg(long)]
    pub spin: bool,
    /// Pin this client to the host's CPUs outside its lease (as a client on another node would
    /// be): a spinning client on the lease's CPUs takes them from the executor, whose group runs
    /// at the lowest weight. Fails when the lease holds every CPU.
    #[arg(long)]
    pub pin_outside_lease: bool,
}

/// The host's online CPUs (`/sys/devices/system/cpu/online`) that `lease` does not hold.
fn cpus_outside(lease: &[u32]) -> Result<Vec<u32>> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .context("reading /sys/devices/system/cpu/online")?;
    let online = CpuSet::parse_list(online.trim())
        .with_context(|| format!("parsing the online CPUs {online:?}"))?;
    let outside: Vec<u32> = online.iter().filter(|c| !lease.contains(c)).collect();
    ensure!(
        !outside.is_empty(),
        "the lease holds every online CPU ({}): no CPU is left to pin the client to; use fewer --workers",
        online.to_list()
    );
    Ok(outside)
}

/// Runs the plan and prints the result.
pub fn run_client(a: ClientArgs) -> Result<()> {
    let plan: Vec<Workload> = serde_json::from_slice(&std::fs::read(&a.plan)?)?;
    let mut roots = super::parse_pids(&a.cpu_roots)?;
    roots.push(std::process::id());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t0 = Instant::now();
    let mut sched = rt
        .block_on(crate::cluster::connect_scheduler(&a.scheduler))
        .context("connecting to the scheduler")?;
    let mut req = LeaseRequest::new(a.workers, Library::read(&a.lib)?);
    req.memory_mib = 256;
    req.lifetime = Some(Duration::from_secs(1800));
    if a.spin {
        req.hot_window = Some(harvest_core::HotWindow::Always);
    }
    let lease = rt
        .block_on(sched.acquire(&req))
        .context("acquiring a lease")?;
    let pinned = if a.pin_outside_lease {
        let cpus = cpus_outside(&lease.cpus)?;
        crate::cmd::interference::client::pin_to(&cpus)?;
        Some(cpus.iter().copied().collect::<CpuSet>().to_list())
    } else {
        None
    };
    let mut conns: Vec<ExecutorConnection> = (0..a.workers)
        .map(|i| {
            lease.connect(if a.spin && i == 0 {
                Polling::Spin
            } else {
                Polling::Block
            })
        })
        .collect::<Result<_, _>>()?;
    let first = conns[0].invoke("echo", b"x", None)?;
    ensure!(first == b"x", "echo answered {first:?}");
    let first_result_ms = t0.elapsed().as_secs_f64() * 1000.0;

    let mut rows = Vec::new();
    for w in &plan {
        let data = vec![7u8; w.payload_bytes];
        let cpu0 = tree_cpu_s(&roots)?;
        let all = Instant::now();
        let mut rtt = Vec::with_capacity(w.sequential);
        let mut out = Vec::new();
        for _ in 0..w.sequential {
            let t = Instant::now();
            conns[0].invoke_into(&w.function, &data, None, &mut out)?;
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
            ensure!(
                out.len() == data.len(),
                "{} answered {} bytes",
                w.function,
                out.len()
            );
        }
        // Concurrent calls: each connection pipelines up to its share of `in_flight`.
        let started = Instant::now();
        let done = concurrent(&mut conns, w, &data)?;
        let took = started.elapsed().as_secs_f64();
        rows.push(WorkloadResult {
            workload: w.name.clone(),
            payload_bytes: w.payload_bytes,
            sequential: rtt.len(),
            p50_us: percentile(&rtt, 0.5),
            p99_us: percentile(&rtt, 0.99),
            tasks: done,
            in_flight: w.in_flight,
            throughput_per_s: done as f64 / took,
            cpu_s_raw: tree_cpu_s(&roots)? - cpu0,
            wall_s: all.elapsed().as_secs_f64(),
        });
        eprintln!(
            "peers-client: {}: p50 {:.1} us, {:.0}/s",
            w.name,
            rows.last().unwrap().p50_us,
            done as f64 / took
        );
    }
    drop(conns);
    let _ = rt.block_on(sched.release(&lease.id));
    let out = DriverOutput {
        first_result_ms,
        workloads: rows,
        version: format!(
            "harvest Rust client {}{}{}",
            env!("CARGO_PKG_VERSION"),
            if a.spin {
                " (hot: the executor and the sequential calls spin)"
            } else {
                ""
            },
            match &pinned {
                Some(cpus) => format!(
                    ", {}-core lease on CPUs {}, client pinned to CPUs {cpus}",
                    a.workers,
                    lease.cpus.iter().copied().collect::<CpuSet>().to_list()
                ),
                None => String::new(),
            }
        ),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// `w.tasks` calls over every connection, a thread each, at most `w.in_flight` outstanding in
/// all (pipelined per connection; one at a time per connection past 16 KiB, where a pipeline of
/// large inputs and outputs could fill both directions' socket buffers); returns how many were
/// answered.
fn concurrent(conns: &mut [ExecutorConnection], w: &Workload, data: &[u8]) -> Result<usize> {
    let depth = if w.payload_bytes > 16 * 1024 {
        1
    } else {
        w.in_flight.div_ceil(conns.len()).max(1)
    };
    let n = conns.len();
    let results: Vec<Result<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                // An even share of the tasks per connection.
                let quota = w.tasks / n + usize::from(i < w.tasks % n);
                scope.spawn(move || -> Result<usize> {
                    let mut out = Vec::new();
                    let (mut sent, mut done) = (0, 0);
                    while done < quota {
                        while sent < quota && sent - done < depth {
                            c.submit(&w.function, data, None)?;
                            sent += 1;
                        }
                        c.wait_into(&mut out, Some(Duration::from_secs(60)))?;
                        ensure!(
                            out.len() == data.len(),
                            "a concurrent call answered {} bytes",
                            out.len()
                        );
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client thread panicked")))
            })
            .collect()
    });
    results.into_iter().sum()
}
