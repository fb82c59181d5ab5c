//! Fakes for every part of the monitor: recorded signal series, a source that is missing, a
//! model job whose progress depends on what the controller does to its neighbour, targets in a
//! table, and an actuator and evictor that record.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::controller::{Actuator, ActuatorError, LeaseControl};
use super::monitor::{Evictor, TargetFinder};
use super::settings::InterferenceConfig;
use super::signals::{Collector, JobTarget, Kind, LeaseTarget, Source, Target, Targets};

/// One reading of a recorded tick.
pub type Rec = (Target, &'static str, Kind, f64);

/// Plays back one recorded tick per read; the last tick repeats once the series runs out.
#[derive(Debug)]
pub struct Recorded {
    pub series: VecDeque<Vec<Rec>>,
    last: Vec<Rec>,
}

impl Recorded {
    pub fn new(series: Vec<Vec<Rec>>) -> Self {
        Self {
            series: series.into(),
            last: Vec::new(),
        }
    }
}

impl Source for Recorded {
    fn name(&self) -> &'static str {
        "recorded"
    }
    fn read(&mut self, _targets: &Targets, out: &mut Collector) {
        if let Some(tick) = self.series.pop_front() {
            self.last = tick;
        }
        for (t, s, k, v) in &self.last {
            match k {
                Kind::Counter => out.counter(t.clone(), s, *v),
                Kind::Gauge => out.gauge(t.clone(), s, *v),
            }
        }
    }
}

/// A source this node does not have.
#[derive(Debug)]
pub struct Missing(pub &'static str);

impl Source for Missing {
    fn name(&self) -> &'static str {
        "missing"
    }
    fn read(&mut self, _targets: &Targets, out: &mut Collector) {
        out.unavailable(self.0);
    }
}

/// The node's jobs and leases, in a table tests change.
#[derive(Debug, Clone, Default)]
pub struct FakeTargets(pub Arc<Mutex<Targets>>);

impl FakeTargets {
    pub fn with(jobs: &[u32], leases: &[&str]) -> Self {
        let t = Self::default();
        for &j in jobs {
            t.add_job(j);
        }
        for l in leases {
            t.add_lease(l);
        }
        t
    }
    pub fn add_job(&self, job: u32) {
        self.0.lock().unwrap().jobs.push(JobTarget {
            job_id: job,
            uid: Some(1000),
            group: PathBuf::from(format!("slurm_n1/uid_1000/job_{job}")),
            cpus: [0].into_iter().collect(),
            gpus: Vec::new(),
        });
    }
    pub fn add_lease(&self, id: &str) {
        self.add_lease_of(id, 1001);
    }
    /// A lease of the user `uid`.
    pub fn add_lease_of(&self, id: &str, uid: u32) {
        self.0.lock().unwrap().leases.push(LeaseTarget {
            id: id.to_owned(),
            uid,
            group: PathBuf::from(format!("harvest_n1/lease_{id}")),
            cores: 1,
        });
    }
    pub fn remove_lease(&self, id: &str) {
        self.0.lock().unwrap().leases.retain(|l| l.id != id);
    }
}

impl TargetFinder for FakeTargets {
    fn targets(&self) -> Targets {
        self.0.lock().unwrap().clone()
    }
}

/// Short probes (15 ms, 5 ms settle), a generous budget and short holds, so a scenario of
/// tens of periods runs in a few seconds of real time.
pub fn probe_cfg() -> InterferenceConfig {
    InterferenceConfig {
        detectors: vec!["freeze-probe".into()],
        probe_duration: std::time::Duration::from_millis(15),
        probe_settle: std::time::Duration::from_millis(5),
        probe_budget_pct: 50,
        probe_interval: std::time::Duration::from_secs(1),
        settle: std::time::Duration::from_secs(1),
        relax_after: std::time::Duration::from_secs(4),
        max_hold: std::time::Duration::from_secs(64),
        ..InterferenceConfig::default()
    }
}

/// What the fake actuator did.
#[derive(Debug, Default)]
pub struct ActState {
    /// The control of each lease now (set by its level).
    pub controls: BTreeMap<String, LeaseControl>,
    /// Whether a probe holds each lease paused now.
    pub probe_paused: BTreeMap<String, bool>,
    pub log: Vec<String>,
}

/// Records every control it is asked to apply.
#[derive(Debug, Clone, Default)]
pub struct FakeActuator(pub Arc<Mutex<ActState>>);

impl FakeActuator {
    pub fn control(&self, id: &str) -> Option<LeaseControl> {
        self.0.lock().unwrap().controls.get(id).copied()
    }
    /// Whether `id` runs now (not frozen by the level nor paused by a probe).
    pub fn running(&self, id: &str) -> bool {
        let st = self.0.lock().unwrap();
        !st.controls.get(id).is_some_and(|c| c.frozen)
            && !st.probe_paused.get(id).copied().unwrap_or(false)
    }
}

