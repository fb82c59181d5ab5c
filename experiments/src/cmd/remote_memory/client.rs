//! The memory client: runs as the ordinary user, leases a region of the node's memory and
//! either measures the transport (4 KiB round trips, pipelined 4 MiB reads and writes, beside a
//! raw TCP baseline of the same sizes over loopback) or streams reads and writes to it at an
//! offered rate until told to stop, recording when each operation completed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harvest_client::{ExecutorConnection, Lease, LeaseExt, LeaseRequest, Polling, SchedulerClient};
use harvest_core::region::MemorySpec;
use serde::{Deserialize, Serialize};

use super::report::{GB, pace_wait, percentile};
use crate::cmd::interference::ClientFiles;
use crate::cmd::interference::client::now_ms;

/// One large operation: the executor's default maximum transfer.
pub(crate) const OP_BYTES: usize = 4 << 20;
/// One small operation.
pub(crate) const SMALL_BYTES: usize = 4 << 10;

/// The hidden client the experiment runs as the ordinary user.
#[derive(Debug, clap::Args)]
pub struct MemoryClientArgs {
    #[arg(long)]
    scheduler: String,
    /// `transport` (measure and exit) or `stream` (until the stop file appears).
    #[arg(long)]
    mode: String,
    #[arg(long)]
    region_mib: u64,
    #[arg(long)]
    cpu_millis: u32,
    /// The node the lease must be on (leases elsewhere are held while asking again, then
    /// released); empty: any.
    #[arg(long, default_value = "")]
    node: String,
    /// transport: 4 KiB round trips.
    #[arg(long, default_value_t = 5000)]
    round_trips: usize,
    /// transport: seconds of pipelined reads, then as many of writes (and of raw TCP).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Operations in flight.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// stream: offered rate, GB/s (reads and writes together); 0: as fast as it goes.
    #[arg(long, default_value_t = 0.0)]
    rate_gbps: f64,
    #[command(flatten)]
    files: ClientFiles,
}

/// The transport figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TransportOut {
    pub(crate) lease: String,
    pub(crate) node: String,
    pub(crate) region_bytes: u64,
    pub(crate) read_p50_us_4k: f64,
    pub(crate) read_p99_us_4k: f64,
    pub(crate) remote_read_gbps: f64,
    pub(crate) remote_write_gbps: f64,
    pub(crate) raw_tcp_p50_us_4k: f64,
    pub(crate) raw_tcp_p99_us_4k: f64,
    pub(crate) raw_tcp_gbps: f64,
    /// Whether every byte written to the region was read back as written.
    pub(crate) verified: bool,
}

/// The streaming client's record: when each 4 MiB operation completed, its leases, its errors.
pub(crate) use crate::cmd::interference::ClientOut as StreamOut;

/// Runs the client.
pub fn run_memory_client(a: MemoryClientArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut sched = rt.block_on(crate::cluster::connect_scheduler(&a.scheduler))?;
    let spec = MemorySpec::new(a.region_mib, a.cpu_millis)?;
    let text = match a.mode.as_str() {
        "transport" => {
            let lease = rt.block_on(acquire_on(&mut sched, spec, &a.node))?;
            a.files.ready(&lease.id)?;
            let result = transport(&a, &lease);
            let _ = rt.block_on(sched.release(&lease.id));
            serde_json::to_string(&result?)?
        }
        "stream" => serde_json::to_string(&stream(&a, &rt, &mut sched, spec)?)?,
        m => bail!("--mode {m:?}: use transport or stream"),
    };
    a.files.write_out(&text)?;
    Ok(())
}

/// A memory lease on `node` (any when empty): the request names every other node the scheduler
/// knows in `avoid_nodes`, so it is placed on `node` or refused.
async fn acquire_on(sched: &mut SchedulerClient, spec: MemorySpec, node: &str) -> Result<Lease> {
    let mut req = LeaseRequest::memory(spec);
    req.lifetime = Some(Duration::from_secs(1800));
    if !node.is_empty() {
        req.avoid_nodes = sched
            .nodes()
            .await
            .context("listing the cluster's nodes")?
            .into_iter()
            .map(|n| n.view.name)
            .filter(|name| name != node)
            .collect();
    }
    let lease = sched
        .acquire(&req)
        .await
        .with_context(|| format!("acquiring a memory lease on {node}"))?;
    ensure!(
        node.is_empty() || lease.node == node,
        "the memory lease went to {}, not {node}, although every other node was avoided",
        lease.node
    );
    Ok(lease)
}

