//! `offload`: the paper's offloading example on the local cluster. An application, run as a
//! batch job step, prices a batch of options (Black-Scholes, after PARSEC) on its own cores
//! and, through a harvest lease, on idle cores beside it, taking chunks from one queue so that
//! the faster side takes more.
//!
//! Four timings of the same batch, each the median of `--repeats`: one thread (the baseline),
//! the job's own threads alone (the paper's "OpenMP"), the lease's functions alone, both
//! together; and the largest difference between any price computed remotely and the serial
//! one. The job runs on n1 with `--threads` CPUs while filler jobs take the other nodes, so the lease can
//! only use n1's idle CPUs (on the local cluster every node is the same machine: a lease on n2
//! would share the job's physical cores).
//!
//! The application's own threads run the kernel in Rust ([`price`]), the functions in C
//! (blackscholes.c), with the same operations in the same order, so the prices agree.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harvest_client::{LeaseExt, LeaseRequest, Library, Polling};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ensure_user, machine_line, repo_root};

const USER: &str = "harvest-peers-user";
/// Values per option in the input (S, K, r, v, T) and per price in the output (call, put).
const IN: usize = 5;
const OUT: usize = 2;

/// Arguments of `harvest-experiments offload`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Options in the batch.
    #[arg(long, default_value_t = 4_000_000)]
    pub options: usize,
    /// Options per chunk (one function call, or one turn of a local thread).
    #[arg(long, default_value_t = 16_384)]
    pub chunk: usize,
    /// The job's own threads (its CPUs on n1).
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Cores of the harvest lease beside the job.
    #[arg(long, default_value_t = 1)]
    pub lease_cores: u32,
    /// Times each option is priced (PARSEC's NUM_RUNS, 100 in its inputs): the work per byte
    /// sent. 1 makes the batch bound by moving data; the summary says which was run.
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
    /// Runs of each configuration (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// A short run (200,000 options, 2 repeats) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Where summary.json and README.md go [default: experiments/results/offload].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The application (`harvest-experiments offload-app`, hidden), run inside the job step.
