//! The discrete-event simulator: an SWF trace's batch jobs and function demand on one cluster,
//! placed by the same `harvest-policies` code the scheduler runs.
//!
//! - [`trace`]: the trace in memory, its own utilization, copies and warm starts;
//! - [`alloc`]: core-granular or node-exclusive batch allocation;
//! - [`batch`]: jobs and the queue (EASY backfill over a fair-share priority or FCFS order, or the trace's own start times);
//!   [`fairshare`]: the decayed usage behind the priority; [`limits`]: per-user and per-queue limits;
//! - [`demand`]: function requests from the Azure trace (scaled) and Poisson streams;
//! - [`engine`]: the event loop, with interference fed back into the jobs' run times;
//! - [`accounting`]: offered / served / refused / lost function work, batch job statistics;
//! - [`run`](mod@run): one simulation to a [`Summary`]; [`study`]: the validated comparison
//!   (trace vs batch-only vs with-harvest over windows, and the offered-load sweep);
//! - [`radix`]: the monotone queue of the loop's ends; [`idwindow`]: its leases by id;
//! - [`stats`]: quantiles and confidence intervals; [`metrics`]: integrals and time series;
//! - [`synthetic`]: a synthetic trace of known size and load, for benchmarks.

pub mod accounting;
pub mod alloc;
pub mod batch;
pub mod demand;
pub mod engine;
pub mod fairshare;
pub mod idwindow;
pub mod limits;
pub mod metrics;
pub mod radix;
pub mod run;
pub mod stats;
pub mod study;
pub mod study_output;
pub mod synthetic;
pub mod trace;

use std::path::PathBuf;

use serde::Serialize;

use crate::cost::CostModel;
use crate::daint::DaintStats;
pub use accounting::StreamAccount;
pub use batch::{BatchMode, DEFAULT_PRIORITY, PriorityParams, QueueOrder};
pub use limits::{Limits, QueueLimit};
pub use run::{Outcome, Progress, SimError, run, run_with};
pub use trace::{AllocationMode, TraceCounts};

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
/// How far apart in the trace the copies of a replicated trace start, unless configured.
pub const DEFAULT_COPY_SHIFT_S: u64 = 7 * 86_400;
/// How long after the window jobs submitted in it may run to completion, unless configured.
pub const DEFAULT_DRAIN_S: u64 = 7 * 86_400;
/// Points off the trace's own utilization past which batch-only is flagged.
pub const UTIL_TOLERANCE: f64 = 0.05;

/// Everything one simulation needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub trace: PathBuf,
    /// The `shared/data` directory (traces and reference results).
    pub data_dir: PathBuf,
    /// Copies of the trace (the cluster is exactly `copies x trace nodes`).
    pub copies: u32,
    /// Trace seconds between the copies' origins.
    pub copy_shift_s: u64,
    pub policy: String,
    pub demand_text: String,
    pub batch: BatchMode,
    pub allocation: AllocationMode,
    pub backfill_depth: usize,
    /// FCFS or the multifactor priority (fair share by the trace's user, plus age).
    pub queue_order: QueueOrder,
    pub priority: PriorityParams,
    /// Per-user and per-queue limits (running jobs, cores); none by default.
    pub limits: Limits,
    /// Run the textbook EASY pass instead of the indexed one (the same schedule, slower; for
    /// checking the indexed pass).
    pub straightforward_pass: bool,
    /// Where in the trace simulated time 0 is: seconds after its first submission.
    pub start_s: u64,
    /// Simulated time before measurement starts, seconds.
    pub warmup_s: u64,
    /// Measured window, seconds.
    pub duration_s: u64,
    /// After the window, how long jobs submitted in it may run on (seconds).
    pub drain_s: u64,
    pub max_wait_ms: u64,
    /// How many times a reclaimed lease is placed again (from the start) before it is lost.
    pub retries: u32,
    /// Interference stretches co-located jobs (off: reported only, for comparison).
    pub feedback: bool,
    pub seed: u64,
    pub sensitive_fraction: f64,
    pub unknown_mem_fraction: f64,
    pub machine: crate::machine::MachineFlags,
    pub node_gpus: u32,
    pub group_size: u32,
    pub samples: usize,
}

