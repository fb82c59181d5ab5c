//! `remote-memory`: how fast is a memory lease, and what does a remote client streaming to it
//! cost a memory-bandwidth-bound batch job on the same node?
//!
//! On the real local cluster (brought up with `deploy/local-cluster up --nodes 1` unless the
//! environment already names one; on a larger one the experiment uses its first node and keeps
//! the leases there), in one run:
//! 1. **transport** (no batch job): a client, as an ordinary user, leases a region (its executor
//!    capped at one whole CPU, `cpu_millis` 1000), fills it, and measures 4 KiB reads one at a
//!    time (p50/p99 round trip) and 4 MiB reads, then writes, pipelined a few deep (GB/s); in
//!    the same process and run, a raw TCP baseline over loopback of the same shapes and sizes.
//! 2. **interference**: the interference experiment's STREAM-triad batch job (one CPU) alone,
//!    then beside a client streaming 4 MiB reads and writes to a memory lease on the job's node
//!    (from the node's other CPUs) at increasing offered rates, with harvestd's control off
//!    (`[interference] enabled = false`), and at the highest rate with harvestd's default
//!    control; the job alone again between and after, and each phase compared with the job
//!    alone interpolated to its time.
//!
//! Results: `summary.json`, `runs.csv` and `remote-memory.png` (slowdown against the remote GB/s
//! achieved).
//!
//! - [`client`]: the memory client, run as the ordinary user.
//! - [`report`]: pacing, the summary, the CSV and the plot.

mod client;
mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harvest_core::CpuSet;

pub use client::{MemoryClientArgs, run_memory_client};
use client::{OP_BYTES, StreamOut, TransportOut};
use report::{Run, Setup, achieved_gbps, summarize, write_results};

use super::interference::node::{busy_cpus, cpu_ticks, wait_for, wait_quiet};
use super::interference::{Cluster, job_state, read_job_out, submit_stream_job};
use crate::output::DEFAULT_FONT;

/// Arguments of `harvest-experiments remote-memory`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run (256 MiB transport region, 8 s phases, one paced rate and the maximum) to
    /// check that everything works, in about 80 s.
    #[arg(long)]
    quick: bool,
    /// How long each phase's batch job runs, in seconds.
    #[arg(long, default_value_t = 30)]
    job_seconds: u64,
    /// Offered remote rates (GB/s, reads and writes together; `max`: as fast as it goes), each
    /// a phase with harvestd's control off; the highest also with control on.
    #[arg(long, default_value = "0.25,0.5,1,max", value_name = "GBPS,...")]
    rates: String,
    /// The transport test's region, MiB.
    #[arg(long, default_value_t = 1024)]
    transport_mib: u64,
    /// Seconds of pipelined reads, of writes, and of raw TCP in the transport test.
    #[arg(long, default_value_t = 5.0)]
    transport_seconds: f64,
    /// 4 KiB round trips (remote reads, and raw TCP) in the transport test.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// The streaming client's region, MiB.
    #[arg(long, default_value_t = 256)]
    region_mib: u64,
    /// The memory leases' executor CPU cap, thousandths of one CPU (10..=1000); the transport
    /// test and the streaming client both use it.
    #[arg(long, default_value_t = 1000)]
    cpu_millis: u32,
    /// 4 MiB operations in flight.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Size of each of the job's three arrays, MiB (beyond the last-level cache).
    #[arg(long, default_value_t = 32)]
    array_mib: u64,
    /// The ordinary user the memory client runs as (created if missing).
    #[arg(long, default_value = "harvest-exp-user")]
    user: String,
    /// Where results go [default: experiments/results/remote-memory].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Font for the plot.
    #[arg(long, default_value = DEFAULT_FONT)]
    font: PathBuf,
    /// Before each phase, wait up to this many seconds for the machine to be quiet (other work
    /// below 0.3 CPUs over 2 s); 0 does not wait. `--quick` waits at most 4 s.
    #[arg(long, default_value_t = 180)]
    wait_quiet_s: u64,
}

/// Parses `--rates`: GB/s above 0, or `max` (`None`), in the order given.
fn parse_rates(text: &str) -> Result<Vec<Option<f64>>> {
    text.split(',')
        .map(|r| {
            let r = r.trim();
            if r == "max" {
                return Ok(None);
            }
            r.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Some)
                .with_context(|| {
                    format!(
                        "--rates: {r:?} is neither a rate in GB/s above 0 nor max (e.g. 0.5,1,max)"
                    )
                })
        })
        .collect()
}

