//! The escalation ladder and what each level does to the lease groups.
//!
//! [`Controller`] climbs one step per harm finding (two quota steps for a severe one; findings
//! within `settle` of a change are ignored: the signals lag), and relaxes one step after `hold`
//! without harm or suspicion of it. A relaxation that brings harm back is a failed one: the
//! ladder climbs again at once and the hold doubles (up to `max_hold`);
//! `evict_after_failed_relaxes` failed relaxations from `freeze` in a row evict the leases. After
//! an eviction the level stays `evict` for `evict_hold` (the scheduler places nothing here
//! meanwhile), then returns to `none`. Without leases the level is `none` (a frozen lease that
//! ended needs no control).
//!
//! [`LeaseControl`] is what one level means for one lease group; an [`Actuator`] applies the
//! difference ([`LeaseActuator`]: the lease tasks write their own groups).

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::Level;
use super::detector::Finding;
use super::settings::InterferenceConfig;
use super::signals::LeaseTarget;
use crate::leases::{Control, LeaseMessage, LeaseSupervisor};

/// A level change.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub from: Level,
    pub to: Level,
    /// The detector whose finding caused it ("controller" for relaxations).
    pub detector: String,
    pub reason: String,
}

/// The ladder and where the node stands on it.
#[derive(Debug)]
pub struct Controller {
    ladder: Vec<Level>,
    idx: usize,
    changed_at: Option<Instant>,
    last_harm: Option<Instant>,
    /// The latest unconfirmed suspicion of harm (it holds off relaxation).
    last_suspect: Option<Instant>,
    /// The level last relaxed from, and when.
    relaxed_from: Option<usize>,
    failed_relaxes: u32,
    hold: Duration,
    base_hold: Duration,
    max_hold: Duration,
    settle: Duration,
    evict_after: u32,
    evict_hold: Duration,
    detector: String,
    reason: String,
}

impl Controller {
    /// The ladder: none, weight (only when it lowers the leases' weight), each quota step,
    /// freeze, evict.
    pub fn new(cfg: &InterferenceConfig, lease_weight: u64) -> Self {
        let mut ladder = vec![Level::None];
        if cfg.weight < lease_weight {
            ladder.push(Level::Weight);
        }
        ladder.extend(cfg.quota_pct.iter().map(|&p| Level::Quota(p)));
        ladder.extend([Level::Freeze, Level::Evict]);
        Self {
            ladder,
            idx: 0,
            changed_at: None,
            last_harm: None,
            last_suspect: None,
            relaxed_from: None,
            failed_relaxes: 0,
            hold: cfg.relax_after,
            base_hold: cfg.relax_after,
            max_hold: cfg.max_hold,
            settle: cfg.settle,
            evict_after: cfg.evict_after_failed_relaxes,
            evict_hold: cfg.evict_hold,
            detector: String::new(),
            reason: String::new(),
        }
    }

    pub fn ladder(&self) -> &[Level] {
        &self.ladder
    }

    pub fn level(&self) -> Level {
        self.ladder[self.idx]
    }

    /// The detector and reason of the latest escalation (empty at `none`).
    pub fn why(&self) -> (&str, &str) {
        (&self.detector, &self.reason)
    }

    /// The hold now in force (it doubles after each failed relaxation).
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// The quota of the lowest quota step (kept while frozen, so a thaw does not burst).
    pub fn last_quota(&self) -> Option<u32> {
        self.ladder.iter().rev().find_map(|l| match l {
            Level::Quota(p) => Some(*p),
            _ => None,
        })
    }

    fn index_of(&self, level: Level) -> usize {
        self.ladder
            .iter()
            .position(|l| *l == level)
            .unwrap_or(self.ladder.len() - 1)
    }

    fn change(&mut self, now: Instant, to: usize, detector: &str, reason: String) -> Decision {
        let from = self.level();
        self.idx = to;
        self.changed_at = Some(now);
        if to == 0 {
            self.detector.clear();
            self.reason.clear();
        } else if detector != "controller" {
            self.detector = detector.to_owned();
            self.reason = reason.clone();
        }
        Decision {
            from,
            to: self.level(),
            detector: detector.to_owned(),
            reason,
        }
    }

    /// Starts at `level` (remembered from an earlier lease beside the same job) instead of at
    /// `none`; a level not on the ladder starts at the highest step below it.
    pub fn start_at(&mut self, now: Instant, level: Level, reason: String) -> Option<Decision> {
        let to = self
            .ladder
            .iter()
            .rposition(|l| l.severity() <= level.severity())
            .unwrap_or(0);
        (to != self.idx && self.ladder[to] < Level::Evict)
            .then(|| self.change(now, to, "memory", reason))
    }

