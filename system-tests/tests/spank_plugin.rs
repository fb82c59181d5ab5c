//! The SPANK plugin inside real slurmstepd processes: what it reports, when, and that a missing
//! or silent agent never hurts a job.
//!
//! Needs `deploy/local-cluster up --nodes 2`. Each test points the plugin at its own fake agent:
//! it rewrites `plugstack.conf.d/harvest.conf` when `up` registered the plugin (restoring it
//! afterwards), or otherwise builds and installs the plugin and registers it under its own file
//! (removed afterwards). slurmstepd re-reads `plugstack.conf` at every step, so no restart.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harvest_core::CpuSet;
use harvest_core::step::{self, AgentReply, PluginMessage, StepAllocation, StepId};
use harvest_system_tests::fixtures::PluginRegistration;
use harvest_system_tests::{LocalCluster, poll};

const NEEDS: &str = "needs the local cluster: deploy/local-cluster up --nodes 2";
const WAIT: Duration = Duration::from_secs(30);
/// What the test's registration is called when `up` did not register the plugin.
const TEST_CONF: &str = "harvest-system-test.conf";

/// A scratch directory under /tmp, removed on drop (sockets need short paths).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("harvest-spank-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What a fake agent does with a connection.
#[derive(Clone, Copy)]
enum Mode {
    Answer,
    /// Accepts and never answers.
    Silent,
}

/// A message the fake agent received, and whether the marker file existed at that moment.
#[derive(Debug, Clone)]
struct Heard {
    msg: PluginMessage,
    marker_existed: bool,
}

/// Fake agents for n1 and n2, recording every message (the threads end with the process).
struct Agents {
    heard: Arc<Mutex<Vec<Heard>>>,
}

impl Agents {
    fn start(dir: &Path, mode: Mode, marker: &Path) -> Self {
        let heard = Arc::new(Mutex::new(Vec::new()));
        for node in ["n1", "n2"] {
            let listener = UnixListener::bind(dir.join(format!("harvestd-{node}.sock"))).unwrap();
            let (heard, marker) = (heard.clone(), marker.to_owned());
            thread::spawn(move || {
                let mut held = Vec::new();
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    if let Mode::Silent = mode {
                        held.push(stream);
                        continue;
                    }
                    let mut line = Vec::new();
                    if BufReader::new(&stream)
                        .read_until(b'\n', &mut line)
                        .is_err()
                    {
                        continue;
                    }
                    // Checked before answering: the step's tasks wait for this answer.
                    let marker_existed = marker.exists();
                    if let Ok(msg) = step::decode::<PluginMessage>(&line) {
                        heard.lock().unwrap().push(Heard {
                            msg,
                            marker_existed,
                        });
                    }
                    let _ = (&stream).write_all(&step::encode(&AgentReply::ok()).unwrap());
                }
            });
        }
        Self { heard }
    }

    /// Waits for the first message about `job_id` that `want` accepts.
    fn wait_for(&self, job_id: u32, want: impl Fn(&PluginMessage) -> bool) -> Result<Heard> {
        let found = poll(WAIT, || {
            let heard = self.heard.lock().unwrap();
            Ok(heard
                .iter()
                .find(|h| job_of(&h.msg) == job_id && want(&h.msg))
                .cloned())
        })?;
        found.with_context(|| {
            format!(
                "no such message for job {job_id} within {WAIT:?}; heard {:?}",
                self.heard.lock().unwrap()
            )
        })
    }
}

fn job_of(msg: &PluginMessage) -> u32 {
    match msg {
        PluginMessage::StepStart(a) => a.job_id,
        PluginMessage::StepEnd { job_id, .. } | PluginMessage::JobEnd { job_id, .. } => *job_id,
    }
}

fn start_of(msg: &PluginMessage, step: StepId) -> Option<&StepAllocation> {
    match msg {
        PluginMessage::StepStart(a) if a.step_id == step => Some(a),
        _ => None,
    }
}

