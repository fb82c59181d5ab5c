//! The pure parts (pacing, percentiles, the job alone interpolated in time, the summary), and
//! `runs.csv`, `summary.json` and the plot.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use super::client::TransportOut;
use crate::cluster::machine_line;
use crate::output::load_font;

/// Bytes in a GB (decimal, as network rates are given).
pub(crate) const GB: f64 = 1e9;

/// How long a paced sender that started `elapsed` ago, and has sent `sent_bytes`, waits before
/// sending more so as to offer `rate` bytes per second (zero: it is behind, send now).
pub(crate) fn pace_wait(elapsed: Duration, sent_bytes: u64, rate: f64) -> Duration {
    let due = sent_bytes as f64 / rate;
    let now = elapsed.as_secs_f64();
    if due <= now {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(due - now)
    }
}

/// The `p`-th percentile (nearest rank) of `v`; NaN when empty.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The value at time `t` of the series `points` (time, value), sorted by time: linear between the
/// points just before and just after, the nearest one beyond either end; NaN when empty.
pub(crate) fn interpolate(points: &[(f64, f64)], t: f64) -> f64 {
    let before = points.iter().rev().find(|p| p.0 <= t);
    let after = points.iter().find(|p| p.0 > t);
    match (before, after) {
        (Some(b), Some(a)) => b.1 + (t - b.0) / (a.0 - b.0) * (a.1 - b.1),
        (Some(x), None) | (None, Some(x)) => x.1,
        (None, None) => f64::NAN,
    }
}

/// `(reference / rate - 1)` in %.
pub(crate) fn slowdown_pct(reference: f64, rate: f64) -> f64 {
    (reference / rate - 1.0) * 100.0
}

/// GB/s of `ops` operations of `op_bytes` that completed in `[start_ms, end_ms]`.
pub(crate) fn achieved_gbps(
    completions_ms: &[i64],
    op_bytes: usize,
    start_ms: i64,
    end_ms: i64,
) -> f64 {
    let n = completions_ms
        .iter()
        .filter(|&&t| t >= start_ms && t <= end_ms)
        .count();
    let window = (end_ms - start_ms) as f64 / 1000.0;
    if window <= 0.0 {
        return f64::NAN;
    }
    n as f64 * op_bytes as f64 / window / GB
}

/// One phase: the batch job, alone or beside the remote client at one offered rate.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// `alone`, `uncontrolled` or `controlled`.
    pub(crate) phase: &'static str,
    /// GB/s offered by the client (`None`: as fast as it goes; alone: none).
    pub(crate) offered_gbps: Option<f64>,
    pub(crate) achieved_gbps: f64,
    pub(crate) job_chunks_per_cpu_s: f64,
    pub(crate) job_chunks_per_s: f64,
    pub(crate) job_cpu_share: f64,
    pub(crate) start_unix_ms: i64,
    pub(crate) end_unix_ms: i64,
    /// The highest level harvestd gave the client's lease, and the node's, while the job ran.
    pub(crate) lease_max_level: String,
    pub(crate) node_max_level: String,
    /// The verdicts published for the client's lease(s), each once.
    pub(crate) verdicts: Vec<String>,
    pub(crate) leases: usize,
    pub(crate) errors: Vec<String>,
    pub(crate) busy_before: f64,
    pub(crate) machine_busy_cpus: f64,
}

impl Run {
    fn mid_ms(&self) -> f64 {
        (self.start_unix_ms + self.end_unix_ms) as f64 / 2.0
    }

    /// The offered rate as the table shows it.
    pub(crate) fn offered(&self) -> String {
        match (self.phase, self.offered_gbps) {
            ("alone", _) => "-".into(),
            (_, Some(r)) => format!("{r}"),
            (_, None) => "max".into(),
        }
    }
}

