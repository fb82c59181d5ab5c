//! The monitor task: every period, sample → detect → (probe) → decide → act → publish.
//!
//! [`Monitor::tick_at`] is one step, driven by the loop in [`Monitor::run`] and by tests with
//! fakes for every part ([`TargetFinder`], sources, [`Actuator`], [`Evictor`]). Every decision
//! is logged with the signal values behind it, counted in [`NodeStats`], and published as the
//! node's `InterferenceState`, which the scheduler session sends with every slot report.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use harvest_proto::v1::{self, EndCause};
use tokio::time::Instant;

use super::Level;
use super::attribution::{JobMemory, Judgement, Verdict};
use super::controller::{Actuator, Controller, Decision, LeaseActuator, LeaseControl};
use super::detector::{self, Context, Detector, Finding, FreezeProbe, ProbeJob, ProbeResult};
use super::settings::{InterferenceConfig, Mode};
use super::signals::{
    JobTarget, LeaseTarget, MIN_CPU_FOR_EFFICIENCY, MIN_CPU_FOR_PROBE, Sample, Snapshot, Source,
    Target, Targets, names,
};
use super::sources::{
    CgroupSignals, GpuSignals, NvmlTelemetry, PerfSignals, PressureSignals, ProgressSignals,
};
use crate::agent::now_ms;
use crate::cgroup::Cgroups;
use crate::leases::LeaseSupervisor;
use crate::ledger_task::LedgerHandle;
use crate::slurm::SlurmView;
use crate::stats::NodeStats;

/// Finds the jobs and leases to watch.
pub trait TargetFinder: Send + fmt::Debug {
    fn targets(&self) -> Targets;
}

/// Ends a lease for interference.
pub trait Evictor: Send + Sync + fmt::Debug {
    fn evict<'a>(
        &'a self,
        lease_id: &'a str,
        reason: String,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

impl Evictor for LeaseSupervisor {
    fn evict<'a>(
        &'a self,
        lease_id: &'a str,
        reason: String,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(self.end(lease_id, reason, EndCause::Interference))
    }
}

/// The jobs from Slurm's cgroup tree and the leases with a ready executor from the ledger.
#[derive(Debug)]
pub struct AgentTargets {
    pub ledger: LedgerHandle,
    pub cgroups: Arc<dyn Cgroups>,
    pub node: String,
    /// Where lease groups live (`<parent>/lease_<id>`).
    pub lease_parent: PathBuf,
    /// The node's lendable GPU units (a job's steps name GPUs; its units are what it holds).
    pub gpu_units: Vec<crate::discover::GpuUnit>,
}

impl TargetFinder for AgentTargets {
    fn targets(&self) -> Targets {
        let snap = self.ledger.snapshot();
        let jobs = match SlurmView::new(self.cgroups.as_ref(), &self.node).jobs() {
            Ok(jobs) => jobs
                .into_iter()
                .map(|j| JobTarget {
                    gpus: snap
                        .ledger
                        .jobs
                        .get(&j.job_id)
                        .map(|r| r.gpu_units(&self.gpu_units).into_iter().collect())
                        .unwrap_or_default(),
                    job_id: j.job_id,
                    uid: j.uid,
                    group: j.group,
                    cpus: j.cpus,
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "interference: cannot read the jobs' cgroups");
                Vec::new()
            }
        };
        let leases = snap
            .ledger
            .leases
            .iter()
            .filter(|(id, _)| snap.is_ready(id))
            .map(|(id, l)| LeaseTarget {
                id: id.clone(),
                uid: l.uid,
                group: self.lease_parent.join(format!("lease_{id}")),
                cores: u32::try_from(l.cpus.len()).unwrap_or(u32::MAX),
            })
            .collect();
        Targets { jobs, leases }
    }
}

/// The parts a monitor is made of.
#[derive(Debug)]
pub struct Parts {
    pub sources: Vec<Box<dyn Source>>,
    pub targets: Box<dyn TargetFinder>,
    pub actuator: Box<dyn Actuator>,
    pub evictor: Arc<dyn Evictor>,
    pub stats: Arc<NodeStats>,
}

