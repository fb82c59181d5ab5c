//! Black-box tests of what the executor refuses and survives: connections without the lease
//! secret, peers that hold connections open, stalled frames, functions that end their worker
//! by a signal or an exit, and the process limits functions run under. A real executor process,
//! real TCP on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Executor, Reply, call, read_challenge, recv, send};
use harvest_core::invoke::auth::{self, LeaseSecret};
use harvest_core::invoke::{self, ErrorCode, Frame};

/// Reads everything until the executor closes, and decodes the one frame it sent.
fn refusal(mut s: TcpStream) -> (u64, ErrorCode, String) {
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    assert!(bytes.len() > 4, "the executor closed without a word");
    match invoke::decode(&bytes[4..]).unwrap() {
        Frame::Error { id, code, message } => (id, code, message.to_owned()),
        f => panic!("expected an ERROR, got {f:?}"),
    }
}

#[test]
fn connections_without_the_lease_secret_are_refused_and_the_function_never_runs() {
    let e = Executor::start(&["--handshake-timeout", "300ms"]);
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    let path = counter.to_str().unwrap().as_bytes();

    // Another lease's secret (what user B has): a wrong proof, with an INVOKE right behind it.
    let mut wrong = e.connect_with(&LeaseSecret::random().unwrap());
    send(&mut wrong, 1, 0, "count", path);
    let (id, code, msg) = refusal(wrong);
    assert_eq!((id, code), (0, ErrorCode::Unauthorized), "{msg}");
    assert!(msg.contains("lease secret"), "{msg}");

    // No AUTH at all: straight to INVOKE.
    let mut bare = e.connect_raw();
    read_challenge(&mut bare);
    send(&mut bare, 1, 0, "count", path);
    let (_, code, msg) = refusal(bare);
    assert_eq!(code, ErrorCode::Unauthorized, "{msg}");

    // A proof replayed from another connection (its nonce was another).
    let mut first = e.connect_raw();
    let nonce = read_challenge(&mut first);
    let mut replay = e.connect_raw();
    read_challenge(&mut replay);
    let mut frames = Vec::new();
    invoke::encode_auth(&mut frames, &auth::proof(&e.secret, &nonce));
    invoke::encode_invoke(&mut frames, 1, 0, "count", path);
    replay.write_all(&frames).unwrap();
    let (_, code, msg) = refusal(replay);
    assert_eq!(code, ErrorCode::Unauthorized, "{msg}");
    drop(first);

    // Silence: refused at the handshake timeout.
    let mut silent = e.connect_raw();
    read_challenge(&mut silent);
    let (_, code, msg) = refusal(silent);
    assert_eq!(code, ErrorCode::Unauthorized, "{msg}");
    assert!(msg.contains("no AUTH within"), "{msg}");

    assert!(
        !counter.exists(),
        "a refused connection ran the function: {:?}",
        std::fs::read_to_string(&counter)
    );
    // The owner's call runs it, once.
    assert_eq!(
        call(&e, "count", path, 0),
        Reply::Ok(1, b"counted".to_vec())
    );
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "x");
}

#[test]
fn the_owner_gets_through_while_another_peer_holds_every_connection_it_can_open() {
    let e = Executor::start(&["--max-connections", "4", "--max-pending", "8"]);
    // The attacker opens many times what either cap allows and keeps them all open without
    // ever proving the secret (it has none).
    let held: Vec<TcpStream> = (0..64).map(|_| e.connect_raw()).collect();
    // Each of the owner's calls answers within a second, each on a new connection.
    for round in 0..3 {
        let started = Instant::now();
        let mut s = e.connect();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        send(&mut s, 1, 0, "echo", b"mine");
        assert_eq!(
            recv(&mut s),
            Some(Reply::Ok(1, b"mine".to_vec())),
            "round {round}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "round {round} took {:?}",
            started.elapsed()
        );
    }
    // The owner's authenticated connections are served up to their own cap, beside the
    // attacker's, and a connection over it is told so.
    let mut mine: Vec<TcpStream> = (0..4).map(|_| e.connect()).collect();
    for (i, s) in mine.iter_mut().enumerate() {
        send(s, i as u64 + 1, 0, "echo", b"x");
        assert_eq!(recv(s), Some(Reply::Ok(i as u64 + 1, b"x".to_vec())));
    }
    let (_, code, msg) = refusal(e.connect());
    assert_eq!(code, ErrorCode::Internal, "{msg}");
    assert!(msg.contains("busy"), "{msg}");
    drop(held);
}

