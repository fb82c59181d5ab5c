//! The daemons' logs: plain lines without colours when not on a terminal, the level raised by
//! `log_level` in the configuration and SIGHUP (no restart), and no lease secret (the key of
//! every HMAC proof) in any log, even at debug level, through a lease's whole life: acquire,
//! invoke, release.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_cluster_harness::wait_for;
use harvest_system_tests::LocalCluster;
use harvest_system_tests::fixtures::{ClusterRig, TEST_USER};
use serde_json::Value;

/// A daemon's configuration with `log_level = "debug"` added, SIGHUPed; put back (and
/// SIGHUPed again) on drop.
struct DebugLevel {
    config: PathBuf,
    original: String,
    pid: i32,
}

impl DebugLevel {
    fn raise(config: PathBuf, pid: i32, log: &Path) -> Result<Self> {
        let original = std::fs::read_to_string(&config)?;
        // First: a key after a [table] header would belong to that table.
        std::fs::write(&config, format!("log_level = \"debug\"\n{original}"))?;
        let before = std::fs::read_to_string(log).unwrap_or_default().len();
        hup(pid)?;
        wait_for(
            Duration::from_secs(10),
            Duration::from_millis(100),
            "the level to be reloaded",
            || {
                let text = std::fs::read_to_string(log)?;
                Ok(text
                    .get(before..)
                    .is_some_and(|t| t.contains("log level reloaded") && t.contains("debug")))
            },
        )
        .with_context(|| format!("pid {pid} did not log its new level in {}", log.display()))?;
        Ok(Self {
            config,
            original,
            pid,
        })
    }
}

impl Drop for DebugLevel {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.config, &self.original);
        let _ = hup(self.pid);
    }
}

fn hup(pid: i32) -> Result<()> {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -HUP {pid} failed");
    Ok(())
}

/// Every file under `dir` (recursively) whose name ends with one of `suffixes`.
fn files(dir: &Path, suffixes: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, suffixes, out);
        } else if suffixes.iter().any(|s| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(s))
        }) {
            out.push(p);
        }
    }
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=c.len() {
            s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    s
}

fn hex_bytes(hex: &str) -> Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(&hex[i..i + 2], 16)?))
        .collect()
}

/// The lease's secret as harvestd's ledger keeps it (64 hex digits), found anywhere under the
/// lease's entry.
fn secret_in_ledger(cluster: &LocalCluster, node: &str, lease: &str) -> Result<String> {
    let path = PathBuf::from(cluster.require("HARVEST_CLUSTER_DIR")?)
        .join("agent")
        .join(node)
        .join(format!("ledger-{node}.json"));
    let ledger: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    fn find(v: &Value) -> Option<String> {
        match v {
            Value::Object(m) => m
                .get("secret")
                .and_then(Value::as_str)
                .filter(|s| s.len() == 64)
                .map(str::to_owned)
                .or_else(|| m.values().find_map(find)),
            Value::Array(a) => a.iter().find_map(find),
            _ => None,
        }
    }
    find(&ledger["leases"][lease])
        .with_context(|| format!("no secret for lease {lease} in {}", path.display()))
}

#[test]
#[ignore = "needs cluster: deploy/local-cluster up --nodes 2 (with harvest), root"]
fn no_secret_is_logged_at_debug_level_and_sighup_changes_the_level() -> Result<()> {
    let rig = ClusterRig::new("logs-secret")?;
    let cluster = &rig.cluster;
    let dir = PathBuf::from(cluster.require("HARVEST_CLUSTER_DIR")?);
    let (etc, log) = (dir.join("etc"), dir.join("log"));
    let mut raised = Vec::new();
    for node in cluster.node_names()? {
        raised.push(DebugLevel::raise(
            etc.join(format!("harvestd-{node}.toml")),
            cluster.recorded_pid(&format!("harvestd-{node}"))?,
            &log.join(format!("harvestd-{node}.out")),
        )?);
    }
    raised.push(DebugLevel::raise(
        etc.join("harvest-scheduler.toml"),
        cluster.recorded_pid("harvest-scheduler")?,
        &log.join("harvest-scheduler.out"),
    )?);

    let out = rig.cli.acquire(Some(TEST_USER), None, &rig.lib)?;
    ensure!(
        out.status.success(),
        "acquire: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lease: Value = serde_json::from_slice(&out.stdout)?;
    let id = lease["id"].as_str().context("no id")?.to_owned();
    let node = lease["node"].as_str().context("no node")?.to_owned();
    let input = rig.scratch.0.join("input");
    std::fs::write(&input, b"hello")?;
    let echoed = rig.cli.run(
        Some(TEST_USER),
        &[
            "invoke",
            "--lease",
            &id,
            "--fn",
            "echo",
            "--input",
            input.to_str().unwrap(),
        ],
    )?;
    ensure!(
        echoed.stdout == b"hello",
        "invoke: {}",
        String::from_utf8_lossy(&echoed.stderr)
    );
    let secret = secret_in_ledger(cluster, &node, &id)?;
    // The executor's log lives in the lease directory: read it before release removes it.
    let mut logs = Vec::new();
    files(&dir.join("agent"), &[".log"], &mut logs);
    let executor_logs: Vec<(PathBuf, String)> = logs
        .iter()
        .map(|p| (p.clone(), std::fs::read_to_string(p).unwrap_or_default()))
        .collect();
    rig.cli.ok(Some(TEST_USER), &["lease", "release", &id])?;
    drop(raised);

    let bytes = hex_bytes(&secret)?;
    let forms = [secret.to_lowercase(), secret.to_uppercase(), base64(&bytes)];
    let mut daemon_logs = Vec::new();
    files(&log, &[".out", ".log"], &mut daemon_logs);
    ensure!(!daemon_logs.is_empty(), "no logs under {}", log.display());
    let mut texts: Vec<(PathBuf, String)> = daemon_logs
        .iter()
        .map(|p| {
            (
                p.clone(),
                String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    texts.extend(executor_logs);
    for (path, text) in &texts {
        for form in &forms {
            ensure!(
                !text.contains(form.as_str()),
                "lease {id}'s secret appears in {}",
                path.display()
            );
        }
    }
    // The logs were written at debug level while the lease lived (the test looked at
    // something), plain: no colour escapes when not on a terminal.
    let agent_log = &texts
        .iter()
        .find(|(p, _)| p.ends_with(format!("harvestd-{node}.out")))
        .context("no harvestd log")?
        .1;
    ensure!(
        agent_log.contains(&id),
        "harvestd's log never names lease {id}"
    );
    ensure!(
        agent_log.contains(" DEBUG "),
        "no debug line in harvestd's log after SIGHUP"
    );
    for (path, text) in &texts {
        if path.extension().is_some_and(|e| e == "out") && !path.to_string_lossy().contains("slurm")
        {
            ensure!(
                !text.contains('\u{1b}'),
                "ANSI escapes in {}",
                path.display()
            );
        }
    }
    Ok(())
}
