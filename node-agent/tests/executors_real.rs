//! harvestd's executors for real: a fake scheduler orders a lease from a real harvestd, which
//! runs the real harvest-executor in real cgroups as a non-root user; the test invokes C
//! functions on it directly. Needs root (cgroups, setuid), a C compiler and the
//! regular user `harvest-user` (created with `useradd` when missing: harvestd refuses system accounts).

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harvest_agent::fake_scheduler::{FakeScheduler, create_order, event_of, register, slots};
use harvest_client::invoke::{ExecutorConnection, Polling};
use harvest_core::CpuSet;
use harvest_core::invoke::ErrorCode;
use harvest_proto::v1;
use support::Harvestd;

const WAIT: Duration = Duration::from_secs(20);
const TEST_USER: &str = "harvest-user";

/// The test library, compiled with `cc` into `dir`.
fn library(dir: &Path) -> Vec<u8> {
    let so = dir.join("libtestfns.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/functions.c");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&so)
        .arg(&src)
        .status()
        .expect("a C compiler (cc) is installed");
    assert!(status.success(), "compiling {}", src.display());
    std::fs::read(so).unwrap()
}

/// harvest-executor from the same target directory as harvestd (built here if missing).
fn executor_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_harvestd")).with_file_name("harvest-executor");
    if !path.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "harvest-executor"])
            .status()
            .unwrap();
        assert!(status.success(), "cargo build -p harvest-executor");
    }
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p harvest-executor`",
        path.display()
    );
    path
}

/// The uid and gid of the test user, created when missing.
fn test_user() -> (u32, u32) {
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, TEST_USER]).output().ok()?;
        String::from_utf8(out.stdout).ok()?.trim().parse().ok()
    };
    if id("-u").is_none() {
        let status = Command::new("useradd")
            .args(["-M", "-s", "/bin/sh", TEST_USER])
            .status()
            .unwrap();
        assert!(status.success(), "useradd {TEST_USER}");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}

fn cpus_allowed(pid: u32) -> CpuSet {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    CpuSet::parse_list(list.trim()).unwrap()
}

/// The test lease's secret: given to harvestd in CreateExecutor, proved on every connection.
fn lease_secret() -> &'static harvest_core::invoke::auth::LeaseSecret {
    static SECRET: std::sync::OnceLock<harvest_core::invoke::auth::LeaseSecret> =
        std::sync::OnceLock::new();
    SECRET.get_or_init(|| harvest_core::invoke::auth::LeaseSecret::random().unwrap())
}

fn invoke(
    addr: SocketAddr,
    function: &str,
    input: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, harvest_client::invoke::InvokeError> {
    let mut conn = ExecutorConnection::connect(addr, Polling::Block, lease_secret())?;
    conn.invoke(function, input, timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root and cgroups: creates harvest_<node> groups and runs executors as the user harvest-user"]
async fn a_lease_runs_its_functions_as_its_user_in_its_cgroup_and_survives_their_failures() {
    let (uid, gid) = test_user();
    let dir = tempfile::tempdir().unwrap();
    // The lease directory must be reachable by the lease's user.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let lib = library(dir.path());
    // /proc/<pid>/exe names the resolved path (the target directory may be a symlink).
    let executor = executor_binary().canonicalize().unwrap();
    let node = format!("exec{}", std::process::id());
    let _cleanup = CgroupGuard(node.clone());
    let (server_tls, tls_lines) = support::tls(dir.path(), &node);
    let mut sched = FakeScheduler::start_tls("127.0.0.1:0".parse().unwrap(), Some(server_tls))
        .await
        .unwrap();
    let config = format!(
        "heartbeat_interval = \"200ms\"\nreconnect_backoff_max = \"300ms\"\nexecutor_path = \"{}\"\nexecutor_stop_grace = \"1s\"\n{tls_lines}",
        executor.display()
    );
    let mut agent = Harvestd::start(dir.path(), &node, &sched.url(), &config);
    sched
        .wait_for(WAIT, register)
        .await
        .unwrap_or_else(|| panic!("no Register; log:\n{}", agent.log()));

    let lease = "L1";
    let order = v1::CreateExecutor {
        idle_timeout_ms: 45_000,
        request_id: "req-L1".into(),
        // 5 s as in system-tests: with swap limited too (memsw), a 64 MiB group reclaims its
        // file pages (the executor's own text) before the OOM kill, which takes seconds on a
        // loaded 2-core machine.
        ..create_order(lease, (uid, gid), 64, lib, 5000, lease_secret().as_bytes())
    };
    let ready = sched.start_executor(order, WAIT).await;
    let Ok(info) = ready else {
        panic!("{ready:?}; log:\n{}", agent.log())
    };
    let lease_cpus: CpuSet = info.cpus.iter().copied().collect();
    assert_eq!(lease_cpus.len(), 1);
    assert_eq!(info.uid, uid);
    assert_eq!(info.memory_mib, 64);
    // The view now holds the lease as function resources.
    let view = sched
        .wait_for(WAIT, |m| {
            slots(m)
                .and_then(|s| s.view)
                .filter(|v| v.cpus.as_ref().is_some_and(|c| !c.function.is_empty()))
        })
        .await
        .unwrap();
    let view: harvest_core::NodeView = (&view).into();
    assert_eq!(view.cpus.function, lease_cpus);
    assert!(view.cpus.idle.is_disjoint(&lease_cpus));
    assert_eq!(view.memory_mib.function, 64);

    let addr: SocketAddr = info.address.parse().unwrap();
    let echo = invoke(addr, "echo", b"hello harvest", None).unwrap();
    assert_eq!(echo, b"hello harvest");

    // Where it runs: harvest-executor, the lease's uid and gid with no extra groups, the lease's
    // CPUs, the lease's cgroup.
    let out = String::from_utf8(invoke(addr, "whereami", b"", None).unwrap()).unwrap();
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("exe={}", executor.display())),
        "{out}"
    );
    assert!(
        first.contains(&format!(" uid={uid} gid={gid} groups=0 ")),
        "{out}"
    );
    let cpus = first.split("cpus=").nth(1).unwrap().replace(',', " ");
    let cpus: CpuSet = cpus
        .split_whitespace()
        .map(|c| c.parse::<u32>().unwrap())
        .collect();
    assert_eq!(cpus, lease_cpus, "{out}");
    let group = format!("/harvest_{node}/lease_{lease}");
    assert!(
        out.lines()
            .any(|l| l.contains(":cpuset:") && l.ends_with(&group))
            || out
                .lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&group)),
        "{out}"
    );

    // The executor process itself, from outside.
    let pid: u32 = std::fs::read_to_string(format!("/sys/fs/cgroup/cpuset{group}/cgroup.procs"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup{group}/cgroup.procs")))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(cpus_allowed(pid), lease_cpus);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe.file_name().unwrap(), "harvest-executor");
    // exec-lease's limits hold across the exec: no privileges from execve, no core dumps,
    // bounded open files; the group caps its tasks, its swap and its devices (v1).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let limit = |name: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .take(2)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(limit("Max core file size"), ["0", "0"], "{limits}");
    let files = limit("Max open files");
    assert!(
        files.iter().all(|n| n.parse::<u64>().unwrap() <= 4096),
        "{limits}"
    );
    let v1 = Path::new("/sys/fs/cgroup/pids").join(group.trim_start_matches('/'));
    if v1.is_dir() {
        let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_owned();
        assert_eq!(read(v1.join("pids.max")), "256");
        let mem = Path::new("/sys/fs/cgroup/memory").join(group.trim_start_matches('/'));
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                read(mem.join("memory.memsw.limit_in_bytes")),
                (64u64 << 20).to_string()
            );
        }
        let devices = Path::new("/sys/fs/cgroup/devices").join(group.trim_start_matches('/'));
        let list = read(devices.join("devices.list"));
        assert!(
            list.lines().any(|l| l == "c 1:3 rw") && !list.contains("a *:*"),
            "{list}"
        );
    }

    // A crash, a function past its timeout and one past the lease's memory: each an explicit
    // error, and the next invocation works.
    let err = invoke(addr, "crash", b"", None).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Crashed), "{err}");
    assert_eq!(invoke(addr, "echo", b"1", None).unwrap(), b"1");
    let err = invoke(addr, "spin", b"", Some(Duration::from_millis(300))).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    assert_eq!(invoke(addr, "echo", b"2", None).unwrap(), b"2");
    let err = invoke(addr, "hog", b"256", None).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::OutOfMemory), "{err}");
    assert_eq!(invoke(addr, "echo", b"3", None).unwrap(), b"3");
    assert!(agent.alive(), "harvestd died:\n{}", agent.log());

    // harvestd crashes and restarts: the executor keeps running and is re-reported.
    agent.kill();
    let mut agent = Harvestd::start(dir.path(), &node, &sched.url(), &config);
    let reg = sched
        .wait_for(WAIT, register)
        .await
        .unwrap_or_else(|| panic!("no Register; log:\n{}", agent.log()));
    assert_eq!(reg.executors.len(), 1, "{reg:?}");
    assert_eq!(reg.executors[0].lease_id, lease);
    assert_eq!(reg.executors[0].address, info.address);
    // With what a scheduler that restarted or took over rebuilds the lease from (the ready
    // event carried none of it).
    let r = &reg.executors[0];
    assert_eq!(r.secret, lease_secret().as_bytes().to_vec());
    assert_eq!(
        (r.gid, r.idle_timeout_ms, r.request_id.as_str()),
        (gid, 45_000, "req-L1")
    );
    assert!(info.secret.is_empty(), "the ready event carries no secret");
    assert_eq!(invoke(addr, "echo", b"4", None).unwrap(), b"4");

    // Destroy: the executor, its cgroup and its directory go; the event says why.
    assert!(
        sched
            .send(v1::scheduler_message::Msg::Destroy(v1::DestroyExecutor {
                lease_id: lease.into(),
                reason: "released".into(),
                cause: v1::EndCause::Released as i32,
            }))
            .await
    );
    let ended = sched.wait_for(WAIT, |m| event_of(m, lease)).await;
    assert_eq!(
        ended,
        Some(v1::executor_event::Event::Exited("released".into())),
        "log:\n{}",
        agent.log()
    );
    assert!(
        std::fs::read_link(format!("/proc/{pid}/exe")).map_or(true, |e| e != executor),
        "the executor still runs"
    );
    for root in [
        "/sys/fs/cgroup/cpuset",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/devices",
        "/sys/fs/cgroup",
    ] {
        assert!(
            !Path::new(&format!("{root}{group}")).exists(),
            "{root}{group} is left"
        );
    }
    assert!(!dir.path().join("state/leases").join(lease).exists());
    assert!(invoke(addr, "echo", b"5", None).is_err());
    let status = agent
        .terminate(Duration::from_secs(10))
        .expect("harvestd exits on SIGTERM");
    assert!(status.success());
    sched.stop().await;
}

/// Removes `harvest_<node>` from every hierarchy, killing whatever a failed test left in it.
struct CgroupGuard(String);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let roots = ["cpuset", "memory", "cpu", "freezer", "pids", "devices", ""].map(|c| {
            Path::new("/sys/fs/cgroup")
                .join(c)
                .join(format!("harvest_{}", self.0))
        });
        for root in &roots {
            for lease in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let procs =
                    std::fs::read_to_string(lease.path().join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for root in &roots {
            for lease in std::fs::read_dir(root).into_iter().flatten().flatten() {
                while std::fs::remove_dir(lease.path()).is_err()
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = std::fs::remove_dir(root);
        }
    }
}
