//! The `harvest` command line.

use clap::Parser;

/// harvest: run short functions in the idle cores, memory and GPUs of an HPC cluster's batch nodes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the harvest CLI has no commands yet: they land with the scheduler issue")
}
