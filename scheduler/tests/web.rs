//! Black-box tests of the dashboard and metrics listener: the real scheduler with `http` on
//! 127.0.0.1:0, a fake agent on the real session protocol, the real client library, and plain
//! HTTP/1.1 requests over TCP. `/metrics` is read by a Prometheus text parser.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Answer, FakeAgent, config, eventually, request, view};
use harvest_scheduler::identity::FakeAuthenticator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(10);

/// A GET over a fresh connection: (status code, headers in lower case, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// `name{labels}` -> value for every plain sample, as Prometheus' text parser reads them.
fn samples(text: &str) -> HashMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
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
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            Some((format!("{}{{{}}}", s.metric, labels.join(",")), v))
        })
        .collect()
}

struct Running {
    grpc: SocketAddr,
    http: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Running {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
    let mut cfg = config();
    cfg.timeline_sample_ms = 50;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        harvest_scheduler::serve_with(cfg, Arc::new(FakeAuthenticator), grpc, Some(http), async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        grpc: grpc_addr,
        http: http_addr,
        stop,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_dashboards_json_show_what_harvest_nodes_shows() {
    let s = start().await;
    let agent = FakeAgent::connect(s.grpc, "n1", 60_000, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 8, 2)).await;
    let mut c = harvest_client::SchedulerClient::connect_tls(
        &s.grpc.to_string(),
        Arc::new(harvest_client::identity::Fixed("uid:1000".into())),
        &common::pki().ca(),
    )
    .await
    .unwrap();
    eventually("n1's report", WAIT, async || {
        let n = c.nodes().await.unwrap();
        (n.len() == 1 && n[0].view.cpus.idle.len() == 6).then_some(())
    })
    .await;
    let lease = c.acquire(&request(2, 256)).await.unwrap();
    // The agent's next report shows the lease's executor on CPUs 2-3.
    let mut v = view("n1", 8, 2);
    v.cpus.function = [2, 3].into_iter().collect();
    v.cpus.idle = (4..8).collect();
    v.memory_mib.function = 256;
    v.memory_mib.idle = 644;
    agent.report(2, &v).await;
    let nodes = eventually("the report with the lease", WAIT, async || {
        let n = c.nodes().await.unwrap();
        (n[0].view.cpus.function.len() == 2).then_some(n)
    })
    .await;

    let (status, headers, text) = get(s.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    let m = samples(&text);
    let cpus = &nodes[0].view.cpus;
    for (state, want) in [
        ("batch", cpus.batch.len()),
        ("function", cpus.function.len()),
        ("idle", cpus.idle.len()),
    ] {
        let key = format!("harvest_node_cpus{{node=n1,state={state}}}");
        assert_eq!(m.get(&key), Some(&(want as f64)), "{key} in\n{text}");
        let key = format!("harvest_cluster_cpus{{state={state}}}");
        assert_eq!(m.get(&key), Some(&(want as f64)), "{key}");
    }
    assert_eq!(m["harvest_node_cpus{node=n1,state=reserved}"], 0.0);
    assert_eq!(
        m["harvest_node_memory_bytes{node=n1,state=function}"],
        256.0 * 1048576.0
    );
    assert_eq!(m["harvest_leases{node=n1,state=active}"], 1.0);
    assert_eq!(m["harvest_placements_total{outcome=placed}"], 1.0);
    assert_eq!(m["harvest_lease_acquisitions_total{outcome=active}"], 1.0);
    assert_eq!(m["harvest_lease_acquire_duration_seconds_count{}"], 1.0);

    // The dashboard's JSON: the node with its CPU lists and counts, the lease, samples.
    let (status, _, page) = get(s.http, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"app.js\">"), "{page}");
    let json = eventually("a timeline sample with the lease", WAIT, async || {
        let (_, _, body) = get(s.http, "/api/cluster").await;
        let j: serde_json::Value = serde_json::from_str(&body).unwrap();
        let samples = j["timeline"]["samples"].as_array().unwrap();
        samples
            .iter()
            .any(|x| x["usage"]["cpus"]["function"] == 2)
            .then_some(j)
    })
    .await;
    let n = &json["nodes"][0];
    assert_eq!(n["name"], "n1");
    assert_eq!(n["cpus"]["function"], serde_json::json!([2, 3]));
    assert_eq!(n["usage"]["cpus"]["batch"], 2);
    assert_eq!(json["totals"]["cpus"]["idle"], 4);
    assert_eq!(json["leases"][0]["id"], lease.id.as_str());
    assert_eq!(json["leases"][0]["state"], "active");

    // A release is a lease end by cause once the recorder has seen it.
    c.release(&lease.id).await.unwrap();
    eventually(
        "harvest_lease_ends_total{cause=released}",
        WAIT,
        async || {
            let (_, _, text) = get(s.http, "/metrics").await;
            (samples(&text).get("harvest_lease_ends_total{cause=released}") == Some(&1.0))
                .then_some(())
        },
    )
    .await;

    let (status, _, _) = get(s.http, "/no-such-page").await;
    assert_eq!(status, 404);
    let _ = s.stop.send(());
    s.task.await.unwrap();
}
