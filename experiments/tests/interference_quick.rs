//! The interference experiment's quick mode, end to end on the real local cluster: a batch job
//! alone, beside an uncontrolled, a controlled and a statically capped function and a no-op one,
//! alone again, and a summary with every key.

use std::process::Command;

#[test]
#[ignore = "needs the local cluster and root: brings up a one-node cluster (deploy/local-cluster up --nodes 1) unless the environment names one"]
fn interference_quick_writes_a_complete_summary() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["interference", "--quick", "--wait-quiet-s", "30", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(out.path().join("summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "slowdown_uncontrolled_pct",
        "slowdown_controlled_pct",
        "function_throughput_kept_pct",
    ] {
        assert!(v[key].as_f64().is_some_and(f64::is_finite), "{key} in {v}");
    }
    // The functions ran, uncontrolled and controlled, beside the job.
    assert!(
        v["function_uncontrolled_per_s"]["median"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    // This node has no PMU and no GPU: the summary says what it could not see.
    let unavailable = v["signals_unavailable"].as_array().unwrap();
    assert!(
        unavailable
            .iter()
            .any(|u| u.as_str().unwrap().starts_with("perf:")),
        "{v}"
    );
    // The job reported progress, so harvestd saw its progress per CPU-second.
    let seen = v["signals_seen"].as_array().unwrap();
    assert!(
        seen.iter()
            .any(|s| s.as_str().unwrap().contains(".progress=")),
        "{v}"
    );
    // The static quota's point of the frontier: the capped function ran, and slower than
    // uncontrolled (the experiment found the lease's group and capped it).
    let frontier = v["frontier"].as_array().unwrap();
    let names: Vec<&str> = frontier
        .iter()
        .map(|f| f["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["uncontrolled", "quota-25", "controlled"], "{v}");
    let kept = frontier[1]["function_throughput_kept_pct"]["median"]
        .as_f64()
        .unwrap();
    assert!(kept > 0.0 && kept < 60.0, "{v}");
    // Every phase ran invocations on one lease, and the client pinned itself to its lease's
    // CPUs (a failure would be a lease error, hence a warning).
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0, "{v}");
    // The no-op control phase ran: what harvest's own processes cost the job.
    assert!(
        v["slowdown_noop_pct"].as_f64().is_some_and(f64::is_finite),
        "{v}"
    );
    // Attribution: the share of controlled time the thrasher alone was throttled is measured;
    // harmless leases ran if the node had room, and the summary says why not otherwise.
    assert!(
        v["culprit_identified_pct"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{v}"
    );
    // The node published a verdict for the thrasher's lease (attribution is wired end to end:
    // harvestd's monitor, the scheduler's node view, harvest nodes --json).
    assert!(
        !v["thrasher_verdicts_controlled"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v}"
    );
    let harmless = v["harmless_leases"].as_u64().unwrap();
    if harmless == 0 {
        assert!(v["harmless_note"].as_str().unwrap().contains("CPUs"), "{v}");
        assert!(v["harmless_throughput_kept_pct"].is_null(), "{v}");
    } else {
        assert!(v["harmless_throughput_kept_pct"].as_f64().is_some(), "{v}");
    }
    let runs = std::fs::read_to_string(out.path().join("runs.csv")).unwrap();
    assert_eq!(runs.lines().count(), 7, "{runs}");
    assert!(out.path().join("timeline.csv").exists());
}
