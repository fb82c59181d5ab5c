use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use harvest_core::CpuSet;
use harvest_core::step::{self, AgentReply};

use super::*;
use crate::host::testing::FakeHost;

/// A temp dir with a fake v1 cgroup tree for job 42 on n1 (CPUs 1-2, 300 MiB).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let job = "slurm_n1/uid_1000/job_42";
        let cg = dir.path().join("cg");
        fs::create_dir_all(cg.join("cpuset").join(job)).unwrap();
        fs::create_dir_all(cg.join("memory").join(job)).unwrap();
        fs::write(cg.join("cpuset").join(job).join("cpuset.cpus"), "1-2\n").unwrap();
        fs::write(
            cg.join("memory").join(job).join("memory.limit_in_bytes"),
            "314572800\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("self-cgroup"),
            format!("4:memory:/{job}/step_0\n3:cpuset:/{job}/step_0\n"),
        )
        .unwrap();
        Self { dir }
    }

    /// Gives the node GPUs 0-3 (`dev/nvidia<N>`) and, if `list` is given, a devices cgroup for
    /// job 42's step `step` with that `devices.list`.
    fn gpus(&self, step: &str, list: Option<&str>) {
        let dev = self.dir.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        for name in ["nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidiactl"] {
            fs::write(dev.join(name), "").unwrap();
        }
        if let Some(list) = list {
            let step = self
                .dir
                .path()
                .join("cg/devices/slurm_n1/uid_1000/job_42")
                .join(step);
            fs::create_dir_all(&step).unwrap();
            fs::write(step.join("devices.list"), list).unwrap();
        }
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("harvestd-{node}.sock"))
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            format!(
                "socket={}",
                self.dir.path().join("harvestd-%n.sock").display()
            ),
            format!("cgroup_root={}", self.dir.path().join("cg").display()),
            format!(
                "proc_self_cgroup={}",
                self.dir.path().join("self-cgroup").display()
            ),
            format!("dev_root={}", self.dir.path().join("dev").display()),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A fake agent answering `ok` to every message; what it received comes out of the channel.
fn agent(path: &Path) -> mpsc::Receiver<PluginMessage> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut line = Vec::new();
            BufReader::new(&stream)
                .read_until(b'\n', &mut line)
                .unwrap();
            let msg: PluginMessage = step::decode(&line).unwrap();
            (&stream)
                .write_all(&step::encode(&AgentReply::ok()).unwrap())
                .unwrap();
            if tx.send(msg).is_err() {
                return;
            }
        }
    });
    rx
}

fn recv(rx: &mpsc::Receiver<PluginMessage>) -> PluginMessage {
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the agent received a message")
}

#[test]
fn user_init_reports_the_cgroups_cpus_and_memory_to_the_nodes_agent() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let host = FakeHost::remote(0);
    let warned = AtomicBool::new(false);
    user_init(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    let PluginMessage::StepStart(got) = recv(&rx) else {
        panic!("not a step start");
    };
    assert_eq!(
        got,
        StepAllocation {
            job_id: 42,
            step_id: StepId(0),
            uid: 1000,
            node: "n1".into(),
            cpus: CpuSet::parse_list("1-2").unwrap(),
            memory_mib: Some(300),
            gpus: vec![],
            harvest: true,
        }
    );
    assert!(host.logged.borrow().is_empty(), "{:?}", host.logged);
}

#[test]
fn the_job_option_and_the_admin_default_decide_harvest() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let warned = AtomicBool::new(false);
    let cases = [
        (Some("off"), &[][..], false),
        (Some("on"), &["default=off"][..], true),
        (None, &["default=off"][..], false),
        (None, &[][..], true),
    ];
    for (option, extra, want) in cases {
        let mut host = FakeHost::remote(3);
        host.harvest = option.map(str::to_owned);
        user_init(&host, &refs(&fx.args(extra)), &Warner::new(&warned));
        let PluginMessage::StepStart(got) = recv(&rx) else {
            panic!("not a step start");
        };
        assert_eq!(got.harvest, want, "option {option:?} with {extra:?}");
    }
}

