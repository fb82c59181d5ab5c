//! The per-node families both exporters write: harvestd for its own node, first-hand; the
//! scheduler for every node, as the agents' reports carry it. Names, labels, units and help texts
//! are those docs/metrics.md lists; where the help says whose count it is, [`Exporter`] picks it.

use harvest_core::{NodeView, STATES, Usage};
use harvest_proto::v1;
use harvest_proto::views::{LEVELS, NodeCountersView, level_name};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::{FloatCounter, FloatGauge, Labels, gauge_value, labels, set_counter};

/// Who exports the families: some help texts say whose count a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// harvestd, for its own node, at the source.
    Agent,
    /// The scheduler, for every node, relaying what each agent last reported.
    Scheduler,
}

impl Exporter {
    fn pick(self, agent: &'static str, scheduler: &'static str) -> &'static str {
        match self {
            Exporter::Agent => agent,
            Exporter::Scheduler => scheduler,
        }
    }
}

/// CPUs, memory and GPUs by state (`batch`, `function`, `idle`, `reserved`) of one scope:
/// `harvest_<scope>_cpus`, `harvest_<scope>_memory_bytes`, `harvest_<scope>_gpus`.
#[derive(Debug)]
pub struct Resources {
    scope: &'static str,
    cpus: Family<Labels, Gauge>,
    memory: Family<Labels, Gauge>,
    gpus: Family<Labels, Gauge>,
}

