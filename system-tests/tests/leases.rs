//! The acceptance test of leases: with a batch job on n1, `harvest invoke` of a function in a
//! library built here from C runs in a harvest-executor on CPUs the job does not hold, in its
//! own cgroup, as the user who invoked it; a crash, a memory hog and a spinning function each give
//! a clear error and their own exit code, and the next invocation works.
//!
//! Needs `deploy/local-cluster up --nodes 2` with harvestd and harvest-scheduler running
//! (`deploy/local-cluster env` exports HARVEST_SCHEDULER), a built `harvest` CLI (`cargo build
//! -p harvest-client`; scripts/test-all builds the workspace first), `cc`, root, and munged. It
//! creates the regular user `harvest-user` when it is missing and runs the CLI as that user with
//! `runuser`; munge says who the user is.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harvest_core::CpuSet;
use harvest_system_tests::fixtures::{
    Cli, Scratch, TEST_USER as USER, build_library, field, scheduler_url, test_user,
};
use harvest_system_tests::{LocalCluster, poll};

/// Slurm commands with the cluster's SLURM_CONF and this process's PATH (the cluster's `PATH`
/// export is a shell expression, not a value to pass on).
struct Slurm {
    conf: String,
}

impl Slurm {
    fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(program)
            .env("SLURM_CONF", &self.conf)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(
            out.status.success(),
            "`{program} {}` exited with {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Submits a job and waits until it runs; it is cancelled when the guard drops.
    fn running_job(&self, args: &[&str]) -> Result<SlurmJob<'_>> {
        let mut full = vec!["--parsable", "--output=/dev/null"];
        full.extend_from_slice(args);
        let out = self.run("sbatch", &full)?;
        let id: u32 = out.trim().split(';').next().unwrap_or_default().parse()?;
        let job = SlurmJob { slurm: self, id };
        let running = poll(Duration::from_secs(30), || {
            let state = self.run("squeue", &["-h", "-j", &id.to_string(), "-o", "%T"])?;
            Ok((state.trim() == "RUNNING").then_some(()))
        })?;
        ensure!(running.is_some(), "job {id} did not start within 30 s");
        Ok(job)
    }
}

struct SlurmJob<'a> {
    slurm: &'a Slurm,
    id: u32,
}

impl Drop for SlurmJob<'_> {
    fn drop(&mut self) {
        let _ = self.slurm.run("scancel", &[&self.id.to_string()]);
    }
}

/// The cpuset hierarchy's path in /proc/self/cgroup lines (`N:cpuset:/path`).
fn cpuset_path(cgroups: &str) -> Option<&str> {
    cgroups.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        ctrl.split(',').any(|c| c == "cpuset").then_some(path)
    })
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn invoke_runs_in_the_idle_slot_as_the_user_and_failures_are_clear() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let scheduler = scheduler_url(&cluster)?;
    let scratch = Scratch::new("harvest-leases-test")?;
    let cli = Cli::install(&scratch.0, scheduler, &cluster)?;
    let lib = build_library(&scratch.0)?;
    let lib = lib.to_str().context("utf-8 path")?;
    let (uid, _) = test_user()?;

    // A job on n1 holding one CPU, and one filling n2, so the lease can only go to n1's idle CPU.
    let slurm = Slurm {
        conf: cluster
            .var("SLURM_CONF")
            .context("no SLURM_CONF")?
            .to_owned(),
    };
    let job = slurm.running_job(&["-w", "n1", "-c1", "--wrap", "sleep 120"])?;
    let filler = slurm.running_job(&["-w", "n2", "--exclusive", "--wrap", "sleep 120"])?;
    let job_cpus: CpuSet = std::fs::read_to_string(
        cluster
            .job_cgroup("cpuset", "n1", job.id)?
            .join("cpuset.cpus"),
    )?
    .trim()
    .parse()?;
    let seen = poll(Duration::from_secs(20), || {
        let nodes = cli.nodes()?;
        let n1 = nodes.iter().find(|n| n.0 == "n1");
        let n2 = nodes.iter().find(|n| n.0 == "n2");
        Ok(match (n1, n2) {
            (Some(n1), Some(n2))
                if n1.1 == "up" && n1.3 == job_cpus && !n1.2.is_empty() && n2.2.is_empty() =>
            {
                Some(())
            }
            _ => None,
        })
    })?;
    ensure!(
        seen.is_some(),
        "the scheduler never showed n1 with job {}'s CPUs {job_cpus} as batch and n2 full: {:?}",
        job.id,
        cli.nodes()?
    );

    let whereami = [
        "invoke", "--lib", lib, "--fn", "whereami", "--cores", "1", "--mem", "128M",
    ];
    // Root: harvestd runs root's executors only with allow_root_executors; without it the lease
    // must fail with the agent's reason and exit code 6 (the scheduler refused).
    let as_root = cli.run(None, &whereami)?;
    let mut users = vec![(Some(USER), uid)];
    if as_root.status.success() {
        users.insert(0, (None, 0));
    } else {
        let stderr = String::from_utf8_lossy(&as_root.stderr);
        ensure!(
            as_root.status.code() == Some(6) && stderr.contains("allow_root_executors"),
            "harvest invoke as root exited with {:?}: {stderr}",
            as_root.status.code()
        );
    }
    for (user, want_uid) in users {
        // Earlier tests may have left this user's ended leases in the scheduler's listing (the
        // book keeps ended leases a while, across failovers): look only at the ones this call made.
        let name = user.unwrap_or("root");
        let before: Vec<String> = cli.leases_of(name)?.into_iter().map(|l| l.0).collect();
        let out = cli.ok(user, &whereami)?;
        let exe = field(&out, "exe")?;
        ensure!(
            Path::new(exe)
                .file_name()
                .is_some_and(|n| n == "harvest-executor"),
            "the function runs in {exe}, not a harvest-executor"
        );
        let cpus: CpuSet = field(&out, "cpus")?.parse()?;
        ensure!(
            !cpus.is_empty() && cpus.iter().all(|c| !job_cpus.contains(c)),
            "the function may run on CPUs {cpus}, which meet job {}'s {job_cpus}",
            job.id
        );
        ensure!(
            field(&out, "uid")? == want_uid.to_string(),
            "the function runs as uid {}, not {want_uid}",
            field(&out, "uid")?
        );
        let cg = cpuset_path(&out).with_context(|| format!("no cpuset cgroup in {out:?}"))?;
        ensure!(
            !cg.contains(&format!("job_{}", job.id)) && cg != "/",
            "the function's cpuset cgroup {cg} is not a lease cgroup of its own"
        );
        // The lease was released after the call.
        let leases: Vec<_> = cli
            .leases_of(name)?
            .into_iter()
            .filter(|l| !before.contains(&l.0))
            .collect();
        ensure!(
            !leases.is_empty() && leases.iter().all(|l| l.3 != "active" && l.3 != "pending"),
            "{name}'s leases after invoke: {leases:?}"
        );
        ensure!(
            leases.iter().all(|l| l.1 == "n1"),
            "leases not on n1: {leases:?}"
        );
    }

    // Failures: each its own exit code and a message naming it; the next call works.
    let hog_input = scratch.0.join("hog.in");
    std::fs::write(&hog_input, "1024")?;
    std::fs::set_permissions(&hog_input, std::fs::Permissions::from_mode(0o644))?;
    let hog_input = hog_input.to_str().context("utf-8 path")?;
    let failures: [(&[&str], i32, &str); 3] = [
        (&["--fn", "crash"], 10, "crash"),
        (
            &["--fn", "hog", "--mem", "64M", "--input", hog_input],
            12,
            "memory",
        ),
        (&["--fn", "spin", "--timeout", "500ms"], 11, "timeout"),
    ];
    for (args, code, word) in failures {
        let mut full = vec!["invoke", "--lib", lib, "--cores", "1"];
        full.extend_from_slice(args);
        let out = cli.run(Some(USER), &full)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(code) || !stderr.to_lowercase().contains(word) {
            bail!(
                "`harvest {}` exited with {:?} (want {code}) and said {stderr:?} (want {word:?})",
                full.join(" "),
                out.status.code()
            );
        }
        let after = cli.ok(
            Some(USER),
            &["invoke", "--lib", lib, "--fn", "whereami", "--mem", "128M"],
        )?;
        ensure!(
            field(&after, "uid")? == uid.to_string(),
            "whereami after {word}: {after}"
        );
    }
    drop((job, filler));
    Ok(())
}

