//! The offloading example's quick mode on the real local cluster: a job step on n1 prices
//! options on its own CPU and through a lease on n1's idle CPU; every configuration completes,
//! the lease never shares the job's CPUs, and the functions' prices equal the serial ones.
//! Timings are not checked here (a debug build on a shared machine, where a lease's CPU weight
//! yields to any other work); the full run's figures are in experiments/results/offload.

use std::process::Command;

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2, root, cc"]
fn offload_quick_prices_the_same_beside_the_job() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["offload", "--quick", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "harvest-experiments offload --quick failed"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    for k in ["serial_s", "local_s", "functions_s", "combined_s"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(v["max_abs_diff"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["lease_node"], "n1", "{v}");
    let job: Vec<u32> = v["job_cpus"]
        .as_str()
        .unwrap()
        .split(',')
        .flat_map(|r| match r.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<u32>>(),
            None => vec![r.parse().unwrap()],
        })
        .collect();
    let lease: Vec<u32> = v["lease_cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap() as u32)
        .collect();
    assert!(
        !lease.is_empty() && lease.iter().all(|c| !job.contains(c)),
        "{v}"
    );
    let share = v["combined_remote_share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "{v}");
    assert!(out.path().join("README.md").exists());
}
