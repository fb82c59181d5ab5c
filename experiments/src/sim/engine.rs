//! The event loop of one simulation.
//!
//! At each instant, in this order: the ends due (jobs, leases) are applied; the trace's jobs due
//! enter the queue; the batch queue gets its scheduling pass (batch always goes first); reclaimed
//! leases that may retry, and functions waiting for room on nodes freed at this instant, are
//! tried again; then the function requests due are placed. Utilization is integrated exactly
//! between instants over the measured window.
//!
//! The cluster lives in one `harvest_policies::Cluster`: each node's batch share is the sum of
//! its jobs' cores and memory; functions are leases placed by the configured `Framework`. A job
//! that needs cores or memory where leases hold them reclaims them ([`Cluster::set_batch`]).
//!
//! **Interference is fed back.** Each job draws one slowdown per function class (CPU, memory,
//! GPU) from the calibrated runs when it starts. While leases of a class share any of its nodes
//! it progresses at `1 / slowdown` (the slowest class present), so its end moves later and the
//! queue behind it feels it.

use std::collections::VecDeque;
use std::time::Instant;

use harvest_policies::{Cluster, Decision, Framework, LeaseId, NodeId, Request, Resources};

use super::accounting::{Accounts, JobStats};
use super::alloc::Allocator;
use super::batch::{BatchJob, BatchQueue};
use super::demand::{Demand, FnRequest};
use super::idwindow::IdWindow;
use super::limits::Resolved;
use super::metrics::{Gauges, LatencyHistogram, Recorder, Sample};
use super::radix::RadixQueue;
use super::{RETRY_PER_RELEASE, SimConfig};
use crate::cost::{CostModel, FunctionClass};
use crate::rng::Rng;

const CLASSES: [FunctionClass; 3] = [
    FunctionClass::Cpu,
    FunctionClass::Memory,
    FunctionClass::Gpu,
];

#[derive(Debug)]
pub(super) struct Running {
    pub job: BatchJob,
    pub nodes: Vec<(NodeId, u32, u64)>,
    pub start_ms: u64,
    /// Alone-time left at `since_ms`.
    left_ms: f64,
    since_ms: u64,
    factor: f64,
    /// The key of this job's live end entry in the heap: unique over the run (a slot is
    /// reused by later jobs, whose entries must not match this job's stale ones).
    generation: u32,
    /// When the job ends at its present rate, and when its live heap entry is due (never
    /// later: a slowdown moves `end_ms` and leaves the entry, which is pushed again to
    /// `end_ms` when it comes due; only an earlier end pushes a new entry).
    end_ms: u64,
    queued_ms: u64,
    draws: [f64; 3],
    planned_end_ms: u64,
    pub slowed: bool,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct LeaseInfo {
    req: FnRequest,
    start_ms: u64,
    arrival_ms: u64,
    attempt: u32,
    class: usize,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    req: FnRequest,
    arrival_ms: u64,
    queued_ms: u64,
    attempt: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    JobEnd = 0,
    FunctionEnd = 1,
}

/// The simulation state.
pub(super) struct Sim<'a> {
    pub cfg: &'a SimConfig,
    pub cluster: Cluster,
    fw: Framework,
    cost: &'a CostModel,
    rng: Rng,
    pub alloc: Allocator,
    pub rec: Recorder,
    pub g: Gauges,
    /// The ends due: (time, kind, job slot or lease, generation), least first.
    heap: RadixQueue<(Kind, u64, u32)>,
    pub queue: BatchQueue,
    pub running: Vec<Option<Running>>,
    /// Per running job's slot, the leases of each class on its nodes (apart from `running`:
    /// every lease placed or ended counts on the jobs of its node, and this stays in cache).
    coloc: Vec<[u32; 3]>,
    free_slots: Vec<u32>,
    node_jobs: Vec<Vec<u32>>,
    node_sensitive: Vec<u16>,
    node_class: Vec<[u16; 3]>,
    node_mem: Vec<u64>,
    /// Cores the batch jobs hold per node (the cluster's batch share, kept here too so a run
    /// without functions need not maintain the placement index).
    node_batch_cores: Vec<u32>,
    /// Whether any function may come: without, the placement index is not maintained.
    functions: bool,
    waiting: VecDeque<Waiting>,
    retry: Vec<Waiting>,
    freed: Vec<NodeId>,
    leases: IdWindow<LeaseInfo>,
    next_lease: LeaseId,
    pub latency: LatencyHistogram,
    pub acct: Accounts,
    pub jobs: JobStats,
    /// Events of the model: job submissions and ends, function arrivals and ends.
    pub events: u64,
    /// Ends popped that no longer hold (a job's end a re-rating moved, a reclaimed lease's
    /// end): not events, the heap's overhead.
    pub superseded_ends: u64,
    pub overcommit: u64,
    /// The next end entry's generation (see [`Running::generation`]).
    next_generation: u32,
    /// The allocator's answer for the job starting, and the node lists of jobs that ended
    /// (kept, so a start allocates nothing).
    parts: Vec<(NodeId, u32)>,
    node_lists: Vec<Vec<(NodeId, u32, u64)>>,
}

