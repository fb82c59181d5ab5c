//! `reclaim`: how fast the batch job gets its CPUs back, on the real local cluster.
//!
//! Each round, on one node (the others filled by a batch job so that leases land there):
//! - **with a function**: a user's lease runs `spin` (busy forever) on the node, then `srun
//!   --exclusive true` starts a step on all of its CPUs. harvestd evicts the executor before the
//!   step's tasks run; the agent's counters (as `harvest nodes --json` shows them) give that
//!   reclaim's latency, plugin report to executor gone, and whether it overran its deadline.
//!   The `spin` caller must end with LeaseRevoked (exit code 15), never hang.
//! - **without**: the same `srun` on the idle node: the baseline step start.
//!
//! The two kinds alternate (ABBA) so that drift on this shared machine hits both alike. The
//! added step-start delay is the difference of the medians of `srun`'s wall time. With
//! `--background churn` the agent is kept busy meanwhile ([`super::reclaim_load`]: metric scrapes
//! throughout, a second lease starting as each step with a function starts). Results go to
//! `experiments/results/reclaim/` (`summary.json`, `rounds.csv`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;
use serde_json::Value;

use super::reclaim_load::{Background, ChurnLease, LoadReport, SCRAPE_INTERVAL, Scrapers};
use crate::cluster::Cluster;

/// The user the benchmark's leases belong to (created when missing; harvestd runs no root
/// executors by default).
pub const BENCH_USER: &str = "harvest-bench-user";

const SPIN_C: &str = "#include <stdint.h>\nuint32_t spin(void *in, uint32_t len, void *out) \
    { (void)in; (void)len; (void)out; for (volatile unsigned long i = 0;; i++) {} return 0; }\n";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Rounds of each kind (with a function to reclaim, and without).
    #[arg(long, default_value_t = 100)]
    pub rounds: usize,
    /// A short run (5 rounds of each) that checks the whole path, e.g. from a test.
    #[arg(long)]
    pub quick: bool,
    /// The node to start steps on [default: the first node sinfo lists].
    #[arg(long)]
    pub node: Option<String>,
    /// Where results go [default: experiments/results/reclaim].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// What else the agent does meanwhile: `none`, or `churn` (metric scrapes every 100 ms of the
    /// node's harvestd and of the scheduler, and a second lease starting as each step with a
    /// function starts).
    #[arg(long, value_enum, default_value_t = Background::None)]
    pub background: Background,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub round: usize,
    /// "function" (a spinning executor to reclaim) or "idle".
    pub kind: &'static str,
    pub srun_ms: f64,
    /// The agent's reclaim latency (plugin report to executor gone); function rounds only.
    pub reclaim_ms: Option<f64>,
    pub overrun: bool,
    /// The spinning caller's exit code (15: LeaseRevoked).
    pub caller_exit: Option<i32>,
    /// Reclaims the agent counted in the round (1; more when a background lease was reclaimed
    /// apart from the step's own); `reclaim_ms` is then their mean.
    pub reclaims: u64,
    /// A background lease was asked for during the step (and whether it got an executor).
    pub churn: Option<bool>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rounds: usize,
    pub reclaim_p50_ms: f64,
    pub reclaim_p99_ms: f64,
    pub reclaim_max_ms: f64,
    pub step_start_p50_ms_with_function: f64,
    pub step_start_p50_ms_idle: f64,
    pub step_start_added_p50_ms: f64,
    pub overruns: u64,
    /// Callers that did not end with LeaseRevoked (should be 0).
    pub callers_not_revoked: usize,
    pub target_reclaim_p99_ms: f64,
    pub target_step_start_added_p50_ms: f64,
    pub node: String,
    pub machine: String,
    /// What ran beside the rounds.
    pub load: LoadReport,
}

/// Nearest-rank percentile of `v` (sorted here).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

struct Bench {
    cluster: Cluster,
    node: String,
    harvest: PathBuf,
    lib: PathBuf,
    background: Background,
}

impl Bench {
    fn nodes(&self) -> Result<Value> {
        let out = self
            .cluster
            .command(&self.harvest)
            .args(["nodes", "--json"])
            .output()?;
        ensure!(
            out.status.success(),
            "harvest nodes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The node's (reclaims, latency sum µs, overruns) as the scheduler last heard them.
    fn counters(&self) -> Result<(u64, u64, u64)> {
        let nodes = self.nodes()?;
        let n = nodes
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == self.node.as_str()))
            .with_context(|| format!("no node {} in harvest nodes", self.node))?;
        let c = &n["counters"];
        let get = |k: &str| c[k].as_u64().unwrap_or(0);
        Ok((
            get("reclaims"),
            get("reclaim_latency_us_sum"),
            get("reclaim_overruns"),
        ))
    }