#[test]
fn step_and_job_end_reach_the_agent() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let warned = AtomicBool::new(false);
    exit(
        &FakeHost::remote(2),
        &refs(&fx.args(&[])),
        &Warner::new(&warned),
    );
    assert_eq!(
        recv(&rx),
        PluginMessage::StepEnd {
            job_id: 42,
            step_id: StepId(2),
            node: "n1".into()
        }
    );
    for whole_job in [StepId::BATCH, StepId::EXTERN] {
        exit(
            &FakeHost::remote(whole_job.0),
            &refs(&fx.args(&[])),
            &Warner::new(&warned),
        );
        assert_eq!(
            recv(&rx),
            PluginMessage::JobEnd {
                job_id: 42,
                node: "n1".into()
            },
            "{whole_job}"
        );
    }

    let mut epilog = FakeHost {
        context: Some(Context::JobScript),
        ..FakeHost::default()
    };
    epilog
        .process_env
        .insert("SLURM_JOB_ID".into(), "42".into());
    epilog
        .process_env
        .insert("SLURMD_NODENAME".into(), "n1".into());
    job_epilog(&epilog, &refs(&fx.args(&[])), &Warner::new(&warned));
    assert_eq!(
        recv(&rx),
        PluginMessage::JobEnd {
            job_id: 42,
            node: "n1".into()
        }
    );
    assert!(!warned.load(Ordering::Relaxed));
}

