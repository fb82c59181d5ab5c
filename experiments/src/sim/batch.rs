//! Batch jobs and the Slurm-like queue that starts them.
//!
//! A job needs `units` of the cluster: cores when jobs share nodes (core-granular), whole nodes
//! when they are node-exclusive (see [`super::alloc`]). The queue is EASY backfill (Slurm's
//! `sched/backfill` in its simplest form) over the waiting jobs in FCFS order or in a
//! multifactor priority order (fair share by the trace's user, plus age: [`PriorityParams`]):
//! the head job starts when enough units are
//! free; otherwise it gets a reservation at the earliest time the running jobs' requested time
//! limits free enough units (the shadow time), and later jobs (at most `depth` of them, like
//! `bf_max_job_test`) start now if they fit and either end before the shadow time or use only
//! units the head job will not need. Per-user and per-queue limits ([`super::limits`]) hold
//! jobs: a job held as things stand at the pass's start is left out of the order (neither head
//! nor counted against `depth`; an account at its running-jobs limit is left out whole), and a
//! job that the jobs this pass already started would take past a limit is skipped; a held job
//! blocks no one. In replay mode a job enters the queue at the trace's own
//! start time and starts as soon as it fits (at once, when the trace fits the model).

use std::collections::{BTreeSet, BinaryHeap, VecDeque};

use harvest_policies::hash::IdMap;
use harvest_policies::index::IndexedSet;

use serde::{Deserialize, Serialize};

pub use super::fairshare::FairShare;
use super::limits::{Resolved, Use};
use super::trace::TraceJob;

/// How batch jobs are placed in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BatchMode {
    /// EASY backfill over the queue in `--queue-order` (priority or FCFS).
    Easy,
    /// The trace's own start times (submit + wait).
    Replay,
}

/// A job as the simulator runs it. Times in milliseconds of simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchJob {
    pub id: u64,
    /// Which time-shifted copy of the trace it comes from.
    pub copy: u32,
    pub submit_ms: u64,
    /// Run time alone (interference stretches it).
    pub run_ms: u64,
    /// The time limit the scheduler plans with (requested time, else the run time).
    pub req_ms: u64,
    pub procs: u32,
    /// Cores or nodes, by allocation mode (set by the engine).
    pub units: u32,
    pub mem_proc_mib: Option<u32>,
    pub mem_node_mib: Option<u32>,
    /// Known to be sensitive to co-location (interference-aware policies avoid its nodes).
    pub sensitive: bool,
    /// When the trace started it (simulated time), if the trace says.
    pub trace_start_ms: Option<u64>,
    /// Running at simulated time 0 per the trace (a window's warm start).
    pub prestarted: bool,
    /// Fair-share account: the trace's (below 2^34, [`super::trace::account`]), distinct per
    /// copy (the copy in the bits above).
    pub account: u64,
    /// The trace's queue (an index into [`super::trace::Trace::queues`]), if it names one.
    pub queue: Option<u32>,
}

impl BatchJob {
    pub fn from_trace(j: &TraceJob, copy: u32, submit_ms: u64) -> Self {
        Self {
            id: j.id,
            copy,
            submit_ms,
            run_ms: j.run as u64 * 1000,
            req_ms: j.req.max(j.run) as u64 * 1000,
            procs: j.procs,
            units: j.procs,
            mem_proc_mib: j.mem_proc_mib,
            mem_node_mib: j.mem_node_mib,
            sensitive: false,
            trace_start_ms: None,
            prestarted: false,
            account: (u64::from(copy) << 34) | j.account,
            queue: j.queue,
        }
    }
}

/// The order the EASY queue considers its jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum QueueOrder {
    /// Submit order (first come, first served).
    Fcfs,
    /// Slurm-like multifactor priority: fair share by account (decayed usage) plus age.
    Priority,
}

/// The multifactor priority's parameters (Slurm's `slurm.conf` names in brackets).
///
/// `priority = weight_fairshare * F + weight_age * min(age, max_age) / max_age`, where `F =
/// 2^(-(U_a / U) / S_a)` is Slurm's classic fair-share factor: `U_a` the account's usage
/// (core-time of its running jobs, decayed with `half_life`), `U` all accounts' usage, `S_a =
/// 1 / accounts` an equal share of every account seen so far. An account that has used nothing
/// has `F = 1`; one that used exactly its share has `F = 0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PriorityParams {
    /// [PriorityWeightFairshare]
    pub weight_fairshare: f64,
    /// [PriorityWeightAge]
    pub weight_age: f64,
    /// Age at which the age factor reaches 1 [PriorityMaxAge], ms.
    pub max_age_ms: u64,
    /// Half-life of recorded usage [PriorityDecayHalfLife], ms; 0: usage never decays.
    pub half_life_ms: u64,
    /// How often priorities are recalculated [PriorityCalcPeriod], ms; 0: at every pass.
    /// Between recalculations a job keeps its priority (a job submitted since has age 0 and
    /// its account's last fair-share factor).
    pub calc_period_ms: u64,
}

/// Defaults: Slurm's `PriorityMaxAge` and `PriorityDecayHalfLife` defaults (7 days) and
/// `PriorityCalcPeriod` (5 minutes); fair
/// share weighted ten times age (Slurm's weights default to 0, sites set them; fair share
/// dominating age is the common setting).
pub const DEFAULT_PRIORITY: PriorityParams = PriorityParams {
    weight_fairshare: 10_000.0,
    weight_age: 1_000.0,
    max_age_ms: 7 * 86_400_000,
    half_life_ms: 7 * 86_400_000,
    calc_period_ms: 5 * 60_000,
};

/// A waiting job as the priority merge compares them: its account's slot and its index in
/// that account's queue.
#[derive(Debug, Clone, Copy)]
struct Head {
    priority: f64,
    submit_ms: u64,
    /// Running at a warm start's instant 0 per the trace: first among equal submit times.
    prestarted: bool,
    copy: u32,
    id: u64,
    key: u64,
    slot: u32,
    idx: usize,
    /// The job's units and time limit (what a backfill scan reads; not part of the order).
    units: u32,
    req_ms: u64,
}

impl Head {
    /// Ties in priority: submit time, then a warm start's running jobs before its queued ones
    /// (both enter at instant 0), then copy and id. Within an account the queue is kept in this
    /// order ([`BatchQueue::submit`]), which the merge relies on.
    fn rank(&self) -> (u64, bool, u32, u64, u64) {
        (
            self.submit_ms,
            !self.prestarted,
            self.copy,
            self.id,
            self.key,
        )
    }

    fn at(&self) -> At {
        (self.slot, self.idx)
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    /// Higher priority first; ties by [`Head::rank`] (lower first).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .total_cmp(&other.priority)
            .then_with(|| other.rank().cmp(&self.rank()))
    }
}

/// `(planned end, running slot, units)` as one integer that sorts as the tuple does.
fn planned_end_key(end_ms: u64, slot: u32, units: u32) -> u128 {
    (u128::from(end_ms) << 64) | (u128::from(slot) << 32) | u128::from(units)
}

/// A waiting job's place: its account's slot and its index in that account's queue.
type At = (u32, usize);

/// Where a backfill scan writes: what the jobs it chose add under limits, what it looked at,
/// and the jobs it chose.
struct ScanInto<'a> {
    pass: &'a mut Use,
    seen: &'a mut Window,
    chosen: &'a mut Vec<At>,
}

/// A job as a backfill scan reads it: its place, units and time limit.
#[derive(Debug, Clone, Copy)]
struct Cand {
    at: At,
    units: u32,
    req_ms: u64,
}

/// One account's waiting jobs (submit order) and its fair-share factor as of the
/// recalculation `epoch` (stale when that is not the current one).
#[derive(Debug, Default)]
struct Account {
    key: u64,
    jobs: VecDeque<BatchJob>,
    /// Each waiting job's number (beside `jobs`, increasing along it): the prefix names its
    /// jobs by these ([`Prefix::jobs`]), which no other job's leaving changes; the next to
    /// give.
    seqs: VecDeque<u64>,
    next_seq: u64,
    /// This account's entry in [`BatchQueue::heads`], as it was put there (its first job may
    /// have changed since: then the slot is in [`BatchQueue::moved`]).
    entry: Option<Head>,
    fairshare: f64,
    epoch: u64,
}

