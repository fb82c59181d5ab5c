//! The acceptance test of metrics and the dashboard: with a batch job and a spinning function
//! running on the local cluster, the scheduler's metrics (read by a Prometheus text parser)
//! count each node's CPUs by state exactly as `harvest nodes --json` lists them, and so do the
//! agents' own metrics; the dashboard, opened in headless Chromium, shows every node by its
//! real name with the job's CPUs as batch cells and the function's as function cells; `harvest
//! top --once` shows the same. A screenshot and the `top` frame go to $HARVEST_RESULTS_DIR when
//! it is set (`HARVEST_RESULTS_DIR=experiments/results/dashboard` refreshes the committed ones),
//! else to a scratch directory, so that a test run leaves the checkout clean.
//!
//! Needs `deploy/local-cluster up` with harvest-scheduler and harvestd (its `env` exports
//! HARVEST_SCHEDULER, HARVEST_SCHEDULER_METRICS, HARVEST_DASHBOARD and HARVEST_AGENT_METRICS),
//! a built `harvest` CLI, `cc`, root, munged and `chromium` (deploy/debian-packages). Node names
//! come from the cluster, so it runs against any HARVEST_NODE_PREFIX.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_core::CpuSet;
use harvest_system_tests::fixtures::{
    Cli, Scratch, TEST_USER, build_library, scheduler_url, test_user,
};
use harvest_system_tests::{LocalCluster, poll};

/// `harvest nodes --json`.
fn nodes_json(cli: &Cli) -> Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(&cli.ok(None, &["nodes", "--json"])?)?;
    v.as_array()
        .cloned()
        .context("harvest nodes --json is not an array")
}

/// A child process killed when the guard drops (the spinning invocation).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A lease released when the guard drops.
struct Leased<'a> {
    cli: &'a Cli,
    id: String,
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        let _ = self.cli.ok(None, &["lease", "release", &self.id]);
    }
}

/// GET `url` (`http://host:port/path`) with plain HTTP/1.1: (status, body).
fn http_get(url: &str) -> Result<(u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// URL: {url}"))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).with_context(|| format!("connecting to {host}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete answer from {url}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line from {url}: {head}"))?;
    Ok((status, body.to_owned()))
}

/// `name{k=v,...}` (labels sorted) -> value, as Prometheus' text parser reads the exposition.
fn scrape(url: &str) -> Result<HashMap<String, f64>> {
    let (status, text) = http_get(url)?;
    ensure!(status == 200, "{url} answered {status}: {text}");
    ensure!(text.ends_with("# EOF\n"), "{url}: no OpenMetrics EOF");
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    Ok(parsed
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
        .collect())
}