/// One lease's watch: its own freeze-probe, ladder and control.
#[derive(Debug)]
struct LeaseWatch {
    uid: u32,
    probe: Option<FreezeProbe>,
    controller: Controller,
    /// What its group was last set to.
    applied: Option<LeaseControl>,
}

/// One node's interference monitor.
#[derive(Debug)]
pub struct Monitor {
    cfg: InterferenceConfig,
    node: String,
    normal_weight: u64,
    parts: Parts,
    /// The node-wide detectors (`threshold`): they see the jobs, not which lease hurts them.
    detectors: Vec<Box<dyn Detector>>,
    /// Whether each lease gets its own freeze-probe (`freeze-probe` among the detectors).
    probing: bool,
    leases: BTreeMap<String, LeaseWatch>,
    memory: JobMemory,
    /// After an eviction the node stays at `evict` (no placements) until then: the detector and
    /// reason of the eviction.
    evict_hold: Option<(Instant, String, String)>,
    /// The node's level at the latest tick: the highest lease level, or `evict` while an
    /// eviction holds.
    level: Level,
    prev: Option<(Instant, Sample)>,
    /// Actions by level, plus probes and their frozen time.
    actions: BTreeMap<String, u64>,
    since_ms: u64,
}

impl Monitor {
    /// `lease_weight` is the CPU weight executors are started with (restored at `none`).
    pub fn new(cfg: InterferenceConfig, node: &str, lease_weight: u64, parts: Parts) -> Self {
        let detectors: Vec<_> = detector::build(&cfg)
            .into_iter()
            .filter(|d| d.name() != "freeze-probe")
            .collect();
        let probing = cfg.detectors.iter().any(|d| d == "freeze-probe");
        let ladder = Controller::new(&cfg, lease_weight).ladder().to_vec();
        tracing::info!(node, ?ladder, detectors = ?cfg.detectors, mode = ?cfg.mode,
            period = ?cfg.period, "interference monitor started (per-lease attribution)");
        Self {
            memory: JobMemory::new(cfg.memory_ttl),
            cfg,
            node: node.to_owned(),
            normal_weight: lease_weight,
            parts,
            detectors,
            probing,
            leases: BTreeMap::new(),
            evict_hold: None,
            level: Level::None,
            prev: None,
            actions: BTreeMap::new(),
            since_ms: now_ms(SystemTime::now()),
        }
    }

    /// The node's level: the highest of its leases', or `evict` while an eviction holds.
    pub fn level(&self) -> Level {
        self.level
    }

    /// One lease's level (`None` for a lease it does not watch).
    pub fn lease_level(&self, lease: &str) -> Option<Level> {
        self.leases.get(lease).map(|w| w.controller.level())
    }

    /// What one lease's probes say.
    pub fn judgement(&self, lease: &str) -> Option<Judgement> {
        self.leases
            .get(lease)
            .and_then(|w| w.probe.as_ref())
            .map(FreezeProbe::judgement)
    }

