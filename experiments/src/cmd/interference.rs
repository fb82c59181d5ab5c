//! `interference`: does harvest's interference control keep a sharing-sensitive batch job fast
//! beside aggressive functions, and what does it cost the functions?
//!
//! On the real local cluster (brought up with `deploy/local-cluster up --nodes 1` unless the
//! environment already names one), in rounds, each with three phases:
//! 1. **alone**: a STREAM-triad batch job (`experiments/kernels/stream_job.c`, one CPU, arrays
//!    beyond the last-level cache, reporting its progress to harvestd) runs for a fixed time;
//! 2. **uncontrolled**: the same job, while a client (as an ordinary user) leases the node's idle
//!    CPU and invokes a cache- and bandwidth-thrashing C function (`kernels/thrash.c`) in a
//!    loop, with harvestd's interference control off (`[interference] enabled = false`);
//! 3. **controlled**: the same, with harvestd's default interference control.
//!
//! harvestd is restarted with the phase's configuration between phases (by the pid the cluster
//! recorded; its executors are re-adopted). A phase's job rate is its chunks per second of CPU
//! time it got, over the whole run (this machine is shared: other work time-slices the job's
//! CPU, which is not the functions' doing, since they run on the other CPU; the wall-clock
//! rates are reported beside); slowdown is `alone / phase - 1`; function throughput is the
//! invocations that completed while the job ran, per second. Results: `runs.csv`, `timeline.csv` (per second:
//! the job's rate and the node's control level), `summary.json` and `interference.png`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use harvest_client::identity::Munge;
use harvest_client::{LeaseRequest, Library, Polling, SchedulerClient};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::output::{DEFAULT_FONT, load_font};

/// Arguments of `harvest-experiments interference`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run (one round of 12 s phases) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// How long each phase's batch job runs, in seconds.
    #[arg(long, default_value_t = 30)]
    job_seconds: u64,
    /// Rounds of (alone, uncontrolled, controlled), interleaved so drift hits all alike.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Size of each of the job's three arrays, MiB (beyond the last-level cache).
    #[arg(long, default_value_t = 32)]
    array_mib: u64,
    /// harvestd configuration for the controlled phase [default: harvestd's defaults].
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// The ordinary user the functions run as (created if missing).
    #[arg(long, default_value = "harvest-exp")]
    user: String,
    /// Where results go [default: experiments/results/interference].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Font for the plot.
    #[arg(long, default_value = DEFAULT_FONT)]
    font: PathBuf,
    /// Before each phase, wait up to this many seconds for the machine to be quiet (other work
    /// below 0.3 CPUs over 2 s); 0 does not wait.
    #[arg(long, default_value_t = 180)]
    wait_quiet_s: u64,
}

/// Busy and total CPU time of the whole machine so far (`/proc/stat`, in ticks).
fn cpu_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// CPUs busy on the whole machine between two `cpu_ticks`.
fn busy_cpus(a: (u64, u64), b: (u64, u64)) -> f64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let total = b.1.saturating_sub(a.1) as f64;
    if total == 0.0 {
        return 0.0;
    }
    b.0.saturating_sub(a.0) as f64 / total * cpus
}

/// Waits until the machine runs less than 0.3 CPUs of other work, up to `max`; returns the
/// load seen last.
fn wait_quiet(max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    loop {
        let Some(a) = cpu_ticks() else {
            return f64::NAN;
        };
        std::thread::sleep(Duration::from_secs(2));
        let Some(b) = cpu_ticks() else {
            return f64::NAN;
        };
        let busy = busy_cpus(a, b);
        if busy < 0.3 || Instant::now() >= deadline {
            return busy;
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    Alone,
    Uncontrolled,
    Controlled,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Self::Alone => "alone",
            Self::Uncontrolled => "uncontrolled",
            Self::Controlled => "controlled",
        }
    }
}