#[test]
fn each_node_talks_to_its_own_agent() {
    let fx = Fixture::new();
    let rx1 = agent(&fx.socket("n1"));
    let rx2 = agent(&fx.socket("n2"));
    let mut host = FakeHost::remote(1);
    host.process_env
        .insert("SLURMD_NODENAME".into(), "n2".into());
    let warned = AtomicBool::new(false);
    exit(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    assert!(matches!(recv(&rx2), PluginMessage::StepEnd { node, .. } if node == "n2"));
    assert!(rx1.try_recv().is_err(), "n1's agent heard about n2's step");
}

#[test]
fn no_agent_means_one_warning_and_a_prompt_return() {
    let fx = Fixture::new();
    let host = FakeHost::remote(0);
    let warned = AtomicBool::new(false);
    let warner = Warner::new(&warned);
    let args = fx.args(&["timeout_ms=50"]);
    let start = Instant::now();
    user_init(&host, &refs(&args), &warner);
    exit(&host, &refs(&args), &warner);
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let errors = host.lines(Level::Info);
    assert_eq!(errors.len(), 1, "{:?}", host.logged);
    assert!(errors[0].contains("harvestd-n1.sock"), "{}", errors[0]);
    assert_eq!(host.lines(Level::Debug).len(), 1, "{:?}", host.logged);
}

/// A process in lease group `lease_a` of n1 (fake tree, fake `proc/<pid>/cgroup`), and the
/// arguments that make the plugin look there.
fn lease_process(fx: &Fixture) -> (std::process::Child, Vec<String>) {
    let child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let group = fx.dir.path().join("cg/cpuset/harvest_n1/lease_a");
    fs::create_dir_all(&group).unwrap();
    fs::write(group.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
    let proc = fx.dir.path().join("proc");
    fs::create_dir_all(proc.join(child.id().to_string())).unwrap();
    fs::write(
        proc.join(child.id().to_string()).join("cgroup"),
        "3:cpuset:/harvest_n1/lease_a\n",
    )
    .unwrap();
    fs::create_dir_all(proc.join("self")).unwrap();
    fs::copy(fx.dir.path().join("self-cgroup"), proc.join("self/cgroup")).unwrap();
    // As the kernel does, the group's list drops the process once it died (a zombie is no
    // longer listed).
    let (pid, procs) = (child.id(), group.join("cgroup.procs"));
    thread::spawn(move || {
        let stat = format!("/proc/{pid}/stat");
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            let state = fs::read_to_string(&stat).unwrap_or_default();
            if state.is_empty() || state.contains(") Z") {
                fs::write(&procs, "").unwrap();
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    });
    let mut args = fx.args(&["timeout_ms=50"]);
    for a in &mut args {
        if a.starts_with("proc_self_cgroup=") {
            *a = format!("proc_self_cgroup={}", proc.join("self/cgroup").display());
        }
    }
    (child, args)
}

#[test]
fn without_an_agent_the_plugin_ends_the_lease_processes_itself_before_the_tasks() {
    use std::os::unix::process::ExitStatusExt;
    let fx = Fixture::new();
    let (mut child, args) = lease_process(&fx);
    let host = FakeHost::remote(0);
    let warned = AtomicBool::new(false);
    let start = Instant::now();
    user_init(&host, &refs(&args), &Warner::new(&warned));
    // Killed before user_init returned (the step's tasks start after it): reaped at once.
    let status = child.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| s.signal() == Some(9)),
        "the lease's process after user_init: {status:?}"
    );
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let info = host.lines(Level::Info);
    assert_eq!(info.len(), 2, "{:?}", host.logged);
    assert!(
        info[1].contains("ended the node's 1 lease group(s) itself (1 process(es) killed)"),
        "{}",
        info[1]
    );
}

#[test]
fn with_an_agent_answering_the_plugin_leaves_leases_to_it() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let (mut child, args) = lease_process(&fx);
    let host = FakeHost::remote(0);
    let warned = AtomicBool::new(false);
    user_init(&host, &refs(&args), &Warner::new(&warned));
    assert!(matches!(recv(&rx), PluginMessage::StepStart(_)));
    assert_eq!(child.try_wait().unwrap(), None, "{:?}", host.logged);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn other_contexts_send_nothing() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let warned = AtomicBool::new(false);
    for context in [Context::Local, Context::Allocator, Context::Slurmd] {
        let mut host = FakeHost::remote(0);
        host.context = Some(context);
        user_init(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
        exit(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
        job_epilog(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    }
    // A remote exit afterwards is the first thing the agent hears.
    exit(
        &FakeHost::remote(9),
        &refs(&fx.args(&[])),
        &Warner::new(&warned),
    );
    assert!(matches!(
        recv(&rx),
        PluginMessage::StepEnd {
            step_id: StepId(9),
            ..
        }
    ));
}

#[test]
fn a_bad_configuration_warns_without_sending() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let warned = AtomicBool::new(false);
    let host = FakeHost::remote(0);
    user_init(
        &host,
        &refs(&fx.args(&["default=perhaps"])),
        &Warner::new(&warned),
    );
    let errors = host.lines(Level::Info);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("default=\"perhaps\""), "{}", errors[0]);

    assert!(
        rx.try_recv().is_err(),
        "sent a report without a configuration"
    );
}

#[test]
fn an_unreadable_cgroup_asks_the_agent_to_keep_the_node_clear() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let warned = AtomicBool::new(false);
    let mut host = FakeHost::remote(0);
    host.items.insert("job", 43);
    user_init(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    let errors = host.lines(Level::Info);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("job_43"), "{}", errors[0]);
    let PluginMessage::StepStart(got) = recv(&rx) else {
        panic!("not a step start");
    };
    assert_eq!((got.job_id, got.harvest), (43, false));
    assert!(got.cpus.is_empty() && got.memory_mib.is_none());
}

#[test]
fn the_option_callback_rejects_bad_values_only_at_submit() {
    assert_eq!(check_option(Some("off"), false), Ok(()));
    assert_eq!(check_option(Some("on"), false), Ok(()));
    let err = check_option(Some("maybe"), false).unwrap_err();
    assert!(
        err.contains("\"maybe\"") && err.contains("--harvest=off"),
        "{err}"
    );
    assert!(check_option(None, false).is_err());
    assert_eq!(check_option(Some("maybe"), true), Ok(()));
}