#[derive(Debug, Clone, clap::Args)]
pub struct AppArgs {
    #[arg(long)]
    pub scheduler: String,
    /// The function library (blackscholes.c).
    #[arg(long)]
    pub lib: PathBuf,
    #[arg(long)]
    pub options: usize,
    #[arg(long)]
    pub chunk: usize,
    #[arg(long)]
    pub threads: u32,
    #[arg(long)]
    pub lease_cores: u32,
    #[arg(long)]
    pub passes: u32,
    #[arg(long)]
    pub repeats: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct AppResult {
    serial_s: f64,
    local_s: f64,
    functions_s: f64,
    combined_s: f64,
    /// Chunks the functions took in the combined runs, out of all.
    combined_remote_share: f64,
    max_abs_diff: f64,
    lease_node: String,
    lease_cpus: Vec<u32>,
    job_cpus: String,
}

#[derive(Debug, Serialize)]
struct Summary {
    machine: String,
    options: usize,
    chunk: usize,
    threads: u32,
    lease_cores: u32,
    passes: u32,
    repeats: usize,
    serial_s: f64,
    local_s: f64,
    functions_s: f64,
    combined_s: f64,
    speedup_local: f64,
    speedup_functions: f64,
    speedup_combined: f64,
    combined_over_local: f64,
    combined_remote_share: f64,
    max_abs_diff: f64,
    lease_node: String,
    lease_cpus: Vec<u32>,
    job_cpus: String,
    paper: &'static str,
}

/// One option's call and put prices; the same operations as blackscholes.c.
pub fn price(o: &[f64]) -> (f64, f64) {
    let (s, k, r, v, t) = (o[0], o[1], o[2], o[3], o[4]);
    let sq = v * t.sqrt();
    let d1 = ((s / k).ln() + (r + 0.5 * v * v) * t) / sq;
    let d2 = d1 - sq;
    let df = k * (-r * t).exp();
    (s * cndf(d1) - df * cndf(d2), df * cndf(-d2) - s * cndf(-d1))
}

/// PARSEC's polynomial approximation of the cumulative normal distribution.
fn cndf(x: f64) -> f64 {
    let negative = x < 0.0;
    let x = x.abs();
    let k = 1.0 / (1.0 + 0.2316419 * x);
    let poly = k
        * (0.319381530
            + k * (-0.356563782 + k * (1.781477937 + k * (-1.821255978 + k * 1.330274429))));
    let n = 1.0 - 0.3989422804014327 * (-0.5 * x * x).exp() * poly;
    if negative { 1.0 - n } else { n }
}

/// `n` options from a fixed seed: spot and strike 10-100, rate 1-10%, volatility 5-65%, 0.25-2
/// years.
fn options(n: usize) -> Vec<f64> {
    let mut rng = crate::rng::Rng::new(0x0b5c_0ffe);
    let mut v = Vec::with_capacity(n * IN);
    for _ in 0..n {
        v.push(10.0 + 90.0 * rng.unit());
        v.push(10.0 + 90.0 * rng.unit());
        v.push(0.01 + 0.09 * rng.unit());
        v.push(0.05 + 0.60 * rng.unit());
        v.push(0.25 + 1.75 * rng.unit());
    }
    v
}

/// A function's input: the passes, then the options.
fn to_bytes(v: &[f64], passes: u32) -> Vec<u8> {
    u64::from(passes)
        .to_le_bytes()
        .into_iter()
        .chain(v.iter().flat_map(|x| x.to_le_bytes()))
        .collect()
}

/// Prices `chunk` into `out` (call, put per option), `passes` times over.
fn price_chunk(chunk: &[f64], out: &mut [f64], passes: u32) {
    for _ in 0..passes {
        for (o, p) in chunk.chunks_exact(IN).zip(out.chunks_exact_mut(OUT)) {
            (p[0], p[1]) = std::hint::black_box(price(o));
        }
    }
}

/// Runs the application: the four configurations, printed as one JSON line.
pub fn run_app(a: AppArgs) -> Result<()> {
    ensure!(
        a.options > 0 && a.chunk > 0 && a.threads > 0,
        "options, chunk and threads must be positive"
    );
    let input = options(a.options);
    let chunks: Vec<&[f64]> = input.chunks(a.chunk * IN).collect();
    let bytes: Vec<Vec<u8>> = chunks.iter().map(|c| to_bytes(c, a.passes)).collect();

    let mut reference = vec![0.0; a.options * OUT];
    let serial = median(a.repeats, || {
        let t = Instant::now();
        price_chunk(&input, &mut reference, a.passes);
        Ok(t.elapsed())
    })?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut sched = rt
        .block_on(crate::cluster::connect_scheduler(&a.scheduler))
        .context("connecting to the scheduler")?;
    let mut req = LeaseRequest::new(a.lease_cores, Library::read(&a.lib)?);
    req.memory_mib = 512;
    req.lifetime = Some(Duration::from_secs(1800));
    let lease = rt
        .block_on(sched.acquire(&req))
        .context("acquiring the lease")?;
    let job_cpus = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|c| c.trim().to_owned())
            })
        })
        .unwrap_or_default();
    // Beside the job means on its node and on none of its CPUs: anything else (a lease on
    // another local-cluster node shares this machine's cores) measures contention, not offload.
    let node = std::env::var("SLURMD_NODENAME").unwrap_or_default();
    let mine: harvest_core::CpuSet = job_cpus.parse().unwrap_or_default();
    if lease.node != node || lease.cpus.iter().any(|c| mine.contains(*c)) {
        let _ = rt.block_on(sched.release(&lease.id));
        anyhow::bail!(
            "the lease went to {} CPUs {:?}, not beside this job on {node} (CPUs {job_cpus}): fill the other nodes",
            lease.node,
            lease.cpus
        );
    }

    // Every way out releases the lease (an error here would otherwise leave it held until its
    // idle timeout, on the CPU the next run wants).
    let measured = (|| -> Result<(Duration, Duration, Duration, f64, f64)> {
        let local = median(a.repeats, || {
            run(
                &chunks,
                &bytes,
                a.threads as usize,
                None,
                a.options,
                a.passes,
            )
            .map(|r| r.0)
        })?;
        let remote = |threads: usize| -> Result<(Duration, f64, f64)> {
            let mut conns = (0..a.lease_cores)
                .map(|_| lease.connect(Polling::Block))
                .collect::<Result<Vec<_>, _>>()?;
            let (took, share, prices) = run(
                &chunks,
                &bytes,
                threads,
                Some(&mut conns),
                a.options,
                a.passes,
            )?;
            let diff = prices
                .iter()
                .zip(&reference)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f64::max);
            Ok((took, share, diff))
        };
        let mut max_diff: f64 = 0.0;
        let functions = median(a.repeats, || {
            let (t, _, d) = remote(0)?;
            max_diff = max_diff.max(d);
            Ok(t)
        })?;
        let mut shares = Vec::new();
        let combined = median(a.repeats, || {
            let (t, s, d) = remote(a.threads as usize)?;
            max_diff = max_diff.max(d);
            shares.push(s);
            Ok(t)
        })?;
        let share = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
        Ok((local, functions, combined, share, max_diff))
    })();
    let _ = rt.block_on(sched.release(&lease.id));
    let (local, functions, combined, share, max_diff) = measured?;
    let out = AppResult {
        serial_s: serial.as_secs_f64(),
        local_s: local.as_secs_f64(),
        functions_s: functions.as_secs_f64(),
        combined_s: combined.as_secs_f64(),
        combined_remote_share: share,
        max_abs_diff: max_diff,
        lease_node: lease.node.clone(),
        lease_cpus: lease.cpus.clone(),
        job_cpus,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The median of `n` timings.
fn median(n: usize, mut f: impl FnMut() -> Result<Duration>) -> Result<Duration> {
    let mut v = (0..n.max(1)).map(|_| f()).collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v[v.len() / 2])
}

