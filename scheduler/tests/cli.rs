//! The `harvest` CLI's commands (`harvest_client::cli::run`) against the real scheduler and a
//! fake agent: exit codes by failure class, and `invoke` releasing its lease even when the
//! invocation fails. The client configuration names a `munge` that prints a fake credential.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use clap::Parser;
use common::{Answer, FakeAgent, Scheduler, config, eventually, view};
use harvest_client::cli::{self, Args, exit::code};

const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client configuration whose munge proves `uid` with the payload it is asked for (called as
/// `munge -u <uid> -s <payload>`).
fn client_config(dir: &Path, uid: u32) -> std::path::PathBuf {
    let munge = dir.join("munge");
    std::fs::write(
        &munge,
        format!("#!/bin/sh\n[ \"$1\" = -u ] && [ \"$3\" = -s ] || exit 9\necho \"uid:{uid}|$4\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&munge, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.join("client.toml");
    std::fs::write(
        &conf,
        format!(
            "munge = {:?}\nca = {:?}\n",
            munge.display().to_string(),
            common::pki().ca().display().to_string()
        ),
    )
    .unwrap();
    conf
}

/// Runs `harvest ARGS` in-process; returns the exit code.
async fn harvest(args: Vec<String>) -> u8 {
    tokio::task::spawn_blocking(move || {
        let args = Args::try_parse_from(std::iter::once("harvest".to_owned()).chain(args)).unwrap();
        match cli::run(args, &|_| None) {
            Ok(()) => code::OK,
            Err(e) => e.exit_code(),
        }
    })
    .await
    .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_invoke_releases_its_lease_even_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let conf = client_config(dir.path(), 1000);
    let conf = conf.to_str().unwrap();
    let lib = dir.path().join("lib.so");
    std::fs::write(&lib, b"not really a library; the fake agent never loads it").unwrap();
    let lib = lib.to_str().unwrap();

    // No scheduler anywhere: 3.
    assert_eq!(
        harvest(strings(&["--config", conf, "nodes"])).await,
        code::UNREACHABLE
    );
    let s = Scheduler::start(config(), "127.0.0.1:0").await;
    let url = s.addr.to_string();
    let base = |more: &[&str]| {
        let mut v = strings(&["--scheduler", &url, "--config", conf]);
        v.extend(strings(more));
        v
    };
    assert_eq!(harvest(base(&["nodes", "--json"])).await, code::OK);
    // Nothing to place on: 5.
    assert_eq!(
        harvest(base(&["invoke", "--lib", lib, "--fn", "reverse"])).await,
        code::NO_RESOURCES
    );

    let agent = FakeAgent::connect(s.addr, "n1", 60_000, vec![], Answer::Ready).await;
    agent.report(1, &view("n1", 2, 0)).await;
    let mut c = s.client(1000).await;
    eventually("the node", WAIT, async || {
        (!c.nodes().await.unwrap().is_empty()).then_some(())
    })
    .await;
    // The fake executor has no function "square": 13, and the lease is released anyway.
    assert_eq!(
        harvest(base(&["invoke", "--lib", lib, "--fn", "square"])).await,
        code::NO_SUCH_FUNCTION
    );
    let leases = c.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].state, "released");
    assert_eq!(
        harvest(base(&[
            "invoke", "--lib", lib, "--fn", "reverse", "--mem", "64M"
        ]))
        .await,
        code::OK
    );
    // Releasing a lease that does not exist: 6; an unreadable library or input: 1.
    assert_eq!(
        harvest(base(&["lease", "release", "nope"])).await,
        code::REFUSED
    );
    assert_eq!(
        harvest(base(&["invoke", "--lib", "/nonexistent.so", "--fn", "f"])).await,
        code::LOCAL
    );
    assert_eq!(
        harvest(base(&[
            "invoke",
            "--lib",
            lib,
            "--fn",
            "f",
            "--input",
            "/nonexistent"
        ]))
        .await,
        code::LOCAL
    );
    assert!(
        c.leases()
            .await
            .unwrap()
            .iter()
            .all(|l| l.state == "released")
    );
    s.stop().await;
}
