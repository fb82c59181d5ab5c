//! The load: `clients` concurrent clients on loopback, each acquiring a lease (1 core), invoking
//! a no-op function at a bounded rate for a few seconds, releasing it and acquiring the next,
//! until told to stop. It runs as an ordinary user (its own process, started by `runuser`, as
//! harvestd refuses leases of system accounts) and records every operation's outcome: a result,
//! an explicit error with its category, a result later than its deadline, or nothing at all
//! (still in flight past its deadline when the client stopped: a silent loss).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use harvest_client::{InvokeError, LeaseError, LeaseExt, LeaseRequest, Library, Polling};
use serde::{Deserialize, Serialize};

use super::now_ms;

/// Margin past an operation's deadline before it counts as late (a hang).
pub const GRACE: Duration = Duration::from_secs(2);

/// The hidden load client (`harvest-experiments load-client`), run as the load user.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Scheduler addresses, comma-separated (failover as the CLI does).
    #[arg(long)]
    pub scheduler: String,
    /// The function library (exports `echo` and `hog`).
    #[arg(long)]
    pub lib: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Most invocations per second per client.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each lease is used before it is released and another acquired (seconds).
    #[arg(long, default_value_t = 4.0)]
    pub hold_s: f64,
    /// Each invocation's deadline (ms): its timeout, after which an answer must have come.
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u64,
    /// The most the client runs (seconds).
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    /// The client stops when this file appears.
    #[arg(long)]
    pub stop_file: PathBuf,
    /// Each time the number in this file grows, client 0 invokes `hog` once (an OOM fault).
    #[arg(long)]
    pub oom_file: Option<PathBuf>,
    /// Where the outcomes go (JSON).
    #[arg(long)]
    pub out: PathBuf,
}

/// What an operation was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    Acquire,
    Invoke,
    /// The deliberate OOM invocation (`hog`): an error is its expected answer.
    Hog,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    /// An explicit error (its category says which), within the deadline.
    Error,
    /// An answer (result or error) later than deadline + grace.
    Late,
    /// No answer at all by the time the client stopped, past deadline + grace.
    Lost,
}

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub client: usize,
    pub op: Op,
    pub start_unix_ms: i64,
    pub end_unix_ms: i64,
    pub outcome: Outcome,
    /// The error's kind (`connect`, `closed`, `remote:LeaseRevoked`, `refused:Unavailable`...).
    pub category: String,
    pub node: String,
}

/// Short kind of an invocation error.
pub fn invoke_category(e: &InvokeError) -> String {
    match e {
        InvokeError::Connect { .. } => "connect".into(),
        InvokeError::Io { .. } => "io".into(),
        InvokeError::Closed { .. } => "closed".into(),
        InvokeError::NoAnswer { .. } => "no-answer".into(),
        InvokeError::Protocol { .. } => "protocol".into(),
        InvokeError::Unauthorized { .. } => "unauthorized".into(),
        InvokeError::NoSecret { .. } => "no-secret".into(),
        InvokeError::Remote { code, .. } => format!("remote:{code:?}"),
        InvokeError::Request(_) => "request".into(),
    }
}

/// Short kind of a lease error.
pub fn lease_category(e: &LeaseError) -> String {
    match e.code() {
        Some(code) => format!("scheduler:{code:?}"),
        None => {
            let text = format!("{e:?}");
            let kind = text.split([' ', '(', '{']).next().unwrap_or("other");
            format!("lease:{kind}")
        }
    }
}

struct Shared {
    events: Mutex<Vec<Event>>,
    stop: AtomicBool,
    /// Per client: when its operation in flight started (0: none), and what it is.
    in_flight: Vec<(AtomicI64, Mutex<(Op, String)>)>,
}

impl Shared {
    fn record(&self, client: usize, op: Op, start: i64, result: Result<(), String>, node: &str) {
        let end = now_ms();
        let deadline = match op {
            Op::Acquire => harvest_client::lease::FAILOVER_TIMEOUT.as_millis() as i64 + 30_000,
            Op::Invoke | Op::Hog => 0,
        };
        let late = deadline > 0 && end - start > deadline;
        let (outcome, category) = match result {
            _ if late => (Outcome::Late, String::new()),
            Ok(()) => (Outcome::Ok, String::new()),
            Err(c) => (Outcome::Error, c),
        };
        self.events.lock().expect("events").push(Event {
            client,
            op,
            start_unix_ms: start,
            end_unix_ms: end,
            outcome,
            category,
            node: node.to_owned(),
        });
    }
}

