//! The `harvest-executor` binary. `harvestd` starts it for a lease, in the lease's cgroup, as the
//! lease's user; it can also be run by hand to try a function library.

use clap::Parser;

/// Runs C-ABI functions (`uint32_t fn(void *in, uint32_t in_len, void *out)`) from a shared
/// library and serves invocations from clients over TCP, one worker process per connection.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    args: harvest_executor::cli::Args,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    harvest_executor::cli::run(cli.args)
}
