//! The scheduler's Prometheus metrics: OpenMetrics text, served at `/metrics` by [`crate::http`].
//!
//! Two kinds, both in one exposition:
//! - what the scheduler counts as it works ([`SchedulerMetrics`]): placement decisions and their
//!   latency, lease acquisitions and their latency, lease ends by cause;
//! - what it knows at scrape time ([`SchedulerMetrics::encode`] reads a [`Snapshot`] of the
//!   lease book): each node's and the cluster's CPUs, memory and GPUs by state (`batch`,
//!   `function`, `idle`, `reserved`), leases by state, revocations by reason, and the agents' own
//!   reclaim and interference counters as their latest reports carry them.
//!
//! Every family is registered once, when [`SchedulerMetrics`] is built; a scrape refreshes the
//! book's families from the snapshot and encodes that one registry. The per-node families the
//! agents export too are harvest-metrics' [`NodeFamilies`], so both write them the same way.
//!
//! Names follow Prometheus' conventions: the `harvest_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters. Every metric is listed in docs/metrics.md.

use harvest_core::NodeView;
pub use harvest_core::{Counts, STATES, Usage};
pub use harvest_metrics::CONTENT_TYPE;
use harvest_metrics::{
    Exporter, Exposition, FloatGauge, Labels, NodeFamilies, NodeReport, Resources, labels,
    set_counter,
};
use harvest_proto::v1;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// What a scrape reads from the lease book (taken under its lock, encoded after).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<v1::NodeStatus>,
    pub leases: Vec<v1::Lease>,
}

/// The node's view as harvest_core's type.
pub fn view_of(status: &v1::NodeStatus) -> NodeView {
    status.view.as_ref().map(NodeView::from).unwrap_or_default()
}

/// Placement outcomes counted by `harvest_placements_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A node was chosen.
    Placed,
    /// No node had room within the placement wait.
    Unschedulable,
    /// The request was refused before placement (bad request) or placement failed.
    Refused,
}

impl Placement {
    fn name(self) -> &'static str {
        match self {
            Placement::Placed => "placed",
            Placement::Unschedulable => "unschedulable",
            Placement::Refused => "refused",
        }
    }
}

/// The scheduler's metrics: what it counts as it works (atomics, cheap to update from any task)
/// and what a scrape reads from the lease book, all registered once into one registry.
#[derive(Debug)]
pub struct SchedulerMetrics {
    placements: Family<Labels, Counter>,
    placement_seconds: Histogram,
    acquisitions: Family<Labels, Counter>,
    acquire_seconds: Histogram,
    lease_ends: Family<Labels, Counter>,
    agent_refusals: Family<Labels, Counter>,
    book: BookFamilies,
    exposition: Exposition,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        let placements = Family::default();
        // A policy's decision: 10 µs .. ~10 s.
        let placement_seconds = Histogram::new(exponential_buckets(1e-5, 4.0, 11));
        let acquisitions = Family::default();
        // Request to executor ready: 1 ms .. ~65 s.
        let acquire_seconds = Histogram::new(exponential_buckets(1e-3, 2.0, 17));
        let lease_ends = Family::default();
        let agent_refusals = Family::default();
        let book = BookFamilies::default();

        let mut r = Registry::with_prefix(harvest_metrics::PREFIX);
        r.register(
            "placements",
            "Lease placements by outcome (placed, unschedulable, refused), one per AcquireLease",
            placements.clone(),
        );
        r.register_with_unit(
            "placement_duration",
            "Time the placement policy took to choose a node, for placed leases",
            Unit::Seconds,
            placement_seconds.clone(),
        );
        r.register(
            "lease_acquisitions",
            "AcquireLease requests by outcome (active, unschedulable, failed, timeout, \
             unavailable, refused, unauthenticated)",
            acquisitions.clone(),
        );
        r.register_with_unit(
            "lease_acquire_duration",
            "AcquireLease from request to the executor ready, for leases that became active",
            Unit::Seconds,
            acquire_seconds.clone(),
        );
        r.register(
            "lease_ends",
            "Leases ended since the scheduler started, by cause (released, expired, idle, \
             reclaimed, node_down, node_drained, interference, executor_failed)",
            lease_ends.clone(),
        );
        r.register(
            "agent_refusals",
            "Agent sessions and executor events the scheduler refused, by reason (no_certificate, \
             bad_certificate, wrong_node: a Register for another node than the certificate's; \
             not_holder: an event for a lease another node holds)",
            agent_refusals.clone(),
        );
        book.register(&mut r);
        Self {
            placements,
            placement_seconds,
            acquisitions,
            acquire_seconds,
            lease_ends,
            agent_refusals,
            book,
            exposition: Exposition::new(r),
        }
    }
}

