//! `compare-peers`: the same work through harvest (its Rust and Python clients), `srun` steps and
//! Parsl (HighThroughputExecutor with SlurmProvider) on the same local cluster, in one run.
//!
//! Workloads (the same C code for harvest and srun, experiments/src/cmd/peers/peer.c; the same
//! logic as Python apps for Parsl): `noop` (1 B echoed), `kernel-10ms` (10 ms of spinning), and
//! echoes of 1 KiB, 64 KiB and 1 MiB. Per system and workload: sequential round trips (p50, p99),
//! throughput with a bounded number of calls in flight, and the CPU time the framework's
//! processes used ([`cpu`]: the process trees of the cluster's daemons and of the client, less
//! what they use idle, measured just before); per system the time from nothing (no lease, no
//! Parsl) to the first result. Every system gets 2 cores of one node (a 2-core lease, 2 Parsl
//! workers, 2 concurrent `srun`s... see `--workers`); the systems run one after another.
//!
//! Parsl is installed by the command into `target/parsl-venv` (a pinned version, from PyPI), the
//! Python client, optimized, into `target/python-venv-release` (both made once, when missing).

pub mod client;
pub mod cpu;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ensure_user, machine_line, repo_root};
use crate::output::load_font;

pub use client::{ClientArgs as PeersClientArgs, run_client as run_peers_client};

/// The ordinary user harvest's clients run as (harvestd runs no root functions).
const USER: &str = "harvest-peers-user";

/// Arguments of `harvest-experiments compare-peers`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run (tens of calls per workload) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Leave Parsl out (no virtual environment, nothing from PyPI).
    #[arg(long)]
    pub no_parsl: bool,
    /// The Parsl release installed into target/parsl-venv.
    #[arg(long, default_value = "2026.10.26")]
    pub parsl_version: String,
    /// Cores each system gets: the lease's cores, Parsl's workers, concurrent srun steps.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// The Python interpreter the virtual environments are made with.
    #[arg(long, default_value = "/usr/bin/python3")]
    pub python: PathBuf,
    /// A virtual environment with harvest's Python client to use instead of making
    /// target/python-venv-release (the test suite passes its dev build: it checks that the
    /// comparison works, not how fast).
    #[arg(long)]
    pub python_venv: Option<PathBuf>,
    /// Where summary.json, peers.png and README.md go [default: experiments/results/peers].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// TrueType font for the plot.
    #[arg(long, default_value = crate::output::DEFAULT_FONT)]
    pub font: PathBuf,
    /// Only redraw peers.png from the summary.json in --out (no cluster needed).
    #[arg(long)]
    pub replot: bool,
}

/// One workload of a plan, as the drivers read it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub name: String,
    pub function: String,
    pub payload_bytes: usize,
    pub sequential: usize,
    pub tasks: usize,
    pub in_flight: usize,
}

/// What a driver measured for one workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadResult {
    pub workload: String,
    pub payload_bytes: usize,
    pub sequential: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub tasks: usize,
    pub in_flight: usize,
    pub throughput_per_s: f64,
    /// CPU of the framework's process trees over the workload, idle use included.
    pub cpu_s_raw: f64,
    pub wall_s: f64,
}

/// What a driver prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriverOutput {
    pub first_result_ms: f64,
    pub workloads: Vec<WorkloadResult>,
    pub version: String,
}

/// A row of summary.json.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    system: String,
    workload: String,
    payload_bytes: usize,
    p50_us: f64,
    p99_us: f64,
    throughput_per_s: f64,
    /// The system's time from nothing to its first result (the same in each of its rows).
    first_result_ms: f64,
    /// CPU seconds of the framework's processes over the workload, less their idle use.
    cpu_s: f64,
    cpu_ms_per_call: f64,
    sequential: usize,
    tasks: usize,
    in_flight: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct SystemInfo {
    system: String,
    version: String,
    first_result_ms: f64,
    idle_cpu_s_per_s: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Summary {
    quick: bool,
    workers: u32,
    machine: String,
    systems: Vec<SystemInfo>,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Ratio {
    what: String,
    value: f64,
    goal: String,
    met: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    HarvestRust,
    /// The Rust client whose sequential calls busy-poll (`Polling::Spin`).
    HarvestRustHot,
    HarvestPython,
    Srun,
    Parsl,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            Self::HarvestRust => "harvest-rust",
            Self::HarvestRustHot => "harvest-rust-hot",
            Self::HarvestPython => "harvest-python",
            Self::Srun => "srun",
            Self::Parsl => "parsl-htex",
        }
    }
}