#[test]
fn the_node_name_never_comes_from_the_jobs_environment() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    // A user who exports another node's name reaches neither that node's agent nor its report.
    let mut host = FakeHost::remote(0);
    host.job_env.insert(NODE_NAME_VAR.into(), "n2".into());
    let warned = AtomicBool::new(false);
    user_init(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    let PluginMessage::StepStart(got) = recv(&rx) else {
        panic!("not a step start");
    };
    assert_eq!(got.node, "n1");
    assert!(!fx.socket("n2").exists());

    // Without slurmstepd's own SLURMD_NODENAME, the job's copy is not a fallback: nothing is sent.
    host.process_env.clear();
    let warned = AtomicBool::new(false);
    user_init(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    exit(&host, &refs(&fx.args(&[])), &Warner::new(&warned));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert!(
        host.lines(Level::Info)[0].contains("node name"),
        "{:?}",
        host.logged
    );
}

/// A job environment that claims every GPU-ish variable Slurm's GRES plugin sets.
fn lying_gpu_env(host: &mut FakeHost) {
    for var in [
        "SLURM_STEP_GPUS",
        "SLURM_JOB_GPUS",
        "CUDA_VISIBLE_DEVICES",
        "GPU_DEVICE_ORDINAL",
    ] {
        host.job_env.insert(var.into(), "0,2".into());
    }
}

fn start(fx: &Fixture, host: &FakeHost, rx: &mpsc::Receiver<PluginMessage>) -> StepAllocation {
    let warned = AtomicBool::new(false);
    user_init(host, &refs(&fx.args(&[])), &Warner::new(&warned));
    let PluginMessage::StepStart(got) = recv(rx) else {
        panic!("not a step start");
    };
    assert!(
        host.job_env_reads.borrow().is_empty(),
        "the job's environment was read: {:?}",
        host.job_env_reads
    );
    got
}

#[test]
fn gpus_claimed_in_the_jobs_environment_are_ignored_on_a_node_without_gpus() {
    let fx = Fixture::new();
    let rx = agent(&fx.socket("n1"));
    let mut host = FakeHost::remote(0);
    lying_gpu_env(&mut host);
    assert_eq!(start(&fx, &host, &rx).gpus, Vec::<u32>::new());
}

#[test]
fn the_steps_gpus_come_from_its_devices_cgroup_not_the_environment() {
    let fx = Fixture::new();
    fx.gpus(
        "step_0",
        Some("c 1:3 rwm\nc 195:255 rwm\nc 195:1 rwm\nc 195:3 rwm\n"),
    );
    let rx = agent(&fx.socket("n1"));
    let mut host = FakeHost::remote(0);
    lying_gpu_env(&mut host);
    assert_eq!(start(&fx, &host, &rx).gpus, vec![1, 3]);
}

#[test]
fn a_gpu_node_whose_step_devices_cannot_be_read_holds_every_gpu() {
    // No devices cgroup at all, then the default-allow list that hides Slurm's denies.
    for list in [None, Some("a *:* rwm\n")] {
        let fx = Fixture::new();
        fx.gpus("step_batch", list);
        let rx = agent(&fx.socket("n1"));
        let mut host = FakeHost::remote(StepId::BATCH.0);
        lying_gpu_env(&mut host);
        host.job_env.insert("SLURM_STEP_GPUS".into(), String::new());
        let got = start(&fx, &host, &rx);
        assert_eq!(got.gpus, vec![0, 1, 2, 3], "{list:?}");
        assert_eq!(got.cpus, CpuSet::parse_list("1-2").unwrap(), "{list:?}");
        assert!(
            host.lines(Level::Debug)[0].contains("every GPU"),
            "{:?}",
            host.logged
        );
    }
}
