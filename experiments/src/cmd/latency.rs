//! `latency`: the invocation round trip, hot and warm, beside its floors.
//!
//! In one run, on this machine: a no-op function (it echoes its input, so the payload crosses the
//! wire both ways, as in rFaaS's benchmark) invoked through a real `harvest-executor` supervisor
//! and worker, in hot mode (the worker busy-polls, the client spins) and warm mode (both block);
//! a raw TCP ping-pong of the same sizes that busy-polls (the floor for hot) and one that blocks
//! (the floor for warm); and `srun` of the same work on the local cluster, what users do today.
//! The executor and the raw echo server run as separate processes, like a real executor. The four
//! configurations of a size are measured interleaved, in blocks of round trips, so that drift on a
//! shared machine hits them alike; spinning sides spin for 1 ms after each message, then block, so
//! a configuration waiting for its turn does not steal a core from the one being measured.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harvest_client::{ExecutorConnection, Polling};
use harvest_core::invoke::auth::LeaseSecret;
use serde::Serialize;

/// Arguments of `harvest-experiments latency`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Round trips per size and mode.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// `srun` round trips (each takes tens of milliseconds).
    #[arg(long, default_value_t = 30)]
    srun_iterations: usize,
    /// A short run (500 round trips, 5 srun) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// Where to write summary.json [default: experiments/results/latency].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the srun baseline (no local cluster needed).
    #[arg(long)]
    no_srun: bool,
}

/// Hidden helper processes the benchmark starts from its own binary.
#[derive(Debug, clap::Args)]
pub struct RawEchoArgs {
    /// Busy-poll instead of blocking.
    #[arg(long)]
    spin: bool,
    /// File to write the bound address to.
    #[arg(long)]
    ready_file: PathBuf,
}

const SIZES: [usize; 3] = [1, 1024, 64 * 1024];

#[derive(Debug, Serialize)]
struct SizeSummary {
    size: usize,
    hot_p50_us: f64,
    hot_p99_us: f64,
    warm_p50_us: f64,
    warm_p99_us: f64,
    raw_busy_p50_us: f64,
    raw_busy_p99_us: f64,
    raw_block_p50_us: f64,
    raw_block_p99_us: f64,
    hot_over_raw_busy_p50: f64,
    warm_over_raw_block_p50: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    iterations: usize,
    sizes: Vec<SizeSummary>,
    srun_p50_us: Option<f64>,
    srun_p99_us: Option<f64>,
    srun_note: String,
    machine: String,
}

