//! CPU time of process trees, from /proc: what compare-peers counts as a framework's cost.
//!
//! The sum over every live process under the roots of utime + stime + cutime + cstime (in
//! clock ticks). A process's time moves into its parent's cutime/cstime when it is reaped, so
//! the sum only grows while the trees work, and a short-lived process (an `srun` step's
//! Parsl worker) still counts once its parent has reaped it. What it misses: a process reaped by
//! something outside the trees: an `srun` step's slurmstepd, reparented to init, and its task
//! once the step is over (a step that starts and ends between two samples is not counted at all).

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result};

/// CPU seconds of the process trees rooted at `roots` (pids that do not exist are skipped) and
/// at every `slurmstepd`: slurmd's step daemons leave its tree (they are reparented to init), and
/// a job's tasks (an srun step's program, Parsl's workers) run under them.
pub fn tree_cpu_s(roots: &[u32]) -> Result<f64> {
    cpu_s(roots, true)
}

/// [`tree_cpu_s`], with every `slurmstepd` as a root too or not.
fn cpu_s(roots: &[u32], with_stepds: bool) -> Result<f64> {
    Ok(tree_ticks(roots, with_stepds, Count::WithReaped)?
        .values()
        .sum::<u64>() as f64
        / ticks_per_s())
}

/// Each process of the trees [`tree_cpu_s`] counts, with its own ticks (utime + stime, not its
/// reaped children's): two of these give [`used_between`].
pub fn tree_snapshot(roots: &[u32]) -> Result<HashMap<u32, u64>> {
    tree_ticks(roots, true, Count::Own)
}

/// CPU seconds the trees' processes used themselves from `before` to `after`: what each process
/// alive in `after` gained (all of it for one born since). A difference of [`tree_cpu_s`] sums
/// is wrong both ways over a window where processes end: one reaped outside the trees (an
/// `srun` step's slurmstepd, by init) takes its whole life off, which made the idle use before
/// Parsl's turn -0.3 s/s; one reaped inside (a released lease's executor, by harvestd) is
/// counted again in its parent's cutime. Counting own time only, neither happens; what a process
/// that ends in the window used there is missed (none of an idle window's work). Pids are not
/// reused within a window here (`pid_max` is far above the processes a run starts).
pub fn used_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum();
    ticks as f64 / ticks_per_s()
}

/// Which of a process's times count.
#[derive(Clone, Copy)]
enum Count {
    /// utime + stime + cutime + cstime: its own and its reaped children's.
    WithReaped,
    /// utime + stime.
    Own,
}

/// The ticks of every process in the trees (see [`tree_cpu_s`]).
fn tree_ticks(roots: &[u32], with_stepds: bool, count: Count) -> Result<HashMap<u32, u64>> {
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    let mut roots = roots.to_vec();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may be gone between the listing and the read.
        let Ok(stat) = std::fs::read(entry.path().join("stat")) else {
            continue;
        };
        if with_stepds && stat.windows(12).any(|w| w == b"(slurmstepd)") {
            roots.push(pid);
        }
        let parsed = match count {
            Count::WithReaped => parse_stat(&stat),
            Count::Own => parse_stat_fields(&stat, 11..13),
        };
        if let Some(parsed) = parsed {
            procs.insert(pid, parsed);
        }
    }
    Ok(tree_members(&procs, &roots)
        .into_iter()
        .map(|p| (p, procs[&p].1))
        .collect())
}

/// (ppid, utime + stime + cutime + cstime) from a /proc/<pid>/stat line; the command name may
/// hold spaces and parentheses, so fields are counted after its last ')'.
pub fn parse_stat(stat: &[u8]) -> Option<(u32, u64)> {
    parse_stat_fields(stat, 11..15)
}