/// One simulation's figures (`summary.json` of a single run).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub trace: String,
    pub machine: String,
    /// The trace's own "Acknowledge" header line, to quote when publishing.
    pub trace_acknowledge: Option<String>,
    pub policy: String,
    pub functions_spec: String,
    /// The seed of the demand's arrival times and the jobs' slowdown draws.
    pub seed: u64,
    pub batch_mode: BatchMode,
    pub queue_order: QueueOrder,
    /// The multifactor priority's parameters (used when `queue_order` is `priority`).
    pub priority: PriorityParams,
    /// The running-jobs limit per account (`None`: none).
    pub max_running_per_user: Option<u32>,
    /// The cores limit per account (`None`: none).
    pub max_cores_per_user: Option<u64>,
    /// Per-queue core limits, by the trace's queue names.
    pub queue_limits: Vec<QueueLimit>,
    /// Fair-share accounts (the trace's users x copies) seen in the run.
    pub accounts: u64,
    pub allocation: AllocationMode,
    pub allocation_reason: String,
    pub nodes: u32,
    pub cores_per_node: u32,
    pub mem_per_node_mib: u64,
    pub gpus_per_node: u32,
    pub trace_nodes: u32,
    /// Time-shifted copies of the trace (the cluster is `replication x trace_nodes`).
    pub replication: u32,
    pub copy_origins_h: Vec<f64>,
    pub window_start_h: f64,
    pub window_h: f64,
    pub jobs: u64,
    pub jobs_started: u64,
    pub jobs_completed: u64,
    pub trace_records: TraceCounts,
    /// The trace's own schedule over the same hours (its start times, its machine).
    pub util_cores_trace: f64,
    /// Peak cores the trace's own start times hold at once in the window (above the machine
    /// when the trace's start times over-fill it, e.g. when its waits are unknown).
    pub trace_peak_cores: u64,
    pub util_cores_batch_only: f64,
    pub util_cores_with_harvest: f64,
    pub util_mem_batch_only: f64,
    pub util_mem_with_harvest: f64,
    pub idle_core_hours_batch_only: f64,
    /// Idle cores on nodes that hold a job (inside) and on nodes that hold none (beside).
    pub idle_core_hours_inside_jobs: f64,
    pub idle_core_hours_beside_jobs: f64,
    pub core_hours_recovered: f64,
    pub idle_mem_gib_hours_batch_only: f64,
    pub mem_gib_hours_recovered: f64,
    pub queued_jobs_window_start: u64,
    pub queued_jobs_window_end: u64,
    pub queued_jobs_max: u64,
    /// Jobs waiting in the trace's own queue at the window's start and end (all copies).
    pub trace_queued_jobs_window_start: u64,
    pub trace_queued_jobs_window_end: u64,
    pub functions: StreamAccount,
    pub function_streams: Vec<StreamAccount>,
    pub invocations_served_pct: f64,
    pub invocation_wait_p50_ms: f64,
    pub invocation_wait_p99_ms: f64,
    pub functions_submitted: u64,
    pub functions_placed: u64,
    pub functions_refused: u64,
    pub functions_placed_after_wait: u64,
    pub function_wait_p50_ms: f64,
    pub function_wait_p99_ms: f64,
    pub reclaims: u64,
    pub function_core_hours_lost_to_reclaim: f64,
    pub window_jobs_submitted: u64,
    pub window_jobs_unfinished: u64,
    pub wait_p50_s: f64,
    pub wait_mean_s: f64,
    pub wait_p90_s: f64,
    pub trace_wait_p50_s: Option<f64>,
    pub trace_wait_mean_s: Option<f64>,
    pub trace_wait_p90_s: Option<f64>,
    pub start_error_p50_s: Option<f64>,
    pub start_error_mean_s: Option<f64>,
    pub bounded_slowdown_p50: f64,
    pub bounded_slowdown_mean: f64,
    pub throughput_jobs_per_h: f64,
    pub batch_slowdown_mean: f64,
    pub batch_slowdown_mean_colocated: f64,
    pub batch_slowdown_max: f64,
    pub jobs_colocated: u64,
    pub batch_core_hours_added_by_interference: f64,
    pub sensitive_node_hours_colocated: f64,
    pub placements: u64,
    pub placement_p50_us: f64,
    pub placement_p99_us: f64,
    /// Job submissions and ends, function arrivals and ends (what `events_per_s` counts).
    pub events: u64,
    /// Ends popped that no longer held (a job's end a re-rating moved, a reclaimed lease's
    /// end): skipped, not counted as events.
    pub superseded_ends: u64,
    pub events_per_s: f64,
    pub wall_s: f64,
    /// The loop's time on a CPU (Linux), and events per CPU second: what the simulator costs
    /// when other work shares the machine (wall time then counts the waits for a CPU too).
    pub cpu_s: Option<f64>,
    pub events_per_cpu_s: Option<f64>,
    pub overcommit_violations: u64,
    pub daint_comparison: DaintComparison,
    pub cost_model: CostModel,
    pub warnings: Vec<String>,
}

/// The simulation's statistics beside Piz Daint's (time averages over the window).
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