/// The phases in order: the job alone first, then each rate uncontrolled and the highest
/// controlled, with the job alone again after every two of those and at the end.
fn plan(rates: &[Option<f64>]) -> Vec<(&'static str, Option<f64>)> {
    let top = rates
        .iter()
        .copied()
        .max_by(|a, b| {
            a.unwrap_or(f64::INFINITY)
                .total_cmp(&b.unwrap_or(f64::INFINITY))
        })
        .flatten();
    let others: Vec<(&'static str, Option<f64>)> = rates
        .iter()
        .map(|&r| ("uncontrolled", r))
        .chain(std::iter::once(("controlled", top)))
        .collect();
    let mut out = vec![("alone", None)];
    for (i, p) in others.iter().enumerate() {
        out.push(*p);
        if i % 2 == 1 || i + 1 == others.len() {
            out.push(("alone", None));
        }
    }
    out
}

/// The CPUs of the job's `stream_job` process (found by its `SLURM_JOB_ID`).
fn job_cpus(job_id: &str) -> Option<CpuSet> {
    let want = format!("SLURM_JOB_ID={job_id}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let p = e.path();
        if !std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "stream_job") {
            continue;
        }
        let Ok(env) = std::fs::read(p.join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            let status = std::fs::read_to_string(p.join("status")).ok()?;
            let list = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            return CpuSet::parse_list(list.trim()).ok();
        }
    }
    None
}

/// The machine's CPUs other than `used`, as a list for taskset (`None`: none left).
fn other_cpus(used: &CpuSet) -> Option<String> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    let mut all = CpuSet::parse_list(online.trim()).ok()?;
    for c in used.iter() {
        all.remove(c);
    }
    (!all.is_empty()).then(|| all.to_list())
}

struct Client {
    child: Child,
    dir: PathBuf,
}

