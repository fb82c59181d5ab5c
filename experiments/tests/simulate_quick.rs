//! `simulate --quick` end to end on a small synthetic SWF trace written to a temp dir: the run
//! finishes, writes its files, and its summary keeps the invariants (utilization with harvest at
//! least batch-only, no node over-committed, every function placed or refused).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// `shared/data` (for the cost model and the Daint reference), as the binary finds it.
fn data_dir() -> PathBuf {
    std::env::var_os("HARVEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"))
}

/// 400 jobs on a 32-node, 16-core machine: a mix of sizes that leaves idle cores on allocated
/// nodes and idle nodes, submitted every 60 s, running 10-60 minutes. The tests shorten the
/// warm-up to 2 h so the window falls inside the 6.7 h of submissions.
fn synthetic_swf() -> String {
    let mut s =
        String::from("; Computer: synthetic test machine\n; MaxNodes: 32\n; MaxProcs: 512\n;\n");
    for i in 0..400u64 {
        let procs = [4, 12, 16, 40, 64, 100][(i % 6) as usize];
        let run = 600 + (i * 37 % 3000);
        let mem = if i % 3 == 0 { "1048576" } else { "-1" };
        let _ = writeln!(
            s,
            "{} {} 0 {run} {procs} -1 {mem} {procs} {} -1 1 1 1 -1 1 -1 -1 -1",
            i + 1,
            i * 60,
            run * 2
        );
    }
    s
}

#[test]
fn quick_simulation_keeps_its_invariants() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("synthetic.swf");
    std::fs::write(&trace, synthetic_swf()).unwrap();
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["simulate", "--quick", "--warmup", "2h", "--policy", "best-fit", "--nodes", "64", "--max-wait", "5s"])
        .arg("--trace")
        .arg(&trace)
        .arg("--data")
        .arg(data_dir())
        .args(["--functions", "poisson:rate=2,cores=2,mem=2G,duration=3m+poisson:rate=5,cores=1,mem=256M,duration=20s"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "simulate failed: {status}");

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let f = |k: &str| {
        summary[k]
            .as_f64()
            .unwrap_or_else(|| panic!("summary has no number {k}"))
    };
    for key in [
        "nodes",
        "jobs",
        "util_cores_batch_only",
        "util_cores_with_harvest",
        "util_mem_batch_only",
        "util_mem_with_harvest",
        "functions_placed",
        "functions_refused",
        "reclaims",
        "placement_p50_us",
        "placement_p99_us",
        "events_per_s",
    ] {
        f(key);
    }
    assert_eq!(f("nodes"), 64.0);
    assert_eq!(summary["replication"], 2, "64 nodes from a 32-node trace");
    assert!(f("jobs") > 0.0 && f("jobs_started") > 0.0);
    assert!(
        f("util_cores_batch_only") > 0.0,
        "batch jobs ran in the window"
    );
    assert!(f("util_cores_with_harvest") > f("util_cores_batch_only"));
    assert!(f("util_mem_with_harvest") >= f("util_mem_batch_only"));
    assert!(f("util_cores_with_harvest") <= 1.0 && f("util_mem_with_harvest") <= 1.0);
    assert_eq!(f("overcommit_violations"), 0.0, "a node was over-committed");
    assert!(f("functions_submitted") > 1000.0);
    assert_eq!(
        f("functions_placed") + f("functions_refused"),
        f("functions_submitted")
    );
    assert!(f("placements") >= f("functions_placed"));
    assert!(f("placement_p99_us") >= f("placement_p50_us"));

    let csv = std::fs::read_to_string(out.join("timeseries.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(rows[0].starts_with("time_h,batch_cores,function_cores,idle_cores"));
    assert!(rows.len() > 100);
    let total_cores = 64 * 16;
    for row in &rows[1..] {
        let v: Vec<f64> = row.split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(
            v[1] + v[2] + v[3],
            f64::from(total_cores),
            "cores add up in {row}"
        );
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("## Compared with Piz Daint"));
    assert!(report.contains("| core utilization |"));
    if std::path::Path::new(harvest_experiments::output::DEFAULT_FONT).exists() {
        for png in ["cores.png", "memory.png"] {
            let bytes = std::fs::read(out.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{png} is a PNG");
        }
    }
}

#[test]
fn replay_with_gpu_leases_keeps_its_invariants() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("synthetic.swf");
    std::fs::write(&trace, synthetic_swf()).unwrap();
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["simulate", "--quick", "--warmup", "2h", "--batch", "replay", "--node-gpus", "4"])
        .arg("--trace")
        .arg(&trace)
        .arg("--data")
        .arg(data_dir())
        .args(["--functions", "poisson:rate=1,cores=1,mem=1G,duration=1m,gpus=1+poisson:rate=3,cores=1,mem=512M,duration=30s"])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "simulate failed: {status}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let f = |k: &str| {
        summary[k]
            .as_f64()
            .unwrap_or_else(|| panic!("summary has no number {k}"))
    };
    assert_eq!(summary["batch_mode"], "replay");
    assert_eq!(f("gpus_per_node"), 4.0);
    assert!(f("jobs_started") > 0.0);
    assert!(f("util_cores_with_harvest") > f("util_cores_batch_only"));
    assert_eq!(f("overcommit_violations"), 0.0);
    assert_eq!(
        f("functions_placed") + f("functions_refused"),
        f("functions_submitted")
    );
    assert!(f("functions_placed") > 0.0);
}

#[test]
fn bad_input_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t.swf");
    std::fs::write(
        &trace,
        "; MaxNodes: 4\n; MaxProcs: 16\n1 0 0 10 4 -1 -1 4 20 -1 1 1 1 -1 1 -1 -1 -1\n",
    )
    .unwrap();
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
            .args(["simulate", "--quick", "--out"])
            .arg(tmp.path().join("o"))
            .arg("--trace")
            .arg(&trace)
            .arg("--data")
            .arg(data_dir())
            .args(extra)
            .output()
            .unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run(&["--policy", "fastest"]).contains("unknown policy \"fastest\""));
    assert!(run(&["--functions", "lambda"]).contains("unknown kind"));
    let missing = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["simulate", "--trace", "/nonexistent.swf"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read SWF trace /nonexistent.swf")
    );
}
