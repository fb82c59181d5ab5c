//! The faults run's figures: per phase from the load's events and the samples, `summary.json`,
//! `events.json` and a plot of invocations per second with the faults marked.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::load::{Event, Op, Outcome};
use super::{Args, PhaseResult};
use crate::output::load_font;

/// The figures the load's events and the cpuset samples give for one phase.
pub fn phase_figures(
    fault: &str,
    events: &[Event],
    injected_at: i64,
    samples: &[super::Sample],
) -> PhaseResult {
    let inv: Vec<&Event> = events.iter().filter(|e| e.op == Op::Invoke).collect();
    let ok = inv.iter().filter(|e| e.outcome == Outcome::Ok).count();
    let mut errors = BTreeMap::new();
    for e in inv.iter().filter(|e| e.outcome == Outcome::Error) {
        *errors.entry(e.category.clone()).or_insert(0) += 1;
    }
    let late = inv.iter().filter(|e| e.outcome == Outcome::Late).count();
    let lost = inv.iter().filter(|e| e.outcome == Outcome::Lost).count();
    let answered = inv.len() - late - lost;
    let acq: Vec<&Event> = events.iter().filter(|e| e.op == Op::Acquire).collect();
    let acq_ok = acq.iter().filter(|e| e.outcome == Outcome::Ok).count();
    let mut acq_err = BTreeMap::new();
    for e in acq.iter().filter(|e| e.outcome != Outcome::Ok) {
        let key = if e.outcome == Outcome::Error {
            e.category.clone()
        } else {
            format!("{:?}", e.outcome).to_lowercase()
        };
        *acq_err.entry(key).or_insert(0) += 1;
    }
    // Hog invocations are the OOM fault's own: their answer is reported apart.
    for e in events.iter().filter(|e| e.op == Op::Hog) {
        let key = format!("hog: {:?} {}", e.outcome, e.category)
            .trim()
            .to_owned();
        *errors.entry(key).or_insert(0) += 1;
    }
    let recovery_s = acq
        .iter()
        .filter(|e| e.outcome == Outcome::Ok && e.start_unix_ms >= injected_at)
        .map(|e| e.end_unix_ms)
        .min()
        .map(|t| (t - injected_at) as f64 / 1000.0);
    let bad: Vec<&super::Sample> = samples.iter().filter(|(_, h)| !h.is_empty()).collect();
    let mut examples: Vec<String> = bad
        .iter()
        .flat_map(|(t, h)| {
            h.iter()
                .map(move |(pid, job)| format!("t={t} executor pid {pid} on {job}'s CPUs"))
        })
        .collect();
    examples.truncate(10);
    PhaseResult {
        fault: fault.to_owned(),
        injected: Vec::new(),
        repair: Vec::new(),
        at_s: 0.0,
        invocations: inv.len(),
        invocations_ok: ok,
        invocation_errors: errors,
        answered_pct: if inv.is_empty() {
            0.0
        } else {
            answered as f64 * 100.0 / inv.len() as f64
        },
        late,
        silent_losses: lost,
        acquires: acq.len(),
        acquires_ok: acq_ok,
        acquire_errors: acq_err,
        executors_on_batch_cpus_samples: bad.len(),
        samples: samples.len(),
        executors_on_batch_cpus_examples: examples,
        orphan_processes: 0,
        orphan_cgroups: 0,
        orphan_examples: Vec::new(),
        ledger_mismatches: 0,
        ledger_mismatch_examples: Vec::new(),
        lease_mismatches: 0,
        lease_mismatch_examples: Vec::new(),
        recovery_s,
        error: None,
    }
}

/// Whether a phase broke an invariant (or could not run).
pub fn violates(r: &PhaseResult) -> bool {
    r.answered_pct < 100.0
        || r.silent_losses > 0
        || r.late > 0
        || r.executors_on_batch_cpus_samples > 0
        || r.orphan_processes > 0
        || r.orphan_cgroups > 0
        || r.ledger_mismatches > 0
        || r.lease_mismatches > 0
        || r.error.is_some()
        || r.invocations == 0
}

/// Writes summary.json, events.json and faults.png into `dir`.
pub fn write(
    dir: &Path,
    args: &Args,
    nodes: &[String],
    jobs: u64,
    t0: i64,
    results: &[PhaseResult],
    events: &[Event],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let summary = serde_json::json!({
        "quick": args.quick,
        "load": args.shape,
        "nodes": nodes,
        "batch_jobs_submitted": jobs,
        "invocation_deadline_ms": args.shape.deadline_ms,
        "grace_ms": super::load::GRACE.as_millis() as u64,
        "faults": results,
        "violations": results.iter().filter(|r| violates(r)).map(|r| r.fault.clone()).collect::<Vec<_>>(),
        "machine": crate::cluster::machine_line(),
    });
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    std::fs::write(dir.join("events.json"), serde_json::to_string(events)?)?;
    match load_font(&args.font) {
        Ok(()) => plot(&dir.join("faults.png"), t0, results, events)?,
        Err(e) => eprintln!("faults: no plot ({e})"),
    }
    Ok(())
}

/// Per second since `t0`: invocations answered with a result, and with an error or late/lost.
fn per_second(t0: i64, events: &[Event]) -> (Vec<f64>, Vec<f64>) {
    let secs = events
        .iter()
        .map(|e| ((e.end_unix_ms - t0).max(0) / 1000) as usize)
        .max()
        .map_or(0, |s| s + 1);
    let (mut ok, mut bad) = (vec![0.0; secs], vec![0.0; secs]);
    for e in events.iter().filter(|e| e.op == Op::Invoke) {
        let s = ((e.end_unix_ms - t0).max(0) / 1000) as usize;
        if e.outcome == Outcome::Ok {
            ok[s] += 1.0;
        } else {
            bad[s] += 1.0;
        }
    }
    (ok, bad)
}

fn plot(path: &Path, t0: i64, results: &[PhaseResult], events: &[Event]) -> Result<()> {
    let (ok, bad) = per_second(t0, events);
    let xmax = ok.len().max(1) as f64;
    let ymax = ok.iter().chain(&bad).copied().fold(1.0, f64::max) * 1.15;
    let root = BitMapBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "invocations per second under faults (red lines: injections)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start")
        .y_desc("invocations / s")
        .draw()?;
    let ok_style = RGBColor(0x1f, 0x77, 0xb4).stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            ok.iter().enumerate().map(|(i, v)| (i as f64, *v)),
            ok_style,
        ))?
        .label("answered with a result")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ok_style));
    let bad_style = RGBColor(0xff, 0x7f, 0x0e).stroke_width(2);
    chart
        .draw_series(LineSeries::new(
            bad.iter().enumerate().map(|(i, v)| (i as f64, *v)),
            bad_style,
        ))?
        .label("explicit error, late or lost")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], bad_style));
    for r in results.iter().filter(|r| r.fault != "none") {
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(r.at_s, 0.0), (r.at_s, ymax)],
            RED.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            r.fault.clone(),
            (r.at_s, ymax * 0.97),
            ("sans-serif", 13)
                .into_font()
                .transform(FontTransform::Rotate90),
        )))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
