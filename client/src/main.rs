//! The `harvest` command line: parses arguments, runs the command, maps failures to exit codes
//! (docs/cli.md lists them).

use std::process::ExitCode;

use clap::Parser;
use harvest_client::cli::{self, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    match cli::run(args, &|name| std::env::var(name).ok()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harvest: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
