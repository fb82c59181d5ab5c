//! The Rust client's side of `python/bench/latency.py`: acquires a lease for the same request as
//! the Python side (through the same code, the extension crate's `session` module), then times sequential
//! invocations over one `harvest_client::ExecutorConnection` (what `harvest invoke` and the
//! latency experiment use), and prints one JSON line of round trips in nanoseconds.
//!
//! rust_baseline LIB FUNCTION PAYLOAD_BYTES WARMUP COUNT

use std::time::{Duration, Instant};

use _native::session::{Options, Session};
use harvest_client::{LeaseExt, LeaseRequest, Library, Polling};

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let [_, lib, function, size, warmup, count] = args.as_slice() else {
        return Err("usage: rust_baseline LIB FUNCTION PAYLOAD_BYTES WARMUP COUNT".into());
    };
    let number = |s: &str, what: &str| -> Result<usize, String> {
        s.parse()
            .map_err(|e| format!("{what} must be a whole number, not {s:?}: {e}"))
    };
    let (size, warmup, count) = (
        number(size, "PAYLOAD_BYTES")?,
        number(warmup, "WARMUP")?,
        number(count, "COUNT")?,
    );
    let library = Library::read(std::path::Path::new(lib)).map_err(|e| e.to_string())?;
    let mut request = LeaseRequest::new(1, library);
    request.memory_mib = 128;
    request.lifetime = Some(Duration::from_secs(300));
    let session = Session::open(Options {
        request,
        scheduler: None,
        failover: false,
        failover_deadline: Duration::from_secs(30),
        connections: 1,
        pipeline_depth: 1,
        polling: Polling::Block,
    })
    .map_err(|e| e.to_string())?;
    let mut conn = session
        .lease()
        .connect(Polling::Block)
        .map_err(|e| e.to_string())?;
    let input = vec![7u8; size];
    let mut rtt_ns = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let t = Instant::now();
        let out = conn
            .invoke(function, &input, None)
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        if out.len() != size {
            return Err(format!(
                "{function} answered {} bytes for {size}",
                out.len()
            ));
        }
        if i >= warmup {
            rtt_ns.push(took.as_nanos().to_string());
        }
    }
    drop(conn);
    session.release().map_err(|e| e.to_string())?;
    println!("{{\"rtt_ns\": [{}]}}", rtt_ns.join(","));
    Ok(())
}
