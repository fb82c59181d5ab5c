//! A lease is its owner's alone (issue 15), on the real local cluster with two unprivileged
//! users: A (`harvest-victim`) holds a lease whose function `count` appends a byte to a file of
//! A's; B (`harvest-user`) tries everything it can reach.
//!
//! - B's `harvest invoke --lease <A's lease>` and `harvest leases --json` show B nothing of A's
//!   lease (no address, no log); B gets only totals.
//! - B connects to A's executor (ports are visible to every user on a node) with a made-up
//!   secret, or sends an INVOKE with no handshake: refused, and A's counter does not move.
//! - B holds as many connections to A's executor as it can open; A's own call (GetLease, then
//!   connect and invoke) still answers within 1 s.
//! - A's own connection that stalls in the middle of a frame is closed within the executor's
//!   frame timeout (5 s), and the next call is served.
//! - A credential A made for GetLease of its lease, captured by B, fails for ReleaseLease of it.
//! - A user of the capped group (gid 2900: deploy/local-cluster caps it at one live lease) gets
//!   a clear refusal for a second lease.
//!
//! Needs `deploy/local-cluster up --nodes 2` (TLS on), the workspace's debug build with the
//! `lease_attacker` example (`cargo test -p harvest-system-tests` builds it), `cc`, root, munged.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, ensure};
use harvest_system_tests::LocalCluster;
use harvest_system_tests::fixtures::{
    CAPPED_USER, Cli, Scratch, TEST_USER, capped_user, regular_user, scheduler_url, target_bin,
    test_user,
};

/// The lease's owner.
const OWNER: &str = "harvest-victim";
/// The attacker.
const OTHER: &str = TEST_USER;

const COUNT_C: &str = r#"
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
uint32_t count(void *in, uint32_t len, void *out) {
    (void)in; (void)len;
    int fd = open(COUNTER, O_WRONLY | O_APPEND | O_CREAT, 0600);
    if (fd >= 0) { (void)!write(fd, "x", 1); close(fd); }
    memcpy(out, "counted", 7);
    return 7;
}
"#;

struct Rig {
    _cluster: LocalCluster,
    cli: Cli,
    scratch: Scratch,
    attacker: PathBuf,
    lib: String,
    counter: PathBuf,
}

impl Rig {
    fn new() -> Result<Self> {
        let cluster = LocalCluster::from_env()?;
        test_user()?;
        let (owner_uid, owner_gid) = regular_user(OWNER)?;
        let scratch = Scratch::new("harvest-security-leases")?;
        let dir = scratch.0.clone();
        let cli = Cli::install(&dir, scheduler_url(&cluster)?, &cluster)?;
        // A's counter lives in a directory only A may write.
        let own = dir.join("owner");
        std::fs::create_dir(&own)?;
        std::os::unix::fs::chown(&own, Some(owner_uid), Some(owner_gid))?;
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755))?;
        let counter = own.join("counter");
        let src = dir.join("count.c");
        let lib = dir.join("libcount.so");
        std::fs::write(&src, COUNT_C)?;
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1"])
            .arg(format!("-DCOUNTER=\"{}\"", counter.display()))
            .arg("-o")
            .arg(&lib)
            .arg(&src)
            .output()
            .context("running cc")?;
        ensure!(
            out.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644))?;
        let built = target_bin("harvest")?
            .parent()
            .context("no target dir")?
            .join("examples/lease_attacker");
        ensure!(
            built.exists(),
            "{} is missing: run `cargo test -p harvest-system-tests` (it builds the examples)",
            built.display()
        );
        let attacker = dir.join("lease_attacker");
        std::fs::copy(&built, &attacker)?;
        std::fs::set_permissions(&attacker, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            _cluster: cluster,
            cli,
            scratch,
            attacker,
            lib: lib.to_str().context("utf-8 path")?.to_owned(),
            counter,
        })
    }

    fn ca(&self) -> Result<&str> {
        self.cli
            .ca
            .as_deref()
            .context("no HARVEST_CA: is TLS on in the cluster?")
    }

    /// `lease_attacker ARGS` as `user`; its one line.
    fn attacker(&self, user: &str, args: &[&str]) -> Result<String> {
        let out = self.attacker_cmd(user, args).output()?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            out.status.success(),
            "lease_attacker {args:?} as {user} could not run: {line} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(line)
    }

    fn attacker_cmd(&self, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"])
            .arg(&self.attacker)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn count(&self) -> usize {
        std::fs::read(&self.counter).map_or(0, |b| b.len())
    }

    fn acquire(&self, user: &str) -> Result<Output> {
        self.cli.acquire(Some(user), None, &self.lib)
    }
}

