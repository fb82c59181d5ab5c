//! Memory leases' data path, black-box: a real `harvest-executor --region` process, driven
//! through the client's [`ExecutorConnection`] (the `harvest.mem.*` operations) on 127.0.0.1.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Executor, Reply, call};
use harvest_client::{ExecutorConnection, InvokeError, Polling};
use harvest_core::invoke::ErrorCode;
use harvest_core::invoke::auth::LeaseSecret;

const MIB: u64 = 1 << 20;

fn memory_executor(region: &str, extra: &[&str]) -> Executor {
    let mut args = vec!["--region", region];
    args.extend_from_slice(extra);
    Executor::start_serving(None, &args)
}

fn connect(e: &Executor, polling: Polling) -> ExecutorConnection {
    ExecutorConnection::connect(e.addr.parse().unwrap(), polling, &e.secret).unwrap()
}

/// Deterministic bytes: `len` of them, different for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a over `data`.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn remote_code(r: Result<impl std::fmt::Debug, InvokeError>) -> (ErrorCode, String) {
    match r {
        Err(InvokeError::Remote { code, message, .. }) => (code, message),
        other => panic!("expected an error from the executor, got {other:?}"),
    }
}

#[test]
fn writes_on_one_connection_are_read_on_another() {
    let e = memory_executor("1M", &[]);
    let mut a = connect(&e, Polling::Block);
    let mut b = connect(&e, Polling::Spin);
    assert_eq!(a.region_size().unwrap(), MIB);
    assert_eq!(b.read(0, 16).unwrap(), vec![0; 16], "a new region is zeros");
    a.write(4096, b"hello, region").unwrap();
    a.write(MIB - 3, b"end").unwrap();
    assert_eq!(b.read(4096, 13).unwrap(), b"hello, region");
    assert_eq!(b.read(MIB - 3, 3).unwrap(), b"end");
    assert_eq!(b.read(4090, 0).unwrap(), b"");
    // A third connection, opened later (a fresh worker), sees the same bytes.
    let mut c = connect(&e, Polling::Block);
    assert_eq!(c.read(4096, 5).unwrap(), b"hello");
}

#[test]
fn readv_and_writev_scatter_and_gather() {
    let e = memory_executor("64K", &[]);
    let mut c = connect(&e, Polling::Block);
    let pieces: [(u64, &[u8]); 3] = [(10, b"abc"), (60_000, b"defgh"), (0, b"Z")];
    c.writev(&pieces).unwrap();
    let got = c.readv(&[(0, 1), (10, 3), (60_000, 5), (13, 2)]).unwrap();
    assert_eq!(
        got,
        vec![
            b"Z".to_vec(),
            b"abc".to_vec(),
            b"defgh".to_vec(),
            vec![0, 0]
        ]
    );
    let mut cat = Vec::new();
    c.readv_into(&[(60_003, 2), (10, 1)], &mut cat).unwrap();
    assert_eq!(cat, b"gha");
    // The most ranges one call carries, and one more (refused before sending).
    let many: Vec<(u64, u32)> = (0..1024).map(|i| (i * 8, 8)).collect();
    assert_eq!(c.readv(&many).unwrap().len(), 1024);
    // As many pieces as one writev carries: more buffers than one sendmsg takes (IOV_MAX).
    let data = pattern(7, 1024 * 8);
    let pieces: Vec<(u64, &[u8])> = data
        .chunks(8)
        .enumerate()
        .map(|(i, d)| (32_768 + (1023 - i as u64) * 16, d))
        .collect();
    c.writev(&pieces).unwrap();
    let back: Vec<(u64, u32)> = (0..1024).map(|i| (32_768 + (1023 - i) * 16, 8)).collect();
    assert_eq!(c.readv(&back).unwrap().concat(), data);
    let too_many: Vec<(u64, u32)> = (0..1025).map(|i| (i, 1)).collect();
    assert!(matches!(c.readv(&too_many), Err(InvokeError::Request(_))));
    let one = [0u8; 1];
    let too_many: Vec<(u64, &[u8])> = (0..1025).map(|i| (i, &one[..])).collect();
    assert!(matches!(c.writev(&too_many), Err(InvokeError::Request(_))));
    // Pipelined reads and writes on one connection are answered in order.
    let w = c.submit_write(100, b"pipelined").unwrap();
    let r = c.submit_read(100, 9).unwrap();
    let mut out = Vec::new();
    assert_eq!(c.wait_into(&mut out, None).unwrap(), w);
    assert_eq!(c.wait_into(&mut out, None).unwrap(), r);
    assert_eq!(out, b"pipelined");
}

#[test]
fn out_of_range_and_oversized_requests_are_refused_and_the_connection_goes_on() {
    let e = memory_executor("8K", &["--max-output", "4K"]);
    let mut c = connect(&e, Polling::Block);
    let (code, msg) = remote_code(c.read(8190, 3));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("8190") && msg.contains("8192"), "{msg}");
    let (code, msg) = remote_code(c.write(8192, b"x"));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(msg.contains("8192"), "{msg}");
    // Offsets that would wrap around u64 are out of range, not the region's start.
    let (code, _) = remote_code(c.read(u64::MAX, 2));
    assert_eq!(code, ErrorCode::BadRequest);
    let (code, _) = remote_code(c.writev(&[(0, b"ok"), (u64::MAX - 1, b"wrap")]));
    assert_eq!(code, ErrorCode::BadRequest);
    let (code, msg) = remote_code(c.read(0, 4097));
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(
        msg.contains("4096") && msg.contains("--max-output"),
        "{msg}"
    );
    let (code, _) = remote_code(c.readv(&[(0, 4000), (4000, 97)]));
    assert_eq!(code, ErrorCode::BadRequest);
    // A refused writev wrote nothing, not even its good first piece.
    assert_eq!(c.read(0, 2).unwrap(), vec![0, 0]);
    // Unknown operations and functions: no such function, saying what this lease is.
    let (code, msg) = remote_code(c.invoke("harvest.mem.free", b"", None));
    assert_eq!(code, ErrorCode::NoSuchFunction);
    assert!(msg.contains("harvest.mem.readv"), "{msg}");
    let (code, msg) = remote_code(c.invoke("echo", b"x", None));
    assert_eq!(code, ErrorCode::NoSuchFunction);
    assert_eq!(msg, "this is a memory lease: it has no functions");
    // Malformed input.
    let (code, _) = remote_code(c.invoke("harvest.mem.read", b"short", None));
    assert_eq!(code, ErrorCode::BadRequest);
    // None of that closed the connection.
    c.write(0, b"still here").unwrap();
    assert_eq!(c.read(0, 10).unwrap(), b"still here");
}