/// Prices every chunk: `threads` local threads and, with `conns`, one thread per connection
/// sending chunks to the lease, all taking the next chunk from one counter. Returns the time,
/// the share of chunks priced remotely and the prices.
fn run(
    chunks: &[&[f64]],
    bytes: &[Vec<u8>],
    threads: usize,
    conns: Option<&mut Vec<harvest_client::ExecutorConnection>>,
    options: usize,
    passes: u32,
) -> Result<(Duration, f64, Vec<f64>)> {
    let next = AtomicUsize::new(0);
    let remote = AtomicUsize::new(0);
    let results: Vec<std::sync::Mutex<Vec<f64>>> =
        chunks.iter().map(|_| Default::default()).collect();
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for _ in 0..threads {
            handles.push(s.spawn(|| -> Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(c) = chunks.get(i) else {
                        return Ok(());
                    };
                    let mut out = vec![0.0; c.len() / IN * OUT];
                    price_chunk(c, &mut out, passes);
                    *results[i].lock().expect("results") = out;
                }
            }));
        }
        if let Some(conns) = conns {
            for conn in conns.iter_mut() {
                let (next, remote, results) = (&next, &remote, &results);
                handles.push(s.spawn(move || -> Result<()> {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = bytes.get(i) else { return Ok(()) };
                        conn.invoke_into(
                            "blackscholes",
                            b,
                            Some(Duration::from_secs(60)),
                            &mut buf,
                        )?;
                        ensure!(
                            buf.len() == (b.len() - 8) / IN * OUT,
                            "the function answered {} bytes for {}",
                            buf.len(),
                            b.len()
                        );
                        *results[i].lock().expect("results") = buf
                            .chunks_exact(8)
                            .map(|x| f64::from_le_bytes(x.try_into().expect("8 bytes")))
                            .collect();
                        remote.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a thread panicked"))??;
        }
        Ok(())
    })?;
    let took = t.elapsed();
    let prices: Vec<f64> = results
        .into_iter()
        .flat_map(|m| m.into_inner().expect("results"))
        .collect();
    ensure!(
        prices.len() == options * OUT,
        "{} prices for {options} options",
        prices.len()
    );
    Ok((
        took,
        remote.load(Ordering::Relaxed) as f64 / chunks.len() as f64,
        prices,
    ))
}

/// Runs the experiment on the local cluster and writes its results.
pub fn run_cmd(args: Args) -> Result<()> {
    let (options, repeats) = if args.quick {
        (200_000, 2)
    } else {
        (args.options, args.repeats)
    };
    let cluster = Cluster::open()
        .context("offload needs the local cluster: deploy/local-cluster up --nodes 2 (as root)")?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("experiments/results/offload"));
    std::fs::create_dir_all(&out_dir)?;
    ensure_user(USER)?;
    let work = tempfile::Builder::new()
        .prefix("harvest-offload-")
        .tempdir()?;
    crate::cmd::peers::set_mode(work.path(), 0o755)?;
    let src = work.path().join("blackscholes.c");
    std::fs::write(&src, include_str!("blackscholes.c"))?;
    let lib = work.path().join("libblackscholes.so");
    let st = Command::new("cc")
        .args(["-O2", "-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-lm")
        .status()?;
    ensure!(st.success(), "cc failed building {}", lib.display());
    crate::cmd::peers::set_mode(&lib, 0o755)?;

    // Every other node filled, so the lease can only go beside the job on n1.
    let harvest = cluster.bin("harvest")?;
    let mut fillers = Vec::new();
    for node in cluster.node_names()?.into_iter().filter(|n| n != "n1") {
        let f = cluster.sbatch(&["-w", &node, "--exclusive", "--wrap", "sleep 3600"])?;
        f.wait_state("RUNNING", Duration::from_secs(30))?;
        cluster.wait_node_full(&harvest, &node)?;
        fillers.push(f);
    }
    let exe = std::env::current_exe()?;
    let mut app = cluster.command("runuser");
    app.args([
        "-u", USER, "--", "srun", "--quiet", "-w", "n1", "-N1", "-n1",
    ])
    // The batch, its byte copy for the functions and the prices: about 110 bytes an option.
    .arg(format!("--mem={}M", 256 + options * 110 / (1 << 20)))
    .arg("-c")
    .arg(args.threads.to_string())
    .arg(&exe)
    .arg("offload-app")
    .args(["--scheduler", cluster.require("HARVEST_SCHEDULER")?])
    .arg("--lib")
    .arg(&lib)
    .args([
        "--options",
        &options.to_string(),
        "--chunk",
        &args.chunk.to_string(),
    ])
    .args([
        "--threads",
        &args.threads.to_string(),
        "--lease-cores",
        &args.lease_cores.to_string(),
    ])
    .args(["--repeats", &repeats.to_string()])
    .args(["--passes", &args.passes.to_string()]);
    let r: Result<AppResult> = crate::cmd::peers::driver_output(app, "the offload application");
    drop(fillers);
    let r = r?;
    let s = Summary {
        machine: machine_line(),
        options,
        chunk: args.chunk,
        threads: args.threads,
        lease_cores: args.lease_cores,
        passes: args.passes,
        repeats,
        serial_s: r.serial_s,
        local_s: r.local_s,
        functions_s: r.functions_s,
        combined_s: r.combined_s,
        speedup_local: r.serial_s / r.local_s,
        speedup_functions: r.serial_s / r.functions_s,
        speedup_combined: r.serial_s / r.combined_s,
        combined_over_local: r.local_s / r.combined_s,
        combined_remote_share: r.combined_remote_share,
        max_abs_diff: r.max_abs_diff,
        lease_node: r.lease_node,
        lease_cpus: r.lease_cpus,
        job_cpus: r.job_cpus,
        paper: "Copik et al. (IPDPS 2024), Black-Scholes on 32 + 32 cores: 16.7x with OpenMP alone, 14.5x with functions alone, about 28.9x combined",
    };
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&s)? + "\n",
    )?;
    let table = format!(
        "# offload{quick}\n\n{machine}. `harvest-experiments offload{quick_flag}{passes_flag}`: {options} options in chunks of {chunk}, each priced {passes} time(s), the job's {threads} thread(s) on CPUs {job_cpus} of n1, a {cores}-core lease on {node} CPUs {lcpus:?}; medians of {repeats} runs.\n\n\
         | configuration | time | speedup over one thread |\n|---|---|---|\n\
         | one thread | {:.3} s | 1.00x |\n| the job's threads alone | {:.3} s | {:.2}x |\n| harvest functions alone | {:.3} s | {:.2}x |\n| both (one chunk queue) | {:.3} s | {:.2}x |\n\n\
         Both over the job's threads alone: {:.2}x; the functions took {:.0}% of the chunks. Largest difference between a price computed by a function and the serial one: {:e}.\n\nThe paper: {}.\n",
        s.serial_s,
        s.local_s,
        s.speedup_local,
        s.functions_s,
        s.speedup_functions,
        s.combined_s,
        s.speedup_combined,
        s.combined_over_local,
        s.combined_remote_share * 100.0,
        s.max_abs_diff,
        s.paper,
        quick = if args.quick { " (quick)" } else { "" },
        quick_flag = if args.quick { " --quick" } else { "" },
        passes_flag = if args.passes == 1 {
            String::new()
        } else {
            format!(" --passes {} --options {}", args.passes, s.options)
        },
        passes = s.passes,
        machine = s.machine,
        options = s.options,
        chunk = s.chunk,
        threads = s.threads,
        job_cpus = s.job_cpus,
        cores = s.lease_cores,
        node = s.lease_node,
        lcpus = s.lease_cpus,
        repeats = s.repeats,
    );
    std::fs::write(out_dir.join("README.md"), &table)?;
    std::io::stdout().write_all(table.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_match_textbook_values_and_put_call_parity() {
        // S=K=100, r=5%, v=20%, T=1: call 10.4506, put 5.5735 (exact CNDF); PARSEC's
        // polynomial is good to about 1e-7 in the CNDF, so to 1e-4 here.
        let (call, put) = price(&[100.0, 100.0, 0.05, 0.2, 1.0]);
        assert!((call - 10.4506).abs() < 1e-3, "{call}");
        assert!((put - 5.5735).abs() < 1e-3, "{put}");
        for o in options(1000).chunks_exact(IN) {
            let (c, p) = price(o);
            // Parity: C - P = S - K e^{-rT}, up to the approximation.
            let parity = o[0] - o[1] * (-o[2] * o[4]).exp();
            assert!((c - p - parity).abs() < 1e-4 * o[0], "{o:?}: {c} {p}");
            // Far out of the money the approximation can dip a hair below zero.
            assert!(c > -1e-6 && p > -1e-6, "{o:?}: {c} {p}");
        }
    }

    #[test]
    fn cndf_is_a_distribution() {
        assert!((cndf(0.0) - 0.5).abs() < 1e-7);
        assert!((cndf(1.96) - 0.975).abs() < 1e-4);
        assert!((cndf(-1.0) + cndf(1.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn local_threads_price_every_chunk_in_place() {
        let input = options(1000);
        let chunks: Vec<&[f64]> = input.chunks(64 * IN).collect();
        let bytes: Vec<Vec<u8>> = chunks.iter().map(|c| to_bytes(c, 2)).collect();
        assert_eq!(bytes[0].len(), 8 + 64 * IN * 8);
        assert_eq!(bytes[0][..8], 2u64.to_le_bytes());
        let mut serial = vec![0.0; 1000 * OUT];
        price_chunk(&input, &mut serial, 1);
        let (_, share, prices) = run(&chunks, &bytes, 3, None, 1000, 2).unwrap();
        assert_eq!(share, 0.0);
        assert_eq!(prices, serial);
    }
}
