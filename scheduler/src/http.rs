//! The scheduler's HTTP listener (`http_listen`): the dashboard, its JSON, and the metrics.
//!
//! | path | what |
//! |---|---|
//! | `/` | the dashboard (HTML, with `/app.js` and `/style.css`), embedded in the binary |
//! | `/api/cluster` | JSON: nodes, totals, leases, the utilization timeline, recent events |
//! | `/metrics` | Prometheus metrics, OpenMetrics text ([`crate::metrics`]) |
//! | `/healthz` | `ok` |
//!
//! A small HTTP/1.1 server on hyper (already under tonic): GET and HEAD only, at most
//! [`MAX_CONNECTIONS`] connections at once, headers within [`HEADER_TIMEOUT`]. Read-only: it
//! never changes the scheduler's state, so it needs no authentication; bind it to an address
//! only operators reach.

use harvest_proto::views::{InterferenceView, LeaseView, NodeCountersView};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use harvest_core::NodeView;
use harvest_proto::v1;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::book::{self, Now};
use crate::metrics::{self, SchedulerMetrics, Snapshot, Usage, view_of};
use crate::state::Shared;
use crate::timeline::{Event, Recorder, Sample, snapshot};

/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Ended leases `/api/cluster` lists (newest first), beside every live one.
pub const ENDED_LEASES_SHOWN: usize = 50;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE_CSS: &str = include_str!("dashboard/style.css");

/// What the HTTP handlers read.
#[derive(Debug)]
pub struct Web {
    pub shared: Arc<Shared>,
    pub recorder: Arc<Recorder>,
    pub metrics: Arc<SchedulerMetrics>,
    /// The timeline's sampling interval and window, for the page's axis.
    pub sample_every: Duration,
    pub window: Duration,
}

/// Serves `listener` until `shutdown` says stop.
pub async fn serve(listener: TcpListener, web: Arc<Web>, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(addr = ?listener.local_addr().ok(), "dashboard and metrics serving");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the HTTP listener failed");
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let web = web.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let web = web.clone();
                async move { Ok::<_, Infallible>(web.respond(&req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                },
                _ = stop.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            drop(permit);
        });
    }
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl Web {
    /// The answer to one request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = response(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "only GET and HEAD\n",
            );
            r.headers_mut()
                .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let html = "text/html; charset=utf-8";
        let text = "text/plain; charset=utf-8";
        match req.uri().path() {
            "/" | "/index.html" => response(StatusCode::OK, html, INDEX_HTML),
            "/app.js" => response(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
            "/style.css" => response(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
            "/metrics" => {
                let snap = snapshot(&self.shared);
                response(
                    StatusCode::OK,
                    metrics::CONTENT_TYPE,
                    self.metrics.encode(&snap),
                )
            }
            "/api/cluster" => {
                let json = self.cluster_json();
                response(StatusCode::OK, "application/json", json)
            }
            "/healthz" => response(StatusCode::OK, text, "ok\n"),
            other => response(
                StatusCode::NOT_FOUND,
                text,
                format!(
                    "no page {other}: try / (dashboard), /api/cluster (JSON), /metrics \
                     (Prometheus), /healthz\n"
                ),
            ),
        }
    }

    /// The JSON of `/api/cluster`.
    pub fn cluster_json(&self) -> String {
        let (snap, policy) = {
            let inner = self.shared.lock();
            (
                Snapshot {
                    nodes: inner.book.nodes(),
                    leases: inner.book.leases(),
                },
                inner.book.policy().to_owned(),
            )
        };
        let cluster = ClusterJson::new(
            &snap,
            policy,
            Now::current().unix_ms,
            TimelineJson {
                interval_ms: self.sample_every.as_millis() as u64,
                window_ms: self.window.as_millis() as u64,
                samples: self.recorder.samples(),
            },
            self.recorder.events(),
        );
        serde_json::to_string(&cluster).expect("plain data serializes")
    }
}