/// Bytes that differ from one offset to the next, so a misplaced piece is seen.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn transport(a: &MemoryClientArgs, lease: &Lease) -> Result<TransportOut> {
    let mut conn = lease.connect(Polling::Block)?;
    let region = conn.region_size()?;
    ensure!(
        region >= OP_BYTES as u64 * 2,
        "the region ({region} bytes) is smaller than two {OP_BYTES}-byte operations"
    );
    let ops = region / OP_BYTES as u64;
    // Fill the region (pipelined writes), so the reads touch real pages, then check a piece.
    let data = pattern(OP_BYTES, 7);
    let secs = Duration::from_secs_f64(a.seconds);
    let mut buf = Vec::new();
    let mut in_flight = 0;
    for i in 0..ops {
        if in_flight == a.depth {
            conn.wait_into(&mut buf, None)?;
            in_flight -= 1;
        }
        conn.submit_write(i * OP_BYTES as u64, &data)?;
        in_flight += 1;
    }
    for _ in 0..in_flight {
        conn.wait_into(&mut buf, None)?;
    }
    let verified = conn.read((ops - 1) * OP_BYTES as u64, OP_BYTES as u32)? == data;
    // 4 KiB reads, one at a time, sequential offsets.
    let mut lat = Vec::with_capacity(a.round_trips);
    let small_ops = region / SMALL_BYTES as u64;
    for i in 0..a.round_trips as u64 {
        let t = Instant::now();
        conn.read_into(
            (i % small_ops) * SMALL_BYTES as u64,
            SMALL_BYTES as u32,
            &mut buf,
        )?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let read_gbps = pipelined(&mut conn, ops, a.depth, secs, None)?;
    let write_gbps = pipelined(&mut conn, ops, a.depth, secs, Some(&data))?;
    let (raw_lat, raw_gbps) = raw_tcp(a.round_trips, a.depth, secs)?;
    Ok(TransportOut {
        lease: lease.id.clone(),
        node: lease.node.clone(),
        region_bytes: region,
        read_p50_us_4k: percentile(&lat, 50.0),
        read_p99_us_4k: percentile(&lat, 99.0),
        remote_read_gbps: read_gbps,
        remote_write_gbps: write_gbps,
        raw_tcp_p50_us_4k: percentile(&raw_lat, 50.0),
        raw_tcp_p99_us_4k: percentile(&raw_lat, 99.0),
        raw_tcp_gbps: raw_gbps,
        verified,
    })
}

/// 4 MiB reads (or writes of `data`) over the region in turn, `depth` in flight, for `secs`:
/// GB/s.
fn pipelined(
    conn: &mut ExecutorConnection,
    ops: u64,
    depth: usize,
    secs: Duration,
    data: Option<&[u8]>,
) -> Result<f64> {
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let (mut sent, mut done, mut i) = (0u64, 0u64, 0u64);
    while t0.elapsed() < secs {
        while sent - done < depth as u64 {
            let off = (i % ops) * OP_BYTES as u64;
            match data {
                Some(d) => conn.submit_write(off, d)?,
                None => conn.submit_read(off, OP_BYTES as u32)?,
            };
            i += 1;
            sent += 1;
        }
        conn.wait_into(&mut buf, None)?;
        done += 1;
    }
    let (elapsed, in_time) = (t0.elapsed().as_secs_f64(), done);
    while done < sent {
        conn.wait_into(&mut buf, None)?;
        done += 1;
    }
    Ok(in_time as f64 * OP_BYTES as f64 / elapsed / GB)
}

