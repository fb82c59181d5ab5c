//! The event loop.
//!
//! Three sources are merged in time order: the heap of scheduled ends (jobs, functions), the
//! trace's job submissions and the function arrivals; at equal times ends go first, so freed
//! resources are visible to what arrives at that instant. After all events of an instant the
//! batch queue gets one scheduling pass.
//!
//! The cluster state lives in one `harvest_policies::Cluster`: batch jobs set each node's batch
//! share, functions are leases placed by the configured `Framework`. A batch job that needs a
//! node where leases hold what it needs reclaims them (newest first, [`Cluster::set_batch`]).
//! Every change updates the gauges that the recorder integrates.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::path::Path;
use std::time::Instant;

use harvest_policies::index::IndexedSet;
use harvest_policies::{
    Cluster, Decision, Framework, LeaseId, NodeId, PolicyConfig, Registry, Request, Resources,
};

use super::batch::{BatchJob, BatchQueue, JobSource};
use super::metrics::{Gauges, LatencyHistogram, Recorder, Sample};
use super::{DaintComparison, RETRY_PER_RELEASE, SimConfig, Summary};
use crate::cost::{CostModel, FunctionClass};
use crate::daint::DaintStats;
use crate::functions::{Arrival, Arrivals};
use crate::machine::{Machine, machine_for};
use crate::swf::SwfReader;

