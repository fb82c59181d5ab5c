//! harvestd's executors next to a real Slurm job: with `sbatch -w n1 -c1` running, a lease
//! ordered by a fake scheduler gets an executor on CPUs the job does not hold, in its own cgroup,
//! as a non-root user; a crash, a memory hog and a spinning function each give their error, the
//! next invocation works, the agent survives and the job is untouched.
//!
//! Needs `deploy/local-cluster up --nodes 2`, root, `cc`, and a built `harvestd` and
//! `harvest-executor` (`cargo build -p harvest-agent -p harvest-executor`; scripts/test-all
//! builds the workspace first). The test starts its own harvestd for n1 (own run and state
//! directories, lease groups under `harvest_systest_<pid>` so the cluster's own agent is never
//! touched) talking to a fake scheduler on 127.0.0.1, and stops it by pid. It creates the regular
//! user `harvest-user` when it is missing.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use harvest_agent::fake_scheduler::{create_order, event_of, slots};
use harvest_client::invoke::{ExecutorConnection, InvokeError, Polling};
use harvest_core::invoke::ErrorCode;
use harvest_core::{CpuSet, NodeView};
use harvest_proto::v1;
use harvest_system_tests::fixtures::{Scratch, build_library, field, lease_secret, test_user};
use harvest_system_tests::{LocalCluster, poll};

mod common;
use common::Agent;

const WAIT: Duration = Duration::from_secs(30);

fn invoke(
    addr: SocketAddr,
    f: &str,
    input: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, InvokeError> {
    ExecutorConnection::connect(addr, Polling::Block, lease_secret())?.invoke(f, input, timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local cluster: deploy/local-cluster up --nodes 2, root, cc, built harvestd and harvest-executor"]
async fn an_executor_beside_a_batch_job_uses_only_idle_cpus_and_survives_failing_functions()
-> Result<()> {
    let cluster = LocalCluster::from_env()?;
    let (uid, gid) = test_user()?;
    let dir = std::env::temp_dir().join(format!("harvest-executors-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _scratch = Scratch(dir.clone());
    // Lease directories live under the state dir: the lease's user must reach its own.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let library = std::fs::read(build_library(&dir)?)?;
    let parent = format!("harvest_systest_{}", std::process::id());

    let job = cluster.sbatch(&["-w", "n1", "-c1", "--wrap", "sleep 120"])?;
    job.wait_state("RUNNING", Duration::from_secs(30))?;
    // RUNNING comes a moment before slurmstepd makes the job's cgroup.
    let job_cg = poll(Duration::from_secs(10), || {
        Ok(cluster.job_cgroup("cpuset", "n1", job.id).ok())
    })?
    .with_context(|| format!("job {} has no cpuset cgroup on n1", job.id))?;
    let job_cpus: CpuSet = std::fs::read_to_string(job_cg.join("cpuset.cpus"))?
        .trim()
        .parse()?;

    let (mut agent, mut sched) =
        Agent::start(&cluster, &dir, &parent, "", "harvest_agent=debug", WAIT).await?;
    // The agent reports the job's CPUs as batch (it reads Slurm's cgroup tree).
    let batch = sched
        .wait_for(WAIT, |m| {
            let view: NodeView = (&slots(m)?.view?).into();
            job_cpus.is_subset(&view.cpus.batch).then_some(view)
        })
        .await;
    ensure!(
        batch.is_some(),
        "harvestd never reported job {}'s CPUs {job_cpus} as batch",
        job.id
    );

    let lease = "sys1";
    let order = create_order(
        lease,
        (uid, gid),
        64,
        library,
        5000,
        lease_secret().as_bytes(),
    );
    let info = match sched.start_executor(order, WAIT).await {
        Ok(info) => info,
        Err(other) => bail!("lease {lease}: {other:?}; harvestd's log:\n{}", agent.log()),
    };
    let lease_cpus: CpuSet = info.cpus.iter().copied().collect();
    ensure!(
        lease_cpus.len() == 1 && lease_cpus.is_disjoint(&job_cpus),
        "lease CPUs {lease_cpus} vs job CPUs {job_cpus}"
    );

    let addr: SocketAddr = info.address.parse()?;
    let out = String::from_utf8(invoke(addr, "whereami", b"", None)?)?;
    let exe = field(&out, "exe")?;
    ensure!(
        Path::new(exe)
            .file_name()
            .is_some_and(|n| n == "harvest-executor"),
        "runs in {exe}"
    );
    let cpus: CpuSet = field(&out, "cpus")?.parse()?;
    ensure!(
        cpus == lease_cpus && cpus.is_disjoint(&job_cpus),
        "allowed CPUs {cpus}, lease {lease_cpus}, job {job_cpus}"
    );
    ensure!(
        field(&out, "uid")? == uid.to_string(),
        "uid {} not {uid}",
        field(&out, "uid")?
    );
    let group = format!("/{parent}/lease_{lease}");
    ensure!(
        out.lines()
            .any(|l| l.contains(":cpuset:") && l.ends_with(&group))
            && out
                .lines()
                .any(|l| l.contains(":memory:") && l.ends_with(&group)),
        "not in its own cpuset and memory cgroup {group}: {out}"
    );

    for (f, input, timeout, code) in [
        ("crash", &b""[..], None, ErrorCode::Crashed),
        ("hog", &b"512"[..], None, ErrorCode::OutOfMemory),
        (
            "spin",
            &b""[..],
            Some(Duration::from_millis(500)),
            ErrorCode::Timeout,
        ),
    ] {
        match invoke(addr, f, input, timeout) {
            Err(e) if e.code() == Some(code) => {}
            other => bail!("{f}: want {code:?}, got {other:?}"),
        }
        ensure!(
            invoke(addr, "echo", f.as_bytes(), None)? == f.as_bytes(),
            "echo after {f}"
        );
    }
    ensure!(
        agent.child.try_wait()?.is_none(),
        "harvestd died; its log:\n{}",
        agent.log()
    );
    ensure!(
        cluster.job_state(job.id)?.as_deref() == Some("RUNNING"),
        "job {} is no longer running",
        job.id
    );
    ensure!(
        job_cg.join("cpuset.cpus").exists(),
        "job {}'s cgroup went away",
        job.id
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
    ensure!(
        !Path::new("/sys/fs/cgroup/cpuset")
            .join(group.trim_start_matches('/'))
            .exists(),
        "{group} is left"
    );
    job.cancel()?;
    drop(agent);
    sched.stop().await;
    Ok(())
}
