//! `simulate`: one trace, one policy, one function workload; writes
//! `experiments/results/simulate/<run>/`.

use std::path::PathBuf;

use anyhow::Context;
use harvest_core::{parse_duration, parse_memory_mib};

use crate::machine::MachineFlags;
use crate::output::{DEFAULT_FONT, write_run};
use crate::sim::study::{StudyConfig, run_study};
use crate::sim::study_output::write_study;
use crate::sim::{
    AllocationMode, BatchMode, DEFAULT_BACKFILL_DEPTH, DEFAULT_COPY_SHIFT_S, DEFAULT_DRAIN_S,
    DEFAULT_GROUP_SIZE, DEFAULT_PRIORITY, DEFAULT_SAMPLES, DEFAULT_SENSITIVE_FRACTION,
    DEFAULT_UNKNOWN_MEM_FRACTION, Limits, PriorityParams, QueueLimit, QueueOrder, SimConfig,
};
use crate::swf::SwfReader;

/// Warm-up and window of a normal run.
pub const DEFAULT_WARMUP: &str = "24h";
pub const DEFAULT_DURATION: &str = "48h";
/// Warm-up and window of `--quick`.
pub const QUICK_WARMUP: &str = "6h";
pub const QUICK_DURATION: &str = "6h";
/// The demand `config` checks and sets when `--functions` is not given; `simulate` and
/// `compare-policies` replace it with the Azure sample scaled to `--load` of the idle
/// core-hours.
pub const DEFAULT_SINGLE_DEMAND: &str = "azure:scale=1";
/// Offered-load sweep: fractions of the batch-only run's idle core-hours.
pub const DEFAULT_SWEEP: &[f64] = &[0.1, 0.25, 0.5, 0.75, 1.0, 1.5];