/// One row of the per-rate table.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RateRow {
    phase: &'static str,
    offered_gbps: Option<f64>,
    offered: String,
    achieved_gbps: f64,
    /// Per CPU-second of the job, against the job alone interpolated to the phase's time.
    slowdown_pct: f64,
    wall_clock_slowdown_pct: f64,
    lease_max_level: String,
    node_max_level: String,
    verdicts: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    remote_read_gbps: f64,
    remote_write_gbps: f64,
    raw_tcp_gbps: f64,
    read_p50_us_4k: f64,
    read_p99_us_4k: f64,
    raw_tcp_p50_us_4k: f64,
    raw_tcp_p99_us_4k: f64,
    /// The remote read's bandwidth as a share of raw TCP's, %.
    remote_read_of_raw_pct: f64,
    transport_region_mib: u64,
    transport_cpu_millis: u32,
    transport_verified: bool,
    transport: String,
    /// At the highest offered rate, harvestd's control off, and on.
    slowdown_uncontrolled_pct: f64,
    slowdown_controlled_pct: f64,
    wall_clock_slowdown_uncontrolled_pct: f64,
    wall_clock_slowdown_controlled_pct: f64,
    achieved_uncontrolled_gbps: f64,
    achieved_controlled_gbps: f64,
    controlled_lease_max_level: String,
    rates: Vec<RateRow>,
    stream_cpu_millis: u32,
    stream_region_mib: u64,
    job_seconds: u64,
    job_alone_chunks_per_cpu_s: Vec<f64>,
    /// The change (%, absolute) of the job alone from one alone phase to the next: the noise
    /// floor the slowdowns are measured against.
    job_alone_drift_pct: Vec<f64>,
    rate: &'static str,
    paper_reference: serde_json::Value,
    machine_note: &'static str,
    machine: String,
    pub(crate) warnings: Vec<String>,
}

/// Each non-alone phase's slowdown per CPU-second and per wall-clock second against the job
/// alone interpolated to its time.
fn slowdowns(runs: &[Run]) -> Vec<(f64, f64)> {
    let mut alone: Vec<&Run> = runs.iter().filter(|r| r.phase == "alone").collect();
    alone.sort_by(|a, b| a.mid_ms().total_cmp(&b.mid_ms()));
    let cpu: Vec<(f64, f64)> = alone
        .iter()
        .map(|a| (a.mid_ms(), a.job_chunks_per_cpu_s))
        .collect();
    let wall: Vec<(f64, f64)> = alone
        .iter()
        .map(|a| (a.mid_ms(), a.job_chunks_per_s))
        .collect();
    runs.iter()
        .map(|r| {
            (
                slowdown_pct(interpolate(&cpu, r.mid_ms()), r.job_chunks_per_cpu_s),
                slowdown_pct(interpolate(&wall, r.mid_ms()), r.job_chunks_per_s),
            )
        })
        .collect()
}

/// The phase of `kind` at the highest offered rate (`None`, as fast as it goes, is highest).
fn at_max<'a>(rows: &'a [RateRow], kind: &str) -> Option<&'a RateRow> {
    rows.iter().filter(|r| r.phase == kind).max_by(|a, b| {
        let k = |r: &RateRow| r.offered_gbps.unwrap_or(f64::INFINITY);
        k(a).total_cmp(&k(b))
    })
}

pub(crate) struct Setup {
    pub(crate) transport_region_mib: u64,
    pub(crate) transport_cpu_millis: u32,
    pub(crate) stream_cpu_millis: u32,
    pub(crate) stream_region_mib: u64,
    pub(crate) job_seconds: u64,
    pub(crate) depth: usize,
}

