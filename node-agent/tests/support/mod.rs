//! Shared by the black-box tests: a real harvestd process with its own run and state dirs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Mutual TLS for a test: a CA in `dir`, the scheduler's server settings and the agent
/// configuration lines (`tls_ca`, `tls_cert`, `tls_key`) for `node`.
pub fn tls(dir: &Path, node: &str) -> (tonic::transport::ServerTlsConfig, String) {
    let pki = harvest_proto::tls::testing::Pki::new(dir, "test");
    let server = pki.server();
    let agent = pki.node(node);
    let server_tls = tonic::transport::ServerTlsConfig::new()
        .identity(
            harvest_proto::tls::read_identity(("cert", &server.cert), ("key", &server.key))
                .unwrap(),
        )
        .client_ca_root(harvest_proto::tls::read_ca("ca", &pki.ca()).unwrap());
    let lines = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        pki.ca().display().to_string(),
        agent.cert.display().to_string(),
        agent.key.display().to_string()
    );
    (server_tls, lines)
}

/// A `harvestd run` started by the test, stopped by pid (SIGTERM, then SIGKILL) on drop.
pub struct Harvestd {
    pub child: Child,
    pub node: String,
    pub dir: PathBuf,
}

impl Harvestd {
    /// Starts harvestd for `node` with `config` (TOML) in `dir`, talking to `scheduler`.
    pub fn start(dir: &Path, node: &str, scheduler: &str, config: &str) -> Self {
        let conf = dir.join("agent.toml");
        // Executors on loopback: harvestd's defaults bind every interface and advertise the host
        // name's address, which a test must never hand out.
        std::fs::write(
            &conf,
            format!("executor_bind_address = \"127.0.0.1\"\n{config}"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("harvestd-{node}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_harvestd"))
            .args(["run", "--node", node, "--scheduler", scheduler])
            .arg("--config")
            .arg(&conf)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", "harvest_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            node: node.to_owned(),
            dir: dir.to_path_buf(),
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("harvestd-{}.log", self.node)))
            .unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Harvestd {
    fn drop(&mut self) {
        if self.alive() {
            self.kill();
        }
    }
}
