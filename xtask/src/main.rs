//! `harvest-xtask`: writes the files generated from harvest's code (see the library's header).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use harvest_xtask::{config_doc, man};

/// Generates harvest's configuration reference, commented configuration files, man pages and
/// shell completions from the code. scripts/package runs it; so can a developer:
///
///   cargo run -p harvest-xtask -- config-doc > docs/config.md
#[derive(Debug, Parser)]
#[command(about, long_about, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the configuration reference (docs/config.md) to stdout.
    ConfigDoc {
        /// Print nothing; fail (exit 1) when FILE differs from what would be printed.
        #[arg(long, value_name = "FILE")]
        check: Option<PathBuf>,
    },
    /// Write harvestd.toml, harvest-scheduler.toml and client.toml, every key commented out at
    /// its default, into DIR (the packages' /etc/harvest).
    ConfigFiles { dir: PathBuf },
    /// Write the harvest CLI's man pages (harvest.1, harvest-lease-acquire.1, ...) into DIR, or
    /// with --package those of the package's daemons (section 8: harvestd.8, harvestd-run.8,
    /// harvest-executor.8 for harvest-agent; harvest-scheduler.8 for harvest-scheduler).
    Man {
        dir: PathBuf,
        /// harvest-agent or harvest-scheduler: that package's daemons' pages.
        #[arg(long)]
        package: Option<String>,
    },
    /// Write the harvest CLI's bash, zsh and fish completions below PREFIX (e.g. ROOT/usr).
    Completions { prefix: PathBuf },
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::ConfigDoc { check: None } => print!("{}", config_doc::reference()?),
        Command::ConfigDoc { check: Some(file) } => {
            let have = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if have != config_doc::reference()? {
                bail!(
                    "{} is not what the configuration structs say; regenerate it with \
                     `cargo run -p harvest-xtask -- config-doc > {}`",
                    file.display(),
                    file.display()
                );
            }
        }
        Command::ConfigFiles { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for file in config_doc::files() {
                let path = dir.join(file.file);
                std::fs::write(&path, config_doc::commented_file(&file)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Man { dir, package: None } => {
            man::write_man_pages(&dir)?;
        }
        Command::Man {
            dir,
            package: Some(package),
        } => {
            man::write_daemon_pages(&package, &dir)?;
        }
        Command::Completions { prefix } => {
            man::write_completions(&prefix)?;
        }
    }
    Ok(())
}
