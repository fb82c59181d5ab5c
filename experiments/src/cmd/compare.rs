//! `compare-policies`: the same workload under each policy and `--seeds` seeds, tabulated in
//! `experiments/results/compare-policies/<run>/`: `comparison.md` (each policy's mean and 95%
//! interval over the seeds, the differences from the first policy paired by seed, and every
//! run), `comparison.csv` (every run) and `intervals.csv`. The first seed's run of each policy
//! keeps its own files in `<policy>/`, the others their `summary.json` in `<policy>/seed-<s>/`.
//!
//! The seeds change the function demand's arrival times inside the Azure sample's minutes and
//! the jobs' slowdown draws; the window, the batch jobs and the demand's scale stay the same.

use std::fmt::Write as _;
use std::path::PathBuf;

use harvest_policies::BUILTIN_POLICIES;

use super::simulate::Workload;
use crate::output::{write_run, write_summary};
use crate::sim::run::{Inputs, run_with};
use crate::sim::stats::Interval;
use crate::sim::study::demand_for_load;
use crate::sim::{SimConfig, Summary};

/// Seeds per policy unless configured.
pub const DEFAULT_SEEDS: u32 = 3;

/// `compare-policies`' flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub workload: Workload,
    /// Policies to compare, comma-separated. Default: every built-in policy.
    #[arg(long, value_delimiter = ',')]
    pub policies: Vec<String>,
    /// Run name (the directory under results/compare-policies/).
    #[arg(long)]
    pub run: Option<String>,
    /// Output directory (overrides the run name).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Without --functions: the Azure sample scaled to offer this fraction of the idle
    /// core-hours of a batch-only run of the same window (as `simulate` does).
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Seeds per policy (--seed, --seed + 1, ...): means and 95% intervals over them.
    #[arg(long, default_value_t = DEFAULT_SEEDS)]
    pub seeds: u32,
}

