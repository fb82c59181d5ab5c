//! `faults` and `load`: the control plane under load, with faults injected.
//!
//! `load` runs [`load`]'s clients (as an ordinary user) against the local cluster while batch jobs
//! start and end at random ([`churn`]) and records every operation's outcome. `faults` runs the
//! same load in one phase per fault ([`inject`]: SIGKILL of harvestd, the primary scheduler, an
//! executor, a worker; SIGSTOP of an agent past the heartbeat timeout; slurmd restart; node
//! drain; a function that allocates beyond its lease; a full disk under an agent's state; all of
//! a few at once), repairs it as an operator would (`deploy/local-cluster up`), and checks the
//! invariants ([`probe`]) after each: every invocation answered, no executor on a batch job's
//! CPUs at any sampled instant, no orphan process or cgroup once the leases end, each agent's
//! ledger equal to Slurm's view, the scheduler's leases equal to the executors running.
//! Violations are recorded, not hidden: that is the point of the experiment.

pub mod churn;
pub mod inject;
pub mod load;
pub mod probe;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use crate::cluster::{Cluster, ensure_user};
use inject::{Fault, Target};
use load::{Event, Op, Outcome};

pub use load::{ClientArgs as LoadClientArgs, run_client as run_load_client};

/// The ordinary user the load runs as.
pub const LOAD_USER: &str = "harvest-load-user";
/// How often executors' cpusets are compared with batch jobs'.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The load's shape.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct LoadShape {
    /// Concurrent clients.
    #[arg(long, default_value_t = 6)]
    pub clients: usize,
    /// Most invocations per second per client.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds each lease is used before the next is acquired.
    #[arg(long, default_value_t = 4.0)]
    pub hold_s: f64,
    /// Each invocation's deadline (ms).
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u64,
    /// Batch jobs running or pending at most at once (started and ended at random).
    #[arg(long, default_value_t = 3)]
    pub max_jobs: usize,
}

/// Arguments of `harvest-experiments load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub shape: LoadShape,
    /// How long the load runs (seconds).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Where results go [default: experiments/results/load].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `harvest-experiments faults`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub shape: LoadShape,
    /// Short phases (about 2 minutes in all) to check the whole path, e.g. from the test suite.
    #[arg(long)]
    pub quick: bool,
    /// Only these faults (comma-separated) [default: all, then all of a few combined].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Fault>,
    /// Seconds of load before each fault.
    #[arg(long)]
    pub before_s: Option<u64>,
    /// Seconds of load after each fault's repair.
    #[arg(long)]
    pub after_s: Option<u64>,
    /// Where results go [default: experiments/results/faults].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Font for the plot.
    #[arg(long, default_value = crate::output::DEFAULT_FONT)]
    pub font: PathBuf,
    /// Exit with status 1 when a phase could not run (its fault could not be injected, or the
    /// load made no invocation); violations of the invariants are recorded either way.
    #[arg(long)]
    pub fail_on_error: bool,
    /// Exit with status 1 when any invariant is violated too.
    #[arg(long)]
    pub strict: bool,
}

/// One phase's figures: the summary's entry.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    pub fault: String,
    pub injected: Vec<String>,
    pub repair: Vec<String>,
    /// Seconds since the run began when the fault was injected.
    pub at_s: f64,
    pub invocations: usize,
    pub invocations_ok: usize,
    /// Invocations answered with an explicit error, by category.
    pub invocation_errors: std::collections::BTreeMap<String, usize>,
    /// Results or errors within deadline + grace, in percent of invocations.
    pub answered_pct: f64,
    /// Invocations answered later than deadline + grace, or never.
    pub late: usize,
    pub silent_losses: usize,
    pub acquires: usize,
    pub acquires_ok: usize,
    pub acquire_errors: std::collections::BTreeMap<String, usize>,
    /// Sampled instants at which some executor shared a CPU with a batch job on its node.
    pub executors_on_batch_cpus_samples: usize,
    pub samples: usize,
    pub executors_on_batch_cpus_examples: Vec<String>,
    /// harvest-executor processes still alive once every lease of the load had ended.
    pub orphan_processes: usize,
    /// Lease cgroups still there once every lease had ended.
    pub orphan_cgroups: usize,
    pub orphan_examples: Vec<String>,
    /// Nodes whose batch CPUs in the scheduler's view (from the agent) differ from Slurm's.
    pub ledger_mismatches: usize,
    pub ledger_mismatch_examples: Vec<String>,
    /// Nodes where the scheduler's function CPUs differ from the executors running there,
    /// once the load's leases ended.
    pub lease_mismatches: usize,
    pub lease_mismatch_examples: Vec<String>,
    /// Seconds from the injection until a lease acquisition that started after it succeeded.
    pub recovery_s: Option<f64>,
    pub error: Option<String>,
}

