//! Attribution scenarios: several leases beside one job, each judged and controlled on its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Level;
use super::attribution::Verdict;
use super::controller::LeaseControl;
use super::detector::{Detector, Finding, FreezeProbe, ProbeJob, ProbeResult};
use super::monitor::{Monitor, Parts};
use super::settings::InterferenceConfig;
use super::signals::{Source, names};
use super::testing::{FakeActuator, FakeEvictor, FakeTargets, ModelJob, ReadClock, probe_cfg};
use crate::stats::NodeStats;

const PERIOD: Duration = Duration::from_secs(1);

struct Rig {
    monitor: Monitor,
    act: FakeActuator,
    targets: FakeTargets,
    stats: Arc<NodeStats>,
}

/// Job 7 beside leases `(id, uid, harm)`.
fn rig(cfg: InterferenceConfig, leases: &[(&str, u32, f64)], extra: Vec<Box<dyn Source>>) -> Rig {
    let targets = FakeTargets::with(&[7], &[]);
    for (id, uid, _) in leases {
        targets.add_lease_of(id, *uid);
    }
    let act = FakeActuator::default();
    let harms: Vec<(&str, f64)> = leases.iter().map(|(id, _, h)| (*id, *h)).collect();
    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(ModelJob::new(7, 1000.0, &harms, &act))];
    sources.extend(extra);
    let stats = Arc::new(NodeStats::default());
    let parts = Parts {
        sources,
        targets: Box::new(targets.clone()),
        actuator: Box::new(act.clone()),
        evictor: Arc::new(FakeEvictor {
            targets: targets.clone(),
            ..FakeEvictor::default()
        }),
        stats: stats.clone(),
    };
    Rig {
        monitor: Monitor::new(cfg, "n1", 1, parts),
        act,
        targets,
        stats,
    }
}

/// Whether the actuator ever capped or froze `lease` for its level (probes aside).
fn ever_throttled(act: &FakeActuator, lease: &str) -> bool {
    act.0.lock().unwrap().log.iter().any(|l| {
        l.starts_with(&format!("set {lease} "))
            && l.rsplit("->")
                .next()
                .is_some_and(|to| to.contains("quota_pct: Some") || to.contains("frozen: true"))
    })
}

#[tokio::test]
async fn the_thrasher_alone_is_throttled_and_the_harmless_leases_keep_full_speed() {
    // A bandwidth thrasher (15% harm at full speed) of one user, a compute-bound lease and a
    // sleeping one (no harm) of two others.
    let mut r = rig(
        probe_cfg(),
        &[("T", 1001, 0.15), ("C", 1002, 0.0), ("S", 1003, 0.0)],
        Vec::new(),
    );
    let t0 = Instant::now();
    let mut levels = Vec::new();
    for i in 0..40u32 {
        r.monitor.tick_at(t0 + PERIOD * i).await;
        levels.push((
            r.monitor.lease_level("T").unwrap(),
            r.monitor.lease_level("C").unwrap(),
            r.monitor.lease_level("S").unwrap(),
        ));
    }
    assert!(
        levels.iter().any(|l| matches!(l.0, Level::Quota(_))),
        "the thrasher is throttled: {levels:?}"
    );
    assert!(
        levels
            .iter()
            .all(|l| l.1 == Level::None && l.2 == Level::None),
        "the harmless leases never are: {levels:?}"
    );
    assert!(!ever_throttled(&r.act, "C") && !ever_throttled(&r.act, "S"));
    assert!(ever_throttled(&r.act, "T"));
    for id in ["C", "S"] {
        let j = r.monitor.judgement(id).unwrap();
        assert_eq!(j.verdict, Verdict::Harmless, "{id}: {j:?}");
        assert_eq!(j.job, Some(7));
        assert!(j.confidence < 0.05, "{id}: {j:?}");
    }
    // The node's level is the thrasher's, and the published state names each lease's verdict.
    assert_eq!(r.monitor.level(), r.monitor.lease_level("T").unwrap());
    let state = r.stats.interference().unwrap();
    let by_id = |id: &str| state.leases.iter().find(|l| l.lease_id == id).unwrap();
    assert_eq!(by_id("C").verdict, "harmless");
    assert_eq!(by_id("S").verdict, "harmless");
    // The thrasher, held back at a quota, is published as the culprit it was found to be.
    assert!(matches!(r.monitor.lease_level("T"), Some(Level::Quota(_))));
    assert_eq!(by_id("T").verdict, "culprit");
    assert!(by_id("T").reason.contains("job 7"), "{:?}", by_id("T"));
    assert!(state.reason.contains("job 7"), "{}", state.reason);
    // Each probe froze one lease only, and thawed it.
    let log = r.act.0.lock().unwrap().log.clone();
    let freezes = log.iter().filter(|l| l.starts_with("probe-pause")).count();
    assert_eq!(freezes as u64, state.actions["probes"]);
    assert!(r.act.running("C") && r.act.running("S"));
}

