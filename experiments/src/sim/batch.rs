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
//! units the head job will not need. With a limit of running jobs per account (Slurm's
//! `MaxJobs` of an association, `MaxJobsPerUser` of a QOS), an account at its limit is held:
//! none of its jobs is considered, as head or for backfill, until one of its jobs ends, and
//! it blocks no one. In replay mode a job enters the queue at the trace's own
//! start time and starts as soon as it fits (at once, when the trace fits the model).

use std::collections::{BTreeSet, VecDeque};

use harvest_policies::hash::IdMap;

use serde::{Deserialize, Serialize};

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

/// One account's usage: core-milliseconds, decayed, as of `since`, and the cores its
/// running jobs hold since then.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    core_ms: f64,
    cores: i64,
    since: u64,
}

impl Usage {
    /// Usage at `now`: the decayed past plus the running cores' integral, exactly
    /// (`dU/dt = cores - lambda U`).
    fn at(&self, now: u64, lambda: f64) -> f64 {
        let dt = now.saturating_sub(self.since) as f64;
        let cores = self.cores as f64;
        if lambda == 0.0 {
            return self.core_ms + cores * dt;
        }
        let d = (-lambda * dt).exp();
        self.core_ms * d + cores / lambda * (1.0 - d)
    }

    fn add(&mut self, now: u64, lambda: f64, cores: i64) {
        self.core_ms = self.at(now, lambda);
        self.since = now;
        self.cores += cores;
    }
}

/// Decayed usage by account, for the fair-share factor.
#[derive(Debug, Clone, Default)]
pub struct FairShare {
    lambda: f64,
    accounts: IdMap<u64, Usage>,
    total: Usage,
}

impl FairShare {
    pub fn new(half_life_ms: u64) -> Self {
        Self {
            lambda: if half_life_ms == 0 {
                0.0
            } else {
                std::f64::consts::LN_2 / half_life_ms as f64
            },
            ..Self::default()
        }
    }

    /// An account exists from its first job's submission (it has a share from then).
    pub fn open(&mut self, account: u64) {
        self.accounts.entry(account).or_default();
    }

    /// `cores` (negative: released) start or stop being used by `account` at `now`.
    pub fn charge(&mut self, account: u64, cores: i64, now: u64) {
        self.accounts
            .entry(account)
            .or_default()
            .add(now, self.lambda, cores);
        self.total.add(now, self.lambda, cores);
    }

    /// The account's decayed usage at `now`, core-seconds.
    pub fn usage_core_s(&self, account: u64, now: u64) -> f64 {
        self.accounts
            .get(&account)
            .map_or(0.0, |u| u.at(now, self.lambda) / 1000.0)
    }

    /// Slurm's classic fair-share factor `2^(-(U_a / U) / S_a)`, `S_a = 1 / accounts`.
    pub fn factor(&self, account: u64, now: u64) -> f64 {
        let total = self.total.at(now, self.lambda);
        if total <= 0.0 {
            return 1.0;
        }
        let used = self
            .accounts
            .get(&account)
            .map_or(0.0, |u| u.at(now, self.lambda));
        let share = 1.0 / self.accounts.len().max(1) as f64;
        (-(used / total).max(0.0) / share).exp2()
    }
}

/// A waiting job as the priority merge compares them: its account's slot and its index in
/// that account's queue.
#[derive(Debug, Clone, Copy)]
struct Head {
    priority: f64,
    submit_ms: u64,
    copy: u32,
    id: u64,
    key: u64,
    slot: u32,
    idx: usize,
}

impl Head {
    fn rank(&self) -> (u64, u32, u64, u64) {
        (self.submit_ms, self.copy, self.id, self.key)
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
    /// Higher priority first; ties by submit time, copy and id (earlier first).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .total_cmp(&other.priority)
            .then_with(|| other.rank().cmp(&self.rank()))
    }
}

/// A waiting job's place: its account's slot and its index in that account's queue.
type At = (u32, usize);

/// One account's waiting jobs (submit order) and its fair-share factor as of the
/// recalculation `epoch` (stale when that is not the current one).
#[derive(Debug, Default)]
struct Account {
    key: u64,
    jobs: VecDeque<BatchJob>,
    fairshare: f64,
    epoch: u64,
}