/// Runs the benchmark and writes `summary.json`.
pub fn run_cmd(args: Args) -> Result<()> {
    let iterations = if args.quick { 500 } else { args.iterations };
    let srun_iterations = if args.quick { 5 } else { args.srun_iterations };
    let work = tempfile::tempdir()?;
    let lib = build_noop_library(work.path())?;

    let mut sizes = Vec::new();
    for &size in &SIZES {
        eprintln!("latency: {size} B ...");
        // All four side by side, interleaved in blocks, so drift on a shared machine (another
        // process, frequency, the page cache) hits every configuration alike. Spinning sides
        // spin for a 1 ms window after each message, then block: a configuration waiting for
        // its turn must not steal a core from the one being measured.
        // The executors serve only holders of their lease secret, as harvestd's do.
        let secret = LeaseSecret::random()?;
        let hot_exec = Helper::executor(work.path(), &lib, "1ms", &secret)?;
        let warm_exec = Helper::executor(work.path(), &lib, "warm", &secret)?;
        let spin_srv = Helper::raw_echo(work.path(), true)?;
        let block_srv = Helper::raw_echo(work.path(), false)?;
        let mut pingers = [
            Pinger::executor(hot_exec.addr, Polling::Spin, size, &secret)?,
            Pinger::executor(warm_exec.addr, Polling::Block, size, &secret)?,
            Pinger::raw(spin_srv.addr, true, size)?,
            Pinger::raw(block_srv.addr, false, size)?,
        ];
        let mut samples: [Vec<Duration>; 4] = Default::default();
        let blocks = iterations.div_ceil(BLOCK);
        for _ in 0..blocks {
            for (pinger, out) in pingers.iter_mut().zip(samples.iter_mut()) {
                for _ in 0..BLOCK_WARMUP {
                    pinger.ping()?;
                }
                for _ in 0..BLOCK {
                    out.push(pinger.ping()?);
                }
            }
        }
        let [hot, warm, raw_busy, raw_block] = samples;
        let s = SizeSummary {
            size,
            hot_p50_us: pct(&hot, 50.0),
            hot_p99_us: pct(&hot, 99.0),
            warm_p50_us: pct(&warm, 50.0),
            warm_p99_us: pct(&warm, 99.0),
            raw_busy_p50_us: pct(&raw_busy, 50.0),
            raw_busy_p99_us: pct(&raw_busy, 99.0),
            raw_block_p50_us: pct(&raw_block, 50.0),
            raw_block_p99_us: pct(&raw_block, 99.0),
            hot_over_raw_busy_p50: pct(&hot, 50.0) / pct(&raw_busy, 50.0),
            warm_over_raw_block_p50: pct(&warm, 50.0) / pct(&raw_block, 50.0),
        };
        sizes.push(s);
    }

    let (srun_p50_us, srun_p99_us, srun_note) = if args.no_srun {
        (None, None, "skipped (--no-srun)".to_owned())
    } else {
        match measure_srun(srun_iterations) {
            Ok(v) => (
                Some(pct(&v, 50.0)),
                Some(pct(&v, 99.0)),
                format!("srun -N1 -n1 true, {} runs, on the local cluster", v.len()),
            ),
            Err(e) => (None, None, format!("not measured: {e:#}")),
        }
    };

    let summary = Summary {
        iterations,
        sizes,
        srun_p50_us,
        srun_p99_us,
        srun_note,
        machine: machine_line(),
    };
    print_table(&summary);
    let out = args
        .out
        .unwrap_or_else(|| super::results_root().join("latency"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("latency: wrote {}", path.display());
    Ok(())
}

fn print_table(s: &Summary) {
    println!(
        "{:>7} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>8} {:>8}",
        "size",
        "hot p50",
        "hot p99",
        "raw-spin",
        "p99",
        "warm p50",
        "warm p99",
        "raw-blk",
        "p99",
        "hot/raw",
        "warm/raw"
    );
    for z in &s.sizes {
        println!(
            "{:>7} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>9.1} {:>9.1} | {:>7.2}x {:>7.2}x",
            z.size,
            z.hot_p50_us,
            z.hot_p99_us,
            z.raw_busy_p50_us,
            z.raw_busy_p99_us,
            z.warm_p50_us,
            z.warm_p99_us,
            z.raw_block_p50_us,
            z.raw_block_p99_us,
            z.hot_over_raw_busy_p50,
            z.warm_over_raw_block_p50
        );
    }
    match s.srun_p50_us {
        Some(p50) => println!(
            "srun (same work as a job step): p50 {:.0} us, p99 {:.0} us",
            p50,
            s.srun_p99_us.unwrap_or(f64::NAN)
        ),
        None => println!("srun: {}", s.srun_note),
    }
    println!(
        "(microseconds, round trip; {} iterations per cell)",
        s.iterations
    );
}

/// The p-th percentile of `v` (sorted in place) in microseconds.
fn pct(v: &[Duration], p: f64) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx.min(s.len() - 1)].as_secs_f64() * 1e6
}

