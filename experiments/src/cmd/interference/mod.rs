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
//!
//! - [`node`]: the cluster's node, its harvestd (restarted per phase) and the machine's load.
//! - [`client`]: the function client, run as the ordinary user.
//! - [`report`]: the summary, the CSVs and the plot.

pub(crate) mod client;
pub(crate) mod node;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

pub use client::{ClientArgs, run_client};
pub(crate) use client::{ClientFiles, ClientOut, write_whole};
pub(crate) use node::Cluster;
use node::{busy_cpus, cap_lease, cpu_ticks, wait_for, wait_quiet};
use report::{summarize, write_results};

use crate::cluster::ensure_user;
use crate::output::DEFAULT_FONT;

/// Arguments of `harvest-experiments interference`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run (one round of 12 s phases, one static quota) to check that everything works.
    #[arg(long)]
    quick: bool,
    /// How long each phase's batch job runs, in seconds.
    #[arg(long, default_value_t = 30)]
    job_seconds: u64,
    /// Rounds of (alone, uncontrolled, controlled, each static quota), interleaved so drift
    /// hits all alike; one more alone phase ends the run.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Static CFS quotas (% of the lease's CPU) to measure beside the controller, with
    /// harvestd's control off: the slowdown and throughput a fixed cap gives, i.e. what is
    /// possible on this machine at all. `none` measures none.
    #[arg(long, default_value = "50,25", value_name = "PCT,...")]
    static_quotas: String,
    /// Size of each of the job's three arrays, MiB (beyond the last-level cache).
    #[arg(long, default_value_t = 32)]
    array_mib: u64,
    /// TOML added to the node's harvestd configuration in the controlled phase (e.g. an
    /// `[interference]` table) [default: none: harvestd's defaults].
    #[arg(long)]
    agent_config: Option<PathBuf>,
    /// The ordinary user the functions run as (created if missing).
    #[arg(long, default_value = "harvest-exp-user")]
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
    /// Harmless leases beside the thrasher, each run by its own ordinary user (the `--user`
    /// name with 2, 3, ... appended), alternating a compute-bound function (`spin`, in
    /// registers) and a mostly sleeping one (`nap`, I/O-like): as many as the node's CPUs
    /// allow after the job and the thrasher (the run says how many it got, and why).
    #[arg(long, default_value_t = 2)]
    harmless: usize,
    /// Skip the no-op phase (a lease invoking a function that does nothing, with harvestd's
    /// control off: what harvest's own executor and invocation path cost the job).
    #[arg(long)]
    no_noop: bool,
    /// Only redraw interference.png from the results in --out (timeline.csv, summary.json).
    #[arg(long)]
    replot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Alone,
    Uncontrolled,
    Controlled,
    /// A no-op function beside the job, control off: harvest's own cost.
    Noop,
    /// harvestd's control off and the lease capped at this CFS quota (% of its CPU) by the
    /// experiment itself: a point of the slowdown/throughput frontier a fixed cap gives.
    Static(u32),
}

impl Phase {
    pub(super) fn from_name(name: &str) -> Option<Self> {
        match name {
            "alone" => Some(Self::Alone),
            "uncontrolled" => Some(Self::Uncontrolled),
            "controlled" => Some(Self::Controlled),
            "noop" => Some(Self::Noop),
            _ => name
                .strip_prefix("quota-")
                .and_then(|p| p.parse().ok())
                .map(Self::Static),
        }
    }

    pub(super) fn name(self) -> String {
        match self {
            Self::Alone => "alone".into(),
            Self::Uncontrolled => "uncontrolled".into(),
            Self::Controlled => "controlled".into(),
            Self::Noop => "noop".into(),
            Self::Static(p) => format!("quota-{p}"),
        }
    }

    /// The harvestd configuration the phase needs: `None` for any (nothing is leased), else
    /// the TOML added to the cluster's (`Some("")`: exactly the cluster's).
    fn agent_config(self, controlled: &str) -> Option<String> {
        match self {
            Self::Alone => None,
            Self::Uncontrolled | Self::Noop | Self::Static(_) => {
                Some("[interference]\nenabled = false\n".into())
            }
            Self::Controlled => Some(controlled.to_owned()),
        }
    }
}