    /// One period's findings; returns the level change, if any.
    pub fn decide(
        &mut self,
        now: Instant,
        findings: &[(&'static str, Finding)],
        leases: usize,
    ) -> Option<Decision> {
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        if leases == 0 {
            if self.level() == Level::Evict && since(self.changed_at) < Some(self.evict_hold) {
                return None;
            }
            self.relaxed_from = None;
            self.failed_relaxes = 0;
            self.hold = self.base_hold;
            return (self.idx != 0)
                .then(|| self.change(now, 0, "controller", "no executors run on the node".into()));
        }
        let settled = since(self.changed_at).is_none_or(|d| d >= self.settle);
        let harm = findings.iter().find_map(|(d, f)| match f {
            Finding::Harm { reason, severe, .. } => Some((*d, reason.clone(), *severe)),
            _ => None,
        });
        if findings
            .iter()
            .any(|(_, f)| matches!(f, Finding::Suspect(_)))
        {
            self.last_suspect = Some(now);
        }
        let level = self.level();
        if let Some((detector, reason, severe)) = harm
            && settled
            && level < Level::Freeze
        {
            self.last_harm = Some(now);
            let mut to = self.idx + 1;
            let failed_relax = self.relaxed_from == Some(self.idx + 1);
            // Severe harm skips a quota step, never past the last one (freezing takes a harm
            // finding at that step); a failed relaxation goes back to the level it left.
            let last_quota = self
                .ladder
                .iter()
                .rposition(|l| matches!(l, Level::Quota(_)));
            if severe
                && !failed_relax
                && let Some(last) = last_quota
            {
                to = to.max((self.idx + 2).min(last));
            }
            let mut why = reason;
            if failed_relax {
                self.hold = (self.hold * 2).min(self.max_hold);
                if self.ladder[self.idx + 1] == Level::Freeze {
                    self.failed_relaxes += 1;
                    if self.failed_relaxes >= self.evict_after {
                        to = self.index_of(Level::Evict);
                        why = format!(
                            "{why}; {} relaxations from freeze failed in a row",
                            self.failed_relaxes
                        );
                    }
                }
                tracing::info!(hold = ?self.hold, failed_relaxes = self.failed_relaxes,
                    "relaxation brought harm back; holding longer");
            }
            self.relaxed_from = None;
            return Some(self.change(now, to, detector, why));
        }
        if self.idx == 0 {
            return None;
        }
        let quiet = since(self.changed_at.max(self.last_harm).max(self.last_suspect))
            .unwrap_or(Duration::MAX);
        if level == Level::Evict {
            // The lease's own ladder after its eviction: after the hold, start over.
            return (quiet >= self.evict_hold).then(|| {
                self.failed_relaxes = 0;
                self.hold = self.base_hold;
                self.change(now, 0, "controller", "eviction hold over".into())
            });
        }
        if quiet < self.hold {
            return None;
        }
        if let Some(from) = self.relaxed_from
            && from == self.idx + 1
        {
            // The previous relaxation held for a full hold: it succeeded.
            self.hold = (self.hold / 2).max(self.base_hold);
            self.failed_relaxes = 0;
        }
        self.relaxed_from = Some(self.idx);
        let to = self.idx - 1;
        let reason = format!("no harm for {quiet:?} at {}", level.describe());
        Some(self.change(now, to, "controller", reason))
    }
}

/// What a level means for one lease group (applied by the lease's own task).
pub use crate::leases::control::{LeaseControl, QUOTA_PERIOD_US, quota_for};

impl LeaseControl {
    /// The control of `level`: each level keeps the ones below it.
    pub fn for_level(
        level: Level,
        normal_weight: u64,
        floor_weight: u64,
        freeze_quota: Option<u32>,
    ) -> Self {
        let low = normal_weight.min(floor_weight);
        match level {
            Level::None => Self::normal(normal_weight),
            Level::Weight => Self {
                weight: low,
                ..Self::normal(normal_weight)
            },
            Level::Quota(p) => Self {
                weight: low,
                quota_pct: Some(p),
                frozen: false,
            },
            Level::Freeze | Level::Evict => Self {
                weight: low,
                quota_pct: freeze_quota,
                frozen: true,
            },
        }
    }
}

/// An actuator that could not apply a control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActuatorError {
    #[error(transparent)]
    Send(#[from] crate::leases::SendError),
    #[error("{0}")]
    Other(String),
}

/// Applies lease controls.
pub trait Actuator: Send + fmt::Debug {
    /// Brings `lease` from `from` (`None`: unknown, apply every part) to `to`.
    fn set(
        &mut self,
        lease: &LeaseTarget,
        from: Option<LeaseControl>,
        to: LeaseControl,
    ) -> Result<(), ActuatorError>;
    /// Pauses a lease for a probe (its CPU quota at the floor, see
    /// [`crate::leases::control::PROBE_QUOTA`]), and ends that pause.
    fn pause(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError>;
    fn resume(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError>;
    /// Thaws a lease group (a lease frozen by its level, before it is evicted).
    fn thaw(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError>;
}

/// Sends the controls to the lease tasks, each of which applies them to its own group
/// ([`crate::leases::control::apply`]): the controller never writes a lease's cgroup itself.
#[derive(Debug)]
pub struct LeaseActuator {
    pub leases: LeaseSupervisor,
}

impl LeaseActuator {
    fn send(&self, lease: &LeaseTarget, c: Control) -> Result<(), ActuatorError> {
        Ok(self.leases.try_send(&lease.id, LeaseMessage::Control(c))?)
    }
}

impl Actuator for LeaseActuator {
    fn set(
        &mut self,
        lease: &LeaseTarget,
        from: Option<LeaseControl>,
        to: LeaseControl,
    ) -> Result<(), ActuatorError> {
        self.send(lease, Control::Set { from, to })
    }

    fn pause(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        self.send(lease, Control::ProbePause)
    }

    fn resume(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        self.send(lease, Control::ProbeResume)
    }

    fn thaw(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        self.send(lease, Control::Thaw)
    }
}