    /// Runs until `shutdown` resolves; then every lease gets its normal control back.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.cfg.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.tick_at(Instant::now()).await,
            }
        }
        self.restore();
    }

    /// Gives every lease it controls its normal weight, no cap, thawed.
    pub fn restore(&mut self) {
        let targets = self.parts.targets.targets();
        let normal = LeaseControl::normal(self.normal_weight);
        for lease in &targets.leases {
            if let Some(had) = self.leases.get(&lease.id).and_then(|w| w.applied)
                && had != normal
                && let Err(e) = self.parts.actuator.set(lease, Some(had), normal)
            {
                tracing::warn!(lease = %lease.id, error = %e, "could not restore the lease's control");
            }
        }
        self.leases.clear();
    }

    fn enforce(&self) -> bool {
        self.cfg.mode == Mode::Enforce
    }

    /// The node as the node-wide detectors see it.
    fn context(&self, targets: &Targets) -> Context {
        let enforce = self.enforce();
        Context {
            jobs: targets.jobs.len(),
            leases: targets.leases.len(),
            executors_active: self
                .leases
                .values()
                .any(|w| !enforce || w.controller.level() < Level::Freeze),
            level: self.level,
        }
    }

    /// One lease as its own probe sees it.
    fn lease_context(&self, jobs: usize, w: &LeaseWatch) -> Context {
        let level = w.controller.level();
        Context {
            jobs,
            leases: 1,
            executors_active: !self.enforce() || level < Level::Freeze,
            level,
        }
    }

    /// Watches the leases that appeared (at the level remembered for their owner beside these
    /// jobs, if any) and forgets those that ended.
    fn sync(&mut self, now: Instant, targets: &Targets, snap: &Snapshot) {
        self.leases
            .retain(|id, _| targets.leases.iter().any(|l| &l.id == id));
        let jobs: Vec<u32> = targets.jobs.iter().map(|j| j.job_id).collect();
        self.memory.prune(&jobs, now);
        for lease in &targets.leases {
            if self.leases.contains_key(&lease.id) {
                continue;
            }
            let mut controller = Controller::new(&self.cfg, self.normal_weight);
            let start = self
                .memory
                .recall(&jobs, lease.uid, now)
                .and_then(|(level, job)| {
                    let why = format!(
                        "uid {}'s lease beside job {job} was held within the threshold at {} \
                     (remembered); lease {} starts there",
                        lease.uid,
                        level.describe(),
                        lease.id
                    );
                    controller.start_at(now, level, why)
                });
            self.leases.insert(
                lease.id.clone(),
                LeaseWatch {
                    uid: lease.uid,
                    probe: self.probing.then(|| FreezeProbe::new(&self.cfg)),
                    controller,
                    applied: None,
                },
            );
            if let Some(d) = start {
                self.decided(&lease.id, &d, snap);
            }
        }
    }

    /// The lease to probe now: of those whose probe is due, the one probed longest ago.
    fn due_probe(&self, now: Instant, jobs: usize) -> Option<String> {
        self.leases
            .iter()
            .filter_map(|(id, w)| {
                let p = w.probe.as_ref()?;
                p.wants_probe(now, &self.lease_context(jobs, w))
                    .then(|| (p.last_probe(), id))
            })
            .min()
            .map(|(_, id)| id.clone())
    }

    /// One period at `now`.
    pub async fn tick_at(&mut self, now: Instant) {
        let targets = self.parts.targets.targets();
        let sample = Sample::take(&mut self.parts.sources, &targets);
        let snap = match &self.prev {
            Some((t, prev)) => Snapshot::between(prev, &sample, now.saturating_duration_since(*t)),
            None => Snapshot {
                unavailable: sample.unavailable.clone(),
                ..Snapshot::default()
            },
        };
        self.prev = Some((now, sample));
        self.sync(now, &targets, &snap);
        let ctx = self.context(&targets);
        let jobs = targets.jobs.len();
        let mut node_findings: Vec<(&'static str, Finding)> = self
            .detectors
            .iter_mut()
            .map(|d| (d.name(), d.observe(now, &snap, &ctx)))
            .collect();
        let lease_ctx: Vec<(String, Context)> = self
            .leases
            .iter()
            .map(|(id, w)| (id.clone(), self.lease_context(jobs, w)))
            .collect();
        for (id, c) in &lease_ctx {
            if let Some(p) = self.leases.get_mut(id).and_then(|w| w.probe.as_mut()) {
                p.observe(now, &snap, c);
            }
        }
        if self.cfg.confirm_with_probe && self.probing && self.enforce() {
            for (name, f) in &mut node_findings {
                if let Finding::Harm { reason, .. } = f {
                    tracing::info!(detector = *name, %reason,
                        "harm suspected; each lease's freeze-probe confirms or clears it");
                    *f = Finding::Quiet;
                    for w in self.leases.values_mut() {
                        if let Some(p) = &mut w.probe {
                            p.suspect(now);
                        }
                    }
                }
            }
        }
        let mut probed: Option<(String, Finding)> = None;
        if self.enforce()
            && let Some(id) = self.due_probe(now, jobs)
        {
            let (result, alone) = self.probe(&targets, &id).await;
            if alone {
                // The job ran with no executor at all: the node-wide detectors learn from it.
                for d in &mut self.detectors {
                    d.probed(now, &result);
                }
            }
            if let Some(p) = self.leases.get_mut(&id).and_then(|w| w.probe.as_mut()) {
                probed = Some((id, p.probed(now, &result)));
            }
        }
        let probe_finding = probed.as_ref().map(|(_, f)| ("freeze-probe", f.clone()));
        for (d, f) in node_findings.iter().chain(probe_finding.iter()) {
            match f {
                Finding::Harm { reason, .. } => tracing::info!(detector = d, %reason, "harm found"),
                Finding::Blind(why) => tracing::debug!(detector = d, %why, "cannot judge"),
                _ => {}
            }
        }
        let ids: Vec<String> = self.leases.keys().cloned().collect();
        for id in ids {
            let mut findings: Vec<(&'static str, Finding)> = node_findings
                .iter()
                .filter(|(_, f)| matches!(f, Finding::Harm { .. } | Finding::Suspect(_)))
                .cloned()
                .collect();
            let own = probed
                .as_ref()
                .filter(|(p, _)| *p == id)
                .map(|(_, f)| f.clone());
            if let Some(f) = &own {
                findings.push(("freeze-probe", f.clone()));
            }
            let w = self.leases.get_mut(&id).expect("listed above");
            let decision = w.controller.decide(now, &findings, 1);
            let level = w.controller.level();
            let uid = w.uid;
            let judged = w.probe.as_ref().map(FreezeProbe::judgement);
            if let (Some(Finding::Clear), Some(job)) = (&own, judged.and_then(|j| j.job)) {
                // Clear at a throttled level: that level holds this owner's lease beside this
                // job; clear at none: nothing to remember.
                if level > Level::None && level < Level::Freeze {
                    self.memory.remember(job, uid, level, now);
                } else if level == Level::None {
                    self.memory.forget(job, uid);
                }
            }
            if let Some(d) = decision {
                self.decided(&id, &d, &snap);
                if let Some(p) = self.leases.get_mut(&id).and_then(|w| w.probe.as_mut()) {
                    p.reset();
                }
                for d in &mut self.detectors {
                    d.reset();
                }
            }
        }
        if self.enforce() {
            self.apply(now, &targets).await;
        }
        self.level = self.node_level(now);
        self.publish(&snap);
    }

    fn node_level(&self, now: Instant) -> Level {
        if self
            .evict_hold
            .as_ref()
            .is_some_and(|(until, ..)| now < *until)
        {
            return Level::Evict;
        }
        self.leases
            .values()
            .map(|w| w.controller.level())
            .max_by_key(|l| l.severity())
            .unwrap_or(Level::None)
    }

    fn decided(&mut self, lease: &str, d: &Decision, snap: &Snapshot) {
        let signals: Vec<String> = snap
            .named()
            .iter()
            .filter(|(k, _)| !k.starts_with("gpu.") && !k.starts_with("mig."))
            .map(|(k, v)| format!("{k}={v:.3}"))
            .collect();
        let escalation = d.to.severity() > d.from.severity();
        let verdict = self
            .leases
            .get(lease)
            .and_then(|w| w.probe.as_ref())
            .map(|p| p.judgement().describe())
            .unwrap_or_default();
        if !self.enforce() {
            tracing::info!(node = %self.node, lease, from = %d.from.describe(),
                would_be = %d.to.describe(), detector = %d.detector, reason = %d.reason,
                signals = %signals.join(" "), "interference (observe mode: nothing applied)");
            return;
        }
        tracing::info!(node = %self.node, lease, from = %d.from.describe(), to = %d.to.describe(),
            detector = %d.detector, reason = %d.reason, %verdict, signals = %signals.join(" "),
            "interference control level changed");
        let key = if escalation { d.to.name() } else { "relax" };
        *self.actions.entry(key.to_owned()).or_default() += 1;
        self.parts.stats.record_interference_action();
        self.since_ms = now_ms(SystemTime::now());
    }

    /// Brings every lease to its level; a lease at `evict` is ended.
    async fn apply(&mut self, now: Instant, targets: &Targets) {
        for lease in &targets.leases {
            let Some(w) = self.leases.get_mut(&lease.id) else {
                continue;
            };
            let level = w.controller.level();
            if level == Level::Evict {
                let (detector, why) = w.controller.why();
                let (detector, why) = (detector.to_owned(), why.to_owned());
                let reason = format!("evicted for interference: {why}");
                // Thawed first, so the executor can take its SIGTERM.
                let _ = self.parts.actuator.thaw(lease);
                w.applied = None;
                if self.parts.evictor.evict(&lease.id, reason.clone()).await {
                    tracing::warn!(lease = %lease.id, %reason, "lease evicted");
                    *self.actions.entry("evicted_leases".into()).or_default() += 1;
                }
                self.evict_hold = Some((now + self.cfg.evict_hold, detector, why));
                continue;
            }
            let want = LeaseControl::for_level(
                level,
                self.normal_weight,
                self.cfg.weight,
                w.controller.last_quota(),
            );
            if w.applied == Some(want) {
                continue;
            }
            match self.parts.actuator.set(lease, w.applied, want) {
                Ok(()) => w.applied = Some(want),
                Err(e) => tracing::warn!(lease = %lease.id, level = %level.describe(), error = %e,
                    "could not apply the interference control (the lease may have just ended)"),
            }
        }
    }

    /// Pauses lease `id` alone for `probe_duration` (its CPU quota at the floor), between two
    /// windows of the same length with it running (the last one `probe_settle` after the pause
    /// ends: a paused function bursts),
    /// and compares each job's rates. Also says whether no other lease ran meanwhile.
    async fn probe(&mut self, targets: &Targets, id: &str) -> (ProbeResult, bool) {
        let d = self.cfg.probe_duration;
        let settle = self.cfg.probe_settle;
        let alone = targets.leases.iter().all(|l| {
            l.id == id
                || self
                    .leases
                    .get(&l.id)
                    .and_then(|w| w.applied)
                    .is_some_and(|c| c.frozen)
        });
        let lease = targets.leases.iter().find(|l| l.id == id);
        let sources = &mut self.parts.sources;
        let s0 = (Instant::now(), Sample::take(sources, targets));
        tokio::time::sleep(d).await;
        let s1 = (Instant::now(), Sample::take(sources, targets));
        let already = self
            .leases
            .get(id)
            .and_then(|w| w.applied)
            .is_some_and(|c| c.frozen);
        let mut frozen = None;
        if let Some(lease) = lease
            && !already
        {
            match self.parts.actuator.pause(lease) {
                Ok(()) => frozen = Some(lease),
                Err(e) => {
                    tracing::warn!(lease = %lease.id, error = %e, "probe could not pause a lease")
                }
            }
        }
        let t_frozen = Instant::now();
        let s2 = (t_frozen, Sample::take(sources, targets));
        tokio::time::sleep(d).await;
        let s3 = (Instant::now(), Sample::take(sources, targets));
        if let Some(lease) = frozen
            && let Err(e) = self.parts.actuator.resume(lease)
        {
            tracing::warn!(lease = %lease.id, error = %e, "probe could not end a lease's pause");
        }
        let frozen_for = t_frozen.elapsed();
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        let s3b = (Instant::now(), Sample::take(sources, targets));
        tokio::time::sleep(d).await;
        let s4 = (Instant::now(), Sample::take(sources, targets));
        let delta = |a: &(Instant, Sample), b: &(Instant, Sample), t: &Target, s| {
            let (x, y) = (a.1.get(t, s)?, b.1.get(t, s)?);
            (y >= x).then_some(y - x)
        };
        let rate = |a: &(Instant, Sample), b: &(Instant, Sample), t: &Target, s| {
            let dt = b.0.saturating_duration_since(a.0).as_secs_f64();
            if dt <= 0.0 {
                return None;
            }
            if s == names::EFFICIENCY {
                let cpu = delta(a, b, t, names::CPU)?;
                let progress = delta(a, b, t, names::PROGRESS)?;
                return (cpu / dt > MIN_CPU_FOR_EFFICIENCY).then(|| progress / cpu);
            }
            delta(a, b, t, s).map(|d| d / dt)
        };
        let mut jobs = Vec::new();
        for job in &targets.jobs {
            let t = Target::Job(job.job_id);
            // A job that used next to no CPU in every window was idle (asleep, on I/O): its CPU
            // time and instructions are noise, which read as harm as easily as not.
            let idle = [(&s0, &s1), (&s2, &s3), (&s3b, &s4)]
                .iter()
                .all(|(a, b)| rate(a, b, &t, names::CPU).is_some_and(|c| c < MIN_CPU_FOR_PROBE));
            for signal in [
                names::EFFICIENCY,
                names::PROGRESS,
                names::INSTRUCTIONS,
                names::CPU,
            ] {
                if idle && (signal == names::CPU || signal == names::INSTRUCTIONS) {
                    continue;
                }
                let (Some(on1), Some(off), Some(on2)) = (
                    rate(&s0, &s1, &t, signal),
                    rate(&s2, &s3, &t, signal),
                    rate(&s3b, &s4, &t, signal),
                ) else {
                    continue;
                };
                let p = ProbeJob {
                    job_id: job.job_id,
                    signal,
                    rate_on: (on1 + on2) / 2.0,
                    rate_off: off,
                };
                tracing::info!(node = %self.node, lease = id, job = job.job_id, signal,
                    rate_on = p.rate_on, rate_off = p.rate_off,
                    slowdown_pct = p.slowdown_pct().unwrap_or(f64::NAN),
                    paused_ms = frozen_for.as_millis() as u64, others_running = !alone,
                    "freeze-probe");
                jobs.push(p);
                break;
            }
        }
        *self.actions.entry("probes".into()).or_default() += 1;
        // The key predates the pause by quota (probes used the freezer): kept for dashboards.
        *self.actions.entry("probe_frozen_ms".into()).or_default() +=
            u64::try_from(frozen_for.as_millis()).unwrap_or(u64::MAX);
        (
            ProbeResult {
                jobs,
                frozen: frozen_for,
            },
            alone,
        )
    }

    fn publish(&self, snap: &Snapshot) {
        let observe = !self.enforce();
        let level = self.level;
        // The worst lease speaks for the node; an eviction's hold for itself.
        let worst = self
            .leases
            .values()
            .max_by_key(|w| w.controller.level().severity())
            .filter(|w| w.controller.level() > Level::None);
        let (detector, why) = match (&self.evict_hold, worst) {
            (Some((_, d, r)), _) if level == Level::Evict => (d.clone(), r.clone()),
            (_, Some(w)) => {
                let (d, r) = w.controller.why();
                (d.to_owned(), r.to_owned())
            }
            _ => (String::new(), String::new()),
        };
        let reason = match (observe, level) {
            (_, Level::None) => String::new(),
            (true, l) => format!("observe mode, would be {}: {why}", l.describe()),
            (false, Level::Quota(p)) => format!("quota {p}%: {why}"),
            (false, _) => why,
        };
        let wire = if observe { Level::None } else { level };
        let leases = self
            .leases
            .iter()
            .map(|(id, w)| {
                let l = w.controller.level();
                let j = w
                    .probe
                    .as_ref()
                    .map(FreezeProbe::judgement)
                    .unwrap_or_else(|| Judgement::pending(0.0));
                let shown = if observe { Level::None } else { l };
                v1::LeaseInterference {
                    lease_id: id.clone(),
                    level: v1::InterferenceLevel::from(shown).into(),
                    quota_pct: match (shown, w.controller.last_quota()) {
                        (Level::Quota(p), _) => p,
                        (Level::Freeze | Level::Evict, Some(p)) => p,
                        _ => 0,
                    },
                    // A lease held back for harm is a culprit, whatever its probes read at
                    // the level that holds it (harmless there, as a rule): the figures below
                    // are that level's.
                    verdict: if l > Level::None {
                        Verdict::Culprit.name().to_owned()
                    } else {
                        j.verdict.name().to_owned()
                    },
                    job_id: j.job.unwrap_or(0),
                    harm_pct: j.mean_pct,
                    harm_se_pct: j.se_pct,
                    probes: u32::try_from(j.probes).unwrap_or(u32::MAX),
                    confidence: j.confidence,
                    reason: if l == Level::None {
                        String::new()
                    } else {
                        w.controller.why().1.to_owned()
                    },
                }
            })
            .collect();
        let state = v1::InterferenceState {
            level: v1::InterferenceLevel::from(wire).into(),
            detector,
            reason,
            since_unix_ms: i64::try_from(self.since_ms).unwrap_or(i64::MAX),
            unavailable: snap.unavailable.clone(),
            signals: snap.named().into_iter().collect(),
            actions: self.actions.clone().into_iter().collect(),
            leases,
        };
        self.parts.stats.set_interference(Some(state));
    }
}

/// What harvestd needs to start its monitor.
#[derive(Debug)]
pub struct Setup {
    pub cfg: InterferenceConfig,
    pub node: String,
    pub run_dir: PathBuf,
    pub proc_root: PathBuf,
    pub lease_weight: u64,
    pub lease_parent: PathBuf,
    /// The node's lendable GPU units (which physical GPU a job's unit is on).
    pub gpu_units: Vec<crate::discover::GpuUnit>,
}

/// The monitor over the real sources, the ledger's jobs and leases, and the lease tasks (which
/// apply its controls to their own groups); `None` when interference control is disabled (the
/// published state stays empty).
pub fn start(
    setup: Setup,
    ledger: LedgerHandle,
    leases: LeaseSupervisor,
    cgroups: Arc<dyn Cgroups>,
    stats: Arc<NodeStats>,
) -> Option<Monitor> {
    if !setup.cfg.enabled {
        tracing::info!("interference monitoring is disabled ([interference] enabled = false)");
        stats.set_interference(None);
        return None;
    }
    let progress = ProgressSignals {
        dir: setup.cfg.progress_dir(&setup.run_dir),
    };
    if let Err(e) = progress.prepare() {
        tracing::warn!(dir = %progress.dir.display(), error = %e,
            "cannot prepare the progress directory; jobs cannot report progress");
    }
    let sources: Vec<Box<dyn Source>> = vec![
        Box::new(CgroupSignals {
            cgroups: cgroups.clone(),
            proc_root: setup.proc_root.clone(),
        }),
        Box::new(PressureSignals {
            cgroups: cgroups.clone(),
            proc_root: setup.proc_root,
        }),
        Box::new(progress),
        Box::new(PerfSignals::new(setup.cfg.sysfs_root.clone())),
        Box::new(GpuSignals {
            telemetry: Box::new(NvmlTelemetry::new()),
            units: setup.gpu_units.clone(),
        }),
    ];
    let parts = Parts {
        sources,
        targets: Box::new(AgentTargets {
            ledger,
            cgroups,
            node: setup.node.clone(),
            lease_parent: setup.lease_parent,
            gpu_units: setup.gpu_units,
        }),
        actuator: Box::new(LeaseActuator {
            leases: leases.clone(),
        }),
        evictor: Arc::new(leases),
        stats,
    };
    Some(Monitor::new(
        setup.cfg,
        &setup.node,
        setup.lease_weight,
        parts,
    ))
}
