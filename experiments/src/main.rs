//! `harvest-experiments`: benchmarks, real-cluster experiments and the trace-driven simulator,
//! one subcommand each.

use clap::Parser;

/// harvest's benchmarks and experiments.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("no experiments yet: they land with the issues that need them")
}