impl Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The order of one round's phases: the job alone first, then the others, rotated by the
/// round so that none of them always runs right after the job alone (the host drifts).
fn round_order(round: usize, others: &[Phase]) -> Vec<Phase> {
    let mut rest = others.to_vec();
    if !rest.is_empty() {
        let n = rest.len();
        rest.rotate_left(round % n);
    }
    std::iter::once(Phase::Alone).chain(rest).collect()
}

/// Parses `--static-quotas` (e.g. `50,25`): whole percentages in 1..=100.
fn parse_quotas(text: &str) -> Result<Vec<u32>> {
    if text.trim().is_empty() || text.trim() == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|q| {
            let q = q.trim();
            q.parse::<u32>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .with_context(|| {
                    format!(
                        "--static-quotas: {q:?} is not a percentage in 1..=100 (give e.g. 50,25, \
                         or none)"
                    )
                })
        })
        .collect()
}

impl Run {
    /// A run with no measurements yet.
    pub(super) fn empty(round: usize, phase: Phase) -> Self {
        Self {
            round,
            phase,
            job_chunks_per_cpu_s: f64::NAN,
            job_chunks_per_s: f64::NAN,
            job_cpu_share: f64::NAN,
            job_wait_share: f64::NAN,
            fn_invocations: 0,
            fn_per_s: f64::NAN,
            levels: Vec::new(),
            max_level: "-".into(),
            per_second: Vec::new(),
            lease_errors: Vec::new(),
            machine_busy_cpus: f64::NAN,
            busy_before: f64::NAN,
            last_state: serde_json::Value::Null,
            start_unix_ms: 0,
            end_unix_ms: 0,
            leases: 0,
            harmless_per_s: Vec::new(),
            culprit_only_share: f64::NAN,
            first_correct_verdict_s: None,
            thrasher_verdicts: Vec::new(),
        }
    }
}

/// The kernel's JSON line.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct JobOut {
    pub(crate) chunks: f64,
    pub(crate) seconds: f64,
    pub(crate) cpu_s: f64,
    pub(crate) wait_s: f64,
    pub(crate) chunks_per_s: f64,
    pub(crate) start_unix_ms: i64,
    pub(crate) end_unix_ms: i64,
    pub(crate) per_second: Vec<f64>,
}

/// One phase's measurements.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Run {
    pub(super) round: usize,
    pub(super) phase: Phase,
    /// Chunks per second of CPU time the job got (the headline rate).
    pub(super) job_chunks_per_cpu_s: f64,
    /// Chunks per wall-clock second.
    pub(super) job_chunks_per_s: f64,
    /// The share of the run the job had its CPU, and waited for it.
    pub(super) job_cpu_share: f64,
    pub(super) job_wait_share: f64,
    pub(super) fn_invocations: u64,
    pub(super) fn_per_s: f64,
    /// (seconds since the job started, level) every half second.
    #[serde(skip)]
    pub(super) levels: Vec<(f64, String)>,
    pub(super) max_level: String,
    pub(super) per_second: Vec<f64>,
    pub(super) lease_errors: Vec<String>,
    /// CPUs busy on the whole machine while the job ran (job and functions included), and
    /// before the phase (other work only).
    pub(super) machine_busy_cpus: f64,
    pub(super) busy_before: f64,
    /// The node's interference state, last seen while the job ran.
    #[serde(skip)]
    pub(super) last_state: serde_json::Value,
    /// When the job ran (Unix ms): the summary compares each phase with the job alone
    /// interpolated to the same time.
    pub(super) start_unix_ms: i64,
    pub(super) end_unix_ms: i64,
    /// Leases the function client held (more than one: it lost one and asked again).
    pub(super) leases: usize,
    /// Invocations per second of each harmless lease while the job ran, in client order.
    pub(super) harmless_per_s: Vec<f64>,
    /// The share of the samples in which the thrasher, and only it, was throttled (its level
    /// above none, every harmless lease's at none).
    pub(super) culprit_only_share: f64,
    /// Seconds from the job's start to the first sample whose verdicts were right: the
    /// thrasher a culprit, no harmless lease one.
    pub(super) first_correct_verdict_s: Option<f64>,
    /// The verdicts the node published for the thrasher's leases while the job ran.
    pub(super) thrasher_verdicts: Vec<String>,
}