const NO_JOB: u32 = u32::MAX;
const NOT_SINCE: u64 = u64::MAX;

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
    #[error("policy: {0}")]
    Policy(#[from] harvest_policies::ConfigError),
    #[error("placement: {0}")]
    Framework(#[from] harvest_policies::FrameworkError),
    #[error("--nodes {0} is not a usable cluster size: use 1 or more")]
    Nodes(u32),
    #[error("--duration must be at least 1 second")]
    Duration,
}

/// Progress reported every few hundred thousand events.
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

#[derive(Debug)]
struct Running {
    job: BatchJob,
    nodes: Vec<NodeId>,
    planned_end_ms: u64,
    coloc_node_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    JobEnd = 0,
    FunctionEnd = 1,
    Wake = 2,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    arrival: Arrival,
    lease: LeaseId,
}

struct Sim {
    cfg: SimConfig,
    machine: Machine,
    cluster: Cluster,
    fw: Framework,
    cost: CostModel,
    rec: Recorder,
    g: Gauges,
    heap: BinaryHeap<Reverse<(u64, Kind, u64)>>,
    queue: BatchQueue,
    running: Vec<Option<Running>>,
    free_slots: Vec<u32>,
    node_job: Vec<u32>,
    coloc_since: Vec<u64>,
    idle_clean: IndexedSet,
    idle_dirty: IndexedSet,
    waiting: VecDeque<Waiting>,
    lease_start: harvest_policies::hash::IdMap<LeaseId, (u64, u64)>,
    next_lease: LeaseId,
    latency: LatencyHistogram,
    waits_ms: Vec<u64>,
    // Counters.
    jobs_started: u64,
    jobs_completed: u64,
    fn_submitted: u64,
    fn_placed: u64,
    fn_refused: u64,
    fn_after_wait: u64,
    reclaims: u64,
    lost_core_ms: f64,
    slowdown_sum: f64,
    slowdown_weight: f64,
    slowdown_coloc_sum: f64,
    slowdown_coloc_weight: f64,
    slowdown_max: f64,
    jobs_colocated: u64,
    sensitive_coloc_ms: f64,
    events: u64,
    overcommit: u64,
}

impl Sim {
    fn sample(&self, t: u64, g: &Gauges) -> Sample {
        let nodes = self.cluster.len() as u64;
        let cores = nodes * u64::from(self.machine.cores);
        let mem = nodes * self.machine.mem_mib;
        let gib = |m: u64| m as f64 / 1024.0;
        Sample {
            time_h: t as f64 / 3.6e6,
            batch_cores: g.batch_cores,
            function_cores: g.fn_cores,
            idle_cores: cores.saturating_sub(g.batch_cores + g.fn_cores),
            batch_mem_gib: gib(g.batch_mem_mib),
            function_mem_gib: gib(g.fn_mem_mib),
            idle_mem_gib: gib(mem.saturating_sub(g.batch_mem_mib + g.fn_mem_mib)),
            allocated_nodes: g.alloc_nodes,
            queued_jobs: self.queue.len() as u64,
            queued_functions: self.waiting.len() as u64,
        }
    }

    fn advance(&mut self, now: u64) {
        let g = self.g;
        let mut rec = std::mem::replace(&mut self.rec, Recorder::new(0, 1, 1));
        rec.advance(now, &g, |t, g| self.sample(t, g));
        self.rec = rec;
    }

    /// Opens or closes a node's co-location interval (batch job and leases together).
    fn coloc_update(&mut self, node: NodeId, now: u64) {
        let job = self.node_job[node as usize];
        let together = job != NO_JOB && !self.cluster.leases_on(node).is_empty();
        let since = self.coloc_since[node as usize];
        if together && since == NOT_SINCE {
            self.coloc_since[node as usize] = now;
        } else if !together && since != NOT_SINCE {
            self.close_coloc(node, now);
        }
        if job != NO_JOB {
            let sensitive = self.running[job as usize]
                .as_ref()
                .is_some_and(|r| r.job.sensitive);
            let flag = sensitive && together;
            self.cluster
                .update(node, |n| n.interference = flag)
                .expect("node exists");
        }
    }

    fn close_coloc(&mut self, node: NodeId, now: u64) {
        let since = std::mem::replace(&mut self.coloc_since[node as usize], NOT_SINCE);
        let job = self.node_job[node as usize];
        if since == NOT_SINCE || job == NO_JOB {
            return;
        }
        let start = since.max(self.rec.start_ms);
        let end = now.min(self.rec.end_ms);
        if let Some(r) = self.running[job as usize].as_mut() {
            r.coloc_node_ms += now - since;
            if r.job.sensitive && end > start {
                self.sensitive_coloc_ms += (end - start) as f64;
            }
        }
    }

    /// Ends a lease; returns the node it was on, `None` when it was already gone (reclaimed).
    fn release_lease(&mut self, lease: LeaseId, now: u64, reclaimed: bool) -> Option<NodeId> {
        let l = self.fw.release(&mut self.cluster, lease)?;
        self.g.fn_cores -= u64::from(l.res.cores);
        self.g.fn_mem_mib -= l.res.mem_mib;
        if let Some((_, end)) = self.lease_start.remove(&lease)
            && reclaimed
        {
            self.reclaims += 1;
            self.lost_core_ms += end.saturating_sub(now) as f64 * f64::from(l.res.cores);
        }
        if self.node_job[l.node as usize] == NO_JOB && self.cluster.leases_on(l.node).is_empty() {
            self.idle_dirty.remove(l.node);
            self.idle_clean.insert(l.node);
        }
        self.coloc_update(l.node, now);
        Some(l.node)
    }

    fn start_job(&mut self, job: BatchJob, now: u64) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.running.push(None);
            (self.running.len() - 1) as u32
        });
        self.running[slot as usize] = Some(Running {
            job,
            nodes: Vec::new(),
            planned_end_ms: now + job.req_ms,
            coloc_node_ms: 0,
        });
        let mut nodes = Vec::with_capacity(job.nodes as usize);
        for i in 0..job.nodes {
            let pool = if self.idle_clean.is_empty() {
                &mut self.idle_dirty
            } else {
                &mut self.idle_clean
            };
            let node = *pool
                .as_slice()
                .last()
                .expect("the queue checked enough free nodes");
            pool.remove(node);
            let cores = job.cores_on(i);
            let mem = match job.mem_per_proc_mib {
                Some(m) => m.saturating_mul(u64::from(cores)),
                None => {
                    (self.machine.mem_mib as f64 * self.cfg.unknown_mem_fraction * f64::from(cores)
                        / f64::from(self.machine.cores)) as u64
                }
            }
            .min(self.machine.mem_mib);
            let gpus = (u64::from(self.cfg.node_gpus) * u64::from(cores))
                .div_ceil(u64::from(self.machine.cores)) as u32;
            self.node_job[node as usize] = slot;
            let plan = self
                .cluster
                .set_batch(
                    node,
                    Resources::new(cores, mem, gpus.min(self.cfg.node_gpus)),
                )
                .expect("node exists");
            self.cluster
                .update(node, |n| n.batch_sensitive = job.sensitive)
                .expect("node exists");
            self.g.batch_cores += u64::from(cores);
            self.g.batch_mem_mib += mem;
            self.g.alloc_nodes += 1;
            for lease in plan {
                self.release_lease(lease, now, true);
            }
            if self
                .cluster
                .node(node)
                .expect("node exists")
                .overcommitted()
            {
                self.overcommit += 1;
            }
            self.coloc_update(node, now);
            nodes.push(node);
        }
        let r = self.running[slot as usize].as_mut().expect("just set");
        r.nodes = nodes;
        self.queue.track_start(now + job.req_ms, slot, job.nodes);
        self.heap
            .push(Reverse((now + job.run_ms, Kind::JobEnd, u64::from(slot))));
        self.jobs_started += 1;
    }

    fn end_job(&mut self, slot: u32, now: u64) {
        let nodes =
            std::mem::take(&mut self.running[slot as usize].as_mut().expect("running").nodes);
        for &node in &nodes {
            self.close_coloc(node, now);
        }
        let r = self.running[slot as usize].take().expect("running");
        self.queue.track_end(r.planned_end_ms, slot, r.job.nodes);
        for (i, &node) in nodes.iter().enumerate() {
            let cores = r.job.cores_on(i as u32);
            let batch = self.cluster.node(node).expect("node exists").batch;
            debug_assert_eq!(batch.cores, cores);
            self.cluster
                .set_batch(node, Resources::ZERO)
                .expect("node exists");
            self.cluster
                .update(node, |n| {
                    n.batch_sensitive = false;
                    n.interference = false;
                })
                .expect("node exists");
            self.g.batch_cores -= u64::from(batch.cores);
            self.g.batch_mem_mib -= batch.mem_mib;
            self.g.alloc_nodes -= 1;
            self.node_job[node as usize] = NO_JOB;
            if self.cluster.leases_on(node).is_empty() {
                self.idle_clean.insert(node);
            } else {
                self.idle_dirty.insert(node);
            }
        }
        self.free_slots.push(slot);
        self.jobs_completed += 1;
        let node_ms = r.job.run_ms as f64 * nodes.len() as f64;
        let share = r.coloc_node_ms as f64 / node_ms;
        let slowdown = 1.0 + (self.cost.slowdown(FunctionClass::Cpu) - 1.0) * share;
        self.slowdown_sum += slowdown * node_ms;
        self.slowdown_weight += node_ms;
        if r.coloc_node_ms > 0 {
            self.jobs_colocated += 1;
            self.slowdown_coloc_sum += slowdown * node_ms;
            self.slowdown_coloc_weight += node_ms;
        }
        self.slowdown_max = self.slowdown_max.max(slowdown);
        if !self.waiting.is_empty() {
            for &node in &nodes {
                self.retry_waiting(now, node);
            }
        }
    }

    fn batch_pass(&mut self, now: u64) {
        let free = |s: &Self| (s.idle_clean.len() + s.idle_dirty.len()) as u32;
        while let Some(job) = self.queue.pop_head(now, free(self)) {
            self.start_job(job, now);
        }
        for job in self.queue.backfill(now, free(self)) {
            self.start_job(job, now);
        }
    }

    /// Tries to place an arrival; `true` when placed.
    fn try_place(&mut self, a: &Arrival, lease: LeaseId, now: u64) -> Result<bool, SimError> {
        let req = Request {
            lease,
            client: a.client,
            res: a.res,
            data_nodes: &[],
        };
        let t0 = Instant::now();
        let decision = self.fw.place(&mut self.cluster, &req)?;
        self.latency.record(t0.elapsed().as_nanos() as u64);
        let Decision::Placed(node) = decision else {
            return Ok(false);
        };
        if self
            .cluster
            .node(node)
            .expect("placed on a node")
            .overcommitted()
        {
            self.overcommit += 1;
        }
        self.g.fn_cores += u64::from(a.res.cores);
        self.g.fn_mem_mib += a.res.mem_mib;
        if self.node_job[node as usize] == NO_JOB && self.idle_clean.contains(node) {
            self.idle_clean.remove(node);
            self.idle_dirty.insert(node);
        }
        let end = now + a.duration_ms;
        self.lease_start.insert(lease, (now, end));
        self.heap.push(Reverse((end, Kind::FunctionEnd, lease)));
        self.coloc_update(node, now);
        Ok(true)
    }

    fn arrive(&mut self, a: Arrival, now: u64) -> Result<(), SimError> {
        self.fn_submitted += 1;
        let lease = self.next_lease;
        self.next_lease += 1;
        self.expire_waiting(now);
        if self.try_place(&a, lease, now)? {
            self.fn_placed += 1;
            self.waits_ms.push(0);
        } else if self.cfg.max_wait_ms == 0 {
            self.fn_refused += 1;
        } else {
            self.waiting.push_back(Waiting { arrival: a, lease });
        }
        Ok(())
    }

    fn expire_waiting(&mut self, now: u64) {
        while let Some(w) = self.waiting.front() {
            if now.saturating_sub(w.arrival.time_ms) <= self.cfg.max_wait_ms {
                break;
            }
            self.waiting.pop_front();
            self.fn_refused += 1;
        }
    }

    /// Retries waiting functions after `freed` got room. Since each waiting function was tried
    /// when it arrived and after every earlier release, only the freed node can have changed the
    /// answer: a function is retried only when that node's free resources fit it, and at most
    /// [`RETRY_PER_RELEASE`] queued functions are looked at.
    fn retry_waiting(&mut self, now: u64, freed: NodeId) {
        self.expire_waiting(now);
        let mut i = 0;
        let mut looked = 0;
        while i < self.waiting.len() && looked < RETRY_PER_RELEASE {
            looked += 1;
            let w = self.waiting[i];
            let free = self.cluster.node(freed).expect("node exists").free();
            if !free.fits(&w.arrival.res) {
                i += 1;
                continue;
            }
            // A placement error was already reported at arrival; treat it as not placed here.
            if self.try_place(&w.arrival, w.lease, now).unwrap_or(false) {
                self.waiting.remove(i);
                self.fn_placed += 1;
                self.fn_after_wait += 1;
                self.waits_ms.push(now - w.arrival.time_ms);
            } else {
                i += 1;
            }
        }
    }
}

