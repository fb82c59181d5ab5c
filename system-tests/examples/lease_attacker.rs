//! The other side of a lease, for the Security II system test (security_leases.rs): what user B
//! can try against user A's lease, and what A does meanwhile. Run through `runuser` as B or A.
//!
//! ```text
//! lease_attacker guess ADDR FN                 B: a connection with a made-up secret
//! lease_attacker bare ADDR FN                  B: an INVOKE frame without any handshake
//! lease_attacker hold ADDR N SECONDS           B: opens up to N connections and holds them until
//!                                                 its stdin closes (at most SECONDS)
//! lease_attacker replay URL CA CREDENTIAL ID   B: ReleaseLease ID with a credential made for
//!                                                 another request
//! lease_attacker owner URL CA ID FN            A: GetLease (its secret), then one call, timed
//! lease_attacker stall URL CA ID               A: proves the secret, sends half a frame, waits
//! ```
//! Each prints one line `key=value ...` and exits 0 when it could run (what happened is in the
//! line; the test judges), 2 when it could not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harvest_client::identity::Munge;
use harvest_client::invoke::{ExecutorConnection, Polling};
use harvest_client::{LeaseExt, SchedulerClient};
use harvest_core::invoke::auth::LeaseSecret;
use harvest_proto::v1;

fn arg(args: &[String], i: usize, what: &str) -> Result<String> {
    args.get(i)
        .cloned()
        .with_context(|| format!("missing {what}"))
}

/// What a refusal or an answer looked like, in one word and its text.
fn outcome(r: Result<Vec<u8>, harvest_client::invoke::InvokeError>) -> String {
    match r {
        Ok(out) => format!("answered output={:?}", String::from_utf8_lossy(&out)),
        Err(e) => format!(
            "refused code={:?} error={:?}",
            e.code().map(|c| c.to_string()),
            e.to_string()
        ),
    }
}

fn guess(addr: SocketAddr, function: &str) -> Result<String> {
    let made_up = LeaseSecret::random()?;
    Ok(
        match ExecutorConnection::connect(addr, Polling::Block, &made_up) {
            Ok(mut c) => outcome(c.invoke(function, b"from B", None)),
            Err(e) => format!("refused at=connect error={:?}", e.to_string()),
        },
    )
}

/// An INVOKE straight away: the executor must not serve it.
fn bare(addr: SocketAddr, function: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut frame = Vec::new();
    harvest_core::invoke::encode_invoke(&mut frame, 1, 0, function, b"from B");
    s.write_all(&frame)?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    // Whatever came back (a CHALLENGE, an ERROR): never a RESULT (kind 2) for invocation 1.
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 5 <= got.len() {
        let len = u32::from_le_bytes(got[at..at + 4].try_into()?) as usize;
        kinds.push(got[at + 4]);
        at += 4 + len;
    }
    Ok(format!("frames={kinds:?} bytes={}", got.len()))
}