/// The workloads for a system: the same kinds for all, with counts each finishes in a minute or
/// so (srun takes tens of milliseconds a call, Parsl a few, harvest tens of microseconds).
fn plan(system: System, quick: bool, workers: u32) -> Vec<Workload> {
    // (name, function, bytes, [harvest seq, tasks], [parsl seq, tasks], [srun seq, tasks])
    type Counts = [usize; 2];
    let kinds: [(&str, &str, usize, Counts, Counts, Counts); 5] = [
        ("noop", "echo", 1, [2000, 20_000], [300, 3000], [20, 40]),
        ("kernel-10ms", "kernel", 1, [200, 400], [100, 200], [20, 40]),
        (
            "echo-1KiB",
            "echo",
            1024,
            [2000, 10_000],
            [300, 2000],
            [20, 40],
        ),
        (
            "echo-64KiB",
            "echo",
            64 << 10,
            [1000, 2000],
            [200, 500],
            [20, 40],
        ),
        (
            "echo-1MiB",
            "echo",
            1 << 20,
            [200, 200],
            [50, 100],
            [10, 20],
        ),
    ];
    kinds
        .iter()
        .map(|&(name, function, bytes, h, p, s)| {
            let [seq, tasks] = match system {
                System::HarvestRust | System::HarvestRustHot | System::HarvestPython => h,
                System::Parsl => p,
                System::Srun => s,
            };
            let (seq, tasks) = if quick {
                (seq.div_ceil(40).max(2), tasks.div_ceil(40).max(4))
            } else {
                (seq, tasks)
            };
            let in_flight = match system {
                System::Srun => 2 * workers as usize,
                _ => 8 * workers as usize,
            };
            Workload {
                name: name.into(),
                function: function.into(),
                payload_bytes: bytes,
                sequential: seq,
                tasks,
                in_flight,
            }
        })
        .collect()
}