/// The kernel's JSON line.
#[derive(Debug, Clone, Deserialize)]
struct JobOut {
    chunks: f64,
    seconds: f64,
    cpu_s: f64,
    wait_s: f64,
    chunks_per_s: f64,
    start_unix_ms: i64,
    end_unix_ms: i64,
    per_second: Vec<f64>,
}

/// The client's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ClientOut {
    completions_unix_ms: Vec<i64>,
    leases: Vec<String>,
    errors: Vec<String>,
}

/// One phase's measurements.
#[derive(Debug, Clone, Serialize)]
struct Run {
    round: usize,
    phase: Phase,
    /// Chunks per second of CPU time the job got (the headline rate).
    job_chunks_per_cpu_s: f64,
    /// Chunks per wall-clock second.
    job_chunks_per_s: f64,
    /// The share of the run the job had its CPU, and waited for it.
    job_cpu_share: f64,
    job_wait_share: f64,
    fn_invocations: u64,
    fn_per_s: f64,
    /// (seconds since the job started, level) every half second.
    #[serde(skip)]
    levels: Vec<(f64, String)>,
    max_level: String,
    per_second: Vec<f64>,
    lease_errors: Vec<String>,
    /// CPUs busy on the whole machine while the job ran (job and functions included), and
    /// before the phase (other work only).
    machine_busy_cpus: f64,
    busy_before: f64,
}

/// The local cluster's environment.
#[derive(Debug)]
struct Cluster {
    env: BTreeMap<String, String>,
    dir: PathBuf,
    run_dir: PathBuf,
    scheduler: String,
    node: String,
    /// The harvestd this experiment started (to stop and reap it).
    agent: Option<Child>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `export K='v'` lines into a map; `$PATH` in a value is the current PATH.
fn parse_exports(text: &str) -> BTreeMap<String, String> {
    let path = std::env::var("PATH").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let v = v.replace("\"$PATH\"", &path).replace(['\'', '"'], "");
            (k.to_owned(), v)
        })
        .collect()
}

impl Cluster {
    /// The cluster the environment names, or a one-node one brought up now.
    fn open() -> Result<Self> {
        let have = |k: &str| std::env::var_os(k).is_some();
        let mut env = BTreeMap::new();
        if !(have("SLURM_CONF") && have("HARVEST_SCHEDULER") && have("HARVEST_CLUSTER_DIR")) {
            eprintln!(
                "interference: no cluster in the environment; deploy/local-cluster up --nodes 1"
            );
            let script = repo_root().join("deploy/local-cluster");
            let status = Command::new(&script)
                .args(["up", "--nodes", "1"])
                .stdout(Stdio::inherit())
                .status()
                .with_context(|| format!("running {}", script.display()))?;
            ensure!(status.success(), "deploy/local-cluster up failed");
            let out = Command::new(&script).arg("env").output()?;
            ensure!(out.status.success(), "deploy/local-cluster env failed");
            env = parse_exports(&String::from_utf8_lossy(&out.stdout));
        }
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .or_else(|| std::env::var(k).ok())
                .with_context(|| {
                    format!("{k} is not set: run `eval \"$(deploy/local-cluster env)\"`")
                })
        };
        let mut cluster = Self {
            dir: get("HARVEST_CLUSTER_DIR")?.into(),
            run_dir: get("HARVEST_RUN_DIR")?.into(),
            scheduler: get("HARVEST_SCHEDULER")?,
            node: String::new(),
            env,
            agent: None,
        };
        let out = cluster
            .cmd("sinfo")
            .args(["-h", "-N", "-o", "%N"])
            .output()?;
        ensure!(
            out.status.success(),
            "sinfo failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.node = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .context("sinfo lists no node")?
            .to_owned();
        Ok(cluster)
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.envs(&self.env);
        c
    }

    fn pid_file(&self) -> PathBuf {
        self.run_dir.join(format!("harvestd-{}.pid", self.node))
    }