impl<'a> Sim<'a> {
    pub fn new(
        cfg: &'a SimConfig,
        cluster: Cluster,
        fw: Framework,
        cost: &'a CostModel,
        alloc: Allocator,
        streams: usize,
        limits: Resolved,
    ) -> Self {
        let n = cluster.len();
        let start = cfg.warmup_s * 1000;
        let end = start + cfg.duration_s * 1000;
        Self {
            cfg,
            cluster,
            fw,
            cost,
            rng: Rng::new(cfg.seed).fork(0x51),
            alloc,
            rec: Recorder::new(start, end, cfg.samples),
            g: Gauges::default(),
            heap: RadixQueue::new(),
            queue: {
                let q =
                    BatchQueue::new(cfg.batch, cfg.backfill_depth, cfg.queue_order, cfg.priority)
                        .with_limits(limits);
                if cfg.straightforward_pass {
                    q.straightforward()
                } else {
                    q
                }
            },
            running: Vec::new(),
            coloc: Vec::new(),
            free_slots: Vec::new(),
            node_jobs: vec![Vec::new(); n],
            node_sensitive: vec![0; n],
            node_class: vec![[0; 3]; n],
            node_mem: vec![0; n],
            node_batch_cores: vec![0; n],
            functions: streams > 0,
            waiting: VecDeque::new(),
            retry: Vec::new(),
            freed: Vec::new(),
            leases: IdWindow::new(),
            next_lease: 1,
            latency: LatencyHistogram::default(),
            acct: Accounts::new(streams),
            jobs: JobStats::new(start, end),
            events: 0,
            superseded_ends: 0,
            overcommit: 0,
            next_generation: 0,
            parts: Vec::new(),
            node_lists: Vec::new(),
        }
    }

    pub fn advance(&mut self, now: u64, cores: u64, mem: u64) {
        let (queue, waiting) = (&self.queue, &self.waiting);
        self.rec.advance(now, &self.g, |t, g| {
            sample(t, g, cores, mem, queue.len(), waiting.len())
        });
    }

    /// The class of a lease of `res` on a node of `total`: GPU, memory (more memory a core
    /// than the node has), or CPU.
    fn class_of(res: &Resources, total: &Resources) -> usize {
        if res.gpus > 0 {
            2
        } else if res.mem_mib * u64::from(total.cores) > u64::from(res.cores) * total.mem_mib {
            1
        } else {
            0
        }
    }

    fn flags(&mut self, node: NodeId) {
        if !self.functions {
            return;
        }
        let sensitive = self.node_sensitive[node as usize] > 0;
        let shared = sensitive && !self.cluster.leases_on(node).is_empty();
        let n = self.cluster.node(node).expect("node exists");
        if n.batch_sensitive == sensitive && n.interference == shared {
            // Nothing to change (`update` would find the same and re-index nothing).
            return;
        }
        self.cluster
            .update(node, |n| {
                n.batch_sensitive = sensitive;
                n.interference = shared;
            })
            .expect("node exists");
    }

