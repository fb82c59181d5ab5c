//! One simulation: the cluster and job stream built from the trace, the loop run, the figures.

use std::time::Instant;

use harvest_policies::{Cluster, PolicyConfig, Registry, Resources};

use super::alloc::{Allocator, Granularity};
use super::demand::{AzureRates, Demand, DemandStream, parse_demand};
use super::engine::{Sim, node_cores};
use super::metrics::Sample;
use super::stats::{mean, quantile};
use super::trace::{AllocationMode, Trace};
use super::{DaintComparison, SimConfig, Summary, UTIL_TOLERANCE};
use crate::cost::CostModel;
use crate::daint::DaintStats;
use crate::machine::{Machine, machine_for};

/// A simulation that could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Swf(#[from] crate::swf::SwfError),
    #[error(transparent)]
    Machine(#[from] crate::machine::MachineError),
    #[error(transparent)]
    Azure(#[from] crate::azure::AzureError),
    #[error(transparent)]
    Cost(#[from] crate::cost::CostError),
    #[error("--functions: {0}")]
    Spec(#[from] crate::functions::SpecError),
    #[error("policy: {0}")]
    Policy(#[from] harvest_policies::ConfigError),
    #[error("--duration must be at least 1 second")]
    Duration,
    #[error("the trace {0} has no job with a run time and a processor count: is it an SWF file?")]
    EmptyTrace(String),
    #[error(
        "node-exclusive allocation needs one node shape; this machine has {0}: use --allocation shared"
    )]
    ExclusiveShapes(usize),
    #[error("--queue-limit: {0}")]
    Limits(String),
}

/// Progress of a run.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub sim_ms: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub events: u64,
    pub wall_s: f64,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    pub summary: Summary,
    pub samples: Vec<Sample>,
}

/// What several runs of one trace share (read once).
#[derive(Debug, Clone)]
pub struct Inputs {
    pub trace: Trace,
    pub machine: Machine,
    pub cost: CostModel,
    pub azure: Option<AzureRates>,
    pub daint: Option<DaintStats>,
}

impl Inputs {
    pub fn load(cfg: &SimConfig) -> Result<Self, SimError> {
        let trace = Trace::load(&cfg.trace)?;
        if trace.jobs.is_empty() {
            return Err(SimError::EmptyTrace(cfg.trace.display().to_string()));
        }
        let machine = machine_for(&cfg.trace, &trace.header, &cfg.machine)?;
        let reference = cfg.data_dir.join("reference");
        let cost = CostModel::calibrate(&reference)?;
        let daint = DaintStats::load(&reference)
            .inspect_err(|e| tracing::warn!("no Daint comparison: {e}"))
            .ok();
        Ok(Self {
            trace,
            machine,
            cost,
            azure: None,
            daint,
        })
    }

    /// Loads the Azure sample when `demand` uses it and it is not loaded yet.
    pub fn need_azure(&mut self, cfg: &SimConfig, demand: &str) -> Result<(), SimError> {
        let uses = parse_demand(demand)?
            .iter()
            .any(|s| matches!(s, DemandStream::Azure { .. }));
        if uses && self.azure.is_none() {
            self.azure = Some(AzureRates::load(
                &cfg.data_dir.join("traces/azure-functions"),
            )?);
        }
        Ok(())
    }
}

/// Where Linux keeps the calling thread's time on a CPU (nanoseconds, the first field).
const THREAD_SCHEDSTAT: &str = "/proc/thread-self/schedstat";

/// The calling thread's time on a CPU so far, seconds (`None` where the kernel does not say).
/// On a machine shared with other work the loop's wall time counts the time it waited for a
/// CPU; this does not.
pub fn thread_cpu_s() -> Option<f64> {
    let text = std::fs::read_to_string(THREAD_SCHEDSTAT).ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// The least CPU time a rate is computed from: a loop shorter than this reads as 0 or a few
/// microseconds of CPU (the kernel charges a running thread at ticks and switches), and its
/// rate would be noise, or billions of events a second.
const MIN_TIMED_CPU_S: f64 = 1e-3;

/// Events per CPU second, `None` where the CPU time is unknown or too short to time.
fn events_per_cpu_s(events: u64, cpu_s: Option<f64>) -> Option<f64> {
    cpu_s
        .filter(|&c| c >= MIN_TIMED_CPU_S)
        .map(|c| events as f64 / c)
}

/// Runs one simulation, reading its inputs.
pub fn run(cfg: &SimConfig, progress: impl FnMut(Progress)) -> Result<Outcome, SimError> {
    let mut inputs = Inputs::load(cfg)?;
    inputs.need_azure(cfg, &cfg.demand_text)?;
    run_with(cfg, &inputs, progress)
}

/// Each copy's origin in trace seconds: `start + k x shift`, wrapped so every copy's
/// warm-up and window fall inside the trace.
pub fn copy_origins(trace: &Trace, cfg: &SimConfig) -> Vec<i64> {
    let need = (cfg.warmup_s + cfg.duration_s) as i64;
    let room = (trace.span_s() - need).max(1);
    (0..cfg.copies.max(1))
        .map(|k| {
            let off = cfg.start_s as i64 + i64::from(k) * cfg.copy_shift_s as i64;
            trace.first_submit() + if off < room { off } else { off % room }
        })
        .collect()
}

/// Runs one simulation on inputs already read.
pub fn run_with(
    cfg: &SimConfig,
    inputs: &Inputs,
    mut progress: impl FnMut(Progress),
) -> Result<Outcome, SimError> {
    if cfg.duration_s == 0 {
        return Err(SimError::Duration);
    }
    let (trace, machine) = (&inputs.trace, &inputs.machine);
    let (mode, reason) = match cfg.allocation {
        AllocationMode::Auto => trace.auto_allocation(machine),
        m => (m, "--allocation".to_owned()),
    };
    let granularity = match mode {
        AllocationMode::Exclusive if !machine.homogeneous() => {
            return Err(SimError::ExclusiveShapes(machine.shapes.len()));
        }
        AllocationMode::Exclusive => Granularity::Exclusive,
        _ => Granularity::Shared,
    };
    let copies = cfg.copies.max(1);
    let mut cluster = Cluster::new();
    for _ in 0..copies {
        for s in &machine.shapes {
            for _ in 0..s.nodes {
                let group = cluster.len() as u32 / cfg.group_size.max(1);
                cluster.add_node(group, Resources::new(s.cores, s.mem_mib, cfg.node_gpus));
            }
        }
    }
    let nodes = cluster.len() as u32;
    let total_cores: u64 = node_cores(&cluster).iter().map(|&c| u64::from(c)).sum();
    let total_mem: u64 = cluster.nodes().iter().map(|n| n.total.mem_mib).sum();
    let start_ms = cfg.warmup_s * 1000;
    let end_ms = start_ms + cfg.duration_s * 1000;
    let horizon = end_ms + cfg.drain_s * 1000;
    let origins = copy_origins(trace, cfg);
    let mut jobs = Vec::new();
    let (mut util_trace, mut peak) = (0.0, 0u64);
    let (mut trace_queued_start, mut trace_queued_end) = (0, 0);
    for (k, &o) in origins.iter().enumerate() {
        trace_queued_start += trace.own_queue_at(o + cfg.warmup_s as i64);
        trace_queued_end += trace.own_queue_at(o + (end_ms / 1000) as i64);
        trace.copy_jobs(o, (horizon / 1000) as i64, k as u32, &mut jobs);
        let (u, p) = trace.own_utilization(
            o + cfg.warmup_s as i64,
            o + (end_ms / 1000) as i64,
            machine.total_cores(),
        );
        util_trace += u / origins.len() as f64;
        peak = peak.max(p);
    }
    let accounts = {
        let mut a: Vec<u64> = jobs.iter().map(|j| j.account).collect();
        a.sort_unstable();
        a.dedup();
        a.len() as u64
    };
    let replay = cfg.batch == super::BatchMode::Replay;
    jobs.sort_by_key(|j| {
        let t = if replay && !j.prestarted {
            j.trace_start_ms.unwrap_or(j.submit_ms)
        } else {
            j.submit_ms
        };
        (t, !j.prestarted)
    });
    let registry = Registry::builtin();
    let fw = PolicyConfig::builtin(&cfg.policy)?.build(&cfg.policy, &registry)?;
    let streams = parse_demand(&cfg.demand_text)?;
    let n_streams = streams.len();
    let mut demand = Demand::new(
        streams,
        inputs.azure.clone(),
        machine.mem_mib,
        start_ms,
        end_ms,
        cfg.seed,
    );
    let alloc = Allocator::new(granularity, &node_cores(&cluster));
    let limits = cfg
        .limits
        .resolve(&trace.queues)
        .map_err(SimError::Limits)?;
    let mut sim = Sim::new(cfg, cluster, fw, &inputs.cost, alloc, n_streams, limits);
    let wall = Instant::now();
    let cpu0 = thread_cpu_s();
    let stop = sim.run_loop(
        &jobs,
        &mut demand,
        horizon,
        total_cores,
        total_mem,
        |t, ev| {
            progress(Progress {
                sim_ms: t,
                start_ms,
                end_ms,
                events: ev,
                wall_s: wall.elapsed().as_secs_f64(),
            })
        },
    );
    sim.advance(end_ms.min(stop.max(start_ms)), total_cores, total_mem);
    sim.advance(end_ms, total_cores, total_mem);
    let wall_s = wall.elapsed().as_secs_f64();
    let cpu_s = thread_cpu_s().zip(cpu0).map(|(b, a)| b - a);
    sim.settle(stop);
    sim.acct.hours();
    let mut summary = summarize(&mut sim, cfg, inputs, nodes, copies, wall_s);
    summary.allocation = mode;
    summary.cpu_s = cpu_s;
    summary.events_per_cpu_s = events_per_cpu_s(sim.events, cpu_s);
    summary.accounts = accounts;
    summary.allocation_reason = reason;
    summary.util_cores_trace = util_trace;
    summary.trace_peak_cores = peak;
    summary.trace_queued_jobs_window_start = trace_queued_start;
    summary.trace_queued_jobs_window_end = trace_queued_end;
    summary.copy_origins_h = origins
        .iter()
        .map(|o| (o - trace.first_submit()) as f64 / 3600.0)
        .collect();
    if cfg.demand_text == "none"
        && cfg.batch == super::BatchMode::Easy
        && (summary.util_cores_batch_only - util_trace).abs() > UTIL_TOLERANCE
    {
        summary.warnings.push(format!(
            "batch-only core utilization {:.1}% is {:.1} points from the trace's own {:.1}% (tolerance {:.0})",
            100.0 * summary.util_cores_batch_only,
            100.0 * (summary.util_cores_batch_only - util_trace).abs(),
            100.0 * util_trace,
            100.0 * UTIL_TOLERANCE
        ));
    }
    Ok(Outcome {
        samples: std::mem::take(&mut sim.rec.samples),
        summary,
    })
}

fn summarize(
    sim: &mut Sim<'_>,
    cfg: &SimConfig,
    inputs: &Inputs,
    nodes: u32,
    copies: u32,
    wall_s: f64,
) -> Summary {
    let m = &inputs.machine;
    let span = (sim.rec.end_ms - sim.rec.start_ms) as f64;
    let cores: f64 = sim
        .cluster
        .nodes()
        .iter()
        .map(|n| f64::from(n.total.cores))
        .sum();
    let mem: f64 = sim
        .cluster
        .nodes()
        .iter()
        .map(|n| n.total.mem_mib as f64)
        .sum();
    let i = sim.rec.integrals.clone();
    let h = |unit_ms: f64| unit_ms / 3.6e6;
    let total = sim.acct.total();
    let j = &mut sim.jobs;
    let opt = |v: &mut Vec<f64>, q: Option<f64>| {
        if v.is_empty() {
            None
        } else {
            Some(match q {
                Some(q) => quantile(v, q),
                None => mean(v),
            })
        }
    };
    let alloc_frac = i.alloc_nodes / (f64::from(nodes) * span);
    let samples = &sim.rec.samples;
    let stretch_mean = mean(&j.stretch);
    let slowdown_all = if j.alone_node_s > 0.0 {
        1.0 + j.extra_core_s / j.alone_node_s
    } else {
        1.0
    };
    Summary {
        trace: cfg.trace.display().to_string(),
        machine: m.source.clone(),
        trace_acknowledge: inputs.trace.header.acknowledge.clone(),
        policy: cfg.policy.clone(),
        functions_spec: cfg.demand_text.clone(),
        seed: cfg.seed,
        batch_mode: cfg.batch,
        queue_order: sim.queue.order,
        priority: cfg.priority,
        max_running_per_user: cfg.limits.max_running_per_user,
        max_cores_per_user: cfg.limits.max_cores_per_user,
        queue_limits: cfg.limits.queues.clone(),
        accounts: 0,
        allocation: cfg.allocation,
        allocation_reason: String::new(),
        nodes,
        cores_per_node: m.cores,
        mem_per_node_mib: m.mem_mib,
        gpus_per_node: cfg.node_gpus,
        trace_nodes: m.nodes,
        replication: copies,
        copy_origins_h: Vec::new(),
        window_start_h: sim.rec.start_ms as f64 / 3.6e6,
        window_h: span / 3.6e6,
        jobs: j.submitted,
        jobs_started: j.waits_s.len() as u64,
        jobs_completed: j.bsld.len() as u64 - j.unfinished,
        trace_records: inputs.trace.counts,
        util_cores_trace: 0.0,
        trace_peak_cores: 0,
        util_cores_batch_only: i.batch_cores / (cores * span),
        util_cores_with_harvest: (i.batch_cores + i.fn_cores) / (cores * span),
        util_mem_batch_only: i.batch_mem / (mem * span),
        util_mem_with_harvest: (i.batch_mem + i.fn_mem) / (mem * span),
        idle_core_hours_batch_only: h(cores * span - i.batch_cores),
        idle_core_hours_inside_jobs: h(i.alloc_cores - i.batch_cores),
        idle_core_hours_beside_jobs: h(cores * span - i.alloc_cores),
        core_hours_recovered: h(i.fn_cores),
        idle_mem_gib_hours_batch_only: h(mem * span - i.batch_mem) / 1024.0,
        mem_gib_hours_recovered: h(i.fn_mem) / 1024.0,
        queued_jobs_window_start: samples.first().map_or(0, |s| s.queued_jobs),
        queued_jobs_window_end: samples.last().map_or(0, |s| s.queued_jobs),
        queued_jobs_max: samples.iter().map(|s| s.queued_jobs).max().unwrap_or(0),
        trace_queued_jobs_window_start: 0,
        trace_queued_jobs_window_end: 0,
        invocations_served_pct: if total.invocations_offered > 0.0 {
            100.0 * total.invocations_served / total.invocations_offered
        } else {
            0.0
        },
        invocation_wait_p50_ms: sim.acct.wait_quantile_ms(0.5),
        invocation_wait_p99_ms: sim.acct.wait_quantile_ms(0.99),
        functions_submitted: total.requests,
        functions_placed: total.leases_started,
        functions_refused: total.refused_requests,
        functions_placed_after_wait: 0,
        function_wait_p50_ms: sim.acct.wait_quantile_ms(0.5),
        function_wait_p99_ms: sim.acct.wait_quantile_ms(0.99),
        reclaims: total.reclaims,
        function_core_hours_lost_to_reclaim: total.lost_to_reclaim_core_hours,
        functions: total,
        function_streams: sim.acct.streams.clone(),
        window_jobs_submitted: j.submitted,
        window_jobs_unfinished: j.unfinished,
        wait_p50_s: quantile(&mut j.waits_s, 0.5),
        wait_mean_s: mean(&j.waits_s),
        wait_p90_s: quantile(&mut j.waits_s, 0.9),
        trace_wait_p50_s: opt(&mut j.trace_waits_s, Some(0.5)),
        trace_wait_mean_s: opt(&mut j.trace_waits_s, None),
        trace_wait_p90_s: opt(&mut j.trace_waits_s, Some(0.9)),
        start_error_p50_s: opt(&mut j.start_err_s, Some(0.5)),
        start_error_mean_s: opt(&mut j.start_err_s, None),
        bounded_slowdown_p50: quantile(&mut j.bsld, 0.5),
        bounded_slowdown_mean: mean(&j.bsld),
        throughput_jobs_per_h: j.completed_in_window as f64 / (span / 3.6e6),
        batch_slowdown_mean: slowdown_all,
        batch_slowdown_mean_colocated: if j.stretch.is_empty() {
            1.0
        } else {
            stretch_mean
        },
        batch_slowdown_max: j.stretch.iter().copied().fold(1.0, f64::max),
        jobs_colocated: j.stretch.len() as u64,
        batch_core_hours_added_by_interference: j.extra_core_s / 3600.0,
        sensitive_node_hours_colocated: 0.0,
        placements: sim.latency.count(),
        placement_p50_us: sim.latency.quantile_us(0.5),
        placement_p99_us: sim.latency.quantile_us(0.99),
        events: sim.events,
        superseded_ends: sim.superseded_ends,
        events_per_s: sim.events as f64 / wall_s.max(1e-9),
        wall_s,
        cpu_s: None,
        events_per_cpu_s: None,
        overcommit_violations: sim.overcommit,
        daint_comparison: DaintComparison {
            daint: inputs.daint.clone(),
            sim_idle_cpus_on_idle_nodes: (cores * span - i.alloc_cores) / (cores * span),
            sim_idle_cpus_on_allocated_nodes: (i.alloc_cores - i.batch_cores) / (cores * span),
            sim_free_mem_on_allocated_nodes: if i.alloc_mem > 0.0 {
                (i.alloc_mem - i.batch_mem) / i.alloc_mem
            } else {
                0.0
            },
            sim_free_mem_on_idle_nodes: (mem * span - i.alloc_mem) / (mem * span),
            sim_allocated_node_fraction: alloc_frac,
            sim_idle_node_fraction: 1.0 - alloc_frac,
        },
        cost_model: inputs.cost.clone(),
        warnings: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::events_per_cpu_s;

    #[test]
    fn a_rate_needs_cpu_time_long_enough_to_read() {
        assert_eq!(events_per_cpu_s(1000, None), None);
        // A loop the kernel charged nothing (or microseconds) gives no rate, not billions.
        assert_eq!(events_per_cpu_s(399, Some(0.0)), None);
        assert_eq!(events_per_cpu_s(399, Some(2e-6)), None);
        assert_eq!(events_per_cpu_s(3000, Some(0.002)), Some(1_500_000.0));
    }
}