impl SchedulerMetrics {
    /// One AcquireLease's placement: its outcome and, when placed, how long the policy's
    /// decision took (the successful `place` call, not the waiting for room).
    pub fn record_placement(&self, outcome: Placement, decision: Option<std::time::Duration>) {
        self.placements
            .get_or_create(&vec![("outcome", outcome.name().to_owned())])
            .inc();
        if let Some(d) = decision {
            self.placement_seconds.observe(d.as_secs_f64());
        }
    }

    /// One AcquireLease's end: `outcome` is `active` or the failure (`unschedulable`, `failed`,
    /// `timeout`, `unavailable`, `refused`, `unauthenticated`); the time is observed for active
    /// leases only.
    pub fn record_acquisition(&self, outcome: &str, took: std::time::Duration) {
        self.acquisitions
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc();
        if outcome == "active" {
            self.acquire_seconds.observe(took.as_secs_f64());
        }
    }

    /// A lease ended for `cause` (a [`crate::book::cause_name`]).
    pub fn record_lease_end(&self, cause: &str) {
        self.lease_ends
            .get_or_create(&vec![("cause", cause.to_owned())])
            .inc();
    }

    /// The scheduler refused an agent's session or event for `reason` (see the family's help).
    pub fn record_agent_refusal(&self, reason: &str) {
        self.agent_refusals
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// How many agent sessions and events were refused for `reason` so far (tests).
    pub fn agent_refusals(&self, reason: &str) -> u64 {
        self.agent_refusals
            .get(&vec![("reason", reason.to_owned())])
            .map_or(0, |c| c.get())
    }

    /// How many placements ended with `outcome` so far (tests, the dashboard).
    pub fn placements(&self, outcome: Placement) -> u64 {
        self.placements
            .get(&vec![("outcome", outcome.name().to_owned())])
            .map_or(0, |c| c.get())
    }

    /// The whole exposition: the counts so far plus what `snap` shows.
    pub fn encode(&self, snap: &Snapshot) -> String {
        self.exposition.encode(|| self.book.refresh(snap))
    }
}

/// The node states `harvest_node_state` and `harvest_nodes` count.
const NODE_STATES: [&str; 3] = ["up", "down", "draining"];

/// The node's lease states counted by `harvest_leases` (the live ones).
const LIVE_LEASE_STATES: [v1::LeaseState; 2] = [v1::LeaseState::Pending, v1::LeaseState::Active];

/// What a scrape reads from the lease book: the per-node families the agents export too
/// ([`NodeFamilies`]), and the scheduler's own view of the nodes and the cluster.
#[derive(Debug)]
struct BookFamilies {
    nodes: NodeFamilies,
    node_state: Family<Labels, Gauge>,
    nodes_by_state: Family<Labels, Gauge>,
    last_report: Family<Labels, FloatGauge>,
    cluster: Resources,
    revocations: Family<Labels, Counter>,
}

impl Default for BookFamilies {
    fn default() -> Self {
        Self {
            nodes: NodeFamilies::new(Exporter::Scheduler),
            node_state: Family::default(),
            nodes_by_state: Family::default(),
            last_report: Family::default(),
            cluster: Resources::new("cluster"),
            revocations: Family::default(),
        }
    }
}

impl BookFamilies {
    fn register(&self, r: &mut Registry) {
        r.register(
            "node_state",
            "1 for the node's state as the scheduler sees it (up, down: missed heartbeats, \
             draining)",
            self.node_state.clone(),
        );
        r.register(
            "nodes",
            "Nodes by state (up, down, draining)",
            self.nodes_by_state.clone(),
        );
        r.register_with_unit(
            "node_last_report_timestamp",
            "When the node's agent last reported (Unix time)",
            Unit::Seconds,
            self.last_report.clone(),
        );
        self.nodes.register(r);
        self.cluster.register(r);
        r.register(
            "revocations",
            "Leases the system took back, by node and reason (reclaimed, node_down, \
             node_drained, interference), counted by the scheduler since it started",
            self.revocations.clone(),
        );
    }