/// Starts the memory client as the ordinary user, on `cpus` if given; waits for its lease.
fn spawn_client(
    cl: &Cluster,
    a: &Args,
    dir: &Path,
    extra: &[String],
    cpus: Option<&str>,
) -> Result<Client> {
    std::fs::create_dir_all(dir)?;
    let chown = std::process::Command::new("chown")
        .arg(&a.user)
        .arg(dir)
        .status()?;
    ensure!(chown.success(), "chown {} {}", a.user, dir.display());
    let mut cmd = cl.command("runuser");
    cmd.args(["-u", &a.user, "--"]);
    if let Some(list) = cpus {
        cmd.args(["taskset", "-c", list]);
    }
    let child = cmd
        .arg(std::env::current_exe()?)
        .args(["remote-memory-client", "--scheduler", &cl.scheduler])
        .args(["--node", &cl.node])
        .args(["--cpu-millis", &a.cpu_millis.to_string()])
        .args(["--depth", &a.depth.to_string()])
        .args(extra)
        .arg("--ready-file")
        .arg(dir.join("ready"))
        .arg("--stop-file")
        .arg(dir.join("stop"))
        .arg("--out")
        .arg(dir.join("out.json"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .context("starting the memory client")?;
    let mut client = Client {
        child,
        dir: dir.to_owned(),
    };
    let ready = wait_for(Duration::from_secs(60), "the memory client's lease", || {
        dir.join("ready").exists() || matches!(client.child.try_wait(), Ok(Some(_)))
    });
    if let Err(e) = ready {
        let _ = std::fs::write(dir.join("stop"), "");
        let _ = client.child.wait();
        return Err(e);
    }
    Ok(client)
}

impl Client {
    /// Stops the client (if still running) and reads its result.
    fn finish<T: serde::de::DeserializeOwned>(mut self) -> Result<T> {
        std::fs::write(self.dir.join("stop"), "")?;
        let exited = wait_for(Duration::from_secs(30), "the memory client to stop", || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if let Err(e) = exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(e);
        }
        let status = self.child.wait()?;
        let text = std::fs::read_to_string(self.dir.join("out.json"))
            .with_context(|| format!("the memory client ({status}) wrote no result"))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Runs the transport test.
fn transport(cl: &Cluster, a: &Args, work: &Path, quick: bool) -> Result<TransportOut> {
    let (mib, secs, trips) = if quick {
        (256, 2.0, 2000)
    } else {
        (a.transport_mib, a.transport_seconds, a.round_trips)
    };
    let extra = [
        "--mode".to_owned(),
        "transport".to_owned(),
        "--region-mib".to_owned(),
        mib.to_string(),
        "--seconds".to_owned(),
        secs.to_string(),
        "--round-trips".to_owned(),
        trips.to_string(),
    ];
    let client = spawn_client(cl, a, &work.join("client-transport"), &extra, None)?;
    let mut client = client;
    wait_for(
        Duration::from_secs(120 + 3 * secs as u64),
        "the transport test",
        || matches!(client.child.try_wait(), Ok(Some(_))),
    )?;
    client.finish()
}

/// Runs one phase of the interference part.
fn run_phase(
    cl: &Cluster,
    a: &Args,
    work: &Path,
    job_bin: &Path,
    (i, phase, rate): (usize, &'static str, Option<f64>),
    seconds: u64,
) -> Result<Run> {
    let tag = format!("rm{i}-{phase}");
    let (job_id, job_out) = submit_stream_job(cl, job_bin, work, &tag, seconds, a.array_mib)?;
    let client = if phase == "alone" {
        None
    } else {
        let cpus = job_cpus(&job_id).and_then(|c| other_cpus(&c));
        if cpus.is_none() {
            eprintln!(
                "remote-memory:   NOTE: the job's CPUs are unknown or take all: the client is not \
                 pinned off them"
            );
        }
        let extra = [
            "--mode".to_owned(),
            "stream".to_owned(),
            "--region-mib".to_owned(),
            a.region_mib.to_string(),
            "--rate-gbps".to_owned(),
            rate.unwrap_or(0.0).to_string(),
        ];
        Some(spawn_client(
            cl,
            a,
            &work.join(format!("client-{tag}")),
            &extra,
            cpus.as_deref(),
        )?)
    };
    let order = ["-", "none", "weight", "quota", "freeze", "evict"];
    let rank = |l: &str| order.iter().position(|o| *o == l).unwrap_or(0);
    let (mut lease_max, mut node_max) = ("-".to_owned(), "-".to_owned());
    let mut verdicts: Vec<String> = Vec::new();
    let t0 = Instant::now();
    let ticks0 = cpu_ticks();
    while !job_state(cl, &job_id).is_empty() {
        let st = cl.interference();
        let level = st["level"].as_str().unwrap_or("-");
        if rank(level) > rank(&node_max) {
            node_max = level.to_owned();
        }
        for l in st["leases"].as_array().into_iter().flatten() {
            let id = l["lease_id"].as_str().unwrap_or("");
            // The node's leases are the client's (its first, or one replacing an evicted lease):
            // the experiment's node runs no other.
            if client.is_some() && !id.is_empty() {
                let lv = l["level"].as_str().unwrap_or("-");
                if rank(lv) > rank(&lease_max) {
                    lease_max = lv.to_owned();
                }
                let v = l["verdict"].as_str().unwrap_or("-").to_owned();
                if !verdicts.contains(&v) {
                    verdicts.push(v);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
        ensure!(
            t0.elapsed() < Duration::from_secs(seconds + 120),
            "job {job_id} ran far beyond its {seconds} s"
        );
    }
    let machine_busy_cpus = match (ticks0, cpu_ticks()) {
        (Some(x), Some(y)) => busy_cpus(x, y),
        _ => f64::NAN,
    };
    let stream: StreamOut = match client {
        Some(c) => c.finish()?,
        None => StreamOut::default(),
    };
    let job = read_job_out(&job_out)?;
    let _ = std::fs::remove_file(cl.run_dir.join("progress").join(&job_id));
    Ok(Run {
        phase,
        offered_gbps: rate,
        achieved_gbps: if phase == "alone" {
            f64::NAN
        } else {
            achieved_gbps(
                &stream.completions_unix_ms,
                OP_BYTES,
                job.start_unix_ms,
                job.end_unix_ms,
            )
        },
        job_chunks_per_cpu_s: job.chunks / job.cpu_s.max(1e-9),
        job_chunks_per_s: job.chunks_per_s,
        job_cpu_share: job.cpu_s / job.seconds.max(1e-9),
        start_unix_ms: job.start_unix_ms,
        end_unix_ms: job.end_unix_ms,
        lease_max_level: lease_max,
        node_max_level: node_max,
        verdicts,
        leases: stream.leases.len(),
        errors: stream.errors,
        busy_before: f64::NAN,
        machine_busy_cpus,
    })
}

/// Runs the experiment and writes its results.
pub fn run_cmd(args: Args) -> Result<()> {
    let quick = args.quick;
    let seconds = if quick { 8 } else { args.job_seconds };
    ensure!(seconds >= 5, "use --job-seconds >= 5");
    ensure!(
        (1..=64).contains(&args.depth),
        "--depth {} is outside 1..=64",
        args.depth
    );
    harvest_core::region::MemorySpec::new(args.region_mib, args.cpu_millis)?;
    let rates = if quick {
        vec![Some(0.5), None]
    } else {
        parse_rates(&args.rates)?
    };
    let wait_quiet_s = if quick {
        args.wait_quiet_s.min(4)
    } else {
        args.wait_quiet_s
    };
    let (out_dir, work, libs, mut cl) =
        super::interference::prepare("remote-memory", args.out.as_ref(), &args.user)?;
    eprintln!(
        "remote-memory: node {} of the cluster in {}",
        cl.node,
        cl.dir.display()
    );
    let mut runs = Vec::new();
    let mut transport_out = None;
    let result = (|| -> Result<()> {
        let busy = wait_quiet(Duration::from_secs(wait_quiet_s));
        eprintln!("remote-memory: transport (other work before: {busy:.2} CPUs)");
        let t = transport(&cl, &args, work.path(), quick)?;
        eprintln!(
            "remote-memory:   4 KiB read p50 {:.1} us (raw TCP {:.1} us); read {:.2} GB/s, write \
             {:.2} GB/s (raw TCP {:.2} GB/s)",
            t.read_p50_us_4k,
            t.raw_tcp_p50_us_4k,
            t.remote_read_gbps,
            t.remote_write_gbps,
            t.raw_tcp_gbps
        );
        transport_out = Some(t);
        let phases = plan(&rates);
        // The TOML the running harvestd was started with (`None`: the cluster's own).
        let mut running: Option<&str> = None;
        for (i, &(phase, rate)) in phases.iter().enumerate() {
            let want = match phase {
                "uncontrolled" => Some("[interference]\nenabled = false\n"),
                "controlled" => Some(""),
                _ => None,
            };
            if let Some(want) = want
                && running != Some(want)
            {
                cl.restart_agent((!want.is_empty()).then_some(want))?;
                running = Some(want);
            }
            let busy_before = wait_quiet(Duration::from_secs(wait_quiet_s));
            let shown = rate.map_or("max".to_owned(), |r| format!("{r} GB/s"));
            eprintln!(
                "remote-memory: phase {}/{} {phase}{} ({seconds} s; other work before: \
                 {busy_before:.2} CPUs)",
                i + 1,
                phases.len(),
                if phase == "alone" {
                    String::new()
                } else {
                    format!(" at {shown}")
                }
            );
            let mut run = run_phase(
                &cl,
                &args,
                work.path(),
                &libs.job,
                (i, phase, rate),
                seconds,
            )?;
            run.busy_before = busy_before;
            eprintln!(
                "remote-memory:   job {:.0} chunks/CPU-s ({:.0}/s), remote {:.2} GB/s, lease \
                 level {} {:?}",
                run.job_chunks_per_cpu_s,
                run.job_chunks_per_s,
                run.achieved_gbps,
                run.lease_max_level,
                run.verdicts
            );
            runs.push(run);
        }
        Ok(())
    })();
    if let Err(e) = cl.restart_agent(None) {
        eprintln!("remote-memory: restarting harvestd with its defaults failed: {e:#}");
    }
    result?;
    let t = transport_out.context("no transport result")?;
    let setup = Setup {
        transport_region_mib: if quick { 256 } else { args.transport_mib },
        transport_cpu_millis: args.cpu_millis,
        stream_cpu_millis: args.cpu_millis,
        stream_region_mib: args.region_mib,
        job_seconds: seconds,
        depth: args.depth,
    };
    let summary = summarize(&t, &runs, &setup);
    for w in &summary.warnings {
        eprintln!("remote-memory: WARNING: {w}");
    }
    write_results(&out_dir, &runs, &summary, &args.font)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    eprintln!("remote-memory: wrote {}", out_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_are_checked() {
        assert_eq!(
            parse_rates("0.25, 1,max").unwrap(),
            [Some(0.25), Some(1.0), None]
        );
        let e = parse_rates("0.5,0").unwrap_err().to_string();
        assert!(e.contains("\"0\" is neither"), "{e}");
        assert!(parse_rates("fast").is_err());
    }

    #[test]
    fn the_plan_puts_the_job_alone_around_the_others_and_controls_the_top_rate() {
        let p = plan(&[Some(0.25), Some(0.5), Some(1.0), None]);
        assert_eq!(
            p,
            [
                ("alone", None),
                ("uncontrolled", Some(0.25)),
                ("uncontrolled", Some(0.5)),
                ("alone", None),
                ("uncontrolled", Some(1.0)),
                ("uncontrolled", None),
                ("alone", None),
                ("controlled", None),
                ("alone", None),
            ]
        );
        let p = plan(&[Some(0.5), Some(2.0)]);
        assert_eq!(p[3], ("alone", None));
        assert_eq!(p[4], ("controlled", Some(2.0)));
        assert_eq!(p.last(), Some(&("alone", None)));
    }
}
