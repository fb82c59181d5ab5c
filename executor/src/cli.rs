//! The executor's command line, in the library so that other binaries (the latency benchmark)
//! can run the very same executor as a subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ExecutorConfig, HotWindow};
use anyhow::Context;

/// Runs C-ABI functions (`uint32_t fn(void *in, uint32_t in_len, void *out)`) from a shared
/// library and serves invocations from clients over TCP, one worker process per connection.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The function library (a .so exporting the functions by name).
    #[arg(long)]
    lib: PathBuf,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// After each invocation, busy-poll this long before blocking: 'always' (hot), 'warm' (block
    /// at once), or a duration such as 100us or 5ms.
    #[arg(long, default_value = "1ms", value_parser = HotWindow::parse)]
    hot: HotWindow,
    /// Timeout of an invocation that asks for none, e.g. 500ms or 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Size of each worker's output buffer (Slurm notation: 64K, 1M, 16M).
    #[arg(long, default_value = "1M", value_parser = parse_bytes)]
    max_output: usize,
    /// Largest accepted input.
    #[arg(long, default_value = "64M", value_parser = parse_bytes)]
    max_input: usize,
    /// Most connections served at once (each is a worker process).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// The lease cgroup's OOM counter file (v1 memory.oom_control, v2 memory.events), to report
    /// OOM kills as such.
    #[arg(long)]
    oom_events: Option<PathBuf>,
    /// Write the bound address to this file (atomically) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write the bound address and a newline to this inherited pipe once listening, then close
    /// it (how harvestd learns the address: nothing in the lease directory is read by name).
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// Write the time of the latest invocation (Unix ms) here, at most once a second (the
    /// node agent reads it to end idle leases).
    #[arg(long)]
    activity_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    harvest_core::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    if let Some(k) = t.strip_suffix(['K', 'k']) {
        return k
            .parse::<usize>()
            .map(|k| k * 1024)
            .map_err(|_| format!("invalid size {s:?}"));
    }
    harvest_core::parse_memory_mib(t)
        .map(|mib| mib as usize * 1024 * 1024)
        .map_err(|e| e.to_string())
}

/// Runs the executor until SIGTERM/SIGINT. The caller installs the tracing subscriber.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg = ExecutorConfig::new(args.lib);
    cfg.listen = args.listen;
    cfg.hot_window = args.hot;
    cfg.default_timeout = args.timeout;
    cfg.max_output_bytes = args.max_output;
    cfg.max_input_bytes = args.max_input;
    cfg.max_connections = args.max_connections;
    cfg.oom_events = args.oom_events;
    cfg.activity_file = args.activity_file;
    let ready_file = args.ready_file;
    let mut ready_pipe = args.ready_fd.map(crate::ready::take_fd).transpose()?;
    crate::supervisor::run(&cfg, |addr| {
        println!("listening on {addr}");
        if let Some(pipe) = ready_pipe.take()
            && let Err(e) = crate::ready::send(pipe, addr)
        {
            // Whoever waits for the address would wait until its timeout: fail now, loudly.
            tracing::error!("cannot write the address to the ready fd: {e}");
            std::process::exit(1);
        }
        if let Some(path) = &ready_file {
            let tmp = path.with_extension("tmp");
            let r = std::fs::write(&tmp, format!("{addr}\n"))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = r {
                // Whoever waits for the file would wait forever: fail now, loudly.
                tracing::error!("cannot write the ready file {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    })
    .context("harvest-executor failed")
}