/// One function client of a phase.
#[derive(Debug, Clone)]
struct ClientSpec {
    role: &'static str,
    user: String,
    lib: PathBuf,
    function: &'static str,
}

/// The clients of `phase`: none alone; one no-op; else the thrasher and `harmless` others.
fn clients_for(phase: Phase, user: &str, libs: &Libs, harmless: usize) -> Vec<ClientSpec> {
    match phase {
        Phase::Alone => Vec::new(),
        Phase::Noop => vec![ClientSpec {
            role: "noop",
            user: user.to_owned(),
            lib: libs.gentle.clone(),
            function: "noop",
        }],
        _ => std::iter::once(ClientSpec {
            role: "thrasher",
            user: user.to_owned(),
            lib: libs.thrash.clone(),
            function: "thrash",
        })
        .chain((0..harmless).map(|i| ClientSpec {
            role: "harmless",
            user: harmless_user(user, i),
            lib: libs.gentle.clone(),
            function: if i % 2 == 0 { "spin" } else { "nap" },
        }))
        .collect(),
    }
}

/// The user the `i`-th harmless lease runs as.
fn harmless_user(user: &str, i: usize) -> String {
    format!("{user}{}", i + 2)
}

/// The compiled kernels.
#[derive(Debug, Clone)]
pub(crate) struct Libs {
    pub(crate) job: PathBuf,
    thrash: PathBuf,
    gentle: PathBuf,
}

/// One 500 ms sample of the node's per-lease verdicts: (lease, level, verdict).
type LeaseSample = (f64, Vec<(String, String, String)>);

/// The verdicts the node published for the leases in `ids`, each once, in the order seen.
fn verdicts_of(samples: &[LeaseSample], ids: &[String]) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    for (_, leases) in samples {
        for (id, _, verdict) in leases {
            if ids.contains(id) && !seen.contains(verdict) {
                seen.push(verdict.clone());
            }
        }
    }
    seen
}

/// From the samples: the share in which the thrasher and only it was throttled, and when the
/// verdicts first were right (the thrasher a culprit, no harmless lease one).
fn attribution_of(
    samples: &[LeaseSample],
    thrasher: &[String],
    harmless: &[String],
) -> (f64, Option<f64>) {
    let is = |ids: &[String], id: &str| ids.iter().any(|i| i == id);
    let mut only = 0usize;
    let mut first = None;
    for (t, leases) in samples {
        let throttled = |ids: &[String]| {
            leases
                .iter()
                .any(|(id, level, _)| is(ids, id) && level != "none")
        };
        let culprit = |ids: &[String]| {
            leases
                .iter()
                .any(|(id, _, verdict)| is(ids, id) && verdict == "culprit")
        };
        if throttled(thrasher) && !throttled(harmless) {
            only += 1;
        }
        if first.is_none() && culprit(thrasher) && !culprit(harmless) {
            first = Some(*t);
        }
    }
    let share = if samples.is_empty() {
        f64::NAN
    } else {
        only as f64 / samples.len() as f64
    };
    (share, first)
}

/// What an experiment on the cluster starts from: its results directory (`out`, else
/// `experiments/results/NAME`), a work directory the functions' users can read, the kernels
/// compiled there, the experiment's ordinary user, and the cluster.
pub(crate) fn prepare(
    name: &str,
    out: Option<&PathBuf>,
    user: &str,
) -> Result<(PathBuf, tempfile::TempDir, Libs, Cluster)> {
    let out_dir = out
        .cloned()
        .unwrap_or_else(|| super::results_root().join(name));
    std::fs::create_dir_all(&out_dir)?;
    let work = tempfile::Builder::new()
        .prefix(&format!("harvest-{name}-"))
        .tempdir()?;
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let libs = build_kernels(work.path())?;
    ensure_user(user)?;
    Ok((out_dir, work, libs, Cluster::open()?))
}

