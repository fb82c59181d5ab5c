//! A synthetic SWF trace for benchmarks: exactly `nodes` nodes of [`CORES_PER_NODE`] cores, jobs
//! from a fixed cycle of shapes at a fixed rate, so its size and offered load are known by hand
//! and the same on every machine (no data needed beyond the cost model's reference files).
//!
//! Job `i` is shape `i mod 8` of [`MIX`] with its run time scaled by
//! `(50 + (37 i mod 101)) / 100` (0.5 to 1.5, averaging exactly 1 over any 101 consecutive
//! jobs, and over 808 consecutive jobs every shape meets every factor once), its limit twice
//! the shape's run time, its user `i mod USERS + 1`, and its submission `floor(i x gap)` seconds
//! with `gap` chosen so the trace offers `load` of the machine's cores. Its own start times
//! are its submissions (wait 0): the replay baseline starts every job when it comes, as long
//! as it fits.

use std::fmt::Write as _;

/// Cores per node of the synthetic machine.
pub const CORES_PER_NODE: u32 = 32;
/// Users the jobs cycle through (the fair-share accounts).
pub const USERS: u64 = 97;
/// The shapes, `(processors, run time s)`: many small short jobs, a few wide ones, as in the
/// shared-node traces (RICC, MetaCentrum). Most do not fill a node, so `auto` allocation is
/// core-granular.
pub const MIX: [(u32, u64); 8] = [
    (1, 600),
    (1, 3_600),
    (2, 1_200),
    (8, 1_800),
    (16, 3_600),
    (32, 7_200),
    (64, 3_600),
    (256, 7_200),
];

/// Mean core-seconds a job of the cycle asks for (the run-time factors average 1).
pub fn mean_core_s() -> f64 {
    MIX.iter()
        .map(|&(p, r)| f64::from(p) * r as f64)
        .sum::<f64>()
        / MIX.len() as f64
}

/// Seconds between submissions that offer `load` of `nodes` nodes' cores.
pub fn gap_s(nodes: u32, load: f64) -> f64 {
    mean_core_s() / (load * f64::from(nodes) * f64::from(CORES_PER_NODE))
}

/// Job `i`: `(submit s, run s, processors, limit s, user)`.
pub fn job(i: u64, gap: f64) -> (i64, u64, u32, u64, u64) {
    let (procs, base) = MIX[(i % MIX.len() as u64) as usize];
    let run = (base * (50 + (37 * i) % 101)).div_ceil(100);
    (
        (i as f64 * gap).floor() as i64,
        run,
        procs,
        2 * base,
        i % USERS + 1,
    )
}

/// The trace's text: header and every job submitted before `span_s`.
pub fn swf(nodes: u32, load: f64, span_s: u64) -> String {
    let gap = gap_s(nodes, load);
    let mut s = format!(
        "; Computer: harvest synthetic benchmark machine (experiments/src/sim/synthetic.rs)\n\
         ; MaxNodes: {nodes}\n; MaxProcs: {}\n; Note: offered load {load}, one job every {gap:.4} s\n",
        u64::from(nodes) * u64::from(CORES_PER_NODE)
    );
    for i in 0.. {
        let (submit, run, procs, limit, user) = job(i, gap);
        if submit >= span_s as i64 {
            break;
        }
        let _ = writeln!(
            s,
            "{} {submit} 0 {run} {procs} -1 -1 {procs} {limit} -1 1 {user} 1 -1 1 -1 -1 -1",
            i + 1
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_offers_the_load_asked_for() {
        // 600 + 3,600 + 2,400 + 14,400 + 57,600 + 230,400 + 230,400 + 1,843,200 = 2,382,600
        // core-s over 8 shapes.
        assert_eq!(mean_core_s(), 297_825.0);
        // 100 nodes x 32 cores at half load: 297,825 / 1,600 = 186.140625 s between jobs.
        assert_eq!(gap_s(100, 0.5), 186.140_625);
        // Job 1: shape (1 core, 3,600 s), factor (50 + 37) / 100 -> 3,132 s, limit 7,200 s,
        // submitted at floor(186.14) = 186, user 2.
        assert_eq!(job(1, 186.140_625), (186, 3_132, 1, 7_200, 2));
    }

    #[test]
    fn a_whole_cycle_of_808_jobs_offers_exactly_its_mean() {
        // Job 808 is submitted at floor(808 x gap) s: a span of that many seconds holds jobs
        // 0..808, every shape with every run-time factor once, so their core-seconds are
        // exactly 808 x 297,825 (the factors (50 + r) / 100, r = 0..100, sum to 101).
        let gap = gap_s(100, 0.5);
        let text = swf(100, 0.5, (808.0 * gap).floor() as u64);
        let jobs: Vec<Vec<i64>> = text
            .lines()
            .filter(|l| !l.starts_with(';'))
            .map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect())
            .collect();
        assert_eq!(jobs.len(), 808);
        let core_s: i64 = jobs.iter().map(|j| j[3] * j[4]).sum();
        assert_eq!(core_s, 808 * 297_825);
        assert!(text.contains("; MaxNodes: 100\n; MaxProcs: 3200\n"));
        // Every job's own start is its submission; no run exceeds its limit.
        assert!(jobs.iter().all(|j| j[2] == 0 && j[3] <= j[8]));
    }
}
