//! `bench-placement`: placement decision latency at scale for every policy, beside a baseline
//! from the same run that runs the same plugins over every node (no index, no sampling): a scan.
//!
//! The cluster is `--nodes` nodes of 32 cores and 128 GiB; batch jobs hold a random share of
//! 70% of the nodes; leases of 1-4 cores and 1-8 GiB arrive and the oldest are released so that
//! about `--live` are held, which keeps the cluster's fill steady across the measurement.

use std::collections::VecDeque;
use std::time::Instant;

use harvest_policies::{
    BUILTIN_POLICIES, Cluster, Decision, Framework, PolicyConfig, Registry, Request, Resources,
};

use crate::rng::Rng;
use crate::sim::metrics::LatencyHistogram;

/// `bench-placement`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub nodes: u32,
    /// Decisions measured per policy.
    #[arg(long, default_value_t = 100_000)]
    pub decisions: u64,
    /// Leases held at any time.
    #[arg(long, default_value_t = 20_000)]
    pub live: usize,
    /// Decisions of the scan baseline per policy (it is slow).
    #[arg(long, default_value_t = 2_000)]
    pub baseline_decisions: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the JSON figures. Default: results/bench-placement/<nodes>n.json.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// One policy's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub policy: String,
    pub p50_us: f64,
    pub p99_us: f64,
    pub scan_p50_us: f64,
    pub scan_p99_us: f64,
    pub placed_share: f64,
}

fn cluster(nodes: u32, rng: &mut Rng) -> Cluster {
    let mut c = Cluster::uniform(nodes, Resources::new(32, 128 << 10, 0), 16);
    for n in 0..nodes {
        if rng.unit() < 0.7 {
            let cores = 8 + rng.below(25) as u32;
            c.set_batch(n, Resources::new(cores, (u64::from(cores) * 3) << 10, 0))
                .expect("node exists");
        }
    }
    c
}

fn measure(
    fw: &mut Framework,
    nodes: u32,
    decisions: u64,
    live: usize,
    seed: u64,
) -> anyhow::Result<(LatencyHistogram, f64)> {
    let mut rng = Rng::new(seed);
    let mut c = cluster(nodes, &mut rng);
    let mut held = VecDeque::new();
    let mut hist = LatencyHistogram::default();
    let mut placed = 0u64;
    for lease in 0..decisions {
        if held.len() >= live {
            let old = held.pop_front().expect("non-empty");
            fw.release(&mut c, old);
        }
        let req = Request {
            lease,
            client: rng.below(500),
            res: Resources::new(1 + rng.below(4) as u32, (1 + rng.below(8)) << 10, 0),
            data_nodes: &[],
            avoid_nodes: &[],
        };
        let t0 = Instant::now();
        let d = fw.place(&mut c, &req)?;
        hist.record(t0.elapsed().as_nanos() as u64);
        if let Decision::Placed(_) = d {
            placed += 1;
            held.push_back(lease);
        }
    }
    Ok((hist, placed as f64 / decisions as f64))
}

pub fn run_cmd(args: Args) -> anyhow::Result<()> {
    let registry = Registry::builtin();
    let mut rows = Vec::new();
    println!(
        "placement at {} nodes, {} decisions per policy (scan baseline: {} decisions)",
        args.nodes, args.decisions, args.baseline_decisions
    );
    println!(
        "| policy | p50 µs | p99 µs | scan p50 µs | scan p99 µs | p99 speed-up | placed |\n|---|---|---|---|---|---|---|"
    );
    for policy in BUILTIN_POLICIES {
        let cfg = PolicyConfig::builtin(policy)?;
        let mut fw = cfg.build(policy, &registry)?;
        let (mut h, placed) = measure(&mut fw, args.nodes, args.decisions, args.live, args.seed)?;
        // The baseline: the same plugins, every node filtered and every feasible node scored.
        let mut scan = Framework::new(*policy, harvest_policies::CandidateOrder::Scan, usize::MAX);
        for p in &cfg.plugins {
            let set = registry
                .build(&p.name)
                .expect("a built-in policy names registered plugins");
            scan = scan.with(set, p.weight);
        }
        let (mut hs, _) = measure(
            &mut scan,
            args.nodes,
            args.baseline_decisions,
            args.live,
            args.seed,
        )?;
        let row = BenchRow {
            policy: (*policy).to_owned(),
            p50_us: h.quantile_us(0.5),
            p99_us: h.quantile_us(0.99),
            scan_p50_us: hs.quantile_us(0.5),
            scan_p99_us: hs.quantile_us(0.99),
            placed_share: placed,
        };
        println!(
            "| {} | {:.2} | {:.2} | {:.1} | {:.1} | {:.0}x | {:.1}% |",
            row.policy,
            row.p50_us,
            row.p99_us,
            row.scan_p50_us,
            row.scan_p99_us,
            row.scan_p99_us / row.p99_us.max(1e-9),
            100.0 * row.placed_share
        );
        rows.push(row);
    }
    let path = args.out.clone().unwrap_or_else(|| {
        super::results_root()
            .join("bench-placement")
            .join(format!("{}n.json", args.nodes))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
    println!("wrote {}", path.display());
    Ok(())
}