pub(crate) fn summarize(t: &TransportOut, runs: &[Run], s: &Setup) -> Summary {
    let sl = slowdowns(runs);
    let rows: Vec<RateRow> = runs
        .iter()
        .zip(&sl)
        .filter(|(r, _)| r.phase != "alone")
        .map(|(r, &(cpu, wall))| RateRow {
            phase: r.phase,
            offered_gbps: r.offered_gbps,
            offered: r.offered(),
            achieved_gbps: r.achieved_gbps,
            slowdown_pct: cpu,
            wall_clock_slowdown_pct: wall,
            lease_max_level: r.lease_max_level.clone(),
            node_max_level: r.node_max_level.clone(),
            verdicts: r.verdicts.clone(),
        })
        .collect();
    let un = at_max(&rows, "uncontrolled");
    let co = at_max(&rows, "controlled");
    let pick = |r: Option<&RateRow>, f: fn(&RateRow) -> f64| r.map_or(f64::NAN, f);
    let mut alone: Vec<&Run> = runs.iter().filter(|r| r.phase == "alone").collect();
    alone.sort_by(|a, b| a.mid_ms().total_cmp(&b.mid_ms()));
    let mut warnings = Vec::new();
    for r in runs.iter().filter(|r| r.phase != "alone") {
        if !r.errors.is_empty() || r.leases > 1 {
            warnings.push(format!(
                "{} at {}: the client held {} leases; errors: {:?}",
                r.phase,
                r.offered(),
                r.leases,
                r.errors
            ));
        }
        if r.achieved_gbps.is_nan() || r.achieved_gbps <= 0.0 {
            warnings.push(format!(
                "{} at {}: no remote operation completed while the job ran",
                r.phase,
                r.offered()
            ));
        }
    }
    if !t.verified {
        warnings.push("transport: the region did not read back as written".into());
    }
    Summary {
        remote_read_gbps: t.remote_read_gbps,
        remote_write_gbps: t.remote_write_gbps,
        raw_tcp_gbps: t.raw_tcp_gbps,
        read_p50_us_4k: t.read_p50_us_4k,
        read_p99_us_4k: t.read_p99_us_4k,
        raw_tcp_p50_us_4k: t.raw_tcp_p50_us_4k,
        raw_tcp_p99_us_4k: t.raw_tcp_p99_us_4k,
        remote_read_of_raw_pct: t.remote_read_gbps / t.raw_tcp_gbps * 100.0,
        transport_region_mib: s.transport_region_mib,
        transport_cpu_millis: s.transport_cpu_millis,
        transport_verified: t.verified,
        transport: format!(
            "a memory lease on the cluster's node, its executor capped at {} thousandths of a \
             CPU; 4 KiB reads one at a time at sequential offsets; 4 MiB reads, then writes, {} \
             in flight; raw TCP in the same run over loopback: a 16-byte request answered with \
             4 KiB, and 4 MiB messages each acknowledged with 8 bytes, {} in flight; GB = 1e9 \
             bytes",
            s.transport_cpu_millis, s.depth, s.depth
        ),
        slowdown_uncontrolled_pct: pick(un, |r| r.slowdown_pct),
        slowdown_controlled_pct: pick(co, |r| r.slowdown_pct),
        wall_clock_slowdown_uncontrolled_pct: pick(un, |r| r.wall_clock_slowdown_pct),
        wall_clock_slowdown_controlled_pct: pick(co, |r| r.wall_clock_slowdown_pct),
        achieved_uncontrolled_gbps: pick(un, |r| r.achieved_gbps),
        achieved_controlled_gbps: pick(co, |r| r.achieved_gbps),
        controlled_lease_max_level: co.map_or("-".into(), |r| r.lease_max_level.clone()),
        rates: rows,
        stream_cpu_millis: s.stream_cpu_millis,
        stream_region_mib: s.stream_region_mib,
        job_seconds: s.job_seconds,
        job_alone_chunks_per_cpu_s: alone.iter().map(|a| a.job_chunks_per_cpu_s).collect(),
        job_alone_drift_pct: alone
            .windows(2)
            .map(|w| (w[1].job_chunks_per_cpu_s / w[0].job_chunks_per_cpu_s - 1.0).abs() * 100.0)
            .collect(),
        rate: "the STREAM-triad job's chunks per second of CPU time it got (wall-clock beside); \
               each phase against the job alone interpolated to its time between the alone \
               phases before and after it; the remote client streams 4 MiB reads and writes \
               (alternating) to a memory lease on the job's node, from that node's other CPUs",
        paper_reference: serde_json::json!({
            "remote_memory_gbps_per_client": 1.0,
            "milc_slowdown_max_pct": 14.0,
            "note": "the paper's figures (RDMA between Piz Daint nodes, the MILC application \
                     beside remote-memory clients): about 1 GB/s per client and up to ~14% \
                     slowdown; not comparable 1:1 with these (TCP over loopback, one machine)",
        }),
        machine_note: "2 CPUs shared by the fake Slurm nodes, the client, the executor and \
                       anything else running; TCP over loopback, not a network: the transport \
                       figures are CPU- and copy-bound, and the remote client's traffic competes \
                       for the same memory bus and caches as the job",
        machine: machine_line(),
        warnings,
    }
}

