//! A study's files: `summary.json`, `sweep.csv`, `sweep.png`, `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::study::StudySummary;
use crate::output::{OutputError, load_font};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the study's files into `dir`; plots are skipped (and said so) without the font.
pub fn write_study(dir: &Path, s: &StudySummary, font: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let p = dir.join("summary.json");
    let json = serde_json::to_string_pretty(s).expect("summary serializes");
    std::fs::write(&p, json).map_err(io(&p))?;
    let mut csv = String::from(
        "load_fraction,azure_scale,offered_core_hours,served_core_hours,refused_core_hours,lost_to_reclaim_core_hours,wasted_core_hours,recovered_core_hours,harvestable_core_hours,util_cores_with_harvest,invocations_served_pct,wait_p50_s,bounded_slowdown_p50\n",
    );
    for r in &s.sweep {
        let _ = writeln!(
            csv,
            "{},{:.3},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.5},{:.3},{:.1},{:.4}",
            r.load_fraction,
            r.azure_scale,
            r.offered_core_hours,
            r.served_core_hours,
            r.refused_core_hours,
            r.lost_to_reclaim_core_hours,
            r.wasted_core_hours,
            r.recovered_core_hours,
            r.harvestable_core_hours,
            r.util_cores_with_harvest,
            r.invocations_served_pct,
            r.wait_p50_s,
            r.bounded_slowdown_p50
        );
    }
    let p = dir.join("sweep.csv");
    std::fs::write(&p, csv).map_err(io(&p))?;
    let plot_note = match load_font(font) {
        Ok(()) => {
            plot_sweep(&dir.join("sweep.png"), s)?;
            "`sweep.png`".to_owned()
        }
        Err(e) => format!("plot skipped ({e})"),
    };
    let p = dir.join("report.md");
    std::fs::write(&p, report(s, &plot_note)).map_err(io(&p))?;
    Ok(())
}

