//! A lease's limits hold on the real cluster (issue 15): a function that makes threads without
//! bound stops at the lease's pids limit while `srun -w n1 true` still starts; a function that
//! opens a GPU device node it was not lent is refused with EPERM by the devices cgroup (fake
//! `/dev/nvidia0` and `/dev/nvidia1` made with mknod in a scratch `dev_root`); the lease's memory
//! limit covers swap (memsw); a function that prints without end leaves at most the log cap in
//! `executor.log`.
//!
//! The local cluster lends no GPUs yet (no NVML on these machines; issue 20), so the lease gets
//! none and both nodes are refused; that a lent node passes the devices cgroup is shown with a
//! real cgroup by node-agent/tests/cgroup_real.rs.
//!
//! Needs `deploy/local-cluster up --nodes 2`, root, `cc`, `mknod`, and a built `harvestd` and
//! `harvest-executor`. Like executors.rs, the test starts its own harvestd for n1 (own run and
//! state directories, lease groups under `harvest_limits_<pid>`) talking to a fake scheduler on
//! 127.0.0.1, and stops it by pid; functions run as the regular user `harvest-user`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harvest_agent::fake_scheduler::{create_order, event_of};
use harvest_client::invoke::{ExecutorConnection, InvokeError, Polling};
use harvest_proto::v1;
use harvest_system_tests::fixtures::{Scratch, build_library, lease_secret, test_user};
use harvest_system_tests::{LocalCluster, poll};

mod common;
use common::{Agent, HIERARCHIES};

const WAIT: Duration = Duration::from_secs(30);
/// The lease's pids limit in this test (far below pid_max, 32768 here).
const PIDS_MAX: u32 = 64;
/// The executor log's cap in this test.
const LOG_CAP: u64 = 64 * 1024;

