//! The local cluster is a real Slurm: nodes idle, multi-node steps run, jobs get cgroups.
//!
//! Needs `deploy/local-cluster up --nodes 2` (the README's test command does it).

use std::time::Duration;

use harvest_core::CpuSet;
use harvest_system_tests::{LocalCluster, poll};

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn nodes_are_idle_and_srun_spans_both() {
    let c = LocalCluster::from_env().unwrap();
    let ok = poll(Duration::from_secs(30), || {
        let states = c.node_states()?;
        Ok((states.iter().any(|(n, _)| n == "n1")
            && states.iter().any(|(n, _)| n == "n2")
            && states.iter().all(|(_, s)| s == "idle"))
        .then_some(()))
    })
    .unwrap();
    assert!(
        ok.is_some(),
        "nodes not idle: {:?}",
        c.node_states().unwrap()
    );

    let out = c.run("srun", &["-N2", "-n2", "hostname"]).unwrap();
    assert_eq!(out.lines().count(), 2, "one hostname per node: {out:?}");
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn a_batch_job_gets_a_cgroup_with_exactly_its_cpus_and_memory() {
    let c = LocalCluster::from_env().unwrap();
    let job = c
        .sbatch(&["-w", "n1", "-c1", "--mem=300M", "--wrap", "sleep 20"])
        .unwrap();
    job.wait_state("RUNNING", Duration::from_secs(30)).unwrap();

    // The cgroup appears as the step starts, a moment after RUNNING: poll for it.
    let cpus = poll(Duration::from_secs(10), || {
        let Ok(dir) = c.job_cgroup("cpuset", "n1", job.id) else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(dir.join("cpuset.cpus"))?;
        Ok(Some(CpuSet::parse_list(&text)?))
    })
    .unwrap()
    .expect("the job's cpuset cgroup appeared");
    assert_eq!(cpus.len(), 1, "exactly one CPU in {cpus}");

    // The memory group can exist a moment before slurmstepd writes its limit (it reads
    // unlimited then): wait for the limit, then it must be exactly the job's.
    let want = 300 * 1024 * 1024;
    let mut limit = 0;
    let set = poll(Duration::from_secs(10), || {
        let Ok(dir) = c.job_cgroup("memory", "n1", job.id) else {
            return Ok(None);
        };
        limit = std::fs::read_to_string(dir.join("memory.limit_in_bytes"))?
            .trim()
            .parse()?;
        Ok((limit == want).then_some(()))
    })
    .unwrap();
    assert!(
        set.is_some(),
        "job {}'s memory limit is {limit}, not {want}",
        job.id
    );

    job.cancel().unwrap();
    let gone = poll(Duration::from_secs(30), || {
        Ok(c.job_state(job.id)?.is_none().then_some(()))
    });
    assert!(
        gone.unwrap().is_some(),
        "job {} still queued 30 s after scancel",
        job.id
    );
}