/// The waiting jobs and the planned ends of the running ones.
///
/// Waiting jobs are kept per account in submit order (one account under FCFS and replay), each
/// account in a slot of a dense table. Within an account the oldest job always has the
/// highest priority (same fair share, the largest age), so the queue's priority order is a
/// merge of the accounts' queues, led by the set of their first jobs ([`Order`]). A pass asks
/// the merge for jobs one at a time and stops as soon as nothing more can start (no free unit
/// left, or `depth` jobs looked at): a pass that starts a job or two behind a blocked head costs
/// a few heap operations, not `depth`, with no global re-sort; the shadow time is worked out only
/// when a job that fits is found. [`BatchQueue::straightforward`] is the textbook pass (every
/// waiting job's priority, a full sort, the first `depth + 1` jobs, the shadow time up front),
/// which tests check the indexed pass against, schedule for schedule.
#[derive(Debug)]
pub struct BatchQueue {
    pub mode: BatchMode,
    pub depth: usize,
    pub order: QueueOrder,
    pub params: PriorityParams,
    pub share: FairShare,
    slots: IdMap<u64, u32>,
    accounts: Vec<Account>,
    /// The slots of the accounts with a job waiting (a recalculation and the prefix's merge
    /// visit these, not every account ever seen).
    waiting: IndexedSet,
    len: usize,
    /// Priority order: the last recalculation (its time and number), the accounts' first
    /// jobs (highest first), the slots whose account started waiting since the last
    /// recalculation (`stale`: no factor yet), and those whose first job changed since
    /// `heads` was last brought up to date (`moved`). `heads` is read only by the merge,
    /// which brings it up to date first ([`BatchQueue::sync_heads`]): with the kept prefix
    /// that is once a recalculation, not at every start.
    calc_ms: Option<u64>,
    epoch: u64,
    heads: BTreeSet<std::cmp::Reverse<Head>>,
    stale: Vec<u32>,
    moved: Vec<u32>,
    /// `(planned end, running slot, units)`, packed into one integer in that order
    /// ([`planned_end_key`]: one comparison a step instead of a tuple's three).
    planned_ends: BTreeSet<u128>,
    /// Per-user and per-queue limits (`limited`: any at all), what runs, and what the current
    /// pass chose.
    limits: Resolved,
    limited: bool,
    running: Use,
    pass: Use,
    /// The textbook pass instead of the indexed one (same schedule, slower).
    reference: bool,
    /// The merge's heap, kept between passes (no allocation a pass).
    heap_buf: Vec<Head>,
    /// The jobs a backfill scan chose, kept between passes (no allocation a pass).
    chosen_buf: Vec<At>,
    /// The first jobs of the priority order, highest first ([`Prefix`]).
    prefix: Prefix,
    /// What the last backfill scan looked at, when it started nothing (see [`Window`]), and a
    /// buffer for the next one.
    window: Option<Window>,
    spare: Window,
}

/// The jobs a backfill scan looked at (the head and the `depth` after it) when it started
/// none of them. Until a job leaves the queue or priorities are recalculated, the next scans look at these jobs again, or at fewer of them and at jobs
/// submitted since that rank among them (added here, so this stays a superset of what a scan
/// would look at; a job that beats the head becomes the head, the old head one of the jobs);
/// only the free units, the shadow time and the spare units differ.
/// [`Window::may_start`] tells from these alone that a scan would start nothing, so passes
/// that cannot start a job (most of them on a full machine with a deep queue) skip the scan.
/// Kept only without limits (a limit's hold changes as jobs start and end).
#[derive(Debug, Default)]
struct Window {
    /// The head's units (what the shadow time is worked out for), its time limit, and its
    /// entry (a job that beats it is the new head).
    need: u32,
    head_req_ms: u64,
    head: Option<Head>,
    /// `(units, time limit)` of the jobs after the head, and the fewest units among them.
    jobs: Vec<(u32, u64)>,
    least_units: u32,
    /// The scan looked at `depth` jobs after the head (otherwise at every waiting job).
    full: bool,
    /// The last job looked at (priority order): a new job that does not beat it is not
    /// looked at.
    last: Option<Head>,
}

impl Window {
    /// Whether a scan over these jobs with `free` units free could start one: some job fits
    /// in `free` and either ends by the shadow time or fits in the spare units (`shadow`
    /// works both out for the head's need).
    fn may_start(&self, now: u64, free: u32, shadow: impl FnOnce(u32) -> (u64, u32)) -> bool {
        if self.least_units > free {
            return false;
        }
        let (shadow, extra) = shadow(self.need);
        let by = shadow.saturating_sub(now);
        self.jobs
            .iter()
            .any(|&(units, req)| units <= free && (units <= extra || req <= by))
    }

    fn add(&mut self, units: u32, req_ms: u64) {
        self.jobs.push((units, req_ms));
        self.least_units = self.least_units.min(units);
    }
}

/// The first jobs of the priority order, kept between passes (priority order without limits,
/// not in the textbook pass). Between recalculations every waiting job's entry is fixed, so
/// the order changes only by submissions (an entry that ranks within the prefix is inserted
/// in place, one that ranks after it left out: what is kept stays the order's first jobs) and
/// by jobs leaving (removed, their account's later indices shifted). A pass reads it instead
/// of merging the accounts' queues again; it is merged anew (twice the jobs a pass may look at)
/// when a recalculation drops it or starts have shortened it below what a pass may look at.
#[derive(Debug, Default)]
struct Prefix {
    /// Valid for the current recalculation.
    ok: bool,
    /// Holds every waiting job.
    complete: bool,
    /// Lowest first (the head last: starting it moves nothing). Each entry's `idx` is its
    /// job's number in its account ([`Account::seqs`]), not its index: a job leaving its
    /// account's queue moves no other entry.
    jobs: Vec<Head>,
    /// The length merged; past half as much again the lowest are dropped (what is kept is
    /// still a prefix).
    cap: usize,
}

impl Prefix {
    fn drop_all(&mut self) {
        self.ok = false;
        self.jobs.clear();
    }

    /// A job entered the order with entry `h`; whether it ranks within the prefix.
    fn admit(&mut self, h: Head) -> bool {
        if !(self.ok && (self.complete || self.jobs.first().is_some_and(|last| h > *last))) {
            return false;
        }
        let pos = self.jobs.partition_point(|p| *p < h);
        self.jobs.insert(pos, h);
        if self.jobs.len() > self.cap + self.cap / 2 {
            self.jobs.drain(..self.jobs.len() - self.cap);
            self.complete = false;
        }
        true
    }

    /// The job numbered `seq` in `slot`'s account left its queue.
    fn remove(&mut self, slot: u32, seq: usize) {
        if !self.ok {
            return;
        }
        if let Some(pos) = self
            .jobs
            .iter()
            .rposition(|h| h.slot == slot && h.idx == seq)
        {
            self.jobs.remove(pos);
        } else {
            debug_assert!(!self.complete, "a job left that the complete prefix lacks");
        }
    }
}

/// The waiting jobs in the order the scheduler considers them, one at a time: under FCFS the
/// one queue in submit order; under the priority order a merge of the accounts' queues (an
/// account at its running-jobs limit is skipped whole). A run of one account's jobs that beat
/// every other account's next costs no heap operation.
struct Order<'a> {
    q: &'a BatchQueue,
    /// FCFS: the queue's slot and the next index.
    fcfs: Option<(u32, usize)>,
    firsts: std::collections::btree_set::Iter<'a, std::cmp::Reverse<Head>>,
    heap: BinaryHeap<Head>,
    /// The next job of the account whose jobs are being taken, when it beats the heap's top.
    run: Option<Head>,
}