#[tokio::test]
async fn two_culprits_are_both_found_and_the_harmless_one_is_left_alone() {
    let mut r = rig(
        probe_cfg(),
        &[("A", 1001, 0.12), ("B", 1002, 0.10), ("C", 1003, 0.0)],
        Vec::new(),
    );
    let t0 = Instant::now();
    let mut c_throttled = false;
    for i in 0..40u32 {
        r.monitor.tick_at(t0 + PERIOD * i).await;
        c_throttled |= r.monitor.lease_level("C") != Some(Level::None);
    }
    assert!(!c_throttled);
    assert!(
        ever_throttled(&r.act, "A"),
        "{:?}",
        r.act.0.lock().unwrap().log
    );
    assert!(
        ever_throttled(&r.act, "B"),
        "{:?}",
        r.act.0.lock().unwrap().log
    );
}

#[tokio::test]
async fn the_level_that_held_is_remembered_for_the_same_owner_beside_the_same_job() {
    let mut r = rig(probe_cfg(), &[("T", 1001, 0.15)], Vec::new());
    let t0 = Instant::now();
    let mut i = 0u32;
    // Until the thrasher is held at a quota that its probes find harmless (quota 10%: 1.5%).
    let held = loop {
        r.monitor.tick_at(t0 + PERIOD * i).await;
        i += 1;
        let level = r.monitor.lease_level("T").unwrap();
        let j = r.monitor.judgement("T").unwrap();
        if matches!(level, Level::Quota(_)) && j.verdict == Verdict::Harmless {
            break level;
        }
        assert!(i < 60, "never held at a quota");
    };
    // The lease ends; the same user leases again, and another user too.
    r.targets.remove_lease("T");
    r.targets.add_lease_of("T2", 1001);
    r.targets.add_lease_of("X", 1004);
    r.monitor.tick_at(t0 + PERIOD * (i + 1)).await;
    let t2 = r.monitor.lease_level("T2").unwrap();
    assert!(
        t2 == held,
        "same owner starts at the remembered level: {t2:?} (held {held:?})"
    );
    assert_eq!(r.monitor.lease_level("X"), Some(Level::None));
    let c = r.act.control("T2").unwrap();
    assert!(c.quota_pct.is_some(), "{c:?}");
    assert_eq!(r.act.control("X"), Some(LeaseControl::normal(1)));
}

#[tokio::test]
async fn without_memory_a_new_lease_starts_at_full_speed() {
    let cfg = InterferenceConfig {
        memory_ttl: Duration::ZERO,
        ..probe_cfg()
    };
    let mut r = rig(cfg, &[("T", 1001, 0.15)], Vec::new());
    let t0 = Instant::now();
    for i in 0..20u32 {
        r.monitor.tick_at(t0 + PERIOD * i).await;
    }
    assert!(matches!(r.monitor.lease_level("T"), Some(Level::Quota(_))));
    r.targets.remove_lease("T");
    r.targets.add_lease_of("T2", 1001);
    r.monitor.tick_at(t0 + PERIOD * 21).await;
    assert_eq!(r.monitor.lease_level("T2"), Some(Level::None));
}

