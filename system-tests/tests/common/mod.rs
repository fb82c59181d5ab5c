//! A harvestd of the test's own for node n1 (own run and state directories, lease groups under
//! a parent named for the test, so the cluster's own agent is never touched), talking mutual TLS
//! to a fake scheduler on 127.0.0.1; executors.rs and security_limits.rs start theirs with it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use harvest_agent::fake_scheduler::{FakeScheduler, register};
use harvest_system_tests::LocalCluster;
use harvest_system_tests::fixtures::target_bin;

/// Every hierarchy a lease group is made in on v1.
pub const HIERARCHIES: [&str; 6] = ["cpuset", "memory", "cpu", "freezer", "pids", "devices"];

/// The test's harvestd and its lease groups; on drop the agent is killed by pid and anything
/// left in its groups is killed and removed.
pub struct Agent {
    pub child: Child,
    dir: PathBuf,
    parent: String,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("harvestd.log")).unwrap_or_default()
    }

    /// Starts harvestd for n1 in `dir` with lease groups under `parent`, its configuration's
    /// TLS keys plus `extra_config` (TOML lines), and waits for its Register.
    pub async fn start(
        cluster: &LocalCluster,
        dir: &Path,
        parent: &str,
        extra_config: &str,
        rust_log: &str,
        wait: Duration,
    ) -> Result<(Self, FakeScheduler)> {
        // Mutual TLS with a CA of the test's own.
        let pki = harvest_proto::tls::testing::Pki::new(dir, "agent");
        let (server, node) = (pki.server(), pki.node("n1"));
        let server_tls = tonic::transport::ServerTlsConfig::new()
            .identity(harvest_proto::tls::read_identity(
                ("cert", &server.cert),
                ("key", &server.key),
            )?)
            .client_ca_root(harvest_proto::tls::read_ca("ca", &pki.ca())?);
        let mut sched = FakeScheduler::start_tls("127.0.0.1:0".parse()?, Some(server_tls)).await?;
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "heartbeat_interval = \"200ms\"\nexecutor_bind_address = \"127.0.0.1\"\nexecutor_path = \"{}\"\nlease_cgroup_parent = \"{parent}\"\n\
                 tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n{extra_config}",
                target_bin("harvest-executor")?.display(),
                pki.ca().display().to_string(),
                node.cert.display().to_string(),
                node.key.display().to_string()
            ),
        )?;
        let child = cluster
            .command(target_bin("harvestd")?.to_str().context("utf-8 path")?)
            .args([
                "run",
                "--node",
                "n1",
                "--scheduler",
                &sched.url(),
                "--config",
            ])
            .arg(&config)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("harvestd.log"))?)
            .spawn()?;
        let agent = Self {
            child,
            dir: dir.to_path_buf(),
            parent: parent.to_owned(),
        };
        let reg = sched.wait_for(wait, register).await;
        ensure!(
            reg.is_some_and(|r| r.node == "n1"),
            "no Register from harvestd; its log:\n{}",
            agent.log()
        );
        Ok((agent, sched))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let roots: Vec<PathBuf> = HIERARCHIES
            .iter()
            .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&self.parent))
            .collect();
        for root in &roots {
            for lease in std::fs::read_dir(root).into_iter().flatten().flatten() {
                let procs = std::fs::read_to_string(lease.path().join("cgroup.procs"));
                for pid in procs.unwrap_or_default().lines() {
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
