//! `bench-sim`: the simulator's events/s at scale, beside a baseline measured in the same run.
//!
//! One workload (by default the synthetic trace of [`crate::sim::synthetic`] on exactly
//! `--nodes` nodes; or `--trace FILE`, as time-shifted copies) run three ways, `--repeat` times
//! each, interleaved so that a busy machine slows all three alike:
//! - **replay** (the baseline): the trace's own start times, batch only; no scheduling
//!   decisions, so it times the event loop, the allocator and the bookkeeping alone;
//! - **batch only**: EASY backfill over the priority-ordered queue;
//! - **with harvest**: the same, plus the Azure sample scaled to offer `--load` of the idle
//!   core-hours the batch-only run left, placed by the `harvest` policy, interference fed back.
//!
//! Events are counted by the loop (job submissions and ends, function arrivals and ends; an end
//! that no longer holds, a job's end that interference moved or a reclaimed lease's, is popped
//! and skipped but not counted); the simulation is deterministic, so each configuration's event count is the same in every
//! repeat (checked). The wall time is the loop's alone: reading the trace and building the
//! cluster are not timed. Placement latency is the with-harvest run's, measured inside the
//! simulation one decision at a time.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use super::simulate::Workload;
use crate::sim::run::{Inputs, run_with};
use crate::sim::stats::quantile;
use crate::sim::study::{azure_demand, azure_scale};
use crate::sim::{BatchMode, SimConfig, Summary, synthetic};

/// The simulator's target at 10,000 nodes (issue 17): events a second, at least.
pub const TARGET_EVENTS_PER_S: f64 = 1e6;
/// The placement target at 10,000 nodes: p99 at most, microseconds.
pub const TARGET_PLACEMENT_P99_US: f64 = 100.0;
/// Offered batch load of the synthetic trace unless configured.
pub const DEFAULT_SYNTHETIC_LOAD: f64 = 0.9;
/// The load average, read for the record (the figures depend on what else runs).
const LOADAVG: &str = "/proc/loadavg";

/// `bench-sim`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Cluster size: the synthetic machine's nodes, or (with --trace) copies x trace nodes.
    #[arg(long, default_value_t = 10_000)]
    pub nodes: u32,
    /// An SWF trace instead of the synthetic one.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Start this far into the trace (with --trace).
    #[arg(long, default_value = "0s")]
    pub start: String,
    /// Memory per node (with --trace; the synthetic machine has 2 GiB a core).
    #[arg(long)]
    pub node_mem: Option<String>,
    /// The synthetic trace's offered batch load (submitted core-seconds per core-second).
    #[arg(long, default_value_t = DEFAULT_SYNTHETIC_LOAD)]
    pub synthetic_load: f64,
    /// With-harvest demand: the Azure sample scaled to offer this fraction of the batch-only
    /// run's idle core-hours.
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Runs of each configuration (interleaved); the median events/s is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Short window (6 h warm-up, 6 h measured, as `simulate --quick`), for tests.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The shared data directory (reference/ for the cost model, traces/ for the Azure sample).
    #[arg(long, env = "HARVEST_DATA", default_value_os_t = super::default_data_dir())]
    pub data: PathBuf,
    /// Where to write the JSON. Default: results/bench-sim/<workload>-<nodes>n[-quick].json.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the batch-only run, `--repeat` times: its events, loop seconds and events per CPU
    /// second printed, no baseline, nothing written. For profiling the EASY pass alone (e.g.
    /// `valgrind --tool=callgrind --toggle-collect='*batch_pass*'`) and comparing two builds
    /// run alternately; the figures to report come from the full bench.
    #[arg(long)]
    pub batch_only: bool,
    /// With --batch-only: the textbook EASY pass instead of the indexed one (the same schedule,
    /// slower), to compare the two.
    #[arg(long, requires = "batch_only")]
    pub straightforward_pass: bool,
    /// Only the with-harvest run, `--repeat` times (one batch-only run first, untimed, sets the
    /// demand's scale as the full bench does): its events, loop seconds and events per CPU
    /// second printed, no baseline. For profiling the function side of the loop (e.g.
    /// `valgrind --tool=callgrind`) and comparing two builds run alternately; the figures to
    /// report come from the full bench.
    #[arg(long, conflicts_with = "batch_only")]
    pub harvest_only: bool,
    /// With --harvest-only: write the first repeat's summary and time series here (JSON), to
    /// check that two builds simulate the same thing (all but the timing fields).
    #[arg(long, requires = "harvest_only")]
    pub summary_out: Option<PathBuf>,
}