/// The workload flags shared by `simulate` and `compare-policies`.
#[derive(Debug, Clone, clap::Args)]
pub struct Workload {
    /// SWF trace (plain or gzip).
    #[arg(long)]
    pub trace: PathBuf,
    /// Cluster size in nodes: the trace is run as round(N / trace nodes) time-shifted copies,
    /// so the cluster is exactly copies x trace nodes. Default: the trace's own machine.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// Trace time between the copies' origins (e.g. 168h); copies wrap around the trace.
    #[arg(long)]
    pub copy_shift: Option<String>,
    /// Function demand: `azure:scale=K` (the Azure sample's invocation rate times K),
    /// `poisson:rate=R,cores=C,mem=M,duration=D`, joined by `+`, or `none`. Default for
    /// `simulate`: the Azure sample scaled to offer --load of the harvestable core-hours.
    #[arg(long)]
    pub functions: Option<String>,
    /// Batch placement in time: EASY backfill (in --queue-order), or the trace's own start times.
    #[arg(long, value_enum, default_value = "easy")]
    pub batch: BatchMode,
    /// Core-granular (jobs share nodes) or node-exclusive; `auto` decides from the trace's
    /// data (node-exclusive when 90% of jobs ask for whole nodes).
    #[arg(long, value_enum, default_value = "auto")]
    pub allocation: AllocationMode,
    /// Short run for tests and smoke checks: 6 h warm-up, 6 h window, 1 day of drain.
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
    /// After the window, how long jobs submitted in it may run on (their waits and slowdowns
    /// need their ends). Default 168h (24h with --quick).
    #[arg(long)]
    pub drain: Option<String>,
    /// How long a function may wait for room before it is refused (0s: refuse at once).
    #[arg(long, default_value = "10s")]
    pub max_wait: String,
    /// Times a reclaimed lease is placed again (from its start) before its work is lost.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Report interference without stretching jobs (off by default: jobs are stretched).
    #[arg(long)]
    pub no_feedback: bool,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Backfill scan depth (Slurm's bf_max_job_test).
    #[arg(long, default_value_t = DEFAULT_BACKFILL_DEPTH)]
    pub backfill_depth: usize,
    /// The order EASY considers waiting jobs in: `priority` (Slurm-like multifactor: fair
    /// share by the trace's user, decayed over --half-life, plus age) or `fcfs` (submit order).
    #[arg(long, value_enum, default_value = "priority")]
    pub queue_order: QueueOrder,
    /// Weight of the fair-share factor (Slurm's PriorityWeightFairshare).
    #[arg(long, default_value_t = DEFAULT_PRIORITY.weight_fairshare)]
    pub weight_fairshare: f64,
    /// Weight of the age factor (Slurm's PriorityWeightAge).
    #[arg(long, default_value_t = DEFAULT_PRIORITY.weight_age)]
    pub weight_age: f64,
    /// Age at which the age factor is 1 (Slurm's PriorityMaxAge).
    #[arg(long, default_value = "168h")]
    pub max_age: String,
    /// Half-life of the usage fair share counts (Slurm's PriorityDecayHalfLife; 0s: no decay).
    #[arg(long, default_value = "168h")]
    pub half_life: String,
    /// How often priorities are recalculated (Slurm's PriorityCalcPeriod; 0s: every pass).
    #[arg(long, default_value = "5m")]
    pub priority_calc_period: String,
    /// At most N running jobs per user (account) at once, as Slurm's MaxJobs / MaxJobsPerUser:
    /// the user's other jobs wait without blocking anyone. Default: no limit.
    #[arg(long)]
    pub max_running_per_user: Option<u32>,
    /// At most N cores (the jobs' processors) per user at once, as a QOS's
    /// MaxTRESPerUser=cpu=N: a job that would take its user past N waits without blocking
    /// anyone (a smaller job of the same user may still start). Default: no limit.
    #[arg(long)]
    pub max_cores_per_user: Option<u64>,
    /// Limits of one queue, by the trace's queue name (SWF field 15's number, or the name in
    /// field 20 of Alea's extended SWF, e.g. q_2d): `NAME:cores=N` caps the cores of all the
    /// queue's running jobs (a partition QOS's GrpTRES=cpu=N), `NAME:user-cores=M` one user's
    /// in it (MaxTRESPerUser=cpu=M); both: `NAME:cores=N,user-cores=M`. Repeat for more queues.
    #[arg(long = "queue-limit", value_parser = QueueLimit::parse)]
    pub queue_limits: Vec<QueueLimit>,
    /// Check the indexed EASY pass: run the textbook one instead (every waiting job's
    /// priority and a full sort each pass; the same schedule, much slower on deep queues).
    #[arg(long)]
    pub straightforward_pass: bool,
    /// Share of batch jobs marked sensitive to co-location.
    #[arg(long, default_value_t = DEFAULT_SENSITIVE_FRACTION)]
    pub sensitive_fraction: f64,
    /// Share of node memory per core used that a job without memory data uses.
    #[arg(long, default_value_t = DEFAULT_UNKNOWN_MEM_FRACTION)]
    pub unknown_mem_fraction: f64,
    /// Machine file (Alea's `.machines` format); default `<trace>.machines` beside the trace.
    #[arg(long)]
    pub machine_file: Option<PathBuf>,
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
        let (warmup, duration, drain) = if self.quick {
            (QUICK_WARMUP, QUICK_DURATION, "24h")
        } else {
            (DEFAULT_WARMUP, DEFAULT_DURATION, "168h")
        };
        let node_mem_mib = self
            .node_mem
            .as_deref()
            .map(parse_memory_mib)
            .transpose()
            .context("--node-mem")?;
        let machine = MachineFlags {
            machine_file: self.machine_file.clone(),
            node_cores: self.node_cores,
            node_mem_mib,
            trace_nodes: self.trace_nodes,
        };
        let header = SwfReader::open(&self.trace)?.header().clone();
        let m = crate::machine::machine_for(&self.trace, &header, &machine)?;
        let copies = self.nodes.map_or(1, |n| {
            ((f64::from(n) / f64::from(m.nodes)).round() as u32).max(1)
        });
        let demand_text = self
            .functions
            .clone()
            .unwrap_or_else(|| DEFAULT_SINGLE_DEMAND.to_owned());
        crate::sim::demand::parse_demand(&demand_text).context("--functions")?;
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
        anyhow::ensure!(
            self.max_running_per_user != Some(0),
            "--max-running-per-user 0 would hold every job: give 1 or more, or leave it out"
        );
        anyhow::ensure!(
            self.max_cores_per_user != Some(0),
            "--max-cores-per-user 0 would hold every job: give 1 or more, or leave it out"
        );
        for (w, flag) in [
            (self.weight_fairshare, "--weight-fairshare"),
            (self.weight_age, "--weight-age"),
        ] {
            anyhow::ensure!(
                w.is_finite() && w >= 0.0,
                "{flag} {w} must be a finite number >= 0"
            );
        }
        let priority = PriorityParams {
            weight_fairshare: self.weight_fairshare,
            weight_age: self.weight_age,
            max_age_ms: secs(&self.max_age, "max-age")?.saturating_mul(1000),
            half_life_ms: secs(&self.half_life, "half-life")?.saturating_mul(1000),
            calc_period_ms: secs(&self.priority_calc_period, "priority-calc-period")?
                .saturating_mul(1000),
        };
        Ok(SimConfig {
            trace: self.trace.clone(),
            data_dir: self.data.clone(),
            copies,
            copy_shift_s: match &self.copy_shift {
                Some(t) => secs(t, "copy-shift")?,
                None => DEFAULT_COPY_SHIFT_S,
            },
            policy: policy.to_owned(),
            demand_text,
            batch: self.batch,
            allocation: self.allocation,
            backfill_depth: self.backfill_depth,
            queue_order: self.queue_order,
            priority,
            limits: Limits {
                max_running_per_user: self.max_running_per_user,
                max_cores_per_user: self.max_cores_per_user,
                queues: self.queue_limits.clone(),
            },
            straightforward_pass: self.straightforward_pass,
            start_s: secs(&self.start, "start")?,
            warmup_s: secs(self.warmup.as_deref().unwrap_or(warmup), "warmup")?,
            duration_s: secs(self.duration.as_deref().unwrap_or(duration), "duration")?,
            drain_s: match &self.drain {
                Some(t) => secs(t, "drain")?,
                None if self.quick => 86_400,
                None => DEFAULT_DRAIN_S.min(secs(drain, "drain")?),
            },
            max_wait_ms,
            retries: self.retries,
            feedback: !self.no_feedback,
            seed: self.seed,
            sensitive_fraction: self.sensitive_fraction,
            unknown_mem_fraction: self.unknown_mem_fraction,
            machine,
            node_gpus: self.node_gpus,
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
            "{stem}-x{}{}",
            cfg.copies,
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
    /// Windows (replicates, each with its own seed) for the confidence intervals. Default 3
    /// (2 with --quick).
    #[arg(long)]
    pub windows: Option<u32>,
    /// Trace time between the windows' starts.
    #[arg(long, default_value = "168h")]
    pub window_step: String,
    /// With-harvest demand when --functions is not given: the Azure sample scaled to offer
    /// this fraction of the batch-only run's idle core-hours.
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Offered-load sweep points, fractions of the idle core-hours (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<f64>,
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
    let sc = StudyConfig {
        base: cfg,
        windows: args
            .windows
            .unwrap_or(if args.workload.quick { 2 } else { 3 }),
        window_step_s: parse_duration(&args.window_step)
            .context("--window-step")?
            .as_secs(),
        demand: args.workload.functions.clone(),
        load: args.load,
        sweep: if args.sweep.is_empty() {
            DEFAULT_SWEEP.to_vec()
        } else {
            args.sweep.clone()
        },
    };
    let mut printers: std::collections::HashMap<String, Box<dyn FnMut(crate::sim::Progress)>> =
        Default::default();
    let (study, first) = run_study(&sc, |label, p| {
        printers
            .entry(label.to_owned())
            .or_insert_with(|| Box::new(super::progress_printer(label.to_owned())))(p)
    })?;
    super::progress_done();
    for (sub, out) in [
        ("batch-only", &first.batch_only),
        ("with-harvest", &first.with_harvest),
    ] {
        write_run(
            &dir.join(sub),
            &out.summary,
            &out.samples,
            &args.workload.font,
        )?;
    }
    write_study(&dir, &study, &args.workload.font)?;
    let s = &study;
    println!(
        "{} nodes ({:?}): core utilization trace {:.1}%, replay {:.1}%, batch only {:.1}%, with harvest {:.1}%; \
         harvestable {:.0} core-h, offered {:.0}, served {:.0}, lost to reclaim {:.0}; invocations served {:.2}%; \
         wait p50 {:.0} s -> {:.0} s; bounded slowdown p50 {:.2} -> {:.2}; queue ({:?}) {} -> {} jobs (trace {} -> {}), {}; \
         placement p99 {:.2} us; {:.2} M events/s (same run: batch only {:.2} M, replay {:.2} M)",
        s.nodes,
        s.allocation,
        100.0 * s.util_cores_trace,
        100.0 * s.util_cores_replay,
        100.0 * s.util_cores_batch_only,
        100.0 * s.util_cores_with_harvest,
        s.harvestable_core_hours,
        s.offered_core_hours,
        s.served_core_hours,
        s.lost_to_reclaim_core_hours,
        s.invocations_served_pct,
        s.wait_p50_s_batch_only,
        s.wait_p50_s_with_harvest,
        s.bounded_slowdown_p50_batch_only,
        s.bounded_slowdown_p50_with_harvest,
        s.queue_order,
        s.queued_jobs_window_start,
        s.queued_jobs_window_end,
        s.trace_queued_jobs_window_start,
        s.trace_queued_jobs_window_end,
        if s.queue_stable {
            "stable"
        } else {
            "NOT stable"
        },
        s.placement_p99_us,
        s.events_per_s / 1e6,
        s.events_per_s_batch_only / 1e6,
        s.events_per_s_replay / 1e6
    );
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    println!("wrote {}", dir.display());
    Ok(())
}
