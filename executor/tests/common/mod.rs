//! What the executor's black-box tests share: the C test library, a real executor process with
//! a lease secret, and raw frames on 127.0.0.1.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harvest_core::invoke::auth::{self, LeaseSecret};
use harvest_core::invoke::{self, AUTH_FRAME_BYTES, ErrorCode, Frame};

/// The test function library, compiled once per test binary.
pub fn library() -> PathBuf {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("executor-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let so = dir.join(concat!("libtestfns-", env!("CARGO_CRATE_NAME"), ".so"));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions.c");
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&so)
            .arg(&src)
            .status()
            .expect("a C compiler (cc) is installed");
        assert!(status.success(), "compiling {}", src.display());
        so
    })
    .clone()
}

pub struct Executor {
    pub child: Child,
    pub addr: String,
    pub secret: LeaseSecret,
    _dir: tempfile::TempDir,
}

impl Executor {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_serving(Some(&library()), extra)
    }

    /// An executor with `lib` (or none: then `extra` must give `--region`).
    pub fn start_serving(lib: Option<&Path>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let secret = LeaseSecret::random().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_harvest-executor"));
        if let Some(lib) = lib {
            cmd.arg("--lib").arg(lib);
        }
        let child = cmd
            .arg("--ready-file")
            .arg(&ready)
            .args(extra)
            .env("RUST_LOG", "error")
            .env("HARVEST_LEASE_SECRET", secret.to_hex())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                break a.trim().to_owned();
            }
            assert!(Instant::now() < deadline, "executor did not become ready");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self {
            child,
            addr,
            secret,
            _dir: dir,
        }
    }

    /// A TCP connection that has not answered the challenge (which is waiting in it).
    pub fn connect_raw(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// A connection that proved the lease secret.
    pub fn connect(&self) -> TcpStream {
        self.connect_with(&self.secret)
    }

    pub fn connect_with(&self, secret: &LeaseSecret) -> TcpStream {
        let mut s = self.connect_raw();
        let nonce = read_challenge(&mut s);
        let mut auth = Vec::new();
        invoke::encode_auth(&mut auth, &auth::proof(secret, &nonce));
        s.write_all(&auth).unwrap();
        s
    }
}

pub fn read_challenge(s: &mut TcpStream) -> [u8; 32] {
    let mut c = [0u8; AUTH_FRAME_BYTES];
    s.read_exact(&mut c).unwrap();
    match invoke::decode(&c[4..]).unwrap() {
        Frame::Challenge { nonce } => nonce,
        f => panic!("expected a CHALLENGE first, got {f:?}"),
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Stop our own child by pid (SIGTERM: the supervisor stops its workers), then reap it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

#[derive(Debug, PartialEq)]
pub enum Reply {
    Ok(u64, Vec<u8>),
    Err(u64, ErrorCode, String),
}

pub fn send(s: &mut TcpStream, id: u64, timeout_ms: u32, f: &str, input: &[u8]) {
    let mut buf = Vec::new();
    invoke::encode_invoke(&mut buf, id, timeout_ms, f, input);
    s.write_all(&buf).unwrap();
}

pub fn recv(s: &mut TcpStream) -> Option<Reply> {
    let mut prefix = [0u8; 4];
    if s.read_exact(&mut prefix).is_err() {
        return None;
    }
    let mut body = vec![0u8; invoke::body_len(prefix)];
    s.read_exact(&mut body).unwrap();
    Some(match invoke::decode(&body).unwrap() {
        Frame::Result { id, output } => Reply::Ok(id, output.to_vec()),
        Frame::Error { id, code, message } => Reply::Err(id, code, message.to_owned()),
        f => panic!("unexpected frame {f:?}"),
    })
}

pub fn call(e: &Executor, f: &str, input: &[u8], timeout_ms: u32) -> Reply {
    let mut s = e.connect();
    send(&mut s, 1, timeout_ms, f, input);
    recv(&mut s).expect("a reply, never silence")
}