impl Iterator for Order<'_> {
    type Item = At;

    fn next(&mut self) -> Option<At> {
        if let Some((slot, i)) = &mut self.fcfs {
            if *i >= self.q.accounts[*slot as usize].jobs.len() {
                return None;
            }
            *i += 1;
            return Some((*slot, *i - 1));
        }
        self.next_head().as_ref().map(Head::at)
    }
}

impl Order<'_> {
    /// The merge's next entry (priority order).
    fn next_head(&mut self) -> Option<Head> {
        loop {
            let h = match self.run.take() {
                Some(h) => h,
                None => {
                    let h = self.heap.pop()?;
                    if self.q.account_full(h.key) {
                        // Held at its limit: none of its jobs (only its first was pushed).
                        if let Some(std::cmp::Reverse(f)) = self.firsts.next() {
                            self.heap.push(*f);
                        }
                        continue;
                    }
                    h
                }
            };
            if h.idx == 0
                && let Some(std::cmp::Reverse(f)) = self.firsts.next()
            {
                self.heap.push(*f);
            }
            if let Some(next) = self.q.head(h.slot, h.idx + 1) {
                if self.heap.peek().is_some_and(|top| *top > next) {
                    self.heap.push(next);
                } else {
                    self.run = Some(next);
                }
            }
            return Some(h);
        }
    }
}

impl BatchQueue {
    pub fn new(mode: BatchMode, depth: usize, order: QueueOrder, params: PriorityParams) -> Self {
        Self {
            mode,
            depth,
            order: if mode == BatchMode::Replay {
                QueueOrder::Fcfs
            } else {
                order
            },
            params,
            share: FairShare::new(params.half_life_ms),
            slots: IdMap::default(),
            accounts: Vec::new(),
            waiting: IndexedSet::default(),
            len: 0,
            calc_ms: None,
            epoch: 0,
            heads: BTreeSet::new(),
            moved: Vec::new(),
            stale: Vec::new(),
            planned_ends: BTreeSet::new(),
            limits: Resolved::default(),
            limited: false,
            running: Use::default(),
            pass: Use::default(),
            reference: false,
            heap_buf: Vec::new(),
            chosen_buf: Vec::new(),
            prefix: Prefix::default(),
            window: None,
            spare: Window::default(),
        }
    }

    /// Per-user and per-queue limits (queue names resolved against the trace's). Replay
    /// ignores them.
    pub fn with_limits(mut self, limits: Resolved) -> Self {
        self.limited = !limits.is_empty();
        self.limits = limits;
        self
    }

    /// The textbook pass: every waiting job's priority, a full sort, the first `depth + 1`
    /// jobs and the shadow time worked out up front, each pass. The same schedule as the
    /// indexed pass (tested), `O(queue log queue)` a pass; for checking, not for studies.
    pub fn straightforward(mut self) -> Self {
        self.reference = true;
        self
    }

    /// The order's head or first jobs changed: the next backfill scans.
    fn forget_window(&mut self) {
        if let Some(w) = self.window.take() {
            self.keep_spare(w);
        }
    }

    /// Keeps the larger of `w`'s and the spare's buffers for the next scan.
    fn keep_spare(&mut self, w: Window) {
        if w.jobs.capacity() > self.spare.jobs.capacity() {
            self.spare = w;
        }
    }

    /// The account runs as many jobs as its limit allows: none of its jobs is considered.
    fn account_full(&self, account: u64) -> bool {
        self.limited && self.limits.account_full(account, &self.running, None)
    }

    /// The job is held by a limit with what runs counted (and what this pass chose, if given).
    fn held(&self, job: &BatchJob, pass: Option<&Use>) -> bool {
        self.limited && self.limits.holds(job, &self.running, pass)
    }

    pub fn submit(&mut self, job: BatchJob) {
        let priority = self.order == QueueOrder::Priority;
        if priority {
            self.share.open(job.account);
        }
        let key = if priority { job.account } else { 0 };
        let slot = *self.slots.entry(key).or_insert_with(|| {
            self.accounts.push(Account {
                key,
                ..Account::default()
            });
            (self.accounts.len() - 1) as u32
        });
        let q = &mut self.accounts[slot as usize].jobs;
        let first = q.is_empty();
        if first {
            self.waiting.insert(slot);
        }
        if first && priority {
            self.stale.push(slot);
        }
        // Within an account the queue is in priority order (the merge takes its jobs front to
        // back): the same fair share, so by age and then the tie-break. Submissions come in
        // time order, but jobs of one instant need not come in the tie-break's (a warm start's
        // queued job before a running one, ids out of order): such a job is inserted in place.
        let tie = |j: &BatchJob| (j.submit_ms, !j.prestarted, j.copy, j.id);
        if priority && q.back().is_some_and(|last| tie(last) > tie(&job)) {
            let idx = q.partition_point(|j| tie(j) <= tie(&job));
            self.insert_within(slot, idx, job);
            return;
        }
        q.push_back(job);
        let a = &mut self.accounts[slot as usize];
        a.seqs.push_back(a.next_seq);
        a.next_seq += 1;
        let idx = a.jobs.len() - 1;
        self.len += 1;
        if self.window.is_some() {
            self.window_admit(slot, idx, first);
        }
        // An account not waiting at the last refresh gets its factor, and its jobs their place
        // in the prefix, at the next one.
        if self.prefix.ok && !first && !self.stale.contains(&slot) {
            let h = self.head(slot, idx).expect("just queued");
            self.prefix.admit(self.numbered(h));
        }
    }

    /// Inserts `job` at `idx` of `slot`'s queue (before its last job): the account's first
    /// job may change, and a kept window no longer describes the order.
    fn insert_within(&mut self, slot: u32, idx: usize, job: BatchJob) {
        self.forget_window();
        self.prefix.drop_all();
        // An account in `stale` gets its entry at the next refresh; otherwise its entry is
        // its first job's, which may be replaced.
        if idx == 0 && !self.stale.contains(&slot) {
            self.first_changed(slot);
        }
        let a = &mut self.accounts[slot as usize];
        a.jobs.insert(idx, job);
        // Numbered anew (the prefix, which names jobs by number, was dropped).
        a.seqs.clear();
        a.seqs.extend(a.next_seq..a.next_seq + a.jobs.len() as u64);
        a.next_seq += a.jobs.len() as u64;
        self.len += 1;
    }