fn set_of(v: &serde_json::Value) -> CpuSet {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// Where each node's CPUs are in `harvest nodes --json` and in the metrics, if they differ.
fn mismatches(nodes: &[serde_json::Value], metrics: &HashMap<String, f64>) -> Vec<String> {
    let mut bad = Vec::new();
    for n in nodes {
        let name = n["name"].as_str().unwrap_or_default();
        for state in ["batch", "function", "idle"] {
            let want = set_of(&n["cpus"][state]).len() as f64;
            let key = format!("harvest_node_cpus{{node={name},state={state}}}");
            if metrics.get(&key) != Some(&want) {
                bad.push(format!(
                    "{key} = {:?}, harvest nodes: {want}",
                    metrics.get(&key)
                ));
            }
        }
    }
    bad
}

/// The CPU cells of each node card in the dashboard's DOM: node -> [(cpu, class)].
fn cells_by_node(dom: &str) -> HashMap<String, Vec<(u32, String)>> {
    let mut out = HashMap::new();
    for card in dom.split("<section class=\"node card\"").skip(1) {
        let Some(name) = attr(card, "data-node") else {
            continue;
        };
        let mut cells = Vec::new();
        for cell in card.split("<span class=\"cpu ").skip(1) {
            let class = cell.split('"').next().unwrap_or_default().to_owned();
            if let Some(cpu) = attr(cell, "data-cpu").and_then(|c| c.parse().ok()) {
                cells.push((cpu, class));
            }
        }
        out.insert(name, cells);
    }
    out
}

/// The value of the first `name="..."` in `text`.
fn attr(text: &str, name: &str) -> Option<String> {
    let start = text.find(&format!("{name}=\""))? + name.len() + 2;
    Some(text[start..].split('"').next()?.to_owned())
}

/// Runs headless Chromium on `url` with `args` (as root it needs --no-sandbox).
fn chromium(profile: &Path, args: &[&str], url: &str) -> Result<Output> {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HOME", profile)
        .stdin(Stdio::null())
        .output()
        .context(
            "running chromium (Debian: apt-get install chromium; deploy/debian-packages lists it)",
        )?;
    ensure!(
        out.status.success(),
        "chromium exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler and its dashboard), root, cc, chromium"]
fn metrics_and_the_dashboard_show_the_batch_job_and_the_function() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let var = |name: &str| -> Result<String> {
        Ok(cluster
            .var(name)
            .with_context(|| format!("`deploy/local-cluster env` exports no {name}"))?
            .to_owned())
    };
    let scratch = Scratch::new("harvest-dashboard-test")?;
    let cli = Cli::install(&scratch.0, scheduler_url(&cluster)?, &cluster)?;
    let metrics_url = var("HARVEST_SCHEDULER_METRICS")?;
    let dashboard = var("HARVEST_DASHBOARD")?;
    let agents: Vec<(String, String)> = var("HARVEST_AGENT_METRICS")?
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let lib = build_library(&scratch.0)?;
    let lib = lib.to_str().context("utf-8 path")?;
    test_user()?;

    // The nodes, by the names the cluster gave them.
    let names: Vec<String> = nodes_json(&cli)?
        .iter()
        .filter_map(|n| n["name"].as_str().map(str::to_owned))
        .collect();
    ensure!(!names.is_empty(), "the scheduler knows no node");
    let first = names[0].clone();

    // A batch job holding one CPU of the first node.
    let job = cluster.sbatch(&["-w", &first, "-c1", "--mem=64M", "--wrap", "sleep 300"])?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    // RUNNING comes a moment before slurmstepd has made the job's cgroup.
    let job_cpus: CpuSet = poll(Duration::from_secs(20), || {
        let Ok(dir) = cluster.job_cgroup("cpuset", &first, job.id) else {
            return Ok(None);
        };
        let cpus = std::fs::read_to_string(dir.join("cpuset.cpus")).unwrap_or_default();
        Ok(cpus.trim().parse::<CpuSet>().ok().filter(|c| !c.is_empty()))
    })?
    .with_context(|| format!("job {}'s cpuset cgroup never appeared on {first}", job.id))?;
    let seen = poll(Duration::from_secs(20), || {
        let nodes = nodes_json(&cli)?;
        Ok(nodes
            .iter()
            .any(|n| n["name"] == first.as_str() && set_of(&n["cpus"]["batch"]) == job_cpus)
            .then_some(()))
    })?;
    ensure!(
        seen.is_some(),
        "the scheduler never showed job {}'s CPUs {job_cpus} as batch on {first}",
        job.id
    );

    // A function: a lease of one core, and a spinning invocation on it.
    let out = cli.acquire(Some(TEST_USER), None, lib)?;
    ensure!(
        out.status.success(),
        "harvest lease acquire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acquired: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let lease = Leased {
        cli: &cli,
        id: acquired["id"].as_str().context("no lease id")?.to_owned(),
    };
    let lease_node = acquired["node"]
        .as_str()
        .context("no lease node")?
        .to_owned();
    let lease_cpus = set_of(&acquired["cpus"]);
    ensure!(!lease_cpus.is_empty(), "the lease has no CPUs: {acquired}");
    let spin = Killed(
        cli.command(
            Some(TEST_USER),
            &[
                "invoke",
                "--lease",
                &lease.id,
                "--fn",
                "spin",
                "--timeout",
                "120s",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?,
    );
    let nodes = poll(Duration::from_secs(20), || {
        let nodes = nodes_json(&cli)?;
        let shown = nodes.iter().any(|n| {
            n["name"] == lease_node.as_str() && set_of(&n["cpus"]["function"]) == lease_cpus
        });
        Ok(shown.then_some(nodes))
    })?
    .with_context(|| {
        format!(
            "the scheduler never showed lease {}'s CPUs {lease_cpus} as function",
            lease.id
        )
    })?;

    // The scheduler's metrics count what `harvest nodes --json` lists (polled: a report may
    // land between the two reads).
    let mut last = Vec::new();
    let agreed = poll(Duration::from_secs(10), || {
        let nodes = nodes_json(&cli)?;
        last = mismatches(&nodes, &scrape(&metrics_url)?);
        Ok(last.is_empty().then_some(()))
    })?;
    ensure!(
        agreed.is_some(),
        "scheduler metrics differ from harvest nodes --json: {last:?}"
    );
    let m = scrape(&metrics_url)?;
    let active = format!("harvest_leases{{node={lease_node},state=active}}");
    ensure!(
        m.get(&active) >= Some(&1.0),
        "{active} = {:?}",
        m.get(&active)
    );
    // And each agent's own metrics, for its node.
    for (node, url) in &agents {
        let agreed = poll(Duration::from_secs(10), || {
            let nodes: Vec<serde_json::Value> = nodes_json(&cli)?
                .into_iter()
                .filter(|n| n["name"] == node.as_str())
                .collect();
            last = mismatches(&nodes, &scrape(url)?);
            Ok(last.is_empty().then_some(()))
        })?;
        ensure!(
            agreed.is_some(),
            "{node}'s agent metrics ({url}) differ: {last:?}"
        );
    }

    // The dashboard in a real browser: every node by name, the job's CPUs as batch cells and
    // the lease's as function cells (the page fetches api/cluster once it has loaded).
    let profile = scratch.0.join("chromium");
    std::fs::create_dir_all(&profile)?;
    let dom = String::from_utf8(chromium(&profile, &["--dump-dom"], &dashboard)?.stdout)?;
    ensure!(
        dom.contains("data-loaded=\"true\""),
        "the page never loaded its data:\n{dom}"
    );
    let cells = cells_by_node(&dom);
    for name in &names {
        ensure!(
            cells.contains_key(name),
            "no card for node {name} in the dashboard:\n{dom}"
        );
    }
    let class_of = |node: &str, cpu: u32| -> Option<String> {
        cells[node]
            .iter()
            .find(|(c, _)| *c == cpu)
            .map(|(_, k)| k.clone())
    };
    for cpu in job_cpus.iter() {
        let class = class_of(&first, cpu);
        ensure!(
            class
                .as_deref()
                .is_some_and(|c| c.split(' ').any(|w| w == "batch")),
            "CPU {cpu} of {first} (job {}) shows as {class:?}",
            job.id
        );
    }
    for cpu in lease_cpus.iter() {
        let class = class_of(&lease_node, cpu);
        ensure!(
            class
                .as_deref()
                .is_some_and(|c| c.split(' ').any(|w| w == "function")),
            "CPU {cpu} of {lease_node} (lease {}) shows as {class:?}",
            lease.id
        );
    }
    ensure!(
        dom.contains(&lease.id),
        "the lease {} is not listed:\n{dom}",
        lease.id
    );

    // harvest top --once: the same picture as text.
    let top = cli.ok(None, &["top", "--once"])?;
    for name in &names {
        ensure!(
            top.lines().any(|l| l.starts_with(name.as_str())),
            "no row for {name} in harvest top:\n{top}"
        );
    }
    let row = top
        .lines()
        .find(|l| l.starts_with(lease_node.as_str()))
        .context("no row for the lease's node")?;
    ensure!(row.contains('F'), "no function cell on {lease_node}: {row}");

    // The utilization timeline samples the job and the function (every 5 s by default).
    let api = format!(
        "{}api/cluster",
        dashboard.trim_end_matches('/').to_owned() + "/"
    );
    let sampled = poll(Duration::from_secs(20), || {
        let (status, body) = http_get(&api)?;
        ensure!(status == 200, "{api} answered {status}");
        let j: serde_json::Value = serde_json::from_str(&body)?;
        let last = j["timeline"]["samples"]
            .as_array()
            .and_then(|s| s.last().cloned())
            .unwrap_or_default();
        let cpus = &last["usage"]["cpus"];
        let batch = cpus["batch"].as_u64().unwrap_or(0);
        let function = cpus["function"].as_u64().unwrap_or(0);
        Ok((batch >= job_cpus.len() as u64 && function >= lease_cpus.len() as u64).then_some(()))
    })?;
    ensure!(
        sampled.is_some(),
        "the timeline never sampled the job and the function"
    );

    // Evidence: a screenshot of the dashboard and the top frame.
    let results = match std::env::var_os("HARVEST_RESULTS_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("harvest-dashboard-{}", std::process::id())),
    };
    std::fs::create_dir_all(&results)?;
    let shot = results.join("dashboard.png");
    chromium(
        &profile,
        &[
            "--window-size=1280,1100",
            &format!("--screenshot={}", shot.display()),
        ],
        &dashboard,
    )?;
    let png =
        std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    ensure!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "{} is not a real screenshot ({} bytes)",
        shot.display(),
        png.len()
    );
    std::fs::write(results.join("top.txt"), &top)?;
    let summary = format!(
        "nodes: {}\njob {} on {first}: CPUs {job_cpus}\nlease {} on {lease_node}: CPUs {lease_cpus}\nnodes --json: {}\n",
        names.join(", "),
        job.id,
        lease.id,
        serde_json::to_string(&nodes)?
    );
    std::fs::write(results.join("run.txt"), summary)?;
    drop(spin);
    drop(lease);
    drop(job);
    Ok(())
}