/// One configuration's figures over the repeats.
#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub run: &'static str,
    pub events: u64,
    /// Superseded ends popped and skipped (not counted in `events`).
    pub superseded_ends: u64,
    pub wall_s: Vec<f64>,
    pub events_per_s_median: f64,
    pub events_per_s_min: f64,
    pub events_per_s_max: f64,
    /// Median events/s over the replay baseline's median.
    pub vs_replay: f64,
    /// The loop's time on a CPU per repeat (Linux), and events per CPU second: median, min,
    /// max, and the median over the replay's. Steadier than wall time on a loaded machine.
    pub cpu_s: Vec<f64>,
    pub events_per_cpu_s_median: Option<f64>,
    pub events_per_cpu_s_min: Option<f64>,
    pub events_per_cpu_s_max: Option<f64>,
    pub cpu_vs_replay: Option<f64>,
    pub jobs_started: u64,
    pub util_cores: f64,
    pub placements: u64,
    pub placement_p50_us: f64,
    pub placement_p99_us: f64,
}

/// What `bench-sim` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchSim {
    pub workload: String,
    pub nodes: u32,
    pub cores: u64,
    pub allocation: crate::sim::AllocationMode,
    pub window_h: f64,
    pub warmup_h: f64,
    pub demand: String,
    pub repeat: u32,
    pub load_avg_before: Option<String>,
    pub load_avg_after: Option<String>,
    pub rows: Vec<BenchRow>,
    pub target_events_per_s: f64,
    pub target_placement_p99_us: f64,
    /// The with-harvest and batch-only medians both reach the events/s target.
    pub events_target_met: bool,
    /// The same, per CPU second (the loop's own speed, whatever else runs on the machine).
    pub events_target_met_cpu: Option<bool>,
    pub placement_target_met: bool,
}

/// `simulate`'s workload flags, parsed from an argument list so the bench runs exactly what
/// `simulate` would with them.
#[derive(Debug, Parser)]
struct WorkloadOnly {
    #[command(flatten)]
    w: Workload,
}

