//! `deploy/local-cluster up` repairs a cluster in use: with a job running, a SIGKILLed harvestd
//! (a zombie until something reaps it, which must not pass for a running daemon) is started
//! again, and `up` succeeds because every node is up and responding (a node running a job is
//! not idle, and must not make `up` report failure after it repaired everything).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_system_tests::{LocalCluster, repo_root};

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with(['Z', 'X']))
    })
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest), root"]
fn up_restarts_a_killed_harvestd_while_a_job_runs_and_says_it_succeeded() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let nodes = cluster.node_states()?;
    let node = nodes.first().context("sinfo lists no node")?.0.clone();
    let job = cluster.sbatch(&["-w", &node, "-n", "1", "--wrap", "sleep 600"])?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;

    let name = format!("harvestd-{node}");
    let before = cluster.recorded_pid(&name)?;
    ensure!(
        alive(before),
        "{name} (pid {before}) is not running before the test"
    );
    let status = std::process::Command::new("kill")
        .args(["-KILL", &before.to_string()])
        .status()?;
    ensure!(status.success(), "kill -KILL {before} failed");

    let up = std::process::Command::new(repo_root().join("deploy/local-cluster"))
        .arg("up")
        .env(
            "HARVEST_CLUSTER_DIR",
            cluster.var("HARVEST_CLUSTER_DIR").unwrap_or_default(),
        )
        .env("HARVEST_WAIT_IDLE_S", "30")
        .output()?;
    let stderr = String::from_utf8_lossy(&up.stderr);
    ensure!(
        up.status.success(),
        "deploy/local-cluster up with job {} running failed:\n{stderr}",
        job.id
    );
    ensure!(
        !stderr.contains(&format!("{name} already running (pid {before})")),
        "up took the killed {name} (pid {before}) for a running daemon:\n{stderr}"
    );
    let after = cluster.recorded_pid(&name)?;
    ensure!(
        after != before && alive(after),
        "up did not start {name} again (pid before {before}, after {after}):\n{stderr}"
    );
    ensure!(
        cluster.job_state(job.id)?.as_deref() == Some("RUNNING"),
        "the job stopped running while up repaired the cluster"
    );
    Ok(())
}
