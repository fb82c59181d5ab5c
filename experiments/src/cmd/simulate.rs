//! `simulate`: one trace, one policy, one function workload; writes
//! `experiments/results/simulate/<run>/`.

use std::path::PathBuf;

use anyhow::Context;
use harvest_core::{parse_duration, parse_memory_mib};

use crate::functions::FunctionSpec;
use crate::machine::machine_for;
use crate::output::{DEFAULT_FONT, write_run};
use crate::sim::engine::{Outcome, run};
use crate::sim::{
    BatchMode, DEFAULT_BACKFILL_DEPTH, DEFAULT_GROUP_SIZE, DEFAULT_SAMPLES,
    DEFAULT_SENSITIVE_FRACTION, DEFAULT_UNKNOWN_MEM_FRACTION, SimConfig,
};
use crate::swf::SwfReader;

/// Warm-up and window of a normal run.
pub const DEFAULT_WARMUP: &str = "24h";
pub const DEFAULT_DURATION: &str = "48h";
/// Warm-up, window and trace records of `--quick`.
pub const QUICK_WARMUP: &str = "24h";
pub const QUICK_DURATION: &str = "6h";
pub const QUICK_MAX_RECORDS: u64 = 20_000;
/// Nodes per default Poisson arrival per second (the default workload grows with the cluster).
pub const NODES_PER_ARRIVAL_PER_S: u32 = 1000;

/// The workload flags shared by `simulate` and `compare-policies`.
#[derive(Debug, Clone, clap::Args)]
pub struct Workload {
    /// SWF trace (plain or gzip).
    #[arg(long)]
    pub trace: PathBuf,
    /// Cluster size in nodes; the trace's job stream is replicated to fill it. Default: the
    /// trace's own machine.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Function streams, e.g. `azure:scale=2+poisson:rate=40,cores=2,mem=4G,duration=5m`, or
    /// `none`. Default: the Azure sample plus a Poisson stream of 1 arrival/s per 1,000 nodes of
    /// 5-minute leases of 2 cores and 4 GiB (at most a quarter of a node).
    #[arg(long)]
    pub functions: Option<String>,
    /// Batch placement in time: FCFS with EASY backfill, or the trace's own start times.
    #[arg(long, value_enum, default_value = "easy")]
    pub batch: BatchMode,
    /// Short run for tests and smoke checks: 24 h warm-up (batch only, cheap), 6 h window, at
    /// most 20,000 trace records.
    #[arg(long)]
    pub quick: bool,
    /// The shared data directory (traces/, reference/).
    #[arg(long, env = "HARVEST_DATA", default_value_os_t = super::default_data_dir())]
    pub data: PathBuf,
    /// Start this far into the trace (e.g. 720h for 30 days); earlier jobs are skipped.
    #[arg(long, default_value = "0s")]
    pub start: String,
    /// Simulated time before measuring (e.g. 24h).
    #[arg(long)]
    pub warmup: Option<String>,
    /// Measured window (e.g. 48h).
    #[arg(long)]
    pub duration: Option<String>,
    /// Simulate at most this many trace records (from --start on).
    #[arg(long)]
    pub max_records: Option<u64>,
    /// How long a function may wait for room before it is refused (0s: refuse at once).
    #[arg(long, default_value = "10s")]
    pub max_wait: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Backfill scan depth (Slurm's bf_max_job_test).
    #[arg(long, default_value_t = DEFAULT_BACKFILL_DEPTH)]
    pub backfill_depth: usize,
    /// Share of batch jobs marked sensitive to co-location.
    #[arg(long, default_value_t = DEFAULT_SENSITIVE_FRACTION)]
    pub sensitive_fraction: f64,
    /// Share of node memory per core used that a job without memory data uses.
    #[arg(long, default_value_t = DEFAULT_UNKNOWN_MEM_FRACTION)]
    pub unknown_mem_fraction: f64,
    /// Override the trace machine's cores per node.
    #[arg(long)]
    pub node_cores: Option<u32>,
    /// Override the trace machine's memory per node (Slurm notation, e.g. 64G).
    #[arg(long)]
    pub node_mem: Option<String>,
    /// GPUs per node (traces have none; a batch job holds GPUs in proportion to its cores on
    /// the node, so GPU leases harvest the rest).
    #[arg(long, default_value_t = 0)]
    pub node_gpus: u32,
    /// Override the trace machine's node count (what replication divides by).
    #[arg(long)]
    pub trace_nodes: Option<u32>,
    /// Font for the plots.
    #[arg(long, default_value = DEFAULT_FONT)]
    pub font: PathBuf,
}

impl Workload {
    /// Resolves the flags into a simulation of `policy`.
    pub fn config(&self, policy: &str) -> anyhow::Result<SimConfig> {
        let secs = |text: &str, flag: &str| -> anyhow::Result<u64> {
            Ok(parse_duration(text)
                .with_context(|| format!("--{flag}"))?
                .as_secs())
        };
        let (warmup, duration) = if self.quick {
            (QUICK_WARMUP, QUICK_DURATION)
        } else {
            (DEFAULT_WARMUP, DEFAULT_DURATION)
        };
        let node_mem_mib = self
            .node_mem
            .as_deref()
            .map(parse_memory_mib)
            .transpose()
            .context("--node-mem")?;
        let reader = SwfReader::open(&self.trace)?;
        let file_name = self
            .trace
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let machine = machine_for(
            &file_name,
            reader.header(),
            self.node_cores,
            node_mem_mib,
            self.trace_nodes,
        )?;
        let nodes = self.nodes.unwrap_or(machine.nodes);
        let functions_text = self.functions.clone().unwrap_or_else(|| {
            let rate = f64::from(nodes) / f64::from(NODES_PER_ARRIVAL_PER_S);
            // 2 cores and 4 GiB, or what a small node has room for (a quarter of a node).
            let cores = machine.cores.div_ceil(4).clamp(1, 2);
            let mem = (machine.mem_mib / 4).clamp(1, 4096);
            format!("azure+poisson:rate={rate},cores={cores},mem={mem}M,duration=5m")
        });
        let functions = FunctionSpec::parse(&functions_text).context("--functions")?;
        let max_wait_ms = parse_duration(&self.max_wait)
            .context("--max-wait")?
            .as_millis() as u64;
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.sensitive_fraction),
            "--sensitive-fraction {} must be between 0 and 1",
            self.sensitive_fraction
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.unknown_mem_fraction),
            "--unknown-mem-fraction {} must be between 0 and 1",
            self.unknown_mem_fraction
        );
        Ok(SimConfig {
            trace: self.trace.clone(),
            data_dir: self.data.clone(),
            nodes: Some(nodes),
            policy: policy.to_owned(),
            functions,
            functions_text,
            batch: self.batch,
            backfill_depth: self.backfill_depth,
            start_s: secs(&self.start, "start")?,
            warmup_s: secs(self.warmup.as_deref().unwrap_or(warmup), "warmup")?,
            duration_s: secs(self.duration.as_deref().unwrap_or(duration), "duration")?,
            max_records: self.max_records.or(self.quick.then_some(QUICK_MAX_RECORDS)),
            max_wait_ms,
            seed: self.seed,
            sensitive_fraction: self.sensitive_fraction,
            unknown_mem_fraction: self.unknown_mem_fraction,
            node_cores: self.node_cores,
            node_mem_mib,
            node_gpus: self.node_gpus,
            trace_nodes: self.trace_nodes,
            group_size: DEFAULT_GROUP_SIZE,
            samples: DEFAULT_SAMPLES,
        })
    }

    /// `<trace stem>-<nodes>n` (plus `-quick`), the default run name.
    pub fn run_name(&self, cfg: &SimConfig) -> String {
        let stem = self
            .trace
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = stem
            .trim_end_matches(".gz")
            .trim_end_matches(".swf")
            .to_owned();
        format!(
            "{stem}-{}n{}",
            cfg.nodes.unwrap_or(0),
            if self.quick { "-quick" } else { "" }
        )
    }
}

