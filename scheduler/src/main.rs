//! The `harvest-scheduler` binary: parses arguments, installs logging, runs the library.

use clap::Parser;

/// harvest's cluster scheduler: leases idle cores, memory and GPUs on Slurm nodes to functions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    anyhow::bail!("harvest-scheduler has no services yet: they land with the scheduler issue")
}