#[tokio::test]
async fn the_probe_lets_a_thawed_lease_settle_before_its_last_window() {
    let clock = ReadClock::default();
    let cfg = InterferenceConfig {
        probe_settle: Duration::from_millis(60),
        ..probe_cfg()
    };
    let mut r = rig(cfg, &[("L", 1001, 0.0)], vec![Box::new(clock.clone())]);
    let t0 = Instant::now();
    // The first tick reads once, then probes: six reads (on window | paused window | settle |
    // on window).
    r.monitor.tick_at(t0).await;
    let reads = clock.0.lock().unwrap().clone();
    assert_eq!(reads.len(), 7, "one tick read and six probe reads");
    let gap = |a: usize| reads[a + 1].duration_since(reads[a]);
    // The paused window is probe_duration; after the pause the probe waits probe_settle.
    assert!(gap(4) >= Duration::from_millis(60), "{:?}", gap(4));
    assert!(gap(3) >= Duration::from_millis(15), "{:?}", gap(3));
    let log = r.act.0.lock().unwrap().log.clone();
    assert!(log.iter().any(|l| l == "probe-pause L"), "{log:?}");
    assert!(log.iter().any(|l| l == "probe-resume L"), "{log:?}");
}

/// Feeds a fresh freeze-probe recorded slowdowns (%), one per budget gap.
fn probe_series(slowdowns: &[f64]) -> (Vec<Finding>, FreezeProbe) {
    let cfg = InterferenceConfig::default();
    let mut p = FreezeProbe::new(&cfg);
    let t0 = Instant::now();
    let findings = slowdowns
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let probe = ProbeResult {
                jobs: vec![ProbeJob {
                    job_id: 5,
                    signal: names::EFFICIENCY,
                    rate_on: 1000.0 - 10.0 * s,
                    rate_off: 1000.0,
                }],
                frozen: Duration::from_millis(300),
            };
            p.probed(t0 + cfg.min_probe_gap() * i as u32, &probe)
        })
        .collect();
    (findings, p)
}

#[test]
fn a_job_noisier_than_the_harm_is_unknown_and_no_lease_is_throttled_on_a_guess() {
    // About 1% of harm under ±10% of noise, its mean above the 2% threshold by chance.
    let noisy = [14.0, -10.0, 12.0, -8.0, 15.0, -5.0];
    let (f, p) = probe_series(&noisy);
    assert!(
        f.iter().all(|f| !matches!(f, Finding::Harm { .. })),
        "{f:?}"
    );
    let j = p.judgement();
    assert_eq!(j.verdict, Verdict::Unknown, "{j:?}");
    // The level holds (no escalation, no relaxation into what may be harm), and says why.
    let Some(Finding::Suspect(why)) = f.last() else {
        panic!("{f:?}");
    };
    assert!(why.contains("unknown") && why.contains("noise"), "{why}");
    // A real harm under the same noise is found.
    let harmful: Vec<f64> = noisy.iter().map(|s| s + 12.0).collect();
    let (f, p) = probe_series(&harmful);
    assert!(f.iter().any(|f| matches!(f, Finding::Harm { .. })), "{f:?}");
    assert_eq!(p.judgement().verdict, Verdict::Culprit);
}

#[test]
fn a_lower_quota_is_the_harder_level() {
    // The derived order compares quota percentages the other way round; node levels, the
    // worst lease and escalations are judged by severity.
    assert!(Level::Quota(10).severity() > Level::Quota(50).severity());
    assert!(Level::Weight.severity() < Level::Quota(50).severity());
    assert!(Level::Freeze.severity() > Level::Quota(10).severity());
}
