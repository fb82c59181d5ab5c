//! The `harvest-scheduler` binary: parses arguments, installs logging, runs the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use harvest_scheduler::config::Config;

/// harvest's cluster scheduler: leases idle cores, memory and GPUs on Slurm nodes to functions.
///
/// Serves the `Scheduler` service (clients: `harvest nodes`, `harvest lease acquire`, ...) and
/// the `AgentGateway` service (one harvestd per node) on one address. Clients authenticate with
/// munge credentials, so munged must run on this host with the cluster's key.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); every key is described in docs/scheduler.md.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to serve on (overrides the file's `listen`; default 127.0.0.1:6820).
    #[arg(long)]
    listen: Option<String>,
    /// Placement policy (overrides the file's `policy`): first-fit, best-fit, spread, ...
    #[arg(long)]
    policy: Option<String>,
    /// Serve the dashboard (/), its JSON (/api/cluster) and Prometheus metrics (/metrics) over
    /// HTTP on this address, e.g. 127.0.0.1:6821 (overrides the file's `http_listen`).
    #[arg(long)]
    http: Option<String>,
    /// Serve plaintext gRPC without certificates (sets the file's `insecure_plaintext`):
    /// anyone who reaches the port can act as any agent. For tests on a trusted host only.
    #[arg(long)]
    insecure_plaintext: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let mut config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(policy) = args.policy {
        config.policy = policy;
    }
    if let Some(http) = args.http {
        config.http_listen = Some(http);
    }
    config.insecure_plaintext |= args.insecure_plaintext;
    config.validate().context("invalid configuration")?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    harvest_scheduler::run(config, shutdown).await?;
    Ok(())
}
