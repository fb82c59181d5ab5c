//! `bench-sim --quick` end to end on a small synthetic machine: the three configurations run on
//! one workload, the baseline's figures and the ratios come from the same run, and the targets'
//! verdicts follow from the rows.

use std::path::PathBuf;
use std::process::Command;

fn data_dir() -> PathBuf {
    std::env::var_os("HARVEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

#[test]
fn quick_bench_runs_replay_batch_and_harvest_on_one_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench.json");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["bench-sim", "--quick", "--nodes", "100", "--repeat", "2"])
        // A third of the machine offered: every job fits when it comes.
        .args(["--synthetic-load", "0.3"])
        .arg("--data")
        .arg(data_dir())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "bench-sim failed: {status}");
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(b["nodes"], 100);
    assert_eq!(b["cores"], 3_200, "100 synthetic nodes of 32 cores");
    assert_eq!(
        b["allocation"], "shared",
        "most synthetic jobs do not fill a node"
    );
    assert_eq!(
        (b["warmup_h"].as_f64(), b["window_h"].as_f64()),
        (Some(6.0), Some(6.0))
    );
    let rows = b["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(names, ["replay", "batch-only", "with-harvest"]);
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let replay_median = f(&rows[0], "events_per_s_median");
    for r in rows {
        assert_eq!(
            r["wall_s"].as_array().unwrap().len(),
            2,
            "one wall time per repeat"
        );
        let (lo, mid, hi) = (
            f(r, "events_per_s_min"),
            f(r, "events_per_s_median"),
            f(r, "events_per_s_max"),
        );
        assert!(lo > 0.0 && lo <= mid && mid <= hi, "{r}");
        // Each repeat's events/s is its events over its wall time.
        let rates: Vec<f64> = r["wall_s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| f(r, "events") / w.as_f64().unwrap())
            .collect();
        for x in [lo, hi] {
            assert!(
                rates.iter().any(|y| (x - y).abs() <= 1e-6 * y),
                "{x} of {rates:?}"
            );
        }
        assert!(
            (f(r, "vs_replay") - mid / replay_median).abs() < 1e-9,
            "{r}"
        );
    }
    // Nothing waits at a third of the load, so EASY starts every job when the replay does:
    // the same events and the same utilization. Functions add their arrivals and ends.
    assert_eq!(rows[0]["events"], rows[1]["events"]);
    assert_eq!(rows[0]["util_cores"], rows[1]["util_cores"]);
    assert!(f(&rows[2], "events") > f(&rows[1], "events"));
    assert!(f(&rows[2], "placements") > 0.0 && f(&rows[1], "placements") == 0.0);
    assert!(f(&rows[2], "util_cores") > f(&rows[1], "util_cores"));
    // The verdicts follow from the rows.
    let met = rows[1..]
        .iter()
        .all(|r| f(r, "events_per_s_median") >= f(&b, "target_events_per_s"));
    assert_eq!(b["events_target_met"], met);
    assert_eq!(
        b["placement_target_met"],
        f(&rows[2], "placement_p99_us") <= f(&b, "target_placement_p99_us")
    );
}

/// `--harvest-only` runs the with-harvest configuration of the full bench (the same demand,
/// so the same events as its with-harvest row), and its `--summary-out` names the workload.
#[test]
fn harvest_only_runs_the_benchs_with_harvest_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let (bench, summary) = (tmp.path().join("bench.json"), tmp.path().join("s.json"));
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
            .args(["bench-sim", "--quick", "--nodes", "100", "--repeat", "1"])
            .args(["--synthetic-load", "0.3"])
            .arg("--data")
            .arg(data_dir())
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bench-sim {extra:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["--out", bench.to_str().unwrap()]);
    let text = run(&["--harvest-only", "--summary-out", summary.to_str().unwrap()]);
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bench).unwrap()).unwrap();
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    let row = &b["rows"][2];
    assert_eq!(row["run"], "with-harvest");
    assert_eq!(s["summary"]["events"], row["events"], "{text}");
    assert_eq!(s["summary"]["placements"], row["placements"]);
    assert_eq!(s["summary"]["functions_spec"], b["demand"]);
    assert_eq!(s["summary"]["trace"], b["workload"]);
    assert!(!s["samples"].as_array().unwrap().is_empty());
    assert!(
        text.contains(&format!("{} events", row["events"])),
        "the line printed: {text}"
    );
}
