//! The generated files agree with the code: docs/config.md is what the generator prints, every
//! packaged configuration file reads back (uncommented) as the daemon's own defaults, and the
//! man pages and completions cover every subcommand of the CLI.

use std::path::Path;

use harvest_xtask::{config_doc, man};

#[test]
fn docs_config_md_is_what_the_configuration_structs_say() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.md");
    let committed = std::fs::read_to_string(&path).expect("docs/config.md exists");
    let generated = config_doc::reference().unwrap();
    assert!(
        committed == generated,
        "docs/config.md differs from the configuration structs; regenerate it:\n  \
         cargo run -p harvest-xtask -- config-doc > docs/config.md"
    );
}

fn file(name: &str) -> String {
    let file = config_doc::files()
        .into_iter()
        .find(|f| f.file == name)
        .unwrap();
    config_doc::commented_file(&file).unwrap()
}

#[test]
fn the_packaged_files_uncommented_are_the_daemons_defaults() {
    let agent = config_doc::uncomment_defaults(&file("harvestd.toml"));
    assert!(agent.contains("reserve_memory_mib = 1024\n"), "{agent}");
    assert!(agent.contains("[interference]\n"), "{agent}");
    let parsed = harvest_agent::config::Config::parse(&agent, Path::new("harvestd.toml")).unwrap();
    assert_eq!(parsed, harvest_agent::config::Config::default());

    let scheduler = config_doc::uncomment_defaults(&file("harvest-scheduler.toml"));
    assert!(
        scheduler.contains("[access.per_user]\nmax_leases = 100\n"),
        "{scheduler}"
    );
    let parsed: harvest_scheduler::config::Config = toml::from_str(&scheduler).unwrap();
    assert_eq!(parsed, harvest_scheduler::config::Config::default());

    let client = config_doc::uncomment_defaults(&file("client.toml"));
    let parsed: harvest_client::locate::ClientConfig = toml::from_str(&client).unwrap();
    assert_eq!(parsed, harvest_client::locate::ClientConfig::default());
}

#[test]
fn every_key_of_every_file_is_in_the_reference_and_in_its_file() {
    let reference = config_doc::reference().unwrap();
    for f in config_doc::files() {
        let text = config_doc::commented_file(&f).unwrap();
        for section in &f.sections {
            for key in config_doc::keys(section).unwrap() {
                assert!(
                    reference.contains(&format!("| `{}` |", key.name)),
                    "{}",
                    key.name
                );
                if key.table.is_none() {
                    assert!(
                        text.contains(&format!("\n#{} =", key.name)),
                        "{} in {}",
                        key.name,
                        f.file
                    );
                }
            }
        }
    }
}

#[test]
fn man_pages_and_completions_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = man::write_man_pages(dir.path()).unwrap();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "harvest.1",
        "harvest-lease.1",
        "harvest-lease-acquire.1",
        "harvest-invoke.1",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let top = std::fs::read_to_string(dir.path().join("harvest.1")).unwrap();
    assert!(
        top.starts_with(".ie") || top.contains(".TH harvest 1"),
        "{top}"
    );
    let completions = man::write_completions(dir.path()).unwrap();
    assert_eq!(completions.len(), 3);
    let bash = std::fs::read_to_string(&completions[0]).unwrap();
    for sub in man::command().get_subcommands() {
        assert!(
            bash.contains(sub.get_name()),
            "bash completion lacks {}",
            sub.get_name()
        );
    }
}

/// Every daemon has a section-8 page per (visible) subcommand, and each page lists every option
/// its command takes, in roff (`\-\-advertise`).
#[test]
fn daemon_man_pages_cover_every_option() {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for package in ["harvest-agent", "harvest-scheduler"] {
        for p in man::write_daemon_pages(package, dir.path()).unwrap() {
            names.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "harvest-executor.8",
            "harvest-scheduler.8",
            "harvestd-discover.8",
            "harvestd-run.8",
            "harvestd-status.8",
            "harvestd.8",
        ],
        "exec-lease is hidden: no page"
    );
    assert!(man::write_daemon_pages("harvest", dir.path()).is_err());
    let mut checked = 0;
    for (_, name, cmd) in man::daemons() {
        let mut cmds = vec![(name.to_owned(), cmd.clone())];
        cmds.extend(
            cmd.get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
                .map(|s| (format!("{name}-{}", s.get_name()), s.clone())),
        );
        for (page, cmd) in cmds {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.8"))).unwrap();
            assert!(text.contains(&format!(".TH {page} 8")), "{page}: {text}");
            for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
                if let Some(long) = arg.get_long() {
                    let roff = format!("\\-\\-{}", long.replace('-', "\\-"));
                    assert!(text.contains(&roff), "{page}.8 lacks --{long}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} options checked");
}