/// Runs the comparison and writes its results.
pub fn run_cmd(args: Args) -> Result<()> {
    if args.replot {
        let dir = args
            .out
            .clone()
            .unwrap_or_else(|| repo_root().join("experiments/results/peers"));
        return replot(&dir, &args.font);
    }
    ensure!(
        (1..=64).contains(&args.workers),
        "--workers must be 1..=64, not {}",
        args.workers
    );
    let cluster = Cluster::open().context(
        "compare-peers needs the local cluster: deploy/local-cluster up --nodes 2 (as root)",
    )?;
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| repo_root().join("experiments/results/peers"));
    std::fs::create_dir_all(&out_dir)?;
    ensure_user(USER)?;
    let work = tempfile::Builder::new()
        .prefix("harvest-peers-")
        .tempdir()?;
    set_mode(work.path(), 0o755)?;
    let (lib, task) = build_work(work.path())?;
    let roots = daemon_pids(&cluster)?;
    let node = cluster
        .node_names()?
        .into_iter()
        .next()
        .context("no node")?;
    let mut notes = Vec::new();

    let mut systems = Vec::new();
    let mut rows = Vec::new();
    let mut order = vec![
        System::HarvestRust,
        System::HarvestRustHot,
        System::HarvestPython,
        System::Srun,
    ];
    if !args.no_parsl {
        order.push(System::Parsl);
    } else {
        notes.push("Parsl left out (--no-parsl)".into());
    }
    for system in order {
        // The hot client's sequential calls measure rFaaS's hot path: the client spins on a
        // core of its own and the always-hot executor polls on its lease's one core. On a machine with
        // no CPU beyond `--workers`, a lease of `--workers` cores would leave the spinning
        // client nowhere but on the executor's CPUs (which run at the lowest weight).
        let workers = match system {
            System::HarvestRustHot => 1,
            _ => args.workers,
        };
        let plan = plan(system, args.quick, workers);
        let plan_file = work.path().join(format!("plan-{}.json", system.name()));
        std::fs::write(&plan_file, serde_json::to_vec(&plan)?)?;
        set_mode(&plan_file, 0o644)?;
        let idle = idle_rate(&roots, if args.quick { 1.0 } else { 3.0 })?;
        eprintln!(
            "compare-peers: {} (idle framework CPU {idle:.3} s/s) ...",
            system.name()
        );
        let out = match system {
            System::HarvestRust | System::HarvestRustHot => {
                let mut client_args: Vec<String> = vec![
                    "peers-client".into(),
                    "--scheduler".into(),
                    cluster.require("HARVEST_SCHEDULER")?.into(),
                    "--lib".into(),
                    lib.display().to_string(),
                    "--plan".into(),
                    plan_file.display().to_string(),
                    "--workers".into(),
                    workers.to_string(),
                    "--cpu-roots".into(),
                    join_pids(&roots),
                ];
                if system == System::HarvestRustHot {
                    client_args.push("--spin".into());
                    client_args.push("--pin-outside-lease".into());
                }
                run_as_user(&cluster, std::env::current_exe()?.as_os_str(), &client_args)?
            }
            System::HarvestPython => {
                let venv = match &args.python_venv {
                    Some(v) => v.clone(),
                    None => python_venv(&args.python)?,
                };
                run_as_user(
                    &cluster,
                    venv.join("bin/python").as_os_str(),
                    &[
                        repo_root()
                            .join("python/bench/peers.py")
                            .display()
                            .to_string(),
                        "--system".into(),
                        "harvest".into(),
                        "--lib".into(),
                        lib.display().to_string(),
                        "--plan".into(),
                        plan_file.display().to_string(),
                        "--workers".into(),
                        args.workers.to_string(),
                        "--cpu-roots".into(),
                        join_pids(&roots),
                    ],
                )?
            }
            System::Srun => run_srun(&cluster, &task, &node, &plan, &roots)?,
            System::Parsl => {
                let venv = parsl_venv(&args.python, &args.parsl_version)?;
                let mut cmd = cluster.command(venv.join("bin/python"));
                // Parsl starts its interchange as `interchange.py` from PATH.
                let path = cluster
                    .var("PATH")
                    .map(str::to_owned)
                    .or_else(|| std::env::var("PATH").ok())
                    .unwrap_or_default();
                cmd.env("PATH", format!("{}:{path}", venv.join("bin").display()))
                    .arg(repo_root().join("python/bench/peers.py"))
                    .args(["--system", "parsl", "--venv"])
                    .arg(&venv)
                    .args(["--node", &node, "--plan"])
                    .arg(&plan_file)
                    .args(["--workers", &args.workers.to_string()])
                    .args(["--cpu-roots", &join_pids(&roots)]);
                driver_output(cmd, "parsl")?
            }
        };
        for w in &out.workloads {
            let cpu_s = (w.cpu_s_raw - idle * w.wall_s).max(0.0);
            let calls = (w.sequential + w.tasks).max(1);
            rows.push(Row {
                system: system.name().into(),
                workload: w.workload.clone(),
                payload_bytes: w.payload_bytes,
                p50_us: round1(w.p50_us),
                p99_us: round1(w.p99_us),
                throughput_per_s: round1(w.throughput_per_s),
                first_result_ms: round1(out.first_result_ms),
                cpu_s: (cpu_s * 1000.0).round() / 1000.0,
                cpu_ms_per_call: (cpu_s * 1e6 / calls as f64).round() / 1000.0,
                sequential: w.sequential,
                tasks: w.tasks,
                in_flight: w.in_flight,
            });
        }
        systems.push(SystemInfo {
            system: system.name().into(),
            version: out.version.clone(),
            first_result_ms: round1(out.first_result_ms),
            idle_cpu_s_per_s: (idle * 1000.0).round() / 1000.0,
        });
    }
    let ratios = ratios(&rows);
    let summary = Summary {
        quick: args.quick,
        workers: args.workers,
        machine: machine_line(),
        systems,
        rows,
        ratios,
        notes,
    };
    std::fs::write(
        out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    load_font(&args.font)?;
    plot(&out_dir.join("peers.png"), &summary)?;
    std::fs::write(out_dir.join("README.md"), table(&summary))?;
    print!("{}", table(&summary));
    eprintln!("compare-peers: results in {}", out_dir.display());
    Ok(())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The value at quantile `q` of `v` (nearest rank; 0 for none).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((q * s.len() as f64) as usize).min(s.len() - 1)]
}

