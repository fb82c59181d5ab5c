//! The summary (medians over rounds with their spread), `runs.csv`, `timeline.csv` and the plot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use super::{Phase, Run};
use crate::cluster::machine_line;
use crate::output::load_font;

#[derive(Debug, Serialize, serde::Deserialize)]
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
pub(super) struct Summary {
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

pub(super) fn summarize(runs: &[Run], rounds: usize, seconds: u64) -> Summary {
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
    // The last controlled phase's state, as seen while its job ran.
    let interference = runs
        .iter()
        .rev()
        .find(|r| r.phase == Phase::Controlled && !r.last_state.is_null())
        .map(|r| r.last_state.clone());
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

pub(super) fn write_results(
    dir: &Path,
    runs: &[Run],
    summary: &Summary,
    font: &Path,
) -> Result<()> {
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
    draw(
        path,
        runs,
        [
            &s.slowdown_uncontrolled,
            &s.slowdown_controlled,
            &s.function_throughput_kept,
        ],
    )
}

/// Redraws `interference.png` from a result directory's `timeline.csv` and `summary.json`.
pub(super) fn replot(dir: &Path, font: &Path) -> Result<()> {
    load_font(font)?;
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
    let spread = |key: &str| -> Result<Spread> {
        serde_json::from_value(summary[key].clone())
            .map_err(|e| anyhow::anyhow!("{key} in summary.json: {e}"))
    };
    let spreads = [
        spread("slowdown_uncontrolled")?,
        spread("slowdown_controlled")?,
        spread("function_throughput_kept")?,
    ];
    let mut runs: Vec<Run> = Vec::new();
    let timeline = std::fs::read_to_string(dir.join("timeline.csv"))?;
    for line in timeline.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(round), Some(phase), Some(rate)) = (
            f.first().and_then(|r| r.parse::<usize>().ok()),
            f.get(1).and_then(|p| Phase::from_name(p)),
            f.get(3).and_then(|r| r.parse::<f64>().ok()),
        ) else {
            anyhow::bail!("malformed line in timeline.csv: {line:?}");
        };
        let round = round - 1;
        match runs
            .iter_mut()
            .find(|r| r.round == round && r.phase == phase)
        {
            Some(r) => r.per_second.push(rate),
            None => runs.push(Run {
                per_second: vec![rate],
                ..Run::empty(round, phase)
            }),
        }
    }
    draw(
        &dir.join("interference.png"),
        &runs,
        [&spreads[0], &spreads[1], &spreads[2]],
    )
}

fn draw(path: &Path, runs: &[Run], spreads: [&Spread; 3]) -> Result<()> {
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
    let bars = [(spreads[0], RED), (spreads[1], BLUE), (spreads[2], GREEN)];
    let top = bars.iter().map(|b| b.0.max).fold(10.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("medians over rounds (min-max)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..3.0, 0.0..top)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&|_| String::new())
        .x_desc("slowdown uncontrolled | slowdown controlled | functions kept (%)")
        .draw()?;
    for (i, (sp, color)) in bars.iter().enumerate() {
        let x = i as f64;
        chart.draw_series(std::iter::once(Text::new(
            format!("{:.1}", sp.median),
            (x + 0.3, sp.max.max(sp.median).max(0.0) + top * 0.02),
            ("sans-serif", 16),
        )))?;
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
    fn spreads_have_a_median_and_the_extremes() {
        let s = spread(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 2.0]).median, 1.5);
        assert!(spread(&[]).median.is_nan());
    }
}
