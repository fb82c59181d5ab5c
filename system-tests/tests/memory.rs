//! Memory leases on the real cluster (issue 22): a region of a node's idle memory lent to one
//! owner beside a running batch job, read back as written; another user gets nothing; a batch
//! step that needs the memory revokes the lease before its tasks start; the region never counts
//! as idle while held.
//!
//! Needs `deploy/local-cluster up --nodes 2` with harvestd and harvest-scheduler, a debug build
//! of the workspace, root and munged (see leases.rs).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_core::region::OVERHEAD_MIB;
use harvest_system_tests::fixtures::{
    Cli, ClusterRig, TEST_USER as USER, alive_check, regular_user, test_user,
};
use harvest_system_tests::{LocalCluster, poll};
use serde_json::Value;

const OTHER: &str = "harvest-other-user";

/// Fills both nodes' CPUs with a job each (1 GiB of memory apiece): no function lease fits
/// anywhere, and a memory lease still does.
fn fill_cpus(cluster: &LocalCluster, cli: &Cli) -> Result<()> {
    for node in ["n1", "n2"] {
        let job =
            cluster.sbatch(&["-w", node, "--exclusive", "--mem=1G", "--wrap", "sleep 300"])?;
        job.wait_state("RUNNING", Duration::from_secs(30))?;
        cli.wait_node_full(node)?;
    }
    Ok(())
}

fn acquire(cli: &Cli, size: &str) -> Result<Value> {
    cli.json(
        Some(USER),
        &[
            "memory",
            "acquire",
            "--size",
            size,
            "--lifetime",
            "5m",
            "--json",
        ],
    )
}

