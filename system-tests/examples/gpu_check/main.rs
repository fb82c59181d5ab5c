//! The lease half of `scripts/gpu-check`: on a machine with an NVIDIA GPU and no Slurm, a real
//! harvestd lends one GPU to an executor run as an ordinary user, and this measures what
//! issue 20 asks for. Run by the script (as root, from the repository root); by hand:
//!
//! ```text
//! gpu_check --harvestd BIN --executor BIN --out DIR [--lib LIB] [--busy BIN] [--user NAME]
//!           [--calls N] [--elements N] [--busy-seconds S] [--memory-mib M] [--dev-root DIR]
//!           [--gpu-source nvml|device-files]
//! ```
//!
//! A fake scheduler (`harvest_agent::fake_scheduler`, mutual TLS with a CA made in DIR) on
//! 127.0.0.1 orders the lease exactly as harvest-scheduler does (CreateExecutor with `gpus: 1`);
//! harvestd places it on an idle GPU, makes its cgroup (the v1 devices controller allows only
//! the basics and the lent GPU's nodes; v2 leaves devices unconfined and says so) and starts
//! harvest-executor as the user with `CUDA_VISIBLE_DEVICES`. Then, in order, each with a
//! deadline, and each failure recorded rather than fatal where the next step can still run:
//!
//! 1. `whereami` and `cuda_devices` through the lease: uid, cgroups, the GPUs CUDA shows it;
//! 2. device nodes opened from inside the lease (`open_path`) and, as a control, from here
//!    (root, outside any lease group): the lent GPU and nvidiactl must open; every other
//!    `nvidia<N>`, `nvidia-modeset` and a node made with mknod for a GPU minor that does not
//!    exist must fail with EPERM inside (the devices cgroup) while outside they open or fail
//!    otherwise (ENXIO: no such GPU);
//! 3. latency: `saxpy` on N elements, `calls` times on one connection, beside `echo` of the same
//!    input (the transport alone); CUDA's set-up (in step 1's first call) and the first saxpy
//!    are recorded apart;
//! 4. the batch's slowdown: `cuda_busy` (run as root, outside the lease, on the same GPU) alone,
//!    then with the function called back to back, then alone again;
//! 5. the lease destroyed, its cgroup gone, harvestd stopped.
//!
//! Writes DIR/lease.json (everything measured) and DIR/lease.md (a summary); exits 0 when the
//! CUDA function ran through the lease, 1 otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harvest_agent::fake_scheduler::{FakeScheduler, create_order, event_of, register, slots};
use harvest_core::NodeView;
use harvest_proto::v1;
use harvest_system_tests::cuda::{build_cuda_busy, build_cuda_library};
use harvest_system_tests::fixtures::{lease_secret, regular_user};
use serde_json::{Value, json};

mod devices;
mod measure;
mod report;