    fn new_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    /// A job's progress rate changes: what is left is re-timed; an earlier end is scheduled
    /// at once, a later one when the entry already in the heap comes due.
    fn rerate(&mut self, slot: u32, now: u64) {
        let coloc = self.coloc[slot as usize];
        let r = self.running[slot as usize].as_mut().expect("running");
        let f = (0..3)
            .filter(|&c| coloc[c] > 0)
            .map(|c| r.draws[c])
            .fold(1.0, f64::max);
        if f == r.factor {
            return;
        }
        r.left_ms = (r.left_ms - (now - r.since_ms) as f64 / r.factor).max(0.0);
        r.since_ms = now;
        r.factor = f;
        r.slowed |= f > 1.0;
        r.end_ms = now + (r.left_ms * f).ceil().max(1.0) as u64;
        if r.end_ms < r.queued_ms {
            self.queue_end(slot);
        }
    }

    /// Pushes the job's end entry for `end_ms`; the entry it had is superseded.
    fn queue_end(&mut self, slot: u32) {
        let generation = self.new_generation();
        let r = self.running[slot as usize].as_mut().expect("running");
        r.generation = generation;
        r.queued_ms = r.end_ms;
        self.heap
            .push(r.end_ms, (Kind::JobEnd, u64::from(slot), generation));
    }

    /// Lease `class` appears (`+1`) or goes (`-1`) on `node`: the jobs there are re-rated.
    fn coloc_change(&mut self, node: NodeId, class: usize, up: bool, now: u64) {
        let c = &mut self.node_class[node as usize][class];
        *c = if up { *c + 1 } else { *c - 1 };
        if !self.cfg.feedback {
            return;
        }
        for i in 0..self.node_jobs[node as usize].len() {
            let slot = self.node_jobs[node as usize][i];
            let n = &mut self.coloc[slot as usize][class];
            // The rate depends only on which classes are present: only a count that leaves
            // or reaches 0 can change it (`rerate` would find the same factor otherwise).
            let crossed = if up {
                *n += 1;
                *n == 1
            } else {
                *n -= 1;
                *n == 0
            };
            if crossed {
                self.rerate(slot, now);
            }
        }
    }

    fn set_node_batch(&mut self, node: NodeId, cores_delta: i64, mem_delta: i64, now: u64) {
        let total = self.cluster.node(node).expect("node exists").total;
        let i = node as usize;
        let (before_cores, before_mem) = (
            self.node_batch_cores[i],
            self.node_mem[i].min(total.mem_mib),
        );
        let cores = (i64::from(before_cores) + cores_delta) as u32;
        self.node_batch_cores[i] = cores;
        self.node_mem[i] = (self.node_mem[i] as i64 + mem_delta) as u64;
        let mem = self.node_mem[i].min(total.mem_mib);
        self.g.batch_cores = self.g.batch_cores + u64::from(cores) - u64::from(before_cores);
        self.g.batch_mem_mib = self.g.batch_mem_mib + mem - before_mem;
        if !self.functions {
            return;
        }
        let gpus = if total.gpus == 0 {
            0
        } else {
            (u64::from(total.gpus) * u64::from(cores)).div_ceil(u64::from(total.cores)) as u32
        };
        let plan = self
            .cluster
            .set_batch(node, Resources::new(cores, mem, gpus.min(total.gpus)))
            .expect("node exists");
        for lease in plan {
            self.end_lease(lease, now, true);
        }
        if self
            .cluster
            .node(node)
            .expect("node exists")
            .overcommitted()
        {
            self.overcommit += 1;
        }
    }