/// Runs the clients until the stop file appears or `max_seconds` pass, then writes every
/// outcome to `out`; clients still stuck in an operation past its deadline are recorded lost.
pub fn run_client(a: ClientArgs) -> Result<()> {
    let library = Library::read(&a.lib)?;
    let shared = Arc::new(Shared {
        events: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        in_flight: (0..a.clients)
            .map(|_| (AtomicI64::new(0), Mutex::new((Op::Invoke, String::new()))))
            .collect(),
    });
    let threads: Vec<_> = (0..a.clients)
        .map(|i| {
            let (a, shared, library) = (a.clone(), shared.clone(), library.clone());
            std::thread::spawn(move || {
                if let Err(e) = client_loop(i, &a, &shared, library) {
                    eprintln!("load client {i}: {e:#}");
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while !a.stop_file.exists() && t0.elapsed() < Duration::from_secs(a.max_seconds) {
        std::thread::sleep(Duration::from_millis(50));
    }
    shared.stop.store(true, Ordering::Relaxed);
    // Every operation has a deadline: wait that long (plus grace) for the clients to finish.
    let wait =
        Duration::from_millis(a.deadline_ms) + GRACE + harvest_client::lease::FAILOVER_TIMEOUT;
    let until = Instant::now() + wait;
    while threads.iter().any(|t| !t.is_finished()) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let now = now_ms();
    for (i, (since, what)) in shared.in_flight.iter().enumerate() {
        let since = since.load(Ordering::Relaxed);
        if since != 0 {
            let (op, node) = what.lock().expect("in flight").clone();
            shared.events.lock().expect("events").push(Event {
                client: i,
                op,
                start_unix_ms: since,
                end_unix_ms: now,
                outcome: Outcome::Lost,
                category: "no answer by the end".into(),
                node,
            });
        }
    }
    let events = std::mem::take(&mut *shared.events.lock().expect("events"));
    crate::cmd::interference::write_whole(&a.out, serde_json::to_string(&events)?.as_bytes())?;
    // Threads stuck in a call are abandoned: the process exits.
    std::process::exit(0)
}

fn oom_generation(file: Option<&PathBuf>) -> u64 {
    file.and_then(|f| std::fs::read_to_string(f).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

fn client_loop(i: usize, a: &ClientArgs, shared: &Shared, library: Library) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connect = || rt.block_on(crate::cluster::connect_scheduler(&a.scheduler));
    let mut sched = None;
    let mut oom_seen = oom_generation(a.oom_file.as_ref());
    let gap = Duration::from_secs_f64(1.0 / a.rate.max(0.1));
    let deadline = Duration::from_millis(a.deadline_ms);
    let (since, what) = &shared.in_flight[i];
    let begin = |op: Op, node: &str| {
        *what.lock().expect("in flight") = (op, node.to_owned());
        let t = now_ms();
        since.store(t, Ordering::Relaxed);
        t
    };
    while !shared.stop.load(Ordering::Relaxed) {
        let start = begin(Op::Acquire, "");
        if sched.is_none() {
            match connect() {
                Ok(s) => sched = Some(s),
                Err(e) => {
                    since.store(0, Ordering::Relaxed);
                    shared.record(i, Op::Acquire, start, Err(lease_category(&e)), "");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        let s = sched.as_mut().expect("connected");
        let mut req = LeaseRequest::new(1, library.clone());
        req.memory_mib = 64;
        req.lifetime = Some(Duration::from_secs(120));
        req.default_timeout = Some(deadline);
        let lease = rt.block_on(s.acquire(&req));
        since.store(0, Ordering::Relaxed);
        let lease = match lease {
            Ok(l) => {
                shared.record(i, Op::Acquire, start, Ok(()), &l.node);
                l
            }
            Err(e) => {
                shared.record(i, Op::Acquire, start, Err(lease_category(&e)), "");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        let node = lease.node.clone();
        let held = Instant::now();
        let mut conn = match lease.connect(Polling::Block) {
            Ok(c) => Some(c),
            Err(e) => {
                let t = now_ms();
                shared.record(i, Op::Invoke, t, Err(invoke_category(&e)), &node);
                None
            }
        };
        let mut buf = Vec::new();
        while let Some(c) = conn.as_mut() {
            if shared.stop.load(Ordering::Relaxed) || held.elapsed().as_secs_f64() >= a.hold_s {
                break;
            }
            let oom_now = if i == 0 {
                oom_generation(a.oom_file.as_ref())
            } else {
                0
            };
            let (op, function) = if oom_now > oom_seen {
                oom_seen = oom_now;
                (Op::Hog, "hog")
            } else {
                (Op::Invoke, "echo")
            };
            let started = Instant::now();
            let start = begin(op, &node);
            let r = c.invoke_into(function, b"ping", Some(deadline), &mut buf);
            since.store(0, Ordering::Relaxed);
            let late = started.elapsed() > deadline + GRACE;
            match r {
                Ok(()) if !late => shared.record(i, op, start, Ok(()), &node),
                Err(e) if !late => {
                    shared.record(i, op, start, Err(invoke_category(&e)), &node);
                    // The lease may be gone (revoked, executor killed): take another.
                    conn = None;
                }
                _ => {
                    let mut ev = Event {
                        client: i,
                        op,
                        start_unix_ms: start,
                        end_unix_ms: now_ms(),
                        outcome: Outcome::Late,
                        category: r.err().map(|e| invoke_category(&e)).unwrap_or_default(),
                        node: node.clone(),
                    };
                    ev.category = format!("late {}", ev.category).trim().to_owned();
                    shared.events.lock().expect("events").push(ev);
                }
            }
            if let Some(rest) = gap.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        let _ = rt.block_on(s.release(&lease.id));
    }
    Ok(())
}

/// C source of the load's function library: `echo` returns its input; `hog` allocates and
/// touches 1 GiB, far beyond any lease of the load (64 MiB), so its lease's memory limit kills it.
pub const LOAD_C: &str = r#"#include <stdint.h>
#include <stdlib.h>
#include <string.h>
uint32_t echo(void *in, uint32_t len, void *out) { memcpy(out, in, len); return len; }
uint32_t hog(void *in, uint32_t len, void *out) {
    (void)in; (void)len; (void)out;
    size_t n = (size_t)1 << 30;
    volatile char *p = malloc(n);
    if (!p) return 0;
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
    return 0;
}
"#;