const NODE: &str = "gpucheck";
const LEASE: &str = "gpu1";
const PARENT: &str = "harvest_gpucheck";
const WAIT: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    harvestd: PathBuf,
    executor: PathBuf,
    out: PathBuf,
    lib: Option<PathBuf>,
    busy: Option<PathBuf>,
    user: String,
    calls: usize,
    elements: usize,
    busy_seconds: f64,
    memory_mib: u64,
    dev_root: PathBuf,
    gpu_source: String,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        harvestd: PathBuf::new(),
        executor: PathBuf::new(),
        out: PathBuf::new(),
        lib: None,
        busy: None,
        user: "harvest-gpu-user".into(),
        calls: 200,
        elements: 65_536,
        busy_seconds: 15.0,
        memory_mib: 4096,
        dev_root: "/dev".into(),
        gpu_source: "nvml".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value (see the header of gpu_check.rs)"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("{flag} {value}: {e}");
        match flag.as_str() {
            "--harvestd" => a.harvestd = value.into(),
            "--executor" => a.executor = value.into(),
            "--out" => a.out = value.into(),
            "--lib" => a.lib = Some(value.into()),
            "--busy" => a.busy = Some(value.into()),
            "--user" => a.user = value,
            "--calls" => a.calls = value.parse().map_err(|e| bad(&e))?,
            "--elements" => a.elements = value.parse().map_err(|e| bad(&e))?,
            "--busy-seconds" => a.busy_seconds = value.parse().map_err(|e| bad(&e))?,
            "--memory-mib" => a.memory_mib = value.parse().map_err(|e| bad(&e))?,
            "--dev-root" => a.dev_root = value.into(),
            "--gpu-source" => a.gpu_source = value,
            other => bail!("unknown option {other} (see the header of gpu_check.rs)"),
        }
    }
    for (name, path) in [
        ("--harvestd", &a.harvestd),
        ("--executor", &a.executor),
        ("--out", &a.out),
    ] {
        anyhow::ensure!(!path.as_os_str().is_empty(), "{name} is required");
    }
    anyhow::ensure!(
        (1..=100_000).contains(&a.calls) && (1..=200_000).contains(&a.elements),
        "--calls 1..=100000, --elements 1..=200000"
    );
    anyhow::ensure!(
        ["nvml", "device-files"].contains(&a.gpu_source.as_str()),
        "--gpu-source nvml or device-files"
    );
    anyhow::ensure!(
        a.busy_seconds > 0.0 && a.busy_seconds <= 120.0,
        "--busy-seconds in (0, 120]"
    );
    Ok(a)
}

/// Everything the run found, written as lease.json; `errors` collects what failed.
struct Report {
    v: serde_json::Map<String, Value>,
    errors: Vec<String>,
}

impl Report {
    fn set(&mut self, key: &str, value: Value) {
        self.v.insert(key.into(), value);
    }

    fn error(&mut self, step: &str, e: impl std::fmt::Display) {
        let msg = format!("{step}: {e:#}");
        eprintln!("gpu_check: {msg}");
        self.errors.push(msg);
    }
}

fn log(msg: &str) {
    eprintln!("gpu_check: {msg}");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gpu_check: {e:#}");
            return std::process::ExitCode::from(64);
        }
    };
    let mut report = Report {
        v: serde_json::Map::new(),
        errors: Vec::new(),
    };
    let ran = match run(&args, &mut report).await {
        Ok(ran) => ran,
        Err(e) => {
            report.error("fatal", e);
            false
        }
    };
    report.set("cuda_function_ran_through_the_lease", json!(ran));
    report.set("errors", json!(report.errors));
    let v = Value::Object(report.v);
    let written = std::fs::write(
        args.out.join("lease.json"),
        serde_json::to_string_pretty(&v).unwrap_or_default(),
    )
    .and_then(|()| std::fs::write(args.out.join("lease.md"), report::markdown(&v)));
    if let Err(e) = written {
        eprintln!("gpu_check: writing {}: {e}", args.out.display());
        return std::process::ExitCode::FAILURE;
    }
    if ran {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The harvestd this run started, killed by pid on drop (SIGTERM first, then SIGKILL).
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // harvestd ends its lease groups; the parent it made for them is this run's to remove
        // (rmdir: only where it is empty), on v1 in each hierarchy, on v2 once.
        let root = Path::new("/sys/fs/cgroup");
        for h in ["cpuset", "memory", "cpu", "freezer", "pids", "devices"] {
            let _ = std::fs::remove_dir(root.join(h).join(PARENT));
        }
        let _ = std::fs::remove_dir(root.join(PARENT));
    }
}

