//! The latency benchmark's quick mode runs end to end: a real executor, real raw echo servers,
//! and a summary with every documented key.

use std::process::Command;

#[test]
fn latency_quick_writes_a_complete_summary() {
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["latency", "--quick", "--no-srun", "--out"])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(out.path().join("summary.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sizes = v["sizes"].as_array().unwrap();
    assert_eq!(
        sizes
            .iter()
            .map(|s| s["size"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 1024, 65536]
    );
    for s in sizes {
        for key in [
            "hot_p50_us",
            "hot_p99_us",
            "warm_p50_us",
            "warm_p99_us",
            "raw_busy_p50_us",
            "raw_block_p50_us",
        ] {
            let x = s[key].as_f64().unwrap_or(f64::NAN);
            assert!(x > 0.0 && x < 1e6, "{key} = {x} in {s}");
        }
        assert!(s["hot_p99_us"].as_f64() >= s["hot_p50_us"].as_f64());
    }
    // srun was skipped, and says so.
    assert!(v["srun_p50_us"].is_null());
    assert!(v["srun_note"].as_str().unwrap().contains("skipped"));
}