    fn wait_idle(&self) -> Result<()> {
        wait_for(Duration::from_secs(30), "the node to be idle again", || {
            let nodes = self.nodes()?;
            let n = nodes
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == self.node.as_str()))
                .cloned()
                .unwrap_or_default();
            let empty = |k: &str| n["cpus"][k].as_array().is_some_and(Vec::is_empty);
            Ok(empty("batch") && empty("function"))
        })
    }

    /// `srun --exclusive true` on the node: its wall time in ms.
    fn srun(&self) -> Result<f64> {
        let t = Instant::now();
        let out = self
            .cluster
            .command("srun")
            .args(["-w", &self.node, "-N1", "--exclusive", "true"])
            .output()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "srun failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(ms)
    }

    /// A lease of the bench user on the node with `spin` running in it; returns the caller.
    fn spinning_lease(&self) -> Result<(String, Child)> {
        let out = self
            .cluster
            .command("runuser")
            .args(["-u", BENCH_USER, "--"])
            .arg(&self.harvest)
            .args(["--scheduler", self.cluster.require("HARVEST_SCHEDULER")?])
            .args(["lease", "acquire", "--lib"])
            .arg(&self.lib)
            .args(["--cores", "1", "--mem", "64M", "--lifetime", "5m", "--json"])
            .output()?;
        ensure!(
            out.status.success(),
            "harvest lease acquire: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lease: Value = serde_json::from_slice(&out.stdout)?;
        let id = lease["id"].as_str().context("lease id")?.to_owned();
        ensure!(
            lease["node"] == self.node.as_str(),
            "the lease went to {} instead of {} (is another node idle?)",
            lease["node"],
            self.node
        );
        // As the lease's owner: only the owner gets the lease's secret from the scheduler.
        let caller = self
            .cluster
            .command("runuser")
            .args(["-u", BENCH_USER, "--"])
            .arg(&self.harvest)
            .args(["--scheduler", self.cluster.require("HARVEST_SCHEDULER")?])
            .args([
                "invoke",
                "--lease",
                &id,
                "--fn",
                "spin",
                "--timeout",
                "120s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        // Spinning: the executor and the worker that runs `spin` are both in the lease group.
        let procs = self
            .cluster
            .cgroup_root
            .clone()
            .join("cpuset")
            .join(format!("harvest_{}", self.node))
            .join(format!("lease_{id}"))
            .join("cgroup.procs");
        wait_for(Duration::from_secs(10), "the function to run", || {
            Ok(std::fs::read_to_string(&procs)
                .map(|t| t.lines().count() >= 2)
                .unwrap_or(false))
        })?;
        Ok((id, caller))
    }

    fn round_with_function(&self, round: usize) -> Result<Round> {
        let (_, mut caller) = self.spinning_lease()?;
        let (reclaims, sum, overruns) = self.counters()?;
        // The second lease's reservation and executor start race the step's reclaim.
        let churn = match self.background {
            Background::Churn => {
                let c = ChurnLease::ask(&self.cluster, &self.harvest, &self.lib)?;
                std::thread::sleep(Duration::from_millis(20));
                Some(c)
            }
            Background::None => None,
        };
        let srun_ms = self.srun()?;
        // The agent's report after the reclaim carries the counters (within a heartbeat).
        let mut after = (reclaims, sum, overruns);
        wait_for(Duration::from_secs(5), "the reclaim to be counted", || {
            after = self.counters()?;
            Ok(after.0 > reclaims)
        })?;
        let churn = churn.map(|c| c.finish(&self.cluster, &self.harvest));
        if churn.is_some() {
            // A background lease granted after the step is evicted by the next reconcile pass
            // instead: let it be counted now, not in the next round.
            std::thread::sleep(Duration::from_millis(1500));
            after = self.counters()?;
        }
        let counted = after.0 - reclaims;
        ensure!(
            counted == 1 || (churn.is_some() && counted >= 1),
            "{counted} reclaims in one round (another client on the node?)"
        );
        let mut code = None;
        wait_for(Duration::from_secs(10), "the caller to end", || {
            code = caller.try_wait()?.map(|s| s.code());
            Ok(code.is_some())
        })?;
        Ok(Round {
            round,
            kind: "function",
            srun_ms,
            reclaim_ms: Some((after.1 - sum) as f64 / 1e3 / counted as f64),
            overrun: after.2 > overruns,
            caller_exit: code.flatten(),
            reclaims: counted,
            churn,
        })
    }

    fn round_idle(&self, round: usize) -> Result<Round> {
        Ok(Round {
            round,
            kind: "idle",
            srun_ms: self.srun()?,
            reclaim_ms: None,
            overrun: false,
            caller_exit: None,
            reclaims: 0,
            churn: None,
        })
    }
}

/// How often a round checks what it waits for.
const POLL: Duration = Duration::from_millis(10);

fn wait_for(timeout: Duration, what: &str, done: impl FnMut() -> Result<bool>) -> Result<()> {
    crate::cluster::wait_for(timeout, POLL, what, done)
}

fn build_library(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("spin.c");
    let lib = dir.join("libspin.so");
    std::fs::write(&src, SPIN_C)?;
    let out = Command::new("cc")
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
    for p in [dir, lib.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(lib)
}

pub fn run_cmd(args: Args) -> Result<()> {
    let rounds = if args.quick { 5 } else { args.rounds };
    ensure!(rounds > 0, "--rounds must be at least 1");
    let cluster = Cluster::open()?;
    crate::cluster::ensure_user(BENCH_USER)?;
    let nodes = cluster.node_names()?;
    let node = args.node.clone().unwrap_or_else(|| nodes[0].clone());
    ensure!(
        nodes.contains(&node),
        "no node {node} in this cluster: {nodes:?}"
    );
    let work = std::env::temp_dir().join(format!("harvest-reclaim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let bench = Bench {
        harvest: cluster.bin("harvest")?,
        lib: build_library(&work)?,
        node: node.clone(),
        cluster,
        background: args.background,
    };
    // The agents may still be registering (a cluster just brought up).
    wait_for(
        Duration::from_secs(30),
        "every node to be up in harvest nodes",
        || {
            let v = bench.nodes()?;
            Ok(v.as_array()
                .is_some_and(|a| a.len() >= nodes.len() && a.iter().all(|n| n["state"] == "up")))
        },
    )?;
    // Fill every other node so that each lease lands on ours.
    let mut fillers = Vec::new();
    for other in nodes.iter().filter(|n| **n != node) {
        fillers.push(bench.cluster.sbatch_exclusive(other, "sleep 3600")?);
    }
    let scrapers = match args.background {
        Background::Churn => Some(Scrapers::start(super::reclaim_load::metrics_urls(
            &bench.cluster,
            &node,
        )?)),
        Background::None => None,
    };
    let result = (|| -> Result<Vec<Round>> {
        for other in nodes.iter().filter(|n| **n != node) {
            bench.cluster.wait_node_full(&bench.harvest, other)?;
        }
        let mut out = Vec::new();
        for i in 0..rounds {
            // ABBA: function first on even rounds, idle first on odd ones.
            let kinds: [bool; 2] = if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for with_function in kinds {
                bench.wait_idle()?;
                out.push(if with_function {
                    bench.round_with_function(i)?
                } else {
                    bench.round_idle(i)?
                });
            }
            eprint!("\rreclaim: round {}/{rounds}", i + 1);
        }
        eprintln!();
        Ok(out)
    })();
    let (scrapes_ok, scrapes_failed) = scrapers.map_or((0, 0), Scrapers::stop);
    for id in fillers {
        bench.cluster.scancel(id);
    }
    let _ = std::fs::remove_dir_all(&work);
    let rounds_done = result?;
    let mut summary = summarize(&rounds_done, &node);
    summary.load = LoadReport {
        background: format!("{:?}", args.background).to_lowercase(),
        scrape_interval_ms: match args.background {
            Background::Churn => SCRAPE_INTERVAL.as_millis() as u64,
            Background::None => 0,
        },
        scrapes_ok,
        scrapes_failed,
        churn_leases_asked: rounds_done.iter().filter(|r| r.churn.is_some()).count() as u64,
        churn_leases_granted: rounds_done.iter().filter(|r| r.churn == Some(true)).count() as u64,
    };
    let dir = args
        .out
        .unwrap_or_else(|| super::results_root().join("reclaim"));
    std::fs::create_dir_all(&dir)?;
    write_csv(&dir.join("rounds.csv"), &rounds_done)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!("{}", report(&summary));
    println!("results: {}", dir.display());
    Ok(())
}

pub fn summarize(rounds: &[Round], node: &str) -> Summary {
    let pick = |kind: &str| -> Vec<f64> {
        rounds
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.srun_ms)
            .collect()
    };
    let reclaim: Vec<f64> = rounds.iter().filter_map(|r| r.reclaim_ms).collect();
    let with = percentile(&pick("function"), 50.0);
    let idle = percentile(&pick("idle"), 50.0);
    Summary {
        rounds: reclaim.len(),
        reclaim_p50_ms: percentile(&reclaim, 50.0),
        reclaim_p99_ms: percentile(&reclaim, 99.0),
        reclaim_max_ms: percentile(&reclaim, 100.0),
        step_start_p50_ms_with_function: with,
        step_start_p50_ms_idle: idle,
        step_start_added_p50_ms: with - idle,
        overruns: rounds.iter().filter(|r| r.overrun).count() as u64,
        callers_not_revoked: rounds
            .iter()
            .filter(|r| r.kind == "function" && r.caller_exit != Some(15))
            .count(),
        target_reclaim_p99_ms: 5.0,
        target_step_start_added_p50_ms: 5.0,
        node: node.to_owned(),
        machine: crate::cluster::machine_line(),
        load: LoadReport::default(),
    }
}

fn write_csv(path: &Path, rounds: &[Round]) -> Result<()> {
    let mut text =
        String::from("round,kind,srun_ms,reclaim_ms,overrun,caller_exit,reclaims,churn\n");
    for r in rounds {
        text.push_str(&format!(
            "{},{},{:.3},{},{},{},{},{}\n",
            r.round,
            r.kind,
            r.srun_ms,
            r.reclaim_ms.map_or(String::new(), |m| format!("{m:.3}")),
            r.overrun,
            r.caller_exit.map_or(String::new(), |c| c.to_string()),
            r.reclaims,
            r.churn
                .map_or(String::new(), |g| if g { "granted" } else { "refused" }
                    .into())
        ));
    }
    std::fs::write(path, text)?;
    Ok(())
}

pub fn report(s: &Summary) -> String {
    let verdict = |ok: bool| if ok { "meets" } else { "MISSES" };
    let mut t = BTreeMap::new();
    t.insert(
        0,
        format!(
            "reclaim on {} over {} rounds ({})",
            s.node, s.rounds, s.machine
        ),
    );
    t.insert(
        1,
        format!(
            "  reclaim latency (plugin report -> executor gone): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  [{} the p99 <= {} ms target]",
            s.reclaim_p50_ms,
            s.reclaim_p99_ms,
            s.reclaim_max_ms,
            verdict(s.reclaim_p99_ms <= s.target_reclaim_p99_ms),
            s.target_reclaim_p99_ms
        ),
    );
    t.insert(
        2,
        format!(
            "  step start (srun --exclusive true) p50: {:.2} ms with a function to reclaim, {:.2} ms on an idle node: {:+.2} ms  [{} the <= {} ms target]",
            s.step_start_p50_ms_with_function,
            s.step_start_p50_ms_idle,
            s.step_start_added_p50_ms,
            verdict(s.step_start_added_p50_ms <= s.target_step_start_added_p50_ms),
            s.target_step_start_added_p50_ms
        ),
    );
    t.insert(
        3,
        format!(
            "  overruns: {}  [{} the zero target]; callers that did not get LeaseRevoked: {}",
            s.overruns,
            verdict(s.overruns == 0),
            s.callers_not_revoked
        ),
    );
    let l = &s.load;
    t.insert(
        4,
        if l.background == "churn" {
            format!(
                "  background: metric scrapes of the node's harvestd and the scheduler every {} ms ({} answered, {} failed); a second lease asked for as each step with a function started ({} asked, {} got an executor)",
                l.scrape_interval_ms,
                l.scrapes_ok,
                l.scrapes_failed,
                l.churn_leases_asked,
                l.churn_leases_granted
            )
        } else {
            "  background: none (--background churn adds scrapes and lease starts)".to_owned()
        },
    );
    t.into_values().collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn the_summary_compares_medians_and_counts_what_went_wrong() {
        let r = |kind, srun_ms, reclaim_ms, overrun, caller_exit| Round {
            round: 0,
            kind,
            srun_ms,
            reclaim_ms,
            overrun,
            caller_exit,
            reclaims: u64::from(reclaim_ms.is_some()),
            churn: None,
        };
        let rounds = [
            r("function", 90.0, Some(5.0), false, Some(15)),
            r("function", 94.0, Some(7.0), true, Some(3)),
            r("function", 92.0, Some(6.0), false, Some(15)),
            r("idle", 88.0, None, false, None),
            r("idle", 89.0, None, false, None),
            r("idle", 87.0, None, false, None),
        ];
        let s = summarize(&rounds, "n1");
        assert_eq!(s.rounds, 3);
        assert_eq!(s.reclaim_p50_ms, 6.0);
        assert_eq!(s.reclaim_p99_ms, 7.0);
        assert_eq!(s.step_start_added_p50_ms, 92.0 - 88.0);
        assert_eq!(s.overruns, 1);
        assert_eq!(s.callers_not_revoked, 1);
        let text = report(&s);
        assert!(text.contains("MISSES the zero target"), "{text}");
        assert!(text.contains("MISSES the p99 <= 5 ms target"), "{text}");
        assert!(text.contains("background: none"), "{text}");
    }
}