/// Comma-separated pids.
pub fn parse_pids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.trim()
                .parse()
                .with_context(|| format!("not a pid: {p:?}"))
        })
        .collect()
}

fn join_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The function library and the srun program, both from peer.c.
fn build_work(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let src = dir.join("peer.c");
    std::fs::write(&src, include_str!("peer.c"))?;
    let lib = dir.join("libpeer.so");
    let task = dir.join("peer-task");
    for (out, extra) in [
        (&lib, &["-shared", "-fPIC"][..]),
        (&task, &["-DPEER_MAIN"][..]),
    ] {
        let st = Command::new("cc")
            .args(["-O2", "-o"])
            .arg(out)
            .args(extra)
            .arg(&src)
            .status()
            .context("running cc")?;
        ensure!(st.success(), "cc failed building {}", out.display());
        set_mode(out, 0o755)?;
    }
    Ok((lib, task))
}

/// The pids of the cluster's daemons (munged, slurmctld, each slurmd and harvestd, the
/// schedulers): the roots of the process trees whose CPU counts as a framework's.
fn daemon_pids(cluster: &Cluster) -> Result<Vec<u32>> {
    let mut names: Vec<String> = [
        "munged",
        "slurmctld",
        "harvest-scheduler",
        "harvest-scheduler-standby",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for n in cluster.node_names()? {
        names.push(format!("slurmd-{n}"));
        names.push(format!("harvestd-{n}"));
    }
    let pids: Vec<u32> = names
        .iter()
        .filter_map(|n| cluster.recorded_pid(n).ok())
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    ensure!(
        !pids.is_empty(),
        "no daemon pids recorded by deploy/local-cluster"
    );
    Ok(pids)
}

/// The framework's idle CPU use (s per s) over `seconds`, process by process
/// ([`cpu::used_between`]): processes of the system before that end in the window (srun's step
/// daemons) take nothing off, so it is never negative.
fn idle_rate(roots: &[u32], seconds: f64) -> Result<f64> {
    let me = [roots, &[std::process::id()]].concat();
    let before = cpu::tree_snapshot(&me)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    Ok(cpu::used_between(&before, &cpu::tree_snapshot(&me)?) / t.elapsed().as_secs_f64())
}

fn run_as_user(
    cluster: &Cluster,
    program: &std::ffi::OsStr,
    args: &[String],
) -> Result<DriverOutput> {
    let mut cmd = cluster.command("runuser");
    cmd.args(["-u", USER, "--"]).arg(program).args(args);
    driver_output(cmd, &Path::new(program).display().to_string())
}

/// Runs a driver; its stdout's last line is its JSON, its stderr passes through.
pub(crate) fn driver_output<T: serde::de::DeserializeOwned>(
    mut cmd: Command,
    what: &str,
) -> Result<T> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what}"))?;
    ensure!(out.status.success(), "{what} failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no result: {}", text.trim()))?;
    serde_json::from_str(line).with_context(|| format!("{what}'s result: {line}"))
}

/// target/python-venv-release: harvest's Python client built optimized, as pip's default
/// ('wheel' profile) builds it for users; here in the release profile, which reuses what
/// `cargo build --release` compiled. Not scripts/test-all's target/python-venv: that one is a
/// dev build (fast to make, several times slower on large payloads).
fn python_venv(python: &Path) -> Result<PathBuf> {
    let venv = repo_root().join("target/python-venv-release");
    let python_dir = repo_root().join("python");
    ensure_venv(
        python,
        &venv,
        ("import harvest; print('ok')", "ok"),
        &[python_dir.as_os_str()],
        &[("MATURIN_PEP517_ARGS", "--profile release")],
    )?;
    Ok(venv)
}

/// target/parsl-venv with Parsl `version` (installed from PyPI when missing).
fn parsl_venv(python: &Path, version: &str) -> Result<PathBuf> {
    let venv = repo_root().join("target/parsl-venv");
    let package = format!("parsl=={version}");
    ensure_venv(
        python,
        &venv,
        ("import parsl; print(parsl.__version__)", version),
        &[package.as_ref()],
        &[],
    )?;
    Ok(venv)
}