/// `/api/cluster`.
#[derive(Debug, Serialize)]
pub struct ClusterJson {
    pub generated_unix_ms: i64,
    pub policy: String,
    pub totals: Usage,
    pub nodes: Vec<NodeJson>,
    /// Live leases, then up to [`ENDED_LEASES_SHOWN`] ended ones, newest first.
    pub leases: Vec<LeaseView>,
    pub timeline: TimelineJson,
    /// Newest first.
    pub events: Vec<Event>,
}

#[derive(Debug, Serialize)]
pub struct TimelineJson {
    pub interval_ms: u64,
    pub window_ms: u64,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

/// A node: `harvest nodes --json`'s fields plus counts and the agent's extras.
#[derive(Debug, Serialize)]
pub struct NodeJson {
    #[serde(flatten)]
    pub view: NodeView,
    pub state: String,
    pub last_report_unix_ms: i64,
    pub usage: Usage,
    /// Each GPU's state (batch, function, idle, reserved), by index.
    pub gpu_states: BTreeMap<u32, &'static str>,
    pub interference: Option<InterferenceView>,
    pub counters: Option<NodeCountersView>,
    pub revocations: BTreeMap<String, u64>,
}

/// Orders node names as people count: n2 before n10.
pub fn natural_key(name: &str) -> (String, u64, String) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, number) = name.split_at(name.len() - digits);
    (
        prefix.to_owned(),
        number.parse().unwrap_or(0),
        name.to_owned(),
    )
}

impl NodeJson {
    fn of(s: &v1::NodeStatus) -> Self {
        let view = view_of(s);
        let gpu_states = view
            .gpus
            .total
            .iter()
            .map(|&g| (g, view.gpu_state(g)))
            .collect();
        Self {
            usage: Usage::of(&view),
            gpu_states,
            view,
            state: s.state.clone(),
            last_report_unix_ms: s.last_report_unix_ms,
            interference: s.interference.as_ref().map(InterferenceView::from),
            counters: s.counters.map(NodeCountersView::from),
            revocations: s.revocations.clone().into_iter().collect(),
        }
    }
}

impl ClusterJson {
    pub fn new(
        snap: &Snapshot,
        policy: String,
        now_unix_ms: i64,
        timeline: TimelineJson,
        events: Vec<Event>,
    ) -> Self {
        let mut nodes: Vec<NodeJson> = snap.nodes.iter().map(NodeJson::of).collect();
        nodes.sort_by_cached_key(|n| natural_key(&n.view.name));
        let totals = nodes.iter().fold(Usage::default(), |a, n| a.add(&n.usage));
        let mut leases: Vec<&v1::Lease> = snap.leases.iter().collect();
        // Live first, then the newest.
        leases.sort_by_key(|l| {
            (
                !book::is_live(l.state),
                std::cmp::Reverse(l.created_unix_ms),
            )
        });
        let live = leases.iter().filter(|l| book::is_live(l.state)).count();
        leases.truncate(live + ENDED_LEASES_SHOWN);
        Self {
            generated_unix_ms: now_unix_ms,
            policy,
            totals,
            nodes,
            leases: leases.into_iter().map(public_view).collect(),
            timeline,
            events,
        }
    }
}

