//! The summary (medians over rounds with their spread), `runs.csv`, `timeline.csv` and the plot.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use super::{Phase, Run};
use crate::cluster::machine_line;
use crate::output::load_font;

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(super) struct Spread {
    median: f64,
    min: f64,
    max: f64,
    /// The quartiles (the plot's whiskers).
    #[serde(default)]
    q1: f64,
    #[serde(default)]
    q3: f64,
    /// The mean and its standard error over the rounds.
    #[serde(default)]
    mean: f64,
    #[serde(default)]
    se: f64,
    each: Vec<f64>,
}

/// Linear interpolation between order statistics (the `type 7` quantile of R and NumPy).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let h = q * (n - 1) as f64;
            let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
            sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
        }
    }
}

fn spread(v: &[f64]) -> Spread {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let se = if s.len() > 1 {
        (s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() / n.sqrt()
    } else {
        f64::NAN
    };
    Spread {
        median: quantile(&s, 0.5),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        q1: quantile(&s, 0.25),
        q3: quantile(&s, 0.75),
        mean,
        se,
        each: v.to_vec(),
    }
}

/// One way of running the functions beside the job: what it cost the job and what the
/// functions kept.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub(super) struct FrontierPoint {
    phase: String,
    slowdown_pct: Spread,
    /// The thrasher's throughput kept (the only function before harmless leases came).
    function_throughput_kept_pct: Spread,
    /// The harmless leases' throughput kept (their mean per round; absent without them).
    #[serde(default)]
    harmless_throughput_kept_pct: Option<Spread>,
}

#[derive(Debug, Serialize)]
pub(super) struct Summary {
    slowdown_uncontrolled_pct: f64,
    slowdown_controlled_pct: f64,
    function_throughput_kept_pct: f64,
    target: &'static str,
    target_met: bool,
    /// The thrasher's throughput kept under control (the same as
    /// `function_throughput_kept_pct`).
    harmful_throughput_kept_pct: f64,
    /// The harmless leases' throughput kept under control (`null`: no harmless lease ran).
    harmless_throughput_kept_pct: Option<f64>,
    /// The share of controlled time in which the thrasher, and only it, was throttled.
    culprit_identified_pct: Option<f64>,
    /// Seconds from a controlled job's start to the first right verdict (thrasher a culprit,
    /// no harmless lease one), median over the rounds (`null`: never right).
    first_correct_verdict_s: Option<f64>,
    /// The attribution target: controlled slowdown <= 2% while the harmless leases keep >= 90%
    /// of their throughput (`null`: no harmless lease ran).
    attribution_target: &'static str,
    attribution_target_met: Option<bool>,
    /// The job beside a no-op function, control off: harvest's own cost (`null`: not run).
    slowdown_noop_pct: Option<f64>,
    slowdown_noop: Option<Spread>,
    /// The verdicts the node published for the thrasher in the controlled phases (each once).
    thrasher_verdicts_controlled: Vec<String>,
    /// How many harmless leases ran beside the thrasher, and why fewer than asked.
    harmless_leases: usize,
    harmless_note: Option<String>,
    /// Whether any static quota met the target: whether this machine allows it at all with
    /// these workloads (`null`: no static quota was measured).
    static_quota_met_target: Option<bool>,
    /// Uncontrolled, each static quota and the controller: median slowdown and throughput
    /// kept, with their spread over the rounds.
    frontier: Vec<FrontierPoint>,
    rounds: usize,
    job_seconds: u64,
    rate: &'static str,
    reference: &'static str,
    slowdown_uncontrolled: Spread,
    slowdown_controlled: Spread,
    function_throughput_kept: Spread,
    wall_clock_slowdown_uncontrolled: Spread,
    wall_clock_slowdown_controlled: Spread,
    job_alone_chunks_per_cpu_s: Spread,
    /// How much the job alone changed from one alone phase to the next (%, absolute): the
    /// host's drift over a round, the noise floor any slowdown here is measured against.
    job_alone_drift_pct: Spread,
    job_cpu_share: BTreeMap<String, Spread>,
    function_uncontrolled_per_s: Spread,
    function_controlled_per_s: Spread,
    controlled_max_levels: Vec<String>,
    /// Phases whose measurement is suspect (no invocation completed, a lease lost).
    pub(super) warnings: Vec<String>,
    /// What the node's signals could not see (from its interference state).
    signals_unavailable: Vec<String>,
    /// Signals it did see, with their latest values, at the end of the last controlled phase.
    signals_seen: Vec<String>,
    interference_actions: serde_json::Value,
    machine: String,
}

