//! The discrete-event simulator: SWF batch jobs and function streams on one cluster, placed by
//! the same `harvest-policies` code the scheduler runs.
//!
//! - [`batch`]: SWF records to jobs, scaled by replication; FCFS + EASY backfill or replay.
//! - [`engine`]: the event loop (job submit/end, function arrival/end, reclaim, waits).
//! - [`metrics`]: time integrals, the decimated time series, placement latency histogram.
//!
//! [`SimConfig`] says what to run; [`engine::run`] returns a [`Summary`] and the time series.

pub mod batch;
pub mod engine;
pub mod metrics;

use std::path::PathBuf;

use serde::Serialize;

use crate::cost::CostModel;
use crate::daint::DaintStats;
use crate::functions::FunctionSpec;
pub use batch::BatchMode;

/// Backfill scan depth unless configured (Slurm's `bf_max_job_test` is of this order).
pub const DEFAULT_BACKFILL_DEPTH: usize = 100;
/// How long a function waits for room before it is refused, unless configured.
pub const DEFAULT_MAX_WAIT_MS: u64 = 10_000;
/// Share of batch jobs marked sensitive to co-location unless configured.
pub const DEFAULT_SENSITIVE_FRACTION: f64 = 0.1;
/// Share of a node's memory (per core used) a job uses when the trace does not say.
pub const DEFAULT_UNKNOWN_MEM_FRACTION: f64 = 0.5;
/// Nodes per topology group (a chassis) for lease affinity.
pub const DEFAULT_GROUP_SIZE: u32 = 16;
/// Time-series points per run (decimated, to keep results small).
pub const DEFAULT_SAMPLES: usize = 400;
/// Queued functions looked at per node that gets room.
pub const RETRY_PER_RELEASE: usize = 16;

/// Everything one simulation needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub trace: PathBuf,
    /// The `shared/data` directory (traces and reference results).
    pub data_dir: PathBuf,
    /// Cluster size; `None` = the trace's own machine.
    pub nodes: Option<u32>,
    pub policy: String,
    pub functions: FunctionSpec,
    pub functions_text: String,
    pub batch: BatchMode,
    pub backfill_depth: usize,
    /// Where in the trace simulated time 0 is: seconds after its first job's submission (jobs
    /// before it are skipped).
    pub start_s: u64,
    /// Simulated time before measurement starts (the cluster fills up), seconds.
    pub warmup_s: u64,
    /// Measured window, seconds.
    pub duration_s: u64,
    /// Stop reading the trace after this many records.
    pub max_records: Option<u64>,
    pub max_wait_ms: u64,
    pub seed: u64,
    pub sensitive_fraction: f64,
    pub unknown_mem_fraction: f64,
    pub node_cores: Option<u32>,
    pub node_mem_mib: Option<u64>,
    /// GPUs per node (SWF traces have none; batch jobs hold GPUs in proportion to their cores).
    pub node_gpus: u32,
    pub trace_nodes: Option<u32>,
    pub group_size: u32,
    pub samples: usize,
}

/// The headline figures of a run (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trace: String,
    pub machine: String,
    /// The trace's own "Acknowledge" header line, to quote when publishing.
    pub trace_acknowledge: Option<String>,
    pub policy: String,
    pub functions_spec: String,
    pub batch_mode: BatchMode,
    pub nodes: u32,
    pub cores_per_node: u32,
    pub mem_per_node_mib: u64,
    pub gpus_per_node: u32,
    pub trace_nodes: u32,
    /// How many times the trace's job stream was replicated to fill the cluster.
    pub replication: u32,
    pub window_start_h: f64,
    pub window_h: f64,
    pub jobs: u64,
    pub jobs_started: u64,
    pub jobs_completed: u64,
    pub trace_records: TraceCounts,
    pub util_cores_batch_only: f64,
    pub util_cores_with_harvest: f64,
    pub util_mem_batch_only: f64,
    pub util_mem_with_harvest: f64,
    pub idle_core_hours_batch_only: f64,
    pub core_hours_recovered: f64,
    pub idle_mem_gib_hours_batch_only: f64,
    pub mem_gib_hours_recovered: f64,
    pub functions_submitted: u64,
    pub functions_placed: u64,
    pub functions_refused: u64,
    pub functions_placed_after_wait: u64,
    pub function_wait_p50_ms: f64,
    pub function_wait_p99_ms: f64,
    pub reclaims: u64,
    pub function_core_hours_lost_to_reclaim: f64,
    pub batch_slowdown_mean: f64,
    pub batch_slowdown_mean_colocated: f64,
    pub batch_slowdown_max: f64,
    pub jobs_colocated: u64,
    pub sensitive_node_hours_colocated: f64,
    pub placements: u64,
    pub placement_p50_us: f64,
    pub placement_p99_us: f64,
    pub events: u64,
    pub events_per_s: f64,
    pub wall_s: f64,
    pub overcommit_violations: u64,
    pub daint_comparison: DaintComparison,
    pub cost_model: CostModel,
}

/// Why trace records were left out (copied from [`batch::SourceStats`]).
pub type TraceCounts = batch::SourceStats;

/// The simulation's statistics beside Piz Daint's (batch only, time averages).
#[derive(Debug, Clone, Serialize)]
pub struct DaintComparison {
    pub daint: Option<DaintStats>,
    pub sim_idle_cpus_on_idle_nodes: f64,
    pub sim_idle_cpus_on_allocated_nodes: f64,
    pub sim_free_mem_on_allocated_nodes: f64,
    pub sim_free_mem_on_idle_nodes: f64,
    pub sim_allocated_node_fraction: f64,
    pub sim_idle_node_fraction: f64,
}
