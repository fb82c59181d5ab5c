//! harvestd's Prometheus metrics: OpenMetrics text at `/metrics` on `metrics_listen`.
//!
//! What this node's agent knows first-hand, read at scrape time: the node's CPUs, memory and
//! GPUs by state (the same view `harvestd status --json` prints), its leases and whether their
//! executors are ready, its reclaim and interference counters ([`NodeStats`]), whether Slurm
//! drains it, and each ready executor's latest invocation. The names are the scheduler's (it
//! relays the same counters from the agents' reports), so one Grafana panel reads either; a
//! `job` label tells them apart. Every metric is listed in docs/metrics.md.
//!
//! Invocations: clients call executors directly, so the agent sees them only through each
//! executor's activity file (rewritten at most once a second): the latest invocation's time,
//! the count of finished invocations and a histogram of their execution time in the executor.
//! The round trip a client sees adds the network and framing to that.
//!
//! The families are registered once, when [`serve`] starts ([`AgentMetrics`]); a scrape
//! refreshes them from an [`AgentSnapshot`] and encodes that registry. The per-node families the
//! scheduler exports too are harvest-metrics' [`NodeFamilies`]; only the invocation families and
//! `harvest_node_draining` are the agent's own.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use harvest_core::NodeView;
use harvest_metrics::{
    Exporter, Exposition, FloatGauge, Labels, NodeFamilies, NodeReport, labels, set_counter,
};
use harvest_proto::v1;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::leases::{Activity, DURATION_BOUNDS_S, activity};
use crate::ledger_task::LedgerHandle;
use crate::stats::{Counters, NodeStats};

/// The Content-Type of the exposition.
pub const CONTENT_TYPE_OPENMETRICS: &str = harvest_metrics::CONTENT_TYPE;
/// Scrapes served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a scraper has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything one scrape shows, taken at once.
#[derive(Debug, Clone, Default)]
pub struct AgentSnapshot {
    pub view: NodeView,
    /// Each lease on the node and whether its executor is ready (listening).
    pub leases: Vec<(String, bool)>,
    /// Each ready executor's activity (latest invocation, count, durations).
    pub activity: Vec<Activity>,
    pub counters: Counters,
    pub interference: Option<v1::InterferenceState>,
    pub draining: bool,
}

/// Where a scrape reads from: the ledger's latest snapshot, the executors' activity files and
/// the agent's counters.
#[derive(Debug, Clone)]
pub struct Sources {
    pub ledger: LedgerHandle,
    /// Where the lease directories (and their activity files) are.
    pub state_dir: std::path::PathBuf,
    pub stats: Arc<NodeStats>,
}

impl Sources {
    pub fn snapshot(&self) -> AgentSnapshot {
        let snap = self.ledger.snapshot();
        let leases = snap
            .ledger
            .leases
            .keys()
            .map(|id| (id.clone(), snap.is_ready(id)))
            .collect();
        AgentSnapshot {
            view: snap.view.clone(),
            leases,
            activity: activity::read_all(&snap, &self.state_dir),
            counters: self.stats.counters(),
            interference: self.stats.interference(),
            draining: self.stats.draining(),
        }
    }
}

/// A histogram read from an executor's activity file (the buckets are counted there).
#[derive(Debug, Default)]
struct Durations(Mutex<Activity>);

impl prometheus_client::metrics::TypedMetric for Durations {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for Durations {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let a = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let bounds = DURATION_BOUNDS_S.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = if a.buckets.len() == DURATION_BOUNDS_S.len() + 1 {
            bounds.zip(a.buckets.iter().copied()).collect()
        } else {
            bounds.map(|b| (b, 0)).collect()
        };
        let count = buckets.iter().map(|(_, c)| c).sum();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            a.duration_sum_ns as f64 / 1e9,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// harvestd's metrics, registered once: the per-node families (shared with the scheduler), the
/// invocations of each lease's executor, and whether Slurm drains the node.
#[derive(Debug)]
pub struct AgentMetrics {
    node: NodeFamilies,
    invocations: Family<Labels, Counter>,
    durations: Family<Labels, Durations>,
    last_invocation: Family<Labels, FloatGauge>,
    draining: Family<Labels, Gauge>,
    exposition: Exposition,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let node = NodeFamilies::new(Exporter::Agent);
        let invocations = Family::default();
        let durations = Family::default();
        let last_invocation = Family::default();
        let draining = Family::default();
        let mut r = Registry::with_prefix(harvest_metrics::PREFIX);
        node.register(&mut r);
        r.register(
            "lease_invocations",
            "Invocations the lease's executor finished (from its activity file, at most 1 s old)",
            invocations.clone(),
        );
        r.register_with_unit(
            "lease_invocation_duration",
            "Execution time of the lease's finished invocations inside the executor (function \
             call only; the client's round trip adds network and framing)",
            Unit::Seconds,
            durations.clone(),
        );
        r.register_with_unit(
            "lease_last_invocation_timestamp",
            "When the lease's executor last began an invocation (Unix time; the executor \
             records it at most once a second)",
            Unit::Seconds,
            last_invocation.clone(),
        );
        r.register(
            "node_draining",
            "1 while Slurm drains the node (or has it down): no new leases",
            draining.clone(),
        );
        Self {
            node,
            invocations,
            durations,
            last_invocation,
            draining,
            exposition: Exposition::new(r),
        }
    }