/// A running load client (its own process, as the load user).
struct LoadRun {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

fn start_load(
    cluster: &Cluster,
    shape: &LoadShape,
    lib: &Path,
    work: &Path,
    oom_file: &Path,
    tag: &str,
) -> Result<LoadRun> {
    let stop = work.join(format!("stop-{tag}"));
    let out = work.join(format!("events-{tag}.json"));
    let _ = std::fs::remove_file(&stop);
    let exe = std::env::current_exe()?;
    let child = cluster
        .command("runuser")
        .args(["-u", LOAD_USER, "--"])
        .arg(exe)
        .arg("load-client")
        .args(["--scheduler", cluster.require("HARVEST_SCHEDULER")?])
        .arg("--lib")
        .arg(lib)
        .args(["--clients", &shape.clients.to_string()])
        .args(["--rate", &shape.rate.to_string()])
        .args(["--hold-s", &shape.hold_s.to_string()])
        .args(["--deadline-ms", &shape.deadline_ms.to_string()])
        .arg("--stop-file")
        .arg(&stop)
        .arg("--oom-file")
        .arg(oom_file)
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the load client")?;
    Ok(LoadRun { child, stop, out })
}

impl LoadRun {
    fn finish(mut self) -> Result<Vec<Event>> {
        std::fs::write(&self.stop, "")?;
        let until = Instant::now() + Duration::from_secs(90);
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= until {
                let _ = self.child.kill();
                let _ = self.child.wait();
                anyhow::bail!("the load client did not stop within 90 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = std::fs::read_to_string(&self.out)
            .with_context(|| format!("the load client wrote no {}", self.out.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// One sample: when (unix ms), and each executor (pid) on a batch job's CPUs (node/job).
pub type Sample = (i64, Vec<(u32, String)>);

/// Samples executors against batch jobs' CPUs every [`SAMPLE_EVERY`] until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    /// (unix ms, overlapping executor pid and job) per sample.
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(cgroup_root: PathBuf, nodes: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let hits = probe::executors_on_batch_cpus(&cgroup_root, &nodes);
                v.lock().expect("samples").push((now_ms(), hits));
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self {
            stop,
            samples,
            thread,
        }
    }

    fn take(&self, from: i64, to: i64) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("samples")
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .cloned()
            .collect()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Everything a run needs.
struct Bench {
    cluster: Cluster,
    nodes: Vec<String>,
    harvest: PathBuf,
    lib: PathBuf,
    work: tempfile::TempDir,
    oom_file: PathBuf,
    cgroup_root: PathBuf,
}

impl Bench {
    fn open() -> Result<Self> {
        let cluster = Cluster::open()?;
        ensure_user(LOAD_USER)?;
        let nodes = cluster.node_names()?;
        let harvest = cluster.bin("harvest")?;
        let work = tempfile::Builder::new()
            .prefix("harvest-faults-")
            .tempdir()?;
        let lib = build_library(work.path())?;
        let oom_file = work.path().join("oom");
        std::fs::write(&oom_file, "0\n")?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o1777))?;
        let cgroup_root = cluster.cgroup_root.clone();
        Ok(Self {
            cluster,
            nodes,
            harvest,
            lib,
            work,
            oom_file,
            cgroup_root,
        })
    }

    fn target(&self) -> Result<Target<'_>> {
        Ok(Target {
            cluster: &self.cluster,
            nodes: self.nodes.clone(),
            run_dir: self.cluster.require("HARVEST_RUN_DIR")?.into(),
            cluster_dir: self.cluster.require("HARVEST_CLUSTER_DIR")?.into(),
            cgroup_root: self.cgroup_root.clone(),
            work: self.work.path().to_owned(),
            oom_file: self.oom_file.clone(),
        })
    }

    /// One phase: load, `before` seconds, the fault and its repair, `after` seconds, the load's
    /// end; then the checks that need the leases ended.
    fn phase(
        &self,
        fault: Fault,
        shape: &LoadShape,
        (before, after): (Duration, Duration),
        sampler: &Sampler,
        t0: i64,
        all_events: &mut Vec<Event>,
    ) -> PhaseResult {
        let begin = now_ms();
        let mut injected = inject::Injected::default();
        let mut error = None;
        let mut at = begin;
        let tag = fault.name();
        let events = (|| -> Result<Vec<Event>> {
            let load = start_load(
                &self.cluster,
                shape,
                &self.lib,
                self.work.path(),
                &self.oom_file,
                &tag,
            )?;
            std::thread::sleep(before);
            at = now_ms();
            eprintln!("faults: {tag}");
            let r = self.target()?.inject(fault);
            match r {
                Ok(i) => injected = i,
                Err(e) => error = Some(format!("{e:#}")),
            }
            std::thread::sleep(after);
            load.finish()
        })();
        let events = match events {
            Ok(e) => e,
            Err(e) => {
                error = Some(format!(
                    "{}{e:#}",
                    error.map(|x| x + "; ").unwrap_or_default()
                ));
                Vec::new()
            }
        };
        let end = now_ms();
        let samples = sampler.take(begin, end);
        let (orphan_processes, orphan_cgroups, orphan_examples) = self.orphans();
        let (ledger, ledger_ex) = self.ledger_mismatches();
        let (leases, leases_ex) = self.lease_mismatches();
        let mut r = report::phase_figures(&tag, &events, at, &samples);
        r.at_s = (at - t0) as f64 / 1000.0;
        r.injected = injected.what;
        r.repair = injected.repair;
        r.orphan_processes = orphan_processes;
        r.orphan_cgroups = orphan_cgroups;
        r.orphan_examples = orphan_examples;
        r.ledger_mismatches = ledger;
        r.ledger_mismatch_examples = ledger_ex;
        r.lease_mismatches = leases;
        r.lease_mismatch_examples = leases_ex;
        r.error = error;
        all_events.extend(events);
        r
    }

    /// Executor processes and lease cgroups left once the load's leases ended, after up to 20 s
    /// for the agents to clean up.
    fn orphans(&self) -> (usize, usize, Vec<String>) {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let procs = probe::executors(&self.cgroup_root);
            let groups = probe::lease_cgroups(&self.cgroup_root, &self.nodes);
            if (procs.is_empty() && groups.is_empty()) || Instant::now() >= until {
                let mut ex: Vec<String> = procs
                    .iter()
                    .map(|e| {
                        format!(
                            "executor pid {} on {} (worker: {})",
                            e.pid,
                            e.node.as_deref().unwrap_or("?"),
                            e.worker
                        )
                    })
                    .collect();
                ex.extend(groups.iter().map(|g| g.display().to_string()));
                ex.truncate(10);
                return (procs.len(), groups.len(), ex);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Nodes whose batch CPUs (scheduler's view of the agent's ledger) differ from Slurm's
    /// running jobs', given up to 10 s to agree (jobs start and end meanwhile).
    fn ledger_mismatches(&self) -> (usize, Vec<String>) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let diff = (|| -> Result<Vec<String>> {
                let slurm = probe::slurm_batch_cpus(&self.cluster)?;
                let harvest = probe::harvest_cpus(&self.cluster, &self.harvest)?;
                let empty = Default::default();
                Ok(self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        let s = slurm.get(n).unwrap_or(&empty);
                        let h = harvest.get(n).map_or(&empty, |(b, _)| b);
                        (s != h).then(|| format!("{n}: slurm {s:?}, harvest {h:?}"))
                    })
                    .collect())
            })();
            let diff = diff.unwrap_or_else(|e| vec![format!("could not compare: {e:#}")]);
            if diff.is_empty() || Instant::now() >= until {
                return (diff.len(), diff);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Nodes where the scheduler still lists function CPUs though the load's leases ended and
    /// no executor runs there (or the reverse), given up to 10 s to agree.
    fn lease_mismatches(&self) -> (usize, Vec<String>) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let diff = (|| -> Result<Vec<String>> {
                let harvest = probe::harvest_cpus(&self.cluster, &self.harvest)?;
                let execs = probe::executors(&self.cgroup_root);
                Ok(self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        let running: std::collections::BTreeSet<u32> = execs
                            .iter()
                            .filter(|e| !e.worker && e.node.as_deref() == Some(n.as_str()))
                            .flat_map(|e| e.cpus.iter().copied())
                            .collect();
                        let listed = harvest.get(n).map(|(_, f)| f.clone()).unwrap_or_default();
                        (running != listed).then(|| {
                            format!(
                                "{n}: scheduler function CPUs {listed:?}, executors on {running:?}"
                            )
                        })
                    })
                    .collect())
            })();
            let diff = diff.unwrap_or_else(|e| vec![format!("could not compare: {e:#}")]);
            if diff.is_empty() || Instant::now() >= until {
                return (diff.len(), diff);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The load's function library (`echo`, `hog`).
fn build_library(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("load.c");
    let lib = dir.join("libload.so");
    std::fs::write(&src, load::LOAD_C)?;
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .output()
        .context("running cc (Debian: apt-get install gcc)")?;
    ensure!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755))?;
    Ok(lib)
}

/// `harvest-experiments load`: the load and the batch churn, no fault.
pub fn run_load(args: LoadArgs) -> Result<()> {
    check_shape(&args.shape)?;
    let b = Bench::open()?;
    let churn = churn::Churn::start(b.cluster.clone(), args.shape.max_jobs, 1);
    let sampler = Sampler::start(b.cgroup_root.clone(), b.nodes.clone());
    let t0 = now_ms();
    let mut events = Vec::new();
    let secs = args.seconds.max(2);
    let r = b.phase(
        Fault::None,
        &args.shape,
        (
            Duration::from_secs(secs / 2),
            Duration::from_secs(secs - secs / 2),
        ),
        &sampler,
        t0,
        &mut events,
    );
    sampler.stop();
    let jobs = churn.stop();
    let out = args
        .out
        .unwrap_or_else(|| super::results_root().join("load"));
    std::fs::create_dir_all(&out)?;
    let summary = serde_json::json!({
        "load": args.shape, "seconds": secs, "nodes": b.nodes, "batch_jobs_submitted": jobs,
        "result": r, "machine": crate::cluster::machine_line(),
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!(
        "load: {} invocations, {:.2}% answered, {} silent losses; {}",
        r.invocations,
        r.answered_pct,
        r.silent_losses,
        out.join("summary.json").display()
    );
    Ok(())
}

/// `harvest-experiments faults`.
pub fn run_cmd(args: Args) -> Result<()> {
    check_shape(&args.shape)?;
    let b = Bench::open()?;
    ensure!(
        !b.nodes.is_empty(),
        "the local cluster has no node: deploy/local-cluster up --nodes 4"
    );
    let faults: Vec<Fault> = if args.only.is_empty() {
        Fault::ALL.to_vec()
    } else {
        args.only.clone()
    };
    let before = Duration::from_secs(args.before_s.unwrap_or(if args.quick { 3 } else { 10 }));
    let after = Duration::from_secs(args.after_s.unwrap_or(if args.quick { 4 } else { 15 }));
    let churn = churn::Churn::start(b.cluster.clone(), args.shape.max_jobs, 7);
    let sampler = Sampler::start(b.cgroup_root.clone(), b.nodes.clone());
    let t0 = now_ms();
    let mut events = Vec::new();
    let mut results = Vec::new();
    for fault in std::iter::once(Fault::None).chain(faults) {
        let r = b.phase(
            fault,
            &args.shape,
            (before, after),
            &sampler,
            t0,
            &mut events,
        );
        eprintln!(
            "faults: {}: {} invocations, {:.2}% answered, {} lost, {} on batch CPUs, {} orphans, {} ledger mismatches, recovery {:?} s{}",
            r.fault,
            r.invocations,
            r.answered_pct,
            r.silent_losses,
            r.executors_on_batch_cpus_samples,
            r.orphan_processes + r.orphan_cgroups,
            r.ledger_mismatches,
            r.recovery_s,
            r.error
                .as_deref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
        results.push(r);
    }
    sampler.stop();
    let jobs = churn.stop();
    // Leave the cluster whole for whoever comes next, the primary scheduler serving.
    if let Err(e) = b.target()?.restore_primary() {
        eprintln!("faults: restoring the cluster at the end failed: {e:#}");
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| super::results_root().join("faults"));
    report::write(&out, &args, &b.nodes, jobs, t0, &results, &events)?;
    let bad: Vec<&PhaseResult> = results.iter().filter(|r| report::violates(r)).collect();
    println!(
        "faults: {} phases, {} with an invariant violated ({}); {}",
        results.len(),
        bad.len(),
        bad.iter()
            .map(|r| r.fault.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        out.join("summary.json").display()
    );
    let broken: Vec<&str> = results
        .iter()
        .filter(|r| r.error.is_some() || r.invocations == 0)
        .map(|r| r.fault.as_str())
        .collect();
    ensure!(
        !args.fail_on_error || broken.is_empty(),
        "faults: phases that could not run: {}",
        broken.join(", ")
    );
    ensure!(
        !args.strict || bad.is_empty(),
        "faults: invariants violated in: {}",
        bad.iter()
            .map(|r| r.fault.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Invocation-level counts of a set of events (shared by the report and tests).
pub fn is_invocation(e: &Event) -> bool {
    e.op == Op::Invoke
}

/// Whether an event counts as answered (a result or an explicit error in time).
pub fn answered(e: &Event) -> bool {
    matches!(e.outcome, Outcome::Ok | Outcome::Error)
}

#[cfg(test)]
mod tests;

/// Guards against a run with no clients.
pub fn check_shape(s: &LoadShape) -> Result<()> {
    ensure!(s.clients > 0 && s.clients <= 64, "--clients must be 1..=64");
    ensure!(
        s.rate > 0.0 && s.rate <= 1000.0,
        "--rate must be in (0, 1000]"
    );
    Ok(())
}
