//! compare-peers' quick mode on the real local cluster: the same work through harvest's Rust and
//! Python clients, `srun` steps and Parsl (installed from PyPI into target/parsl-venv on first
//! use), with every figure present and sane for each system and workload. Speed is not checked
//! here (a debug build on a shared machine); the full run's figures are in
//! experiments/results/peers.

use std::process::Command;

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2, root, cc, PyPI for Parsl, target/python-venv (scripts/test-all)"]
fn compare_peers_quick_measures_every_system_and_workload() {
    let out = tempfile::tempdir().unwrap();
    let venv = harvest_experiments::cluster::repo_root().join("target/python-venv");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["compare-peers", "--quick", "--python-venv"])
        .arg(&venv)
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "harvest-experiments compare-peers --quick failed"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap())
            .unwrap();
    let rows = v["rows"].as_array().unwrap();
    let systems = [
        "harvest-rust",
        "harvest-rust-hot",
        "harvest-python",
        "srun",
        "parsl-htex",
    ];
    let workloads = [
        "noop",
        "kernel-10ms",
        "echo-1KiB",
        "echo-64KiB",
        "echo-1MiB",
    ];
    for s in systems {
        for w in workloads {
            let r = rows
                .iter()
                .find(|r| r["system"] == s && r["workload"] == w)
                .unwrap_or_else(|| panic!("no row for {s} {w}: {v}"));
            let p50 = r["p50_us"].as_f64().unwrap();
            let p99 = r["p99_us"].as_f64().unwrap();
            assert!(p50 > 0.0 && p99 >= p50, "{s} {w}: {r}");
            assert!(
                r["throughput_per_s"].as_f64().unwrap() > 0.0,
                "{s} {w}: {r}"
            );
            assert!(r["first_result_ms"].as_f64().unwrap() > 0.0, "{s} {w}: {r}");
            assert!(r["cpu_s"].as_f64().unwrap() >= 0.0, "{s} {w}: {r}");
            if w == "kernel-10ms" {
                // Ten milliseconds of work cannot come back sooner, whoever runs it.
                assert!(p50 >= 10_000.0, "{s} {w}: {r}");
            }
        }
    }
    assert!(
        v["ratios"].as_array().unwrap().len() >= 4,
        "the goals' ratios are computed: {v}"
    );
    for f in ["peers.png", "README.md"] {
        assert!(out.path().join(f).metadata().unwrap().len() > 0, "{f}");
    }
}
