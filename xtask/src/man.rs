//! The `harvest` CLI's man pages and shell completions, made from its clap `Command` (the one
//! `harvest` parses its arguments with), so that they say what the binary does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The CLI's command, named as installed.
pub fn command() -> clap::Command {
    harvest_client::cli::Args::command().name("harvest")
}

/// Writes `harvest.1` and one page per subcommand (`harvest-lease-acquire.1`, ...) into `dir`;
/// returns the files written.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    write_pages(command(), "harvest", dir, &mut written)?;
    Ok(written)
}

fn write_pages(
    cmd: clap::Command,
    name: &str,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    // A page's title is its full name (`harvest-lease-acquire`), as git's and cargo's are.
    let cmd = cmd.name(name.to_owned()).bin_name(name.replace('-', " "));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .section("1")
        .source(format!("harvest {}", env!("CARGO_PKG_VERSION")))
        .manual("harvest")
        .render(&mut page)
        .with_context(|| format!("rendering the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        write_pages(
            sub.clone(),
            &format!("{name}-{}", sub.get_name()),
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