/// Runs one simulation. `progress` is called every 2^18 events.
pub fn run(cfg: &SimConfig, mut progress: impl FnMut(Progress)) -> Result<Outcome, SimError> {
    if cfg.duration_s == 0 {
        return Err(SimError::Duration);
    }
    let reader = SwfReader::open(&cfg.trace)?;
    let acknowledge = reader.header().acknowledge.clone();
    let file_name = cfg
        .trace
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let machine = machine_for(
        &file_name,
        reader.header(),
        cfg.node_cores,
        cfg.node_mem_mib,
        cfg.trace_nodes,
    )?;
    let nodes = cfg.nodes.unwrap_or(machine.nodes);
    if nodes == 0 {
        return Err(SimError::Nodes(nodes));
    }
    let copies = nodes.div_ceil(machine.nodes).max(1);
    let start_ms = cfg.warmup_s * 1000;
    let end_ms = start_ms + cfg.duration_s * 1000;
    let registry = Registry::builtin();
    let fw = PolicyConfig::builtin(&cfg.policy)?.build(&cfg.policy, &registry)?;
    let reference = cfg.data_dir.join("reference");
    let cost = CostModel::calibrate(&reference)?;
    let daint = DaintStats::load(&reference)
        .inspect_err(|e| tracing::warn!("no Daint comparison: {e}"))
        .ok();
    let mut jobs = JobSource::new(
        reader,
        cfg.start_s,
        copies,
        machine.cores,
        nodes,
        end_ms,
        cfg.max_records,
        cfg.sensitive_fraction,
        cfg.batch == super::BatchMode::Replay,
        cfg.seed,
    );
    let azure_dir = cfg.data_dir.join("traces/azure-functions");
    let mut arrivals = Arrivals::new(
        &cfg.functions,
        Path::new(&azure_dir),
        start_ms,
        end_ms,
        cfg.seed,
    )?
    .peekable();
    let shape = Resources::new(machine.cores, machine.mem_mib, cfg.node_gpus);
    let cluster = Cluster::uniform(nodes, shape, cfg.group_size);
    let mut idle_clean = IndexedSet::default();
    for n in 0..nodes {
        idle_clean.insert(n);
    }
    let mut sim = Sim {
        machine: machine.clone(),
        cluster,
        fw,
        cost,
        rec: Recorder::new(start_ms, end_ms, cfg.samples),
        g: Gauges::default(),
        heap: BinaryHeap::new(),
        queue: BatchQueue::new(cfg.batch, cfg.backfill_depth),
        running: Vec::new(),
        free_slots: Vec::new(),
        node_job: vec![NO_JOB; nodes as usize],
        coloc_since: vec![NOT_SINCE; nodes as usize],
        idle_clean,
        idle_dirty: IndexedSet::default(),
        waiting: VecDeque::new(),
        lease_start: Default::default(),
        next_lease: 1,
        latency: LatencyHistogram::default(),
        waits_ms: Vec::new(),
        cfg: cfg.clone(),
        jobs_started: 0,
        jobs_completed: 0,
        fn_submitted: 0,
        fn_placed: 0,
        fn_refused: 0,
        fn_after_wait: 0,
        reclaims: 0,
        lost_core_ms: 0.0,
        slowdown_sum: 0.0,
        slowdown_weight: 0.0,
        slowdown_coloc_sum: 0.0,
        slowdown_coloc_weight: 0.0,
        slowdown_max: 1.0,
        jobs_colocated: 0,
        sensitive_coloc_ms: 0.0,
        events: 0,
        overcommit: 0,
    };
    let wall = Instant::now();
    let mut now = 0u64;
    let mut batch_dirty = false;
    loop {
        let t_ev = sim.heap.peek().map_or(u64::MAX, |Reverse((t, _, _))| *t);
        let t_job = jobs.peek_ms()?.map_or(u64::MAX, |t| t.max(now));
        let t_fn = arrivals.peek().map_or(u64::MAX, |a| a.time_ms);
        let t = t_ev.min(t_job).min(t_fn);
        if batch_dirty && t > now {
            sim.batch_pass(now);
            batch_dirty = false;
            continue;
        }
        if t >= end_ms {
            break;
        }
        sim.advance(t);
        now = t;
        sim.events += 1;
        if sim.events & ((1 << 18) - 1) == 0 {
            progress(Progress {
                sim_ms: now,
                start_ms,
                end_ms,
                events: sim.events,
                wall_s: wall.elapsed().as_secs_f64(),
            });
        }
        if t == t_ev {
            let Reverse((_, kind, id)) = sim.heap.pop().expect("peeked");
            match kind {
                Kind::JobEnd => {
                    sim.end_job(id as u32, now);
                    batch_dirty = true;
                }
                Kind::FunctionEnd => {
                    if let Some(node) = sim.release_lease(id, now, false)
                        && !sim.waiting.is_empty()
                    {
                        sim.retry_waiting(now, node);
                    }
                }
                Kind::Wake => batch_dirty = true,
            }
        } else if t == t_job {
            let job = jobs.pop().expect("peeked");
            if let Some(s) = job.replay_start_ms {
                sim.heap.push(Reverse((s.max(now), Kind::Wake, 0)));
            }
            sim.queue.submit(job);
            batch_dirty = true;
        } else {
            let a = arrivals.next().expect("peeked");
            sim.arrive(a, now)?;
        }
    }
    sim.advance(end_ms);
    let wall_s = wall.elapsed().as_secs_f64();
    sim.fn_refused += sim.waiting.len() as u64;
    sim.waiting.clear();
    let mut out = finish(sim, cfg, machine, nodes, copies, jobs.stats, daint, wall_s);
    out.summary.trace_acknowledge = acknowledge;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    mut sim: Sim,
    cfg: &SimConfig,
    machine: Machine,
    nodes: u32,
    copies: u32,
    trace_records: super::batch::SourceStats,
    daint: Option<DaintStats>,
    wall_s: f64,
) -> Outcome {
    let span = (sim.rec.end_ms - sim.rec.start_ms) as f64;
    let cores = f64::from(nodes) * f64::from(machine.cores);
    let mem = f64::from(nodes) * machine.mem_mib as f64;
    let i = sim.rec.integrals.clone();
    let hours = |unit_ms: f64| unit_ms / 3.6e6;
    let mut waits = std::mem::take(&mut sim.waits_ms);
    waits.sort_unstable();
    let q = |v: &[u64], p: f64| -> f64 {
        if v.is_empty() {
            0.0
        } else {
            v[((v.len() - 1) as f64 * p).round() as usize] as f64
        }
    };
    let alloc_frac = i.alloc_nodes / (f64::from(nodes) * span);
    let alloc_mem = i.alloc_nodes * machine.mem_mib as f64;
    let alloc_cores = i.alloc_nodes * f64::from(machine.cores);
    let comparison = DaintComparison {
        daint,
        sim_idle_cpus_on_idle_nodes: (cores * span - alloc_cores) / (cores * span),
        sim_idle_cpus_on_allocated_nodes: (alloc_cores - i.batch_cores) / (cores * span),
        sim_free_mem_on_allocated_nodes: if alloc_mem > 0.0 {
            (alloc_mem - i.batch_mem) / alloc_mem
        } else {
            0.0
        },
        sim_free_mem_on_idle_nodes: (mem * span - alloc_mem) / (mem * span),
        sim_allocated_node_fraction: alloc_frac,
        sim_idle_node_fraction: 1.0 - alloc_frac,
    };
    let summary = Summary {
        trace: cfg.trace.display().to_string(),
        machine: machine.source.clone(),
        trace_acknowledge: None,
        policy: cfg.policy.clone(),
        functions_spec: cfg.functions_text.clone(),
        batch_mode: cfg.batch,
        nodes,
        cores_per_node: machine.cores,
        mem_per_node_mib: machine.mem_mib,
        gpus_per_node: cfg.node_gpus,
        trace_nodes: machine.nodes,
        replication: copies,
        window_start_h: sim.rec.start_ms as f64 / 3.6e6,
        window_h: span / 3.6e6,
        jobs: trace_records.jobs,
        jobs_started: sim.jobs_started,
        jobs_completed: sim.jobs_completed,
        trace_records,
        util_cores_batch_only: i.batch_cores / (cores * span),
        util_cores_with_harvest: (i.batch_cores + i.fn_cores) / (cores * span),
        util_mem_batch_only: i.batch_mem / (mem * span),
        util_mem_with_harvest: (i.batch_mem + i.fn_mem) / (mem * span),
        idle_core_hours_batch_only: hours(cores * span - i.batch_cores),
        core_hours_recovered: hours(i.fn_cores),
        idle_mem_gib_hours_batch_only: hours(mem * span - i.batch_mem) / 1024.0,
        mem_gib_hours_recovered: hours(i.fn_mem) / 1024.0,
        functions_submitted: sim.fn_submitted,
        functions_placed: sim.fn_placed,
        functions_refused: sim.fn_refused,
        functions_placed_after_wait: sim.fn_after_wait,
        function_wait_p50_ms: q(&waits, 0.5),
        function_wait_p99_ms: q(&waits, 0.99),
        reclaims: sim.reclaims,
        function_core_hours_lost_to_reclaim: hours(sim.lost_core_ms),
        batch_slowdown_mean: if sim.slowdown_weight > 0.0 {
            sim.slowdown_sum / sim.slowdown_weight
        } else {
            1.0
        },
        batch_slowdown_mean_colocated: if sim.slowdown_coloc_weight > 0.0 {
            sim.slowdown_coloc_sum / sim.slowdown_coloc_weight
        } else {
            1.0
        },
        batch_slowdown_max: sim.slowdown_max,
        jobs_colocated: sim.jobs_colocated,
        sensitive_node_hours_colocated: hours(sim.sensitive_coloc_ms),
        placements: sim.latency.count(),
        placement_p50_us: sim.latency.quantile_us(0.5),
        placement_p99_us: sim.latency.quantile_us(0.99),
        events: sim.events,
        events_per_s: sim.events as f64 / wall_s.max(1e-9),
        wall_s,
        overcommit_violations: sim.overcommit + count_overcommitted(&sim.cluster),
        daint_comparison: comparison,
        cost_model: sim.cost.clone(),
    };
    Outcome {
        summary,
        samples: std::mem::take(&mut sim.rec.samples),
    }
}

fn count_overcommitted(c: &Cluster) -> u64 {
    c.nodes().iter().filter(|n| n.overcommitted()).count() as u64
}
