//! A run's files: `timeseries.csv`, `summary.json`, `report.md` and PNG plots.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::sim::Summary;
use crate::sim::metrics::Sample;

/// The font the plots use (Debian's `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Output that could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot draw {path}: {what}")]
    Plot { path: PathBuf, what: String },
    #[error("cannot load the plot font {path}: {what}; install fonts-dejavu-core or pass --font")]
    Font { path: PathBuf, what: String },
}

fn write(path: &Path, text: &str) -> Result<(), OutputError> {
    std::fs::write(path, text).map_err(|source| OutputError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes the time series as CSV.
pub fn write_csv(path: &Path, samples: &[Sample]) -> Result<(), OutputError> {
    let mut s = String::from(
        "time_h,batch_cores,function_cores,idle_cores,batch_mem_gib,function_mem_gib,idle_mem_gib,allocated_nodes,queued_jobs,queued_functions\n",
    );
    for r in samples {
        let _ = writeln!(
            s,
            "{:.4},{},{},{},{:.1},{:.1},{:.1},{},{},{}",
            r.time_h,
            r.batch_cores,
            r.function_cores,
            r.idle_cores,
            r.batch_mem_gib,
            r.function_mem_gib,
            r.idle_mem_gib,
            r.allocated_nodes,
            r.queued_jobs,
            r.queued_functions
        );
    }
    write(path, &s)
}

/// Writes `summary.json`.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), OutputError> {
    let text = serde_json::to_string_pretty(summary).expect("a summary always serializes");
    write(path, &(text + "\n"))
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// The markdown report for one run. `plots` lists the PNG files written beside it.
pub fn report(s: &Summary, plots: &[&str], plot_note: Option<&str>) -> String {
    let mut r = String::new();
    let trace = Path::new(&s.trace)
        .file_name()
        .map_or(s.trace.clone(), |f| f.to_string_lossy().into_owned());
    let _ = writeln!(
        r,
        "# harvest simulation: {trace}, {} nodes, policy `{}`\n",
        s.nodes, s.policy
    );
    let _ = writeln!(
        r,
        "Machine: {}. Cluster: {} nodes x {} cores, {} GiB each; the trace's {} nodes' job stream is replicated {}x{}. \
         Batch: {:?}. Functions: `{}`. Measured window: {:.1} h after {:.1} h of warm-up.\n",
        s.machine,
        s.nodes,
        s.cores_per_node,
        s.mem_per_node_mib / 1024,
        s.trace_nodes,
        s.replication,
        if s.replication > 1 {
            " (time-shifted copies: each copy replays its own stretch of the trace)"
        } else {
            ""
        },
        s.batch_mode,
        s.functions_spec,
        s.window_h,
        s.window_start_h
    );
    let _ = writeln!(r, "## Headline\n");
    let _ = writeln!(r, "| | batch only | with harvest |\n|---|---|---|");
    let _ = writeln!(
        r,
        "| core utilization | {} | {} |",
        pct(s.util_cores_batch_only),
        pct(s.util_cores_with_harvest)
    );
    let _ = writeln!(
        r,
        "| memory utilization | {} | {} |\n",
        pct(s.util_mem_batch_only),
        pct(s.util_mem_with_harvest)
    );
    let share = |a: f64, b: f64| if b > 0.0 { pct(a / b) } else { "-".into() };
    let _ = writeln!(r, "| figure | value |\n|---|---|");
    let rows: Vec<(&str, String)> = vec![
        (
            "idle core-hours without harvest",
            format!("{:.0}", s.idle_core_hours_batch_only),
        ),
        (
            "core-hours recovered by functions",
            format!(
                "{:.0} ({} of idle)",
                s.core_hours_recovered,
                share(s.core_hours_recovered, s.idle_core_hours_batch_only)
            ),
        ),
        (
            "idle memory GiB-hours without harvest",
            format!("{:.0}", s.idle_mem_gib_hours_batch_only),
        ),
        (
            "memory GiB-hours recovered",
            format!(
                "{:.0} ({} of idle)",
                s.mem_gib_hours_recovered,
                share(s.mem_gib_hours_recovered, s.idle_mem_gib_hours_batch_only)
            ),
        ),
        (
            "batch jobs (submitted / started / completed)",
            format!("{} / {} / {}", s.jobs, s.jobs_started, s.jobs_completed),
        ),
        ("functions submitted", s.functions_submitted.to_string()),
        (
            "functions placed (of which after waiting)",
            format!("{} ({})", s.functions_placed, s.functions_placed_after_wait),
        ),
        (
            "functions refused",
            format!(
                "{} ({})",
                s.functions_refused,
                share(s.functions_refused as f64, s.functions_submitted as f64)
            ),
        ),
        (
            "function wait p50 / p99",
            format!(
                "{:.0} ms / {:.0} ms",
                s.function_wait_p50_ms, s.function_wait_p99_ms
            ),
        ),
        (
            "reclaims (leases ended for a batch job)",
            s.reclaims.to_string(),
        ),
        (
            "function core-hours lost to reclaims",
            format!("{:.1}", s.function_core_hours_lost_to_reclaim),
        ),
        (
            "batch slowdown, cost model (mean, node-time weighted)",
            format!("{:.4}", s.batch_slowdown_mean),
        ),
        (
            "batch slowdown of co-located jobs (mean / max)",
            format!(
                "{:.4} / {:.4}",
                s.batch_slowdown_mean_colocated, s.batch_slowdown_max
            ),
        ),
        (
            "jobs that shared a node with functions",
            s.jobs_colocated.to_string(),
        ),
        (
            "node-hours of sensitive jobs shared with functions",
            format!("{:.1}", s.sensitive_node_hours_colocated),
        ),
        ("placement decisions", s.placements.to_string()),
        (
            "placement latency p50 / p99",
            format!(
                "{:.2} µs / {:.2} µs",
                s.placement_p50_us, s.placement_p99_us
            ),
        ),
        (
            "events, events/s (wall)",
            format!(
                "{} , {:.2} M/s ({:.1} s)",
                s.events,
                s.events_per_s / 1e6,
                s.wall_s
            ),
        ),
        (
            "node over-commit violations",
            s.overcommit_violations.to_string(),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(r, "| {k} | {v} |");
    }
    let c = &s.daint_comparison;
    let _ = writeln!(r, "\n## Compared with Piz Daint\n");
    let _ = writeln!(
        r,
        "Piz Daint's figures are means of the co-location study's `sinfo` snapshots (March 2022); the \
         simulation's are time averages over the window, batch jobs only. The study reports node \
         utilization of 0.63-0.69 without disaggregation and 0.90-0.99 with it; this run: {:.2} \
         without, {:.2} with (cores).\n",
        s.util_cores_batch_only, s.util_cores_with_harvest
    );
    let _ = writeln!(
        r,
        "| statistic | this simulation | Piz Daint |\n|---|---|---|"
    );
    let d = c.daint.as_ref();
    let dv = |f: fn(&crate::daint::DaintStats) -> f64| d.map_or("n/a".to_owned(), |d| pct(f(d)));
    let _ = writeln!(
        r,
        "| idle CPUs on idle nodes / all CPUs | {} | {} |",
        pct(c.sim_idle_cpus_on_idle_nodes),
        dv(|d| d.idle_cpus_on_idle_nodes)
    );
    let _ = writeln!(
        r,
        "| idle CPUs on allocated nodes / all CPUs | {} | n/a (column duplicates the one above upstream) |",
        pct(c.sim_idle_cpus_on_allocated_nodes)
    );
    let _ = writeln!(
        r,
        "| free memory on allocated nodes / their memory | {} | {} |",
        pct(c.sim_free_mem_on_allocated_nodes),
        dv(|d| d.free_mem_on_allocated_nodes)
    );
    let _ = writeln!(
        r,
        "| free memory on idle nodes / all memory | {} | {} |",
        pct(c.sim_free_mem_on_idle_nodes),
        dv(|d| d.free_mem_on_idle_nodes)
    );
    let _ = writeln!(
        r,
        "| allocated nodes / all nodes | {} | {} |",
        pct(c.sim_allocated_node_fraction),
        dv(|d| d.allocated_node_fraction)
    );
    let _ = writeln!(
        r,
        "| idle nodes / all nodes | {} | {} |",
        pct(c.sim_idle_node_fraction),
        dv(|d| d.idle_node_fraction)
    );
    if let Some(d) = d {
        let _ = writeln!(
            r,
            "\nDaint: {} snapshots of {:.0} nodes; {} of nodes were neither allocated nor idle (down, drained, reserved).",
            d.snapshots,
            d.total_nodes,
            pct(d.other_node_fraction)
        );
    }
    let _ = writeln!(r, "\n## Time series\n");
    for p in plots {
        let _ = writeln!(r, "![{p}]({p})\n");
    }
    if let Some(n) = plot_note {
        let _ = writeln!(r, "Plots: {n}\n");
    }
    let _ = writeln!(
        r,
        "Data: `timeseries.csv` (decimated to at most {} samples).\n",
        crate::sim::DEFAULT_SAMPLES
    );
    let t = &s.trace_records;
    let cm = &s.cost_model;
    let _ = writeln!(r, "## Method and assumptions\n");
    let _ = writeln!(
        r,
        "- Trace records read: {}; skipped: {} without a run time, {} without a processor count; {} without a wait time (their trace start is taken as their submit), {} with memory.",
        t.records, t.skipped_no_runtime, t.skipped_no_procs, t.without_wait, t.with_memory
    );
    let _ = writeln!(
        r,
        "- Jobs hold whole nodes; memory per processor from the trace (used, else requested), otherwise a fixed share of the node per core used (see docs/simulator.md)."
    );
    let _ = writeln!(
        r,
        "- Cost model (from the co-location study): median batch slowdown next to CPU functions {:.4} ({} runs, p90 {:.4}), GPU {:.4} ({} runs), remote memory {:.4} ({} runs); applied as 1 + (s - 1) x the share of the job's node-time it shared with functions, after the fact (job end times are not stretched).",
        cm.cpu.median,
        cm.cpu.runs,
        cm.cpu.p90,
        cm.gpu.median,
        cm.gpu.runs,
        cm.memory.median,
        cm.memory.runs
    );
    let _ = writeln!(
        r,
        "- Trace from the Parallel Workloads Archive (Feitelson et al.){}.",
        s.trace_acknowledge
            .as_ref()
            .map_or(String::new(), |a| format!("; acknowledge: {a}"))
    );
    r
}

/// Loads the plot font once per process.
pub fn load_font(path: &Path) -> Result<(), OutputError> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let result = LOADED.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "not a TrueType font".to_owned())
    });
    result.clone().map_err(|what| OutputError::Font {
        path: path.to_owned(),
        what,
    })
}

