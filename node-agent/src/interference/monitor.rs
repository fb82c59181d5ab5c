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
use super::controller::{Actuator, Controller, Decision, LeaseActuator, LeaseControl};
use super::detector::{self, Context, Detector, Finding, ProbeJob, ProbeResult};
use super::settings::{InterferenceConfig, Mode};
use super::signals::{
    JobTarget, LeaseTarget, MIN_CPU_FOR_EFFICIENCY, Sample, Snapshot, Source, Target, Targets,
    names,
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

/// One node's interference monitor.
#[derive(Debug)]
pub struct Monitor {
    cfg: InterferenceConfig,
    node: String,
    normal_weight: u64,
    parts: Parts,
    detectors: Vec<Box<dyn Detector>>,
    controller: Controller,
    prev: Option<(Instant, Sample)>,
    /// What each lease group was last set to.
    applied: BTreeMap<String, LeaseControl>,
    /// Actions by level, plus probes and their frozen time.
    actions: BTreeMap<String, u64>,
    since_ms: u64,
}

impl Monitor {
    /// `lease_weight` is the CPU weight executors are started with (restored at `none`).
    pub fn new(cfg: InterferenceConfig, node: &str, lease_weight: u64, parts: Parts) -> Self {
        let detectors = detector::build(&cfg);
        let controller = Controller::new(&cfg, lease_weight);
        tracing::info!(node, ladder = ?controller.ladder(), detectors = ?cfg.detectors,
            mode = ?cfg.mode, period = ?cfg.period, "interference monitor started");
        Self {
            cfg,
            node: node.to_owned(),
            normal_weight: lease_weight,
            parts,
            detectors,
            controller,
            prev: None,
            applied: BTreeMap::new(),
            actions: BTreeMap::new(),
            since_ms: now_ms(SystemTime::now()),
        }
    }

    pub fn level(&self) -> Level {
        self.controller.level()
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
            if let Some(had) = self.applied.get(&lease.id)
                && *had != normal
                && let Err(e) = self.parts.actuator.set(lease, Some(*had), normal)
            {
                tracing::warn!(lease = %lease.id, error = %e, "could not restore the lease's control");
            }
        }
        self.applied.clear();
    }

    fn context(&self, targets: &Targets) -> Context {
        let level = self.level();
        let enforce = self.cfg.mode == Mode::Enforce;
        Context {
            jobs: targets.jobs.len(),
            leases: targets.leases.len(),
            executors_active: !targets.leases.is_empty() && (!enforce || level < Level::Freeze),
            level,
        }
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
        let ctx = self.context(&targets);
        let mut findings: Vec<(&'static str, Finding)> = self
            .detectors
            .iter_mut()
            .map(|d| (d.name(), d.observe(now, &snap, &ctx)))
            .collect();
        let probing = self.detectors.iter().any(|d| d.name() == "freeze-probe");
        if self.cfg.confirm_with_probe && probing && self.cfg.mode == Mode::Enforce {
            for (name, f) in &mut findings {
                if let Finding::Harm { reason, .. } = f
                    && *name != "freeze-probe"
                {
                    tracing::info!(detector = *name, %reason, "harm suspected; the freeze-probe confirms");
                    *f = Finding::Quiet;
                    for d in &mut self.detectors {
                        d.suspect(now);
                    }
                }
            }
        }
        let probe_wanted = self.detectors.iter().any(|d| d.wants_probe(now, &ctx));
        if probe_wanted && self.cfg.mode == Mode::Enforce {
            let result = self.probe(&targets).await;
            findings.extend(
                self.detectors
                    .iter_mut()
                    .map(|d| (d.name(), d.probed(now, &result))),
            );
        }
        for (d, f) in &findings {
            match f {
                Finding::Harm { reason, .. } => tracing::info!(detector = d, %reason, "harm found"),
                Finding::Blind(why) => tracing::debug!(detector = d, %why, "cannot judge"),
                _ => {}
            }
        }
        if let Some(decision) = self.controller.decide(now, &findings, targets.leases.len()) {
            self.decided(&decision, &snap);
            for d in &mut self.detectors {
                d.reset();
            }
        }
        if self.cfg.mode == Mode::Enforce {
            self.apply(&targets).await;
        }
        self.publish(&snap);
    }

    fn decided(&mut self, d: &Decision, snap: &Snapshot) {
        let signals: Vec<String> = snap
            .named()
            .iter()
            .filter(|(k, _)| !k.starts_with("gpu.") && !k.starts_with("mig."))
            .map(|(k, v)| format!("{k}={v:.3}"))
            .collect();
        let escalation = d.to > d.from;
        if self.cfg.mode == Mode::Observe {
            tracing::info!(node = %self.node, from = %d.from.describe(), would_be = %d.to.describe(),
                detector = %d.detector, reason = %d.reason, signals = %signals.join(" "),
                "interference (observe mode: nothing applied)");
            return;
        }
        tracing::info!(node = %self.node, from = %d.from.describe(), to = %d.to.describe(),
            detector = %d.detector, reason = %d.reason, signals = %signals.join(" "),
            "interference control level changed");
        let key = if escalation { d.to.name() } else { "relax" };
        *self.actions.entry(key.to_owned()).or_default() += 1;
        self.parts.stats.record_interference_action();
        self.since_ms = now_ms(SystemTime::now());
    }

    /// Brings every lease to the current level; at `evict`, ends them.
    async fn apply(&mut self, targets: &Targets) {
        self.applied
            .retain(|id, _| targets.leases.iter().any(|l| &l.id == id));
        let level = self.level();
        if level == Level::Evict {
            let (_, why) = self.controller.why();
            let reason = format!("evicted for interference: {why}");
            for lease in &targets.leases {
                // Thawed first, so the executor can take its SIGTERM.
                let _ = self.parts.actuator.thaw(lease);
                self.applied.remove(&lease.id);
                if self.parts.evictor.evict(&lease.id, reason.clone()).await {
                    tracing::warn!(lease = %lease.id, %reason, "lease evicted");
                    *self.actions.entry("evicted_leases".into()).or_default() += 1;
                }
            }
            return;
        }
        let want = LeaseControl::for_level(
            level,
            self.normal_weight,
            self.cfg.weight,
            self.controller.last_quota(),
        );
        for lease in &targets.leases {
            let had = self.applied.get(&lease.id).copied();
            if had == Some(want) {
                continue;
            }
            match self.parts.actuator.set(lease, had, want) {
                Ok(()) => {
                    self.applied.insert(lease.id.clone(), want);
                }
                Err(e) => tracing::warn!(lease = %lease.id, level = %level.describe(), error = %e,
                    "could not apply the interference control (the lease may have just ended)"),
            }
        }
    }

    /// Freezes the running executors for `probe_duration`, between two windows of the same
    /// length with them running, and compares each job's rates.
    async fn probe(&mut self, targets: &Targets) -> ProbeResult {
        let d = self.cfg.probe_duration;
        let sources = &mut self.parts.sources;
        let s0 = (Instant::now(), Sample::take(sources, targets));
        tokio::time::sleep(d).await;
        let s1 = (Instant::now(), Sample::take(sources, targets));
        let mut frozen = Vec::new();
        for lease in &targets.leases {
            if self.applied.get(&lease.id).is_some_and(|c| c.frozen) {
                continue;
            }
            match self.parts.actuator.freeze(lease) {
                Ok(()) => frozen.push(lease),
                Err(e) => {
                    tracing::warn!(lease = %lease.id, error = %e, "probe could not freeze a lease")
                }
            }
        }
        let t_frozen = Instant::now();
        let s2 = (t_frozen, Sample::take(sources, targets));
        tokio::time::sleep(d).await;
        let s3 = (Instant::now(), Sample::take(sources, targets));
        for lease in &frozen {
            if let Err(e) = self.parts.actuator.thaw(lease) {
                tracing::warn!(lease = %lease.id, error = %e, "probe could not thaw a lease");
            }
        }
        let frozen_for = t_frozen.elapsed();
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
            for signal in [
                names::EFFICIENCY,
                names::PROGRESS,
                names::INSTRUCTIONS,
                names::CPU,
            ] {
                let (Some(on1), Some(off), Some(on2)) = (
                    rate(&s0, &s1, &t, signal),
                    rate(&s2, &s3, &t, signal),
                    rate(&s3, &s4, &t, signal),
                ) else {
                    continue;
                };
                let p = ProbeJob {
                    job_id: job.job_id,
                    signal,
                    rate_on: (on1 + on2) / 2.0,
                    rate_off: off,
                };
                tracing::info!(node = %self.node, job = job.job_id, signal, rate_on = p.rate_on,
                    rate_off = p.rate_off, slowdown_pct = p.slowdown_pct().unwrap_or(f64::NAN),
                    frozen_ms = frozen_for.as_millis() as u64, leases = frozen.len(), "freeze-probe");
                jobs.push(p);
                break;
            }
        }
        *self.actions.entry("probes".into()).or_default() += 1;
        *self.actions.entry("probe_frozen_ms".into()).or_default() +=
            u64::try_from(frozen_for.as_millis()).unwrap_or(u64::MAX);
        ProbeResult {
            jobs,
            frozen: frozen_for,
        }
    }

    fn publish(&self, snap: &Snapshot) {
        let observe = self.cfg.mode == Mode::Observe;
        let level = self.level();
        let (detector, why) = self.controller.why();
        let reason = match (observe, level) {
            (_, Level::None) => String::new(),
            (true, l) => format!("observe mode, would be {}: {why}", l.describe()),
            (false, Level::Quota(p)) => format!("quota {p}%: {why}"),
            (false, _) => why.to_owned(),
        };
        let wire = if observe { Level::None } else { level };
        let state = v1::InterferenceState {
            level: v1::InterferenceLevel::from(wire).into(),
            detector: detector.to_owned(),
            reason,
            since_unix_ms: i64::try_from(self.since_ms).unwrap_or(i64::MAX),
            unavailable: snap.unavailable.clone(),
            signals: snap.named().into_iter().collect(),
            actions: self.actions.clone().into_iter().collect(),
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
