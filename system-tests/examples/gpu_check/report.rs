//! lease.md, from lease.json's values.

use std::fmt::Write as _;

use serde_json::Value;

/// lease.md: the figures a reader looks for first.
pub fn markdown(v: &Value) -> String {
    let mut s = String::new();
    let g = |p: &str| v.pointer(p).cloned().unwrap_or(Value::Null);
    let _ = writeln!(s, "## The lease\n");
    let _ = writeln!(
        s,
        "- CUDA function ran through the lease: {}",
        g("/cuda_function_ran_through_the_lease")
    );
    let _ = writeln!(s, "- lease: {}", g("/lease"));
    let _ = writeln!(
        s,
        "- cgroup {}; devices reported unconfined by harvestd: {}",
        g("/confinement/cgroup"),
        g("/confinement/devices_reported_unconfined_by_harvestd")
    );
    let _ = writeln!(
        s,
        "- what CUDA shows the lease: {}",
        g("/cuda_devices")
            .as_str()
            .unwrap_or("?")
            .replace('\n', "; ")
    );
    let _ = writeln!(s, "- device isolation: {}", g("/device_checks/isolation"));
    if let Some(rows) = g("/device_checks/nodes").as_array() {
        let _ = writeln!(
            s,
            "\n| node | what | inside the lease | outside (root) | verdict |\n|---|---|---|---|---|"
        );
        for row in rows {
            let f = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                f("path"),
                f("what"),
                f("inside_lease"),
                f("outside_as_root"),
                f("verdict")
            );
        }
    }
    let ms = |p: &str| {
        let x = g(p);
        match (
            x.get("p50_ms").and_then(Value::as_f64),
            x.get("p99_ms").and_then(Value::as_f64),
        ) {
            (Some(p50), Some(p99)) => {
                format!("p50 {p50:.3} ms, p99 {p99:.3} ms ({} calls)", x["calls"])
            }
            _ => "not measured".into(),
        }
    };
    let _ = writeln!(s, "\n## Latency ({} elements)\n", g("/latency/elements"));
    let _ = writeln!(s, "- saxpy: {}", ms("/latency/saxpy"));
    let _ = writeln!(
        s,
        "- echo of the same input (baseline, same connection): {}",
        ms("/latency/echo_same_input_baseline")
    );
    let _ = writeln!(
        s,
        "- saxpy beside the batch: {}",
        ms("/batch/saxpy_beside_the_batch")
    );
    let rate = |p: &str| g(p).as_f64().map_or("?".to_owned(), |r| format!("{r:.1}"));
    let _ = writeln!(s, "\n## The batch's slowdown\n");
    let _ = writeln!(
        s,
        "- cuda_busy kernels/s alone before {}, beside the function {}, alone after {}",
        rate("/batch/alone_before/kernels_per_s"),
        rate("/batch/with_function/kernels_per_s"),
        rate("/batch/alone_after/kernels_per_s")
    );
    let slow = g("/batch/slowdown");
    let _ = writeln!(
        s,
        "- slowdown: {}",
        slow.as_f64()
            .map_or("not measured".to_owned(), |x| format!("{:.1}%", x * 100.0))
    );
    let _ = writeln!(s, "\n## GPU signals (harvestd's interference monitor)\n");
    let _ = writeln!(
        s,
        "- {} slot reports; clock event reasons seen: {}; unavailable: {}",
        g("/gpu_signals/reports"),
        g("/gpu_signals/throttle_reasons_seen"),
        g("/gpu_signals/unavailable")
    );
    if let Some(max) = g("/gpu_signals/max").as_object() {
        for (k, v) in max.iter().filter(|(k, _)| !k.contains(".throttle.")) {
            let _ = writeln!(
                s,
                "- {k}: max {v}, last {}",
                g(&format!("/gpu_signals/last/{k}"))
            );
        }
    }
    if let Some(errors) = g("/errors").as_array().filter(|e| !e.is_empty()) {
        let _ = writeln!(s, "\n## Errors\n");
        for e in errors {
            let _ = writeln!(s, "- {}", e.as_str().unwrap_or("?").replace('\n', " "));
        }
    }
    s
}
