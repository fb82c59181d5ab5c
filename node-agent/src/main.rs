//! The `harvestd` binary: parses arguments, installs logging, and calls the library.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use harvest_agent::cli::{Args, Command};
use harvest_agent::config::Config;
use harvest_agent::{discover, query, server};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Command::ExecLease {
        uid,
        gid,
        ready_pipe,
        procs,
        command,
    } = &args.command
    {
        let (program, rest) = command.split_first().expect("clap requires the command");
        let err = harvest_agent::leases::launch::exec_lease(
            *uid,
            *gid,
            procs,
            std::path::Path::new(program),
            rest,
            *ready_pipe,
        );
        eprintln!("harvestd exec-lease: {err}");
        return ExitCode::from(127);
    }
    // The configuration file is read before logging starts: it may set the level and format.
    let file = match &args.command {
        Command::Run {
            config: Some(path), ..
        } => match Config::load(path) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("harvestd: error: {e:#}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let env = |k: &str| std::env::var(k).ok();
    let level =
        harvest_logging::start_level(&env, file.as_ref().and_then(|c| c.log_level.as_deref()));
    let format =
        harvest_logging::pick_format(args.log_format, file.as_ref().and_then(|c| c.log_format));
    let logging = match harvest_logging::init(format, &level) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("harvestd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(args.command, file, logging, level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harvestd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    command: Command,
    file: Option<Config>,
    logging: harvest_logging::Logging,
    start_level: String,
) -> anyhow::Result<()> {
    match command {
        Command::Discover { json } => {
            let hw = discover::discover_real().context("hardware discovery failed")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hw)?);
            } else {
                print!("{}", discover::summary(&hw));
            }
        }
        Command::Run {
            node,
            config,
            run_dir,
            state_dir,
            cgroup_root,
            scheduler,
            insecure_plaintext,
        } => {
            let mut cfg = file.unwrap_or_default();
            cfg.node = node;
            cfg.run_dir = run_dir.unwrap_or(cfg.run_dir);
            cfg.state_dir = state_dir.unwrap_or(cfg.state_dir);
            cfg.cgroup_root = cgroup_root.unwrap_or(cfg.cgroup_root);
            cfg.scheduler = scheduler.or(cfg.scheduler);
            cfg.insecure_plaintext |= insecure_plaintext;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            // SIGHUP re-reads log_level from the file (without one: back to the start level).
            let read_level = move || match &config {
                Some(path) => Config::load(path)
                    .map(|c| c.log_level)
                    .map_err(|e| format!("{e:#}")),
                None => Ok(Some(start_level.clone())),
            };
            runtime.block_on(async {
                tokio::select! {
                    r = server::run(cfg, shutdown_signal()) => r,
                    () = harvest_logging::reload_on_sighup(logging, read_level) => Ok(()),
                }
            })?;
        }
        Command::Status {
            node,
            run_dir,
            json,
            timeout_s,
        } => {
            let view = query::status(&run_dir, &node, Duration::from_secs(timeout_s))?;
            if json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                print!("{}", query::table(&view));
            }
        }
        Command::ExecLease { .. } => unreachable!("handled before logging starts"),
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("could not install signal handlers; stop harvestd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
