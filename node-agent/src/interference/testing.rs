//! Fakes for every part of the monitor: recorded signal series, a source that is missing, a
//! model job whose progress depends on what the controller does to its neighbour, targets in a
//! table, and an actuator and evictor that record.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::controller::{Actuator, ActuatorError, LeaseControl};
use super::monitor::{Evictor, TargetFinder};
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
        self.0.lock().unwrap().leases.push(LeaseTarget {
            id: id.to_owned(),
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

/// What the fake actuator did.
#[derive(Debug, Default)]
pub struct ActState {
    /// The control of each lease now (probe freezes included).
    pub controls: BTreeMap<String, LeaseControl>,
    pub probe_frozen: BTreeMap<String, bool>,
    pub log: Vec<String>,
}

/// Records every control it is asked to apply.
#[derive(Debug, Clone, Default)]
pub struct FakeActuator(pub Arc<Mutex<ActState>>);

impl FakeActuator {
    pub fn control(&self, id: &str) -> Option<LeaseControl> {
        self.0.lock().unwrap().controls.get(id).copied()
    }
    /// Whether `id` runs now (not frozen by the level nor by a probe).
    pub fn running(&self, id: &str) -> bool {
        let st = self.0.lock().unwrap();
        !st.controls.get(id).is_some_and(|c| c.frozen)
            && !st.probe_frozen.get(id).copied().unwrap_or(false)
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
    fn freeze(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("probe-freeze {}", lease.id));
        st.probe_frozen.insert(lease.id.clone(), true);
        Ok(())
    }
    fn thaw(&mut self, lease: &LeaseTarget) -> Result<(), ActuatorError> {
        let mut st = self.0.lock().unwrap();
        st.log.push(format!("thaw {}", lease.id));
        st.probe_frozen.insert(lease.id.clone(), false);
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

/// A batch job whose progress rate is `base` per second alone and drops by `harm` (a fraction)
/// while lease `lease` runs unrestricted, by `harm * quota` under a quota, and not at all while
/// it is frozen: what a memory-bandwidth-bound job beside a bandwidth hog looks like.
#[derive(Debug)]
pub struct ModelJob {
    pub job: u32,
    pub lease: String,
    pub base: f64,
    pub harm: f64,
    pub actuator: FakeActuator,
    pub progress: f64,
    pub last: Option<std::time::Instant>,
}

impl ModelJob {
    pub fn rate(&self) -> f64 {
        let st = self.actuator.0.lock().unwrap();
        let frozen = st.controls.get(&self.lease).is_some_and(|c| c.frozen)
            || st.probe_frozen.get(&self.lease).copied().unwrap_or(false);
        let share = match st.controls.get(&self.lease).and_then(|c| c.quota_pct) {
            _ if frozen => 0.0,
            Some(p) => f64::from(p) / 100.0,
            None => 1.0,
        };
        self.base * (1.0 - self.harm * share)
    }
}

impl Source for ModelJob {
    fn name(&self) -> &'static str {
        "model"
    }
    fn read(&mut self, targets: &Targets, out: &mut Collector) {
        let now = std::time::Instant::now();
        let lease_here = targets.leases.iter().any(|l| l.id == self.lease);
        if let Some(last) = self.last {
            let rate = if lease_here { self.rate() } else { self.base };
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
