//! The standby scheduler on the real local cluster: the primary harvest-scheduler is SIGKILLed
//! while a user's lease is serving invocations; the invocations go on (they never pass through
//! the scheduler), the standby takes the primary lock and the agents register with it, the
//! user's lease is there with the same id and still opens with the same secret (`harvest invoke
//! --lease` asks the scheduler for it), new leases are placed through the standby within 5 s,
//! and `deploy/local-cluster up` brings the killed scheduler back as the new standby.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use harvest_system_tests::fixtures::{
    Cli, Scratch, TEST_USER, build_library, scheduler_url, test_user,
};
use harvest_system_tests::{LocalCluster, poll, repo_root};

/// The pid `deploy/local-cluster` recorded for `name`.
fn recorded_pid(cluster: &LocalCluster, name: &str) -> Result<i32> {
    let run = cluster
        .var("HARVEST_RUN_DIR")
        .context("no HARVEST_RUN_DIR")?;
    let path = PathBuf::from(run).join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(text.trim().parse()?)
}

fn sigkill(pid: i32) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -KILL {pid} failed");
    Ok(())
}

/// `deploy/local-cluster up` on the test's cluster: starts what is not running.
fn up(cluster: &LocalCluster) -> Result<()> {
    let up = std::process::Command::new(repo_root().join("deploy/local-cluster"))
        .arg("up")
        .env(
            "HARVEST_CLUSTER_DIR",
            cluster.var("HARVEST_CLUSTER_DIR").unwrap_or_default(),
        )
        .output()?;
    ensure!(
        up.status.success(),
        "deploy/local-cluster up after the kill failed:\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    Ok(())
}

fn json_field(json: &str, key: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    Ok(v[key].as_str().context(key.to_owned())?.to_owned())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler and its standby), root, cc"]
fn the_standby_takes_over_and_leases_keep_serving_when_the_primary_is_killed() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let urls = scheduler_url(&cluster)?;
    ensure!(
        urls.contains(','),
        "HARVEST_SCHEDULER={urls}: the local cluster exports no standby scheduler"
    );
    let scratch = Scratch::new("harvest-failover-test")?;
    let cli = Cli::install(&scratch.0, urls, &cluster)?;
    let lib = build_library(&scratch.0)?;
    let lib = lib.to_str().context("utf-8 path")?;
    test_user()?;
    let user = Some(TEST_USER);

    let acquired = poll(Duration::from_secs(20), || {
        let out = cli.run(
            user,
            &[
                "lease", "acquire", "--lib", lib, "--cores", "1", "--mem", "64M", "--json",
            ],
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?
    .context("no lease before the fault")?;
    let lease = json_field(&acquired, "id")?;
    let echo = |input: &str| -> Result<String> {
        let input_file = scratch.0.join("input");
        std::fs::write(&input_file, input)?;
        cli.ok(
            user,
            &[
                "invoke",
                "--lease",
                &lease,
                "--fn",
                "echo",
                "--input",
                input_file.to_str().context("utf-8")?,
            ],
        )
    };
    ensure!(echo("before")? == "before");

    // SIGKILL the primary: its lock is released at once and the standby takes it.
    let primary = recorded_pid(&cluster, "harvest-scheduler")?;
    let killed = Instant::now();
    sigkill(primary)?;
    // The lease keeps serving (the call asks the scheduler for the lease's address and secret,
    // which the standby rebuilt from the agent that runs its executor).
    let served = poll(Duration::from_secs(15), || Ok(echo("during").ok()))?;
    ensure!(
        served.as_deref() == Some("during"),
        "the lease did not serve through the standby"
    );
    let new_lease = poll(Duration::from_secs(15), || {
        let out = cli.run(
            user,
            &[
                "lease", "acquire", "--lib", lib, "--cores", "1", "--mem", "64M", "--json",
            ],
        )?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    })?
    .context("no new lease through the standby within 15 s")?;
    let recovery = killed.elapsed();
    eprintln!("new leases placed again {recovery:?} after the primary was killed");
    ensure!(
        recovery < Duration::from_secs(5),
        "new leases were placed again only after {recovery:?}"
    );
    ensure!(json_field(&new_lease, "id")? != lease);
    let listed = cli.ok(user, &["leases", "--json"])?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let ours: Vec<_> = listed
        .as_array()
        .context("leases --json is an array")?
        .iter()
        .filter(|l| l["id"] == lease.as_str())
        .collect();
    ensure!(
        ours.len() == 1 && ours[0]["state"] == "active",
        "the lease after the failover: {ours:?}"
    );

    // `up` restarts what is missing: the killed scheduler comes back as the standby. Then the
    // standby (primary now) is killed in turn and the first one takes over again, which also
    // leaves the cluster as the next tests expect it (the primary on the first address).
    up(&cluster)?;
    ensure!(echo("after")? == "after");
    sigkill(recorded_pid(&cluster, "harvest-scheduler-standby")?)?;
    let served = poll(Duration::from_secs(15), || Ok(echo("back").ok()))?;
    ensure!(
        served.as_deref() == Some("back"),
        "the lease did not serve after the failover back"
    );
    up(&cluster)?;
    for id in [lease, json_field(&new_lease, "id")?] {
        cli.ok(user, &["lease", "release", &id])?;
    }
    Ok(())
}
