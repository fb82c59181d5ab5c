//! The `harvest-scheduler` binary: parses arguments, installs logging, runs the library.

use anyhow::Context;
use clap::Parser;
use harvest_scheduler::cli::Args;
use harvest_scheduler::config::Config;

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