async fn run(a: &Args, r: &mut Report) -> Result<bool> {
    std::fs::create_dir_all(&a.out)?;
    let dir = a.out.join("work");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    // The lease directory lives under the state dir: the lease's user must reach its own.
    set_mode(&a.out, 0o755)?;
    set_mode(&dir, 0o755)?;
    let (uid, gid) = regular_user(&a.user)?;
    r.set("user", json!({"name": a.user, "uid": uid, "gid": gid}));
    let lib = match &a.lib {
        Some(p) => p.clone(),
        None => build_cuda_library(&dir, None).context("building the function library with cc")?,
    };
    let busy = match &a.busy {
        Some(p) => p.clone(),
        None => build_cuda_busy(&dir, None).context("building cuda_busy with cc")?,
    };
    let library = std::fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;

    // The scheduler's side: mutual TLS with a CA of this run's own.
    let pki = harvest_proto::tls::testing::Pki::new(&dir, "gpucheck");
    let (server, node) = (pki.server(), pki.node(NODE));
    let server_tls = tonic::transport::ServerTlsConfig::new()
        .identity(harvest_proto::tls::read_identity(
            ("cert", &server.cert),
            ("key", &server.key),
        )?)
        .client_ca_root(harvest_proto::tls::read_ca("ca", &pki.ca())?);
    let mut sched = FakeScheduler::start_tls("127.0.0.1:0".parse()?, Some(server_tls)).await?;
    // allow_unconfined_gpus: on a cgroup v2 host harvestd would refuse the GPU lease; the check
    // lends it anyway to record what v2 leaves open (verdict "unconfined").
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "heartbeat_interval = \"200ms\"\nexecutor_bind_address = \"127.0.0.1\"\nexecutor_path = {:?}\nlease_cgroup_parent = \"{PARENT}\"\n\
             allow_unconfined_gpus = true\n\
             dev_root = {:?}\ngpu_source = \"{}\"\nexecutor_start_timeout = \"30s\"\ntls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
            path_str(&a.executor)?,
            path_str(&a.dev_root)?,
            a.gpu_source,
            path_str(&pki.ca())?,
            path_str(&node.cert)?,
            path_str(&node.key)?,
        ),
    )?;
    let log_file = a.out.join("harvestd.log");
    let started = Instant::now();
    let child = Command::new(&a.harvestd)
        .args([
            "run",
            "--node",
            NODE,
            "--scheduler",
            &sched.url(),
            "--config",
        ])
        .arg(&config)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("RUST_LOG", "harvest_agent=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file)?)
        .spawn()
        .with_context(|| format!("starting {}", a.harvestd.display()))?;
    let agent = Agent {
        child,
        log: log_file,
    };
    if sched.wait_for(WAIT, register).await.is_none() {
        bail!(
            "no Register from harvestd in {WAIT:?}; its log:\n{}",
            agent.log()
        );
    }
    log("harvestd registered");
    let view = sched
        .wait_for(WAIT, |m| Some(NodeView::from(&slots(m)?.view?)))
        .await
        .context("no slot report from harvestd")?;
    r.set("registered_ms", json!(started.elapsed().as_millis()));
    r.set("node_view", serde_json::to_value(&view)?);
    if view.gpus.idle.is_empty() {
        bail!(
            "harvestd reports no idle GPU to lend (gpus: {:?}); its log:\n{}",
            view.gpus,
            agent.log()
        );
    }

    // The lease: one core, memory for a CUDA context, one GPU.
    let order = v1::CreateExecutor {
        gpus: 1,
        ..create_order(
            LEASE,
            (uid, gid),
            a.memory_mib,
            library,
            CALL_TIMEOUT.as_millis() as u32,
            lease_secret().as_bytes(),
        )
    };
    let ordered = Instant::now();
    let info = match sched.start_executor(order, WAIT).await {
        Ok(info) => info,
        Err(other) => bail!(
            "the lease did not start: {other:?}; harvestd's log:\n{}",
            agent.log()
        ),
    };
    let addr: SocketAddr = info.address.parse()?;
    log(&format!("lease ready on GPU {:?} at {addr}", info.gpus));
    r.set(
        "lease",
        json!({"id": LEASE, "cpus": info.cpus, "gpus": info.gpus, "memory_mib": info.memory_mib,
               "address": info.address, "ready_ms": ordered.elapsed().as_millis()}),
    );
    r.set("confinement", confinement(&a.out, &agent.log()));

    let ran = tokio::task::block_in_place(|| measure::measure(a, r, addr, &info.gpus, &busy, &dir));
    r.set("gpu_signals", gpu_signals(&mut sched).await);

    // Teardown: the lease ends, its cgroup goes, harvestd stops.
    let destroyed = sched
        .send(v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
            lease_id: LEASE.into(),
            reason: "gpu-check done".into(),
            cause: v1::EndCause::Released as i32,
        }))
        .await;
    let ended = if destroyed {
        sched.wait_for(WAIT, |m| event_of(m, LEASE)).await
    } else {
        None
    };
    let groups_left: Vec<String> = lease_groups()
        .into_iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    r.set(
        "teardown",
        json!({"ended": format!("{ended:?}"), "lease_groups_left": groups_left}),
    );
    if !groups_left.is_empty() {
        r.error("teardown", format!("lease groups left: {groups_left:?}"));
    }
    drop(agent);
    sched.stop().await;
    Ok(ran)
}

