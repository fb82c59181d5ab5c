//! GPU slots on the real cluster (Slurm 22.05, v1 cgroups), with the local cluster's fake GPUs:
//! character devices `nvidia0`, `nvidia1` (major 195, no driver: opening one that is allowed gives
//! ENXIO) that Slurm's gres/gpu hands out with `ConstrainDevices=yes`, and that harvestd finds with
//! `gpu_source = "device-files"` and lends.
//!
//! - A job given one GPU, whose environment claims both (`SLURM_STEP_GPUS=0,1`, which the plugin
//!   never reads): harvestd first counts every GPU as the job's (22.05's devices list cannot say
//!   which), then narrows to the GRES index `scontrol` gives; a lease asking for a GPU gets the
//!   other one, its function may open that device (ENXIO: allowed, no driver) and not the job's
//!   (EPERM: the lease's devices cgroup denies it).
//! - A job asking for both GPUs on a node where a GPU lease runs: when its task starts, none of the
//!   lease's processes is alive, and the lease is revoked as reclaimed.
//!
//! n2 is filled with a job so that leases land on n1. Needs `deploy/local-cluster up --nodes 2`
//! (it makes 2 fake GPUs per node unless HARVEST_FAKE_GPUS says otherwise), root, `cc`, munged.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_system_tests::fixtures::{Cli, ClusterRig, Scratch, TEST_USER as USER, alive_check};
use harvest_system_tests::{LocalCluster, poll};
use serde_json::Value;

struct Rig {
    cluster: LocalCluster,
    cli: Cli,
    _scratch: Scratch,
    lib: String,
    dev: String,
}

impl Rig {
    fn new(name: &str) -> Result<Self> {
        let ClusterRig {
            cluster,
            cli,
            scratch,
            lib,
        } = ClusterRig::new(name)?;
        let dev = format!("{}/dev", cluster.require("HARVEST_CLUSTER_DIR")?);
        ensure!(
            Path::new(&dev).join("nvidia1").exists(),
            "no fake GPUs in {dev}: bring the cluster up with HARVEST_FAKE_GPUS=2 (the default)"
        );
        Ok(Self {
            cluster,
            cli,
            _scratch: scratch,
            lib,
            dev,
        })
    }

    /// `harvest nodes --json`'s GPU list `which` (total, batch, function, idle) of `node`.
    fn gpus(&self, node: &str, which: &str) -> Result<Vec<u64>> {
        Ok(self.cli.node(node)?["gpus"][which]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default())
    }

    /// The GPU indices Slurm gave `job` (`scontrol show job -d`: `GRES=gpu:1(IDX:0)`).
    fn slurm_gpus(&self, job: u32) -> Result<Vec<u64>> {
        let out = self
            .cluster
            .run("scontrol", &["show", "job", "-d", &job.to_string()])?;
        let idx = out
            .split("IDX:")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .with_context(|| format!("no IDX: in scontrol show job -d {job}: {out}"))?;
        let mut v = Vec::new();
        for part in idx.split(',') {
            match part.split_once('-') {
                Some((a, b)) => v.extend(a.parse::<u64>()?..=b.parse::<u64>()?),
                None => v.push(part.parse()?),
            }
        }
        Ok(v)
    }