/// (ppid, the sum of `times`), `times` counted as in [`parse_stat`] (11..13: utime and stime).
fn parse_stat_fields(stat: &[u8], times: std::ops::Range<usize>) -> Option<(u32, u64)> {
    let end = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(end + 2..)?).ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime fields 14..17.
    let ppid = f.get(1)?.parse().ok()?;
    let mut sum = 0u64;
    for x in f.get(times)? {
        sum += x.parse::<u64>().ok()?;
    }
    Some((ppid, sum))
}

/// `roots` that exist in `procs` and all their descendants, each once.
fn tree_members(procs: &HashMap<u32, (u32, u64)>, roots: &[u32]) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, &(ppid, _)) in procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = HashSet::new();
    let mut stack: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|r| procs.contains_key(r))
        .collect();
    while let Some(p) = stack.pop() {
        if seen.insert(p) {
            stack.extend(children.get(&p).into_iter().flatten());
        }
    }
    seen
}

/// USER_HZ, the unit of /proc's times: 100 on Linux for x86-64, aarch64 and ppc64le (it is
/// fixed for user space, whatever the kernel's own tick rate).
fn ticks_per_s() -> f64 {
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_tricky_name_parses() {
        let line = b"42 (a) b (c) S 7 42 42 0 -1 4194560 1 0 0 0 11 22 33 44 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(line), Some((7, 11 + 22 + 33 + 44)));
        assert_eq!(parse_stat(b"42 (x) S 7"), None);
        assert_eq!(parse_stat_fields(line, 11..13), Some((7, 11 + 22)));
    }

    /// The summed ticks of `roots` and all their descendants.
    fn sum_trees(procs: &HashMap<u32, (u32, u64)>, roots: &[u32]) -> u64 {
        tree_members(procs, roots)
            .into_iter()
            .map(|p| procs[&p].1)
            .sum()
    }

    #[test]
    fn trees_count_descendants_once_and_nothing_else() {
        // 1 -> 2 -> 3, 2 -> 4; 5 unrelated; 6 -> 1 (a root's parent is not counted).
        let procs: HashMap<u32, (u32, u64)> = [
            (1, (6, 10)),
            (2, (1, 20)),
            (3, (2, 30)),
            (4, (2, 40)),
            (5, (0, 500)),
            (6, (0, 600)),
        ]
        .into_iter()
        .collect();
        assert_eq!(sum_trees(&procs, &[1]), 100);
        // Overlapping roots count a process once; a missing root is skipped.
        assert_eq!(sum_trees(&procs, &[1, 2, 99]), 100);
        assert_eq!(sum_trees(&procs, &[2, 5]), 590);
    }

    #[test]
    fn use_between_snapshots_counts_gains_and_births_and_no_deaths() {
        let before: HashMap<u32, u64> = [(1, 100), (2, 50), (3, 900)].into_iter().collect();
        // 1 gained 10, 2 nothing, 3 ended (its 900 ticks are not taken off, and were it reaped
        // by 1 they would not reach 1's own time), 4 was born with 7.
        let after: HashMap<u32, u64> = [(1, 110), (2, 50), (4, 7)].into_iter().collect();
        assert_eq!(used_between(&before, &after), 0.17);
        // The sums' difference would read -8.33 s: the ended process's whole life.
        let sums = |m: &HashMap<u32, u64>| m.values().sum::<u64>() as f64 / ticks_per_s();
        assert!(sums(&after) - sums(&before) < -8.0);
    }

    #[test]
    fn this_process_tree_grows_while_it_works() {
        // Spins until /proc shows 50 ms more of this process's CPU (bounded at 20 s of wall
        // time, which only a machine giving this test no CPU at all would reach).
        let me = std::process::id();
        let before = tree_cpu_s(&[me]).unwrap();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && t.elapsed() < std::time::Duration::from_secs(20) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = tree_cpu_s(&[me]).unwrap();
        }
        std::hint::black_box(x);
        assert!(after - before >= 0.05, "{before} -> {after}");
        // (Without the slurmstepd trees, which count whenever a cluster runs a job here.)
        assert!(
            cpu_s(&[u32::MAX], false).unwrap() == 0.0,
            "no such process: nothing counted"
        );
    }
}