/// One line of a plot: a name, a colour and a value per sample.
pub type Series<'a> = (&'a str, RGBColor, Box<dyn Fn(&Sample) -> f64 + 'a>);

/// Draws lines over time into a PNG.
pub fn plot(
    path: &Path,
    title: &str,
    y_label: &str,
    samples: &[Sample],
    series: &[Series<'_>],
) -> Result<(), OutputError> {
    let err = |e: &dyn std::fmt::Display| OutputError::Plot {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let x0 = samples.first().map_or(0.0, |s| s.time_h);
    let x1 = samples.last().map_or(1.0, |s| s.time_h).max(x0 + 1e-6);
    let y1 = samples
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.05;
    let root = BitMapBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("simulated time (h)")
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(&e))?;
    for (name, color, f) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.time_h, f(s))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Writes every file of a run into `dir`; returns the plot note (why plots are missing, if so).
pub fn write_run(
    dir: &Path,
    summary: &Summary,
    samples: &[Sample],
    font: &Path,
) -> Result<Option<String>, OutputError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
        path: dir.to_owned(),
        source,
    })?;
    write_csv(&dir.join("timeseries.csv"), samples)?;
    write_summary(&dir.join("summary.json"), summary)?;
    let (plots, note): (Vec<&str>, Option<String>) = match load_font(font) {
        Ok(()) => {
            let total_cores = f64::from(summary.nodes) * f64::from(summary.cores_per_node);
            let total_mem = f64::from(summary.nodes) * summary.mem_per_node_mib as f64 / 1024.0;
            plot(
                &dir.join("cores.png"),
                "Cores by holder",
                "cores",
                samples,
                &[
                    ("total", BLACK, Box::new(move |_| total_cores)),
                    (
                        "batch + functions",
                        RGBColor(0, 150, 70),
                        Box::new(|s| (s.batch_cores + s.function_cores) as f64),
                    ),
                    (
                        "batch",
                        RGBColor(30, 90, 200),
                        Box::new(|s| s.batch_cores as f64),
                    ),
                ],
            )?;
            plot(
                &dir.join("memory.png"),
                "Memory by holder",
                "GiB",
                samples,
                &[
                    ("total", BLACK, Box::new(move |_| total_mem)),
                    (
                        "batch + functions",
                        RGBColor(0, 150, 70),
                        Box::new(|s| s.batch_mem_gib + s.function_mem_gib),
                    ),
                    (
                        "batch",
                        RGBColor(30, 90, 200),
                        Box::new(|s| s.batch_mem_gib),
                    ),
                ],
            )?;
            plot(
                &dir.join("queue.png"),
                "Batch jobs waiting in the queue",
                "queued jobs",
                samples,
                &[(
                    "queued jobs",
                    RGBColor(200, 40, 40),
                    Box::new(|s| s.queued_jobs as f64),
                )],
            )?;
            (vec!["cores.png", "memory.png", "queue.png"], None)
        }
        Err(e) => {
            tracing::warn!("plots skipped: {e}");
            (Vec::new(), Some(format!("skipped ({e})")))
        }
    };
    write(
        &dir.join("report.md"),
        &report(summary, &plots, note.as_deref()),
    )?;
    Ok(note)
}
