//! Steps 1, 3 and 4 of gpu_check (see main.rs): what the lease sees, the function's latency and
//! the batch's slowdown.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harvest_client::invoke::{ExecutorConnection, Polling};
use harvest_system_tests::fixtures::lease_secret;
use serde_json::{Value, json};

use crate::{Args, CALL_TIMEOUT, Report, WAIT};

pub fn connect(addr: SocketAddr) -> Result<ExecutorConnection> {
    ExecutorConnection::connect(addr, Polling::Block, lease_secret())
        .with_context(|| format!("connecting to the executor at {addr}"))
}

pub fn call(conn: &mut ExecutorConnection, f: &str, input: &[u8]) -> Result<Vec<u8>> {
    conn.invoke(f, input, Some(CALL_TIMEOUT))
        .with_context(|| format!("invoking {f}"))
}

/// Steps 1 to 4; true when saxpy ran on the GPU through the lease and was right.
pub fn measure(
    a: &Args,
    r: &mut Report,
    addr: SocketAddr,
    gpus: &[u32],
    busy: &Path,
    dir: &Path,
) -> bool {
    let mut conn = match connect(addr) {
        Ok(c) => c,
        Err(e) => {
            r.error("connect", e);
            return false;
        }
    };
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    match call(&mut conn, "whereami", b"") {
        Ok(out) => r.set("whereami", json!(text(out))),
        Err(e) => r.error("whereami", e),
    }
    let started = Instant::now();
    let devices = call(&mut conn, "cuda_devices", b"").map(text);
    r.set(
        "cuda_init_and_devices_ms",
        json!(started.elapsed().as_secs_f64() * 1e3),
    );
    // CUDA_VISIBLE_DEVICES as the executor got it: cuda_busy uses the same GPU.
    let mut visible = None;
    match devices {
        Ok(out) => {
            visible = out
                .lines()
                .find_map(|l| l.strip_prefix("CUDA_VISIBLE_DEVICES="))
                .map(str::to_owned);
            if !out.starts_with("ok count=1\n") {
                r.error("cuda_devices", format!("not one visible GPU: {out}"));
            }
            r.set("cuda_devices", json!(out));
        }
        Err(e) => r.error("cuda_devices", e),
    }
    let checks = crate::devices::device_checks(a, r, &mut conn, gpus, dir);
    r.set("device_checks", checks);

    let (ran, latency) = latency(a, &mut conn);
    r.set("latency", latency);
    if !ran {
        r.error(
            "latency",
            "saxpy did not run correctly on the GPU (see latency.error)",
        );
        return false;
    }
    let batch = batch_slowdown(a, r, &mut conn, busy, visible.as_deref());
    r.set("batch", batch);
    true
}

fn saxpy_input(n: usize) -> (Vec<u8>, Vec<f32>) {
    let a = 2.0f32;
    let x: Vec<f32> = (0..n).map(|i| (i % 1024) as f32).collect();
    let y: Vec<f32> = (0..n).map(|i| (i % 3) as f32).collect();
    let want = x.iter().zip(&y).map(|(x, y)| a * x + y).collect();
    let bytes = std::iter::once(a)
        .chain(x)
        .chain(y)
        .flat_map(f32::to_le_bytes)
        .collect();
    (bytes, want)
}

/// Whether saxpy's output is "ok n=N\n" and the right floats.
fn saxpy_right(out: &[u8], want: &[f32]) -> Result<(), String> {
    let head = format!("ok n={}\n", want.len());
    let Some(body) = out.strip_prefix(head.as_bytes()) else {
        return Err(String::from_utf8_lossy(&out[..out.len().min(4096)]).into_owned());
    };
    let got: Vec<f32> = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if got.as_slice() == want {
        Ok(())
    } else {
        Err(format!(
            "wrong result: {} floats, first {:?}",
            got.len(),
            &got[..got.len().min(4)]
        ))
    }
}