    /// Replaces every series with what `snap` shows (a node that left loses its series).
    fn refresh(&self, snap: &Snapshot) {
        self.node_state.clear();
        self.nodes_by_state.clear();
        self.last_report.clear();
        self.cluster.clear();
        self.revocations.clear();
        for state in NODE_STATES {
            self.nodes_by_state
                .get_or_create(&labels([("state", state)]))
                .set(0);
        }
        let views: Vec<NodeView> = snap.nodes.iter().map(view_of).collect();
        for (status, view) in snap.nodes.iter().zip(&views) {
            let node = view.name.as_str();
            for state in NODE_STATES {
                self.node_state
                    .get_or_create(&labels([("node", node), ("state", state)]))
                    .set(i64::from(status.state == state));
            }
            self.nodes_by_state
                .get_or_create(&labels([("state", status.state.as_str())]))
                .inc();
            self.last_report
                .get_or_create(&labels([("node", node)]))
                .set(status.last_report_unix_ms as f64 / 1000.0);
            for (reason, count) in &status.revocations {
                set_counter(
                    &self.revocations,
                    &labels([("node", node), ("reason", reason)]),
                    *count,
                );
            }
        }
        let live = |node: &str, state: v1::LeaseState| {
            snap.leases
                .iter()
                .filter(|l| l.node == node && l.state == state as i32)
                .count()
        };
        let [pending, active] = LIVE_LEASE_STATES;
        let cluster =
            self.nodes.refresh(
                snap.nodes
                    .iter()
                    .zip(&views)
                    .map(|(status, view)| NodeReport {
                        view,
                        leases_pending: live(&view.name, pending),
                        leases_active: live(&view.name, active),
                        counters: status.counters.map(Into::into),
                        interference: status.interference.as_ref(),
                    }),
            );
        self.cluster.set(&[], &cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvest_core::CpuSet;

    fn view() -> NodeView {
        let mut v = NodeView {
            name: "n1".into(),
            ..NodeView::default()
        };
        v.cpus.total = CpuSet::first_n(8);
        v.cpus.batch = [0, 1, 2].into_iter().collect();
        v.cpus.function = [3].into_iter().collect();
        v.cpus.idle = [4, 5, 6].into_iter().collect();
        v.memory_mib = harvest_core::MemoryBreakdown {
            total: 4096,
            batch: 1024,
            function: 512,
            idle: 1536,
        };
        v.gpus.total = vec![0, 1];
        v.gpus.function = vec![1];
        v
    }

    #[test]
    fn usage_counts_each_state_and_what_is_in_none_as_reserved() {
        let u = Usage::of(&view());
        assert_eq!(
            u.cpus,
            Counts {
                total: 8,
                batch: 3,
                function: 1,
                idle: 3,
                reserved: 1
            }
        );
        assert_eq!(u.memory_mib.reserved, 1024);
        assert_eq!((u.gpus.function, u.gpus.reserved), (1, 1));
        assert_eq!(view().gpu_state(0), "reserved");
        assert_eq!(view().gpu_state(1), "function");
        // A CPU in both batch and function (mid-reclaim) counts in both; reserved stays >= 0.
        let mut v = view();
        v.cpus.function.insert(0);
        v.cpus.idle = CpuSet::first_n(8).difference(&v.cpus.batch);
        let u = Usage::of(&v);
        assert_eq!((u.cpus.batch, u.cpus.function, u.cpus.reserved), (3, 2, 0));
    }

    fn status(view: &NodeView) -> v1::NodeStatus {
        v1::NodeStatus {
            view: Some(v1::NodeView::from(view)),
            state: "up".into(),
            version: None,
            last_report_unix_ms: 1_700_000_000_000,
            counters: Some(v1::NodeCounters {
                reclaims: 2,
                reclaim_evictions: 1,
                reclaim_moves: 1,
                reclaim_overruns: 0,
                reclaim_latency_us_sum: 3000,
                reclaim_latency_us_max: 2500,
                interference_actions: 4,
            }),
            interference: Some(v1::InterferenceState {
                level: v1::InterferenceLevel::Quota.into(),
                detector: "threshold".into(),
                reason: "batch slowed".into(),
                since_unix_ms: 0,
                unavailable: vec![],
                signals: [("psi.cpu.some.avg10".to_owned(), 12.5)].into(),
                actions: [("quota".to_owned(), 3), ("weight".to_owned(), 1)].into(),
                leases: vec![],
            }),
            revocations: [("reclaimed".to_owned(), 5)].into(),
        }
    }

    /// A sample: its name, its labels sorted, its value.
    type Parsed = (String, Vec<(String, String)>, f64);

    /// Every sample, through the real parser.
    fn parse(text: &str) -> Vec<Parsed> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        scrape
            .samples
            .into_iter()
            .map(|s| {
                let mut l: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                l.sort();
                let v = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                };
                (s.metric, l, v)
            })
            .collect()
    }

