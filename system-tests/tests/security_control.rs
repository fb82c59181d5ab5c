//! The control plane against an unprivileged user (issue 14), on the real local cluster.
//!
//! An attacker (the regular user `harvest-user`, through `runuser`) runs `fake_agent`
//! (system-tests/examples) against the scheduler's agent port: registering as node n1 or as a
//! made-up node, in plaintext and over TLS without a client certificate, and sending `Ready`
//! (pointing at an address of its own) and `Exited` for a live lease of another user
//! (`harvest-victim`). Every attempt is refused; the nodes' keys are unreadable to it; the lease
//! stays active with its address unchanged; `harvest nodes` lists no made-up node; the
//! scheduler's `harvest_agent_refusals_total` grows.
//!
//! Whom an executor runs as: the CLI always sends the caller's own identity (munge), so the
//! orders are driven through the real CLI by callers that are not acceptable executor users:
//! `daemon` (uid 1, below min_executor_uid), `nobody` (65534, a nologin system account) and the
//! test user with a group that is not its primary one (`runuser -g users`). Each acquisition fails
//! with harvestd's reason and no executor runs as that uid. (A scheduler that names any uid and
//! gid it likes is node-agent/tests/session.rs's fake scheduler.)
//!
//! Needs `deploy/local-cluster up --nodes 2` with harvest (TLS on), the workspace's debug build
//! (the `harvest` CLI and the `fake_agent` example: `cargo test -p harvest-system-tests` builds
//! it), `cc`, root and munged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};
use harvest_system_tests::LocalCluster;
use harvest_system_tests::fixtures::{
    Cli, Scratch, TEST_USER, build_library, regular_user, scheduler_url, target_bin, test_user,
};

/// The user whose lease the attacker goes after.
const VICTIM: &str = "harvest-victim";

struct Rig {
    cluster: LocalCluster,
    cli: Cli,
    _scratch: Scratch,
    lib: String,
    agent: PathBuf,
    tls: PathBuf,
}

impl Rig {
    fn new(name: &str) -> Result<Self> {
        let cluster = LocalCluster::from_env()?;
        test_user()?;
        regular_user(VICTIM)?;
        let scratch = Scratch::new(name)?;
        let dir = scratch.0.clone();
        let cli = Cli::install(&dir, scheduler_url(&cluster)?, &cluster)?;
        let lib = build_library(&dir)?
            .to_str()
            .context("utf-8 path")?
            .to_owned();
        // The example, where the attacker can run it.
        let built = target_bin("harvest")?
            .parent()
            .context("no target dir")?
            .join("examples/fake_agent");
        ensure!(
            built.exists(),
            "{} is missing: run `cargo test -p harvest-system-tests` (it builds the examples)",
            built.display()
        );
        let agent = dir.join("fake_agent");
        std::fs::copy(&built, &agent)?;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755))?;
        let tls = Path::new(
            cluster
                .var("HARVEST_CLUSTER_DIR")
                .context("no HARVEST_CLUSTER_DIR")?,
        )
        .join("tls");
        Ok(Self {
            cluster,
            cli,
            _scratch: scratch,
            lib,
            agent,
            tls,
        })
    }

    /// `fake_agent ARGS` as the attacker.
    fn attack(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new("runuser")
            .args(["-u", TEST_USER, "--"])
            .arg(&self.agent)
            .arg(&self.cli.scheduler)
            .args(args)
            .output()?)
    }

    /// The attack was refused (and said so); its output, for the record.
    fn refused(&self, label: &str, args: &[&str]) -> Result<String> {
        let out = self.attack(args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            !out.status.success() && !text.contains("session open"),
            "{label}: the scheduler took the fake agent: {text}"
        );
        eprintln!("{label}: {}", text.trim());
        Ok(text)
    }

    /// Every lease the scheduler lists, as `harvest leases --json` shows them to root.
    fn leases(&self) -> Result<Vec<serde_json::Value>> {
        let text = self.cli.ok(None, &["leases", "--json"])?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let list = v.get("leases").unwrap_or(&v);
        Ok(list.as_array().context("leases --json: no array")?.clone())
    }

    fn lease(&self, id: &str) -> Result<serde_json::Value> {
        self.leases()?
            .into_iter()
            .find(|l| l["id"] == id)
            .with_context(|| format!("lease {id} is no longer listed"))
    }

    /// The sum of the scheduler's `harvest_agent_refusals_total` over its reasons.
    fn agent_refusals(&self) -> Result<f64> {
        let url = self
            .cluster
            .var("HARVEST_SCHEDULER_METRICS")
            .context("the cluster exports no HARVEST_SCHEDULER_METRICS")?;
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "10", url])
            .output()?;
        ensure!(out.status.success(), "curl {url}: {:?}", out.status);
        Ok(String::from_utf8(out.stdout)?
            .lines()
            .filter(|l| l.starts_with("harvest_agent_refusals_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
            + 0.0)
    }

    /// Acquires a lease as `user` (through `runuser`, with `group` when given).
    fn acquire_as(&self, user: &str, group: Option<&str>) -> Result<Output> {
        self.cli.acquire(Some(user), group, &self.lib)
    }
}

