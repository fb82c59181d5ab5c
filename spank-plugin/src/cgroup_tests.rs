use std::fs;
use std::path::Path;

use super::*;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

const JOB: JobKey<'static> = JobKey {
    node: "n1",
    uid: 1000,
    job_id: 42,
};

/// A v1 tree as Slurm 22.05 builds it, with slurmstepd inside step 0.
fn v1_tree(root: &Path, job_dir: &str, cpus: &str, limit: &str) {
    write(&root.join("cpuset").join(job_dir).join("cpuset.cpus"), cpus);
    write(
        &root.join("cpuset").join(job_dir).join("step_0/cpuset.cpus"),
        "0",
    );
    write(
        &root
            .join("memory")
            .join(job_dir)
            .join("memory.limit_in_bytes"),
        limit,
    );
}

fn fs_for(dir: &Path, self_cgroup: &str) -> CgroupFs {
    let proc = dir.join("proc-self-cgroup");
    fs::write(&proc, self_cgroup).unwrap();
    CgroupFs::new(dir.join("cg"), proc)
}

#[test]
fn v1_reads_the_job_level_from_the_stepd_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    // The membership names a layout no guess would find, so this passes only via /proc/self.
    v1_tree(&root, "odd/uid_1000/job_42", "1,3-4\n", "314572800\n");
    let cg = fs_for(
        tmp.path(),
        "4:memory:/odd/uid_1000/job_42/step_0\n3:cpuset:/odd/uid_1000/job_42/step_0\n0::/\n",
    );
    let got = cg.job_resources(JOB).unwrap();
    assert_eq!(got.cpus, CpuSet::parse_list("1,3-4").unwrap());
    assert_eq!(got.memory_mib, Some(300));
}

#[test]
fn v1_falls_back_to_the_node_layout_and_reports_unlimited_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    v1_tree(
        &root,
        "slurm_n1/uid_1000/job_42",
        "0-1\n",
        "9223372036854771712\n",
    );
    // Another node's copy of the same job (a two-node job on one host) must not be picked.
    v1_tree(&root, "slurm_n2/uid_1000/job_42", "7\n", "1048576\n");
    let cg = fs_for(tmp.path(), "3:cpuset:/\n4:memory:/supervisor\n");
    let got = cg.job_resources(JOB).unwrap();
    assert_eq!(got.cpus, CpuSet::parse_list("0-1").unwrap());
    assert_eq!(got.memory_mib, None);
}

#[test]
fn v1_single_slurmd_layout_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    v1_tree(&root, "slurm/uid_1000/job_42", "2\n", "1073741824\n");
    let cg = fs_for(tmp.path(), "3:cpuset:/\n");
    let got = cg.job_resources(JOB).unwrap();
    assert_eq!(got.cpus.len(), 1);
    assert_eq!(got.memory_mib, Some(1024));
}

#[test]
fn missing_job_names_where_it_looked() {
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir_all(tmp.path().join("cg/cpuset")).unwrap();
    let cg = fs_for(tmp.path(), "3:cpuset:/\n");
    let err = cg.job_resources(JOB).unwrap_err();
    let CgroupError::NotFound {
        job_id, searched, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(*job_id, 42);
    assert!(
        searched
            .iter()
            .any(|p| p.ends_with("cpuset/slurm_n1/uid_1000/job_42")),
        "{searched:?}"
    );
}

#[test]
fn v1_garbage_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cg");
    v1_tree(&root, "slurm_n1/uid_1000/job_42", "0-1", "lots");
    let err = fs_for(tmp.path(), "")
        .job_resources(JOB)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("memory.limit_in_bytes") && err.contains("lots"),
        "{err}"
    );

    v1_tree(&root, "slurm_n1/uid_1000/job_42", "3-1", "1");
    let err = fs_for(tmp.path(), "")
        .job_resources(JOB)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cpuset.cpus"), "{err}");
}

#[test]
fn v2_reads_effective_cpus_and_memory_max_from_membership() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("cg/system.slice/slurmstepd.scope/job_42");
    write(&job.join("cpuset.cpus.effective"), "4-5\n");
    write(&job.join("cpuset.cpus"), "\n");
    write(&job.join("memory.max"), "524288000\n");
    fs::create_dir_all(job.join("step_0/slurm")).unwrap();
    let cg = fs_for(
        tmp.path(),
        "0::/system.slice/slurmstepd.scope/job_42/step_0/slurm\n",
    );
    let got = cg.job_resources(JOB).unwrap();
    assert_eq!(got.cpus, CpuSet::parse_list("4-5").unwrap());
    assert_eq!(got.memory_mib, Some(500));
}

#[test]
fn v2_search_prefers_this_nodes_scope_and_reads_max_as_unlimited() {
    let tmp = tempfile::tempdir().unwrap();
    for (scope, cpus) in [("n0_slurmstepd.scope", "0"), ("n1_slurmstepd.scope", "6")] {
        let job = tmp
            .path()
            .join("cg/system.slice")
            .join(scope)
            .join("job_42");
        write(&job.join("cpuset.cpus.effective"), cpus);
        write(&job.join("memory.max"), "max\n");
    }
    let cg = fs_for(tmp.path(), "0::/init.scope\n");
    let got = cg.job_resources(JOB).unwrap();
    assert_eq!(got.cpus, CpuSet::parse_list("6").unwrap());
    assert_eq!(got.memory_mib, None);
}

#[test]
fn cut_at_job_keeps_the_job_component() {
    assert_eq!(
        cut_at_job("/slurm_n1/uid_0/job_6/step_0", 6).as_deref(),
        Some("slurm_n1/uid_0/job_6")
    );
    assert_eq!(cut_at_job("/slurm_n1/uid_0/job_61/step_0", 6), None);
    assert_eq!(cut_at_job("/", 6), None);
}

#[test]
fn v1_step_devices_list_is_the_steps_own_and_v2_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let job = "slurm_n1/uid_1000/job_42";
    v1_tree(&dir.path().join("cg"), job, "1", "max");
    let devices = dir.path().join("cg/devices").join(job);
    write(&devices.join("devices.list"), "a *:* rwm\n");
    write(&devices.join("step_batch/devices.list"), "c 195:1 rwm\n");
    write(&devices.join("step_3/devices.list"), "c 195:2 rwm\n");
    // slurmstepd is not moved into the devices hierarchy: found by the node layout.
    let cg = fs_for(dir.path(), &format!("4:cpuset:/{job}/step_3\n"));
    let got = cg.step_devices_list(JOB, StepId::BATCH).unwrap();
    assert_eq!(got, "c 195:1 rwm\n");
    assert_eq!(
        cg.step_devices_list(JOB, StepId(3)).unwrap(),
        "c 195:2 rwm\n"
    );
    let err = cg.step_devices_list(JOB, StepId(4)).unwrap_err();
    assert!(err.to_string().contains("step_4"), "{err}");

    let v2 = tempfile::tempdir().unwrap();
    let cg = fs_for(
        v2.path(),
        "0::/system.slice/slurmstepd.scope/job_42/step_0\n",
    );
    fs::create_dir_all(v2.path().join("cg")).unwrap();
    let err = cg.step_devices_list(JOB, StepId(0)).unwrap_err();
    assert!(matches!(err, CgroupError::NoDevices { .. }), "{err}");
}