#[test]
fn a_wrong_secret_is_refused() {
    let e = memory_executor("64K", &[]);
    let other = LeaseSecret::random().unwrap();
    let mut c =
        ExecutorConnection::connect(e.addr.parse().unwrap(), Polling::Block, &other).unwrap();
    let err = c.read(0, 1).unwrap_err();
    assert!(matches!(err, InvokeError::Unauthorized { .. }), "{err}");
}

#[test]
fn a_64_mib_region_written_whole_reads_back_whole() {
    let e = memory_executor("64M", &[]);
    let mut c = connect(&e, Polling::Block);
    let chunk = 4 << 20;
    let data = pattern(64, (64 * MIB) as usize);
    // Pipelined: up to four writes in flight.
    let mut ids = std::collections::VecDeque::new();
    let mut out = Vec::new();
    for (i, piece) in data.chunks(chunk).enumerate() {
        ids.push_back(c.submit_write((i * chunk) as u64, piece).unwrap());
        if ids.len() == 4 {
            assert_eq!(
                c.wait_into(&mut out, None).unwrap(),
                ids.pop_front().unwrap()
            );
        }
    }
    while let Some(id) = ids.pop_front() {
        assert_eq!(c.wait_into(&mut out, None).unwrap(), id);
    }
    let mut back = Vec::with_capacity(data.len());
    for i in 0..(data.len() / chunk) {
        c.read_into((i * chunk) as u64, chunk as u32, &mut out)
            .unwrap();
        back.extend_from_slice(&out);
    }
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), checksum(&data));
    assert!(back == data);
}

#[test]
fn four_connections_write_disjoint_ranges_at_once() {
    let e = memory_executor("16M", &[]);
    let quarter = 4 * MIB as usize;
    std::thread::scope(|s| {
        for w in 0..4u64 {
            let e = &e;
            s.spawn(move || {
                let mut c = connect(e, Polling::Block);
                let data = pattern(w, quarter);
                let base = w * quarter as u64;
                for (i, piece) in data.chunks(256 << 10).enumerate() {
                    c.write(base + (i * (256 << 10)) as u64, piece).unwrap();
                }
            });
        }
    });
    let mut c = connect(&e, Polling::Block);
    for w in 0..4u64 {
        let got = c.read(w * quarter as u64, quarter as u32).unwrap();
        assert!(got == pattern(w, quarter), "writer {w}'s quarter");
    }
}

#[test]
fn memory_operations_count_as_invocations_in_the_activity_file() {
    let dir = tempfile::tempdir().unwrap();
    let activity = dir.path().join("activity");
    let e = memory_executor("64K", &["--activity-file", activity.to_str().unwrap()]);
    let mut c = connect(&e, Polling::Block);
    for i in 0..5 {
        c.write(i * 8, b"8 bytes!").unwrap();
    }
    c.read(0, 40).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let count = std::fs::read_to_string(&activity).ok().and_then(|t| {
            t.split_whitespace()
                .nth(1)
                .map(|n| n.parse::<u64>().unwrap())
        });
        if count == Some(6) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the activity file never counted 6 operations: {count:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_function_lease_has_no_region() {
    let e = Executor::start(&[]);
    for op in [
        "harvest.mem.size",
        "harvest.mem.read",
        "harvest.mem.write",
        "harvest.mem.anything",
    ] {
        match call(&e, op, b"", 0) {
            Reply::Err(1, ErrorCode::NoSuchFunction, m) => assert_eq!(
                m,
                "this lease has no memory region (it is a function lease)"
            ),
            other => panic!("{op}: {other:?}"),
        }
    }
    // Its functions still run, and both can be served by one executor.
    assert_eq!(call(&e, "echo", b"hi", 0), Reply::Ok(1, b"hi".to_vec()));
    let both = Executor::start(&["--region", "4K"]);
    let mut c = connect(&both, Polling::Block);
    assert_eq!(c.invoke("echo", b"fn", None).unwrap(), b"fn");
    c.write(0, b"mem").unwrap();
    assert_eq!(c.read(0, 3).unwrap(), b"mem");
}

#[test]
fn an_executor_needs_a_library_or_a_region_of_a_valid_size() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_harvest-executor"))
            .args(args)
            .env(
                "HARVEST_LEASE_SECRET",
                LeaseSecret::random().unwrap().to_hex(),
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&[]);
    assert!(err.contains("--lib") && err.contains("--region"), "{err}");
    let err = run(&["--region", "2T"]);
    assert!(
        err.contains("--region") && err.contains("4096 to 1099511627776 bytes (1T)"),
        "{err}"
    );
    let err = run(&["--region", "1K"]);
    assert!(err.contains("4096"), "{err}");
}