/// The uids of every running `harvest-executor`.
fn executor_uids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.path().join("status")).ok()?;
            let name = status.lines().next()?.strip_prefix("Name:")?.trim();
            if !name.starts_with("harvest-executo") {
                return None;
            }
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn an_unprivileged_fake_agent_is_refused_and_changes_nothing() -> Result<()> {
    let rig = Rig::new("harvest-security-control")?;
    let ca = rig.tls.join("ca.pem");
    ensure!(
        ca.exists(),
        "no {}: is TLS on in the cluster?",
        ca.display()
    );
    let ca = ca.to_str().context("utf-8 path")?.to_owned();

    // The keys that would make a real agent or the scheduler are root-only.
    for key in ["node-n1.key", "node-n2.key", "scheduler.key", "ca.key"] {
        let path = rig.tls.join(key);
        ensure!(path.exists(), "no {}", path.display());
        let out = Command::new("runuser")
            .args(["-u", TEST_USER, "--", "cat"])
            .arg(&path)
            .output()?;
        ensure!(
            !out.status.success() && out.stdout.is_empty(),
            "{TEST_USER} can read {}",
            path.display()
        );
    }

    // The victim's live lease.
    let out = rig.acquire_as(VICTIM, None)?;
    ensure!(
        out.status.success(),
        "the victim's lease failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acquired: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = acquired["id"].as_str().context("no lease id")?.to_owned();
    let node = acquired["node"].as_str().context("no node")?.to_owned();
    let result = (|| -> Result<()> {
        let before = rig.lease(&id)?;
        ensure!(before["state"] == "active", "{before}");
        let address = before["executor_address"].clone();
        let uid = before["uid"].to_string();
        let refusals = rig.agent_refusals()?;

        let events = [
            "--ready",
            id.as_str(),
            uid.as_str(),
            "127.0.0.1:9",
            "--exited",
            id.as_str(),
        ];
        let with = |extra: &[&str]| -> Vec<String> {
            extra
                .iter()
                .chain(events.iter())
                .map(|s| (*s).to_owned())
                .collect()
        };
        let attacks: Vec<(&str, Vec<String>)> = vec![
            ("plaintext as the lease's node", with(&[node.as_str()])),
            ("plaintext as a made-up node", with(&["evil1"])),
            (
                "TLS without a client certificate as the lease's node",
                with(&[node.as_str(), "--ca", ca.as_str()]),
            ),
            (
                "TLS without a client certificate as a made-up node",
                with(&["evil1", "--ca", ca.as_str()]),
            ),
        ];
        for (label, args) in &attacks {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            rig.refused(label, &args)?;
        }
        // With the node's own certificate: the key cannot even be read.
        let cert = rig.tls.join(format!("node-{node}.pem"));
        let key = rig.tls.join(format!("node-{node}.key"));
        let text = rig.refused(
            "TLS with the node's certificate",
            &[
                node.as_str(),
                "--ca",
                &ca,
                "--cert",
                cert.to_str().context("utf-8")?,
                "--key",
                key.to_str().context("utf-8")?,
            ],
        )?;
        ensure!(text.contains("Permission denied"), "{text}");

        let after = rig.lease(&id)?;
        ensure!(
            after["state"] == "active",
            "the lease is no longer active: {after}"
        );
        ensure!(
            after["executor_address"] == address,
            "the lease's address changed: {address} -> {}",
            after["executor_address"]
        );
        let nodes: Vec<String> = rig.cli.nodes()?.into_iter().map(|n| n.0).collect();
        ensure!(
            nodes.iter().all(|n| n == "n1" || n == "n2"),
            "harvest nodes lists a made-up node: {nodes:?}"
        );
        let grew = rig.agent_refusals()?;
        ensure!(
            grew >= refusals + 2.0,
            "harvest_agent_refusals_total went from {refusals} to {grew} (two sessions without a certificate)"
        );
        eprintln!("harvest_agent_refusals_total: {refusals} -> {grew}");

        // A compromised node: root on the other node, with that node's own certificate and key,
        // sends Ready (its own address) and Exited for the lease this node does not hold.
        let other = if node == "n1" { "n2" } else { "n1" };
        let (cert, key) = (
            rig.tls.join(format!("node-{other}.pem")),
            rig.tls.join(format!("node-{other}.key")),
        );
        let mut args: Vec<String> = [other, "--ca", ca.as_str(), "--cert"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(cert.to_str().context("utf-8")?.to_owned());
        args.push("--key".into());
        args.push(key.to_str().context("utf-8")?.to_owned());
        args.extend(events.iter().map(|s| (*s).to_owned()));
        let out = Command::new(&rig.agent)
            .arg(&rig.cli.scheduler)
            .args(&args)
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        eprintln!(
            "a compromised {other} with its own certificate: {}",
            text.trim()
        );
        // Its real agent is connected: the scheduler keeps that session and refuses the
        // second one, so none of the events is even read (events from a node's own session
        // for a lease another node holds are refused as `not_holder`: scheduler unit tests).
        ensure!(
            !out.status.success() && text.contains("already has a connected agent"),
            "a second session for {other} was taken: {text}"
        );
        let after = rig.lease(&id)?;
        ensure!(
            after["state"] == "active" && after["executor_address"] == address,
            "another node's events changed the lease: {after}"
        );
        ensure!(
            rig.cli.nodes()?.iter().any(|n| n.0 == other && n.1 == "up"),
            "{other}'s own harvestd lost its session"
        );
        Ok(())
    })();
    let _ = rig.cli.run(Some(VICTIM), &["lease", "release", &id]);
    result
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn orders_for_system_accounts_or_foreign_groups_never_start_an_executor() -> Result<()> {
    let rig = Rig::new("harvest-security-identity")?;
    let (uid, _) = test_user()?;
    let cases: [(&str, Option<&str>, u32, &str); 3] = [
        ("daemon", None, 1, "min_executor_uid"),
        ("nobody", None, 65534, "system account"),
        (TEST_USER, Some("users"), uid, "not the primary group"),
    ];
    for (user, group, uid, says) in cases {
        let out = rig.acquire_as(user, group)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{user} {group:?}: {} {}", out.status, stderr.trim());
        ensure!(
            out.status.code() == Some(6) && stderr.contains(says),
            "{user} (group {group:?}): expected exit 6 saying {says:?}, got {}: {stderr}",
            out.status
        );
        let live: Vec<_> = rig
            .leases()?
            .into_iter()
            .filter(|l| l["uid"] == uid && (l["state"] == "active" || l["state"] == "pending"))
            .collect();
        ensure!(live.is_empty(), "{user}: live leases {live:?}");
        ensure!(
            !executor_uids().contains(&uid),
            "an executor runs as {user} (uid {uid})"
        );
    }
    // The same user with its primary group runs (the policy refuses the identity, not the user).
    let out = rig.acquire_as(TEST_USER, None)?;
    ensure!(
        out.status.success(),
        "{TEST_USER} with its primary group was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acquired: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = acquired["id"].as_str().context("no lease id")?;
    let _ = rig.cli.run(Some(TEST_USER), &["lease", "release", id]);
    Ok(())
}