impl Actuator for FakeActuator {
    fn set(
        &mut self,
        lease: &LeaseTarget,
        from: Option<LeaseControl>,
        to: LeaseControl,
    ) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("set {} {from:?} -> {to:?}", lease.id));
        st.controls.insert(lease.id.clone(), to);
        Ok(())
    }
    fn pause(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("probe-pause {}", lease.id));
        st.probe_paused.insert(lease.id.clone(), true);
        Ok(())
    }
    fn resume(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("probe-resume {}", lease.id));
        st.probe_paused.insert(lease.id.clone(), false);
        Ok(())
    }
    fn thaw(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("thaw {}", lease.id));
        if let Some(c) = st.controls.get_mut(&lease.id) {
            c.frozen = false;
        }
        Ok(())
    }
}

/// Records evictions and removes the lease from the targets, as `Executors::finish` does.
#[derive(Debug, Clone, Default)]
pub struct FakeEvictor {
    pub evicted: Arc<Mutex<Vec<(String, String)>>>,
    pub targets: FakeTargets,
}

impl Evictor for FakeEvictor {
    fn evict<'a>(
        &'a self,
        lease_id: &'a str,
        reason: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + 'a>> {
        self.evicted
            .lock()
            .unwrap()
            .push((lease_id.to_owned(), reason));
        self.targets.remove_lease(lease_id);
        Box::pin(async { true })
    }
}

/// A batch job whose progress rate is `base` per second alone and drops by each lease's `harm`
/// (a fraction) while that lease runs unrestricted, by `harm * quota` under a quota, and not at
/// all while it is frozen: what a memory-bandwidth-bound job beside bandwidth hogs looks like.
/// `noise` (a fraction) shakes the rate of every read, from a fixed seed.
#[derive(Debug)]
pub struct ModelJob {
    pub job: u32,
    pub harms: Vec<(String, f64)>,
    pub base: f64,
    pub noise: f64,
    pub actuator: FakeActuator,
    pub progress: f64,
    pub last: Option<std::time::Instant>,
    seed: u64,
}

impl ModelJob {
    /// Job `job` at `base` units per second, hurt by `harms` (lease id, fraction).
    pub fn new(job: u32, base: f64, harms: &[(&str, f64)], actuator: &FakeActuator) -> Self {
        Self {
            job,
            harms: harms.iter().map(|(l, h)| ((*l).to_owned(), *h)).collect(),
            base,
            noise: 0.0,
            actuator: actuator.clone(),
            progress: 0.0,
            last: None,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The rate with the leases of `present` as the actuator has them now.
    pub fn rate(&self, present: &[&str]) -> f64 {
        let st = self.actuator.0.lock().unwrap();
        let mut rate = self.base;
        for (lease, harm) in &self.harms {
            if !present.contains(&lease.as_str()) {
                continue;
            }
            let frozen = st.controls.get(lease).is_some_and(|c| c.frozen)
                || st.probe_paused.get(lease).copied().unwrap_or(false);
            let share = match st.controls.get(lease).and_then(|c| c.quota_pct) {
                _ if frozen => 0.0,
                Some(p) => f64::from(p) / 100.0,
                None => 1.0,
            };
            rate -= self.base * harm * share;
        }
        rate
    }

    /// A uniform draw in [-1, 1) (xorshift).
    fn shake(&mut self) -> f64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

impl Source for ModelJob {
    fn name(&self) -> &'static str {
        "model"
    }
    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        let now = std::time::Instant::now();
        let present: Vec<&str> = targets.leases.iter().map(|l| l.id.as_str()).collect();
        if let Some(last) = self.last {
            let shake = if self.noise > 0.0 {
                1.0 + self.noise * self.shake()
            } else {
                1.0
            };
            let rate = self.rate(&present) * shake;
            self.progress += rate * now.duration_since(last).as_secs_f64();
        }
        self.last = Some(now);
        out.counter(
            Target::Job(self.job),
            super::signals::names::PROGRESS,
            self.progress,
        );
    }
}

/// Records when it was read (a probe's reads included).
#[derive(Debug, Default, Clone)]
pub struct ReadClock(pub Arc<Mutex<Vec<std::time::Instant>>>);

impl Source for ReadClock {
    fn name(&self) -> &'static str {
        "read-clock"
    }
    fn read(&mut self, _targets: &Targets, _out: &mut Collector) {
        self.0.lock().unwrap().push(std::time::Instant::now());
    }
}

/// Counters that grow by a fixed step at every read (a probe's reads included), the CPU step
/// changeable: a job whose progress per CPU-second never changes, whatever CPU share it gets.
#[derive(Debug)]
pub struct PerRead {
    pub job: u32,
    pub progress_step: f64,
    pub cpu_step: Arc<Mutex<f64>>,
    pub progress: f64,
    pub cpu: f64,
}

impl Source for PerRead {
    fn name(&self) -> &'static str {
        "per-read"
    }
    fn read(&mut self, _targets: &Targets, out: &mut Collector) {
        self.progress += self.progress_step;
        self.cpu += *self.cpu_step.lock().unwrap();
        out.counter(
            Target::Job(self.job),
            super::signals::names::PROGRESS,
            self.progress,
        );
        out.counter(Target::Job(self.job), super::signals::names::CPU, self.cpu);
    }
}