    pub fn start_job(&mut self, job: BatchJob, now: u64) {
        let mut parts = std::mem::take(&mut self.parts);
        if !self.alloc.take_into(job.procs, &mut parts) {
            unreachable!("the queue checked that {} units are free", job.units)
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.running.push(None);
            self.coloc.push([0; 3]);
            (self.running.len() - 1) as u32
        });
        let mut draws = [1.0; 3];
        for (c, d) in draws.iter_mut().enumerate() {
            *d = self.cost.draw(CLASSES[c], &mut self.rng);
        }
        let sensitive = self.rng.unit() < self.cfg.sensitive_fraction;
        let mut nodes = self.node_lists.pop().unwrap_or_default();
        nodes.reserve(parts.len());
        let mut coloc = [0u32; 3];
        for &(node, cores) in &parts {
            let total = self.cluster.node(node).expect("node exists").total;
            let mem = match (job.mem_node_mib, job.mem_proc_mib) {
                (Some(m), _) => u64::from(m),
                (None, Some(m)) => u64::from(m) * u64::from(cores),
                (None, None) => {
                    (total.mem_mib as f64 * self.cfg.unknown_mem_fraction * f64::from(cores)
                        / f64::from(total.cores)) as u64
                }
            }
            .min(total.mem_mib);
            if self.node_jobs[node as usize].is_empty() {
                self.g.alloc_nodes += 1;
                self.g.alloc_cores += u64::from(total.cores);
                self.g.alloc_mem_mib += total.mem_mib;
            }
            self.set_node_batch(node, i64::from(cores), mem as i64, now);
            self.node_jobs[node as usize].push(slot);
            self.node_sensitive[node as usize] += u16::from(sensitive);
            for (c, n) in coloc.iter_mut().enumerate() {
                *n += u32::from(self.node_class[node as usize][c]);
            }
            self.flags(node);
            nodes.push((node, cores, mem));
        }
        self.parts = parts;
        let job = BatchJob { sensitive, ..job };
        self.jobs.started(&job, now);
        self.running[slot as usize] = Some(Running {
            job,
            nodes,
            start_ms: now,
            left_ms: job.run_ms as f64,
            since_ms: now,
            factor: 1.0,
            generation: 0,
            end_ms: now + job.run_ms,
            queued_ms: u64::MAX,
            draws,
            planned_end_ms: now + job.req_ms,
            slowed: false,
        });
        self.coloc[slot as usize] = if self.cfg.feedback { coloc } else { [0; 3] };
        self.queue.track_start(now + job.req_ms, slot, job.units);
        self.queue.started(&job, now);
        self.queue_end(slot);
        self.rerate(slot, now);
    }

    fn end_job(&mut self, slot: u32, now: u64) {
        let r = self.running[slot as usize].take().expect("running");
        // Slowdowns are at least 1: no job ends before its run time alone.
        debug_assert!(
            now >= r.start_ms + r.job.run_ms,
            "job {} ended at {now} ms, before its {} ms run from {}",
            r.job.id,
            r.job.run_ms,
            r.start_ms
        );
        self.queue.track_end(r.planned_end_ms, slot, r.job.units);
        self.queue.ended(&r.job, now);
        for &(node, cores, mem) in &r.nodes {
            let list = &mut self.node_jobs[node as usize];
            list.retain(|&s| s != slot);
            if list.is_empty() {
                let total = self.cluster.node(node).expect("node exists").total;
                self.g.alloc_nodes -= 1;
                self.g.alloc_cores -= u64::from(total.cores);
                self.g.alloc_mem_mib -= total.mem_mib;
            }
            self.node_sensitive[node as usize] -= u16::from(r.job.sensitive);
            self.set_node_batch(node, -i64::from(cores), -(mem as i64), now);
            self.alloc.give_back(node, cores);
            self.flags(node);
            self.freed.push(node);
        }
        self.free_slots.push(slot);
        self.jobs.ended(&r, now);
        let mut nodes = r.nodes;
        nodes.clear();
        self.node_lists.push(nodes);
    }

    pub fn batch_pass(&mut self, now: u64) {
        let ready = match self.queue.mode {
            super::BatchMode::Replay => self.queue.replay_ready(self.alloc.free_units()),
            super::BatchMode::Easy => {
                let mut v = Vec::new();
                while let Some(job) = self.queue.pop_head(now, self.alloc.free_units()) {
                    self.start_job(job, now);
                }
                v.extend(self.queue.backfill(now, self.alloc.free_units()));
                v
            }
        };
        for job in ready {
            self.start_job(job, now);
        }
    }

    /// Ends a lease: completed (`reclaimed == false`) or taken back for a batch job.
    fn end_lease(&mut self, lease: LeaseId, now: u64, reclaimed: bool) {
        let Some(l) = self.fw.release(&mut self.cluster, lease) else {
            return;
        };
        let info = self.leases.remove(lease).expect("lease tracked");
        self.g.fn_cores -= u64::from(l.res.cores);
        self.g.fn_mem_mib -= l.res.mem_mib;
        self.coloc_change(l.node, info.class, false, now);
        self.flags(l.node);
        let used = (now - info.start_ms) as f64 * f64::from(l.res.cores);
        if reclaimed {
            let retry = info.attempt < self.cfg.retries;
            self.acct
                .reclaimed(&info.req, used, retry, now < self.rec.end_ms);
            if retry {
                self.retry.push(Waiting {
                    req: info.req,
                    arrival_ms: info.arrival_ms,
                    queued_ms: now,
                    attempt: info.attempt + 1,
                });
            }
        } else {
            self.acct.served(
                &info.req,
                now - info.start_ms,
                info.start_ms - info.arrival_ms,
            );
            self.freed.push(l.node);
        }
    }

    fn try_place(&mut self, w: &Waiting, now: u64) -> bool {
        let lease = self.next_lease;
        let req = Request {
            lease,
            client: u64::from(w.req.client),
            res: w.req.res,
            data_nodes: &[],
            avoid_nodes: &[],
        };
        let t0 = Instant::now();
        let decision = self.fw.place(&mut self.cluster, &req);
        self.latency.record(t0.elapsed().as_nanos() as u64);
        let Ok(Decision::Placed(node)) = decision else {
            return false;
        };
        self.next_lease += 1;
        self.acct.started(&w.req);
        let n = self.cluster.node(node).expect("placed");
        if n.overcommitted() {
            self.overcommit += 1;
        }
        let class = Self::class_of(&w.req.res, &n.total);
        self.g.fn_cores += u64::from(w.req.res.cores);
        self.g.fn_mem_mib += w.req.res.mem_mib;
        self.leases.insert(
            lease,
            LeaseInfo {
                req: w.req,
                start_ms: now,
                arrival_ms: w.arrival_ms,
                attempt: w.attempt,
                class,
            },
        );
        self.heap
            .push(now + w.req.duration_ms, (Kind::FunctionEnd, lease, 0));
        self.coloc_change(node, class, true, now);
        self.flags(node);
        true
    }

    fn arrive(&mut self, req: FnRequest, now: u64) {
        self.acct.offered(&req);
        let w = Waiting {
            req,
            arrival_ms: now,
            queued_ms: now,
            attempt: 0,
        };
        self.submit_fn(w, now);
    }

    fn submit_fn(&mut self, w: Waiting, now: u64) {
        if !self.try_place(&w, now) {
            if self.cfg.max_wait_ms == 0 {
                self.acct.refused(&w.req, w.attempt > 0);
            } else {
                self.waiting.push_back(w);
            }
        }
    }

    fn expire_waiting(&mut self, now: u64) {
        while let Some(w) = self.waiting.front() {
            if now.saturating_sub(w.queued_ms) <= self.cfg.max_wait_ms {
                break;
            }
            let w = self.waiting.pop_front().expect("front");
            self.acct.refused(&w.req, w.attempt > 0);
        }
    }

    /// Waiting functions are tried on the nodes freed at this instant (each was tried on every
    /// other node when it came and after every earlier release), at most
    /// [`RETRY_PER_RELEASE`] looked at per node.
    fn retry_freed(&mut self, now: u64) {
        if self.retry.is_empty() && self.waiting.is_empty() {
            // Nothing to try again, nothing waiting to expire or to place on the freed nodes.
            self.freed.clear();
            return;
        }
        for w in std::mem::take(&mut self.retry) {
            self.submit_fn(w, now);
        }
        self.expire_waiting(now);
        let mut freed = std::mem::take(&mut self.freed);
        freed.sort_unstable();
        freed.dedup();
        for &node in &freed {
            let mut i = 0;
            let mut looked = 0;
            while i < self.waiting.len() && looked < RETRY_PER_RELEASE {
                looked += 1;
                let w = self.waiting[i];
                let free = self.cluster.node(node).expect("node exists").free();
                if free.fits(&w.req.res) && self.try_place(&w, now) {
                    self.waiting.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        freed.clear();
        self.freed = freed;
    }

    fn drained(&self, now: u64) -> bool {
        now >= self.rec.end_ms && self.jobs.outstanding() == 0 && self.leases.is_empty()
    }

    /// Runs the loop over `jobs` (sorted by entry time) and `demand` until `horizon`.
    pub fn run_loop(
        &mut self,
        jobs: &[BatchJob],
        demand: &mut Demand,
        horizon: u64,
        cores: u64,
        mem: u64,
        mut progress: impl FnMut(u64, u64),
    ) -> u64 {
        let entry = |j: &BatchJob| match self.cfg.batch {
            super::BatchMode::Replay if !j.prestarted => j.trace_start_ms.unwrap_or(j.submit_ms),
            _ => j.submit_ms,
        };
        let mut next_job = 0;
        let mut now;
        loop {
            let t_ev = self.heap.peek_time().unwrap_or(u64::MAX);
            let t_job = jobs.get(next_job).map_or(u64::MAX, &entry);
            let t_fn = demand.peek_ms().unwrap_or(u64::MAX);
            now = t_ev.min(t_job).min(t_fn);
            if now >= horizon || now == u64::MAX || self.drained(now) {
                break;
            }
            self.advance(now, cores, mem);
            let mut dirty = false;
            while self.heap.peek_time() == Some(now) {
                let (_, (kind, id, generation)) = self.heap.pop().expect("peeked");
                match kind {
                    Kind::JobEnd => {
                        let live = self.running[id as usize]
                            .as_ref()
                            .filter(|r| r.generation == generation);
                        match live {
                            Some(r) if r.end_ms <= now => {
                                debug_assert_eq!(r.end_ms, now, "an end entry came due late");
                                self.events += 1;
                                self.end_job(id as u32, now);
                                dirty = true;
                            }
                            // Slowed since: its end is later, the entry goes there.
                            Some(_) => {
                                self.superseded_ends += 1;
                                self.queue_end(id as u32);
                            }
                            None => self.superseded_ends += 1,
                        }
                    }
                    Kind::FunctionEnd if self.leases.contains(id) => {
                        self.events += 1;
                        self.end_lease(id, now, false);
                    }
                    Kind::FunctionEnd => self.superseded_ends += 1,
                }
            }
            while next_job < jobs.len() && entry(&jobs[next_job]) == now {
                let mut j = jobs[next_job];
                j.units = self.alloc.units_for(j.procs);
                self.queue.submit(j);
                self.jobs.submitted(&j);
                next_job += 1;
                self.events += 1;
                dirty = true;
            }
            if dirty {
                self.batch_pass(now);
            }
            if !self.freed.is_empty() || !self.retry.is_empty() {
                self.retry_freed(now);
            }
            while demand.peek_ms() == Some(now) {
                let req = demand.pop().expect("peeked");
                self.events += 1;
                self.expire_waiting(now);
                self.arrive(req, now);
            }
            if self.events & 0xfffff < 8 {
                progress(now, self.events);
            }
        }
        now.min(horizon)
    }

    /// Settles what is still open at the stop: waiting functions are refused, jobs still
    /// queued or running are counted as unfinished.
    pub fn settle(&mut self, stop: u64) {
        while let Some(w) = self.waiting.pop_front() {
            self.acct.refused(&w.req, w.attempt > 0);
        }
        let open: Vec<FnRequest> = self.leases.values().map(|l| l.req).collect();
        for r in &open {
            self.acct.in_flight(r);
        }
        for r in self.running.iter().flatten() {
            self.jobs.unfinished(&r.job, Some(r.start_ms), stop);
        }
        for j in self.queue.take_all() {
            self.jobs.unfinished(&j, None, stop);
        }
    }
}

/// The time series' row at `t`.
fn sample(t: u64, g: &Gauges, cores: u64, mem: u64, queued: usize, waiting: usize) -> Sample {
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
        queued_jobs: queued as u64,
        queued_functions: waiting as u64,
    }
}

/// Nodes' cores per node, in cluster order, for the allocator.
pub fn node_cores(c: &Cluster) -> Vec<u32> {
    c.nodes().iter().map(|n| n.total.cores).collect()
}