    fn value(samples: &[Parsed], name: &str, l: &[(&str, &str)]) -> f64 {
        let mut want: Vec<(String, String)> = l
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        want.sort();
        samples
            .iter()
            .find(|(n, labels, _)| n == name && *labels == want)
            .map(|s| s.2)
            .unwrap_or_else(|| panic!("no {name}{l:?}"))
    }

    #[test]
    fn the_exposition_parses_and_carries_each_family() {
        let m = SchedulerMetrics::default();
        m.record_placement(
            Placement::Placed,
            Some(std::time::Duration::from_micros(40)),
        );
        m.record_placement(Placement::Unschedulable, None);
        m.record_acquisition("active", std::time::Duration::from_millis(30));
        m.record_lease_end("reclaimed");
        let mut second = view();
        second.name = "n2".into();
        let snap = Snapshot {
            nodes: vec![status(&view()), status(&second)],
            leases: vec![v1::Lease {
                id: "a-1".into(),
                node: "n1".into(),
                state: v1::LeaseState::Active as i32,
                ..v1::Lease::default()
            }],
        };
        let text = m.encode(&snap);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let s = parse(&text);
        let n1 = [("node", "n1")];
        assert_eq!(
            value(
                &s,
                "harvest_node_cpus",
                &[("node", "n1"), ("state", "batch")]
            ),
            3.0
        );
        assert_eq!(
            value(
                &s,
                "harvest_node_cpus",
                &[("node", "n1"), ("state", "reserved")]
            ),
            1.0
        );
        assert_eq!(value(&s, "harvest_cluster_cpus", &[("state", "idle")]), 6.0);
        assert_eq!(
            value(
                &s,
                "harvest_node_memory_bytes",
                &[("node", "n2"), ("state", "function")]
            ),
            512.0 * 1048576.0
        );
        assert_eq!(
            value(&s, "harvest_cluster_gpus", &[("state", "function")]),
            2.0
        );
        assert_eq!(
            value(
                &s,
                "harvest_gpu_state",
                &[("node", "n1"), ("gpu", "1"), ("state", "function")]
            ),
            1.0
        );
        assert_eq!(
            value(&s, "harvest_leases", &[("node", "n1"), ("state", "active")]),
            1.0
        );
        assert_eq!(
            value(&s, "harvest_leases", &[("node", "n2"), ("state", "active")]),
            0.0
        );
        assert_eq!(
            value(&s, "harvest_node_state", &[("node", "n1"), ("state", "up")]),
            1.0
        );
        assert_eq!(value(&s, "harvest_nodes", &[("state", "up")]), 2.0);
        assert_eq!(
            value(
                &s,
                "harvest_revocations_total",
                &[("node", "n1"), ("reason", "reclaimed")]
            ),
            5.0
        );
        assert_eq!(value(&s, "harvest_reclaims_total", &n1), 2.0);
        assert_eq!(value(&s, "harvest_reclaim_seconds_total", &n1), 0.003);
        assert_eq!(value(&s, "harvest_reclaim_max_seconds", &n1), 0.0025);
        assert_eq!(
            value(
                &s,
                "harvest_interference_level",
                &[("node", "n1"), ("level", "quota")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &s,
                "harvest_interference_level",
                &[("node", "n1"), ("level", "none")]
            ),
            0.0
        );
        assert_eq!(
            value(
                &s,
                "harvest_interference_signal",
                &[("node", "n1"), ("signal", "psi.cpu.some.avg10")]
            ),
            12.5
        );
        assert_eq!(value(&s, "harvest_interference_actions_total", &n1), 4.0);
        assert_eq!(
            value(&s, "harvest_placements_total", &[("outcome", "placed")]),
            1.0
        );
        assert_eq!(
            value(&s, "harvest_lease_ends_total", &[("cause", "reclaimed")]),
            1.0
        );
        assert_eq!(
            value(&s, "harvest_node_last_report_timestamp_seconds", &n1),
            1.7e9
        );
        // Histograms: the count and the bucket the observation fell in.
        let count = s
            .iter()
            .find(|(n, _, _)| n == "harvest_placement_duration_seconds_count")
            .map(|x| x.2);
        assert_eq!(count, Some(1.0), "{text}");
        assert!(
            text.contains("harvest_lease_acquire_duration_seconds_bucket"),
            "{text}"
        );
        // Every family has HELP and TYPE lines, and units where the name says so.
        for family in [
            "harvest_node_cpus",
            "harvest_placements",
            "harvest_reclaim_seconds",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        assert!(
            text.contains("# UNIT harvest_node_memory_bytes bytes"),
            "{text}"
        );
    }

    /// Every metric the Grafana dashboard queries is one the scheduler exports (with a
    /// histogram's `_bucket` series), so the dashboard cannot drift from the metrics.
    #[test]
    fn the_grafana_dashboard_queries_only_exported_metrics() {
        let m = SchedulerMetrics::default();
        m.record_placement(Placement::Placed, Some(std::time::Duration::from_micros(1)));
        m.record_acquisition("active", std::time::Duration::from_millis(1));
        m.record_lease_end("released");
        let mut v = view();
        v.gpus.batch = vec![0];
        let text = m.encode(&Snapshot {
            nodes: vec![status(&v)],
            leases: vec![],
        });
        let exported: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/harvest.json"
        );
        let dashboard = std::fs::read_to_string(path).expect("deploy/grafana/harvest.json");
        let json: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
        let mut queried = 0;
        for panel in json["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                for (i, _) in expr.match_indices("harvest_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    queried += 1;
                    assert!(
                        exported.contains(name.as_str()),
                        "panel {:?} queries {name}, which /metrics does not export",
                        panel["title"]
                    );
                }
            }
        }
        assert!(queried > 20, "only {queried} metric names found in {path}");
    }

