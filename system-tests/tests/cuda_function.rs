//! The CUDA function library and the batch busy loop (`harvest_system_tests::cuda`) on a machine
//! without a GPU: both build with plain `cc`; without libcuda they answer "no GPU: libcuda.so.1
//! not found" and exit cleanly; through a CPU stand-in for the driver (src/cuda/
//! fake_libcuda.c) their host side computes saxpy right, names every driver error and frees
//! what it allocated. Where `ptxas` is installed (`pip install nvidia-cuda-nvcc-cu12` has one;
//! or `HARVEST_PTXAS`), the embedded PTX is assembled for sm_50 and sm_90.
//!
//! Needs only `cc`; no cluster, no root.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use harvest_system_tests::cuda::{
    CUDA_DRIVER_H, build_cuda_busy, build_cuda_library, build_fake_libcuda,
};
use harvest_system_tests::fixtures::Scratch;

const CALL_FN_C: &str = include_str!("cuda/call_fn.c");

struct Built {
    _dir: Scratch,
    library: PathBuf,
    busy: PathBuf,
    fake: PathBuf,
    caller: PathBuf,
}

fn cc(dir: &Path, args: &[&str], name: &str, text: &str, output: &str) -> PathBuf {
    let src = dir.join(name);
    std::fs::write(&src, text).unwrap();
    let out = dir.join(output);
    let status = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror"])
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "cc {name}");
    out
}

/// Everything built into a scratch directory of the test's own (`name`).
fn build(name: &str) -> Built {
    let dir = Scratch::new(&format!("harvest-cuda-{name}")).unwrap();
    let d = dir.0.as_path();
    Built {
        library: build_cuda_library(d, None).unwrap(),
        busy: build_cuda_busy(d, None).unwrap(),
        fake: build_fake_libcuda(d).unwrap(),
        caller: cc(d, &[], "call_fn.c", CALL_FN_C, "call_fn"),
        _dir: dir,
    }
}

/// Calls `function` `calls` times as harvest-executor does; `driver`: the fake's path, or None
/// for the real lookup of libcuda.so.1. Returns the last output and the fake's count of
/// allocations not freed (None without the fake).
fn call(
    b: &Built,
    function: &str,
    input: &[u8],
    calls: u32,
    driver: Option<&Path>,
    fail: Option<&str>,
) -> (Vec<u8>, Option<i64>) {
    let mut cmd = Command::new(&b.caller);
    cmd.arg(&b.library)
        .arg(function)
        .arg(calls.to_string())
        .env_remove("HARVEST_LIBCUDA")
        .env_remove("FAKE_CUDA_FAIL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(driver) = driver {
        cmd.env("HARVEST_LIBCUDA", driver);
    }
    if let Some(fail) = fail {
        cmd.env("FAKE_CUDA_FAIL", fail);
    }
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "call_fn {function}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let live = stderr
        .lines()
        .find_map(|l| l.strip_prefix("live_allocations="))
        .map(|n| n.parse().unwrap());
    (out.stdout, live)
}

/// saxpy's input: a, then x, then y, as little-endian float32.
fn saxpy_input(a: f32, x: &[f32], y: &[f32]) -> Vec<u8> {
    std::iter::once(a)
        .chain(x.iter().copied())
        .chain(y.iter().copied())
        .flat_map(f32::to_le_bytes)
        .collect()
}