    /// One scrape of `s`: the families refreshed from it (an ended lease loses its series), then
    /// encoded.
    pub fn encode(&self, s: &AgentSnapshot) -> String {
        self.exposition.encode(|| self.refresh(s))
    }

    fn refresh(&self, s: &AgentSnapshot) {
        let node = s.view.name.as_str();
        let active = s.leases.iter().filter(|(_, ready)| *ready).count();
        self.node.refresh([NodeReport {
            view: &s.view,
            leases_pending: s.leases.len() - active,
            leases_active: active,
            counters: Some(s.counters),
            interference: s.interference.as_ref(),
        }]);
        self.invocations.clear();
        self.durations.clear();
        self.last_invocation.clear();
        for a in &s.activity {
            let l = labels([("node", node), ("lease", &a.lease)]);
            set_counter(&self.invocations, &l, a.invocations);
            *self
                .durations
                .get_or_create(&l)
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = a.clone();
            self.last_invocation
                .get_or_create(&l)
                .set(a.last_ms as f64 / 1000.0);
        }
        self.draining.clear();
        self.draining
            .get_or_create(&labels([("node", node)]))
            .set(i64::from(s.draining));
    }
}

fn respond<B>(
    sources: &Sources,
    metrics: &AgentMetrics,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    let (status, ct, body) = if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".to_owned(),
        )
    } else {
        match req.uri().path() {
            "/metrics" => (
                StatusCode::OK,
                CONTENT_TYPE_OPENMETRICS,
                metrics.encode(&sources.snapshot()),
            ),
            "/healthz" => (StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            other => (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                format!("no page {other}: harvestd serves /metrics and /healthz\n"),
            ),
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// Serves `/metrics` on `listener` until `cancel` fires; connections run on `tracker` (each
/// bounded by the header timeout, and cut at shutdown).
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    tracker: tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
) {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics serving");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let metrics = Arc::new(AgentMetrics::new());
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the metrics listener failed");
                continue;
            }
        };
        let sources = sources.clone();
        let cancel = cancel.clone();
        let metrics = metrics.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = respond(&sources, &metrics, &req);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = cancel.cancelled() => {}
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                },
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvest_core::CpuSet;

    fn snapshot() -> AgentSnapshot {
        let mut view = NodeView {
            name: "n7".into(),
            ..NodeView::default()
        };
        view.cpus.total = CpuSet::first_n(4);
        view.cpus.batch = [0].into_iter().collect();
        view.cpus.function = [1, 2].into_iter().collect();
        view.memory_mib = harvest_core::MemoryBreakdown {
            total: 2048,
            batch: 512,
            function: 256,
            idle: 256,
        };
        view.gpus.total = vec![0];
        view.gpus.idle = vec![0];
        AgentSnapshot {
            view,
            leases: vec![("L1".into(), true), ("L2".into(), false)],
            activity: vec![Activity {
                lease: "L1".into(),
                last_ms: 1_700_000_000_500,
                invocations: 5,
                duration_sum_ns: 3_000_000,
                buckets: vec![1, 3, 1, 0, 0, 0, 0, 0],
            }],
            counters: Counters {
                reclaims: 3,
                reclaim_evictions: 2,
                reclaim_moves: 1,
                reclaim_overruns: 0,
                reclaim_latency_us_sum: 4500,
                reclaim_latency_us_max: 2000,
                interference_actions: 1,
            },
            interference: Some(v1::InterferenceState {
                level: v1::InterferenceLevel::Weight.into(),
                signals: [("batch.cpu_usage".to_owned(), 0.75)].into(),
                actions: [("weight".to_owned(), 1)].into(),
                ..v1::InterferenceState::default()
            }),
            draining: true,
        }
    }

    /// `name{k=v,...}` -> value through Prometheus' text parser.
    fn parse(text: &str) -> std::collections::HashMap<String, f64> {
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .into_iter()
            .filter_map(|s| {
                let v = match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => return None,
                };
                let mut l: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                l.sort();
                Some((format!("{}{{{}}}", s.metric, l.join(",")), v))
            })
            .collect()
    }

    #[test]
    fn a_scrape_shows_the_view_leases_counters_and_interference() {
        let text = AgentMetrics::new().encode(&snapshot());
        // Invocations from the activity file: a counter and a histogram (cumulative buckets).
        for line in [
            r#"harvest_lease_invocations_total{node="n7",lease="L1"} 5"#,
            r#"harvest_lease_invocation_duration_seconds_bucket{le="0.0001",node="n7",lease="L1"} 4"#,
            r#"harvest_lease_invocation_duration_seconds_bucket{le="+Inf",node="n7",lease="L1"} 5"#,
            r#"harvest_lease_invocation_duration_seconds_count{node="n7",lease="L1"} 5"#,
            r#"harvest_lease_invocation_duration_seconds_sum{node="n7",lease="L1"} 0.003"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        let m = parse(&text);
        let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(get("harvest_node_cpus{node=n7,state=batch}"), 1.0);
        assert_eq!(get("harvest_node_cpus{node=n7,state=function}"), 2.0);
        assert_eq!(get("harvest_node_cpus{node=n7,state=idle}"), 0.0);
        // CPU 3 is in no list: reserved.
        assert_eq!(get("harvest_node_cpus{node=n7,state=reserved}"), 1.0);
        assert_eq!(
            get("harvest_node_memory_bytes{node=n7,state=reserved}"),
            1024.0 * 1048576.0
        );
        assert_eq!(get("harvest_node_gpus{node=n7,state=idle}"), 1.0);
        assert_eq!(get("harvest_gpu_state{gpu=0,node=n7,state=idle}"), 1.0);
        assert_eq!(get("harvest_leases{node=n7,state=active}"), 1.0);
        assert_eq!(get("harvest_leases{node=n7,state=pending}"), 1.0);
        assert_eq!(
            get("harvest_lease_last_invocation_timestamp_seconds{lease=L1,node=n7}"),
            1_700_000_000.5
        );
        assert_eq!(get("harvest_reclaims_total{node=n7}"), 3.0);
        assert_eq!(get("harvest_reclaim_evictions_total{node=n7}"), 2.0);
        assert_eq!(get("harvest_reclaim_seconds_total{node=n7}"), 0.0045);
        assert_eq!(get("harvest_reclaim_max_seconds{node=n7}"), 0.002);
        assert_eq!(get("harvest_node_draining{node=n7}"), 1.0);
        assert_eq!(get("harvest_interference_level{level=weight,node=n7}"), 1.0);
        assert_eq!(get("harvest_interference_level{level=evict,node=n7}"), 0.0);
        assert_eq!(
            get("harvest_interference_signal{node=n7,signal=batch.cpu_usage}"),
            0.75
        );
        assert_eq!(
            get("harvest_interference_level_actions_total{level=weight,node=n7}"),
            1.0
        );
    }

    #[test]
    fn without_an_interference_monitor_no_interference_level_is_claimed() {
        let mut s = snapshot();
        s.interference = None;
        let text = AgentMetrics::new().encode(&s);
        assert!(!text.contains("harvest_interference_level{"), "{text}");
        assert!(
            text.contains("harvest_interference_actions_total{node=\"n7\"} 1"),
            "{text}"
        );
    }

    /// The registry is built once: a lease that ended, or a GPU that changed state, leaves no
    /// series behind at the next scrape.
    #[test]
    fn an_ended_lease_leaves_no_series_behind() {
        let metrics = AgentMetrics::new();
        let first = metrics.encode(&snapshot());
        assert!(first.contains(r#"lease="L1""#), "{first}");
        let mut s = snapshot();
        s.leases.clear();
        s.activity.clear();
        s.view.gpus.idle.clear();
        s.view.gpus.function = vec![0];
        let text = metrics.encode(&s);
        assert!(!text.contains(r#"lease="L1""#), "{text}");
        assert!(!text.contains(r#"gpu="0",state="idle""#), "{text}");
        let m = parse(&text);
        assert_eq!(m["harvest_leases{node=n7,state=active}"], 0.0);
        assert_eq!(m["harvest_gpu_state{gpu=0,node=n7,state=function}"], 1.0);
        // Counters are the snapshot's totals, not added to the previous scrape's.
        assert_eq!(m["harvest_reclaims_total{node=n7}"], 3.0);
    }
}
