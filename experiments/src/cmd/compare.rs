//! `compare-policies`: the same workload under each policy, tabulated in
//! `experiments/results/compare-policies/<run>/comparison.{md,csv}` with each run's own files in a
//! subdirectory.

use std::fmt::Write as _;
use std::path::PathBuf;

use harvest_policies::BUILTIN_POLICIES;

use super::simulate::{Workload, simulate_into};
use crate::sim::study::demand_for_load;
use crate::sim::{SimConfig, Summary};

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
}

/// A column: its header and how to print a run's value.
type Column = (&'static str, fn(&Summary) -> String);

const COLUMNS: &[Column] = &[
    ("policy", |s| s.policy.clone()),
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
    let mut summaries = Vec::new();
    for policy in &policies {
        let cfg = SimConfig {
            demand_text: demand.clone(),
            ..args.workload.config(policy)?
        };
        let outcome = simulate_into(
            &cfg,
            &dir.join(policy),
            &args.workload.font,
            format!("{name} {policy}"),
        )?;
        summaries.push(outcome.summary);
    }
    let s0 = &summaries[0];
    let mut md = format!(
        "# Policy comparison: {} on {} nodes\n\nSame workload for every policy (functions `{}`, seed {}, {:.0} h window after {:.0} h warm-up, \
         batch {:?}, queue order {:?}); each policy's report is in its subdirectory. Placement latency is measured inside the simulation \
         on this machine, one decision at a time.\n\n",
        name,
        s0.nodes,
        s0.functions_spec,
        args.workload.seed,
        s0.window_h,
        s0.window_start_h,
        s0.batch_mode,
        s0.queue_order
    );
    md += &table(&summaries);
    std::fs::write(dir.join("comparison.md"), md)?;
    std::fs::write(dir.join("comparison.csv"), csv(&summaries))?;
    print!("{}", table(&summaries));
    println!("wrote {}", dir.display());
    Ok(())
}
