//! The man pages of `harvest` (section 1) and of the daemons `harvestd`, `harvest-scheduler`
//! and `harvest-executor` (section 8, they live in /usr/sbin), and the CLI's shell completions,
//! made from each binary's clap `Command` (the one it parses its arguments with), so that they
//! say what the binary does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The CLI's command, named as installed.
pub fn command() -> clap::Command {
    harvest_client::cli::Args::command().name("harvest")
}

// `harvest-executor`'s command line as its binary (executor/src/main.rs) parses it: the
// executor library's arguments ([`harvest_executor::cli::Args`]) and the binary's own
// `--log-format`, with its about text. The one part written twice; `scripts/test-install` checks
// every option the installed binary's `--help` lists against the installed page. Its about text
// is its crate's description, as the binary's `#[command(about)]` makes it.
#[derive(Debug, clap::Parser)]
#[command(name = "harvest-executor", version, about = executor_description())]
struct ExecutorCli {
    /// Log format on stderr: text or json [default: text]. The level comes from RUST_LOG
    /// (default info).
    #[arg(long, env = harvest_logging::FORMAT_ENV)]
    log_format: Option<harvest_logging::Format>,
    #[command(flatten)]
    args: harvest_executor::cli::Args,
}

/// harvest-executor's crate description (executor/Cargo.toml's `description`).
fn executor_description() -> &'static str {
    include_str!("../../executor/Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("description = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or("harvest-executor")
}

/// The daemons, by package: each one's name as installed and its command.
pub fn daemons() -> Vec<(&'static str, &'static str, clap::Command)> {
    vec![
        (
            "harvest-agent",
            "harvestd",
            harvest_agent::cli::Args::command().name("harvestd"),
        ),
        (
            "harvest-agent",
            "harvest-executor",
            ExecutorCli::command().name("harvest-executor"),
        ),
        (
            "harvest-scheduler",
            "harvest-scheduler",
            harvest_scheduler::cli::Args::command().name("harvest-scheduler"),
        ),
    ]
}

/// Writes `harvest.1` and one page per subcommand (`harvest-lease-acquire.1`, ...) into `dir`;
/// returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(command(), "harvest", "harvest", "1", dir, &mut written)?;
    Ok(written)
}

/// Writes the section-8 pages of `package`'s daemons (`harvestd.8`, `harvestd-run.8`, ...;
/// `harvest-executor.8`; `harvest-scheduler.8`) into `dir`; returns the files written.
pub fn write_daemon_pages(package: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let daemons: Vec<_> = daemons()
        .into_iter()
        .filter(|(p, _, _)| *p == package)
        .collect();
    if daemons.is_empty() {
        anyhow::bail!("no daemon is packaged in {package:?} (harvest-agent, harvest-scheduler)");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (_, name, cmd) in daemons {
        write_pages(cmd, name, name, "8", dir, &mut written)?;
    }
    Ok(written)
}

/// Writes page `name` (`harvest-lease-acquire`) of `cmd`, run as `bin_name` (`harvest lease
/// acquire`), and its subcommands' pages.
fn write_pages(
    cmd: clap::Command,
    name: &str,
    bin_name: &str,
    section: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    // A page's title is its full name (`harvest-lease-acquire`), as git's and cargo's are.
    let mut cmd = cmd.name(name.to_owned()).bin_name(bin_name.to_owned());
    // Built, so that global options (`harvestd --log-format`) reach the subcommands' pages too,
    // as they reach the subcommands' --help.
    cmd.build();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section(section.to_owned())
        .source(format!("harvest {}", env!("CARGO_PKG_VERSION")))
        .manual("harvest")
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.{section}"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(
            sub.clone(),
            &format!("{name}-{}", sub.get_name()),
            &format!("{bin_name} {}", sub.get_name()),
            section,
            dir,
            written,
        )?;
    }
    Ok(())
}

/// Where each shell's completion file goes below a prefix (Debian's vendor locations).
pub const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "share/bash-completion/completions/harvest"),
    (Shell::Zsh, "share/zsh/vendor-completions/_harvest"),
    (Shell::Fish, "share/fish/vendor_completions.d/harvest.fish"),
];

/// Writes the bash, zsh and fish completions below `prefix` (e.g. `<root>/usr`).
pub fn write_completions(prefix: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (shell, rel) in COMPLETIONS {
        let path = prefix.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut command(), "harvest", &mut text);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