/// The floats after saxpy's "ok n=N\n" line, checking N.
fn saxpy_output(out: &[u8], n: usize) -> Vec<f32> {
    let head = format!("ok n={n}\n");
    assert!(
        out.starts_with(head.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
    let body = &out[head.len()..];
    assert_eq!(body.len(), 4 * n);
    body.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn text(out: &[u8]) -> String {
    String::from_utf8(out.to_vec()).unwrap()
}

fn libcuda_installed() -> bool {
    Command::new("ldconfig")
        .arg("-p")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("libcuda.so.1 "))
}

#[test]
fn without_libcuda_the_function_and_the_busy_loop_say_no_gpu() {
    let b = build("no-gpu");
    let x: Vec<f32> = (0..300).map(|i| i as f32).collect();
    let (out, _) = call(
        &b,
        "saxpy",
        &saxpy_input(2.0, &x, &[1.0; 300]),
        2,
        None,
        None,
    );
    let busy = Command::new(&b.busy)
        .args(["--seconds", "0.2"])
        .env_remove("HARVEST_LIBCUDA")
        .output()
        .unwrap();
    let busy_out = text(&busy.stdout);
    if libcuda_installed() {
        // A machine with NVIDIA's driver: the GPU's answer must be right, or "no GPU" (a driver
        // without a usable device).
        if out.starts_with(b"ok") {
            let y = saxpy_output(&out, 300);
            assert!(y.iter().zip(&x).all(|(y, x)| *y == 2.0 * x + 1.0), "{y:?}");
            assert!(busy.status.success() && busy_out.contains("\"kernels\":"));
        } else {
            assert!(text(&out).starts_with("error: no GPU: "), "{}", text(&out));
        }
        return;
    }
    assert!(
        text(&out).starts_with("error: no GPU: libcuda.so.1 not found ("),
        "{}",
        text(&out)
    );
    let (devices, _) = call(&b, "cuda_devices", b"", 1, None, None);
    assert!(text(&devices).starts_with("error: no GPU: libcuda.so.1 not found"));
    assert_eq!(busy.status.code(), Some(2), "{busy:?}");
    assert!(
        busy_out.starts_with("{\"error\":\"no GPU: libcuda.so.1 not found ("),
        "{busy_out}"
    );
}

#[test]
fn saxpy_through_a_cpu_stand_in_for_the_driver_is_right_and_frees_its_memory() {
    let b = build("saxpy");
    // Not a multiple of the 256-thread block: the last block is partly idle.
    for n in [1usize, 1000, 65_536] {
        let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32).collect();
        let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let (out, live) = call(
            &b,
            "saxpy",
            &saxpy_input(-3.0, &x, &y),
            3,
            Some(&b.fake),
            None,
        );
        let got = saxpy_output(&out, n);
        for i in 0..n {
            assert_eq!(got[i], -3.0 * x[i] + y[i], "element {i} of {n}");
        }
        assert_eq!(live, Some(0), "device memory left allocated");
    }
    // Built with the fake as its default driver, no environment needed (harvestd clears it).
    let dir = Scratch::new("harvest-cuda-default-driver").unwrap();
    let with_default = Built {
        library: build_cuda_library(&dir.0, Some(&b.fake)).unwrap(),
        busy: build_cuda_busy(&dir.0, Some(&b.fake)).unwrap(),
        fake: b.fake.clone(),
        caller: b.caller.clone(),
        _dir: dir,
    };
    let (out, _) = call(
        &with_default,
        "saxpy",
        &saxpy_input(1.0, &[1.0], &[1.0]),
        1,
        None,
        None,
    );
    assert_eq!(saxpy_output(&out, 1), [2.0]);
    let busy = Command::new(&with_default.busy)
        .args(["--seconds", "0.1"])
        .env_remove("HARVEST_LIBCUDA")
        .output()
        .unwrap();
    assert!(busy.status.success(), "{busy:?}");
    let (out, _) = call(&b, "cuda_devices", b"", 2, Some(&b.fake), None);
    let out = text(&out);
    assert!(
        out.starts_with("ok count=1\n0 Fake CPU GPU 0 memory_mib=1024\n"),
        "{out}"
    );
    assert!(out.contains("CUDA_VISIBLE_DEVICES="), "{out}");
}

#[test]
fn driver_errors_and_bad_input_are_named_and_leak_nothing() {
    let b = build("errors");
    let input = saxpy_input(1.0, &[1.0; 10], &[2.0; 10]);
    for (fail, want) in [
        (
            "cuInit=100",
            "error: no GPU: cuInit: CUDA_ERROR_NO_DEVICE (100)\n",
        ),
        (
            "cuInit=34",
            "error: no GPU: cuInit: CUDA_ERROR_STUB_LIBRARY (34)\n",
        ),
        (
            "cuModuleLoadDataEx=218",
            "error: cuModuleLoadDataEx: CUDA_ERROR_INVALID_PTX (218)\n",
        ),
        (
            "cuMemAlloc_v2=2",
            "error: cuMemAlloc: CUDA_ERROR_OUT_OF_MEMORY (2)\n",
        ),
        (
            "cuMemcpyHtoD_v2=1",
            "error: cuMemcpyHtoD: CUDA_ERROR_INVALID_VALUE (1)\n",
        ),
        (
            "cuLaunchKernel=719",
            "error: cuLaunchKernel: CUDA_ERROR_LAUNCH_FAILED (719)\n",
        ),
        (
            "cuCtxSynchronize=700",
            "error: cuCtxSynchronize: CUDA_ERROR_ILLEGAL_ADDRESS (700)\n",
        ),
    ] {
        let (out, live) = call(&b, "saxpy", &input, 2, Some(&b.fake), Some(fail));
        assert_eq!(text(&out), want, "{fail}");
        assert_eq!(live, Some(0), "{fail}: device memory left allocated");
    }
    for bad in [&b""[..], &[0u8; 8], &[0u8; 13], &input[..input.len() - 4]] {
        let (out, _) = call(&b, "saxpy", bad, 1, Some(&b.fake), None);
        let out = text(&out);
        assert!(
            out.starts_with("error: the input must be float32 a, then n x, then n y"),
            "{} bytes: {out}",
            bad.len()
        );
    }
    // More elements than the output buffer holds.
    let n = (1 << 20) / 4;
    let mut big = vec![0u8; 4 + 8 * n];
    big[..4].copy_from_slice(&1f32.to_le_bytes());
    let (out, _) = call(&b, "saxpy", &big, 1, Some(&b.fake), None);
    assert!(
        text(&out).starts_with(&format!("error: {n} elements, at most")),
        "{}",
        text(&out)
    );
}

fn busy(b: &Built, args: &[&str], fail: Option<&str>) -> Output {
    let mut cmd = Command::new(&b.busy);
    cmd.args(args).env("HARVEST_LIBCUDA", &b.fake);
    if let Some(fail) = fail {
        cmd.env("FAKE_CUDA_FAIL", fail);
    }
    cmd.output().unwrap()
}

#[test]
fn the_busy_loop_reports_its_kernels_or_its_error_as_json() {
    let b = build("busy");
    let out = busy(&b, &["--seconds", "0.2", "--fraction", "0.5"], None);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let (ready, json) = stdout.split_once('\n').unwrap();
    assert_eq!(ready, "ready");
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert!(v["kernels"].as_u64().unwrap() > 0, "{v}");
    assert!(v["seconds"].as_f64().unwrap() >= 0.2, "{v}");
    // Half of the fake's 8 multiprocessors.
    assert_eq!(v["blocks"], 4, "{v}");
    assert_eq!(v["device"], "Fake CPU GPU 0", "{v}");

    let out = busy(&b, &["--seconds", "1"], Some("cuLaunchKernel=719"));
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["error"], "cuLaunchKernel: CUDA_ERROR_LAUNCH_FAILED (719)",
        "{v}"
    );
    for args in [
        &["--seconds"][..],
        &["--seconds", "0"],
        &["--fraction", "1.5"],
        &["--iters", "x"],
        &["--what", "1"],
    ] {
        let out = busy(&b, args, None);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {out:?}");
        assert!(text(&out.stderr).contains("usage: cuda_busy"), "{args:?}");
    }
}

