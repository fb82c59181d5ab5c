//! `simulate --quick` end to end on a small synthetic SWF trace written to a temp dir: the study
//! finishes, writes its files, and its figures keep the accounting identities (every function's
//! work served, refused, lost or in flight; nothing recovered beyond what batch left idle).

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

/// Runs `simulate ARGS --trace T --data D --out O` on [`synthetic_swf`] written as `name` in a
/// temp dir, which must succeed; returns the dir (kept alive by the caller), the output
/// directory and its summary.json.
fn simulate(name: &str, args: &[&str]) -> (tempfile::TempDir, PathBuf, serde_json::Value) {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join(name);
    std::fs::write(&trace, synthetic_swf()).unwrap();
    let out = tmp.path().join("run");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .arg("simulate")
        .args(args)
        .arg("--trace")
        .arg(&trace)
        .arg("--data")
        .arg(data_dir())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "simulate failed: {status}");
    let summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    (tmp, out, summary)
}

#[test]
fn quick_study_writes_every_figure_and_accounts_for_every_function() {
    let (_tmp, out, summary) = simulate(
        "synthetic.swf",
        &[
            "--quick",
            "--warmup",
            "2h",
            "--policy",
            "best-fit",
            "--nodes",
            "64",
            "--retries",
            "1",
            "--sweep",
            "0.25,1,2",
        ],
    );
    let f = |k: &str| {
        summary[k]
            .as_f64()
            .unwrap_or_else(|| panic!("summary has no number {k}"))
    };
    for key in [
        "nodes",
        "util_cores_trace",
        "util_cores_batch_only",
        "util_cores_with_harvest",
        "harvestable_core_hours",
        "offered_core_hours",
        "served_core_hours",
        "lost_to_reclaim_core_hours",
        "invocations_served_pct",
        "wait_p50_s_batch_only",
        "wait_p50_s_with_harvest",
        "bounded_slowdown_p50_batch_only",
        "bounded_slowdown_p50_with_harvest",
        "placement_p99_us",
        "events_per_s",
    ] {
        f(key);
    }
    assert_eq!(
        f("nodes"),
        64.0,
        "two copies of a 32-node trace: exactly 64 nodes"
    );
    assert_eq!(summary["replication"], 2);
    // The queue's order, its per-window stability figures and the events/s baselines of the
    // same run.
    assert_eq!(summary["queue_order"], "priority");
    let queues = summary["queue_by_window"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    for q in queues {
        let n = |k: &str| q[k].as_u64().unwrap_or_else(|| panic!("{k} in {q}"));
        let bound = |start: u64| start.max(n("trace_start")).max(n("trace_end"));
        let stable = n("batch_only_end") <= bound(n("batch_only_start"))
            && n("with_harvest_end") <= bound(n("with_harvest_start"));
        assert_eq!(q["stable"], stable, "{q}");
    }
    assert_eq!(
        summary["queue_stable"],
        queues.iter().all(|q| q["stable"] == true)
    );
    assert!(f("events_per_s_batch_only") > 0.0 && f("events_per_s_replay") > 0.0);
    // The synthetic jobs ask for 4..100 cores of 16-core nodes: most do not fill nodes.
    assert_eq!(summary["allocation"], "shared");
    // Slowdowns are drawn at least 1: no co-located job may finish faster than alone (a job
    // ended early by another's stale end entry showed as a mean below 1 on RICC).
    for w in summary["with_harvest"].as_array().unwrap() {
        let s = w["batch_slowdown_mean_colocated"].as_f64().unwrap();
        assert!(
            s >= 1.0 && w["batch_slowdown_max"].as_f64().unwrap() >= s,
            "{s}"
        );
    }
    // Every function's work is served, refused, lost or still running at the stop.
    let h = &summary["with_harvest"][0]["functions"];
    let g = |k: &str| h[k].as_f64().unwrap();
    let settled = g("served_core_hours")
        + g("refused_core_hours")
        + g("lost_to_reclaim_core_hours")
        + g("in_flight_core_hours");
    assert!((settled - g("offered_core_hours")).abs() < 1e-6 * g("offered_core_hours").max(1.0));
    assert!(f("served_core_hours") <= f("offered_core_hours"));
    // Recovered capacity can never exceed what batch left idle.
    let rows: Vec<Vec<f64>> = std::fs::read_to_string(out.join("sweep.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(|x| x.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 3);
    for r in &rows {
        // offered, served, recovered, harvestable
        assert!(r[3] <= r[2] + 1e-6 && r[7] <= r[8] + 1e-6, "{r:?}");
    }
    assert!(
        rows[2][2] > rows[0][2],
        "more offered at twice the idle capacity"
    );
    if std::path::Path::new(harvest_experiments::output::DEFAULT_FONT).exists() {
        for png in ["sweep.png", "with-harvest/cores.png"] {
            let bytes = std::fs::read(out.join(png)).unwrap();
            assert!(bytes.starts_with(b"\x89PNG"), "{png} is a PNG");
        }
    }
    assert!(
        std::fs::read_to_string(out.join("report.md"))
            .unwrap()
            .contains("## Sweep")
    );
}

#[test]
fn without_nodes_the_trace_runs_on_its_own_machine_whatever_its_name() {
    // Named like a trace the simulator knows, with another machine in its header: the header
    // decides (32 nodes of 16 cores), not the file name.
    let (_tmp, _, summary) = simulate(
        "RICC-2010-2.swf",
        &[
            "--quick",
            "--warmup",
            "2h",
            "--windows",
            "1",
            "--sweep",
            "0.5",
            "--queue-order",
            "fcfs",
        ],
    );
    assert_eq!(summary["nodes"], 32);
    assert_eq!(summary["replication"], 1);
    assert_eq!(summary["queue_order"], "fcfs");
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
    assert!(run(&["--functions", "azure:scale=-2"]).contains("scale"));
    assert!(run(&["--weight-age=-1"]).contains("--weight-age -1 must be a finite number >= 0"));
    assert!(run(&["--queue-order", "lifo"]).contains("invalid value 'lifo'"));
    let missing = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["simulate", "--trace", "/nonexistent.swf"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read SWF trace /nonexistent.swf")
    );
}

#[test]
fn compare_policies_scales_azure_demand_to_the_load_of_the_idle_core_hours() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("t.swf");
    std::fs::write(&trace, synthetic_swf()).unwrap();
    let out = tmp.path().join("cmp");
    let status = Command::new(env!("CARGO_BIN_EXE_harvest-experiments"))
        .args(["compare-policies", "--quick", "--warmup", "2h"])
        .args([
            "--policies",
            "first-fit,harvest",
            "--load",
            "0.5",
            "--seeds",
            "2",
        ])
        .arg("--trace")
        .arg(&trace)
        .arg("--data")
        .arg(data_dir())
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "compare-policies failed: {status}");
    let csv = std::fs::read_to_string(out.join("comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "2 policies x 2 seeds: {csv}");
    let s = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(out.join(p).join("summary.json")).unwrap())
            .unwrap()
    };
    let (a, b) = (s("first-fit"), s("harvest"));
    let (a2, b2) = (s("first-fit/seed-2"), s("harvest/seed-2"));
    assert_eq!(
        (a["seed"].as_u64(), a2["seed"].as_u64()),
        (Some(1), Some(2))
    );
    // One demand for both: the Azure sample scaled by its mean rate over the whole sample to
    // offer half the batch-only run's idle core-hours (a 6 h window of the sample offers
    // less or more than its mean, so only the bounds are checked here).
    for x in [&b, &a2, &b2] {
        assert_eq!(a["functions_spec"], x["functions_spec"]);
    }
    assert!(
        a["functions_spec"]
            .as_str()
            .unwrap()
            .starts_with("azure:scale=")
    );
    let offered = a["functions"]["offered_core_hours"].as_f64().unwrap();
    let idle = a["idle_core_hours_batch_only"].as_f64().unwrap();
    assert!(
        offered > 0.0 && offered < idle,
        "offered {offered} of idle {idle}"
    );
    // The intervals over two seeds, by hand: the mean of the two, and a half-width of
    // t(1) x s / sqrt(2) = 12.706 x |x1 - x2| / 2.
    let served = |v: &serde_json::Value| v["functions"]["served_core_hours"].as_f64().unwrap();
    let (x1, x2) = (served(&b), served(&b2));
    let line = std::fs::read_to_string(out.join("intervals.csv"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("harvest,served_core-h,"))
        .expect("harvest's served core-hours")
        .to_owned();
    let f: Vec<f64> = line
        .split(',')
        .skip(2)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!((f[0] - (x1 + x2) / 2.0).abs() < 1e-9, "{line}");
    assert!(
        (f[1] - 12.706 * (x1 - x2).abs() / 2.0).abs() < 1e-9,
        "{line}"
    );
    assert_eq!(f[2], 2.0);
    let md = std::fs::read_to_string(out.join("comparison.md")).unwrap();
    assert!(md.contains("## Minus first-fit, paired by seed"), "{md}");
}