    /// A job was submitted at `(slot, idx)` (`first`: its account was not waiting) while a
    /// window is kept: added to it when a scan would look at it, the window dropped when it
    /// would be the head.
    fn window_admit(&mut self, slot: u32, idx: usize, first: bool) {
        let Some(w) = &self.window else { return };
        let job = self.accounts[slot as usize].jobs[idx];
        let looked_at = match self.order {
            // Last in the queue.
            QueueOrder::Fcfs => !w.full,
            QueueOrder::Priority => {
                let a = &self.accounts[slot as usize];
                // An account that was not waiting gets its factor at the next refresh, at this
                // same instant (a recalculation then drops the window anyway).
                let fairshare = if !first || a.epoch == self.epoch {
                    a.fairshare
                } else {
                    self.share.factor(a.key, job.submit_ms)
                };
                let h = self.head_with(slot, idx, fairshare);
                if w.head.is_none_or(|head| h > head) {
                    // The new head: the old one is looked at after it.
                    if let Some(w) = &mut self.window {
                        w.add(w.need, w.head_req_ms);
                        (w.need, w.head_req_ms, w.head) = (job.units, job.req_ms, Some(h));
                    }
                    return;
                }
                !w.full || w.last.is_none_or(|last| h > last)
            }
        };
        if looked_at && let Some(w) = &mut self.window {
            w.add(job.units, job.req_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn track_start(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends
            .insert(planned_end_key(planned_end_ms, slot, units));
    }

    pub fn track_end(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends
            .remove(&planned_end_key(planned_end_ms, slot, units));
    }

    /// A job starts: its account's usage rate, its running jobs and cores change.
    pub fn started(&mut self, job: &BatchJob, now: u64) {
        self.charge(job, true, now);
    }

    /// A job ends.
    pub fn ended(&mut self, job: &BatchJob, now: u64) {
        self.charge(job, false, now);
    }

    fn charge(&mut self, job: &BatchJob, up: bool, now: u64) {
        if self.limited {
            self.running.add(job, up);
            self.forget_window();
        }
        if self.order == QueueOrder::Priority {
            let procs = i64::from(job.procs);
            self.share
                .charge(job.account, if up { procs } else { -procs }, now);
        }
    }

    /// A waiting job's priority at `now` (0 under FCFS).
    pub fn priority(&self, job: &BatchJob, now: u64) -> f64 {
        match self.order {
            QueueOrder::Fcfs => 0.0,
            QueueOrder::Priority => {
                self.priority_with(job, now, self.share.factor(job.account, now))
            }
        }
    }

    fn priority_with(&self, job: &BatchJob, now: u64, fairshare: f64) -> f64 {
        let p = &self.params;
        let age = if p.max_age_ms == 0 {
            1.0
        } else {
            now.saturating_sub(job.submit_ms).min(p.max_age_ms) as f64 / p.max_age_ms as f64
        };
        p.weight_fairshare * fairshare + p.weight_age * age
    }

    /// The entry of the job at `idx` in `slot`'s queue, as of the last recalculation.
    fn head(&self, slot: u32, idx: usize) -> Option<Head> {
        let a = &self.accounts[slot as usize];
        a.jobs.get(idx)?;
        let fairshare = if a.epoch == self.epoch {
            a.fairshare
        } else {
            1.0
        };
        Some(self.head_with(slot, idx, fairshare))
    }

    /// The entry of the job at `idx` in `slot`'s queue with its account's fair-share factor.
    fn head_with(&self, slot: u32, idx: usize, fairshare: f64) -> Head {
        let a = &self.accounts[slot as usize];
        let j = &a.jobs[idx];
        Head {
            priority: self.priority_with(j, self.calc_ms.unwrap_or(0), fairshare),
            submit_ms: j.submit_ms,
            prestarted: j.prestarted,
            copy: j.copy,
            id: j.id,
            key: a.key,
            slot,
            idx,
            units: j.units,
            req_ms: j.req_ms,
        }
    }

    /// Priorities recalculated when the period has passed; accounts whose first job changed
    /// get their entry (an account not waiting at the recalculation its factor as of now).
    fn refresh(&mut self, now: u64) {
        if self.order != QueueOrder::Priority {
            return;
        }
        let due = self
            .calc_ms
            .is_none_or(|t| now >= t.saturating_add(self.params.calc_period_ms));
        if due {
            self.calc_ms = Some(now);
            self.epoch += 1;
            self.forget_window();
            self.prefix.drop_all();
            // Collected, then built at once (a sorted bulk build, not an insert each).
            let keeps_heads = self.keeps_heads();
            let mut heads = Vec::with_capacity(self.heads.len() + self.stale.len());
            let total = self.share.total_at(now);
            // Every account under limits (an account not waiting loses its entry), else the
            // waiting ones.
            let slots: Vec<u32> = if keeps_heads {
                (0..self.accounts.len() as u32).collect()
            } else {
                self.waiting.as_slice().to_vec()
            };
            for slot in slots {
                let slot = slot as usize;
                let a = &self.accounts[slot];
                if a.jobs.is_empty() {
                    self.accounts[slot].entry = None;
                    continue;
                }
                let f = self.share.factor_given(a.key, now, total);
                let a = &mut self.accounts[slot];
                a.fairshare = f;
                a.epoch = self.epoch;
                if keeps_heads {
                    let h = self.head(slot as u32, 0);
                    self.accounts[slot].entry = h;
                    if let Some(h) = h {
                        heads.push(std::cmp::Reverse(h));
                    }
                }
            }
            self.moved.clear();
            self.heads = BTreeSet::from_iter(heads);
            self.stale.clear();
            return;
        }
        for slot in std::mem::take(&mut self.stale) {
            let a = &self.accounts[slot as usize];
            if a.epoch != self.epoch {
                let f = self.share.factor(a.key, now);
                let a = &mut self.accounts[slot as usize];
                a.fairshare = f;
                a.epoch = self.epoch;
            }
            self.first_changed(slot);
            if self.prefix.ok {
                // The account's jobs in its order: once one is left out, so are the rest.
                for idx in 0..self.accounts[slot as usize].jobs.len() {
                    let h = self.head(slot, idx).expect("in range");
                    if !self.prefix.admit(self.numbered(h)) {
                        break;
                    }
                }
            }
        }
    }

    /// Whether the merge reads `heads` (the priority order under limits, where every pass
    /// merges; without limits the kept prefix is merged anew once a recalculation or so, from
    /// every waiting account's first job, and `heads` is left empty).
    fn keeps_heads(&self) -> bool {
        self.order == QueueOrder::Priority && self.limited && !self.reference
    }

    /// The first job of the account in `slot` changed (or it started or stopped waiting).
    fn first_changed(&mut self, slot: u32) {
        if self.keeps_heads() {
            self.moved.push(slot);
        }
    }

    /// `heads` brought up to date for the accounts whose first job changed (after
    /// [`BatchQueue::refresh`], which gives the accounts that started waiting their factor).
    fn sync_heads(&mut self) {
        debug_assert!(self.stale.is_empty(), "a refresh comes first");
        for slot in std::mem::take(&mut self.moved) {
            if let Some(old) = self.accounts[slot as usize].entry.take() {
                self.heads.remove(&std::cmp::Reverse(old));
            }
            let h = self.head(slot, 0);
            if let Some(h) = h {
                self.heads.insert(std::cmp::Reverse(h));
            }
            self.accounts[slot as usize].entry = h;
        }
    }

    /// The merge over the waiting jobs (after [`BatchQueue::refresh`] and
    /// [`BatchQueue::sync_heads`]), on the heap `buf`.
    fn merge(&self, buf: Vec<Head>) -> Order<'_> {
        let mut heap = BinaryHeap::from(buf);
        heap.clear();
        if self.order == QueueOrder::Fcfs {
            return Order {
                q: self,
                fcfs: Some((self.slots.get(&0).copied().unwrap_or(0), 0)).filter(|_| self.len > 0),
                firsts: self.heads.iter(),
                heap,
                run: None,
            };
        }
        let mut firsts = self.heads.iter();
        if self.keeps_heads() {
            if let Some(std::cmp::Reverse(h)) = firsts.next() {
                heap.push(*h);
            }
        } else {
            // No `heads` (empty: `firsts` yields nothing): every waiting account's first job
            // enters the heap at once.
            let mut all = heap.into_vec();
            all.extend(
                self.waiting
                    .as_slice()
                    .iter()
                    .filter_map(|&slot| self.head(slot, 0)),
            );
            heap = BinaryHeap::from(all);
        }
        Order {
            q: self,
            fcfs: None,
            firsts,
            heap,
            run: None,
        }
    }

    /// Every waiting job in priority order by a full sort (the textbook pass).
    fn sorted(&self) -> Vec<At> {
        let mut all: Vec<Head> = (0..self.accounts.len() as u32)
            .flat_map(|slot| {
                (0..self.accounts[slot as usize].jobs.len()).filter_map(move |i| self.head(slot, i))
            })
            .collect();
        if self.order == QueueOrder::Fcfs {
            all.sort_unstable_by_key(|h| (h.slot, h.idx));
        } else {
            all.sort_unstable_by(|a, b| b.cmp(a));
        }
        all.iter().map(Head::at).collect()
    }

    /// Runs `f` over the waiting jobs in order (the merge, or the full sort of the textbook
    /// pass); jobs held by a limit as things stand are left out of the order.
    fn with_order<R>(&mut self, f: impl FnOnce(&Self, &mut dyn Iterator<Item = At>) -> R) -> R {
        if self.reference {
            let all = self.sorted();
            let mut it = all.into_iter().filter(|&at| !self.held(self.get(at), None));
            return f(self, &mut it);
        }
        if self.uses_prefix() {
            self.ensure_prefix();
            let this = &*self;

            return f(
                this,
                &mut this
                    .prefix
                    .jobs
                    .iter()
                    .rev()
                    .map(|h| this.place((h.slot, h.idx), true)),
            );
        }
        self.sync_heads();
        let buf = std::mem::take(&mut self.heap_buf);
        let mut order = self.merge(buf);
        let r = f(
            self,
            &mut order.by_ref().filter(|&at| !self.held(self.get(at), None)),
        );
        self.heap_buf = order.heap.into_vec();
        r
    }

    /// The place `at` names: `(slot, number)` as the prefix keeps them (`numbered`, see
    /// [`Account::seqs`]), or `(slot, index)`.
    fn place(&self, (slot, idx): At, numbered: bool) -> At {
        if numbered {
            let seq = idx as u64;
            let seqs = &self.accounts[slot as usize].seqs;
            // Mostly the account's first job (the head always is).
            if seqs.front() == Some(&seq) {
                return (slot, 0);
            }
            let i = seqs
                .binary_search(&seq)
                .expect("a prefix entry's job is waiting");
            (slot, i)
        } else {
            (slot, idx)
        }
    }

    /// Whether passes read the kept prefix ([`Prefix`]): the indexed pass under the priority
    /// order without limits.
    fn uses_prefix(&self) -> bool {
        !self.reference && !self.limited && self.order == QueueOrder::Priority
    }

    /// The prefix merged anew if a recalculation dropped it or starts shortened it below what
    /// a pass looks at (the head and at most `depth` jobs after it).
    fn ensure_prefix(&mut self) {
        let need = self.depth.saturating_add(1);
        if !self.prefix.ok || (!self.prefix.complete && self.prefix.jobs.len() < need) {
            self.merge_prefix(need.saturating_mul(2));
        }
    }

    /// `h` with its job's number in place of its index, as the prefix keeps it.
    fn numbered(&self, h: Head) -> Head {
        Head {
            idx: self.accounts[h.slot as usize].seqs[h.idx] as usize,
            ..h
        }
    }

    /// Removes the job at `(slot, idx)` from its account's queue (and the prefix).
    fn remove_job(&mut self, (slot, idx): At) -> BatchJob {
        let a = &mut self.accounts[slot as usize];
        let job = a.jobs.remove(idx).expect("index in range");
        let seq = a.seqs.remove(idx).expect("index in range");
        if a.jobs.is_empty() {
            self.waiting.remove(slot);
        }
        self.len -= 1;
        self.prefix.remove(slot, seq as usize);
        job
    }

    /// The prefix merged anew: the order's first `len` jobs.
    fn merge_prefix(&mut self, len: usize) {
        let mut jobs = std::mem::take(&mut self.prefix.jobs);
        jobs.clear();
        self.sync_heads();
        let buf = std::mem::take(&mut self.heap_buf);
        let mut order = self.merge(buf);
        while jobs.len() < len
            && let Some(h) = order.next_head()
        {
            jobs.push(self.numbered(h));
        }
        jobs.reverse();
        self.heap_buf = order.heap.into_vec();
        self.prefix = Prefix {
            ok: true,
            complete: jobs.len() == self.len,
            jobs,
            cap: len,
        };
    }

    /// The first `limit` jobs of the order.
    #[cfg(test)]
    fn ordered(&mut self, now: u64, limit: usize) -> Vec<At> {
        self.refresh(now);
        self.with_order(|_, o| o.take(limit).collect())
    }

    fn get(&self, (slot, idx): At) -> &BatchJob {
        &self.accounts[slot as usize].jobs[idx]
    }

    /// Removes the given jobs (each account's indices in any order); returns them in the
    /// order given.
    fn take(&mut self, at: &[At]) -> Vec<BatchJob> {
        self.forget_window();
        if let [one] = at[..] {
            return vec![self.take_one(one)];
        }
        let mut by_index: Vec<(u32, usize, usize)> = at
            .iter()
            .enumerate()
            .map(|(pos, &(slot, idx))| (slot, idx, pos))
            .collect();
        // Highest index first within an account, so earlier indices stay valid.
        by_index.sort_unstable_by(|a, b| (a.0, b.1).cmp(&(b.0, a.1)));
        for &(slot, idx, _) in &by_index {
            if idx == 0 {
                self.first_changed(slot);
            }
        }
        let mut out: Vec<(usize, BatchJob)> = Vec::with_capacity(at.len());
        for (slot, idx, pos) in by_index {
            out.push((pos, self.remove_job((slot, idx))));
        }
        out.sort_unstable_by_key(|&(pos, _)| pos);
        out.into_iter().map(|(_, j)| j).collect()
    }

    /// Removes one job.
    fn take_one(&mut self, (slot, idx): At) -> BatchJob {
        self.forget_window();
        if idx == 0 {
            self.first_changed(slot);
        }
        self.remove_job((slot, idx))
    }

    /// The head job (the highest priority not held by a limit), removed, if it may start now
    /// on `free` units.
    pub fn pop_head(&mut self, now: u64, free: u32) -> Option<BatchJob> {
        self.refresh(now);
        let first = self.with_order(|_, order| order.next())?;
        if self.get(first).units > free {
            return None;
        }
        Some(self.take_one(first))
    }

    /// Every waiting job, removed (the end of a run).
    pub fn take_all(&mut self) -> Vec<BatchJob> {
        self.forget_window();
        self.prefix.drop_all();
        self.len = 0;
        self.waiting = IndexedSet::default();
        self.heads.clear();
        self.stale.clear();
        self.moved.clear();
        for a in &mut self.accounts {
            a.entry = None;
        }
        let mut all: Vec<BatchJob> = self
            .accounts
            .iter_mut()
            .flat_map(|a| {
                a.seqs.clear();
                a.jobs.drain(..)
            })
            .collect();
        all.sort_by_key(|j| (j.submit_ms, j.copy, j.id));
        all
    }

    /// Replay: every queued job that fits in `free`, in queue order, removed.
    pub fn replay_ready(&mut self, mut free: u32) -> Vec<BatchJob> {
        self.forget_window();
        self.prefix.drop_all();
        let Some(&slot) = self.slots.get(&0) else {
            return Vec::new();
        };
        let a = &mut self.accounts[slot as usize];
        let mut out = Vec::new();
        let mut i = 0;
        while i < a.jobs.len() && free > 0 {
            if a.jobs[i].units <= free {
                free -= a.jobs[i].units;
                out.push(a.jobs.remove(i).expect("index in range"));
                a.seqs.remove(i);
            } else {
                i += 1;
            }
        }
        if a.jobs.is_empty() {
            self.waiting.remove(slot);
        }
        self.len -= out.len();
        out
    }

    /// The shadow time (when the planned ends free `need` units, with `free` free now; never:
    /// `u64::MAX`) and the units spare then.
    fn shadow(&self, now: u64, free: u32, need: u32) -> (u64, u32) {
        let mut avail = free;
        for &key in &self.planned_ends {
            let (end, units) = ((key >> 64) as u64, key as u32);
            avail += units;
            if avail >= need {
                return (end.max(now), avail - need);
            }
        }
        (u64::MAX, avail.saturating_sub(need))
    }

    /// One backfill scan over `order` (the head first; `numbered`: `order` is the kept
    /// prefix, highest first, whose places hold job numbers, not indices): the
    /// jobs it starts pushed to `chosen`
    /// (what they add counted in `pass` under limits), and what it looked at recorded in
    /// `seen`; whether `seen` is a window to keep (it started nothing; see [`Window`]).
    fn scan(
        &self,
        mut order: impl Iterator<Item = Cand>,
        numbered: bool,
        now: u64,
        free: u32,
        out: ScanInto<'_>,
    ) -> bool {
        let ScanInto { pass, seen, chosen } = out;
        let Some(head) = order.next() else {
            return false;
        };
        let need = head.units;
        let keep = !self.reference && !self.limited;
        let mut left = free;
        // The textbook pass works the shadow time out up front; the indexed one when a job
        // that fits is found.
        let mut plan = self.reference.then(|| self.shadow(now, free, need));
        let mut looked = 0;
        let mut last = None;
        while left > 0 && looked < self.depth {
            let Some(c) = order.next() else { break };
            looked += 1;
            // The prefix's jobs are recorded after the scan, only if it keeps a window.
            if keep && !numbered {
                seen.add(c.units, c.req_ms);
            }
            last = Some(c.at);
            if c.units > left
                || (self.limited && self.held(self.get(self.place(c.at, numbered)), Some(pass)))
            {
                continue;
            }
            let (shadow, extra) = plan.get_or_insert_with(|| self.shadow(now, free, need));
            let ends_in_time = now + c.req_ms <= *shadow;
            if !ends_in_time && c.units > *extra {
                continue;
            }
            if !ends_in_time {
                *extra -= c.units;
            }
            left -= c.units;
            if self.limited {
                pass.add(self.get(self.place(c.at, numbered)), true);
            }
            chosen.push(self.place(c.at, numbered));
        }
        let window = keep && chosen.is_empty();
        if window {
            if numbered {
                // The jobs looked at after the head: the prefix's next `looked`.
                for h in self.prefix.jobs.iter().rev().skip(1).take(looked) {
                    seen.add(h.units, h.req_ms);
                }
            }
            seen.need = need;
            seen.head_req_ms = head.req_ms;
            let (slot, idx) = self.place(head.at, numbered);
            seen.head = self.head(slot, idx);
            seen.full = looked == self.depth;
            seen.last = last.and_then(|at| {
                let (slot, idx) = self.place(at, numbered);
                self.head(slot, idx)
            });
        }
        window
    }

    /// Jobs behind a blocked head that EASY backfill starts now, removed from the queue (in
    /// priority order): at most `depth` jobs after the head are looked at, each started if it
    /// fits in the free units, its user and queue are within their limits (with what this pass
    /// started), and it ends before the shadow time or uses only units the head will not need.
    pub fn backfill(&mut self, now: u64, free: u32) -> Vec<BatchJob> {
        if self.mode != BatchMode::Easy || self.len < 2 || free == 0 {
            return Vec::new();
        }
        self.refresh(now);
        if let Some(w) = &self.window
            && !w.may_start(now, free, |need| self.shadow(now, free, need))
        {
            return Vec::new();
        }
        let mut pass = std::mem::take(&mut self.pass);
        pass.clear();
        // A window that may let a job start is replaced by what this scan looks at: its
        // buffer is reused.
        let mut seen = match self.window.take() {
            Some(w) => w,
            None => std::mem::take(&mut self.spare),
        };
        seen.jobs.clear();
        seen.least_units = u32::MAX;
        let mut chosen = std::mem::take(&mut self.chosen_buf);
        chosen.clear();
        let window = if self.uses_prefix() {
            // The kept prefix read directly: its entries carry what the scan reads.
            self.ensure_prefix();
            let this = &*self;
            let order = this.prefix.jobs.iter().rev().map(|h| Cand {
                at: (h.slot, h.idx),
                units: h.units,
                req_ms: h.req_ms,
            });
            let out = ScanInto {
                pass: &mut pass,
                seen: &mut seen,
                chosen: &mut chosen,
            };
            this.scan(order, true, now, free, out)
        } else {
            self.with_order(|q, order| {
                let order = order.map(|at| {
                    let j = q.get(at);
                    Cand {
                        at,
                        units: j.units,
                        req_ms: j.req_ms,
                    }
                });
                let out = ScanInto {
                    pass: &mut pass,
                    seen: &mut seen,
                    chosen: &mut chosen,
                };
                q.scan(order, false, now, free, out)
            })
        };
        self.pass = pass;
        if window {
            self.window = Some(seen);
        } else {
            self.keep_spare(seen);
        }
        let started = if chosen.is_empty() {
            Vec::new()
        } else {
            self.take(&chosen)
        };
        self.chosen_buf = chosen;
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::limits::{Limits, QueueLimit};

    fn job(id: u64, units: u32, req_s: u64) -> BatchJob {
        BatchJob {
            id,
            copy: 0,
            submit_ms: 0,
            run_ms: req_s * 1000,
            req_ms: req_s * 1000,
            procs: units,
            units,
            mem_proc_mib: None,
            mem_node_mib: None,
            sensitive: false,
            trace_start_ms: None,
            prestarted: false,
            account: 0,
            queue: None,
        }
    }

    /// A job of `account` holding `procs` starts (> 0) or ends (< 0) at `now`.
    fn charge(q: &mut BatchQueue, account: u64, procs: i64, now: u64) {
        let j = of(account, u64::MAX, procs.unsigned_abs() as u32, 1);
        if procs > 0 {
            q.started(&j, now);
        } else {
            q.ended(&j, now);
        }
    }

    fn limits(l: Limits) -> Resolved {
        l.resolve(&["q1".into(), "q2".into()]).unwrap()
    }

    fn max_jobs(n: u32) -> Resolved {
        limits(Limits {
            max_running_per_user: Some(n),
            ..Limits::default()
        })
    }

    fn fcfs(mode: BatchMode, depth: usize) -> BatchQueue {
        BatchQueue::new(mode, depth, QueueOrder::Fcfs, DEFAULT_PRIORITY)
    }

    fn of(account: u64, id: u64, units: u32, req_s: u64) -> BatchJob {
        BatchJob {
            account,
            ..job(id, units, req_s)
        }
    }

    /// Starts what the queue lets start at `now` on `free` units, as the engine does (the head
    /// while it fits, then backfill), charging each start; returns the ids started.
    fn pass(q: &mut BatchQueue, now: u64, mut free: u32) -> Vec<u64> {
        let mut started = Vec::new();
        while let Some(j) = q.pop_head(now, free) {
            free -= j.units;
            q.started(&j, now);
            started.push(j.id);
        }
        for j in q.backfill(now, free) {
            q.started(&j, now);
            started.push(j.id);
        }
        started
    }

    #[test]
    fn an_account_at_its_running_limit_is_held_and_blocks_no_one() {
        for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
            // 10 free units, one running job per account: account 1's first job starts,
            // its next two are held, account 2's job (submitted after them) starts.
            let mut q = BatchQueue::new(BatchMode::Easy, 100, order, DEFAULT_PRIORITY)
                .with_limits(max_jobs(1));
            q.submit(of(1, 1, 2, 100));
            q.submit(of(1, 2, 2, 100));
            q.submit(of(2, 3, 2, 100));
            q.submit(of(1, 4, 2, 100));
            let mut started = pass(&mut q, 0, 10);
            started.sort_unstable();
            assert_eq!(started, [1, 3], "{order:?}");
            assert_eq!(q.len(), 2);
            // Nothing else may start while job 1 runs, however many units are free.
            assert!(pass(&mut q, 10_000, 6).is_empty(), "{order:?}");
            // Job 1 ends: account 1's next (job 2) starts, job 4 still waits.
            charge(&mut q, 1, -2, 100_000);
            assert_eq!(pass(&mut q, 100_000, 8), [2], "{order:?}");
            assert_eq!(q.len(), 1);
        }
    }

    #[test]
    fn backfill_counts_the_jobs_it_starts_against_the_limit() {
        // Limit 2; account 1 runs one job. The head (account 2, 8 units) waits for a job
        // that holds 6 of 10 units until 100 s; account 1's three 1-unit short jobs would
        // all backfill into the 4 free units, but only one more may run.
        let mut q = fcfs(BatchMode::Easy, 100).with_limits(max_jobs(2));
        charge(&mut q, 1, 1, 0);
        q.track_start(100_000, 0, 6);
        q.submit(of(2, 10, 8, 50));
        q.submit(of(1, 11, 1, 50));
        q.submit(of(1, 12, 1, 50));
        q.submit(of(1, 13, 1, 50));
        q.submit(of(3, 14, 1, 50));
        assert!(q.pop_head(0, 3).is_none());
        let started: Vec<u64> = q.backfill(0, 3).iter().map(|j| j.id).collect();
        assert_eq!(started, [11, 14]);
        // Without a limit all four short jobs would be taken up to the 3 free units.
        let mut q = fcfs(BatchMode::Easy, 100);
        q.track_start(100_000, 0, 6);
        for j in [
            of(2, 10, 8, 50),
            of(1, 11, 1, 50),
            of(1, 12, 1, 50),
            of(1, 13, 1, 50),
        ] {
            q.submit(j);
        }
        let started: Vec<u64> = q.backfill(0, 3).iter().map(|j| j.id).collect();
        assert_eq!(started, [11, 12, 13]);
    }

    #[test]
    fn easy_backfills_short_jobs_and_jobs_that_use_spare_units_only() {
        // 10 units; a running job holds 6 until t=100 s; 4 are free.
        let mut q = fcfs(BatchMode::Easy, 100);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50)); // head: needs 8, shadow at 100 s, extra = 10 - 8 = 2
        q.submit(job(2, 3, 200)); // too long and more than extra: waits
        q.submit(job(3, 3, 90)); // ends before the shadow: backfilled
        q.submit(job(4, 1, 500)); // long but fits in extra (2): backfilled
        q.submit(job(5, 1, 500)); // fits in extra but free is 0 after 3 + 1
        assert!(q.pop_head(0, 4).is_none());
        let started: Vec<u64> = q.backfill(0, 4).iter().map(|j| j.id).collect();
        assert_eq!(started, [3, 4]);
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn backfill_depth_bounds_the_scan_and_replay_starts_whatever_fits() {
        let mut q = fcfs(BatchMode::Easy, 1);
        q.track_start(100_000, 0, 6);
        q.submit(job(1, 8, 50));
        q.submit(job(2, 5, 10)); // does not fit
        q.submit(job(3, 1, 10)); // would fit but is beyond depth 1
        assert!(q.backfill(0, 4).is_empty());

        let mut r = fcfs(BatchMode::Replay, 100);
        r.submit(job(1, 3, 10));
        r.submit(job(2, 5, 10));
        r.submit(job(3, 1, 10));
        let ids: Vec<u64> = r.replay_ready(4).iter().map(|j| j.id).collect();
        assert_eq!(
            ids,
            [1, 3],
            "job 2 waits for room, job 3 does not wait behind it"
        );
        assert_eq!(r.len(), 1);
    }

    const HALF_LIFE_MS: u64 = 100_000;

    #[test]
    fn a_light_users_job_passes_a_heavy_users_and_age_orders_within_a_user() {
        let params = PriorityParams {
            half_life_ms: HALF_LIFE_MS,
            ..DEFAULT_PRIORITY
        };
        let mut q = BatchQueue::new(BatchMode::Easy, 100, QueueOrder::Priority, params);
        let at = |id, account, submit_s: u64, units| BatchJob {
            account,
            submit_ms: submit_s * 1000,
            ..job(id, units, 10)
        };
        // Heavy (account 1) has run 4 cores since 0; its jobs 1 and 2 came at 0 and 10 s, the
        // light user's (account 2) job 3 at 50 s.
        q.submit(at(1, 1, 0, 4));
        q.submit(at(2, 1, 10, 4));
        q.submit(at(3, 2, 50, 4));
        charge(&mut q, 1, 4, 0);
        // At 100 s: F_1 = 2^(-1/(1/2)) = 1/4, F_2 = 1. Priorities: job 3 = 10,000 + 1,000 x
        // 50 s / 7 d; job 1 = 2,500 + 1,000 x 100 s / 7 d; job 2 = 2,500 + 1,000 x 90 s / 7 d.
        let week = 7.0 * 86_400.0;
        let p3 = q.priority(&at(3, 2, 50, 4), 100_000);
        assert!(
            (p3 - (10_000.0 + 1_000.0 * 50.0 / week)).abs() < 1e-9,
            "{p3}"
        );
        let p1 = q.priority(&at(1, 1, 0, 4), 100_000);
        assert!(
            (p1 - (2_500.0 + 1_000.0 * 100.0 / week)).abs() < 1e-9,
            "{p1}"
        );
        // The head is the light user's job although it came last.
        assert!(q.pop_head(100_000, 3).is_none(), "4 units do not fit in 3");
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_head(100_000, 4))
            .map(|j| j.id)
            .collect();
        assert_eq!(order, [3, 1, 2]);

        // The same jobs first come, first served.
        let mut f = fcfs(BatchMode::Easy, 100);
        for j in [at(1, 1, 0, 4), at(2, 1, 10, 4), at(3, 2, 50, 4)] {
            f.submit(j);
        }
        charge(&mut f, 1, 4, 0);
        let order: Vec<u64> = std::iter::from_fn(|| f.pop_head(100_000, 4))
            .map(|j| j.id)
            .collect();
        assert_eq!(order, [1, 2, 3]);
    }