/// The embedded PTX assembles for the oldest and a current target, where ptxas is at hand.
#[test]
fn the_embedded_ptx_assembles_for_sm_50_and_sm_90() {
    let ptxas = std::env::var_os("HARVEST_PTXAS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("ptxas"));
    if Command::new(&ptxas).arg("--version").output().is_err() {
        eprintln!("skipped: no ptxas (set HARVEST_PTXAS, or pip install nvidia-cuda-nvcc-cu12)");
        return;
    }
    let dir = Scratch::new("harvest-cuda-ptx").unwrap();
    let dir = dir.0.as_path();
    // The PTX is the C string literal in cuda_driver.h: print it with a two-line program.
    std::fs::write(dir.join("cuda_driver.h"), CUDA_DRIVER_H).unwrap();
    let dump = cc(
        dir,
        &[],
        "dump.c",
        "#include \"cuda_driver.h\"\nint main(void) { fputs(HARVEST_CUDA_PTX, stdout); \
         return 0; }\nint unused(void) { struct harvest_cuda_device d; char e[8]; \
         return harvest_cuda_open(&d, 0, e, 8); }\n",
        "dump",
    );
    let ptx = Command::new(dump).output().unwrap().stdout;
    let ptx_path = dir.join("kernels.ptx");
    std::fs::write(&ptx_path, &ptx).unwrap();
    for arch in ["sm_50", "sm_90"] {
        let out = Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-Werror")
            .arg(&ptx_path)
            .arg("-o")
            .arg(dir.join(format!("kernels-{arch}.cubin")))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ptxas {arch}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