    /// Restarts the node's harvestd with `config` (none: its defaults), as the cluster runs it.
    fn restart_agent(&mut self, config: Option<&Path>) -> Result<()> {
        if let Some(mut child) = self.agent.take() {
            kill_term(child.id())?;
            child.wait()?;
        } else if let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "harvestd")
        {
            kill_term(pid)?;
            wait_for(Duration::from_secs(30), "harvestd to stop", || {
                !Path::new(&format!("/proc/{pid}")).exists()
            })?;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(
            self.dir
                .join("log")
                .join(format!("harvestd-{}.out", self.node)),
        )?;
        let mut cmd = self.cmd("setsid");
        cmd.arg(self.dir.join("bin/harvestd"))
            .args(["run", "--node", &self.node, "--run-dir"])
            .arg(&self.run_dir)
            .arg("--state-dir")
            .arg(self.dir.join("agent").join(&self.node))
            .args(["--scheduler", &self.scheduler]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting harvestd")?;
        std::fs::write(self.pid_file(), format!("{}\n", child.id()))?;
        self.agent = Some(child);
        let node = self.node.clone();
        wait_for(
            Duration::from_secs(30),
            "harvestd to report to the scheduler",
            || {
                self.nodes_json()
                    .ok()
                    .and_then(|v| node_entry(&v, &node))
                    .is_some_and(|n| {
                        n["state"] == "up"
                            && now_ms() - n["last_report_unix_ms"].as_i64().unwrap_or(0) < 1500
                    })
            },
        )?;
        Ok(())
    }

    fn nodes_json(&self) -> Result<serde_json::Value> {
        let out = self.cmd("harvest").args(["nodes", "--json"]).output()?;
        ensure!(
            out.status.success(),
            "harvest nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The node's interference level now ("-" when the agent reports none).
    fn level(&self) -> String {
        self.nodes_json()
            .ok()
            .and_then(|v| node_entry(&v, &self.node).map(|n| n["interference"]["level"].clone()))
            .and_then(|l| l.as_str().map(str::to_owned))
            .unwrap_or_else(|| "-".into())
    }
}

fn node_entry(v: &serde_json::Value, node: &str) -> Option<serde_json::Value> {
    v.as_array()?.iter().find(|n| n["name"] == node).cloned()
}

fn kill_term(pid: u32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn wait_for(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Compiles the kernel and the function into `dir`.
fn build_kernels(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let job = dir.join("stream_job");
    let lib = dir.join("libthrash.so");
    for (out, args, file) in [
        (&job, vec!["-O2"], "stream_job.c"),
        (&lib, vec!["-O2", "-shared", "-fPIC"], "thrash.c"),
    ] {
        let status = Command::new("cc")
            .args(&args)
            .arg("-o")
            .arg(out)
            .arg(src.join(file))
            .status()
            .context("running the C compiler (cc)")?;
        ensure!(status.success(), "cc failed on {file}");
    }
    Ok((job, lib))
}

fn ensure_user(user: &str) -> Result<()> {
    let known = Command::new("id")
        .args(["-u", user])
        .output()?
        .status
        .success();
    if !known {
        let out = Command::new("useradd")
            .args(["-r", "-M", "-s", "/usr/sbin/nologin", user])
            .output()?;
        ensure!(
            out.status.success(),
            "useradd {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs one phase and measures it.
fn run_phase(
    cl: &Cluster,
    args: &Args,
    work: &Path,
    (job_bin, lib): (&Path, &Path),
    round: usize,
    phase: Phase,
    seconds: u64,
) -> Result<Run> {
    let tag = format!("r{round}-{}", phase.name());
    let job_out = work.join(format!("job-{tag}.out"));
    let progress_dir = cl.run_dir.join("progress");
    let wrap = format!(
        "exec {} {seconds} {} {}",
        job_bin.display(),
        args.array_mib,
        progress_dir.display()
    );
    let out = cl
        .cmd("sbatch")
        .args([
            "--parsable",
            "-N1",
            "-n1",
            "-c1",
            "--mem=512M",
            "-J",
            &tag,
            "-w",
            &cl.node,
            "-o",
        ])
        .arg(&job_out)
        .args(["--wrap", &wrap])
        .output()?;
    ensure!(
        out.status.success(),
        "sbatch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let state = || {
        cl.cmd("squeue")
            .args(["-h", "-j", &job_id, "-o", "%T"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    wait_for(Duration::from_secs(60), "the batch job to start", || {
        let s = state();
        s == "RUNNING" || s.is_empty()
    })?;
    let client_dir = work.join(format!("client-{tag}"));
    let mut client = None;
    if phase != Phase::Alone {
        std::fs::create_dir_all(&client_dir)?;
        let chown = Command::new("chown")
            .arg(&args.user)
            .arg(&client_dir)
            .status()?;
        ensure!(
            chown.success(),
            "chown {} {}",
            args.user,
            client_dir.display()
        );
        let exe = std::env::current_exe()?;
        let child = cl
            .cmd("runuser")
            .args(["-u", &args.user, "--"])
            .arg(exe)
            .args(["interference-client", "--scheduler", &cl.scheduler, "--lib"])
            .arg(lib)
            .arg("--ready-file")
            .arg(client_dir.join("ready"))
            .arg("--stop-file")
            .arg(client_dir.join("stop"))
            .arg("--out")
            .arg(client_dir.join("out.json"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?;
        client = Some(child);
        wait_for(
            Duration::from_secs(30),
            "the function client's first lease",
            || client_dir.join("ready").exists(),
        )?;
    }
    let t0 = Instant::now();
    let ticks0 = cpu_ticks();
    let mut levels = Vec::new();
    while !state().is_empty() {
        levels.push((t0.elapsed().as_secs_f64(), cl.level()));
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            t0.elapsed() < Duration::from_secs(seconds + 120),
            "job {job_id} ran far beyond its {seconds} s"
        );
    }
    let machine_busy_cpus = match (ticks0, cpu_ticks()) {
        (Some(a), Some(b)) => busy_cpus(a, b),
        _ => f64::NAN,
    };
    let mut fn_out = ClientOut::default();
    if let Some(mut child) = client {
        std::fs::write(client_dir.join("stop"), "")?;
        let status = child.wait()?;
        let text = std::fs::read_to_string(client_dir.join("out.json"))
            .with_context(|| format!("the function client ({status}) wrote no result"))?;
        fn_out = serde_json::from_str(&text)?;
    }
    let text = std::fs::read_to_string(&job_out)
        .with_context(|| format!("reading the job's output {}", job_out.display()))?;
    let job: JobOut = text
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no result line in {}: {text}", job_out.display()))?;
    let _ = std::fs::remove_file(progress_dir.join(&job_id));
    let inside = fn_out
        .completions_unix_ms
        .iter()
        .filter(|&&t| t >= job.start_unix_ms && t <= job.end_unix_ms)
        .count() as u64;
    let window_s = (job.end_unix_ms - job.start_unix_ms) as f64 / 1000.0;
    let order = ["-", "none", "weight", "quota", "freeze", "evict"];
    let max_level = levels
        .iter()
        .map(|(_, l)| l.as_str())
        .max_by_key(|l| order.iter().position(|o| o == l))
        .unwrap_or("-")
        .to_owned();
    Ok(Run {
        round,
        phase,
        job_chunks_per_cpu_s: job.chunks / job.cpu_s.max(1e-9),
        job_chunks_per_s: job.chunks_per_s,
        job_cpu_share: job.cpu_s / job.seconds.max(1e-9),
        job_wait_share: job.wait_s / job.seconds.max(1e-9),
        fn_invocations: inside,
        fn_per_s: inside as f64 / window_s.max(1e-9),
        levels,
        max_level,
        per_second: job.per_second,
        lease_errors: fn_out.errors,
        machine_busy_cpus,
        busy_before: f64::NAN,
    })
}

/// The hidden client: leases one core, invokes the function until told to stop; after a lease
/// ends (evicted), it asks for another, as a real client would.
pub fn run_client(a: ClientArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let library = Library::read(&a.lib)?;
    let mut sched = rt.block_on(SchedulerClient::connect(
        &a.scheduler,
        Arc::new(Munge::default()),
    ))?;
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

#[derive(Debug, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    each: Vec<f64>,
}

fn spread(v: &[f64]) -> Spread {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    };
    Spread {
        median,
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        each: v.to_vec(),
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    slowdown_uncontrolled_pct: f64,
    slowdown_controlled_pct: f64,
    function_throughput_kept_pct: f64,
    target: &'static str,
    target_met: bool,
    rounds: usize,
    job_seconds: u64,
    rate: &'static str,
    slowdown_uncontrolled: Spread,
    slowdown_controlled: Spread,
    function_throughput_kept: Spread,
    wall_clock_slowdown_uncontrolled: Spread,
    wall_clock_slowdown_controlled: Spread,
    job_alone_chunks_per_cpu_s: Spread,
    job_cpu_share: BTreeMap<&'static str, Spread>,
    function_uncontrolled_per_s: Spread,
    function_controlled_per_s: Spread,
    controlled_max_levels: Vec<String>,
    /// What the node's signals could not see (from its interference state).
    signals_unavailable: Vec<String>,
    /// Signals it did see, with their latest values, at the end of the last controlled phase.
    signals_seen: Vec<String>,
    interference_actions: serde_json::Value,
    machine: String,
}

/// Runs the experiment and writes its results.
pub fn run_cmd(args: Args) -> Result<()> {
    let (rounds, seconds) = if args.quick {
        (1, 12)
    } else {
        (args.rounds, args.job_seconds)
    };
    ensure!(
        rounds > 0 && seconds >= 5,
        "use --rounds >= 1 and --job-seconds >= 5"
    );
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| super::results_root().join("interference"));
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::Builder::new()
        .prefix("harvest-interference-")
        .tempdir()?;
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let (job_bin, lib) = build_kernels(work.path())?;
    ensure_user(&args.user)?;
    let mut cl = Cluster::open()?;
    eprintln!(
        "interference: node {} of the cluster in {}",
        cl.node,
        cl.dir.display()
    );
    let off = work.path().join("agent-off.toml");
    std::fs::write(&off, "[interference]\nenabled = false\n")?;
    let mut runs = Vec::new();
    let result = (|| -> Result<()> {
        for round in 0..rounds {
            for phase in [Phase::Alone, Phase::Uncontrolled, Phase::Controlled] {
                match phase {
                    Phase::Uncontrolled => cl.restart_agent(Some(&off))?,
                    Phase::Controlled => cl.restart_agent(args.agent_config.as_deref())?,
                    Phase::Alone => {}
                }
                let busy_before = wait_quiet(Duration::from_secs(args.wait_quiet_s));
                eprintln!(
                    "interference: round {} {} ({seconds} s; other work before: {busy_before:.2} CPUs)",
                    round + 1,
                    phase.name()
                );
                let mut run = run_phase(
                    &cl,
                    &args,
                    work.path(),
                    (&job_bin, &lib),
                    round,
                    phase,
                    seconds,
                )?;
                run.busy_before = busy_before;
                eprintln!(
                    "interference:   job {:.0} chunks/CPU-s ({:.0}/s, {:.0}% of a CPU), functions {:.1}/s, max level {}",
                    run.job_chunks_per_cpu_s,
                    run.job_chunks_per_s,
                    run.job_cpu_share * 100.0,
                    run.fn_per_s,
                    run.max_level
                );
                runs.push(run);
            }
        }
        Ok(())
    })();
    // Leave the node's agent as the cluster runs it (harvestd's defaults), whatever happened.
    let final_state = cl.nodes_json().ok().and_then(|v| node_entry(&v, &cl.node));
    if let Err(e) = cl.restart_agent(None) {
        eprintln!("interference: restarting harvestd with its defaults failed: {e:#}");
    }
    result?;
    let summary = summarize(&runs, rounds, seconds, final_state);
    write_results(&out_dir, &runs, &summary, &args.font)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("interference: wrote {}", out_dir.display());
    Ok(())
}

fn summarize(
    runs: &[Run],
    rounds: usize,
    seconds: u64,
    state: Option<serde_json::Value>,
) -> Summary {
    let of =
        |round: usize, phase: Phase| runs.iter().find(|r| r.round == round && r.phase == phase);
    let mut sl_un = Vec::new();
    let mut sl_co = Vec::new();
    let mut wall_un = Vec::new();
    let mut wall_co = Vec::new();
    let mut kept = Vec::new();
    let mut alone = Vec::new();
    let mut f_un = Vec::new();
    let mut f_co = Vec::new();
    let mut maxl = Vec::new();
    for round in 0..rounds {
        let (Some(a), Some(u), Some(c)) = (
            of(round, Phase::Alone),
            of(round, Phase::Uncontrolled),
            of(round, Phase::Controlled),
        ) else {
            continue;
        };
        alone.push(a.job_chunks_per_cpu_s);
        sl_un.push((a.job_chunks_per_cpu_s / u.job_chunks_per_cpu_s - 1.0) * 100.0);
        sl_co.push((a.job_chunks_per_cpu_s / c.job_chunks_per_cpu_s - 1.0) * 100.0);
        wall_un.push((a.job_chunks_per_s / u.job_chunks_per_s - 1.0) * 100.0);
        wall_co.push((a.job_chunks_per_s / c.job_chunks_per_s - 1.0) * 100.0);
        kept.push(c.fn_per_s / u.fn_per_s.max(1e-9) * 100.0);
        f_un.push(u.fn_per_s);
        f_co.push(c.fn_per_s);
        maxl.push(c.max_level.clone());
    }
    let (sl_un, sl_co, kept) = (spread(&sl_un), spread(&sl_co), spread(&kept));
    let share = |p: Phase| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.phase == p)
            .map(|r| r.job_cpu_share)
            .collect();
        (p.name(), spread(&v))
    };
    let interference = state.as_ref().map(|s| s["interference"].clone());
    let strings = |key: &str| -> Vec<String> {
        interference
            .as_ref()
            .and_then(|i| i[key].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let seen = interference
        .as_ref()
        .and_then(|i| i["signals"].as_object().cloned())
        .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
        .unwrap_or_default();
    Summary {
        slowdown_uncontrolled_pct: sl_un.median,
        slowdown_controlled_pct: sl_co.median,
        function_throughput_kept_pct: kept.median,
        target: "slowdown_controlled_pct <= 2 and function_throughput_kept_pct >= 50",
        target_met: sl_co.median <= 2.0 && kept.median >= 50.0,
        rounds,
        job_seconds: seconds,
        rate: "chunks per second of CPU time the job got (wall-clock slowdowns beside)",
        slowdown_uncontrolled: sl_un,
        slowdown_controlled: sl_co,
        function_throughput_kept: kept,
        wall_clock_slowdown_uncontrolled: spread(&wall_un),
        wall_clock_slowdown_controlled: spread(&wall_co),
        job_alone_chunks_per_cpu_s: spread(&alone),
        job_cpu_share: [Phase::Alone, Phase::Uncontrolled, Phase::Controlled]
            .into_iter()
            .map(share)
            .collect(),
        function_uncontrolled_per_s: spread(&f_un),
        function_controlled_per_s: spread(&f_co),
        controlled_max_levels: maxl,
        signals_unavailable: strings("unavailable"),
        signals_seen: seen,
        interference_actions: interference
            .map(|i| i["actions"].clone())
            .unwrap_or(serde_json::Value::Null),
        machine: machine_line(),
    }
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
    format!("{cpus} CPUs, {model}")
}

fn write_results(dir: &Path, runs: &[Run], summary: &Summary, font: &Path) -> Result<()> {
    let mut csv = String::from(
        "round,phase,job_chunks_per_cpu_s,job_chunks_per_s,job_cpu_share,job_wait_share,fn_invocations,fn_per_s,max_level,lease_errors,busy_before_cpus,machine_busy_cpus\n",
    );
    for r in runs {
        csv += &format!(
            "{},{},{:.1},{:.1},{:.3},{:.3},{},{:.2},{},{},{:.2},{:.2}\n",
            r.round + 1,
            r.phase.name(),
            r.job_chunks_per_cpu_s,
            r.job_chunks_per_s,
            r.job_cpu_share,
            r.job_wait_share,
            r.fn_invocations,
            r.fn_per_s,
            r.max_level,
            r.lease_errors.len(),
            r.busy_before,
            r.machine_busy_cpus
        );
    }
    std::fs::write(dir.join("runs.csv"), csv)?;
    let mut tl = String::from("round,phase,second,job_chunks_per_s,level\n");
    for r in runs {
        for (i, rate) in r.per_second.iter().enumerate() {
            let level = r
                .levels
                .iter()
                .rev()
                .find(|(t, _)| *t <= i as f64 + 1.0)
                .map_or("-", |(_, l)| l.as_str());
            tl += &format!(
                "{},{},{},{rate:.0},{level}\n",
                r.round + 1,
                r.phase.name(),
                i + 1
            );
        }
    }
    std::fs::write(dir.join("timeline.csv"), tl)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(summary)? + "\n",
    )?;
    match load_font(font) {
        Ok(()) => plot(&dir.join("interference.png"), runs, summary)?,
        Err(e) => eprintln!("interference: no plot ({e})"),
    }
    Ok(())
}

/// Left: the job's rate per second in round 1, per phase. Right: slowdown and function
/// throughput kept (medians over rounds, min-max whiskers).
fn plot(path: &Path, runs: &[Run], s: &Summary) -> Result<()> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(760);
    let first: Vec<&Run> = runs.iter().filter(|r| r.round == 0).collect();
    let xmax = first.iter().map(|r| r.per_second.len()).max().unwrap_or(1) as f64;
    let ymax = first
        .iter()
        .flat_map(|r| r.per_second.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("batch job progress, round 1", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("chunks / s")
        .draw()?;
    for (r, color) in first.iter().zip([BLACK, RED, BLUE]) {
        chart
            .draw_series(LineSeries::new(
                r.per_second
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 1.0, *v)),
                color.stroke_width(2),
            ))?
            .label(r.phase.name())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    let bars = [
        ("slowdown\nuncontrolled %", &s.slowdown_uncontrolled, RED),
        ("slowdown\ncontrolled %", &s.slowdown_controlled, BLUE),
        ("functions\nkept %", &s.function_throughput_kept, GREEN),
    ];
    let top = bars.iter().map(|b| b.1.max).fold(10.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("medians over rounds (min-max)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..3.0, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3)
        .x_label_formatter(&|x| {
            [
                "slowdown uncontrolled %",
                "slowdown controlled %",
                "functions kept %",
            ]
            .get(*x as usize)
            .map_or(String::new(), |l| (*l).to_owned())
        })
        .draw()?;
    for (i, (_, sp, color)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x + 0.2, 0.0), (x + 0.8, sp.median.max(0.0))],
            color.mix(0.6).filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x + 0.5, sp.min.max(0.0)), (x + 0.5, sp.max.max(0.0))],
            BLACK.stroke_width(2),
        )))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 2.0), (2.0, 2.0)],
        BLACK.stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_parse_with_path_prepended() {
        let env = parse_exports(
            "export SLURM_CONF='/c/etc/slurm.conf'\nexport PATH='/c/bin':\"$PATH\"\nnoise\n",
        );
        assert_eq!(env["SLURM_CONF"], "/c/etc/slurm.conf");
        assert!(env["PATH"].starts_with("/c/bin:"), "{}", env["PATH"]);
    }

    #[test]
    fn spreads_have_a_median_and_the_extremes() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 2.0]).median, 1.5);
        assert!(spread(&[]).median.is_nan());
    }
}
