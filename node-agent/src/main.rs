//! The `harvestd` binary.

use clap::Parser;

/// harvestd: harvest's node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    anyhow::bail!("harvestd has no services yet: they land with the plugin and agent issue")
}