    #[test]
    fn counts_by_state_sum_to_the_total_when_lists_are_disjoint() {
        let u = Usage::of(&view());
        let c = u.cpus;
        assert_eq!(c.batch + c.function + c.idle + c.reserved, c.total);
        let m = u.memory_mib;
        assert_eq!(m.batch + m.function + m.idle + m.reserved, m.total);
    }

    /// The registry is built once; a node the book forgot loses its series at the next scrape.
    #[test]
    fn a_node_that_left_leaves_no_series_behind() {
        let m = SchedulerMetrics::default();
        let mut second = view();
        second.name = "n2".into();
        let both = m.encode(&Snapshot {
            nodes: vec![status(&view()), status(&second)],
            leases: vec![],
        });
        assert!(both.contains(r#"node="n2""#), "{both}");
        let one = m.encode(&Snapshot {
            nodes: vec![status(&view())],
            leases: vec![],
        });
        assert!(!one.contains(r#"node="n2""#), "{one}");
        let s = parse(&one);
        assert_eq!(value(&s, "harvest_nodes", &[("state", "up")]), 1.0);
        assert_eq!(
            value(&s, "harvest_cluster_cpus", &[("state", "batch")]),
            3.0
        );
        assert_eq!(value(&s, "harvest_reclaims_total", &[("node", "n1")]), 2.0);
    }
}