/// The harvest-executor process among `pids` and its arguments.
fn executor_args(pids: &[u32]) -> Option<Vec<String>> {
    pids.iter().find_map(|pid| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.first()?.ends_with("harvest-executor").then_some(args)
    })
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2 (with harvest-scheduler), root, cc"]
fn lease_acquire_hot_sets_how_the_executor_waits_for_requests() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let scheduler = scheduler_url(&cluster)?;
    let scratch = Scratch::new("harvest-hot-test")?;
    let cli = Cli::install(&scratch.0, scheduler, &cluster)?;
    let lib = build_library(&scratch.0)?;
    let lib = lib.to_str().context("utf-8 path")?;
    test_user()?;

    // (the flag given, the executor's --hot): no flag is warm, a lease's default.
    let cases: [(Option<&str>, &str); 4] = [
        (None, "warm"),
        (Some("always"), "always"),
        (Some("250us"), "250us"),
        (Some("warm"), "warm"),
    ];
    for (flag, want) in cases {
        let mut args = vec![
            "lease", "acquire", "--lib", lib, "--cores", "1", "--mem", "64M", "--json",
        ];
        if let Some(f) = flag {
            args.extend(["--hot", f]);
        }
        let lease: serde_json::Value = serde_json::from_str(&cli.ok(Some(USER), &args)?)?;
        let id = lease["id"].as_str().context("lease id")?.to_owned();
        let node = lease["node"].as_str().context("lease node")?.to_owned();
        let found = poll(Duration::from_secs(10), || {
            Ok(executor_args(&cluster.lease_pids(&node, &id)?))
        });
        cli.ok(Some(USER), &["lease", "release", &id])?;
        let args =
            found?.with_context(|| format!("lease {id}'s cgroup never held its executor"))?;
        let hot = args
            .iter()
            .position(|a| a == "--hot")
            .and_then(|i| args.get(i + 1));
        ensure!(
            hot.map(String::as_str) == Some(want),
            "lease acquire --hot {flag:?}: the executor runs with --hot {hot:?}, want {want}: {args:?}"
        );
    }

    // A word it does not know: refused before anything is asked, naming what it takes.
    let out = cli.run(
        Some(USER),
        &["lease", "acquire", "--lib", lib, "--hot", "soon", "--json"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && stderr.contains("always") && stderr.contains("soon"),
        "--hot soon: exit {:?}, {stderr}",
        out.status.code()
    );
    // Past the scheduler's bound (60 s): refused with the field and its bound.
    let out = cli.run(
        Some(USER),
        &["lease", "acquire", "--lib", lib, "--hot", "2m", "--json"],
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("hot_window_us"),
        "--hot 2m: exit {:?}, {stderr}",
        out.status.code()
    );
    Ok(())
}