/// p50, p99, mean and count of durations in ms.
fn stats(ms: &mut [f64]) -> Value {
    if ms.is_empty() {
        return json!(null);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    json!({"calls": ms.len(), "p50_ms": pick(0.5), "p99_ms": pick(0.99),
           "mean_ms": ms.iter().sum::<f64>() / ms.len() as f64, "max_ms": ms[ms.len() - 1]})
}

/// Step 3: saxpy `calls` times and echo of the same input as the baseline.
fn latency(a: &Args, conn: &mut ExecutorConnection) -> (bool, Value) {
    let (input, want) = saxpy_input(a.elements);
    let started = Instant::now();
    let first = match call(conn, "saxpy", &input) {
        Ok(out) => out,
        Err(e) => return (false, json!({"error": format!("{e:#}")})),
    };
    let first_ms = started.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = saxpy_right(&first, &want) {
        return (false, json!({"error": e}));
    }
    let (mut saxpy, mut echo) = (Vec::new(), Vec::new());
    for _ in 0..a.calls {
        let t = Instant::now();
        match call(conn, "saxpy", &input) {
            Ok(out) if out.starts_with(b"ok ") => saxpy.push(t.elapsed().as_secs_f64() * 1e3),
            Ok(out) => return (false, json!({"error": String::from_utf8_lossy(&out)})),
            Err(e) => return (false, json!({"error": format!("{e:#}")})),
        }
        let t = Instant::now();
        if call(conn, "echo", &input).is_ok() {
            echo.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let last = call(conn, "saxpy", &input).map(|out| saxpy_right(&out, &want));
    let right = matches!(last, Ok(Ok(())));
    (
        right,
        json!({"elements": a.elements, "input_bytes": input.len(),
               "first_saxpy_ms": first_ms,
               "saxpy": stats(&mut saxpy), "echo_same_input_baseline": stats(&mut echo),
               "results_right": right}),
    )
}

/// Runs cuda_busy for the configured time on the lease's GPU; with `calls` set, calls saxpy
/// back to back through the lease from its "ready" until it exits.
fn busy_run(
    a: &Args,
    busy: &Path,
    visible: Option<&str>,
    calls: Option<(&mut ExecutorConnection, &mut Vec<f64>)>,
) -> Result<Value> {
    let mut cmd = Command::new(busy);
    cmd.args(["--seconds", &a.busy_seconds.to_string()])
        .env("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = visible {
        cmd.env("CUDA_VISIBLE_DEVICES", v);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", busy.display()))?;
    let deadline = Instant::now() + Duration::from_secs_f64(a.busy_seconds) + WAIT;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let kill = |child: &mut Child| {
        let _ = child.kill();
        let _ = child.wait();
    };
    let first = rx.recv_timeout(WAIT);
    if first.as_deref() != Ok("ready") {
        kill(&mut child);
        let err = child
            .stderr
            .take()
            .map(|mut e| {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            })
            .unwrap_or_default();
        bail!("cuda_busy did not get ready: {first:?} {err}");
    }
    if let Some((conn, calls)) = calls {
        // The connection is warm: its worker made its CUDA context before cuda_busy started.
        let (input, _) = saxpy_input(a.elements);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            let t = Instant::now();
            let out = call(conn, "saxpy", &input)?;
            if !out.starts_with(b"ok ") {
                bail!("saxpy beside the batch: {}", String::from_utf8_lossy(&out));
            }
            calls.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let result = rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    kill(&mut child);
    let line = result.context("cuda_busy printed no result in time")?;
    let v: Value = serde_json::from_str(&line).with_context(|| format!("cuda_busy: {line}"))?;
    if let Some(e) = v.get("error") {
        bail!("cuda_busy: {e}");
    }
    Ok(v)
}

/// Step 4: the batch alone, beside the function, alone again.
fn batch_slowdown(
    a: &Args,
    r: &mut Report,
    conn: &mut ExecutorConnection,
    busy: &Path,
    visible: Option<&str>,
) -> Value {
    let mut during = Vec::new();
    let runs = [
        busy_run(a, busy, visible, None),
        busy_run(a, busy, visible, Some((conn, &mut during))),
        busy_run(a, busy, visible, None),
    ];
    let rate = |v: &Result<Value>| v.as_ref().ok()?.get("kernels_per_s")?.as_f64();
    let slowdown = match (rate(&runs[0]), rate(&runs[1]), rate(&runs[2])) {
        (Some(a1), Some(b), Some(a2)) if b > 0.0 => Some((a1 + a2) / 2.0 / b - 1.0),
        _ => None,
    };
    let [before, with, after] =
        runs.map(|v| v.unwrap_or_else(|e| json!({"error": format!("{e:#}")})));
    for (name, v) in [
        ("alone_before", &before),
        ("with_function", &with),
        ("alone_after", &after),
    ] {
        if let Some(e) = v.get("error") {
            r.error(&format!("batch {name}"), e);
        }
    }
    json!({"busy_seconds": a.busy_seconds, "alone_before": before, "with_function": with,
           "alone_after": after,
           "slowdown": slowdown,
           "slowdown_is": "mean kernels/s alone (before, after) / kernels/s beside the function - 1",
           "saxpy_beside_the_batch": stats(&mut during)})
}