/// Compiles the kernel and the functions into `dir`.
pub(crate) fn build_kernels(dir: &Path) -> Result<Libs> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let libs = Libs {
        job: dir.join("stream_job"),
        thrash: dir.join("libthrash.so"),
        gentle: dir.join("libgentle.so"),
    };
    for (out, args, file) in [
        (&libs.job, vec!["-O2"], "stream_job.c"),
        (&libs.thrash, vec!["-O2", "-shared", "-fPIC"], "thrash.c"),
        (&libs.gentle, vec!["-O2", "-shared", "-fPIC"], "gentle.c"),
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
    Ok(libs)
}

/// Starts one function client as its user; waits for its first lease; returns it with its
/// directory and the lease.
fn spawn_client(
    cl: &Cluster,
    dir: &Path,
    spec: &ClientSpec,
) -> Result<(std::process::Child, PathBuf, String)> {
    std::fs::create_dir_all(dir)?;
    let chown = Command::new("chown").arg(&spec.user).arg(dir).status()?;
    ensure!(chown.success(), "chown {} {}", spec.user, dir.display());
    let exe = std::env::current_exe()?;
    let child = cl
        .command("runuser")
        .args(["-u", &spec.user, "--"])
        .arg(exe)
        .args(["interference-client", "--scheduler", &cl.scheduler, "--lib"])
        .arg(&spec.lib)
        .args(["--function", spec.function])
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .arg("--stop-file")
        .arg(dir.join("stop"))
        .arg("--out")
        .arg(dir.join("out.json"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()?;
    wait_for(
        Duration::from_secs(30),
        &format!("the {} client's first lease", spec.role),
        || dir.join("ready").exists(),
    )?;
    let lease = std::fs::read_to_string(dir.join("ready"))?
        .trim()
        .to_owned();
    Ok((child, dir.to_owned(), lease))
}

/// Submits the STREAM-triad batch job (one CPU, `array_mib` per array, `seconds` long) to the
/// cluster's node and waits until it runs; returns its id and the file its result line goes to.
pub(crate) fn submit_stream_job(
    cl: &Cluster,
    job_bin: &Path,
    work: &Path,
    tag: &str,
    seconds: u64,
    array_mib: u64,
) -> Result<(String, PathBuf)> {
    let job_out = work.join(format!("job-{tag}.out"));
    let progress_dir = cl.run_dir.join("progress");
    let wrap = format!(
        "exec {} {seconds} {array_mib} {}",
        job_bin.display(),
        progress_dir.display()
    );
    let out = cl
        .command("sbatch")
        .args([
            "--parsable",
            "-N1",
            "-n1",
            "-c1",
            "--mem=512M",
            "-J",
            tag,
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
    wait_for(Duration::from_secs(60), "the batch job to start", || {
        let s = job_state(cl, &job_id);
        s == "RUNNING" || s.is_empty()
    })?;
    Ok((job_id, job_out))
}

/// A job's state in `squeue` (empty once it has left the queue).
pub(crate) fn job_state(cl: &Cluster, job_id: &str) -> String {
    cl.command("squeue")
        .args(["-h", "-j", job_id, "-o", "%T"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The job's result line (the kernel's JSON) from its output file.
pub(crate) fn read_job_out(job_out: &Path) -> Result<JobOut> {
    let text = std::fs::read_to_string(job_out)
        .with_context(|| format!("reading the job's output {}", job_out.display()))?;
    text.lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no result line in {}: {text}", job_out.display()))
}

/// Runs one phase and measures it.
fn run_phase(
    cl: &Cluster,
    args: &Args,
    work: &Path,
    (libs, harmless): (&Libs, usize),
    round: usize,
    phase: Phase,
    seconds: u64,
) -> Result<Run> {
    let tag = format!("r{round}-{}", phase.name());
    let (job_id, job_out) = submit_stream_job(cl, &libs.job, work, &tag, seconds, args.array_mib)?;
    let progress_dir = cl.run_dir.join("progress");
    let state = || job_state(cl, &job_id);
    let mut clients = Vec::new();
    for (i, spec) in clients_for(phase, &args.user, libs, harmless)
        .iter()
        .enumerate()
    {
        let dir = work.join(format!("client-{tag}-{i}-{}", spec.role));
        let (child, dir, lease) = spawn_client(cl, &dir, spec)?;
        if let Phase::Static(pct) = phase {
            // A fixed cap cannot tell a culprit from the others: every lease gets it.
            cap_lease(&lease, pct)?;
        }
        clients.push((spec.role, child, dir));
    }
    let t0 = Instant::now();
    let ticks0 = cpu_ticks();
    let mut levels = Vec::new();
    let mut last_state = serde_json::Value::Null;
    let mut samples: Vec<LeaseSample> = Vec::new();
    while !state().is_empty() {
        let st = cl.interference();
        let level = st["level"].as_str().unwrap_or("-").to_owned();
        let field = |l: &serde_json::Value, k: &str| l[k].as_str().unwrap_or("-").to_owned();
        samples.push((
            t0.elapsed().as_secs_f64(),
            st["leases"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| (field(l, "lease_id"), field(l, "level"), field(l, "verdict")))
                        .collect()
                })
                .unwrap_or_default(),
        ));
        if st["signals"].as_object().is_some_and(|m| !m.is_empty()) {
            last_state = st;
        }
        levels.push((t0.elapsed().as_secs_f64(), level));
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
    for (_, _, dir) in &clients {
        std::fs::write(dir.join("stop"), "")?;
    }
    let mut outs: Vec<(&str, ClientOut)> = Vec::new();
    for (role, mut child, dir) in clients {
        let status = child.wait()?;
        let text = std::fs::read_to_string(dir.join("out.json"))
            .with_context(|| format!("the {role} client ({status}) wrote no result"))?;
        outs.push((role, serde_json::from_str(&text)?));
    }
    // The first client (the thrasher, or the no-op) is the phase's function client; the
    // others are harmless.
    let mut outs = outs.into_iter();
    let fn_out = outs.next().map(|(_, o)| o).unwrap_or_default();
    let harmless_outs: Vec<ClientOut> = outs.map(|(_, o)| o).collect();
    let job = read_job_out(&job_out)?;
    let _ = std::fs::remove_file(progress_dir.join(&job_id));
    let inside_of = |o: &ClientOut| {
        o.completions_unix_ms
            .iter()
            .filter(|&&t| t >= job.start_unix_ms && t <= job.end_unix_ms)
            .count() as u64
    };
    let inside = inside_of(&fn_out);
    let window_s = (job.end_unix_ms - job.start_unix_ms) as f64 / 1000.0;
    let harmless_ids: Vec<String> = harmless_outs
        .iter()
        .flat_map(|o| o.leases.iter().cloned())
        .collect();
    let (culprit_only_share, first_correct_verdict_s) = if phase == Phase::Controlled {
        attribution_of(&samples, &fn_out.leases, &harmless_ids)
    } else {
        (f64::NAN, None)
    };
    let mut lease_errors = fn_out.errors.clone();
    for o in &harmless_outs {
        lease_errors.extend(o.errors.iter().map(|e| format!("harmless: {e}")));
    }
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
        lease_errors,
        machine_busy_cpus,
        busy_before: f64::NAN,
        last_state,
        start_unix_ms: job.start_unix_ms,
        end_unix_ms: job.end_unix_ms,
        leases: fn_out.leases.len(),
        harmless_per_s: harmless_outs
            .iter()
            .map(|o| inside_of(o) as f64 / window_s.max(1e-9))
            .collect(),
        culprit_only_share,
        first_correct_verdict_s,
        thrasher_verdicts: verdicts_of(&samples, &fn_out.leases),
    })
}

/// Runs the experiment and writes its results.
pub fn run_cmd(args: Args) -> Result<()> {
    if args.replot {
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| super::results_root().join("interference"));
        return report::replot(&dir, &args.font);
    }
    let (rounds, seconds) = if args.quick {
        (1, 12)
    } else {
        (args.rounds, args.job_seconds)
    };
    ensure!(
        rounds > 0 && seconds >= 5,
        "use --rounds >= 1 and --job-seconds >= 5"
    );
    let quotas = if args.quick {
        vec![25]
    } else {
        parse_quotas(&args.static_quotas)?
    };
    let (out_dir, work, libs, mut cl) = prepare("interference", args.out.as_ref(), &args.user)?;
    // The node's CPUs: one for the job, one for the thrasher, the rest for harmless leases.
    let cpus = cl.node_cpus()?;
    let harmless = args.harmless.min(cpus.saturating_sub(2));
    let harmless_note = (harmless < args.harmless).then(|| {
        format!(
            "node {} has {cpus} CPUs: one for the job and one for the thrasher leave room for \
             {harmless} of the {} harmless leases asked for (run on a node with at least {} \
             CPUs for all of them)",
            cl.node,
            args.harmless,
            args.harmless + 2
        )
    });
    if let Some(note) = &harmless_note {
        eprintln!("interference: NOTE: {note}");
    }
    for i in 0..harmless {
        ensure_user(&harmless_user(&args.user, i))?;
    }
    eprintln!(
        "interference: node {} of the cluster in {}",
        cl.node,
        cl.dir.display()
    );
    let controlled = args
        .agent_config
        .as_deref()
        .map(std::fs::read_to_string)
        .transpose()
        .context("reading --agent-config")?;
    let mut others = vec![Phase::Uncontrolled, Phase::Controlled];
    if !args.no_noop {
        others.push(Phase::Noop);
    }
    others.extend(quotas.iter().map(|&q| Phase::Static(q)));
    let plan: Vec<(usize, Phase)> = (0..rounds)
        .flat_map(|r| round_order(r, &others).into_iter().map(move |p| (r, p)))
        .chain(std::iter::once((rounds, Phase::Alone)))
        .collect();
    let controlled = controlled.unwrap_or_default();
    let mut runs = Vec::new();
    let result = (|| -> Result<()> {
        // The TOML the running harvestd was started with (`None`: the cluster's own).
        let mut running: Option<String> = None;
        for (i, &(round, phase)) in plan.iter().enumerate() {
            if let Some(want) = phase.agent_config(&controlled)
                && running.as_deref() != Some(want.as_str())
            {
                cl.restart_agent((!want.is_empty()).then_some(want.as_str()))?;
                running = Some(want);
            }
            let busy_before = wait_quiet(Duration::from_secs(args.wait_quiet_s));
            eprintln!(
                "interference: phase {}/{} (round {}) {} ({seconds} s; other work before: \
                 {busy_before:.2} CPUs)",
                i + 1,
                plan.len(),
                round + 1,
                phase.name()
            );
            let mut run = run_phase(
                &cl,
                &args,
                work.path(),
                (&libs, harmless),
                round,
                phase,
                seconds,
            )?;
            run.busy_before = busy_before;
            eprintln!(
                "interference:   job {:.0} chunks/CPU-s ({:.0}/s, {:.0}% of a CPU), functions \
                 {:.1}/s, max level {}",
                run.job_chunks_per_cpu_s,
                run.job_chunks_per_s,
                run.job_cpu_share * 100.0,
                run.fn_per_s,
                run.max_level
            );
            if phase != Phase::Alone && run.fn_invocations == 0 {
                eprintln!(
                    "interference:   WARNING: no function invocation completed while the job ran \
                     ({} leases, errors: {:?})",
                    run.leases, run.lease_errors
                );
            }
            runs.push(run);
        }
        Ok(())
    })();
    // Leave the node's agent as the cluster runs it (harvestd's defaults), whatever happened.
    if let Err(e) = cl.restart_agent(None) {
        eprintln!("interference: restarting harvestd with its defaults failed: {e:#}");
    }
    result?;
    let summary = summarize(&runs, rounds, seconds, harmless, harmless_note);
    for w in &summary.warnings {
        eprintln!("interference: WARNING: {w}");
    }
    write_results(&out_dir, &runs, &summary, &args.font)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("interference: wrote {}", out_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_have_names_that_parse_back() {
        for p in [
            Phase::Alone,
            Phase::Uncontrolled,
            Phase::Controlled,
            Phase::Noop,
            Phase::Static(25),
        ] {
            assert_eq!(Phase::from_name(&p.name()), Some(p));
        }
        assert_eq!(Phase::from_name("quota-x"), None);
        assert_eq!(
            serde_json::to_string(&Phase::Static(50)).unwrap(),
            "\"quota-50\""
        );
    }

    #[test]
    fn rounds_rotate_the_phases_after_the_job_alone() {
        let others = [Phase::Uncontrolled, Phase::Controlled, Phase::Static(25)];
        assert_eq!(
            round_order(1, &others),
            [
                Phase::Alone,
                Phase::Controlled,
                Phase::Static(25),
                Phase::Uncontrolled
            ]
        );
        assert_eq!(round_order(3, &others), round_order(0, &others));
    }

    #[test]
    fn attribution_counts_the_samples_where_only_the_thrasher_is_throttled() {
        let sample = |t: f64, l: &[(&str, &str, &str)]| -> LeaseSample {
            (
                t,
                l.iter()
                    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
                    .collect(),
            )
        };
        let samples = [
            sample(0.5, &[("T", "none", "pending"), ("H", "none", "pending")]),
            sample(1.0, &[("T", "quota", "culprit"), ("H", "quota", "culprit")]),
            sample(1.5, &[("T", "quota", "culprit"), ("H", "none", "harmless")]),
            // The thrasher was evicted and came back as T2.
            sample(
                2.0,
                &[("T2", "quota", "culprit"), ("H", "none", "harmless")],
            ),
        ];
        let thrasher = ["T".to_owned(), "T2".to_owned()];
        let (share, first) = attribution_of(&samples, &thrasher, &["H".to_owned()]);
        assert!((share - 0.5).abs() < 1e-9, "{share}");
        assert_eq!(first, Some(1.5));
        assert_eq!(verdicts_of(&samples, &thrasher), ["pending", "culprit"]);
        assert_eq!(
            verdicts_of(&samples, &["H".to_owned()]),
            ["pending", "culprit", "harmless"]
        );
        let (share, first) = attribution_of(&[], &thrasher, &[]);
        assert!(share.is_nan());
        assert_eq!(first, None);
    }

    #[test]
    fn phases_get_their_clients() {
        let libs = Libs {
            job: "job".into(),
            thrash: "thrash.so".into(),
            gentle: "gentle.so".into(),
        };
        assert!(clients_for(Phase::Alone, "u", &libs, 2).is_empty());
        let noop = clients_for(Phase::Noop, "u", &libs, 2);
        assert_eq!(noop.len(), 1);
        assert_eq!(noop[0].function, "noop");
        let c = clients_for(Phase::Controlled, "u", &libs, 3);
        let got: Vec<(&str, &str, &str)> = c
            .iter()
            .map(|c| (c.role, c.user.as_str(), c.function))
            .collect();
        assert_eq!(
            got,
            [
                ("thrasher", "u", "thrash"),
                ("harmless", "u2", "spin"),
                ("harmless", "u3", "nap"),
                ("harmless", "u4", "spin"),
            ]
        );
    }

    #[test]
    fn static_quotas_are_checked() {
        assert_eq!(parse_quotas("50, 25").unwrap(), [50, 25]);
        assert!(parse_quotas("none").unwrap().is_empty());
        let e = parse_quotas("50,0").unwrap_err().to_string();
        assert!(e.contains("\"0\" is not a percentage in 1..=100"), "{e}");
    }
}