/// Bytes no two offsets share, so a misplaced piece is seen.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root"]
fn a_memory_lease_beside_a_running_job_is_read_back_by_its_owner_alone() -> Result<()> {
    let ClusterRig {
        cluster,
        cli,
        scratch,
        ..
    } = ClusterRig::new("harvest-memory-test")?;
    regular_user(OTHER)?;
    fill_cpus(&cluster, &cli)?;
    let lease = acquire(&cli, "256M")?;
    let id = lease["id"].as_str().context("lease id")?.to_owned();
    let node = lease["node"].as_str().context("lease node")?.to_owned();
    ensure!(
        lease["state"] == "active"
            && lease["memory"]["region_mib"] == 256
            && lease["memory_mib"] == 256 + OVERHEAD_MIB
            && lease["cpus"].as_array().is_some_and(Vec::is_empty),
        "a memory lease of 256 MiB holding no CPU: {lease}"
    );
    // Held memory is not idle: the node's view counts it as function memory.
    let seen = poll(Duration::from_secs(15), || {
        let n = cli.node(&node)?;
        let m = &n["memory_mib"];
        let function = m["function"].as_u64().unwrap_or(0);
        Ok((function >= 256 + OVERHEAD_MIB).then(|| n.clone()))
    })?
    .with_context(|| format!("{node} never counted the region as function memory"))?;
    let m = &seen["memory_mib"];
    let (total, batch, function, idle) = (
        m["total"].as_u64().unwrap_or(0),
        m["batch"].as_u64().unwrap_or(0),
        m["function"].as_u64().unwrap_or(0),
        m["idle"].as_u64().unwrap_or(u64::MAX),
    );
    ensure!(
        idle + batch + function <= total,
        "the region also counts as idle on {node}: {m}"
    );

    // 5 MiB and a bit (more than one 4 MiB piece), at an odd offset.
    let data = pattern((5 << 20) + 123);
    let input = scratch.0.join("data.bin");
    std::fs::write(&input, &data)?;
    std::os::unix::fs::chown(&input, Some(test_user()?.0), None)?;
    let input = input.to_str().context("utf-8")?;
    cli.ok(
        Some(USER),
        &["memory", "write", &id, "--offset", "4097", "--input", input],
    )?;
    let len = data.len().to_string();
    let out = cli.run(
        Some(USER),
        &["memory", "read", &id, "--offset", "4097", "--len", &len],
    )?;
    ensure!(
        out.status.success(),
        "read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.stdout == data,
        "read {} bytes, not what was written",
        out.stdout.len()
    );
    // What was never written reads as zeros.
    let head = cli.run(Some(USER), &["memory", "read", &id, "--len", "4097"])?;
    ensure!(
        head.status.success() && head.stdout == vec![0u8; 4097],
        "unwritten bytes"
    );
    // Past the end: refused, naming the region.
    let past = cli.run(
        Some(USER),
        &[
            "memory",
            "read",
            &id,
            "--offset",
            &(256u64 << 20).to_string(),
            "--len",
            "1",
        ],
    )?;
    ensure!(
        !past.status.success() && String::from_utf8_lossy(&past.stderr).contains("region"),
        "a read past the region: {past:?}"
    );

    // Another user: no secret, no bytes, and nothing changed.
    for args in [
        vec!["memory", "read", id.as_str(), "--len", "16"],
        vec!["memory", "write", id.as_str(), "--input", "/dev/null"],
        vec!["lease", "release", id.as_str()],
    ] {
        let out = cli.run(Some(OTHER), &args)?;
        ensure!(
            !out.status.success() && out.stdout.is_empty(),
            "{OTHER} ran `harvest {}`: {out:?}",
            args.join(" ")
        );
    }
    let again = cli.run(
        Some(USER),
        &["memory", "read", &id, "--offset", "4097", "--len", &len],
    )?;
    ensure!(
        again.stdout == data,
        "the region changed after the other user's tries"
    );
    cli.ok(Some(USER), &["memory", "release", &id])?;
    let ended = cli.json(Some(USER), &["lease", "renew", &id, "--json"])?;
    ensure!(ended["state"] == "released", "after release: {ended}");
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root"]
fn a_step_that_needs_the_memory_revokes_the_memory_lease_before_its_tasks_start() -> Result<()> {
    let ClusterRig {
        cluster,
        cli,
        scratch,
        ..
    } = ClusterRig::new("harvest-memory-reclaim-test")?;
    // Most of the idle memory of either node (leaving 1 GiB); the nodes' CPUs stay free for
    // the job that follows.
    let mut idle = u64::MAX;
    for node in ["n1", "n2"] {
        let n = cli.node(node)?;
        idle = idle.min(n["memory_mib"]["idle"].as_u64().context("idle memory")?);
    }
    let region = idle - OVERHEAD_MIB - 1024;
    let lease = acquire(&cli, &format!("{region}M"))?;
    let (id, node) = (
        lease["id"].as_str().context("id")?.to_owned(),
        lease["node"].as_str().context("node")?.to_owned(),
    );
    let total = cli.node(&node)?["memory_mib"]["total"]
        .as_u64()
        .context("total memory")?;
    cli.ok(
        Some(USER),
        &[
            "memory",
            "write",
            &id,
            "--offset",
            "0",
            "--input",
            "/etc/hostname",
        ],
    )?;
    let pids = poll(Duration::from_secs(10), || {
        let p = cluster.lease_pids(&node, &id)?;
        Ok((!p.is_empty()).then_some(p))
    })?
    .context("the memory lease's cgroup holds no executor")?;
    // A job asking for memory the region holds: its step must find the executor gone.
    let job_mib = total - region - OVERHEAD_MIB + 2048;
    let jobs = scratch.0.join("jobs");
    std::fs::create_dir(&jobs)?;
    let job = cluster.sbatch(&[
        "-w",
        &node,
        &format!("--mem={job_mib}M"),
        "-o",
        jobs.join("slurm-%j.out").to_str().context("utf-8")?,
        "--wrap",
        &alive_check(&pids),
    ])?;
    let (state, exit) = cluster.job_end(job.id, Duration::from_secs(60))?;
    ensure!(
        state == "COMPLETED" && exit == "0:0",
        "job {}: {state} {exit}",
        job.id
    );
    let out = std::fs::read_to_string(jobs.join(format!("slurm-{}.out", job.id)))?;
    ensure!(
        out.contains("checked") && !out.contains("alive"),
        "the memory lease's processes {pids:?} were alive when job {}'s task started: {out}",
        job.id
    );
    // The agent evicted it at the step's start; its report reaches the scheduler soon after.
    let ended = poll(Duration::from_secs(15), || {
        let l = cli.json(Some(USER), &["lease", "renew", &id, "--json"])?;
        Ok((l["state"] != "active").then_some(l))
    })?
    .context("the memory lease is still active after the step")?;
    ensure!(
        ended["state"] == "revoked"
            && ended["end_cause"] == "reclaimed"
            && ended["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("memory")),
        "the memory lease after the step: {ended}"
    );
    // The owner's next read says the lease was revoked; nothing is read from elsewhere.
    let gone = cli.run(Some(USER), &["memory", "read", &id, "--len", "8"])?;
    ensure!(
        !gone.status.success() && gone.stdout.is_empty(),
        "a read of a revoked memory lease: {gone:?}"
    );
    Ok(())
}