/// The waiting jobs and the planned ends of the running ones.
///
/// Waiting jobs are kept per account in submit order (one account under FCFS and replay), each
/// account in a slot of a dense table. Within an account the oldest job always has the
/// highest priority (same fair share, the largest age), so the queue's priority order is a
/// merge of the accounts' queues, led by the set of their first jobs: the first `depth + 1`
/// jobs cost `O(depth log accounts)` a pass at most (a run of one account's jobs that beat
/// every other account's next costs no heap operation), with no global re-sort.
#[derive(Debug)]
pub struct BatchQueue {
    pub mode: BatchMode,
    pub depth: usize,
    pub order: QueueOrder,
    pub params: PriorityParams,
    pub share: FairShare,
    slots: IdMap<u64, u32>,
    accounts: Vec<Account>,
    len: usize,
    /// Priority order: the last recalculation (its time and number), the accounts' first
    /// jobs (highest first), and the slots whose first job changed since the set was last
    /// brought up to date.
    calc_ms: Option<u64>,
    epoch: u64,
    heads: BTreeSet<std::cmp::Reverse<Head>>,
    stale: Vec<u32>,
    /// `(planned end, running slot, units)`.
    planned_ends: BTreeSet<(u64, u32, u32)>,
    /// The most jobs one account may run at once (`None`: no limit), and its running jobs.
    max_running: Option<u32>,
    running: IdMap<u64, u32>,
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
            len: 0,
            calc_ms: None,
            epoch: 0,
            heads: BTreeSet::new(),
            stale: Vec::new(),
            planned_ends: BTreeSet::new(),
            max_running: None,
            running: IdMap::default(),
        }
    }

    /// At most `max` running jobs per account (`None`: no limit). Replay ignores it.
    pub fn with_max_running(mut self, max: Option<u32>) -> Self {
        self.max_running = max;
        self
    }

    /// The account runs as many jobs as its limit allows (plus `more` started this pass).
    fn at_limit(&self, account: u64, more: u32) -> bool {
        self.max_running
            .is_some_and(|m| self.running.get(&account).copied().unwrap_or(0) + more >= m)
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
        if q.is_empty() && priority {
            self.stale.push(slot);
        }
        q.push_back(job);
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn track_start(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends.insert((planned_end_ms, slot, units));
    }

    pub fn track_end(&mut self, planned_end_ms: u64, slot: u32, units: u32) {
        self.planned_ends.remove(&(planned_end_ms, slot, units));
    }

    /// A job starts (`procs` > 0) or ends (< 0): its account's usage rate and its count of
    /// running jobs change.
    pub fn charge(&mut self, account: u64, procs: i64, now: u64) {
        if self.max_running.is_some() {
            let n = self.running.entry(account).or_insert(0);
            *n = if procs > 0 {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        }
        if self.order == QueueOrder::Priority {
            self.share.charge(account, procs, now);
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
        let j = a.jobs.get(idx)?;
        let fairshare = if a.epoch == self.epoch {
            a.fairshare
        } else {
            1.0
        };
        Some(Head {
            priority: self.priority_with(j, self.calc_ms.unwrap_or(0), fairshare),
            submit_ms: j.submit_ms,
            copy: j.copy,
            id: j.id,
            key: a.key,
            slot,
            idx,
        })
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
            let mut heads = BTreeSet::new();
            for slot in 0..self.accounts.len() {
                let a = &self.accounts[slot];
                if a.jobs.is_empty() {
                    continue;
                }
                let f = self.share.factor(a.key, now);
                let a = &mut self.accounts[slot];
                a.fairshare = f;
                a.epoch = self.epoch;
                if let Some(h) = self.head(slot as u32, 0) {
                    heads.insert(std::cmp::Reverse(h));
                }
            }
            self.heads = heads;
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
            if let Some(h) = self.head(slot, 0) {
                self.heads.insert(std::cmp::Reverse(h));
            }
        }
    }

    /// The first `limit` waiting jobs in the order the scheduler considers them: a merge of
    /// the accounts' queues, led by the set of their first jobs.
    fn ordered(&mut self, now: u64, limit: usize) -> Vec<At> {
        if self.order == QueueOrder::Fcfs {
            return match self.slots.get(&0) {
                Some(&slot) => {
                    let q = &self.accounts[slot as usize].jobs;
                    (0..q.len())
                        .filter(|&i| !self.at_limit(q[i].account, 0))
                        .take(limit)
                        .map(|i| (slot, i))
                        .collect()
                }
                None => Vec::new(),
            };
        }
        self.refresh(now);
        let mut firsts = self.heads.iter();
        let mut heap = std::collections::BinaryHeap::new();
        if let Some(std::cmp::Reverse(h)) = firsts.next() {
            heap.push(*h);
        }
        let mut out = Vec::with_capacity(limit.min(self.len));
        while out.len() < limit {
            let Some(mut h) = heap.pop() else { break };
            if self.at_limit(h.key, 0) {
                // Held at its limit: none of its jobs this pass (only its first was pushed).
                if let Some(std::cmp::Reverse(f)) = firsts.next() {
                    heap.push(*f);
                }
                continue;
            }
            // Take this account's jobs while its next one beats every other candidate.
            loop {
                out.push(h.at());
                if out.len() == limit {
                    break;
                }
                if h.idx == 0
                    && let Some(std::cmp::Reverse(f)) = firsts.next()
                {
                    heap.push(*f);
                }
                let Some(next) = self.head(h.slot, h.idx + 1) else {
                    break;
                };
                if heap.peek().is_some_and(|top| *top > next) {
                    heap.push(next);
                    break;
                }
                h = next;
            }
        }
        out
    }

    fn get(&self, (slot, idx): At) -> &BatchJob {
        &self.accounts[slot as usize].jobs[idx]
    }

    /// Removes the given jobs (each account's indices in any order); returns them in the
    /// order given.
    fn take(&mut self, at: Vec<At>) -> Vec<BatchJob> {
        let mut by_index: Vec<(u32, usize, usize)> = at
            .iter()
            .enumerate()
            .map(|(pos, &(slot, idx))| (slot, idx, pos))
            .collect();
        // Highest index first within an account, so earlier indices stay valid.
        by_index.sort_unstable_by(|a, b| (a.0, b.1).cmp(&(b.0, a.1)));
        let priority = self.order == QueueOrder::Priority;
        let mut touched: Vec<u32> = Vec::new();
        if priority {
            touched = by_index
                .iter()
                .filter(|&&(_, idx, _)| idx == 0)
                .map(|&(slot, _, _)| slot)
                .collect();
            for &slot in &touched {
                if let Some(h) = self.head(slot, 0) {
                    self.heads.remove(&std::cmp::Reverse(h));
                }
            }
        }
        let mut out: Vec<(usize, BatchJob)> = Vec::with_capacity(at.len());
        for (slot, idx, pos) in by_index {
            let q = &mut self.accounts[slot as usize].jobs;
            out.push((pos, q.remove(idx).expect("index in range")));
            self.len -= 1;
        }
        for slot in touched {
            if let Some(h) = self.head(slot, 0) {
                self.heads.insert(std::cmp::Reverse(h));
            }
        }
        out.sort_unstable_by_key(|&(pos, _)| pos);
        out.into_iter().map(|(_, j)| j).collect()
    }

    /// The head job (the highest priority), removed, if it may start now on `free` units.
    pub fn pop_head(&mut self, now: u64, free: u32) -> Option<BatchJob> {
        let first = *self.ordered(now, 1).first()?;
        if self.get(first).units > free {
            return None;
        }
        self.take(vec![first]).pop()
    }

    /// Every waiting job, removed (the end of a run).
    pub fn take_all(&mut self) -> Vec<BatchJob> {
        self.len = 0;
        self.heads.clear();
        self.stale.clear();
        let mut all: Vec<BatchJob> = self
            .accounts
            .iter_mut()
            .flat_map(|a| a.jobs.drain(..))
            .collect();
        all.sort_by_key(|j| (j.submit_ms, j.copy, j.id));
        all
    }

    /// Replay: every queued job that fits in `free`, in queue order, removed.
    pub fn replay_ready(&mut self, mut free: u32) -> Vec<BatchJob> {
        let Some(&slot) = self.slots.get(&0) else {
            return Vec::new();
        };
        let q = &mut self.accounts[slot as usize].jobs;
        let mut out = Vec::new();
        let mut i = 0;
        while i < q.len() && free > 0 {
            if q[i].units <= free {
                free -= q[i].units;
                out.push(q.remove(i).expect("index in range"));
            } else {
                i += 1;
            }
        }
        self.len -= out.len();
        out
    }

    /// Jobs behind a blocked head that EASY backfill starts now, removed from the queue (in
    /// priority order).
    pub fn backfill(&mut self, now: u64, mut free: u32) -> Vec<BatchJob> {
        if self.mode != BatchMode::Easy || self.len < 2 || free == 0 {
            return Vec::new();
        }
        let order = self.ordered(now, self.depth.saturating_add(1));
        let Some(&head) = order.first() else {
            return Vec::new();
        };
        let need = self.get(head).units;
        let mut avail = free;
        let mut shadow = u64::MAX;
        for &(end, _, units) in &self.planned_ends {
            avail += units;
            if avail >= need {
                shadow = end.max(now);
                break;
            }
        }
        let mut extra = avail.saturating_sub(need);
        let mut chosen = Vec::new();
        // Jobs chosen this pass per account, against its running-jobs limit.
        let mut more: IdMap<u64, u32> = IdMap::default();
        for &at in &order[1..] {
            if free == 0 {
                break;
            }
            let j = self.get(at);
            let ends_in_time = now + j.req_ms <= shadow;
            let held = self.max_running.is_some()
                && self.at_limit(j.account, more.get(&j.account).copied().unwrap_or(0));
            if j.units <= free && (ends_in_time || j.units <= extra) && !held {
                if !ends_in_time {
                    extra -= j.units;
                }
                free -= j.units;
                if self.max_running.is_some() {
                    *more.entry(j.account).or_insert(0) += 1;
                }
                chosen.push(at);
            }
        }
        self.take(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
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
            q.charge(j.account, i64::from(j.procs), now);
            started.push(j.id);
        }
        for j in q.backfill(now, free) {
            q.charge(j.account, i64::from(j.procs), now);
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
                .with_max_running(Some(1));
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
            q.charge(1, -2, 100_000);
            assert_eq!(pass(&mut q, 100_000, 8), [2], "{order:?}");
            assert_eq!(q.len(), 1);
        }
    }

    #[test]
    fn backfill_counts_the_jobs_it_starts_against_the_limit() {
        // Limit 2; account 1 runs one job. The head (account 2, 8 units) waits for a job
        // that holds 6 of 10 units until 100 s; account 1's three 1-unit short jobs would
        // all backfill into the 4 free units, but only one more may run.
        let mut q = fcfs(BatchMode::Easy, 100).with_max_running(Some(2));
        q.charge(1, 1, 0);
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
    fn usage_decays_with_the_half_life_exactly() {
        // 2 cores from 0 to 100 s with a 100 s half-life: U = 2/l (1 - 2^-1) = 100/ln 2
        // core-s at 100 s (l = ln 2 / 100 s), half of it 100 s later; without decay 200.
        let mut f = FairShare::new(HALF_LIFE_MS);
        f.charge(1, 2, 0);
        f.charge(1, -2, 100_000);
        let at100 = 100.0 / std::f64::consts::LN_2;
        assert!((f.usage_core_s(1, 100_000) - at100).abs() < 1e-6);
        assert!((f.usage_core_s(1, 200_000) - at100 / 2.0).abs() < 1e-6);
        let mut n = FairShare::new(0);
        n.charge(1, 2, 0);
        n.charge(1, -2, 100_000);
        assert_eq!(n.usage_core_s(1, 300_000), 200.0);
    }

    #[test]
    fn fair_share_factor_is_slurms_classic_one_and_it_decays() {
        // A used 2 cores 0-100 s, B 2 cores 100-200 s. At 200 s, U_A = U_B / 2 (one more
        // half-life), so U_A / U = 1/3 and U_B / U = 2/3; two accounts, S = 1/2:
        // F_A = 2^(-2/3), F_B = 2^(-4/3). The account that used the machine earlier has
        // decayed below the recent one.
        let mut f = FairShare::new(HALF_LIFE_MS);
        f.open(1);
        f.open(2);
        assert_eq!(f.factor(1, 0), 1.0, "nothing used: every account at 1");
        f.charge(1, 2, 0);
        f.charge(1, -2, 100_000);
        assert!(
            (f.factor(1, 100_000) - 0.25).abs() < 1e-12,
            "A: U_A/U = 1, S = 1/2"
        );
        assert_eq!(f.factor(2, 100_000), 1.0);
        f.charge(2, 2, 100_000);
        f.charge(2, -2, 200_000);
        assert!((f.factor(1, 200_000) - (-2.0f64 / 3.0).exp2()).abs() < 1e-9);
        assert!((f.factor(2, 200_000) - (-4.0f64 / 3.0).exp2()).abs() < 1e-9);
        // Without decay both used 200 core-s: F = 2^-1 each.
        let mut n = FairShare::new(0);
        n.open(1);
        n.open(2);
        n.charge(1, 2, 0);
        n.charge(1, -2, 100_000);
        n.charge(2, 2, 100_000);
        n.charge(2, -2, 200_000);
        assert!((n.factor(1, 200_000) - 0.5).abs() < 1e-12);
        assert!((n.factor(2, 200_000) - 0.5).abs() < 1e-12);
    }

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
        q.charge(1, 4, 0);
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
        f.charge(1, 4, 0);
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
            q.charge(a, (a * a) as i64, 0);
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
        q.charge(1, 6, 0);
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
}