/// The GPU signals harvestd's interference monitor read while the function and the batch ran
/// (NVML's utilization, memory in use and clock event reasons per GPU, memory per MIG
/// instance), from the slot reports queued meanwhile: per signal its largest and latest value,
/// the clock event reasons seen at least once, and what the monitor could not read.
async fn gpu_signals(sched: &mut FakeScheduler) -> Value {
    let mut max = std::collections::BTreeMap::<String, f64>::new();
    let mut last = std::collections::BTreeMap::<String, f64>::new();
    let mut unavailable = Vec::new();
    let mut reports = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    // Only what is queued already (a zero timeout still takes a ready message), for 2 s at most.
    while Instant::now() < deadline {
        let Some(state) = sched
            .wait_for(Duration::ZERO, |m| slots(m)?.interference)
            .await
        else {
            break;
        };
        reports += 1;
        unavailable = state.unavailable;
        for (k, v) in state.signals {
            if k.starts_with("gpu.") || k.starts_with("mig.") {
                let m = max.entry(k.clone()).or_insert(v);
                *m = m.max(v);
                last.insert(k, v);
            }
        }
    }
    let reasons: Vec<&str> = max
        .iter()
        .filter(|(k, v)| k.contains(".throttle.") && **v > 0.0)
        .map(|(k, _)| k.as_str())
        .collect();
    json!({"reports": reports, "throttle_reasons_seen": reasons, "max": max, "last": last,
           "unavailable": unavailable})
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", p.display()))
}

/// The lease's groups: v1 one per hierarchy, v2 one.
fn lease_groups() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let rel = format!("{PARENT}/lease_{LEASE}");
    if root.join("cgroup.controllers").exists() {
        vec![root.join(rel)]
    } else {
        ["cpuset", "memory", "cpu", "freezer", "pids", "devices"]
            .iter()
            .map(|c| root.join(c).join(&rel))
            .collect()
    }
}

/// The cgroup version, what harvestd says it cannot enforce, and (v1) the lease's devices list.
fn confinement(out: &Path, log: &str) -> Value {
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let unenforced: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot enforce it on this host"))
        .collect();
    let devices_unconfined = unenforced
        .iter()
        .any(|l| l.contains("limit=\"devices\"") || l.contains("limit=devices"));
    let list_path = Path::new("/sys/fs/cgroup/devices")
        .join(PARENT)
        .join(format!("lease_{LEASE}"))
        .join("devices.list");
    let list = std::fs::read_to_string(&list_path).ok();
    if let Some(list) = &list {
        let _ = std::fs::write(out.join("lease-devices.list"), list);
    }
    json!({
        "cgroup": if v2 { "v2" } else { "v1" },
        "devices_reported_unconfined_by_harvestd": devices_unconfined,
        "harvestd_cannot_enforce": unenforced,
        "lease_devices_list": list.map(|l| l.lines().map(str::to_owned).collect::<Vec<_>>()),
    })
}