/// A lease as the dashboard shows it to whoever reaches it: what it holds and why it ended,
/// never where its executor listens (the HTTP port has no authentication; the owner gets the
/// address from GetLease) and never a start failure's log tail (the user's output).
fn public_view(l: &v1::Lease) -> LeaseView {
    let mut v = LeaseView::from(v1::Lease {
        secret: Vec::new(),
        executor_address: String::new(),
        ..l.clone()
    });
    if let Some((head, _)) = v.end_reason.split_once("; its log:") {
        v.end_reason = head.to_owned();
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::identity::FakeAuthenticator;

    fn web() -> Web {
        let config = Config::default();
        let book = crate::book_for(&config).unwrap();
        Web {
            shared: Arc::new(Shared::new(config, Arc::new(FakeAuthenticator), book)),
            recorder: Arc::new(Recorder::new(10, 10)),
            metrics: Arc::new(SchedulerMetrics::default()),
            sample_every: Duration::from_secs(5),
            window: Duration::from_secs(3600),
        }
    }

    async fn get(web: &Web, method: Method, path: &str) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let r = web.respond(&req);
        let status = r.status();
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn each_path_answers_with_its_content_type_and_the_rest_is_refused() {
        let w = web();
        let (s, ct, body) = get(&w, Method::GET, "/").await;
        assert_eq!(s, StatusCode::OK);
        assert!(ct.starts_with("text/html"));
        assert!(
            body.contains("app.js") && body.contains("style.css"),
            "{body}"
        );
        let (_, ct, js) = get(&w, Method::GET, "/app.js").await;
        assert!(
            ct.starts_with("text/javascript") && js.contains("api/cluster"),
            "{ct}"
        );
        let (s, ct, m) = get(&w, Method::GET, "/metrics").await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, metrics::CONTENT_TYPE));
        assert!(m.ends_with("# EOF\n"), "{m}");
        let (s, ct, j) = get(&w, Method::GET, "/api/cluster").await;
        assert_eq!((s, ct.as_str()), (StatusCode::OK, "application/json"));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["policy"], "best-fit");
        assert_eq!(v["nodes"], serde_json::json!([]));
        assert_eq!(v["timeline"]["window_ms"], 3_600_000);
        let (s, _, body) = get(&w, Method::GET, "/nope").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(body.contains("/metrics"), "{body}");
        let (s, _, _) = get(&w, Method::POST, "/metrics").await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn cluster_json_lists_live_leases_first_and_caps_the_ended_ones() {
        let mut snap = Snapshot::default();
        for i in 0..(ENDED_LEASES_SHOWN as i64 + 5) {
            snap.leases.push(v1::Lease {
                id: format!("ended-{i}"),
                state: v1::LeaseState::Revoked as i32,
                end_cause: v1::EndCause::Reclaimed as i32,
                created_unix_ms: i,
                ..v1::Lease::default()
            });
        }
        snap.leases.push(v1::Lease {
            id: "live".into(),
            state: v1::LeaseState::Active as i32,
            created_unix_ms: 0,
            executor_address: "127.0.0.1:4000".into(),
            secret: vec![7; 32],
            ..v1::Lease::default()
        });

        let timeline = TimelineJson {
            interval_ms: 1,
            window_ms: 1,
            samples: vec![],
        };
        for name in ["n10", "n2", "gpu1", "n1"] {
            snap.nodes.push(v1::NodeStatus {
                view: Some(v1::NodeView {
                    name: name.into(),
                    ..v1::NodeView::default()
                }),
                ..v1::NodeStatus::default()
            });
        }
        let c = ClusterJson::new(&snap, "p".into(), 0, timeline, vec![]);
        let names: Vec<&str> = c.nodes.iter().map(|n| n.view.name.as_str()).collect();
        assert_eq!(names, ["gpu1", "n1", "n2", "n10"]);
        assert_eq!(c.leases.len(), 1 + ENDED_LEASES_SHOWN);
        assert_eq!(
            (c.leases[0].id.as_str(), c.leases[0].state.as_str()),
            ("live", "active")
        );
        assert_eq!(c.leases[0].end_cause, "");
        assert_eq!(c.leases[0].executor_address, "", "never on the dashboard");
        let failed = public_view(&v1::Lease {
            end_reason: "executor exited (status 1) before it was ready; its log: private".into(),
            ..v1::Lease::default()
        });
        assert_eq!(
            failed.end_reason,
            "executor exited (status 1) before it was ready"
        );
        let newest = ENDED_LEASES_SHOWN + 4;
        assert_eq!(c.leases[1].id, format!("ended-{newest}"));
        assert_eq!(c.leases[1].end_cause, "reclaimed");
    }
}