fn hold(addr: SocketAddr, n: usize, seconds: u64) -> Result<String> {
    let mut held = Vec::new();
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    println!("opened={}", held.len());
    std::io::stdout().flush()?;
    // Until the test closes our stdin: killing the `runuser` it started would leave this
    // process holding the connections into the next tests.
    let (closed, stdin_closed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while matches!(std::io::stdin().read(&mut byte), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let _ = stdin_closed.recv_timeout(Duration::from_secs(seconds));
    Ok(format!("held={}", held.len()))
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn scheduler(url: &str, ca: &str) -> Result<SchedulerClient> {
    // HARVEST_SCHEDULER may list a standby after the primary: the attack targets the first.
    let url = url.split(',').next().unwrap_or_default();
    Ok(
        SchedulerClient::connect_tls(url, Arc::new(Munge::default()), std::path::Path::new(ca))
            .await?,
    )
}

fn replay(url: &str, ca: &str, credential: &str, lease: &str) -> Result<String> {
    rt()?.block_on(async {
        let ca = harvest_proto::tls::read_ca("ca", std::path::Path::new(ca))?;
        let first = url.split(',').next().unwrap_or_default();
        let rest = first.strip_prefix("http://").unwrap_or(first);
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{rest}"))?
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca))?
            .connect()
            .await?;
        let mut rpc = v1::scheduler_client::SchedulerClient::new(channel);
        let r = rpc
            .release_lease(v1::ReleaseLeaseRequest {
                credential: Some(v1::Credential {
                    munge: credential.to_owned(),
                }),
                lease_id: lease.to_owned(),
            })
            .await;
        Ok(match r {
            Ok(_) => "released".to_owned(),
            Err(s) => format!("refused code={:?} message={:?}", s.code(), s.message()),
        })
    })
}

fn owner(url: &str, ca: &str, lease: &str, function: &str) -> Result<String> {
    let l = rt()?.block_on(async {
        scheduler(url, ca)
            .await?
            .get(lease)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let started = Instant::now();
    let r = l
        .connect(Polling::Block)
        .and_then(|mut c| c.invoke(function, b"from A", None));
    let took = started.elapsed();
    Ok(format!("took_ms={} {}", took.as_millis(), outcome(r)))
}

fn stall(url: &str, ca: &str, lease: &str) -> Result<String> {
    let l = rt()?.block_on(async {
        scheduler(url, ca)
            .await?
            .get(lease)
            .await
            .map_err(anyhow::Error::from)
    })?;
    let secret = l
        .secret
        .clone()
        .context("GetLease gave the owner no secret")?;
    let addr: SocketAddr = l.executor_address.parse()?;
    let mut s = TcpStream::connect(addr)?;
    // The handshake by hand: CHALLENGE in, AUTH out.
    let mut challenge = [0u8; harvest_core::invoke::AUTH_FRAME_BYTES];
    s.read_exact(&mut challenge)?;
    let nonce: [u8; 32] = challenge[challenge.len() - 32..].try_into()?;
    let mut auth = Vec::new();
    harvest_core::invoke::encode_auth(
        &mut auth,
        &harvest_core::invoke::auth::proof(&secret, &nonce),
    );
    s.write_all(&auth)?;
    // Half an INVOKE frame, then silence.
    let mut frame = Vec::new();
    harvest_core::invoke::encode_invoke(&mut frame, 1, 0, "echo", &[0u8; 64]);
    s.write_all(&frame[..frame.len() / 2])?;
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    Ok(format!(
        "closed_after_ms={} bytes={}",
        started.elapsed().as_millis(),
        got.len()
    ))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let run = || -> Result<String> {
        let addr = |i| -> Result<SocketAddr> { Ok(arg(&args, i, "ADDR")?.parse()?) };
        match args.first().map(String::as_str) {
            Some("guess") => guess(addr(1)?, &arg(&args, 2, "FN")?),
            Some("bare") => bare(addr(1)?, &arg(&args, 2, "FN")?),
            Some("hold") => hold(
                addr(1)?,
                arg(&args, 2, "N")?.parse()?,
                arg(&args, 3, "SECONDS")?.parse()?,
            ),
            Some("replay") => replay(
                &arg(&args, 1, "URL")?,
                &arg(&args, 2, "CA")?,
                &arg(&args, 3, "CREDENTIAL")?,
                &arg(&args, 4, "ID")?,
            ),
            Some("owner") => owner(
                &arg(&args, 1, "URL")?,
                &arg(&args, 2, "CA")?,
                &arg(&args, 3, "ID")?,
                &arg(&args, 4, "FN")?,
            ),
            Some("stall") => stall(
                &arg(&args, 1, "URL")?,
                &arg(&args, 2, "CA")?,
                &arg(&args, 3, "ID")?,
            ),
            other => bail!("unknown command {other:?}"),
        }
    };
    match run() {
        Ok(line) => println!("{line}"),
        Err(e) => {
            println!("error={:?}", format!("{e:#}"));
            std::process::exit(2);
        }
    }
}
