//! harvestd on the real cluster: it sees a real job's CPUs and memory, frees them after
//! `scancel`, and survives SIGKILL without forgetting the job.
//!
//! Needs `deploy/local-cluster up --nodes 2` and a built `harvestd` (`cargo build -p
//! harvest-agent`; scripts/test-all builds the workspace first). The test starts its own
//! harvestd for n1 with its own run and state directories, feeds it the `StepStart` the SPANK
//! plugin would send for the job, and stops it by pid at the end.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use harvest_core::step::{AgentReply, PluginMessage, StepAllocation, StepId, decode, encode};
use harvest_core::{CpuSet, NodeView};
use harvest_system_tests::fixtures::PluginRegistration;
use harvest_system_tests::{LocalCluster, poll, repo_root};

/// The harvestd binary of this workspace's debug build.
fn harvestd() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug/harvestd");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build -p harvest-agent` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// A harvestd this test started, killed by pid on drop; its directories go with the guard.
struct Agent<'a> {
    cluster: &'a LocalCluster,
    dir: PathBuf,
    child: Option<Child>,
}

impl<'a> Agent<'a> {
    fn new(cluster: &'a LocalCluster) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("harvest-agent-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            cluster,
            dir,
            child: None,
        })
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Starts harvestd and waits until its query socket answers.
    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("harvestd.log"))?;
        let child = self
            .cluster
            .command(harvestd()?.to_str().context("utf-8 path")?)
            .args(["run", "--node", "n1", "--run-dir"])
            // A private, standalone agent: it must not register with the cluster's scheduler.
            .env_remove("HARVEST_SCHEDULER")
            .arg(self.run_dir())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .env("RUST_LOG", "harvest_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let up = poll(Duration::from_secs(10), || {
            Ok(self.status().ok().map(|_| ()))
        })?;
        if up.is_none() {
            bail!(
                "harvestd did not answer within 10 s; its log:\n{}",
                self.log()
            );
        }
        Ok(())
    }

    /// SIGTERM, as an init system stops it; returns once it exited (within 5 s) and whether it
    /// exited with status 0.
    fn terminate(&mut self) -> Result<bool> {
        let mut child = self.child.take().context("harvestd is not running")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM failed");
        let exited = poll(Duration::from_secs(5), || Ok(child.try_wait()?))?;
        match exited {
            Some(s) => Ok(s.success()),
            None => {
                child.kill()?;
                child.wait()?;
                bail!("harvestd ignored SIGTERM for 5 s; log:\n{}", self.log())
            }
        }
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("harvestd.log")).unwrap_or_default()
    }

    /// Sends one message on the plugin socket, as the SPANK plugin does.
    fn send(&self, msg: &PluginMessage) -> Result<AgentReply> {
        let path = self.run_dir().join("harvestd-n1.sock");
        let mut s = UnixStream::connect(&path).with_context(|| format!("{}", path.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&encode(msg)?)?;
        let mut line = Vec::new();
        BufReader::new(s).read_until(b'\n', &mut line)?;
        Ok(decode(&line)?)
    }

    /// `harvestd status --json`, parsed.
    fn status(&self) -> Result<NodeView> {
        let run_dir = self.run_dir();
        let out = self.cluster.run(
            harvestd()?.to_str().context("utf-8 path")?,
            &[
                "status",
                "--node",
                "n1",
                "--json",
                "--run-dir",
                run_dir.to_str().context("utf-8")?,
            ],
        )?;
        parse_view(&out)
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `status --json` with harvest-core's JSON-line decoder (this crate has no JSON library
/// of its own): the decoder wants the protocol envelope's `v`, so it is spliced in.
fn parse_view(json: &str) -> Result<NodeView> {
    let body = json
        .trim()
        .strip_prefix('{')
        .context("status --json printed no object")?;
    let framed = format!("{{\"v\":{},{body}", harvest_core::step::PROTOCOL_VERSION);
    decode(framed.as_bytes()).with_context(|| format!("parsing status --json output {json:?}"))
}

/// The job's uid, CPUs and memory limit (MiB), from its real cgroup.
fn job_allocation(c: &LocalCluster, job: u32) -> Result<(u32, CpuSet, u64)> {
    let dir = poll(Duration::from_secs(10), || {
        Ok(c.job_cgroup("cpuset", "n1", job).ok())
    })?
    .context("the job's cpuset cgroup did not appear")?;
    let uid = dir
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str()?.strip_prefix("uid_")?.parse().ok())
        .context("no uid_<uid> above the job cgroup")?;
    let cpus = CpuSet::parse_list(&std::fs::read_to_string(dir.join("cpuset.cpus"))?)?;
    let mem_dir = c.job_cgroup("memory", "n1", job)?;
    let bytes: u64 = std::fs::read_to_string(mem_dir.join("memory.limit_in_bytes"))?
        .trim()
        .parse()?;
    Ok((uid, cpus, bytes >> 20))
}

/// Polls status until `check` holds, returning the view and how long it took.
fn wait_view(
    agent: &Agent<'_>,
    timeout: Duration,
    what: &str,
    check: impl Fn(&NodeView) -> bool,
) -> Result<(NodeView, Duration)> {
    let t0 = Instant::now();
    let mut last = None;
    let seen = poll(timeout, || {
        let v = agent.status()?;
        let ok = check(&v);
        last = Some(v.clone());
        Ok(ok.then_some(v))
    })?;
    match seen {
        Some(v) => Ok((v, t0.elapsed())),
        None => bail!(
            "{what} not within {timeout:?}; last view {last:?}; log:\n{}",
            agent.log()
        ),
    }
}

/// The job of both tests (its output discarded, so no slurm-<id>.out is left behind).
const JOB: [&str; 8] = [
    "-w",
    "n1",
    "-c1",
    "--mem=500M",
    "-o",
    "/dev/null",
    "--wrap",
    "sleep 60",
];

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn harvestd_tracks_a_real_job_and_survives_sigkill() -> Result<()> {
    let c = LocalCluster::from_env()?;
    let mut agent = Agent::new(&c)?;
    agent.start()?;
    let empty = agent.status()?;
    assert_eq!(empty.name, "n1");
    assert!(
        empty.cpus.batch.is_empty(),
        "n1 must be free of jobs: {empty:?}"
    );
    let total = empty.cpus.total.clone();

    let job = c.sbatch(&JOB)?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    let (uid, cpus, mem_mib) = job_allocation(&c, job.id)?;
    assert_eq!((cpus.len(), mem_mib), (1, 500));

    let reply = agent.send(&PluginMessage::StepStart(StepAllocation {
        job_id: job.id,
        step_id: StepId::BATCH,
        uid,
        node: "n1".into(),
        cpus: cpus.clone(),
        memory_mib: Some(mem_mib),
        gpus: vec![],
        harvest: true,
    }))?;
    assert!(reply.ok, "{reply:?}");
    let held = |v: &NodeView| {
        v.cpus.batch == cpus && v.cpus.idle == total.difference(&cpus) && v.memory_mib.batch == 500
    };
    let (view, _) = wait_view(&agent, Duration::from_secs(5), "the job in status", held)?;
    assert_eq!(view.cpus.idle.len(), total.len() - 1, "{view:?}");

    agent.kill()?;
    let restarted = Instant::now();
    agent.start()?;
    let (after, _) = wait_view(
        &agent,
        Duration::from_secs(5),
        "the same view after SIGKILL",
        |v| *v == view,
    )?;
    eprintln!(
        "view restored {:?} after the restart began",
        restarted.elapsed()
    );
    assert_eq!(after, view);

    job.cancel()?;
    let cancelled = Instant::now();
    wait_view(
        &agent,
        Duration::from_secs(5),
        "every CPU idle after scancel",
        |v| v.cpus.batch.is_empty() && v.cpus.idle == total && v.memory_mib.batch == 0,
    )?;
    eprintln!("all idle {:?} after scancel", cancelled.elapsed());

    assert!(
        agent.terminate()?,
        "harvestd exits 0 on SIGTERM; log:\n{}",
        agent.log()
    );
    for sock in ["harvestd-n1.sock", "harvestd-n1.query.sock"] {
        assert!(!agent.run_dir().join(sock).exists(), "{sock} left behind");
    }
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn a_job_that_started_while_harvestd_was_down_is_held_at_start_up() -> Result<()> {
    let c = LocalCluster::from_env()?;
    let job = c.sbatch(&JOB)?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    let (_, cpus, _) = job_allocation(&c, job.id)?;

    // No plugin message and no saved ledger: only Slurm's cgroup tree (and scontrol) tell.
    let mut agent = Agent::new(&c)?;
    agent.start()?;
    let (view, _) = wait_view(&agent, Duration::from_secs(5), "the running job", |v| {
        v.cpus.batch == cpus && v.memory_mib.batch == 500
    })?;
    assert!(view.cpus.idle.is_disjoint(&cpus), "{view:?}");

    job.cancel()?;
    wait_view(
        &agent,
        Duration::from_secs(5),
        "every CPU idle after scancel",
        |v| v.cpus.batch.is_empty() && v.cpus.idle == v.cpus.total,
    )?;
    Ok(())
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn the_real_plugin_feeds_harvestd_and_harvest_off_empties_idle() -> Result<()> {
    let c = LocalCluster::from_env()?;
    let mut agent = Agent::new(&c)?;
    agent.start()?;
    let _plugin = PluginRegistration::new(
        &c,
        &agent.run_dir().join("harvestd-%n.sock"),
        "harvest-agent-test.conf",
    )?;

    let mut args = JOB.to_vec();
    args.insert(0, "--harvest=off");
    let job = c.sbatch(&args)?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    let (_, cpus, _) = job_allocation(&c, job.id)?;
    // Only the plugin knows --harvest=off (a job found in the cgroup tree counts as harvest=on),
    // so empty idle lists prove its StepStart reached harvestd.
    let (view, _) = wait_view(
        &agent,
        Duration::from_secs(5),
        "the job with harvest=off",
        |v| v.cpus.batch == cpus && v.memory_mib.batch == 500,
    )?;
    assert!(view.cpus.idle.is_empty(), "{view:?}\n{}", agent.log());
    assert_eq!(view.memory_mib.idle, 0, "{view:?}");

    job.cancel()?;
    wait_view(
        &agent,
        Duration::from_secs(5),
        "every CPU idle after scancel",
        |v| v.cpus.batch.is_empty() && v.cpus.idle == v.cpus.total,
    )?;
    Ok(())
}