    /// `open_path` on the device node `nvidia<gpu>` through `lease`, as the test user.
    fn open_gpu(&self, lease: &str, gpu: u64) -> Result<String> {
        let path = format!("{}/nvidia{gpu}", self.dev);
        let mut child = self
            .cli
            .command(
                Some(USER),
                &[
                    "invoke",
                    "--lease",
                    lease,
                    "--fn",
                    "open_path",
                    "--input",
                    "-",
                ],
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(path.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "harvest invoke open_path {path}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    fn acquire_gpu_lease(&self) -> Result<Value> {
        self.cli.json(
            Some(USER),
            &[
                "lease", "acquire", "--lib", &self.lib, "--cores", "1", "--mem", "64M", "--gpus",
                "1", "--json",
            ],
        )
    }
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (fake GPUs), root, cc"]
fn a_gpu_job_keeps_its_gpu_the_other_is_lent_and_a_job_wanting_both_reclaims_it() -> Result<()> {
    let rig = Rig::new("harvest-gpus-test")?;
    let total = rig.gpus("n1", "total")?;
    ensure!(total == [0, 1], "n1's GPUs as harvest sees them: {total:?}");

    let filler = rig
        .cluster
        .sbatch(&["-w", "n2", "--exclusive", "--wrap", "sleep 300"])?;
    filler.wait_state("RUNNING", Duration::from_secs(30))?;
    rig.cli.wait_node_full("n2")?;

    // One GPU for the job; its environment claims both (the plugin must not believe it).
    let job = rig.cluster.sbatch(&[
        "-w",
        "n1",
        "-c1",
        "--gres=gpu:1",
        "--export=ALL,SLURM_STEP_GPUS=0,1,CUDA_VISIBLE_DEVICES=0,1",
        "--wrap",
        "sleep 300",
    ])?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    let given = rig.slurm_gpus(job.id)?;
    ensure!(given.len() == 1, "Slurm gave job {} GPUs {given:?}", job.id);
    let other = 1 - given[0];
    let narrowed = poll(Duration::from_secs(60), || {
        let batch = rig.gpus("n1", "batch")?;
        Ok((batch == given).then_some(()))
    })?;
    narrowed.with_context(|| {
        format!(
            "harvest never narrowed n1's batch GPUs to {given:?}: {:?}",
            rig.gpus("n1", "batch")
        )
    })?;

    let lease = rig.acquire_gpu_lease()?;
    let id = lease["id"].as_str().context("lease id")?.to_owned();
    let release = |id: &str| {
        let _ = rig.cli.run(Some(USER), &["lease", "release", id]);
    };
    let checked = (|| -> Result<()> {
        ensure!(
            lease["node"] == "n1",
            "the GPU lease went elsewhere: {lease}"
        );
        ensure!(
            lease["gpus"] == serde_json::json!([other]),
            "the lease got GPUs {} while job {} holds {given:?}",
            lease["gpus"],
            job.id
        );
        // ENXIO (6): the devices cgroup lets the lease open its GPU, and there is no driver.
        let own = rig.open_gpu(&id, other)?;
        ensure!(own == "errno=6", "opening the lease's own GPU: {own}");
        // EPERM (1): the job's GPU is denied to the lease.
        let job_gpu = rig.open_gpu(&id, given[0])?;
        ensure!(
            job_gpu == "errno=1",
            "opening job's GPU from the lease: {job_gpu}"
        );
        Ok(())
    })();
    release(&id);
    checked?;
    job.cancel()?;
    rig.cluster.job_end(job.id, Duration::from_secs(60))?;

    // A GPU lease, then a job asking for both GPUs (and one CPU: only the GPUs collide).
    let lease = rig.acquire_gpu_lease()?;
    let id = lease["id"].as_str().context("lease id")?.to_owned();
    let reclaimed = (|| -> Result<()> {
        ensure!(
            lease["node"] == "n1",
            "the GPU lease went elsewhere: {lease}"
        );
        let pids = poll(Duration::from_secs(10), || {
            let p = rig.cluster.lease_pids("n1", &id)?;
            Ok((!p.is_empty()).then_some(p))
        })?
        .context("the lease's cgroup never held its executor")?;
        let both = rig.cluster.sbatch(&[
            "-w",
            "n1",
            "-c1",
            "--gres=gpu:2",
            "--wrap",
            &alive_check(&pids),
        ])?;
        let (state, _) = rig.cluster.job_end(both.id, Duration::from_secs(60))?;
        ensure!(state == "COMPLETED", "job {}: {state}", both.id);
        let out = rig.cluster.job_output(both.id)?;
        ensure!(
            out.contains("checked") && !out.contains("alive"),
            "the GPU lease's processes {pids:?} were alive when job {}'s task started: {out}",
            both.id
        );
        // The agent's report of the reclaim reaches the scheduler a moment after the step.
        let after = poll(Duration::from_secs(30), || {
            let l = rig.cli.json(None, &["lease", "renew", &id, "--json"])?;
            Ok((l["state"] != "active").then_some(l))
        })?
        .context("the GPU lease was still active 30 s after a job took both GPUs")?;
        ensure!(
            after["state"] == "revoked" && after["end_cause"] == "reclaimed",
            "the GPU lease after a job took both GPUs: {after}"
        );
        Ok(())
    })();
    release(&id);
    reclaimed
}
