//! The acceptance tests of reclaim: the batch job always wins, and no invocation is silently
//! lost.
//!
//! - A function spinning on n1 while a user's job taking all of n1 starts: the job's tasks,
//!   looking at start, find none of the lease's executor processes alive; the caller
//!   (`--no-failover`) exits with code 15 and `LeaseRevoked` naming the job (the plugin, run by
//!   slurmstepd as the job's user, reached the root agent).
//! - The same with failover and both nodes open: the invocation completes on the other node and
//!   `harvest invoke` exits 0.
//! - With harvestd stopped (its socket accepts, nobody answers), a job taking n1 still finds
//!   none of a lease's processes alive: the plugin ended them itself; harvestd, continued, ends
//!   the lease.
//! - An executor holding most of n1's idle memory: a job asking for that memory starts, touches
//!   it and completes (no OOM kill); the lease is revoked for memory.
//!
//! n2 is filled with a job where a test needs a one-node harvest cluster. Needs `deploy/local-
//! cluster up --nodes 2` with harvestd and harvest-scheduler, a debug build of the workspace,
//! `cc`, root and munged (see leases.rs).

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harvest_system_tests::fixtures::{
    Cli, ClusterRig, Scratch, TEST_USER as USER, alive_check, test_user,
};
use harvest_system_tests::{LocalCluster, poll};
use serde_json::Value;

struct Rig {
    cluster: LocalCluster,
    cli: Cli,
    scratch: Scratch,
    lib: String,
}

impl Rig {
    fn new(name: &str) -> Result<Self> {
        let ClusterRig {
            cluster,
            cli,
            scratch,
            lib,
        } = ClusterRig::new(name)?;
        Ok(Self {
            cluster,
            cli,
            scratch,
            lib,
        })
    }

    /// The test user's live lease, once there is exactly one and it is active.
    fn active_lease(&self) -> Result<Value> {
        let found = poll(Duration::from_secs(30), || {
            let leases = self.cli.json(None, &["leases", "--json"])?;
            let mine: Vec<Value> = leases
                .as_array()
                .context("leases --json is an array")?
                .iter()
                .filter(|l| l["user"] == USER && l["state"] == "active")
                .cloned()
                .collect();
            Ok((mine.len() == 1).then(|| mine[0].clone()))
        })?;
        found.context("no active lease of the test user within 30 s")
    }