    #[test]
    fn the_merge_of_the_accounts_queues_is_the_full_priority_sort() {
        // 400 jobs of 7 accounts with unequal usage, ages below and past max age: the merge
        // (with its runs of one account's jobs) gives the order a full sort by priority does.
        let params = PriorityParams {
            max_age_ms: 300_000,
            ..DEFAULT_PRIORITY
        };
        let mut q = BatchQueue::new(BatchMode::Easy, 1000, QueueOrder::Priority, params);
        let mut jobs = Vec::new();
        let mut x: u64 = 12345;
        for id in 0..400u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let account = (x >> 33) % 7;
            let j = BatchJob {
                account,
                submit_ms: id * 1_500,
                ..job(id, 1, 10)
            };
            q.submit(j);
            jobs.push(j);
        }
        for a in 0..7u64 {
            charge(&mut q, a, (a * a) as i64, 0);
        }
        let now = 600_000;
        let got: Vec<u64> = q
            .ordered(now, 1000)
            .into_iter()
            .map(|at| q.get(at).id)
            .collect();
        jobs.sort_by(|a, b| {
            q.priority(b, now)
                .total_cmp(&q.priority(a, now))
                .then((a.submit_ms, a.id).cmp(&(b.submit_ms, b.id)))
        });
        let want: Vec<u64> = jobs.iter().map(|j| j.id).collect();
        assert_eq!(got, want);
        assert_eq!(q.ordered(now, 10), q.ordered(now, 1000)[..10]);
    }

    #[test]
    fn backfill_follows_the_priority_order() {
        // 10 units, 6 held until 100 s. Heavy account 1 has the head (8 units) and a short
        // 3-unit job; the light account 2 a short 3-unit job submitted later. Only one of the
        // two short jobs fits (free 4): the light user's goes first.
        let mut q = BatchQueue::new(BatchMode::Easy, 100, QueueOrder::Priority, DEFAULT_PRIORITY);
        q.track_start(100_000, 0, 6);
        charge(&mut q, 1, 6, 0);
        let at = |id, account, submit_s: u64, units, req_s| BatchJob {
            account,
            submit_ms: submit_s * 1000,
            ..job(id, units, req_s)
        };
        q.submit(at(1, 2, 0, 8, 50));
        q.submit(at(2, 1, 0, 3, 50));
        q.submit(at(3, 2, 5, 3, 50));
        // Account 2 has used nothing: its jobs 1 (head, blocked) and 3 come before job 2.
        assert!(q.pop_head(10_000, 4).is_none());
        let started: Vec<u64> = q.backfill(10_000, 4).iter().map(|j| j.id).collect();
        assert_eq!(started, [3]);
        assert_eq!(q.len(), 2);
        let rest: Vec<u64> = q.take_all().iter().map(|j| j.id).collect();
        assert_eq!(rest, [1, 2]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_users_core_limit_holds_the_job_that_would_pass_it_and_not_a_smaller_one() {
        // Cores per user at most 6; 16 units free. Account 1: jobs of 4, 4 and 2 cores; account
        // 2: 6 cores. Job 1 starts (4), job 2 would make 8 > 6: held, blocks no one; job 3 (2)
        // makes 6: starts; account 2's job is its own user's 6 and starts (6 <= 16 - 6).
        for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
            let l = limits(Limits {
                max_cores_per_user: Some(6),
                ..Limits::default()
            });
            let mut q =
                BatchQueue::new(BatchMode::Easy, 100, order, DEFAULT_PRIORITY).with_limits(l);
            q.submit(of(1, 1, 4, 100));
            q.submit(of(1, 2, 4, 100));
            q.submit(of(1, 3, 2, 100));
            q.submit(of(2, 4, 6, 100));
            let mut started = pass(&mut q, 0, 16);
            started.sort_unstable();
            assert_eq!(started, [1, 3, 4], "{order:?}");
            // Job 1 ends: account 1 holds 2 cores, job 2 (4) makes 6: it starts.
            q.ended(&of(1, 1, 4, 100), 100_000);
            assert_eq!(pass(&mut q, 100_000, 4), [2], "{order:?}");
            assert!(q.is_empty());
        }
    }

    #[test]
    fn backfill_counts_the_cores_it_starts_against_user_and_queue_limits() {
        // 20 units, 12 held by a running job until 100 s; 8 free. The head (account 9, 16
        // units) waits for it. Behind it, short 2-core jobs: accounts 1 and 1 in q1, account
        // 2 in q1, account 3 in q2. Queue q1 may run 4 cores, a user 2 cores in q2... in q1:
        // job 11 (acct 1, q1) starts (q1: 2), job 12 (acct 1, q1) would make acct 1's q1 cores
        // 4 > 2: skipped, job 13 (acct 2, q1) makes q1 4: starts, job 14 (acct 3, q2) has no
        // q2 limit: starts.
        let l = limits(Limits {
            queues: vec![QueueLimit::parse("q1:cores=4,user-cores=2").unwrap()],
            ..Limits::default()
        });
        let mut q = fcfs(BatchMode::Easy, 100).with_limits(l);
        q.track_start(100_000, 0, 12);
        let inq = |account, id, queue| BatchJob {
            queue: Some(queue),
            ..of(account, id, 2, 50)
        };
        q.submit(of(9, 10, 16, 50));
        q.submit(inq(1, 11, 0));
        q.submit(inq(1, 12, 0));
        q.submit(inq(2, 13, 0));
        q.submit(inq(3, 14, 1));
        assert!(q.pop_head(0, 8).is_none());
        let started: Vec<u64> = q.backfill(0, 8).iter().map(|j| j.id).collect();
        assert_eq!(started, [11, 13, 14]);
        // They run: q1 is full (4 cores), so job 12 is held whatever is free, and a new q1
        // job of another user too; a queue-less job is not.
        for j in [inq(1, 11, 0), inq(2, 13, 0), inq(3, 14, 1)] {
            q.started(&j, 0);
        }
        q.submit(inq(4, 15, 0));
        q.submit(of(5, 16, 2, 50));
        let started: Vec<u64> = q.backfill(1_000, 2).iter().map(|j| j.id).collect();
        assert_eq!(started, [16]);
    }

    /// A small deterministic generator for the random tests.
    fn lcg(x: &mut u64) -> u64 {
        *x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *x >> 33
    }

    /// Random submissions, passes and ends on a `units`-unit machine; returns every start as
    /// `(now, id)` in order.
    fn random_schedule(q: BatchQueue, seed: u64, units: u32) -> Vec<(u64, u64)> {
        random_schedule_of(q, seed, units, 9, 3)
    }

    /// The same with `accounts` accounts and up to `burst - 1` submissions a step.
    fn random_schedule_of(
        mut q: BatchQueue,
        seed: u64,
        units: u32,
        accounts: u64,
        burst: u64,
    ) -> Vec<(u64, u64)> {
        let mut x = seed;
        let mut free = units;
        // (end, planned end, job), latest end first.
        let mut running: Vec<(u64, u64, BatchJob)> = Vec::new();
        let mut starts = Vec::new();
        let mut next_id = 0u64;
        for step in 0..1_200u64 {
            let now = step * 7_000;
            running.sort_by_key(|r| std::cmp::Reverse(r.0));
            while running.last().is_some_and(|r| r.0 <= now) {
                let (_, planned, j) = running.pop().expect("checked");
                q.track_end(planned, j.id as u32, j.units);
                q.ended(&j, now);
                free += j.units;
            }
            for _ in 0..lcg(&mut x) % burst {
                let units = [1, 1, 1, 2, 4, 8, 16, 40][(lcg(&mut x) % 8) as usize];
                let j = BatchJob {
                    account: lcg(&mut x) % accounts,
                    submit_ms: now,
                    queue: Some((lcg(&mut x) % 2) as u32),
                    ..job(next_id, units, 10 + lcg(&mut x) % 400)
                };
                next_id += 1;
                q.submit(j);
            }
            let mut go = Vec::new();
            while let Some(j) = q.pop_head(now, free) {
                free -= j.units;
                q.started(&j, now);
                go.push(j);
            }
            for j in q.backfill(now, free) {
                free -= j.units;
                q.started(&j, now);
                go.push(j);
            }
            for j in go {
                // Jobs run 30-100% of their time limit; the scheduler plans with the limit.
                let end = now + j.req_ms * (3 + lcg(&mut x) % 8) / 10;
                q.track_start(now + j.req_ms, j.id as u32, j.units);
                running.push((end, now + j.req_ms, j));
                starts.push((now, j.id));
            }
        }
        starts
    }

    #[test]
    fn the_indexed_pass_starts_exactly_what_the_textbook_pass_does() {
        let mut checked = 0;
        for seed in 1..=3u64 {
            for order in [QueueOrder::Fcfs, QueueOrder::Priority] {
                for l in [
                    Limits::default(),
                    Limits {
                        max_running_per_user: Some(3),
                        max_cores_per_user: Some(24),
                        queues: vec![QueueLimit::parse("q2:cores=30,user-cores=10").unwrap()],
                    },
                ] {
                    let params = PriorityParams {
                        calc_period_ms: [0, 60_000][(seed % 2) as usize],
                        half_life_ms: 3_600_000,
                        ..DEFAULT_PRIORITY
                    };
                    let q = || {
                        BatchQueue::new(BatchMode::Easy, 5 + seed as usize * 3, order, params)
                            .with_limits(limits(l.clone()))
                    };
                    let fast = random_schedule(q(), seed, 64);
                    let slow = random_schedule(q().straightforward(), seed, 64);
                    assert!(fast.len() > 300, "{} starts", fast.len());
                    assert_eq!(fast, slow, "seed {seed}, {order:?}, {l:?}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 12);
    }

    #[test]
    fn the_prefix_kept_between_passes_starts_what_the_textbook_pass_does() {
        // Shallow scans keep a short prefix, so submissions past it, bursts of a new account's
        // jobs and the trimming of the prefix's tail all happen often; 40 accounts.
        let mut compared = 0;
        for seed in 1..=4u64 {
            for depth in [1, 2, 4] {
                for calc_period_ms in [0, 60_000] {
                    let params = PriorityParams {
                        calc_period_ms,
                        half_life_ms: 3_600_000,
                        ..DEFAULT_PRIORITY
                    };
                    let q =
                        || BatchQueue::new(BatchMode::Easy, depth, QueueOrder::Priority, params);
                    let fast = random_schedule_of(q(), seed, 64, 40, 6);
                    let slow = random_schedule_of(q().straightforward(), seed, 64, 40, 6);
                    assert!(fast.len() > 300, "{} starts", fast.len());
                    assert_eq!(
                        fast, slow,
                        "seed {seed}, depth {depth}, {calc_period_ms} ms"
                    );
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 24);
    }
}
