//! Black-box tests of the `harvest-executor` binary: a real process, a real C function library
//! built here with the system C compiler, real TCP on 127.0.0.1.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Executor, Reply, call, recv, send};
use harvest_core::invoke::ErrorCode;

#[test]
fn echoes_small_and_large_inputs_with_pipelining() {
    let e = Executor::start(&["--hot", "1ms"]);
    let mut s = e.connect();
    let sizes = [0usize, 1, 1024, 64 * 1024, 1 << 20];
    for (i, &n) in sizes.iter().enumerate() {
        let input: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
        send(&mut s, i as u64 + 1, 0, "echo", &input);
    }
    // All requests were in flight before the first answer was read.
    for (i, &n) in sizes.iter().enumerate() {
        let input: Vec<u8> = (0..n).map(|b| (b * 7 + i) as u8).collect();
        assert_eq!(recv(&mut s), Some(Reply::Ok(i as u64 + 1, input)));
    }
}

#[test]
fn unknown_and_invalid_function_names_are_errors() {
    let e = Executor::start(&[]);
    let mut s = e.connect();
    send(&mut s, 5, 0, "nope", b"");
    assert!(
        matches!(recv(&mut s), Some(Reply::Err(5, ErrorCode::NoSuchFunction, m)) if m.contains("nope"))
    );
    send(&mut s, 6, 0, "a-b", b"");
    assert!(matches!(
        recv(&mut s),
        Some(Reply::Err(6, ErrorCode::NoSuchFunction, _))
    ));
    // The connection still works.
    send(&mut s, 7, 0, "echo", b"ok");
    assert_eq!(recv(&mut s), Some(Reply::Ok(7, b"ok".to_vec())));
}

#[test]
fn a_crash_is_an_explicit_error_and_the_next_invocation_works() {
    let e = Executor::start(&[]);
    match call(&e, "crash", b"", 0) {
        Reply::Err(1, ErrorCode::Crashed, m) => assert!(m.contains("SIGSEGV"), "{m}"),
        r => panic!("expected a crash error, got {r:?}"),
    }
    assert_eq!(
        call(&e, "echo", b"again", 0),
        Reply::Ok(1, b"again".to_vec())
    );
}

#[test]
fn an_output_overflow_hits_the_guard_page_and_a_lie_is_caught() {
    let e = Executor::start(&["--max-output", "64K"]);
    assert!(matches!(
        call(&e, "overflow", b"", 0),
        Reply::Err(1, ErrorCode::Crashed, _)
    ));
    assert!(matches!(
        call(&e, "liar", b"", 0),
        Reply::Err(1, ErrorCode::OutputTooLarge, _)
    ));
    assert_eq!(call(&e, "echo", b"fine", 0), Reply::Ok(1, b"fine".to_vec()));
}

#[test]
fn a_function_past_its_timeout_is_killed_and_reported() {
    let e = Executor::start(&[]);
    let started = Instant::now();
    match call(&e, "spin", b"", 200) {
        Reply::Err(1, ErrorCode::Timeout, m) => assert!(m.contains("timeout"), "{m}"),
        r => panic!("expected a timeout, got {r:?}"),
    }
    // Killed near its deadline, not at the executor's 10 s default.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(call(&e, "echo", b"next", 0), Reply::Ok(1, b"next".to_vec()));
}

#[test]
fn functions_run_in_a_process_named_harvest_executor() {
    let e = Executor::start(&["--hot", "warm"]);
    let Reply::Ok(_, out) = call(&e, "whereami", b"", 0) else {
        panic!("whereami failed")
    };
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("/harvest-executor "), "{text}");
    // A worker process, not the supervisor.
    assert!(!text.contains(&format!("pid={} ", e.child.id())), "{text}");
}

#[test]
fn a_missing_library_fails_at_start_with_its_path() {
    let out = Command::new(env!("CARGO_BIN_EXE_harvest-executor"))
        .args(["--lib", "/nonexistent/libnothing.so"])
        .env("HARVEST_LEASE_SECRET", "ab".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/libnothing.so"), "{err}");
}

#[test]
fn invocations_are_recorded_in_the_activity_file_for_idle_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("activity");
    let path = file.to_str().unwrap().to_owned();
    let e = Executor::start(&["--activity-file", &path]);
    assert!(!file.exists(), "no activity before the first invocation");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert_eq!(call(&e, "echo", b"x", 0), Reply::Ok(1, b"x".to_vec()));
    assert_eq!(call(&e, "echo", b"y", 0), Reply::Ok(1, b"y".to_vec()));
    // `LAST_MS COUNT SUM_NS B0..B7`, rewritten at most once a second: wait for both calls.
    let deadline = Instant::now() + Duration::from_secs(5);
    let fields: Vec<u64> = loop {
        let fields: Vec<u64> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        if fields.len() == 11 && fields[1] == 2 {
            break fields;
        }
        assert!(
            Instant::now() < deadline,
            "activity file never counted 2: {fields:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        fields[0] >= before.saturating_sub(1000),
        "{} < {before}",
        fields[0]
    );
    assert_eq!(
        fields[3..].iter().sum::<u64>(),
        2,
        "two durations in the buckets"
    );
    assert!(fields[2] > 0, "a sum of durations");
}