    /// Starts `harvest invoke ARGS` as the test user in the background.
    fn invoke_in_background(&self, args: &[&str]) -> Result<Child> {
        let mut full = vec!["invoke", "--lib", self.lib.as_str(), "--cores", "1"];
        full.extend_from_slice(args);
        Ok(self
            .cli
            .command(Some(USER), &full)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }
}

/// Waits for a background `harvest invoke` (bounded) and returns (exit code, stdout, stderr).
fn finish(mut child: Child, within: Duration) -> Result<(Option<i32>, String, String)> {
    let status = poll(within, || Ok(child.try_wait()?))?;
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("harvest invoke did not finish within {within:?}");
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut err)?;
    }
    Ok((status.code(), out, err))
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn a_job_taking_the_node_finds_no_executor_and_the_caller_gets_lease_revoked() -> Result<()> {
    let rig = Rig::new("harvest-reclaim-test")?;
    let filler = rig
        .cluster
        .sbatch(&["-w", "n2", "--exclusive", "--wrap", "sleep 300"])?;
    filler.wait_state("RUNNING", Duration::from_secs(30))?;
    rig.cli.wait_node_full("n2")?;
    let n1 = rig.cli.node("n1")?;
    let before = n1["reclaims"].as_u64().unwrap_or(0);
    let overruns_before = n1["counters"]["reclaim_overruns"].as_u64().unwrap_or(0);
    let caller = rig.invoke_in_background(&[
        "--fn",
        "spin",
        "--mem",
        "128M",
        "--timeout",
        "120s",
        "--no-failover",
    ])?;
    let lease = rig.active_lease()?;
    let (id, node) = (
        lease["id"].as_str().unwrap(),
        lease["node"].as_str().unwrap(),
    );
    ensure!(node == "n1", "the lease went to {node}, not n1: {lease}");
    // The executor and the worker running `spin` (the worker forks per connection).
    let pids = poll(Duration::from_secs(10), || {
        let p = rig.cluster.lease_pids("n1", id)?;
        Ok((p.len() >= 2).then_some(p))
    })?
    .context("the lease's cgroup never held the executor and a worker")?;

    // The job is the test user's, as on a site: slurmstepd runs the plugin's user_init with
    // that user's effective uid, and the step start must still reach the root agent (the
    // caller's error below names the job only if the agent reclaimed for it).
    let jobs = rig.scratch.0.join("jobs");
    std::fs::create_dir(&jobs)?;
    let (uid, gid) = test_user()?;
    std::os::unix::fs::chown(&jobs, Some(uid), Some(gid))?;
    let job = rig.cluster.sbatch_as(
        USER,
        &jobs.join("slurm-%j.out"),
        &["-w", "n1", "--exclusive", "--wrap", &alive_check(&pids)],
    )?;
    let (state, exit) = rig.cluster.job_end(job.id, Duration::from_secs(60))?;
    ensure!(
        state == "COMPLETED" && exit == "0:0",
        "job {}: {state} {exit}",
        job.id
    );
    let out = std::fs::read_to_string(jobs.join(format!("slurm-{}.out", job.id)))?;
    ensure!(
        out.contains("checked") && !out.contains("alive"),
        "executor processes {pids:?} were alive when job {}'s task started: {out}",
        job.id
    );

    let (code, _, stderr) = finish(caller, Duration::from_secs(30))?;
    ensure!(
        code == Some(15)
            && stderr.contains("LeaseRevoked")
            && stderr.contains(&format!("reclaimed by job {}", job.id)),
        "the caller exited with {code:?} and said {stderr:?}"
    );
    let lease = rig.cli.json(None, &["lease", "renew", id, "--json"])?;
    ensure!(
        lease["state"] == "revoked" && lease["end_cause"] == "reclaimed",
        "the lease after reclaim: {lease}"
    );
    let after = rig.cli.node("n1")?;
    ensure!(
        after["reclaims"].as_u64().unwrap_or(0) > before
            && after["counters"]["reclaim_overruns"].as_u64() == Some(overruns_before),
        "n1 does not count the reclaim, or counts an overrun (before: {before} reclaims, \
         {overruns_before} overruns): {after}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn a_reclaimed_invocation_fails_over_to_the_other_node_and_completes() -> Result<()> {
    let rig = Rig::new("harvest-failover-test")?;
    let input = rig.scratch.0.join("burn.in");
    std::fs::write(&input, "4000")?;
    let input = input.to_str().context("utf-8")?;
    let caller = rig.invoke_in_background(&[
        "--fn",
        "burn",
        "--mem",
        "128M",
        "--input",
        input,
        "--timeout",
        "60s",
    ])?;
    let lease = rig.active_lease()?;
    let node = lease["node"].as_str().context("lease node")?.to_owned();
    let other = if node == "n1" { "n2" } else { "n1" };
    // Let the function run a moment, then take its node.
    std::thread::sleep(Duration::from_millis(500));
    let job = rig
        .cluster
        .sbatch(&["-w", &node, "--exclusive", "--wrap", "sleep 60"])?;
    let (code, out, stderr) = finish(caller, Duration::from_secs(60))?;
    ensure!(
        code == Some(0) && out == "done",
        "harvest invoke exited with {code:?}, printed {out:?}, said {stderr:?}"
    );
    ensure!(
        stderr.contains(&format!("revoked: reclaimed by job {}", job.id))
            && stderr.contains("retrying"),
        "the revocation was not reported: {stderr:?}"
    );
    let leases = rig.cli.json(None, &["leases", "--json"])?;
    let mine: Vec<&Value> = leases
        .as_array()
        .context("array")?
        .iter()
        .filter(|l| l["user"] == USER)
        .collect();
    ensure!(
        mine.iter()
            .any(|l| l["node"] == other && l["state"] == "released"),
        "no lease on {other} completed the call: {mine:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn a_job_needing_the_memory_an_executor_holds_runs_to_completion() -> Result<()> {
    let rig = Rig::new("harvest-reclaim-mem-test")?;
    // A program the job runs: touches N MiB and says so.
    let src = rig.scratch.0.join("touch.c");
    let prog = rig.scratch.0.join("touch");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <stdlib.h>\nint main(int c, char **v) { size_t n = \
         strtoul(v[1], 0, 10) << 20; char *p = malloc(n); if (!p) return 2; for (size_t i = 0; \
         i < n; i += 4096) p[i] = 1; printf(\"touched %s MiB\\n\", v[1]); return 0; }\n",
    )?;
    let cc = std::process::Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(&prog)
        .arg(&src)
        .output()?;
    ensure!(
        cc.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let filler = rig
        .cluster
        .sbatch(&["-w", "n2", "--exclusive", "--wrap", "sleep 300"])?;
    filler.wait_state("RUNNING", Duration::from_secs(30))?;
    rig.cli.wait_node_full("n2")?;
    let n1 = rig.cli.node("n1")?;
    let total = n1["memory_mib"]["total"].as_u64().context("total memory")?;
    let idle = n1["memory_mib"]["idle"].as_u64().context("idle memory")?;
    // The lease takes nearly all idle memory; its function really touches 1 GiB of it.
    let lease_mib = idle - 128;
    let hold_in = rig.scratch.0.join("hold.in");
    std::fs::write(&hold_in, "1024")?;
    let caller = rig.invoke_in_background(&[
        "--fn",
        "hold",
        "--mem",
        &format!("{lease_mib}M"),
        "--input",
        hold_in.to_str().context("utf-8")?,
        "--timeout",
        "120s",
        "--no-failover",
    ])?;
    let lease = rig.active_lease()?;
    ensure!(lease["node"] == "n1", "the lease is not on n1: {lease}");
    std::thread::sleep(Duration::from_secs(2));
    // The job's memory plus the lease's exceed the node: the lease must go first.
    let job_mib = total - lease_mib + 1024;
    let job = rig.cluster.sbatch(&[
        "-w",
        "n1",
        &format!("--mem={job_mib}M"),
        "--wrap",
        &format!("{} 1536", prog.display()),
    ])?;
    let (state, exit) = rig.cluster.job_end(job.id, Duration::from_secs(60))?;
    let out = rig.cluster.job_output(job.id)?;
    ensure!(
        state == "COMPLETED" && exit == "0:0" && out.contains("touched 1536 MiB"),
        "job {} ({job_mib} MiB): {state} {exit}: {out}",
        job.id
    );
    let (code, _, stderr) = finish(caller, Duration::from_secs(30))?;
    ensure!(
        code == Some(15)
            && stderr.contains("LeaseRevoked")
            && stderr.contains("batch jobs need the node's memory"),
        "the caller exited with {code:?} and said {stderr:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn the_reclaim_benchmark_runs_in_its_quick_mode() -> Result<()> {
    let _cluster = LocalCluster::from_env()?;
    let out = Scratch::new("harvest-reclaim-bench-test")?;
    let run = std::process::Command::new(harvest_system_tests::fixtures::target_bin(
        "harvest-experiments",
    )?)
    .args(["reclaim", "--quick", "--out"])
    .arg(&out.0)
    .output()?;
    ensure!(
        run.status.success(),
        "harvest-experiments reclaim --quick: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let summary: Value = serde_json::from_slice(&std::fs::read(out.0.join("summary.json"))?)?;
    for key in [
        "reclaim_p50_ms",
        "reclaim_p99_ms",
        "step_start_added_p50_ms",
        "overruns",
    ] {
        ensure!(
            summary[key].is_number(),
            "summary.json has no {key}: {summary}"
        );
    }
    ensure!(
        summary["rounds"] == 5 && summary["callers_not_revoked"] == 0,
        "every reclaimed caller must get LeaseRevoked: {summary}"
    );
    let rows = std::fs::read_to_string(out.0.join("rounds.csv"))?;
    ensure!(rows.lines().count() == 11, "5 rounds of each kind: {rows}");
    Ok(())
}

/// Sends `sig` to `pid` with kill(1).
fn signal(pid: i32, sig: &str) -> Result<()> {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// SIGCONTs a stopped harvestd when dropped, whatever the test's outcome.
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn with_harvestd_stopped_the_plugin_itself_ends_the_functions_before_the_jobs_tasks() -> Result<()>
{
    let rig = Rig::new("harvest-reclaim-noagent-test")?;
    let filler = rig
        .cluster
        .sbatch(&["-w", "n2", "--exclusive", "--wrap", "sleep 300"])?;
    filler.wait_state("RUNNING", Duration::from_secs(30))?;
    rig.cli.wait_node_full("n2")?;
    let lease: Value = serde_json::from_str(&rig.cli.ok(
        Some(USER),
        &[
            "lease", "acquire", "--lib", &rig.lib, "--cores", "1", "--mem", "64M", "--json",
        ],
    )?)?;
    let id = lease["id"].as_str().context("lease id")?.to_owned();
    ensure!(lease["node"] == "n1", "the lease went elsewhere: {lease}");
    let pids = poll(Duration::from_secs(10), || {
        let p = rig.cluster.lease_pids("n1", &id)?;
        Ok((!p.is_empty()).then_some(p))
    })?
    .context("the lease's cgroup never held its executor")?;

    // harvestd stopped: its socket accepts, nobody answers (as when it hangs or is SIGKILLed
    // and not yet restarted, the plugin's exchange times out or fails).
    let agent = rig.cluster.recorded_pid("harvestd-n1")?;
    signal(agent, "STOP")?;
    let resume = Continue(agent);
    let job = rig
        .cluster
        .sbatch(&["-w", "n1", "--exclusive", "--wrap", &alive_check(&pids)])?;
    let (state, exit) = rig.cluster.job_end(job.id, Duration::from_secs(60))?;
    drop(resume);
    ensure!(
        state == "COMPLETED" && exit == "0:0",
        "job {}: {state} {exit}",
        job.id
    );
    let out = rig.cluster.job_output(job.id)?;
    ensure!(
        out.contains("checked") && !out.contains("alive"),
        "with harvestd stopped, the lease's processes {pids:?} were alive when job {}'s task \
         started: {out}",
        job.id
    );
    // harvestd, running again, finds the executor gone and ends the lease.
    let ended = poll(Duration::from_secs(60), || {
        let l = rig.cli.json(None, &["lease", "renew", &id, "--json"]);
        Ok(l.ok().filter(|l| l["state"] != "active"))
    })?;
    let ended = ended.with_context(|| format!("lease {id} still active 60 s after the job"))?;
    let _ = rig.cli.run(Some(USER), &["lease", "release", &id]);
    ensure!(
        ended["state"] != "active",
        "the lease whose executor the plugin ended: {ended}"
    );
    Ok(())
}