/// `simulate`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub workload: Workload,
    /// Placement policy (first-fit, best-fit, spread, interference-aware, gpu-aware,
    /// lease-affinity, harvest).
    #[arg(long, default_value = "harvest")]
    pub policy: String,
    /// Run name (the directory under results/simulate/). Default: `<trace>-<nodes>n-<policy>`.
    #[arg(long)]
    pub run: Option<String>,
    /// Output directory (overrides the run name).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs one simulation and writes its files; returns the outcome and the directory.
pub fn simulate_into(
    cfg: &SimConfig,
    dir: &std::path::Path,
    font: &std::path::Path,
    label: String,
) -> anyhow::Result<Outcome> {
    let outcome = run(cfg, super::progress_printer(label))?;
    super::progress_done();
    write_run(dir, &outcome.summary, &outcome.samples, font)?;
    Ok(outcome)
}

pub fn run_cmd(args: Args) -> anyhow::Result<()> {
    let cfg = args.workload.config(&args.policy)?;
    let name = args
        .run
        .clone()
        .unwrap_or_else(|| format!("{}-{}", args.workload.run_name(&cfg), args.policy));
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| super::results_root().join("simulate").join(&name));
    let outcome = simulate_into(&cfg, &dir, &args.workload.font, name)?;
    let s = &outcome.summary;
    println!(
        "{} nodes, {} jobs, policy {}: core utilization {:.1}% -> {:.1}% with harvest, memory {:.1}% -> {:.1}%; \
         functions placed {} refused {}; reclaims {}; placement p50 {:.2} us p99 {:.2} us; {:.2} M events/s",
        s.nodes,
        s.jobs,
        s.policy,
        100.0 * s.util_cores_batch_only,
        100.0 * s.util_cores_with_harvest,
        100.0 * s.util_mem_batch_only,
        100.0 * s.util_mem_with_harvest,
        s.functions_placed,
        s.functions_refused,
        s.reclaims,
        s.placement_p50_us,
        s.placement_p99_us,
        s.events_per_s / 1e6
    );
    println!("wrote {}", dir.display());
    Ok(())
}
