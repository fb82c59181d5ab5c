//! The `harvest-executor` binary. `harvestd` starts it for a lease, in the lease's cgroup, as the
//! lease's user; it can also be run by hand to try a function library.

use clap::Parser;

/// Runs C-ABI functions (`uint32_t fn(void *in, uint32_t in_len, void *out)`) from a shared
/// library and serves invocations from clients over TCP, one worker process per connection.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr: text or json [default: text]. The level comes from RUST_LOG
    /// (default info).
    #[arg(long, env = harvest_logging::FORMAT_ENV)]
    log_format: Option<harvest_logging::Format>,
    #[command(flatten)]
    args: harvest_executor::cli::Args,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Started by harvestd with a clean environment (RUST_LOG=info): plain lines into the
    // lease's executor.log. By hand, --log-format json and RUST_LOG apply.
    let env = |k: &str| std::env::var(k).ok();
    harvest_logging::init(
        cli.log_format.unwrap_or_default(),
        &harvest_logging::start_level(&env, None),
    )?;
    harvest_executor::cli::run(cli.args)
}
