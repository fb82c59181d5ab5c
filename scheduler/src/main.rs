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
    /// Address to serve on (overrides the file's `listen`; default 0.0.0.0:6820, every
    /// interface).
    #[arg(long)]
    listen: Option<String>,
    /// host:port agents and clients reach this scheduler at (overrides the file's `advertise`;
    /// default: the listen address if a specific one, else this host's name's address). Must be
    /// an address of this host, or a name resolving to one.
    #[arg(long)]
    advertise: Option<String>,
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
    /// Log format: text or json [default: the file's log_format, else text]. The level comes
    /// from RUST_LOG, else the file's log_level, else info; SIGHUP re-reads log_level.
    #[arg(long, env = harvest_logging::FORMAT_ENV)]
    log_format: Option<harvest_logging::Format>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::default(),
    };
    let env = |k: &str| std::env::var(k).ok();
    let start_level = harvest_logging::start_level(&env, config.log_level.as_deref());
    let logging = harvest_logging::init(
        harvest_logging::pick_format(args.log_format, config.log_format),
        &start_level,
    )?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(advertise) = args.advertise {
        config.advertise = Some(advertise);
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
    // SIGHUP re-reads log_level from the file (without one: back to the start level).
    let file = args.config.clone();
    let read_level = move || match &file {
        Some(path) => Config::read(path)
            .map(|c| c.log_level)
            .map_err(|e| e.to_string()),
        None => Ok(Some(start_level.clone())),
    };
    tokio::select! {
        r = harvest_scheduler::run(config, shutdown) => r?,
        () = harvest_logging::reload_on_sighup(logging, read_level) => {}
    }
    Ok(())
}