/// A figure given as a mean and 95% interval over the seeds: its header and its value.
type Metric = (&'static str, fn(&Summary) -> f64);

/// The figures with intervals: the functions' outcome, and the batch jobs' waits and
/// slowdowns, which interference stretches.
pub const METRICS: &[Metric] = &[
    ("served core-h", |s| s.functions.served_core_hours),
    ("lost core-h", |s| s.function_core_hours_lost_to_reclaim),
    ("invocations served %", |s| s.invocations_served_pct),
    ("util cores harvest %", |s| {
        100.0 * s.util_cores_with_harvest
    }),
    ("reclaims", |s| s.reclaims as f64),
    ("batch wait mean s", |s| s.wait_mean_s),
    ("bounded slowdown mean", |s| s.bounded_slowdown_mean),
    ("slowdown co-located", |s| s.batch_slowdown_mean_colocated),
    ("batch core-h added", |s| {
        s.batch_core_hours_added_by_interference
    }),
    ("placement p99 us", |s| s.placement_p99_us),
];

/// A column: its header and how to print a run's value.
type Column = (&'static str, fn(&Summary) -> String);

const COLUMNS: &[Column] = &[
    ("policy", |s| s.policy.clone()),
    ("seed", |s| s.seed.to_string()),
    ("util cores batch", |s| {
        format!("{:.3}", s.util_cores_batch_only)
    }),
    ("util cores harvest", |s| {
        format!("{:.3}", s.util_cores_with_harvest)
    }),
    ("util mem harvest", |s| {
        format!("{:.3}", s.util_mem_with_harvest)
    }),
    ("core-h recovered", |s| {
        format!("{:.0}", s.core_hours_recovered)
    }),
    ("placed", |s| s.functions_placed.to_string()),
    ("refused", |s| s.functions_refused.to_string()),
    ("wait p99 ms", |s| format!("{:.0}", s.function_wait_p99_ms)),
    ("reclaims", |s| s.reclaims.to_string()),
    ("offered core-h", |s| {
        format!("{:.0}", s.functions.offered_core_hours)
    }),
    ("served core-h", |s| {
        format!("{:.0}", s.functions.served_core_hours)
    }),
    ("invocations served %", |s| {
        format!("{:.2}", s.invocations_served_pct)
    }),
    ("core-h lost", |s| {
        format!("{:.1}", s.function_core_hours_lost_to_reclaim)
    }),
    ("jobs co-located", |s| s.jobs_colocated.to_string()),
    ("sensitive node-h co-located", |s| {
        format!("{:.1}", s.sensitive_node_hours_colocated)
    }),
    ("slowdown co-located", |s| {
        format!("{:.4}", s.batch_slowdown_mean_colocated)
    }),
    ("placement p50 us", |s| format!("{:.2}", s.placement_p50_us)),
    ("placement p99 us", |s| format!("{:.2}", s.placement_p99_us)),
    ("events/s", |s| format!("{:.0}", s.events_per_s)),
];

/// The comparison table as markdown.
pub fn table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {} |",
        COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(t, "|{}", "---|".repeat(COLUMNS.len()));
    for s in summaries {
        let _ = writeln!(
            t,
            "| {} |",
            COLUMNS
                .iter()
                .map(|c| c.1(s))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    t
}

/// The comparison as CSV.
pub fn csv(summaries: &[Summary]) -> String {
    let mut t = COLUMNS
        .iter()
        .map(|c| c.0.replace(' ', "_"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for s in summaries {
        t += &(COLUMNS.iter().map(|c| c.1(s)).collect::<Vec<_>>().join(",") + "\n");
    }
    t
}

/// `runs` grouped by policy (in the order given), each policy's runs in seed order.
fn by_policy(runs: &[Summary]) -> Vec<(&str, Vec<&Summary>)> {
    let mut out: Vec<(&str, Vec<&Summary>)> = Vec::new();
    for s in runs {
        match out.iter_mut().find(|(p, _)| *p == s.policy) {
            Some((_, v)) => v.push(s),
            None => out.push((&s.policy, vec![s])),
        }
    }
    out
}

/// Each policy's mean and 95% interval of every [`METRICS`] figure over its seeds.
pub fn intervals(runs: &[Summary]) -> Vec<(String, Vec<Interval>)> {
    by_policy(runs)
        .into_iter()
        .map(|(p, v)| {
            let iv = METRICS
                .iter()
                .map(|m| Interval::of(&v.iter().map(|s| m.1(s)).collect::<Vec<_>>()))
                .collect();
            (p.to_owned(), iv)
        })
        .collect()
}

/// Each policy's [`METRICS`] minus the first policy's, paired by seed.
pub fn paired(runs: &[Summary]) -> Vec<(String, Vec<Interval>)> {
    let groups = by_policy(runs);
    let Some((_, reference)) = groups.first() else {
        return Vec::new();
    };
    groups[1..]
        .iter()
        .map(|(p, v)| {
            let iv = METRICS
                .iter()
                .map(|m| {
                    let d: Vec<f64> = v
                        .iter()
                        .filter_map(|s| {
                            let r = reference.iter().find(|r| r.seed == s.seed)?;
                            Some(m.1(s) - m.1(r))
                        })
                        .collect();
                    Interval::of(&d)
                })
                .collect();
            ((*p).to_owned(), iv)
        })
        .collect()
}

/// `mean ± ci95`, to two significant digits of the interval (of the mean without one).
fn cell(i: &Interval) -> String {
    let scale = if i.ci95.is_finite() && i.ci95 > 0.0 {
        i.ci95
    } else {
        i.mean.abs()
    };
    let digits = if scale > 0.0 {
        (1 - scale.log10().floor() as i32).clamp(0, 4) as usize
    } else {
        0
    };
    if i.ci95.is_nan() {
        format!("{:.*}", digits, i.mean)
    } else {
        format!("{:.*} ± {:.*}", digits, i.mean, digits, i.ci95)
    }
}

/// A markdown table of intervals, one row per policy.
pub fn interval_table(rows: &[(String, Vec<Interval>)]) -> String {
    let mut t = format!(
        "| policy | {} |\n|---|{}\n",
        METRICS.iter().map(|m| m.0).collect::<Vec<_>>().join(" | "),
        "---|".repeat(METRICS.len())
    );
    for (p, iv) in rows {
        let _ = writeln!(
            t,
            "| {p} | {} |",
            iv.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    }
    t
}

/// The intervals as CSV: `policy,metric,mean,ci95,n`.
pub fn intervals_csv(rows: &[(String, Vec<Interval>)]) -> String {
    let mut t = String::from("policy,metric,mean,ci95,n\n");
    for (p, iv) in rows {
        for (m, i) in METRICS.iter().zip(iv) {
            let _ = writeln!(
                t,
                "{p},{},{},{},{}",
                m.0.replace(' ', "_"),
                i.mean,
                i.ci95,
                i.n
            );
        }
    }
    t
}

pub fn run_cmd(args: Args) -> anyhow::Result<()> {
    let policies: Vec<String> = if args.policies.is_empty() {
        BUILTIN_POLICIES.iter().map(|p| (*p).to_owned()).collect()
    } else {
        args.policies.clone()
    };
    anyhow::ensure!(
        args.load.is_finite() && args.load > 0.0,
        "--load {} must be a number > 0",
        args.load
    );
    let mut first = args.workload.config(&policies[0])?;
    let demand = match &args.workload.functions {
        Some(d) => d.clone(),
        None => {
            let mut p = super::progress_printer("batch only".to_owned());
            let (d, _) = demand_for_load(&first, args.load, &mut p)?;
            super::progress_done();
            d
        }
    };
    first.demand_text = demand.clone();
    let name = args
        .run
        .clone()
        .unwrap_or_else(|| args.workload.run_name(&first));
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| super::results_root().join("compare-policies").join(&name));
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    let mut inputs = Inputs::load(&first)?;
    inputs.need_azure(&first, &demand)?;
    let mut summaries = Vec::new();
    for policy in &policies {
        for k in 0..args.seeds {
            let cfg = SimConfig {
                demand_text: demand.clone(),
                seed: args.workload.seed + u64::from(k),
                ..args.workload.config(policy)?
            };
            let mut p = super::progress_printer(format!("{name} {policy} seed {}", cfg.seed));
            let out = run_with(&cfg, &inputs, &mut p)?;
            super::progress_done();
            if k == 0 {
                write_run(
                    &dir.join(policy),
                    &out.summary,
                    &out.samples,
                    &args.workload.font,
                )?;
            } else {
                let d = dir.join(policy).join(format!("seed-{}", cfg.seed));
                std::fs::create_dir_all(&d)?;
                write_summary(&d.join("summary.json"), &out.summary)?;
            }
            summaries.push(out.summary);
        }
    }
    let s0 = &summaries[0];
    let ivs = intervals(&summaries);
    let mut md = format!(
        "# Policy comparison: {} on {} nodes\n\nSame workload for every policy (functions `{}`, {:.0} h window after {:.0} h warm-up, \
         batch {:?}, queue order {:?}), {} seeds from {} (the demand's arrival times and the jobs' slowdown draws change with the seed; \
         the window, the jobs and the demand's scale do not). The first seed's report of each policy is in its subdirectory. \
         Placement latency is measured inside the simulation on this machine, one decision at a time.\n\n\
         ## Mean and 95% interval over the seeds\n\n",
        name,
        s0.nodes,
        s0.functions_spec,
        s0.window_h,
        s0.window_start_h,
        s0.batch_mode,
        s0.queue_order,
        args.seeds,
        args.workload.seed,
    );
    md += &interval_table(&ivs);
    if policies.len() > 1 && args.seeds > 1 {
        let _ = write!(
            md,
            "\n## Minus {}, paired by seed (mean and 95% interval of the differences)\n\n",
            policies[0]
        );
        md += &interval_table(&paired(&summaries));
    }
    md += "\n## Every run\n\n";
    md += &table(&summaries);
    std::fs::write(dir.join("comparison.md"), md)?;
    std::fs::write(dir.join("comparison.csv"), csv(&summaries))?;
    std::fs::write(dir.join("intervals.csv"), intervals_csv(&ivs))?;
    print!("{}", interval_table(&ivs));
    println!("wrote {}", dir.display());
    Ok(())
}