impl Resources {
    /// `scope` is `node` (with a `node` label) or `cluster` (without).
    pub fn new(scope: &'static str) -> Self {
        Self {
            scope,
            cpus: Family::default(),
            memory: Family::default(),
            gpus: Family::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        let scope = self.scope;
        r.register(
            format!("{scope}_cpus"),
            format!("CPUs of the {scope} by state (batch, function, idle, reserved)"),
            self.cpus.clone(),
        );
        r.register_with_unit(
            format!("{scope}_memory"),
            format!("Memory of the {scope} by state (batch, function, idle, reserved)"),
            Unit::Bytes,
            self.memory.clone(),
        );
        r.register(
            format!("{scope}_gpus"),
            format!("GPUs of the {scope} by state (batch, function, idle, reserved)"),
            self.gpus.clone(),
        );
    }

    /// Forgets every series (before a refresh).
    pub fn clear(&self) {
        self.cpus.clear();
        self.memory.clear();
        self.gpus.clear();
    }

    /// Sets the series labelled `base` plus each `state` to `usage`.
    pub fn set(&self, base: &[(&'static str, &str)], usage: &Usage) {
        for state in STATES {
            let mut l: Labels = base.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            l.push(("state", state.to_owned()));
            self.cpus
                .get_or_create(&l)
                .set(gauge_value(usage.cpus.get(state)));
            self.memory.get_or_create(&l).set(gauge_value(
                usage.memory_mib.get(state).saturating_mul(1 << 20),
            ));
            self.gpus
                .get_or_create(&l)
                .set(gauge_value(usage.gpus.get(state)));
        }
    }
}

/// What one exporter knows of one node at a scrape.
#[derive(Debug, Clone, Copy)]
pub struct NodeReport<'a> {
    pub view: &'a NodeView,
    /// Leases on the node whose executor is starting.
    pub leases_pending: usize,
    /// Leases on the node whose executor is ready.
    pub leases_active: usize,
    /// The agent's counters (the scheduler has none before a node's first full report).
    pub counters: Option<NodeCountersView>,
    /// The agent's interference verdict (none while it runs no monitor).
    pub interference: Option<&'a v1::InterferenceState>,
}

/// The families both exporters write for each node, registered once.
#[derive(Debug)]
pub struct NodeFamilies {
    exporter: Exporter,
    resources: Resources,
    gpu_state: Family<Labels, Gauge>,
    leases: Family<Labels, Gauge>,
    reclaims: Family<Labels, Counter>,
    reclaim_evictions: Family<Labels, Counter>,
    reclaim_moves: Family<Labels, Counter>,
    reclaim_overruns: Family<Labels, Counter>,
    reclaim_seconds: Family<Labels, FloatCounter>,
    reclaim_max: Family<Labels, FloatGauge>,
    interference_actions: Family<Labels, Counter>,
    interference_level: Family<Labels, Gauge>,
    interference_signal: Family<Labels, FloatGauge>,
    interference_level_actions: Family<Labels, Counter>,
    lease_verdict: Family<Labels, Gauge>,
    lease_harm: Family<Labels, FloatGauge>,
    lease_confidence: Family<Labels, FloatGauge>,
}

impl NodeFamilies {
    pub fn new(exporter: Exporter) -> Self {
        Self {
            exporter,
            resources: Resources::new("node"),
            gpu_state: Family::default(),
            leases: Family::default(),
            reclaims: Family::default(),
            reclaim_evictions: Family::default(),
            reclaim_moves: Family::default(),
            reclaim_overruns: Family::default(),
            reclaim_seconds: Family::default(),
            reclaim_max: Family::default(),
            interference_actions: Family::default(),
            interference_level: Family::default(),
            interference_signal: Family::default(),
            interference_level_actions: Family::default(),
            lease_verdict: Family::default(),
            lease_harm: Family::default(),
            lease_confidence: Family::default(),
        }
    }

    /// Registers every family (once, at start-up).
    pub fn register(&self, r: &mut Registry) {
        let pick = |agent, scheduler| self.exporter.pick(agent, scheduler);
        self.resources.register(r);
        r.register(
            "gpu_state",
            "1 for each GPU in its state (batch, function, idle, reserved)",
            self.gpu_state.clone(),
        );
        r.register(
            "leases",
            pick(
                "Leases on the node (pending: executor starting; active: executor ready)",
                "Live leases by node and state (pending: executor starting; active)",
            ),
            self.leases.clone(),
        );
        r.register(
            "reclaims",
            pick(
                "Step starts that took resources back from executors",
                "Step starts on the node that took resources back from executors (the agent's \
                 count since it started)",
            ),
            self.reclaims.clone(),
        );
        r.register(
            "reclaim_evictions",
            pick(
                "Executors evicted to make room for a batch step",
                "Executors evicted to make room for a batch step (the agent's count)",
            ),
            self.reclaim_evictions.clone(),
        );
        r.register(
            "reclaim_moves",
            pick(
                "Executors moved to other idle CPUs instead of evicted",
                "Executors moved to other idle CPUs instead of evicted (the agent's count)",
            ),
            self.reclaim_moves.clone(),
        );
        r.register(
            "reclaim_overruns",
            pick(
                "Reclaims that did not finish within their deadline",
                "Reclaims that did not finish within their deadline (the agent's count)",
            ),
            self.reclaim_overruns.clone(),
        );
        r.register_with_unit(
            "reclaim",
            "Total reclaim latency, plugin report to executors gone (divide by \
             harvest_reclaims_total for the mean)",
            Unit::Seconds,
            self.reclaim_seconds.clone(),
        );
        r.register_with_unit(
            "reclaim_max",
            pick(
                "The slowest reclaim since the agent started",
                "The slowest reclaim on the node since its agent started",
            ),
            Unit::Seconds,
            self.reclaim_max.clone(),
        );
        r.register(
            "interference_actions",
            pick(
                "Interference control actions taken since the agent started",
                "Interference control actions the node's agent took since it started",
            ),
            self.interference_actions.clone(),
        );
        r.register(
            "interference_level",
            pick(
                "1 for the interference control level applied now",
                "1 for the interference control level the node's agent applies now",
            ),
            self.interference_level.clone(),
        );
        r.register(
            "interference_signal",
            pick(
                "The latest interference signal values by name",
                "The latest interference signal values by name (as the agent reports them)",
            ),
            self.interference_signal.clone(),
        );
        r.register(
            "interference_level_actions",
            "Interference control actions by level (weight, quota, freeze, evict)",
            self.interference_level_actions.clone(),
        );
        r.register(
            "interference_lease_verdict",
            "1 for each lease's interference verdict (pending, harmless, unknown, culprit) and \
             its control level",
            self.lease_verdict.clone(),
        );
        r.register(
            "interference_lease_harm_percent",
            "Each lease's marginal harm: the batch job's mean slowdown with the lease running \
             against it frozen, over its recent probes",
            self.lease_harm.clone(),
        );
        r.register(
            "interference_lease_confidence",
            "The probability that each lease's harm is above the probe threshold",
            self.lease_confidence.clone(),
        );
    }

    /// Replaces every series with those of `nodes` (a node, GPU, level or signal that is no
    /// longer there loses its series) and returns the nodes' resources added up.
    pub fn refresh<'a>(&self, nodes: impl IntoIterator<Item = NodeReport<'a>>) -> Usage {
        self.clear();
        nodes
            .into_iter()
            .fold(Usage::default(), |sum, n| sum.add(&self.set(&n)))
    }

    fn clear(&self) {
        self.resources.clear();
        self.gpu_state.clear();
        self.leases.clear();
        self.reclaims.clear();
        self.reclaim_evictions.clear();
        self.reclaim_moves.clear();
        self.reclaim_overruns.clear();
        self.reclaim_seconds.clear();
        self.reclaim_max.clear();
        self.interference_actions.clear();
        self.interference_level.clear();
        self.interference_signal.clear();
        self.interference_level_actions.clear();
        self.lease_verdict.clear();
        self.lease_harm.clear();
        self.lease_confidence.clear();
    }

    fn set(&self, n: &NodeReport<'_>) -> Usage {
        let view = n.view;
        let node = view.name.as_str();
        let usage = Usage::of(view);
        self.resources.set(&[("node", node)], &usage);
        for &gpu in &view.gpus.total {
            let id = gpu.to_string();
            let state = view.gpu_state(gpu);
            self.gpu_state
                .get_or_create(&labels([("node", node), ("gpu", &id), ("state", state)]))
                .set(1);
        }
        for (state, count) in [("pending", n.leases_pending), ("active", n.leases_active)] {
            self.leases
                .get_or_create(&labels([("node", node), ("state", state)]))
                .set(gauge_value(count as u64));
        }
        if let Some(c) = &n.counters {
            self.set_counters(node, c);
        }
        if let Some(i) = n.interference {
            self.set_interference(node, i);
        }
        usage
    }

    fn set_counters(&self, node: &str, c: &NodeCountersView) {
        let l = labels([("node", node)]);
        set_counter(&self.reclaims, &l, c.reclaims);
        set_counter(&self.reclaim_evictions, &l, c.reclaim_evictions);
        set_counter(&self.reclaim_moves, &l, c.reclaim_moves);
        set_counter(&self.reclaim_overruns, &l, c.reclaim_overruns);
        set_counter(&self.interference_actions, &l, c.interference_actions);
        self.reclaim_seconds
            .get_or_create(&l)
            .inc_by(c.reclaim_latency_us_sum as f64 / 1e6);
        self.reclaim_max
            .get_or_create(&l)
            .set(c.reclaim_latency_us_max as f64 / 1e6);
    }

    fn set_interference(&self, node: &str, i: &v1::InterferenceState) {
        let current = i.current_level();
        for level in LEVELS {
            self.interference_level
                .get_or_create(&labels([("node", node), ("level", level_name(level))]))
                .set(i64::from(level == current));
        }
        for (signal, value) in &i.signals {
            self.interference_signal
                .get_or_create(&labels([("node", node), ("signal", signal)]))
                .set(*value);
        }
        for (key, count) in &i.actions {
            set_counter(
                &self.interference_level_actions,
                &labels([("node", node), ("level", key)]),
                *count,
            );
        }
        for l in &i.leases {
            let job = l.job_id.to_string();
            self.lease_verdict
                .get_or_create(&labels([
                    ("node", node),
                    ("lease", &l.lease_id),
                    ("verdict", &l.verdict),
                    ("level", level_name(l.level().or_none())),
                ]))
                .set(1);
            if l.probes > 0 {
                let id = labels([("node", node), ("lease", &l.lease_id), ("job", &job)]);
                self.lease_harm.get_or_create(&id).set(l.harm_pct);
                self.lease_confidence.get_or_create(&id).set(l.confidence);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Exposition;
    use harvest_core::CpuSet;

    fn view(name: &str, gpu_busy: bool) -> NodeView {
        let mut v = NodeView {
            name: name.into(),
            ..NodeView::default()
        };
        v.cpus.total = CpuSet::first_n(4);
        v.cpus.idle = CpuSet::first_n(4);
        v.gpus.total = vec![0];
        if gpu_busy {
            v.gpus.function = vec![0];
        } else {
            v.gpus.idle = vec![0];
        }
        v
    }

    fn exposition(exporter: Exporter) -> (NodeFamilies, Exposition) {
        let families = NodeFamilies::new(exporter);
        let mut r = Registry::with_prefix(crate::PREFIX);
        families.register(&mut r);
        (families, Exposition::new(r))
    }

    /// The sample lines (no comments), sorted.
    fn samples(text: &str) -> Vec<&str> {
        let mut s: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        s.sort_unstable();
        s
    }

    #[test]
    fn a_refresh_drops_the_series_of_what_went_away() {
        let (f, e) = exposition(Exporter::Scheduler);
        let (n1, n2) = (view("n1", false), view("n2", false));
        let quota = v1::InterferenceState {
            level: v1::InterferenceLevel::Quota.into(),
            signals: [("psi".to_owned(), 1.5)].into(),
            leases: vec![
                v1::LeaseInterference {
                    lease_id: "T".into(),
                    level: v1::InterferenceLevel::Quota.into(),
                    verdict: "culprit".into(),
                    job_id: 7,
                    harm_pct: 12.5,
                    probes: 3,
                    confidence: 0.98,
                    ..Default::default()
                },
                v1::LeaseInterference {
                    lease_id: "C".into(),
                    verdict: "pending".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let report = |view, interference| NodeReport {
            view,
            leases_pending: 0,
            leases_active: 1,
            counters: Some(NodeCountersView {
                reclaims: 2,
                ..Default::default()
            }),
            interference,
        };
        let total = std::cell::Cell::new(Usage::default());
        let first =
            e.encode(|| total.set(f.refresh([report(&n1, Some(&quota)), report(&n2, None)])));
        assert_eq!(total.get().cpus.idle, 8);
        assert!(first.contains(r#"harvest_node_cpus{node="n2",state="idle"} 4"#));
        assert!(first.contains(r#"harvest_interference_level{node="n1",level="quota"} 1"#));
        assert!(first.contains(r#"harvest_gpu_state{node="n1",gpu="0",state="idle"} 1"#));
        for line in [
            r#"harvest_interference_lease_verdict{node="n1",lease="T",verdict="culprit",level="quota"} 1"#,
            r#"harvest_interference_lease_verdict{node="n1",lease="C",verdict="pending",level="none"} 1"#,
            r#"harvest_interference_lease_harm_percent{node="n1",lease="T",job="7"} 12.5"#,
            r#"harvest_interference_lease_confidence{node="n1",lease="T",job="7"} 0.98"#,
        ] {
            assert!(first.contains(line), "{line} in {first}");
        }
        // A lease not probed yet has a verdict and no estimate.
        assert!(!first.contains(r#"lease="C",job"#), "{first}");

        // n2 left, n1's GPU went to a function, and its monitor stopped.
        let busy = view("n1", true);
        let second = e.encode(|| {
            f.refresh([report(&busy, None)]);
        });
        assert!(!second.contains(r#"node="n2""#), "{second}");
        assert!(!second.contains("harvest_interference_level{"), "{second}");
        assert!(!second.contains("harvest_interference_signal{"), "{second}");
        assert!(!second.contains("harvest_interference_lease"), "{second}");
        assert!(!second.contains(r#"harvest_gpu_state{node="n1",gpu="0",state="idle"}"#));
        assert!(second.contains(r#"harvest_gpu_state{node="n1",gpu="0",state="function"} 1"#));
        // Totals are set again, not added to the previous scrape's.
        assert!(
            second.contains(r#"harvest_reclaims_total{node="n1"} 2"#),
            "{second}"
        );
        assert_eq!(
            samples(&second),
            samples(&e.encode(|| {
                f.refresh([report(&busy, None)]);
            }))
        );
    }

    #[test]
    fn every_level_is_labelled_by_name_and_unspecified_reads_as_none() {
        let (f, e) = exposition(Exporter::Agent);
        let n1 = view("n1", false);
        let unset = v1::InterferenceState::default();
        let text = e.encode(|| {
            f.refresh([NodeReport {
                view: &n1,
                leases_pending: 0,
                leases_active: 0,
                counters: None,
                interference: Some(&unset),
            }]);
        });
        for (level, on) in [
            ("none", 1),
            ("weight", 0),
            ("quota", 0),
            ("freeze", 0),
            ("evict", 0),
        ] {
            let line = format!(r#"harvest_interference_level{{node="n1",level="{level}"}} {on}"#);
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn help_texts_say_whose_count_it_is() {
        let n1 = view("n1", false);
        let help = |exporter| {
            let (f, e) = exposition(exporter);
            let report = NodeReport {
                view: &n1,
                leases_pending: 0,
                leases_active: 0,
                counters: Some(NodeCountersView::default()),
                interference: None,
            };
            e.encode(|| {
                f.refresh([report]);
            })
            .lines()
            .find(|l| l.starts_with("# HELP harvest_reclaim_evictions "))
            .map(str::to_owned)
        };
        assert_eq!(
            help(Exporter::Agent).as_deref(),
            Some(
                "# HELP harvest_reclaim_evictions Executors evicted to make room for a batch step."
            )
        );
        assert!(
            help(Exporter::Scheduler)
                .unwrap()
                .ends_with("(the agent's count).")
        );
    }
}