/// Makes `venv` afresh with `python` and `pip install`s `packages` (with `env`) into it, unless
/// the probe's Python code already prints what it expects there.
fn ensure_venv(
    python: &Path,
    venv: &Path,
    (probe, expect): (&str, &str),
    packages: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> Result<()> {
    let printed = Command::new(venv.join("bin/python"))
        .args(["-c", probe])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if printed.as_deref() == Some(expect) {
        return Ok(());
    }
    eprintln!(
        "compare-peers: installing {packages:?} into {}",
        venv.display()
    );
    sh(Command::new(python)
        .args(["-m", "venv", "--clear"])
        .arg(venv))?;
    sh(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .envs(env.iter().copied()))
}

fn sh(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(st.success(), "{cmd:?} failed: {st}");
    Ok(())
}

/// One `srun` step running peer-task `function` on `node`, `input` on its stdin; its round trip.
fn srun_once(
    cluster: &Cluster,
    task: &Path,
    node: &str,
    function: &str,
    input: &[u8],
) -> Result<Duration> {
    let t = Instant::now();
    let mut child = cluster
        .command("srun")
        .args(["--quiet", "-N1", "-n1", "-w", node])
        .arg(task)
        .arg(function)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting srun")?;
    let mut stdin = child.stdin.take().context("srun's stdin")?;
    let mut stdout = child.stdout.take().context("srun's stdout")?;
    let got = std::thread::scope(|s| -> Result<Vec<u8>> {
        let writer = s.spawn(move || stdin.write_all(input));
        let mut got = Vec::new();
        stdout.read_to_end(&mut got)?;
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        Ok(got)
    })?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && got.len() == input.len(),
        "srun {function}: {} and {} of {} bytes back: {}",
        out.status,
        got.len(),
        input.len(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(t.elapsed())
}

fn run_srun(
    cluster: &Cluster,
    task: &Path,
    node: &str,
    plan: &[Workload],
    roots: &[u32],
) -> Result<DriverOutput> {
    let me = [roots, &[std::process::id()]].concat();
    let first = srun_once(cluster, task, node, "echo", b"x")?;
    let mut workloads = Vec::new();
    for w in plan {
        let data = vec![7u8; w.payload_bytes];
        let cpu0 = cpu::tree_cpu_s(&me)?;
        let all = Instant::now();
        let mut rtt = Vec::new();
        for _ in 0..w.sequential {
            rtt.push(srun_once(cluster, task, node, &w.function, &data)?.as_secs_f64() * 1e6);
        }
        let next = AtomicUsize::new(0);
        let started = Instant::now();
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = (0..w.in_flight.min(w.tasks))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        while next.fetch_add(1, Ordering::Relaxed) < w.tasks {
                            srun_once(cluster, task, node, &w.function, &data)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("an srun thread panicked"))??;
            }
            Ok(())
        })?;
        let took = started.elapsed().as_secs_f64();
        workloads.push(WorkloadResult {
            workload: w.name.clone(),
            payload_bytes: w.payload_bytes,
            sequential: rtt.len(),
            p50_us: percentile(&rtt, 0.5),
            p99_us: percentile(&rtt, 0.99),
            tasks: w.tasks,
            in_flight: w.in_flight,
            throughput_per_s: w.tasks as f64 / took,
            cpu_s_raw: cpu::tree_cpu_s(&me)? - cpu0,
            wall_s: all.elapsed().as_secs_f64(),
        });
        eprintln!(
            "compare-peers: srun {}: p50 {:.0} us",
            w.name,
            percentile(&rtt, 0.5)
        );
    }
    let version = cluster
        .command("srun")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "srun".into());
    Ok(DriverOutput {
        first_result_ms: first.as_secs_f64() * 1000.0,
        workloads,
        version,
    })
}

fn row<'a>(rows: &'a [Row], system: &str, workload: &str) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.system == system && r.workload == workload)
}