fn json(out: &Output) -> Result<serde_json::Value> {
    ensure!(
        out.status.success(),
        "exit {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn another_user_can_neither_see_nor_use_a_lease() -> Result<()> {
    let rig = Rig::new()?;
    let acquired = json(&rig.acquire(OWNER)?)?;
    let id = acquired["id"].as_str().context("no id")?.to_owned();
    let result = (|| -> Result<()> {
        // The owner's call works (and counts once).
        let out = rig
            .cli
            .ok(Some(OWNER), &["invoke", "--lease", &id, "--fn", "count"])?;
        ensure!(out == "counted", "{out:?}");
        ensure!(rig.count() == 1, "counter {}", rig.count());
        // The address, as root (an operator) sees it: B could find it in /proc/net/tcp.
        let leases = rig.cli.ok(None, &["leases", "--json"])?;
        let all: serde_json::Value = serde_json::from_str(&leases)?;
        let address = all
            .as_array()
            .context("leases --json: no array")?
            .iter()
            .find(|l| l["id"] == id.as_str())
            .and_then(|l| l["executor_address"].as_str())
            .context("root does not see the lease")?
            .to_owned();

        // B through the CLI: nothing.
        let out = rig
            .cli
            .run(Some(OTHER), &["invoke", "--lease", &id, "--fn", "count"])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "B's invoke on A's lease ran");
        ensure!(err.contains("another user's"), "{err}");
        ensure!(
            !err.contains(&address),
            "B's error shows A's address: {err}"
        );
        let bs = rig.cli.ok(Some(OTHER), &["leases", "--json"])?;
        ensure!(
            !bs.contains(&id) && !bs.contains(&address),
            "B's listing shows A's lease: {bs}"
        );
        let table = rig.cli.ok(Some(OTHER), &["leases"])?;
        ensure!(table.contains("other users: 1 live lease"), "{table}");

        // B straight at the executor.
        let guess = rig.attacker(OTHER, &["guess", &address, "count"])?;
        ensure!(guess.contains("refused"), "made-up secret: {guess}");
        let bare = rig.attacker(OTHER, &["bare", &address, "count"])?;
        let frames = field(&bare, "frames").unwrap_or("");
        ensure!(
            !frames.contains('2'),
            "an INVOKE without a handshake was answered: {bare}"
        );
        ensure!(
            rig.count() == 1,
            "B's attempts ran A's function: counter {}",
            rig.count()
        );

        // B holds every connection it can open; A's call still answers within 1 s.
        let mut hold = rig
            .attacker_cmd(OTHER, &["hold", &address, "1000", "20"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut first = String::new();
        {
            use std::io::BufRead;
            let stdout = hold.stdout.as_mut().context("no stdout")?;
            std::io::BufReader::new(stdout).read_line(&mut first)?;
        }
        let owner = (|| {
            let url = rig.cli.scheduler.clone();
            rig.attacker(OWNER, &["owner", &url, rig.ca()?, &id, "count"])
        })();
        // Closing its stdin ends the holder (killing `runuser` would leave it running).
        drop(hold.stdin.take());
        let held = hold.wait_with_output()?;
        ensure!(
            String::from_utf8_lossy(&held.stdout).contains("held="),
            "the holder did not end cleanly: {held:?}"
        );
        let owner = owner?;
        eprintln!("B {} ; A: {owner}", first.trim());
        ensure!(
            owner.contains("answered"),
            "A's call failed while B held connections: {owner}"
        );
        let took: u64 = field(&owner, "took_ms").context("no took_ms")?.parse()?;
        ensure!(
            took < 1000,
            "A's call took {took} ms while B held connections"
        );
        ensure!(rig.count() == 2, "counter {}", rig.count());

        // A's own stalled frame is closed within the frame timeout; the next call is served.
        let url = rig.cli.scheduler.clone();
        let stall = rig.attacker(OWNER, &["stall", &url, rig.ca()?, &id])?;
        let after: u64 = field(&stall, "closed_after_ms")
            .context("no closed_after_ms")?
            .parse()?;
        eprintln!("stalled frame: {stall}");
        ensure!(
            after < 7000,
            "a stalled frame held its worker for {after} ms"
        );
        let out = rig
            .cli
            .ok(Some(OWNER), &["invoke", "--lease", &id, "--fn", "count"])?;
        ensure!(out == "counted", "{out:?}");

        // A credential A made for GetLease of the lease, captured by B: useless for anything
        // else (here ReleaseLease of the same lease).
        let payload = harvest_proto::binding::payload(&harvest_proto::v1::GetLeaseRequest {
            lease_id: id.clone(),
            credential: None,
        });
        let minted = Command::new("runuser")
            .args(["-u", OWNER, "--", "munge", "-u", "0", "-s", &payload])
            .output()?;
        ensure!(
            minted.status.success(),
            "munge: {}",
            String::from_utf8_lossy(&minted.stderr)
        );
        let credential = String::from_utf8(minted.stdout)?.trim().to_owned();
        let replay = rig.attacker(OTHER, &["replay", &url, rig.ca()?, &credential, &id])?;
        ensure!(
            replay.contains("Unauthenticated") && replay.contains("another request"),
            "a captured credential worked for another request: {replay}"
        );
        let still = rig
            .cli
            .ok(Some(OWNER), &["lease", "renew", &id, "--json"])?;
        ensure!(still.contains("\"active\""), "{still}");
        Ok(())
    })();
    let _ = rig.cli.run(Some(OWNER), &["lease", "release", &id]);
    drop(rig.scratch);
    result
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn a_lease_over_the_group_cap_is_refused_with_the_key_to_change() -> Result<()> {
    let rig = Rig::new()?;
    capped_user()?;
    let first = json(&rig.acquire(CAPPED_USER)?)?;
    let id = first["id"].as_str().context("no id")?.to_owned();
    let second = rig.acquire(CAPPED_USER)?;
    let _ = rig.cli.run(Some(CAPPED_USER), &["lease", "release", &id]);
    let err = String::from_utf8_lossy(&second.stderr);
    ensure!(
        !second.status.success(),
        "a second lease over the cap was granted"
    );
    ensure!(
        second.status.code() == Some(5),
        "exit {:?} (5: no resources): {err}",
        second.status.code()
    );
    ensure!(
        err.contains("[access.per_group] max_leases") && err.contains("limit of 1"),
        "{err}"
    );
    // Another user is not held by the group's cap.
    let other = json(&rig.acquire(OTHER)?)?;
    let _ = rig.cli.run(
        Some(OTHER),
        &["lease", "release", other["id"].as_str().unwrap_or_default()],
    );
    Ok(())
}
