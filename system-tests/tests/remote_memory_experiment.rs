//! The remote-memory experiment (`harvest-experiments remote-memory --quick`) on the real
//! cluster: a memory lease's transport beside raw TCP, and a batch job beside a remote client
//! streaming to its node's memory, uncontrolled and controlled; its summary must hold every
//! figure, each sane.
//!
//! Needs `deploy/local-cluster up` (one node or more) with harvestd and harvest-scheduler, a
//! debug build of the workspace, `cc`, root and munged (see leases.rs). About 80 s.

use anyhow::{Result, ensure};
use harvest_system_tests::LocalCluster;
use harvest_system_tests::fixtures::{Scratch, target_bin};
use serde_json::Value;

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn the_remote_memory_experiment_runs_in_its_quick_mode() -> Result<()> {
    let _cluster = LocalCluster::from_env()?;
    let out = Scratch::new("harvest-remote-memory-test")?;
    let run = std::process::Command::new(target_bin("harvest-experiments")?)
        .args(["remote-memory", "--quick", "--out"])
        .arg(&out.0)
        .output()?;
    ensure!(
        run.status.success(),
        "harvest-experiments remote-memory --quick: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let s: Value = serde_json::from_slice(&std::fs::read(out.0.join("summary.json"))?)?;
    let num = |key: &str| -> Result<f64> {
        s[key]
            .as_f64()
            .ok_or_else(|| anyhow::anyhow!("summary.json has no number {key}: {s}"))
    };
    for key in [
        "remote_read_gbps",
        "remote_write_gbps",
        "raw_tcp_gbps",
        "read_p50_us_4k",
        "raw_tcp_p50_us_4k",
        "achieved_uncontrolled_gbps",
    ] {
        let v = num(key)?;
        ensure!(v.is_finite() && v > 0.0, "{key} = {v}: {s}");
    }
    ensure!(
        num("read_p99_us_4k")? >= num("read_p50_us_4k")?,
        "p99 below p50: {s}"
    );
    for key in ["slowdown_uncontrolled_pct", "slowdown_controlled_pct"] {
        // A slowdown is finite, and no job got more than twice as fast beside the client.
        let v = num(key)?;
        ensure!(v.is_finite() && v > -50.0, "{key} = {v}: {s}");
    }
    ensure!(
        s["transport_verified"] == true && s["transport_cpu_millis"] == 1000,
        "the transport region must read back as written, with a 1000-millis executor: {s}"
    );
    // One paced rate and the maximum, uncontrolled, then the maximum controlled.
    let rates = s["rates"].as_array().cloned().unwrap_or_default();
    let phases: Vec<(&str, &str)> = rates
        .iter()
        .map(|r| {
            (
                r["phase"].as_str().unwrap_or(""),
                r["offered"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        phases
            == [
                ("uncontrolled", "0.5"),
                ("uncontrolled", "max"),
                ("controlled", "max")
            ],
        "rates: {phases:?}"
    );
    for r in &rates {
        let g = r["achieved_gbps"].as_f64().unwrap_or(f64::NAN);
        ensure!(g.is_finite() && g > 0.0, "no remote traffic in {r}");
    }
    // The paced client offered 0.5 GB/s: it got no more than that (and some slack for the
    // window's edges).
    let paced = rates[0]["achieved_gbps"].as_f64().unwrap_or(f64::NAN);
    ensure!(paced <= 0.6, "the 0.5 GB/s client achieved {paced} GB/s");
    ensure!(
        s["paper_reference"]["milc_slowdown_max_pct"].is_number(),
        "the paper's figures beside: {s}"
    );
    let csv = std::fs::read_to_string(out.0.join("runs.csv"))?;
    // alone, 0.5, max, alone, controlled, alone: six phases and the header.
    ensure!(csv.lines().count() == 7, "runs.csv: {csv}");
    ensure!(
        out.0.join("remote-memory.png").exists(),
        "no remote-memory.png"
    );
    Ok(())
}