fn mid_ms(r: &Run) -> f64 {
    (r.start_unix_ms + r.end_unix_ms) as f64 / 2.0
}

/// The job alone's rate at `run`'s time: interpolated between the alone phases just before
/// and just after it (the one there is at either end). `rate` picks the rate compared.
fn reference(alone: &[&Run], run: &Run, rate: fn(&Run) -> f64) -> f64 {
    let t = mid_ms(run);
    let before = alone.iter().rev().find(|a| mid_ms(a) <= t);
    let after = alone.iter().find(|a| mid_ms(a) > t);
    match (before, after) {
        (Some(b), Some(a)) => {
            let w = (t - mid_ms(b)) / (mid_ms(a) - mid_ms(b));
            rate(b) + w * (rate(a) - rate(b))
        }
        (Some(x), None) | (None, Some(x)) => rate(x),
        (None, None) => f64::NAN,
    }
}

fn slowdown_pct(reference: f64, rate: f64) -> f64 {
    (reference / rate - 1.0) * 100.0
}

/// The target: at most 2% slower while the functions keep at least half their throughput.
fn meets_target(slowdown_pct: f64, kept_pct: f64) -> bool {
    slowdown_pct <= 2.0 && kept_pct >= 50.0
}

/// The job-alone phases, in the order they ran.
fn alone_in_time(runs: &[Run]) -> Vec<&Run> {
    let mut alone: Vec<&Run> = runs.iter().filter(|r| r.phase == Phase::Alone).collect();
    alone.sort_by(|a, b| mid_ms(a).total_cmp(&mid_ms(b)));
    alone
}

/// Each round's slowdown (chunks per CPU-second and per wall-clock second) against `alone` and
/// throughput kept (against the round's uncontrolled phase) for `phase`.
fn measure(runs: &[Run], alone: &[&Run], phase: Phase) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (cpu, wall, kept, _) = measure_all(runs, alone, phase);
    (cpu, wall, kept)
}

/// [`measure`], and the harmless leases' throughput kept (their mean per round, against the
/// round's uncontrolled phase; empty without harmless leases).
fn measure_all(
    runs: &[Run],
    alone: &[&Run],
    phase: Phase,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut cpu, mut wall, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    let mut harmless = Vec::new();
    for r in runs.iter().filter(|r| r.phase == phase) {
        cpu.push(slowdown_pct(
            reference(alone, r, |a| a.job_chunks_per_cpu_s),
            r.job_chunks_per_cpu_s,
        ));
        wall.push(slowdown_pct(
            reference(alone, r, |a| a.job_chunks_per_s),
            r.job_chunks_per_s,
        ));
        let un = runs
            .iter()
            .find(|u| u.round == r.round && u.phase == Phase::Uncontrolled);
        kept.push(un.map_or(f64::NAN, |u| r.fn_per_s / u.fn_per_s.max(1e-9) * 100.0));
        if let Some(u) = un
            && !r.harmless_per_s.is_empty()
            && r.harmless_per_s.len() == u.harmless_per_s.len()
        {
            let each: Vec<f64> = r
                .harmless_per_s
                .iter()
                .zip(&u.harmless_per_s)
                .map(|(c, u)| c / u.max(1e-9) * 100.0)
                .collect();
            harmless.push(each.iter().sum::<f64>() / each.len() as f64);
        }
    }
    (cpu, wall, kept, harmless)
}

/// The absolute change (%) of the job alone from each alone phase (in time order) to the next.
fn alone_drift(alone: &[&Run]) -> Vec<f64> {
    alone
        .windows(2)
        .map(|w| (w[1].job_chunks_per_cpu_s / w[0].job_chunks_per_cpu_s - 1.0).abs() * 100.0)
        .collect()
}

/// What makes a phase's measurement suspect.
fn warnings(runs: &[Run]) -> Vec<String> {
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.phase != Phase::Alone) {
        let what = format!("round {} {}", r.round + 1, r.phase.name());
        if r.fn_invocations == 0 {
            out.push(format!(
                "{what}: no function invocation completed while the job ran ({} leases; errors: \
                 {:?})",
                r.leases, r.lease_errors
            ));
        }
        if r.leases > 1 || !r.lease_errors.is_empty() {
            let capped = if matches!(r.phase, Phase::Static(_)) {
                " (only the first was capped)"
            } else {
                ""
            };
            out.push(format!(
                "{what}: the client held {} leases{capped}; errors: {:?}",
                r.leases, r.lease_errors
            ));
        }
    }
    out
}