fn build_noop_library(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("noop.c");
    std::fs::write(
        &src,
        "#include <stdint.h>\n#include <string.h>\n\
         uint32_t noop(void *in, uint32_t len, void *out) { memcpy(out, in, len); return len; }\n",
    )?;
    let so = dir.join("libnoop.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .context("running the C compiler (cc) to build the no-op function")?;
    if !status.success() {
        bail!("cc failed to build {}", src.display());
    }
    Ok(so)
}

/// A helper process (executor or raw echo server), killed and reaped on drop.
struct Helper {
    child: Child,
    addr: SocketAddr,
}

impl Helper {
    fn executor(dir: &Path, lib: &Path, hot: &str, secret: &LeaseSecret) -> Result<Self> {
        let ready = dir.join(format!("executor-{hot}.addr"));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args([
            "serve-executor",
            "--hot",
            hot,
            "--max-output",
            "1M",
            "--lib",
        ])
        .arg(lib)
        .arg("--ready-file")
        .arg(&ready)
        .env(harvest_executor::config::SECRET_ENV, secret.to_hex());
        Self::spawn(cmd, &ready)
    }

    fn raw_echo(dir: &Path, spin: bool) -> Result<Self> {
        let ready = dir.join(format!("raw-{spin}.addr"));
        let _ = std::fs::remove_file(&ready);
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("raw-echo-server").arg("--ready-file").arg(&ready);
        if spin {
            cmd.arg("--spin");
        }
        Self::spawn(cmd, &ready)
    }

    fn spawn(mut cmd: Command, ready: &Path) -> Result<Self> {
        let child = cmd.stdout(Stdio::null()).env("RUST_LOG", "error").spawn()?;
        let mut helper = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(ready)
                && let Ok(addr) = text.trim().parse()
            {
                helper.addr = addr;
                return Ok(helper);
            }
            if let Some(status) = helper.child.try_wait()? {
                bail!("helper process exited at start with {status}");
            }
            if Instant::now() > deadline {
                bail!("helper process did not become ready within 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // Our own child, by pid: SIGTERM lets an executor stop its workers.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

/// Round trips per block of one configuration, and unmeasured ones before each block.
const BLOCK: usize = 200;
const BLOCK_WARMUP: usize = 20;

/// One configuration's connection: sends `size` bytes and waits for them back.
enum Pinger {
    Executor {
        conn: ExecutorConnection,
        input: Vec<u8>,
        out: Vec<u8>,
    },
    Raw {
        stream: TcpStream,
        msg: Vec<u8>,
        back: Vec<u8>,
    },
}

impl Pinger {
    fn executor(
        addr: SocketAddr,
        polling: Polling,
        size: usize,
        secret: &LeaseSecret,
    ) -> Result<Self> {
        Ok(Self::Executor {
            conn: ExecutorConnection::connect(addr, polling, secret)?,
            input: vec![0x5au8; size],
            out: Vec::with_capacity(size + 16),
        })
    }

    fn raw(addr: SocketAddr, spin: bool, size: usize) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(spin)?;
        let mut msg = vec![0x5au8; 4 + size];
        msg[..4].copy_from_slice(&(size as u32).to_le_bytes());
        Ok(Self::Raw {
            stream,
            back: vec![0u8; msg.len()],
            msg,
        })
    }

    fn ping(&mut self) -> Result<Duration> {
        let t = Instant::now();
        match self {
            Self::Executor { conn, input, out } => {
                conn.invoke_into("noop", input, None, out)?;
                let dt = t.elapsed();
                if out.len() != input.len() {
                    bail!("the no-op returned {} bytes for {}", out.len(), input.len());
                }
                Ok(dt)
            }
            Self::Raw { stream, msg, back } => {
                write_full(stream, msg)?;
                if !read_full(stream, back, None)? {
                    bail!("the raw echo server closed the connection");
                }
                Ok(t.elapsed())
            }
        }
    }
}

fn write_full(s: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match s.write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes; false on a clean end of stream. On a non-blocking socket it
/// spins, until `spin_until` (if given) passes: then it sleeps in one blocking read.
fn read_full(
    s: &mut TcpStream,
    buf: &mut [u8],
    spin_until: Option<Instant>,
) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let read = match s.read(&mut buf[got..]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if spin_until.is_none_or(|t| Instant::now() < t) {
                    std::hint::spin_loop();
                    continue;
                }
                s.set_nonblocking(false)?;
                let r = s.read(&mut buf[got..]);
                s.set_nonblocking(true)?;
                r
            }
            r => r,
        };
        match read {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The raw TCP echo server: length-prefixed messages back as they came.
pub fn raw_echo_server(args: RawEchoArgs) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    crate::cmd::interference::write_whole(
        &args.ready_file,
        l.local_addr()?.to_string().as_bytes(),
    )?;
    let (mut s, _) = l.accept()?;
    s.set_nodelay(true)?;
    s.set_nonblocking(args.spin)?;
    let mut buf = Vec::new();
    // Like the executor's hot window: spin for a while after each message, then block.
    let window = Duration::from_millis(1);
    let mut last = Instant::now();
    loop {
        let mut prefix = [0u8; 4];
        if !read_full(&mut s, &mut prefix, Some(last + window))? {
            return Ok(());
        }
        buf.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
        buf[..4].copy_from_slice(&prefix);
        if !read_full(&mut s, &mut buf[4..], None)? {
            return Ok(());
        }
        write_full(&mut s, &buf)?;
        last = Instant::now();
    }
}

fn measure_srun(n: usize) -> Result<Vec<Duration>> {
    if std::env::var_os("SLURM_CONF").is_none() {
        bail!(
            "SLURM_CONF is not set: run `eval \"$(deploy/local-cluster env)\"` with the cluster up"
        );
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = Command::new("srun").args(["-N1", "-n1", "true"]).output()?;
        let dt = t.elapsed();
        if !out.status.success() {
            bail!(
                "srun failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        samples.push(dt);
    }
    Ok(samples)
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cpus} CPUs, {model}, loopback TCP")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert!((pct(&v, 50.0) - 51.0).abs() < 1.01);
        assert!((pct(&v, 99.0) - 99.0).abs() < 1.01);
        assert!(pct(&[], 50.0).is_nan());
    }
}