/// The goals, computed from the rows that exist.
fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let parsl = row(rows, "parsl-htex", "noop");
    // The latency goal for each Rust client (warm, then hot); throughput for the warm one (the
    // hot one's lease has one core, the other CPU being the spinning client's).
    for (system, with_throughput) in [("harvest-rust", true), ("harvest-rust-hot", false)] {
        let (Some(h), Some(p)) = (row(rows, system, "noop"), parsl) else {
            continue;
        };
        let lat = p.p50_us / h.p50_us.max(f64::MIN_POSITIVE);
        out.push(Ratio {
            what: format!("no-op p50: parsl-htex / {system}"),
            value: round1(lat),
            goal: ">= 100".into(),
            met: lat >= 100.0,
        });
        if with_throughput {
            let thr = h.throughput_per_s / p.throughput_per_s.max(f64::MIN_POSITIVE);
            out.push(Ratio {
                what: format!("no-op throughput: {system} / parsl-htex"),
                value: round1(thr),
                goal: ">= 20".into(),
                met: thr >= 20.0,
            });
        }
    }
    if let (Some(h), Some(s)) = (row(rows, "harvest-rust", "noop"), row(rows, "srun", "noop")) {
        out.push(Ratio {
            what: "no-op p50: srun / harvest-rust".into(),
            value: round1(s.p50_us / h.p50_us.max(f64::MIN_POSITIVE)),
            goal: "(none)".into(),
            met: true,
        });
    }
    for w in ["noop", "echo-1MiB"] {
        if let (Some(r), Some(py)) = (row(rows, "harvest-rust", w), row(rows, "harvest-python", w))
        {
            let v = py.p50_us / r.p50_us.max(f64::MIN_POSITIVE);
            out.push(Ratio {
                what: format!("{w} p50: harvest-python / harvest-rust"),
                value: (v * 100.0).round() / 100.0,
                goal: "<= 2".into(),
                met: v <= 2.0,
            });
        }
    }
    out
}

fn table(s: &Summary) -> String {
    let mut t = String::new();
    t.push_str(&format!(
        "# compare-peers{}\n\n{} ; {} cores per system. Generated by `harvest-experiments compare-peers{}`.\n\n",
        if s.quick { " (quick)" } else { "" },
        s.machine,
        s.workers,
        if s.quick { " --quick" } else { "" }
    ));
    t.push_str("| system | workload | p50 | p99 | throughput | first result | framework CPU per call |\n|---|---|---|---|---|---|---|\n");
    for r in &s.rows {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {:.0}/s | {:.0} ms | {:.3} ms |\n",
            r.system,
            r.workload,
            human_us(r.p50_us),
            human_us(r.p99_us),
            r.throughput_per_s,
            r.first_result_ms,
            r.cpu_ms_per_call
        ));
    }
    t.push_str("\n| ratio | value | goal | met |\n|---|---|---|---|\n");
    for r in &s.ratios {
        t.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            r.what, r.value, r.goal, r.met
        ));
    }
    t.push_str("\nVersions: ");
    t.push_str(
        &s.systems
            .iter()
            .map(|x| format!("{}: {}", x.system, x.version))
            .collect::<Vec<_>>()
            .join("; "),
    );
    t.push('\n');
    for n in &s.notes {
        t.push_str(&format!("\nNote: {n}\n"));
    }
    t
}

fn human_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.1} µs")
    }
}