/// The raw TCP floor over loopback: a server thread that answers a 16-byte request with 4 KiB
/// (the read's shape) and acknowledges each length-prefixed message with 8 bytes; `round_trips`
/// 4 KiB round trips (µs each), then 4 MiB messages `depth` in flight for `secs` (GB/s).
fn raw_tcp(round_trips: usize, depth: usize, secs: Duration) -> Result<(Vec<f64>, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let reply = vec![0x5au8; SMALL_BYTES];
        let mut body = vec![0u8; OP_BYTES];
        let mut head = [0u8; 8];
        loop {
            if s.read_exact(&mut head).is_err() {
                return Ok(());
            }
            let len = u64::from_le_bytes(head) as usize;
            if len == 0 {
                // A small request: 8 more bytes of it, then the 4 KiB answer.
                s.read_exact(&mut head)?;
                s.write_all(&reply)?;
            } else {
                ensure!(len <= body.len(), "raw message of {len} bytes");
                s.read_exact(&mut body[..len])?;
                s.write_all(&(len as u64).to_le_bytes())?;
            }
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut answer = vec![0u8; SMALL_BYTES];
    let mut lat = Vec::with_capacity(round_trips);
    let mut req = [0u8; 16];
    for i in 0..round_trips as u64 {
        req[8..].copy_from_slice(&i.to_le_bytes());
        let t = Instant::now();
        c.write_all(&req)?;
        c.read_exact(&mut answer)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut msg = vec![0u8; 8 + OP_BYTES];
    msg[..8].copy_from_slice(&(OP_BYTES as u64).to_le_bytes());
    msg[8..].copy_from_slice(&pattern(OP_BYTES, 3));
    let mut ack = [0u8; 8];
    let t0 = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while t0.elapsed() < secs {
        while sent - done < depth as u64 {
            c.write_all(&msg)?;
            sent += 1;
        }
        c.read_exact(&mut ack)?;
        done += 1;
    }
    let (elapsed, in_time) = (t0.elapsed().as_secs_f64(), done);
    while done < sent {
        c.read_exact(&mut ack)?;
        done += 1;
    }
    drop(c);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the raw TCP server panicked"))??;
    let gbps = in_time as f64 * OP_BYTES as f64 / elapsed / GB;
    Ok((lat, gbps))
}

/// Streams 4 MiB reads and writes to a lease at the offered rate until the stop file appears;
/// a lease that ends (evicted) is replaced, as a real client would. The operations run on a
/// thread while the main one watches the stop file, so an operation stuck on a frozen executor
/// does not hold the client past it.
fn stream(
    a: &MemoryClientArgs,
    rt: &tokio::runtime::Runtime,
    sched: &mut SchedulerClient,
    spec: MemorySpec,
) -> Result<StreamOut> {
    let mut out = StreamOut::default();
    let completions = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let t0 = Instant::now();
    let max = a.files.max();
    let stopped = || a.files.stopped(t0);
    while !stopped() {
        let lease = match rt.block_on(acquire_on(sched, spec, &a.node)) {
            Ok(l) => l,
            Err(e) => {
                out.errors.push(format!("{e:#}"));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        out.leases.push(lease.id.clone());
        a.files.ready(&lease.id)?;
        let rate = (a.rate_gbps > 0.0).then_some(a.rate_gbps * GB);
        let threads: Vec<_> = {
            let (lease, completions, errors) = (lease.clone(), completions.clone(), errors.clone());
            let (stop, depth) = (a.files.stop_file.clone(), a.depth);
            let left = max - t0.elapsed().min(max);
            vec![std::thread::spawn(move || {
                let r = paced(&lease, rate, depth, &stop, left, &completions);
                if let Err(e) = r {
                    errors
                        .lock()
                        .expect("errors")
                        .push(format!("lease {}: {e:#}", lease.id));
                }
            })]
        };
        // Until told to stop, or the stream ended (the lease is gone).
        while !stopped() && !threads.iter().all(|t| t.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        // The stream answers what it has in flight and ends, unless stuck (frozen executor):
        // then releasing the lease ends it. Wait a little for it either way, not forever.
        let finished = |wait: u64| {
            let deadline = Instant::now() + Duration::from_secs(wait);
            while Instant::now() < deadline && !threads.iter().all(|t| t.is_finished()) {
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        finished(5);
        let _ = rt.block_on(sched.release(&lease.id));
        finished(5);
    }
    out.completions_unix_ms = completions.lock().expect("completions").clone();
    out.completions_unix_ms.sort_unstable();
    out.errors
        .extend(errors.lock().expect("errors").iter().cloned());
    Ok(out)
}

/// 4 MiB reads and writes over the region in turn, `depth` in flight, paced to `rate` bytes/s
/// (`None`: as fast as it goes), until `stop` exists or `max` passes. They go in batches of
/// `depth` reads then `depth` writes, a batch's operations all answered before the next batch
/// starts: a 4 MiB write sent while a 4 MiB read's answer is on its way back would wait for the
/// executor to read it while the executor waits for the client to read the answer.
fn paced(
    lease: &Lease,
    rate: Option<f64>,
    depth: usize,
    stop: &std::path::Path,
    max: Duration,
    completions: &Mutex<Vec<i64>>,
) -> Result<()> {
    let mut conn = lease.connect(Polling::Block)?;
    let ops = (conn.region_size()? / OP_BYTES as u64).max(1);
    let data = pattern(OP_BYTES, 11);
    let mut buf = Vec::new();
    // The pace's clock starts with the lease: a replaced lease does not catch up.
    let start = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while !stop.exists() && start.elapsed() < max {
        let wait = rate.map_or(Duration::ZERO, |r| {
            pace_wait(start.elapsed(), sent * OP_BYTES as u64, r)
        });
        let write = (sent / depth as u64) % 2 == 1;
        let same_batch = sent == done || (sent - 1) / depth as u64 == sent / depth as u64;
        if sent - done < depth as u64 && wait.is_zero() && same_batch {
            let off = (sent % ops) * OP_BYTES as u64;
            if write {
                conn.submit_write(off, &data)?;
            } else {
                conn.submit_read(off, OP_BYTES as u32)?;
            }
            sent += 1;
        } else if sent > done {
            conn.wait_into(&mut buf, Some(Duration::from_secs(60)))
                .context("waiting for an operation")?;
            done += 1;
            completions.lock().expect("completions").push(now_ms());
        } else {
            std::thread::sleep(wait.min(Duration::from_millis(20)));
        }
    }
    while done < sent {
        conn.wait_into(&mut buf, Some(Duration::from_secs(60)))?;
        done += 1;
        completions.lock().expect("completions").push(now_ms());
    }
    Ok(())
}