fn load_avg() -> Option<String> {
    std::fs::read_to_string(LOADAVG)
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The figures of `runs` (one configuration's repeats), against the baseline's medians (wall
/// and CPU).
pub fn row(
    run: &'static str,
    runs: &[Summary],
    baseline_median: Option<(f64, Option<f64>)>,
) -> BenchRow {
    let mut eps: Vec<f64> = runs.iter().map(|s| s.events_per_s).collect();
    let median = quantile(&mut eps, 0.5);
    let mut cpu: Vec<f64> = runs.iter().filter_map(|s| s.events_per_cpu_s).collect();
    let cpu_known = cpu.len() == runs.len() && !cpu.is_empty();
    let cpu_median = cpu_known.then(|| quantile(&mut cpu, 0.5));
    let (base, base_cpu) = baseline_median.unwrap_or((median, cpu_median));
    let s = &runs[0];
    BenchRow {
        run,
        events: s.events,
        superseded_ends: s.superseded_ends,
        wall_s: runs.iter().map(|s| s.wall_s).collect(),
        events_per_s_median: median,
        events_per_s_min: eps.first().copied().unwrap_or(0.0),
        events_per_s_max: eps.last().copied().unwrap_or(0.0),
        vs_replay: median / base.max(1e-9),
        cpu_s: runs.iter().filter_map(|s| s.cpu_s).collect(),
        events_per_cpu_s_median: cpu_median,
        events_per_cpu_s_min: cpu_known.then(|| cpu[0]),
        events_per_cpu_s_max: cpu_known.then(|| cpu[cpu.len() - 1]),
        cpu_vs_replay: cpu_median.zip(base_cpu).map(|(m, b)| m / b.max(1e-9)),
        jobs_started: s.jobs_started,
        util_cores: s.util_cores_with_harvest,
        placements: s.placements,
        placement_p50_us: s.placement_p50_us,
        placement_p99_us: s.placement_p99_us,
    }
}

/// `--batch-only`: the batch-only run `repeat` times, a line each.
fn batch_only(cfg: &SimConfig, inputs: &Inputs, repeat: u32) -> anyhow::Result<()> {
    for r in 0..repeat {
        let s = run_with(cfg, inputs, |_| {})?.summary;
        println!(
            "batch only{} {}/{repeat}: {} events, {} jobs started, {}",
            if cfg.straightforward_pass {
                " (textbook pass)"
            } else {
                ""
            },
            r + 1,
            s.events,
            s.jobs_started,
            loop_figures(&s),
        );
    }
    Ok(())
}

/// The loop's time and speed as `--batch-only` and `--harvest-only` print them: `loop W s wall,
/// C CPU; E M events/s, P per CPU second`.
fn loop_figures(s: &Summary) -> String {
    format!(
        "loop {:.3} s wall, {} CPU; {:.3} M events/s, {} per CPU second",
        s.wall_s,
        s.cpu_s
            .map_or("unknown".to_owned(), |c| format!("{c:.3} s")),
        s.events_per_s / 1e6,
        s.events_per_cpu_s
            .map_or("unknown".to_owned(), |e| format!("{:.3} M", e / 1e6)),
    )
}

/// `--harvest-only`: the with-harvest run `repeat` times, a line each; the first repeat's
/// summary and samples written to `summary_out` when given.
fn harvest_only(
    cfg: &SimConfig,
    inputs: &Inputs,
    repeat: u32,
    summary_out: Option<&std::path::Path>,
    workload: &str,
) -> anyhow::Result<()> {
    for r in 0..repeat {
        let mut out = run_with(cfg, inputs, |_| {})?;
        // The synthetic trace's file is temporary: name the workload instead.
        out.summary.trace = workload.to_owned();
        let s = &out.summary;
        println!(
            "with harvest {}/{repeat}: {} events ({} superseded ends), {} placements, {}; placement p99 {:.2} µs",
            r + 1,
            s.events,
            s.superseded_ends,
            s.placements,
            loop_figures(s),
            s.placement_p99_us,
        );
        if let (0, Some(path)) = (r, summary_out) {
            let v = serde_json::json!({ "summary": s, "samples": out.samples });
            std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// The bench; `None` with `--batch-only` or `--harvest-only` (nothing written).
pub fn run_cmd(args: Args) -> anyhow::Result<Option<BenchSim>> {
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    anyhow::ensure!(
        args.synthetic_load.is_finite() && args.synthetic_load > 0.0,
        "--synthetic-load {} must be a number > 0",
        args.synthetic_load
    );
    let tmp = tempfile::tempdir().context("a temporary directory for the synthetic trace")?;
    let (trace, workload) = match &args.trace {
        Some(t) => (t.clone(), t.display().to_string()),
        None => {
            let warmup_h = if args.quick { 6 } else { 24 };
            let window_h = if args.quick { 6 } else { 48 };
            // Submissions for a day past the window: the loop runs until the window's jobs end.
            let span_s = (warmup_h + window_h + 24) * 3600;
            let path = tmp.path().join("synthetic.swf");
            std::fs::write(
                &path,
                synthetic::swf(args.nodes, args.synthetic_load, span_s),
            )?;
            (
                path,
                format!(
                    "synthetic: {} nodes x {} cores, offered load {}",
                    args.nodes,
                    synthetic::CORES_PER_NODE,
                    args.synthetic_load
                ),
            )
        }
    };
    let mut argv: Vec<std::ffi::OsString> = vec!["bench-sim".into(), "--trace".into()];
    argv.push(trace.into_os_string());
    for (flag, value) in [
        ("--nodes", args.nodes.to_string()),
        ("--start", args.start.clone()),
        ("--seed", args.seed.to_string()),
    ] {
        argv.extend([flag.into(), value.into()]);
    }
    argv.extend(["--data".into(), args.data.clone().into_os_string()]);
    if let Some(m) = &args.node_mem {
        argv.extend(["--node-mem".into(), m.into()]);
    }
    if args.quick {
        argv.push("--quick".into());
    }
    let base = WorkloadOnly::try_parse_from(argv)?.w.config("harvest")?;
    let mut inputs = Inputs::load(&base)?;
    inputs.need_azure(&base, "azure")?;
    let rate = inputs
        .azure
        .as_ref()
        .map_or(0.0, |a| a.core_hours_per_hour());
    let with = |batch: BatchMode, demand: &str| SimConfig {
        batch,
        demand_text: demand.to_owned(),
        ..base.clone()
    };
    if args.batch_only {
        let cfg = SimConfig {
            straightforward_pass: args.straightforward_pass,
            ..with(BatchMode::Easy, "none")
        };
        return batch_only(&cfg, &inputs, args.repeat).map(|()| None);
    }
    // The with-harvest demand: the Azure sample scaled to offer `--load` of the idle core-hours
    // a batch-only run leaves.
    let demand_for = |b: &Summary| {
        azure_demand(azure_scale(
            args.load,
            b.idle_core_hours_batch_only,
            rate,
            b.window_h,
        ))
    };
    if args.harvest_only {
        let b = run_with(&with(BatchMode::Easy, "none"), &inputs, |_| {})?.summary;
        let cfg = with(BatchMode::Easy, &demand_for(&b));
        return harvest_only(
            &cfg,
            &inputs,
            args.repeat,
            args.summary_out.as_deref(),
            &workload,
        )
        .map(|()| None);
    }
    let before = load_avg();
    let (mut replay, mut batch, mut harvest) = (Vec::new(), Vec::new(), Vec::new());
    let mut demand = String::new();
    for r in 0..args.repeat {
        eprintln!("bench-sim: repeat {} of {}", r + 1, args.repeat);
        replay.push(run_with(&with(BatchMode::Replay, "none"), &inputs, |_| {})?.summary);
        let b = run_with(&with(BatchMode::Easy, "none"), &inputs, |_| {})?.summary;
        if demand.is_empty() {
            demand = demand_for(&b);
        }
        batch.push(b);
        harvest.push(run_with(&with(BatchMode::Easy, &demand), &inputs, |_| {})?.summary);
    }
    let after = load_avg();
    for (what, runs) in [
        ("replay", &replay),
        ("batch only", &batch),
        ("with harvest", &harvest),
    ] {
        anyhow::ensure!(
            runs.iter().all(|s| s.events == runs[0].events),
            "{what}: the event count changed between repeats ({:?}): the simulation is not deterministic",
            runs.iter().map(|s| s.events).collect::<Vec<_>>()
        );
    }
    let base_row = row("replay", &replay, None);
    let baseline = Some((
        base_row.events_per_s_median,
        base_row.events_per_cpu_s_median,
    ));
    let rows = vec![
        base_row,
        row("batch-only", &batch, baseline),
        row("with-harvest", &harvest, baseline),
    ];
    let s = &harvest[0];
    let out = BenchSim {
        workload,
        nodes: s.nodes,
        cores: u64::from(s.nodes) * u64::from(s.cores_per_node),
        allocation: s.allocation,
        window_h: s.window_h,
        warmup_h: s.window_start_h,
        demand,
        repeat: args.repeat,
        load_avg_before: before,
        load_avg_after: after,
        target_events_per_s: TARGET_EVENTS_PER_S,
        target_placement_p99_us: TARGET_PLACEMENT_P99_US,
        events_target_met: rows[1..]
            .iter()
            .all(|r| r.events_per_s_median >= TARGET_EVENTS_PER_S),
        events_target_met_cpu: rows[1..]
            .iter()
            .map(|r| r.events_per_cpu_s_median.map(|e| e >= TARGET_EVENTS_PER_S))
            .collect::<Option<Vec<bool>>>()
            .map(|v| v.iter().all(|&met| met)),
        placement_target_met: rows[2].placement_p99_us <= TARGET_PLACEMENT_P99_US,
        rows,
    };
    print_table(&out);
    let path = args.out.clone().unwrap_or_else(|| {
        let name = match &args.trace {
            None => "synthetic".to_owned(),
            Some(t) => t
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .trim_end_matches(".gz")
                .trim_end_matches(".swf")
                .to_owned(),
        };
        super::results_root().join("bench-sim").join(format!(
            "{name}-{}n{}.json",
            out.nodes,
            if args.quick { "-quick" } else { "" }
        ))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(Some(out))
}

fn print_table(b: &BenchSim) {
    println!(
        "{} on {} nodes ({:?}), {:.0} h window after {:.0} h warm-up, {} repeats; load average {} -> {}",
        b.workload,
        b.nodes,
        b.allocation,
        b.window_h,
        b.warmup_h,
        b.repeat,
        b.load_avg_before.as_deref().unwrap_or("?"),
        b.load_avg_after.as_deref().unwrap_or("?")
    );
    println!(
        "| run | events | M events/s (median, min-max) | vs replay | M events per CPU s (median, min-max) | vs replay | placement p99 µs |\n|---|---|---|---|---|---|---|"
    );
    let m = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{:.2}", v / 1e6));
    for r in &b.rows {
        println!(
            "| {} | {} | {:.2} ({:.2}-{:.2}) | {:.2}x | {} ({}-{}) | {} | {} |",
            r.run,
            r.events,
            r.events_per_s_median / 1e6,
            r.events_per_s_min / 1e6,
            r.events_per_s_max / 1e6,
            r.vs_replay,
            m(r.events_per_cpu_s_median),
            m(r.events_per_cpu_s_min),
            m(r.events_per_cpu_s_max),
            r.cpu_vs_replay
                .map_or("?".to_owned(), |v| format!("{v:.2}x")),
            if r.placements > 0 {
                format!("{:.2}", r.placement_p99_us)
            } else {
                "-".to_owned()
            }
        );
    }
    println!(
        "targets: >= {:.0} M events/s batch only and with harvest: {} (per CPU second: {}); placement p99 <= {:.0} µs: {}",
        b.target_events_per_s / 1e6,
        if b.events_target_met {
            "met"
        } else {
            "NOT met"
        },
        match b.events_target_met_cpu {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "unknown",
        },
        b.target_placement_p99_us,
        if b.placement_target_met {
            "met"
        } else {
            "NOT met"
        }
    );
}