fn invoke(addr: SocketAddr, f: &str, input: &[u8]) -> Result<String, InvokeError> {
    let out = ExecutorConnection::connect(addr, Polling::Block, lease_secret())?
        .invoke(f, input, None)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `dir/nvidia<minor>`: a character device node with NVIDIA's major, readable by everyone.
fn fake_gpu(dir: &Path, minor: u32) -> Result<PathBuf> {
    let path = dir.join(format!("nvidia{minor}"));
    let out = Command::new("mknod")
        .arg("-m")
        .arg("0666")
        .arg(&path)
        .args(["c", "195", &minor.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "mknod {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2, root, cc, mknod, built harvestd and harvest-executor"]
async fn a_thread_bomb_stops_at_the_pids_limit_and_a_gpu_node_not_lent_is_refused() -> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let (uid, gid) = test_user()?;
    let scratch = Scratch::new("harvest-limits-test")?;
    let dir = scratch.0.clone();
    let library = std::fs::read(build_library(&dir)?)?;
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev)?;
    std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755))?;
    let gpus = [fake_gpu(&dev, 0)?, fake_gpu(&dev, 1)?];
    let parent = format!("harvest_limits_{}", std::process::id());

    let extra = format!(
        "lease_pids_max = {PIDS_MAX}\ndev_root = {:?}\nexecutor_log_max_bytes = {LOG_CAP}\n",
        dev.display().to_string()
    );
    let (agent, mut sched) =
        Agent::start(&cluster, &dir, &parent, &extra, "harvest_agent=info", WAIT).await?;
    // The start log says what this host enforces.
    let log = agent.log();
    ensure!(
        log.contains("lease groups enforce it") && log.contains("limit=\"pids\""),
        "harvestd did not report its confinement at start:\n{log}"
    );

    let lease = "lim1";
    let memory_mib = 64u64;
    let order = create_order(
        lease,
        (uid, gid),
        memory_mib,
        library,
        30_000,
        lease_secret().as_bytes(),
    );
    let info = match sched.start_executor(order, WAIT).await {
        Ok(info) => info,
        Err(other) => bail!("lease {lease}: {other:?}; harvestd's log:\n{}", agent.log()),
    };
    let addr: SocketAddr = info.address.parse()?;
    let group = |ctl: &str| {
        Path::new("/sys/fs/cgroup")
            .join(ctl)
            .join(&parent)
            .join(format!("lease_{lease}"))
    };
    let read = |p: PathBuf| -> Result<String> {
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_owned())
    };

    // (c) The group's memory limit covers swap where the kernel accounts it.
    ensure!(read(group("pids").join("pids.max"))? == PIDS_MAX.to_string());
    let memsw = group("memory").join("memory.memsw.limit_in_bytes");
    if memsw.exists() {
        ensure!(
            read(memsw)? == (memory_mib << 20).to_string(),
            "memory.memsw.limit_in_bytes is not the memory limit"
        );
    } else {
        ensure!(
            agent.log().contains("swapaccount=1"),
            "no memsw and no warning about it in harvestd's log"
        );
    }

    // (a) The thread bomb, holding its threads for 3 s: while it is at the limit, a batch step
    // on the same node starts.
    let bomb = std::thread::spawn(move || invoke(addr, "threads", b"3000"));
    let current = group("pids").join("pids.current");
    let full = poll(Duration::from_secs(20), || {
        Ok((read(current.clone())?.parse::<u32>()? >= PIDS_MAX).then_some(()))
    })?;
    ensure!(full.is_some(), "the lease never reached its pids limit");
    let srun = cluster
        .command("timeout")
        .args(["60", "srun", "-w", "n1", "true"])
        .output()?;
    ensure!(
        srun.status.success(),
        "srun -w n1 true failed beside the thread bomb: {}",
        String::from_utf8_lossy(&srun.stderr)
    );
    let report = bomb.join().expect("the invoking thread")?;
    let made: u32 = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("threads="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no threads= in {report:?}"))?;
    // The supervisor and the worker hold two of the group's tasks.
    ensure!(
        made <= PIDS_MAX - 2 && report.ends_with("errno=11"),
        "the bomb made {made} threads under a limit of {PIDS_MAX}: {report}"
    );
    ensure!(
        invoke(addr, "echo", b"after")? == "after",
        "the executor after the bomb"
    );

    // (b) GPU device nodes the lease was not lent: refused by the devices cgroup (EPERM = 1;
    // without it the open gets ENXIO, 6, as no driver is behind the fake nodes).
    for gpu in &gpus {
        let path = gpu.to_str().context("utf-8 path")?;
        let got = invoke(addr, "open_path", path.as_bytes())?;
        ensure!(got == "errno=1", "opening {path}: {got}");
    }
    ensure!(invoke(addr, "open_path", b"/dev/null")? == "opened");

    // The log keeps at most its cap of what the function prints (1 MiB here), and says so.
    ensure!(invoke(addr, "chatter", b"1024")? == "written");
    let log_file = dir.join("state/leases").join(lease).join("executor.log");
    let truncated = poll(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        Ok(text
            .contains("[harvest: log truncated after")
            .then_some(text))
    })?
    .context("executor.log never said it was truncated")?;
    ensure!(
        (truncated.len() as u64) < LOG_CAP + 512,
        "executor.log holds {} bytes, cap {LOG_CAP}",
        truncated.len()
    );

    ensure!(
        sched
            .send(v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                lease_id: lease.into(),
                reason: "test done".into(),
                cause: v1::EndCause::Released as i32,
            }))
            .await
    );
    let ended = sched.wait_for(WAIT, |m| event_of(m, lease)).await;
    ensure!(
        ended == Some(v1::executor_event::Event::Exited("test done".into())),
        "{ended:?}"
    );
    for ctl in HIERARCHIES {
        ensure!(!group(ctl).exists(), "{} is left", group(ctl).display());
    }
    drop(agent);
    sched.stop().await;
    Ok(())
}