pub(crate) fn write_results(
    dir: &Path,
    runs: &[Run],
    summary: &Summary,
    font: &Path,
) -> Result<()> {
    let sl = slowdowns(runs);
    let mut csv = String::from(
        "phase,offered_gbps,achieved_gbps,job_chunks_per_cpu_s,job_chunks_per_s,job_cpu_share,slowdown_pct,wall_clock_slowdown_pct,lease_max_level,node_max_level,verdicts,leases,errors,start_unix_ms,end_unix_ms,busy_before_cpus,machine_busy_cpus\n",
    );
    for (r, (cpu, wall)) in runs.iter().zip(&sl) {
        let (cpu, wall) = if r.phase == "alone" {
            (String::new(), String::new())
        } else {
            (format!("{cpu:.2}"), format!("{wall:.2}"))
        };
        csv += &format!(
            "{},{},{:.3},{:.1},{:.1},{:.3},{cpu},{wall},{},{},{},{},{},{},{},{:.2},{:.2}\n",
            r.phase,
            r.offered(),
            r.achieved_gbps,
            r.job_chunks_per_cpu_s,
            r.job_chunks_per_s,
            r.job_cpu_share,
            r.lease_max_level,
            r.node_max_level,
            r.verdicts.join(";"),
            r.leases,
            r.errors.len(),
            r.start_unix_ms,
            r.end_unix_ms,
            r.busy_before,
            r.machine_busy_cpus
        );
    }
    std::fs::write(dir.join("runs.csv"), csv)?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(summary)? + "\n",
    )?;
    match load_font(font) {
        Ok(()) => plot(&dir.join("remote-memory.png"), &summary.rates)?,
        Err(e) => eprintln!("remote-memory: no plot ({e})"),
    }
    Ok(())
}