#[test]
fn a_stalled_partial_frame_frees_its_worker_within_the_frame_timeout() {
    // One worker slot, hot for ever: a stalled frame must neither pin the slot nor spin forever.
    let e = Executor::start(&[
        "--max-connections",
        "1",
        "--hot",
        "always",
        "--frame-timeout",
        "300ms",
    ]);
    let mut s = e.connect();
    let mut frame = Vec::new();
    invoke::encode_invoke(&mut frame, 1, 0, "echo", b"never finished");
    s.write_all(&frame[..7]).unwrap();
    let started = Instant::now();
    let (id, code, msg) = refusal(s);
    assert_eq!((id, code), (0, ErrorCode::BadRequest), "{msg}");
    assert!(msg.contains("incomplete frame"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    // The only slot is free again: a new connection is served, not told "busy".
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call(&e, "echo", b"next", 0) {
            Reply::Ok(1, out) => {
                assert_eq!(out, b"next");
                break;
            }
            // The supervisor may not have reaped the worker yet.
            Reply::Err(0, ErrorCode::Internal, m) if m.contains("busy") => {
                assert!(Instant::now() < deadline, "the worker was never freed");
                std::thread::sleep(Duration::from_millis(10));
            }
            r => panic!("{r:?}"),
        }
    }
}

#[test]
fn raise_sigsegv_is_a_crash_named_sigsegv_not_an_empty_success() {
    let e = Executor::start(&[]);
    match call(&e, "raise_segv", b"", 0) {
        Reply::Err(1, ErrorCode::Crashed, m) => assert!(m.contains("SIGSEGV"), "{m}"),
        r => panic!("expected a crash naming SIGSEGV, got {r:?}"),
    }
}

#[test]
fn a_function_that_exits_is_reported_with_its_status_and_invocation() {
    let e = Executor::start(&[]);
    let mut s = e.connect();
    send(&mut s, 1, 0, "echo", b"a");
    assert_eq!(recv(&mut s), Some(Reply::Ok(1, b"a".to_vec())));
    send(&mut s, 2, 0, "exit3", b"");
    match recv(&mut s) {
        Some(Reply::Err(2, ErrorCode::Crashed, m)) => assert!(
            m.contains("exited with status 3 during invocation 2"),
            "{m}"
        ),
        r => panic!("expected the exit reported, got {r:?}"),
    }
}

#[test]
fn functions_run_without_new_privileges_core_dumps_inherited_signals_or_the_secret() {
    let e = Executor::start(&["--hot", "warm"]);
    let Reply::Ok(_, out) = call(&e, "limits", b"", 0) else {
        panic!("limits failed")
    };
    let text = String::from_utf8(out).unwrap();
    let field = |name: &str| -> String {
        text.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    assert_eq!(field("nnp"), "1", "{text}");
    assert_eq!(field("core"), "0/0", "{text}");
    let nofile: Vec<u64> = field("nofile")
        .split('/')
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(nofile[0] <= nofile[1] && nofile[1] <= 1024, "{text}");
    assert_eq!(field("segv"), "default", "{text}");
    assert_eq!(field("pipe"), "default", "{text}");
    assert_eq!(field("blocked"), "0", "{text}");
    assert_eq!(field("secret"), "unset", "{text}");
}

#[test]
fn max_output_is_a_byte_count_as_harvestd_passes_it() {
    // harvestd passes a plain byte count; read as MiB, 4096 became a 4 GiB buffer and this
    // 100,000-byte output fit. As bytes, the buffer is a page and the output hits its guard.
    let e = Executor::start(&["--max-output", "4096"]);
    assert_eq!(call(&e, "fill", b"4000", 0), Reply::Ok(1, vec![b'f'; 4000]));
    assert!(
        matches!(
            call(&e, "fill", b"100000", 0),
            Reply::Err(1, ErrorCode::Crashed, _)
        ),
        "an output past a 4096-byte buffer must not succeed"
    );
}

#[test]
fn bad_sizes_and_missing_or_malformed_secrets_fail_at_start_with_what_is_expected() {
    let lib = common::library();
    let run = |args: &[&str], secret: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harvest-executor"));
        cmd.arg("--lib").arg(&lib).args(args);
        cmd.env_remove("HARVEST_LEASE_SECRET");
        if let Some(s) = secret {
            cmd.env("HARVEST_LEASE_SECRET", s);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{args:?} {secret:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let good = LeaseSecret::random().unwrap().to_hex();
    let err = run(&["--max-output", "2G"], Some(&good));
    assert!(
        err.contains("--max-output") && err.contains("1073741824"),
        "{err}"
    );
    let err = run(&["--max-output", "1.5M"], Some(&good));
    assert!(err.contains("64K"), "{err}");
    let err = run(&[], None);
    assert!(
        err.contains("HARVEST_LEASE_SECRET") && err.contains("64 hex digits"),
        "{err}"
    );
    let err = run(&[], Some("not-a-secret"));
    assert!(
        err.contains("HARVEST_LEASE_SECRET") && err.contains("64 hex digits"),
        "{err}"
    );
}

#[test]
fn a_worker_holds_its_own_connection_and_no_other_socket() {
    let e = Executor::start(&["--hot", "warm"]);
    // Beside it: authenticated connections with workers, and connections in the handshake.
    let mut busy: Vec<TcpStream> = (0..3).map(|_| e.connect()).collect();
    for s in &mut busy {
        send(s, 1, 0, "echo", b"x");
        assert_eq!(recv(s), Some(Reply::Ok(1, b"x".to_vec())));
    }
    let _waiting: Vec<TcpStream> = (0..3).map(|_| e.connect_raw()).collect();
    // Two connections proved at once (both AUTHs in the socket before the supervisor looks).
    let mut pair: Vec<TcpStream> = (0..2).map(|_| e.connect_raw()).collect();
    let nonces: Vec<[u8; 32]> = pair.iter_mut().map(read_challenge).collect();
    for (s, nonce) in pair.iter_mut().zip(&nonces) {
        let mut frames = Vec::new();
        invoke::encode_auth(&mut frames, &auth::proof(&e.secret, nonce));
        invoke::encode_invoke(&mut frames, 1, 0, "sockets", b"");
        s.write_all(&frames).unwrap();
    }
    for s in &mut pair {
        assert_eq!(recv(s), Some(Reply::Ok(1, b"1".to_vec())));
    }
    for s in &mut busy {
        send(s, 2, 0, "sockets", b"");
        assert_eq!(recv(s), Some(Reply::Ok(2, b"1".to_vec())));
    }
}