/// Redraws `peers.png` in `dir` from its `summary.json`.
fn replot(dir: &Path, font: &Path) -> Result<()> {
    let path = dir.join("summary.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let summary: Summary =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    load_font(font)?;
    plot(&dir.join("peers.png"), &summary)?;
    eprintln!("compare-peers: redrew {}", dir.join("peers.png").display());
    Ok(())
}

/// p50 round trip per workload and system, log scale.
fn plot(path: &Path, s: &Summary) -> Result<()> {
    let workloads: Vec<String> = {
        let mut w: Vec<String> = Vec::new();
        for r in &s.rows {
            if !w.contains(&r.workload) {
                w.push(r.workload.clone());
            }
        }
        w
    };
    let systems: Vec<&str> = s.systems.iter().map(|x| x.system.as_str()).collect();
    if workloads.is_empty() || systems.is_empty() {
        bail!("nothing to plot");
    }
    // Two decades above the tallest bar: the legend sits there, clear of every bar.
    let ymax = s.rows.iter().map(|r| r.p50_us).fold(10.0, f64::max) * 100.0;
    let root = BitMapBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "sequential round trip, p50 (log scale; lower is better)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..workloads.len() as f64, (1.0..ymax).log_scale())?;
    let names = workloads.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.26 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("microseconds")
        .draw()?;
    let colors = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0xd6, 0x27, 0x28),
    ];
    let width = 0.8 / systems.len() as f64;
    for (k, sys) in systems.iter().enumerate() {
        let color = colors[k % colors.len()];
        chart
            .draw_series(workloads.iter().enumerate().filter_map(|(i, w)| {
                let r = row(&s.rows, sys, w)?;
                let x0 = i as f64 + 0.1 + k as f64 * width;
                Some(Rectangle::new(
                    [(x0, 1.0), (x0 + width * 0.9, r.p50_us.max(1.0))],
                    color.filled(),
                ))
            }))?
            .label(*sys)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replot_redraws_the_png_from_a_committed_summary() {
        let dir = tempfile::tempdir().unwrap();
        // The committed summary reads back (its fields have not drifted from the code's).
        let committed = repo_root().join("experiments/results/peers/summary.json");
        std::fs::copy(&committed, dir.path().join("summary.json")).unwrap();
        replot(dir.path(), Path::new(crate::output::DEFAULT_FONT)).unwrap();
        let png = std::fs::metadata(dir.path().join("peers.png")).unwrap();
        assert!(png.len() > 1000, "{png:?}");
        let e = replot(
            Path::new("/nonexistent"),
            Path::new(crate::output::DEFAULT_FONT),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("reading /nonexistent/summary.json"), "{e}");
    }

    #[test]
    fn plans_are_the_same_work_for_every_system() {
        let all: Vec<Vec<Workload>> = [
            System::HarvestRust,
            System::HarvestPython,
            System::Srun,
            System::Parsl,
        ]
        .into_iter()
        .map(|s| plan(s, false, 2))
        .collect();
        for p in &all {
            let kinds: Vec<(&str, &str, usize)> = p
                .iter()
                .map(|w| (w.name.as_str(), w.function.as_str(), w.payload_bytes))
                .collect();
            assert_eq!(kinds.len(), 5);
            assert_eq!(
                kinds,
                all[0]
                    .iter()
                    .map(|w| (w.name.as_str(), w.function.as_str(), w.payload_bytes))
                    .collect::<Vec<_>>()
            );
        }
        let quick = plan(System::Srun, true, 2);
        assert!(
            quick
                .iter()
                .all(|w| w.sequential >= 2 && w.tasks >= 4 && w.tasks <= 40)
        );
    }

    #[test]
    fn ratios_follow_the_rows_and_say_whether_goals_are_met() {
        let r = |system: &str, workload: &str, p50: f64, thr: f64| Row {
            system: system.into(),
            workload: workload.into(),
            payload_bytes: 1,
            p50_us: p50,
            p99_us: p50,
            throughput_per_s: thr,
            first_result_ms: 1.0,
            cpu_s: 0.0,
            cpu_ms_per_call: 0.0,
            sequential: 1,
            tasks: 1,
            in_flight: 1,
        };
        let rows = vec![
            r("harvest-rust", "noop", 20.0, 40_000.0),
            r("harvest-rust-hot", "noop", 12.5, 30_000.0),
            r("harvest-python", "noop", 50.0, 20_000.0),
            r("parsl-htex", "noop", 2500.0, 1000.0),
        ];
        let got = ratios(&rows);
        let find = |w: &str| got.iter().find(|x| x.what.starts_with(w)).unwrap();
        assert_eq!(find("no-op p50: parsl-htex / harvest-rust").value, 125.0);
        assert!(find("no-op p50: parsl-htex / harvest-rust").met);
        assert_eq!(
            find("no-op p50: parsl-htex / harvest-rust-hot").value,
            200.0
        );
        assert_eq!(find("no-op throughput").value, 40.0);
        assert_eq!(find("noop p50: harvest-python").value, 2.5);
        assert!(!find("noop p50: harvest-python").met);
        assert!(
            got.iter().all(|x| !x.what.contains("srun")),
            "no srun row, no srun ratio"
        );
    }

    #[test]
    fn percentiles_and_pid_lists() {
        assert_eq!(percentile(&[3.0, 1.0, 2.0, 4.0], 0.5), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(parse_pids("1,22,").unwrap(), vec![1, 22]);
        assert!(parse_pids("1,x").is_err());
    }
}
