//! The faults experiment's quick mode on the real local cluster: the load as an ordinary user,
//! batch jobs started and ended at random, and the faults the control plane must survive with
//! nothing lost (a SIGKILLed harvestd, the primary scheduler SIGKILLed with its standby taking
//! over, an executor killed, an agent stopped past the heartbeat timeout), each repaired by
//! `deploy/local-cluster up` as an operator would. Every invariant of the summary must hold.

use std::process::Command;

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with the standby scheduler), root, cc"]
fn faults_quick_loses_nothing_and_leaves_nothing_behind() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args([
            "faults",
            "--quick",
            "--only",
            "kill-harvestd,kill-scheduler,kill-executor,stop-agent",
            "--clients",
            "3",
            "--fail-on-error",
            "--out",
        ])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "harvest-experiments faults --quick failed"
    );
    let text = std::fs::read_to_string(out.path().join("summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let faults = v["faults"].as_array().unwrap();
    let names: Vec<&str> = faults
        .iter()
        .map(|f| f["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "none",
            "kill-harvestd",
            "kill-scheduler",
            "kill-executor",
            "stop-agent"
        ],
        "{v}"
    );
    for f in faults {
        let name = f["fault"].as_str().unwrap();
        assert!(f["invocations"].as_u64().unwrap() > 0, "{name}: {f}");
        assert_eq!(f["answered_pct"].as_f64(), Some(100.0), "{name}: {f}");
        for zero in [
            "silent_losses",
            "late",
            "executors_on_batch_cpus_samples",
            "orphan_processes",
            "orphan_cgroups",
            "ledger_mismatches",
            "lease_mismatches",
        ] {
            assert_eq!(f[zero].as_u64(), Some(0), "{name}: {zero} in {f}");
        }
        assert!(f["error"].is_null(), "{name}: {f}");
    }
    // New leases are placed again through the standby within 5 s of the primary's SIGKILL.
    let kill_scheduler = &faults[2];
    let recovery = kill_scheduler["recovery_s"].as_f64().unwrap();
    assert!(recovery <= 5.0, "{kill_scheduler}");
    assert_eq!(v["violations"].as_array().unwrap().len(), 0, "{v}");
    assert!(out.path().join("faults.png").exists());
}