/// Slowdown against the remote GB/s achieved: uncontrolled (red, one point per offered rate)
/// and controlled (blue).
fn plot(path: &Path, rows: &[RateRow]) -> Result<()> {
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    let xmax = rows
        .iter()
        .map(|r| finite(r.achieved_gbps))
        .fold(0.5, f64::max)
        * 1.15;
    let ytop = rows
        .iter()
        .map(|r| finite(r.slowdown_pct))
        .fold(5.0, f64::max)
        * 1.2;
    let ybot = rows
        .iter()
        .map(|r| finite(r.slowdown_pct))
        .fold(-2.0, f64::min)
        * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "batch job slowdown beside a remote-memory client",
            ("sans-serif", 20),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..xmax, ybot..ytop)?;
    chart
        .configure_mesh()
        .x_desc("remote memory traffic achieved (GB/s, reads + writes)")
        .y_desc("STREAM job slowdown (%, per CPU-second)")
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, 0.0), (xmax, 0.0)],
        BLACK.mix(0.4).stroke_width(1),
    )))?;
    for (kind, color) in [("uncontrolled", RED), ("controlled", BLUE)] {
        let mut pts: Vec<&RateRow> = rows
            .iter()
            .filter(|r| {
                r.phase == kind && r.achieved_gbps.is_finite() && r.slowdown_pct.is_finite()
            })
            .collect();
        if pts.is_empty() {
            continue;
        }
        pts.sort_by(|a, b| a.achieved_gbps.total_cmp(&b.achieved_gbps));
        let label = if kind == "uncontrolled" {
            "harvestd's control off"
        } else {
            "harvestd's control on"
        };
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|r| (r.achieved_gbps, r.slowdown_pct)),
                color.stroke_width(2),
            ))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        for r in pts {
            let p = (r.achieved_gbps, r.slowdown_pct);
            chart.draw_series(std::iter::once(Circle::new(p, 5, color.filled())))?;
            chart.draw_series(std::iter::once(Text::new(
                format!("offered {}", r.offered),
                (p.0 + xmax * 0.01, p.1 + (ytop - ybot) * 0.03),
                ("sans-serif", 13),
            )))?;
        }
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
    fn a_paced_sender_waits_only_when_ahead_of_its_rate() {
        // 1 GB/s: 4 MB is due at 4 ms.
        let w = pace_wait(Duration::from_millis(1), 4_000_000, 1e9);
        assert!((w.as_secs_f64() - 0.003).abs() < 1e-9, "{w:?}");
        assert_eq!(
            pace_wait(Duration::from_millis(5), 4_000_000, 1e9),
            Duration::ZERO
        );
        assert_eq!(pace_wait(Duration::ZERO, 0, 1e9), Duration::ZERO);
        // Over a second at 0.25 GB/s a sender that never waits too long sends 0.25 GB.
        let (mut t, mut sent) = (0.0f64, 0u64);
        while t < 1.0 {
            let w = pace_wait(Duration::from_secs_f64(t), sent, 0.25e9);
            if w.is_zero() {
                sent += 4 << 20;
            } else {
                t += w.as_secs_f64();
            }
        }
        let got = sent as f64 / 1e9;
        assert!((got - 0.25).abs() < 0.005, "{got}");
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn the_job_alone_is_interpolated_to_the_phase_time() {
        let pts = [(0.0, 1000.0), (40.0, 1200.0)];
        assert_eq!(interpolate(&pts, 10.0), 1050.0);
        assert_eq!(interpolate(&pts, 50.0), 1200.0);
        assert_eq!(interpolate(&pts, -5.0), 1000.0);
        assert!(interpolate(&[], 1.0).is_nan());
        assert!((slowdown_pct(1100.0, 1000.0) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn achieved_rate_counts_the_operations_inside_the_window() {
        // 3 operations of 1 MB inside a 2 s window (one before, one after): 1.5 MB/s.
        let done = [500, 1000, 2000, 3000, 3500];
        let g = achieved_gbps(&done, 1_000_000, 1000, 3000);
        assert!((g - 1.5e-3).abs() < 1e-12, "{g}");
        assert!(achieved_gbps(&done, 1, 10, 10).is_nan());
    }

    fn run(phase: &'static str, offered: Option<f64>, t: i64, rate: f64, gbps: f64) -> Run {
        Run {
            phase,
            offered_gbps: offered,
            achieved_gbps: gbps,
            job_chunks_per_cpu_s: rate,
            job_chunks_per_s: rate,
            job_cpu_share: 1.0,
            start_unix_ms: t,
            end_unix_ms: t + 10_000,
            lease_max_level: "none".into(),
            node_max_level: "none".into(),
            verdicts: Vec::new(),
            leases: usize::from(phase != "alone"),
            errors: Vec::new(),
            busy_before: 0.0,
            machine_busy_cpus: 1.0,
        }
    }

    #[test]
    fn the_summary_takes_the_highest_rate_of_each_kind() {
        let t = TransportOut {
            remote_read_gbps: 1.0,
            remote_write_gbps: 0.8,
            raw_tcp_gbps: 4.0,
            read_p50_us_4k: 50.0,
            verified: true,
            ..TransportOut::default()
        };
        // The job alone drifts from 1000 to 1400 over the run.
        let runs = vec![
            run("alone", None, 0, 1000.0, f64::NAN),
            run("uncontrolled", Some(0.5), 10_000, 1100.0 / 1.02, 0.5),
            run("uncontrolled", None, 20_000, 1200.0 / 1.2, 1.5),
            run("controlled", None, 30_000, 1300.0 / 1.03, 0.4),
            run("alone", None, 40_000, 1400.0, f64::NAN),
        ];
        let setup = Setup {
            transport_region_mib: 256,
            transport_cpu_millis: 1000,
            stream_cpu_millis: 1000,
            stream_region_mib: 256,
            job_seconds: 10,
            depth: 4,
        };
        let s = summarize(&t, &runs, &setup);
        assert!((s.slowdown_uncontrolled_pct - 20.0).abs() < 1e-9);
        assert!((s.slowdown_controlled_pct - 3.0).abs() < 1e-9);
        assert_eq!(s.achieved_uncontrolled_gbps, 1.5);
        assert_eq!(s.rates.len(), 3);
        assert!((s.rates[0].slowdown_pct - 2.0).abs() < 1e-9);
        assert_eq!(s.rates[1].offered, "max");
        assert!((s.remote_read_of_raw_pct - 25.0).abs() < 1e-9);
        assert_eq!(s.job_alone_drift_pct.len(), 1);
        assert!((s.job_alone_drift_pct[0] - 40.0).abs() < 1e-9);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "remote_read_gbps",
            "raw_tcp_gbps",
            "read_p50_us_4k",
            "paper_reference",
        ] {
            assert!(!v[key].is_null(), "{key}");
        }
    }
}