fn plot_sweep(path: &Path, s: &StudySummary) -> Result<(), OutputError> {
    let err = |e: &dyn std::fmt::Display| OutputError::Plot {
        path: path.to_owned(),
        what: e.to_string(),
    };
    let xmax = s
        .sweep
        .iter()
        .map(|r| r.offered_core_hours)
        .fold(1.0, f64::max);
    let ymax = s.harvestable_core_hours.max(xmax) * 1.05;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Recovered vs offered core-hours ({} nodes)", s.nodes),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax * 1.05, 0.0..ymax)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("offered core-hours (Azure sample, scaled)")
        .y_desc("core-hours")
        .draw()
        .map_err(|e| err(&e))?;
    type Series = (&'static str, RGBColor, fn(&super::study::SweepRow) -> f64);
    let series: [Series; 3] = [
        ("served (completed)", RGBColor(0, 150, 70), |r| {
            r.served_core_hours
        }),
        ("lost to reclaim", RGBColor(200, 40, 40), |r| {
            r.lost_to_reclaim_core_hours
        }),
        ("refused", RGBColor(120, 120, 120), |r| r.refused_core_hours),
    ];
    for (name, color, f) in series {
        chart
            .draw_series(LineSeries::new(
                s.sweep.iter().map(|r| (r.offered_core_hours, f(r))),
                color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    let h = s.harvestable_core_hours;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, h), (xmax * 1.05, h)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("harvestable (idle in batch-only run)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 0.0), (xmax * 1.05, xmax * 1.05)],
            RGBColor(30, 90, 200).stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("served = offered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RGBColor(30, 90, 200)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.0}"))
}

/// The study as markdown.
pub fn report(s: &StudySummary, plot: &str) -> String {
    let mut r = String::new();
    let _ = writeln!(r, "# harvest simulation study: {}\n", s.trace);
    let _ = writeln!(
        r,
        "Machine: {}. Allocation: {:?} ({}). {} nodes ({} time-shifted copies). {} window(s) of {:.0} h. With-harvest demand: `{}` (the Azure sample offers {:.3} core-hours per hour at scale 1).\n",
        s.machine,
        s.allocation,
        s.allocation_reason,
        s.nodes,
        s.replication,
        s.windows,
        s.window_h,
        s.demand,
        s.azure_core_hours_per_hour_at_scale_1
    );
    let _ = writeln!(r, "## Batch baseline against the trace (first window)\n");
    let _ = writeln!(
        r,
        "| | trace | replay | batch only (EASY) | with harvest |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        r,
        "| core utilization | {} | {} | {} | {} |",
        pct(s.util_cores_trace),
        pct(s.util_cores_replay),
        pct(s.util_cores_batch_only),
        pct(s.util_cores_with_harvest)
    );
    let _ = writeln!(
        r,
        "| wait p50 / mean s | {} / {} | | {:.0} / {:.0} | {:.0} / {:.0} |",
        opt(s.wait_p50_s_trace),
        opt(s.wait_mean_s_trace),
        s.wait_p50_s_batch_only,
        s.wait_mean_s_batch_only,
        s.wait_p50_s_with_harvest,
        s.wait_mean_s_with_harvest
    );
    let _ = writeln!(
        r,
        "| start-time error p50 s | | {} | {} | |",
        opt(s.start_error_p50_s_replay),
        opt(s.start_error_p50_s_batch_only)
    );
    let _ = writeln!(
        r,
        "| bounded slowdown p50 / mean | | | {:.2} / {:.2} | {:.2} / {:.2} |",
        s.bounded_slowdown_p50_batch_only,
        s.bounded_slowdown_mean_batch_only,
        s.bounded_slowdown_p50_with_harvest,
        s.bounded_slowdown_mean_with_harvest
    );
    let _ = writeln!(
        r,
        "| queued jobs at window start / end | {} / {} | | {} / {} | {} / {} |\n",
        s.trace_queued_jobs_window_start,
        s.trace_queued_jobs_window_end,
        s.queued_jobs_window_start,
        s.queued_jobs_window_end,
        s.queue_by_window
            .first()
            .map_or(0, |q| q.with_harvest_start),
        s.queue_by_window.first().map_or(0, |q| q.with_harvest_end)
    );
    let _ = writeln!(
        r,
        "Queue order: {:?} ({} fair-share accounts). Queues {} (stable: in every window, batch only and with harvest, the simulated queue ends no longer than the longest of its own at the window's start and the trace's own at the window's start and end).\n",
        s.queue_order,
        s.accounts,
        if s.queue_stable {
            "stable"
        } else {
            "NOT stable"
        }
    );
    let _ = writeln!(
        r,
        "Events/s (wall time of this machine; each run of the same study, first window): with harvest {:.2} M, batch only {:.2} M, replay of the trace's start times (no scheduling decisions: the baseline) {:.2} M; placement p99 {:.2} µs.\n",
        s.events_per_s / 1e6,
        s.events_per_s_batch_only / 1e6,
        s.events_per_s_replay / 1e6,
        s.placement_p99_us
    );
    let _ = writeln!(r, "## Every window\n");
    let _ = writeln!(
        r,
        "| window start (trace h) | core utilization trace / batch only / with harvest | trace peak cores | queued jobs at start / end: trace, batch only, with harvest | queue stable |"
    );
    let _ = writeln!(r, "|---|---|---|---|---|");
    for ((b, h), q) in s
        .batch_only
        .iter()
        .zip(&s.with_harvest)
        .zip(&s.queue_by_window)
    {
        let _ = writeln!(
            r,
            "| {} | {} / {} / {} | {} | {} / {}, {} / {}, {} / {} | {} |",
            b.copy_origins_h
                .iter()
                .map(|o| format!("{:.0}", o + b.window_start_h))
                .collect::<Vec<_>>()
                .join(", "),
            pct(b.util_cores_trace),
            pct(b.util_cores_batch_only),
            pct(h.util_cores_with_harvest),
            b.trace_peak_cores,
            b.trace_queued_jobs_window_start,
            b.trace_queued_jobs_window_end,
            b.queued_jobs_window_start,
            b.queued_jobs_window_end,
            q.with_harvest_start,
            q.with_harvest_end,
            if q.stable { "yes" } else { "no" }
        );
    }
    let _ = writeln!(r);
    let _ = writeln!(r, "## Functions (first window)\n");
    let _ = writeln!(
        r,
        "Harvestable: {:.0} core-hours ({:.0} inside allocated nodes, {:.0} on idle nodes). Offered {:.0}, served {:.0}, refused {:.0}, lost to reclaim {:.0}, wasted by reclaims {:.1}; invocations served {:.2}%.\n",
        s.harvestable_core_hours,
        s.harvestable_inside_jobs_core_hours,
        s.harvestable_beside_jobs_core_hours,
        s.offered_core_hours,
        s.served_core_hours,
        s.refused_core_hours,
        s.lost_to_reclaim_core_hours,
        s.wasted_core_hours,
        s.invocations_served_pct
    );
    let _ = writeln!(
        r,
        "## Change with harvest (paired by window, mean ± 95% CI)\n"
    );
    let c = &s.changes;
    for (name, i) in [
        ("wait p50 s", c.wait_p50_s),
        ("wait mean s", c.wait_mean_s),
        ("bounded slowdown p50", c.bounded_slowdown_p50),
        ("bounded slowdown mean", c.bounded_slowdown_mean),
        ("throughput jobs/h", c.throughput_jobs_per_h),
    ] {
        let _ = writeln!(r, "- {name}: {:+.3} ± {:.3} (n = {})", i.mean, i.ci95, i.n);
    }
    let _ = writeln!(r, "\n## Sweep\n\n{plot}; `sweep.csv`.\n");
    let _ = writeln!(
        r,
        "Free memory on allocated nodes (batch only): {} (Piz Daint: {}).\n",
        pct(s.free_mem_on_allocated_nodes),
        s.daint_free_mem_on_allocated_nodes
            .map_or("n/a".into(), pct)
    );
    if !s.warnings.is_empty() {
        let _ = writeln!(r, "## Warnings\n");
        for w in &s.warnings {
            let _ = writeln!(r, "- {w}");
        }
    }
    r
}