/// The job id srun printed with `--verbose`-free `echo $SLURM_JOB_ID`.
fn srun_job_id(out: &str) -> Result<u32> {
    out.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("no job id in srun's output {out:?}"))
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn a_batch_step_reports_its_cgroups_cpus_and_memory_before_its_tasks_run() {
    let c = LocalCluster::from_env().expect(NEEDS);
    let scratch = Scratch::new("cpus");
    let marker = scratch.0.join("script-started");
    let agents = Agents::start(&scratch.0, Mode::Answer, &marker);
    let _reg = PluginRegistration::new(&c, &scratch.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();

    let script = format!("touch {}; sleep 60", marker.display());
    let job = c
        .sbatch(&["-w", "n1", "-c1", "--mem=300M", "--wrap", &script])
        .unwrap();
    let heard = agents
        .wait_for(job.id, |m| start_of(m, StepId::BATCH).is_some())
        .unwrap();
    assert!(
        !heard.marker_existed,
        "the batch script ran before the agent heard of its step"
    );
    let alloc = start_of(&heard.msg, StepId::BATCH).unwrap().clone();
    assert_eq!(alloc.node, "n1");
    assert_eq!(alloc.memory_mib, Some(300));
    assert!(alloc.harvest, "default=on");
    assert!(alloc.gpus.is_empty(), "no GRES here: {:?}", alloc.gpus);
    let cg = c.job_cgroup("cpuset", "n1", job.id).unwrap();
    let cpus = CpuSet::parse_list(&fs::read_to_string(cg.join("cpuset.cpus")).unwrap()).unwrap();
    assert_eq!(
        alloc.cpus,
        cpus,
        "reported CPUs differ from {}",
        cg.display()
    );
    assert_eq!(cpus.len(), 1);

    // The batch step's end is the job's end on its node.
    job.cancel().unwrap();
    agents
        .wait_for(
            job.id,
            |m| matches!(m, PluginMessage::JobEnd { node, .. } if node == "n1"),
        )
        .unwrap();
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn harvest_off_is_reported_by_every_node_and_bad_values_are_refused_at_submit() {
    let c = LocalCluster::from_env().expect(NEEDS);
    let scratch = Scratch::new("off");
    let agents = Agents::start(&scratch.0, Mode::Answer, &scratch.0.join("unused"));
    let _reg = PluginRegistration::new(&c, &scratch.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();

    let out = c
        .run(
            "srun",
            &[
                "-N2",
                "-n2",
                "--harvest=off",
                "sh",
                "-c",
                "echo $SLURM_JOB_ID",
            ],
        )
        .unwrap();
    let job = srun_job_id(&out).unwrap();
    for node in ["n1", "n2"] {
        let heard = agents
            .wait_for(job, |m| {
                start_of(m, StepId(0)).is_some_and(|a| a.node == node)
            })
            .unwrap();
        assert!(
            !start_of(&heard.msg, StepId(0)).unwrap().harvest,
            "{node}: {heard:?}"
        );
        agents
            .wait_for(job, |m| {
                matches!(m, PluginMessage::StepEnd { node: n, step_id: StepId(0), .. } if n == node)
            })
            .unwrap();
    }

    let out = c
        .run("srun", &["--harvest=on", "sh", "-c", "echo $SLURM_JOB_ID"])
        .unwrap();
    let job = srun_job_id(&out).unwrap();
    let heard = agents
        .wait_for(job, |m| start_of(m, StepId(0)).is_some())
        .unwrap();
    assert!(start_of(&heard.msg, StepId(0)).unwrap().harvest);

    let err = c
        .run("sbatch", &["--harvest=maybe", "--wrap", "true"])
        .unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("--harvest=\"maybe\"") && err.contains("--harvest=off"),
        "{err}"
    );
}

/// Runs `srun -N2 true` `n` times; returns the slowest run.
fn slowest_srun(c: &LocalCluster, n: usize) -> Result<Duration> {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let start = Instant::now();
        let out = c.command("srun").args(["-N2", "-n2", "true"]).output()?;
        if !out.status.success() {
            bail!("srun failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        slowest = slowest.max(start.elapsed());
    }
    Ok(slowest)
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn jobs_run_normally_and_promptly_without_an_agent_or_with_a_silent_one() {
    let c = LocalCluster::from_env().expect(NEEDS);
    // Nobody listens: each callback fails at connect.
    let scratch = Scratch::new("absent");
    let reg = PluginRegistration::new(&c, &scratch.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();
    let absent = slowest_srun(&c, 5).unwrap();
    let job = c.sbatch(&["-w", "n1", "--wrap", "exit 0"]).unwrap();
    let done = poll(WAIT, || Ok(c.job_state(job.id)?.is_none().then_some(()))).unwrap();
    assert!(
        done.is_some(),
        "batch job {} did not finish without an agent",
        job.id
    );
    let state = c
        .run("scontrol", &["show", "job", &job.id.to_string()])
        .unwrap();
    assert!(
        state.contains("JobState=COMPLETED") && state.contains("ExitCode=0:0"),
        "{state}"
    );
    drop(reg);

    // An agent that accepts and never answers: each callback waits out timeout_ms (100 ms).
    let silent = Scratch::new("silent");
    let _agents = Agents::start(&silent.0, Mode::Silent, &silent.0.join("unused"));
    let _reg = PluginRegistration::new(&c, &silent.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();
    let stalled = slowest_srun(&c, 5).unwrap();

    // The plugin was really there: it logged the absent agent's socket (once per slurmstepd)...
    let dir = PathBuf::from(c.var("HARVEST_CLUSTER_DIR").unwrap());
    let logs: String = ["n1", "n2"]
        .iter()
        .map(|n| fs::read_to_string(dir.join(format!("log/slurmd-{n}.log"))).unwrap_or_default())
        .collect();
    let socket = scratch.0.join("harvestd-n1.sock");
    assert!(
        logs.contains(&format!("harvest agent at {}", socket.display())),
        "no warning about {} in the slurmd logs",
        socket.display()
    );
    // ...and it waited for the silent agent (a deadline cannot expire early).
    assert!(
        stalled >= Duration::from_millis(100),
        "srun took only {stalled:?}: plugin not loaded?"
    );
    eprintln!("slowest srun -N2 true: {absent:?} without an agent, {stalled:?} with a silent one");
    // user_init and exit each wait at most 100 ms; 2 s leaves room for a loaded machine and is
    // still far below anything a user would call a hang.
    assert!(
        absent < Duration::from_secs(2),
        "srun took {absent:?} without an agent"
    );
    assert!(
        stalled < Duration::from_secs(2),
        "srun took {stalled:?} with a silent agent"
    );
}

/// `JobEnd` from `slurm_spank_job_epilog` on the node without the batch step. slurmd runs SPANK
/// epilogs only for plugins that were in plugstack.conf when slurmd started, so this needs the
/// cluster brought up with the plugin registered (`harvest.conf`), unlike the tests above.
#[test]
#[ignore = "needs the local cluster started with the plugin registered: HARVEST_WITH_AGENT=1 deploy/local-cluster up --nodes 2"]
fn the_epilog_reports_job_end_on_every_node() {
    let c = LocalCluster::from_env().expect(NEEDS);
    let dir = PathBuf::from(c.var("HARVEST_CLUSTER_DIR").unwrap());
    assert!(
        dir.join("etc/plugstack.conf.d/harvest.conf").is_file(),
        "the plugin was not registered when slurmd started, so slurmd runs no SPANK epilog: \
         bring the cluster up with HARVEST_WITH_AGENT=1 deploy/local-cluster up --nodes 2"
    );
    let scratch = Scratch::new("epilog");
    let agents = Agents::start(&scratch.0, Mode::Answer, &scratch.0.join("unused"));
    let _reg = PluginRegistration::new(&c, &scratch.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();

    // Two nodes, the batch step on the first: only the epilog ends the job on the second.
    let job = c
        .sbatch(&["-N2", "-w", "n1,n2", "--wrap", "srun true"])
        .unwrap();
    for node in ["n1", "n2"] {
        agents
            .wait_for(
                job.id,
                |m| matches!(m, PluginMessage::JobEnd { node: n, .. } if n == node),
            )
            .unwrap();
    }
}

/// What the plugin must report for GPUs on this host: none without `/dev/nvidia<N>` (the local
/// cluster's case), otherwise every one of them (no devices cgroup here: ConstrainDevices is off).
fn host_gpus() -> Vec<u32> {
    let mut gpus: Vec<u32> = fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let name = e.file_name().into_string().ok()?;
                    name.strip_prefix("nvidia")?.parse().ok()
                })
                .filter(|n| *n <= 253)
                .collect()
        })
        .unwrap_or_default();
    gpus.sort_unstable();
    gpus
}

#[test]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2"]
fn a_job_that_exports_gpus_and_another_node_name_changes_nothing_reported() {
    let c = LocalCluster::from_env().expect(NEEDS);
    let scratch = Scratch::new("env");
    let marker = scratch.0.join("script-started");
    let agents = Agents::start(&scratch.0, Mode::Answer, &marker);
    let _reg = PluginRegistration::new(&c, &scratch.0.join("harvestd-%n.sock"), TEST_CONF).unwrap();

    // The lies travel both ways a user has: the submission's environment (the batch step's) and
    // an `export` inside the script before `srun` (the srun step's).
    // (`--export` splits at commas, so one index each there.)
    let lies = "SLURM_STEP_GPUS=3,SLURM_JOB_GPUS=3,CUDA_VISIBLE_DEVICES=3";
    let script = format!(
        "export SLURM_STEP_GPUS=0,1 SLURM_JOB_GPUS=0,1 CUDA_VISIBLE_DEVICES=0,1 \
         SLURMD_NODENAME=n2; srun -n1 -c1 --mem=100M true; touch {}; sleep 60",
        marker.display()
    );
    let export = format!("--export=ALL,SLURMD_NODENAME=n2,{lies}");
    let job = c
        .sbatch(&["-w", "n1", "-c1", "--mem=300M", &export, "--wrap", &script])
        .unwrap();
    let want_gpus = host_gpus();
    for step in [StepId::BATCH, StepId(0)] {
        let heard = agents
            .wait_for(job.id, |m| start_of(m, step).is_some())
            .unwrap();
        let alloc = start_of(&heard.msg, step).unwrap();
        assert_eq!(alloc.node, "n1", "step {step}: {alloc:?}");
        assert_eq!(alloc.gpus, want_gpus, "step {step}: {alloc:?}");
        assert!(!alloc.cpus.is_empty(), "step {step}: {alloc:?}");
    }
    poll(WAIT, || Ok(marker.exists().then_some(())))
        .unwrap()
        .expect("the batch script ran after its srun step");
    job.cancel().unwrap();
    agents
        .wait_for(
            job.id,
            |m| matches!(m, PluginMessage::JobEnd { node, .. } if node == "n1"),
        )
        .unwrap();
    // No message about this job named n2 (each message went to the socket of the node it names).
    let heard = agents.heard.lock().unwrap();
    let to_n2: Vec<_> = heard
        .iter()
        .filter(|h| job_of(&h.msg) == job.id)
        .filter(|h| match &h.msg {
            PluginMessage::StepStart(a) => a.node != "n1",
            PluginMessage::StepEnd { node, .. } | PluginMessage::JobEnd { node, .. } => {
                node != "n1"
            }
        })
        .collect();
    assert!(to_n2.is_empty(), "reports about another node: {to_n2:?}");
}
