//! An attacker's agent: a gRPC client of the scheduler's `AgentGateway` that registers as a node
//! and sends executor events of its choosing, run by the security system test as an unprivileged
//! user (security_control.rs).
//!
//! ```text
//! fake_agent URL NODE [--ca CA.pem] [--cert CERT.pem --key KEY.pem] [--ready LEASE UID ADDRESS]
//!            [--exited LEASE]
//! ```
//! An `http://` URL with `--ca` is spoken as TLS (as harvestd does), without it in plaintext.
//! It prints one line, `session open` (and exits 0) or `refused: <why>` (exit 2): a session
//! counts as open only when the scheduler's stream answers or stays up for the whole wait.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use harvest_proto::v1;
use harvest_proto::v1::agent_gateway_client::AgentGatewayClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// How long the session must stay up to count as accepted.
const WAIT: Duration = Duration::from_secs(3);

struct Args {
    url: String,
    node: String,
    ca: Option<String>,
    cert: Option<(String, String)>,
    ready: Option<(String, u32, String)>,
    exited: Option<String>,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let url = it.next().context("usage: fake_agent URL NODE [options]")?;
    let node = it.next().context("no NODE")?;
    let mut a = Args {
        url,
        node,
        ca: None,
        cert: None,
        ready: None,
        exited: None,
    };
    let mut cert = None;
    while let Some(flag) = it.next() {
        let mut next = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--ca" => a.ca = Some(next()?),
            "--cert" => cert = Some(next()?),
            "--key" => a.cert = Some((cert.take().context("--cert before --key")?, next()?)),
            "--ready" => a.ready = Some((next()?, next()?.parse()?, next()?)),
            "--exited" => a.exited = Some(next()?),
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn messages(a: &Args) -> Vec<v1::AgentMessage> {
    use v1::agent_message::Msg;
    use v1::executor_event::Event;
    let mut out = vec![Msg::Register(v1::Register {
        node: a.node.clone(),
        agent_version: "0.0.0-attacker".into(),
        executors: vec![],
        heartbeat_ms: 1000,
    })];
    if let Some((lease, uid, address)) = &a.ready {
        out.push(Msg::Executor(v1::ExecutorEvent {
            lease_id: lease.clone(),
            event: Some(Event::Ready(v1::ExecutorInfo {
                lease_id: lease.clone(),
                uid: *uid,
                cpus: vec![0],
                memory_mib: 128,
                gpus: vec![],
                address: address.clone(),
                expires_unix_ms: 0,
                ..Default::default()
            })),
            cause: v1::EndCause::Unspecified as i32,
        }));
    }
    if let Some(lease) = &a.exited {
        out.push(Msg::Executor(v1::ExecutorEvent {
            lease_id: lease.clone(),
            event: Some(Event::Exited("ended by an attacker".into())),
            cause: v1::EndCause::Released as i32,
        }));
    }
    out.into_iter()
        .map(|m| v1::AgentMessage { msg: Some(m) })
        .collect()
}

async fn session(a: &Args) -> Result<()> {
    // A list of schedulers (the local cluster's primary and standby): the first, the primary.
    let first = a.url.split(',').next().unwrap_or_default().to_owned();
    let url = match (&a.ca, first.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => first.clone(),
    };
    let mut endpoint = Endpoint::from_shared(url)?.connect_timeout(WAIT);
    if let Some(ca) = &a.ca {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca)?));
        if let Some((cert, key)) = &a.cert {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(cert).with_context(|| format!("reading {cert}"))?,
                std::fs::read(key).with_context(|| format!("reading {key}"))?,
            ));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let channel = endpoint.connect().await.context("connecting")?;
    let mut client = AgentGatewayClient::new(channel);
    // The stream stays open (the sender is held) so that the scheduler has to answer or end it.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for m in messages(a) {
        tx.send(m).await?;
    }
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .context("opening the session")?
        .into_inner();
    match tokio::time::timeout(WAIT, inbound.message()).await {
        // Up for the whole wait, or an order came: the scheduler took this agent.
        Err(_) | Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => bail!("the scheduler closed the session"),
        Ok(Err(status)) => bail!("{:?}: {}", status.code(), status.message()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse()?;
    match session(&args).await {
        Ok(()) => {
            println!("session open");
            Ok(())
        }
        Err(e) => {
            println!("refused: {e:#}");
            std::process::exit(2)
        }
    }
}