pub(super) fn summarize(
    runs: &[Run],
    rounds: usize,
    seconds: u64,
    harmless_leases: usize,
    harmless_note: Option<String>,
) -> Summary {
    let mut phases: Vec<Phase> = Vec::new();
    for r in runs {
        if !matches!(r.phase, Phase::Alone | Phase::Noop) && !phases.contains(&r.phase) {
            phases.push(r.phase);
        }
    }
    // Uncontrolled first, then the static quotas from the loosest, then the controller.
    let rank = |p: &Phase| match p {
        Phase::Uncontrolled => (0, 0),
        Phase::Static(q) => (1, 100 - *q as i64),
        _ => (2, 0),
    };
    phases.sort_by_key(rank);
    let alone = alone_in_time(runs);
    let frontier: Vec<FrontierPoint> = phases
        .iter()
        .map(|&p| {
            let (cpu, _, kept, harmless) = measure_all(runs, &alone, p);
            FrontierPoint {
                phase: p.name(),
                slowdown_pct: spread(&cpu),
                function_throughput_kept_pct: spread(&kept),
                harmless_throughput_kept_pct: (!harmless.is_empty()).then(|| spread(&harmless)),
            }
        })
        .collect();
    let meets = |f: &FrontierPoint| {
        meets_target(f.slowdown_pct.median, f.function_throughput_kept_pct.median)
    };
    let statics: Vec<&FrontierPoint> = frontier
        .iter()
        .filter(|f| f.phase.starts_with("quota-"))
        .collect();
    let (sl_un, wall_un, _) = measure(runs, &alone, Phase::Uncontrolled);
    let (sl_co, wall_co, kept, harmless_kept) = measure_all(runs, &alone, Phase::Controlled);
    let (sl_un, sl_co, kept) = (spread(&sl_un), spread(&sl_co), spread(&kept));
    let harmless_kept = (!harmless_kept.is_empty()).then(|| spread(&harmless_kept).median);
    let controlled: Vec<&Run> = runs
        .iter()
        .filter(|r| r.phase == Phase::Controlled)
        .collect();
    let shares: Vec<f64> = controlled
        .iter()
        .map(|r| r.culprit_only_share * 100.0)
        .filter(|x| x.is_finite())
        .collect();
    let culprit_identified = (!shares.is_empty()).then(|| spread(&shares).median);
    let firsts: Vec<f64> = controlled
        .iter()
        .filter_map(|r| r.first_correct_verdict_s)
        .collect();
    let first_correct =
        (!firsts.is_empty() && firsts.len() == controlled.len()).then(|| spread(&firsts).median);
    let noop = runs
        .iter()
        .any(|r| r.phase == Phase::Noop)
        .then(|| spread(&measure(runs, &alone, Phase::Noop).0));
    let of = |p: Phase, f: fn(&Run) -> f64| -> Spread {
        spread(
            &runs
                .iter()
                .filter(|r| r.phase == p)
                .map(f)
                .collect::<Vec<_>>(),
        )
    };
    let mut job_cpu_share = BTreeMap::new();
    for p in std::iter::once(Phase::Alone).chain(phases.iter().copied()) {
        job_cpu_share.insert(p.name(), of(p, |r| r.job_cpu_share));
    }
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
        target_met: meets_target(sl_co.median, kept.median),
        harmful_throughput_kept_pct: kept.median,
        harmless_throughput_kept_pct: harmless_kept,
        culprit_identified_pct: culprit_identified,
        first_correct_verdict_s: first_correct,
        attribution_target: "slowdown_controlled_pct <= 2 and harmless_throughput_kept_pct >= 90",
        attribution_target_met: harmless_kept.map(|h| sl_co.median <= 2.0 && h >= 90.0),
        slowdown_noop_pct: noop.as_ref().map(|s| s.median),
        slowdown_noop: noop,
        thrasher_verdicts_controlled: {
            let mut v: Vec<String> = Vec::new();
            for r in &controlled {
                for x in &r.thrasher_verdicts {
                    if !v.contains(x) {
                        v.push(x.clone());
                    }
                }
            }
            v
        },
        harmless_leases,
        harmless_note,
        static_quota_met_target: (!statics.is_empty()).then(|| statics.iter().any(|f| meets(f))),
        frontier,
        rounds,
        job_seconds: seconds,
        rate: "chunks per second of CPU time the job got (wall-clock slowdowns beside)",
        reference: "each phase against the job alone interpolated to its time between the \
                    alone phases before and after it; throughput kept against the same round's \
                    uncontrolled phase",
        slowdown_uncontrolled: sl_un,
        slowdown_controlled: sl_co,
        function_throughput_kept: kept,
        wall_clock_slowdown_uncontrolled: spread(&wall_un),
        wall_clock_slowdown_controlled: spread(&wall_co),
        job_alone_chunks_per_cpu_s: of(Phase::Alone, |r| r.job_chunks_per_cpu_s),
        job_alone_drift_pct: spread(&alone_drift(&alone)),
        job_cpu_share,
        function_uncontrolled_per_s: of(Phase::Uncontrolled, |r| r.fn_per_s),
        function_controlled_per_s: of(Phase::Controlled, |r| r.fn_per_s),
        controlled_max_levels: runs
            .iter()
            .filter(|r| r.phase == Phase::Controlled)
            .map(|r| r.max_level.clone())
            .collect(),
        warnings: warnings(runs),
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
        "round,phase,start_unix_ms,end_unix_ms,job_chunks_per_cpu_s,job_chunks_per_s,job_cpu_share,job_wait_share,fn_invocations,fn_per_s,max_level,leases,lease_errors,busy_before_cpus,machine_busy_cpus,harmless_per_s,culprit_only_share,first_correct_verdict_s\n",
    );
    for r in runs {
        let harmless: Vec<String> = r.harmless_per_s.iter().map(|x| format!("{x:.2}")).collect();
        csv += &format!(
            "{},{},{},{},{:.1},{:.1},{:.3},{:.3},{},{:.2},{},{},{},{:.2},{:.2},{},{:.3},{}\n",
            r.round + 1,
            r.phase.name(),
            r.start_unix_ms,
            r.end_unix_ms,
            r.job_chunks_per_cpu_s,
            r.job_chunks_per_s,
            r.job_cpu_share,
            r.job_wait_share,
            r.fn_invocations,
            r.fn_per_s,
            r.max_level,
            r.leases,
            r.lease_errors.len(),
            r.busy_before,
            r.machine_busy_cpus,
            harmless.join(";"),
            r.culprit_only_share,
            r.first_correct_verdict_s
                .map_or(String::new(), |t| format!("{t:.1}"))
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

/// Left: the job's rate per second in round 1, per phase. Right: the frontier, slowdown
/// against function throughput kept (medians over rounds, quartile whiskers), with the target.
fn plot(path: &Path, runs: &[Run], s: &Summary) -> Result<()> {
    draw(path, runs, &s.frontier)
}

/// Redraws `interference.png` from a result directory's `timeline.csv` and `summary.json`.
pub(super) fn replot(dir: &Path, font: &Path) -> Result<()> {
    load_font(font)?;
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
    let frontier: Vec<FrontierPoint> = serde_json::from_value(summary["frontier"].clone())
        .map_err(|e| anyhow::anyhow!("frontier in summary.json: {e}"))?;
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
    draw(&dir.join("interference.png"), &runs, &frontier)
}

/// Black alone, red uncontrolled, blue controlled, orange no-op; static quotas in greens,
/// darker the looser.
fn phase_color(phase: &str) -> RGBColor {
    match Phase::from_name(phase) {
        Some(Phase::Alone) => BLACK,
        Some(Phase::Noop) => RGBColor(0xe0, 0x80, 0x00),
        Some(Phase::Uncontrolled) => RED,
        Some(Phase::Controlled) => BLUE,
        Some(Phase::Static(q)) => {
            let light = (100 - q.min(100)) as u8;
            RGBColor(light, 100 + light, light)
        }
        None => RGBColor(0x80, 0x80, 0x80),
    }
}

fn draw(path: &Path, runs: &[Run], frontier: &[FrontierPoint]) -> Result<()> {
    let root = BitMapBackend::new(path, (1300, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(720);
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
    for r in &first {
        let name = r.phase.name();
        let color = phase_color(&name);
        let style = if let Phase::Static(_) = r.phase {
            color.stroke_width(1)
        } else {
            color.stroke_width(2)
        };
        chart
            .draw_series(LineSeries::new(
                r.per_second
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64 + 1.0, *v)),
                style,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;

    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    let ytop = frontier
        .iter()
        .map(|f| finite(f.slowdown_pct.q3).max(finite(f.slowdown_pct.median)))
        .fold(5.0, f64::max)
        * 1.15;
    let ybot = frontier
        .iter()
        .map(|f| finite(f.slowdown_pct.q1))
        .fold(-2.0, f64::min)
        * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "slowdown vs. functions kept (median, quartiles)",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..110.0, ybot..ytop)?;
    chart
        .configure_mesh()
        .x_desc("throughput kept, % of uncontrolled (filled: thrasher, hollow: harmless)")
        .y_desc("batch job slowdown (%)")
        .draw()?;
    // The target: at most 2% slower while the functions keep at least half.
    chart.draw_series(std::iter::once(Rectangle::new(
        [(50.0, ybot), (110.0, 2.0)],
        GREEN.mix(0.15).filled(),
    )))?;
    chart.draw_series(std::iter::once(Text::new(
        "target",
        (92.0, 2.0 + (ytop - ybot) * 0.01),
        ("sans-serif", 14),
    )))?;
    for f in frontier {
        let (x, y) = (f.function_throughput_kept_pct.median, f.slowdown_pct.median);
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        let color = phase_color(&f.phase);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, f.slowdown_pct.q1), (x, f.slowdown_pct.q3)],
            color.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (f.function_throughput_kept_pct.q1, y),
                (f.function_throughput_kept_pct.q3, y),
            ],
            color.stroke_width(1),
        )))?;
        chart.draw_series(std::iter::once(Circle::new((x, y), 5, color.filled())))?;
        // The harmless leases' throughput kept at the same slowdown: a hollow marker, joined
        // to the thrasher's (filled) one.
        if let Some(h) = &f.harmless_throughput_kept_pct
            && h.median.is_finite()
        {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x, y), (h.median, y)],
                color.mix(0.5).stroke_width(1),
            )))?;
            chart.draw_series(std::iter::once(Circle::new(
                (h.median, y),
                5,
                color.stroke_width(2),
            )))?;
        }
        // Labels right of their point, or left of it near the right edge.
        let lx = if x > 85.0 { x - 22.0 } else { x + 1.5 };
        chart.draw_series(std::iter::once(Text::new(
            f.phase.clone(),
            (lx, y + (ytop - ybot) * 0.03),
            ("sans-serif", 14),
        )))?;
    }
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
        assert_eq!((s.q1, s.q3, s.mean), (1.5, 2.5, 2.0));
        assert!((s.se - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(spread(&[1.0, 2.0]).median, 1.5);
        assert!(spread(&[]).median.is_nan());
        // A phase that could not be measured (NaN) does not poison the others.
        assert_eq!(spread(&[1.0, f64::NAN, 3.0]).median, 2.0);
    }

    fn run(round: usize, phase: Phase, t: i64, rate: f64, fns: f64) -> Run {
        Run {
            job_chunks_per_cpu_s: rate,
            job_chunks_per_s: rate,
            fn_per_s: fns,
            fn_invocations: (fns * 10.0) as u64,
            start_unix_ms: t,
            end_unix_ms: t + 10_000,
            leases: usize::from(phase != Phase::Alone),
            ..Run::empty(round, phase)
        }
    }

    #[test]
    fn phases_are_compared_with_the_job_alone_at_their_time() {
        // The host drifts from 1000 to 1200 chunks/s alone between t=0 and t=40 s: a phase in
        // the middle is compared with 1100, not with the first alone phase.
        let runs = vec![
            run(0, Phase::Alone, 0, 1000.0, 0.0),
            run(0, Phase::Uncontrolled, 10_000, 1050.0 / 1.1, 100.0),
            run(0, Phase::Controlled, 20_000, 1100.0 / 1.015, 60.0),
            run(0, Phase::Static(25), 30_000, 1150.0 / 1.01, 25.0),
            run(1, Phase::Alone, 40_000, 1200.0, 0.0),
        ];
        let s = summarize(&runs, 1, 10, 0, None);
        assert!((s.slowdown_uncontrolled_pct - 10.0).abs() < 1e-9, "{s:?}");
        assert!((s.slowdown_controlled_pct - 1.5).abs() < 1e-9, "{s:?}");
        assert!((s.function_throughput_kept_pct - 60.0).abs() < 1e-9);
        assert!(s.target_met);
        let names: Vec<&str> = s.frontier.iter().map(|f| f.phase.as_str()).collect();
        assert_eq!(names, ["uncontrolled", "quota-25", "controlled"]);
        let q = &s.frontier[1];
        assert!((q.slowdown_pct.median - 1.0).abs() < 1e-9);
        assert!((q.function_throughput_kept_pct.median - 25.0).abs() < 1e-9);
        assert_eq!(s.static_quota_met_target, Some(false));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // The job alone drifted by 20% over the round: the noise floor is reported.
        assert_eq!(s.job_alone_drift_pct.each.len(), 1);
        assert!((s.job_alone_drift_pct.median - 20.0).abs() < 1e-9);
    }

    #[test]
    fn a_phase_without_invocations_is_flagged() {
        let mut dead = run(0, Phase::Controlled, 20_000, 1000.0, 0.0);
        dead.lease_errors = vec!["acquire: no node has room".into()];
        let runs = vec![
            run(0, Phase::Alone, 0, 1000.0, 0.0),
            run(0, Phase::Uncontrolled, 10_000, 900.0, 100.0),
            dead,
        ];
        let s = summarize(&runs, 1, 10, 0, None);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("round 1 controlled: no function invocation")),
            "{:?}",
            s.warnings
        );
        assert_eq!(s.function_throughput_kept_pct, 0.0);
        assert_eq!(s.static_quota_met_target, None);
    }

    #[test]
    fn harmless_leases_and_attribution_are_summarized() {
        let with = |mut r: Run, harmless: &[f64], share: f64, first: Option<f64>| {
            r.harmless_per_s = harmless.to_vec();
            r.culprit_only_share = share;
            r.first_correct_verdict_s = first;
            r
        };
        let runs = vec![
            run(0, Phase::Alone, 0, 1000.0, 0.0),
            with(
                run(0, Phase::Uncontrolled, 10_000, 900.0, 100.0),
                &[50.0, 200.0],
                f64::NAN,
                None,
            ),
            // Control keeps the job within 1%, the thrasher at 25%, the harmless at 96% and 99%.
            with(
                run(0, Phase::Controlled, 20_000, 990.0, 25.0),
                &[48.0, 198.0],
                0.8,
                Some(4.5),
            ),
            // A fixed 25% cap on everyone costs the harmless leases three quarters.
            with(
                run(0, Phase::Static(25), 30_000, 990.0, 25.0),
                &[12.5, 50.0],
                f64::NAN,
                None,
            ),
            run(0, Phase::Noop, 40_000, 1000.0 / 1.004, 5000.0),
            run(1, Phase::Alone, 50_000, 1000.0, 0.0),
        ];
        let s = summarize(&runs, 1, 10, 2, None);
        assert!((s.harmful_throughput_kept_pct - 25.0).abs() < 1e-9);
        assert!(
            (s.harmless_throughput_kept_pct.unwrap() - 97.5).abs() < 1e-9,
            "{s:?}"
        );
        assert!((s.culprit_identified_pct.unwrap() - 80.0).abs() < 1e-9);
        assert_eq!(s.first_correct_verdict_s, Some(4.5));
        assert_eq!(s.attribution_target_met, Some(true));
        assert!((s.slowdown_noop_pct.unwrap() - 0.4).abs() < 1e-9, "{s:?}");
        let q = s.frontier.iter().find(|f| f.phase == "quota-25").unwrap();
        let h = q.harmless_throughput_kept_pct.as_ref().unwrap();
        assert!((h.median - 25.0).abs() < 1e-9);
        // The no-op phase is a control, not a point of the frontier.
        assert!(s.frontier.iter().all(|f| f.phase != "noop"));

        // Without harmless leases (a 2-CPU node) there is no harmless figure, and no verdict
        // on the attribution target, rather than a number that means nothing.
        let runs: Vec<Run> = runs
            .into_iter()
            .map(|mut r| {
                r.harmless_per_s.clear();
                r
            })
            .collect();
        let s = summarize(&runs, 1, 10, 0, Some("node n1 has 2 CPUs".into()));
        assert_eq!(s.harmless_throughput_kept_pct, None);
        assert_eq!(s.attribution_target_met, None);
        assert_eq!(s.harmless_note.as_deref(), Some("node n1 has 2 CPUs"));
    }
}
