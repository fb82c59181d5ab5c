//! The faults, each injected on the real local cluster and repaired the way an operator would:
//! `deploy/local-cluster up` starts again whatever daemon is missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::probe;
use crate::cluster::Cluster;

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// No fault: the load alone (the baseline).
    None,
    KillHarvestd,
    KillScheduler,
    KillExecutor,
    KillWorker,
    StopAgent,
    RestartSlurmd,
    DrainNode,
    OomFunction,
    FullDisk,
    /// kill-scheduler, kill-harvestd, kill-worker and drain-node at once.
    Combined,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::KillHarvestd,
        Fault::KillScheduler,
        Fault::KillExecutor,
        Fault::KillWorker,
        Fault::StopAgent,
        Fault::RestartSlurmd,
        Fault::DrainNode,
        Fault::OomFunction,
        Fault::FullDisk,
        Fault::Combined,
    ];

    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// How long an agent stays stopped: past the scheduler's heartbeat timeout (5 missed 1 s
/// heartbeats by default).
pub const STOP_AGENT_FOR: Duration = Duration::from_secs(8);
/// How long a node stays drained.
pub const DRAIN_FOR: Duration = Duration::from_secs(5);

/// What the injection did, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Injected {
    pub what: Vec<String>,
    /// How the system recovered (standby took over, restarted by up, ...).
    pub repair: Vec<String>,
}

/// The cluster's daemons and places, as the faults need them.
#[derive(Debug)]
pub struct Target<'a> {
    pub cluster: &'a Cluster,
    pub nodes: Vec<String>,
    pub run_dir: PathBuf,
    pub cluster_dir: PathBuf,
    pub cgroup_root: PathBuf,
    pub work: PathBuf,
    /// The load's OOM trigger (a counter client 0 watches).
    pub oom_file: PathBuf,
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|st| !st.trim_start().starts_with(['Z', 'X']))
    })
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()?;
    ensure!(st.success(), "kill -{sig} {pid} failed");
    Ok(())
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

impl Target<'_> {
    /// The pid `deploy/local-cluster` recorded for `name`, when that process is alive.
    pub fn pid(&self, name: &str) -> Option<u32> {
        let text = std::fs::read_to_string(self.run_dir.join(format!("{name}.pid"))).ok()?;
        let pid = text.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// `deploy/local-cluster up`: restarts what is missing. Returns what it said it started.
    pub fn up(&self) -> Result<String> {
        let said = self.cluster.repair()?;
        let started: Vec<&str> = said.lines().filter(|l| l.contains("started ")).collect();
        Ok(format!("up: {}", started.join("; ")))
    }

    /// The node with the most lease supervisors now (the first node when none has one).
    fn busiest(&self, skip: &[&str]) -> String {
        let execs = probe::executors(&self.cgroup_root);
        self.nodes
            .iter()
            .filter(|n| !skip.contains(&n.as_str()))
            .max_by_key(|n| {
                execs
                    .iter()
                    .filter(|e| !e.worker && e.node.as_deref() == Some(n.as_str()))
                    .count()
            })
            .cloned()
            .unwrap_or_else(|| self.nodes[0].clone())
    }

    fn kill_daemon(&self, name: &str, out: &mut Injected) -> Result<()> {
        let pid = self
            .pid(name)
            .with_context(|| format!("{name} is not running (no live recorded pid)"))?;
        signal(pid, "KILL")?;
        out.what.push(format!("SIGKILL {name} (pid {pid})"));
        Ok(())
    }

    fn kill_executor(&self, worker: bool, out: &mut Injected) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let execs = probe::executors(&self.cgroup_root);
            if let Some(e) = execs.iter().find(|e| e.worker == worker) {
                signal(e.pid, "KILL")?;
                let kind = if worker { "worker" } else { "executor" };
                out.what.push(format!(
                    "SIGKILL {kind} pid {} on {}",
                    e.pid,
                    e.node.as_deref().unwrap_or("?")
                ));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "no harvest-executor {} to kill",
                    if worker { "worker" } else { "supervisor" }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn scontrol_state(&self, node: &str, state: &str) -> Result<()> {
        let mut args = vec![
            "update".to_owned(),
            format!("nodename={node}"),
            format!("state={state}"),
        ];
        if state == "drain" {
            args.push("reason=faults-experiment".into());
        }
        let out = self.cluster.command("scontrol").args(&args).output()?;
        ensure!(
            out.status.success(),
            "scontrol update {node} state={state}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    /// Injects `fault` and repairs it; returns after the repair.
    pub fn inject(&self, fault: Fault) -> Result<Injected> {
        let mut out = Injected::default();
        match fault {
            Fault::None => {}
            Fault::KillHarvestd => {
                let node = self.busiest(&[]);
                self.kill_daemon(&format!("harvestd-{node}"), &mut out)?;
                std::thread::sleep(Duration::from_secs(3));
                out.repair.push(self.up()?);
            }
            Fault::KillScheduler => self.kill_scheduler(&mut out)?,
            Fault::KillExecutor => self.kill_executor(false, &mut out)?,
            Fault::KillWorker => self.kill_executor(true, &mut out)?,
            Fault::StopAgent => {
                let node = self.busiest(&[]);
                let name = format!("harvestd-{node}");
                let pid = self
                    .pid(&name)
                    .with_context(|| format!("{name} not running"))?;
                signal(pid, "STOP")?;
                out.what.push(format!(
                    "SIGSTOP {name} (pid {pid}) for {}s",
                    STOP_AGENT_FOR.as_secs()
                ));
                std::thread::sleep(STOP_AGENT_FOR);
                signal(pid, "CONT")?;
                out.repair.push(format!("SIGCONT {name}"));
            }
            Fault::RestartSlurmd => {
                let node = self.busiest(&[]);
                let name = format!("slurmd-{node}");
                let pid = self
                    .pid(&name)
                    .with_context(|| format!("{name} not running"))?;
                signal(pid, "TERM")?;
                let gone = wait_gone(pid, Duration::from_secs(20));
                out.what
                    .push(format!("SIGTERM {name} (pid {pid}; exited: {gone})"));
                out.repair.push(self.up()?);
            }
            Fault::DrainNode => {
                let node = self.busiest(&[]);
                self.scontrol_state(&node, "drain")?;
                out.what.push(format!("scontrol update {node} state=drain"));
                std::thread::sleep(DRAIN_FOR);
                self.scontrol_state(&node, "resume")?;
                out.repair
                    .push(format!("scontrol update {node} state=resume"));
            }
            Fault::OomFunction => {
                let n: u64 = std::fs::read_to_string(&self.oom_file)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0);
                std::fs::write(&self.oom_file, format!("{}\n", n + 1))?;
                out.what
                    .push("client 0 invokes hog (touches 1 GiB in a 64 MiB lease)".into());
            }
            Fault::FullDisk => self.full_disk(&mut out)?,
            Fault::Combined => {
                let a = self.busiest(&[]);
                let b = self.busiest(&[a.as_str()]);
                let (primary, _) = self.serving_scheduler()?;
                self.kill_daemon(primary, &mut out)?;
                self.kill_daemon(&format!("harvestd-{a}"), &mut out)?;
                let _ = self.kill_executor(true, &mut out);
                self.scontrol_state(&b, "drain")?;
                out.what.push(format!("scontrol update {b} state=drain"));
                std::thread::sleep(DRAIN_FOR);
                self.scontrol_state(&b, "resume")?;
                out.repair.push(format!("scontrol update {b} state=resume"));
                out.repair.push(self.up()?);
            }
        }
        Ok(out)
    }

    /// The recorded name of the scheduler that serves now (the primary): the first address of
    /// `HARVEST_SCHEDULER` that accepts a connection is the primary's (`up` starts the primary
    /// on the first, the standby on the second; a standby listens only once it is primary).
    pub fn serving_scheduler(&self) -> Result<(&'static str, &'static str)> {
        let addresses = self.cluster.require("HARVEST_SCHEDULER")?;
        let names = [
            ("harvest-scheduler", "harvest-scheduler-standby"),
            ("harvest-scheduler-standby", "harvest-scheduler"),
        ];
        for (i, url) in addresses.split(',').enumerate().take(2) {
            let hostport = url.trim().rsplit("://").next().unwrap_or_default();
            let serves = hostport
                .parse::<std::net::SocketAddr>()
                .ok()
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok()
                });
            if serves {
                return Ok(names[i]);
            }
        }
        bail!("no scheduler of HARVEST_SCHEDULER={addresses} accepts connections")
    }

    /// Leaves the cluster as `up` made it, with the primary (`harvest-scheduler`) serving and
    /// the standby waiting: tests after this one address the primary's dashboard. When the
    /// standby serves, it is SIGKILLed (the primary takes the lock over) and started again.
    pub fn restore_primary(&self) -> Result<String> {
        if self.serving_scheduler()?.0 == "harvest-scheduler" {
            return self.up();
        }
        let mut out = Injected::default();
        self.kill_daemon("harvest-scheduler-standby", &mut out)?;
        let until = Instant::now() + Duration::from_secs(15);
        while !matches!(self.serving_scheduler(), Ok(("harvest-scheduler", _))) {
            ensure!(
                Instant::now() < until,
                "the primary scheduler did not take over within 15 s of the standby's end"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.up()
    }

    fn kill_scheduler(&self, out: &mut Injected) -> Result<()> {
        let addresses = self.cluster.require("HARVEST_SCHEDULER")?.to_owned();
        let (primary, other) = self.serving_scheduler()?;
        let standby = self.pid(other);
        self.kill_daemon(primary, out)?;
        out.what.push(format!(
            "clients use HARVEST_SCHEDULER={addresses}; standby {}",
            match standby {
                Some(p) => format!("running (pid {p})"),
                None => "absent".into(),
            }
        ));
        // Leave the standby (if any) time to take over before up restarts the killed one.
        std::thread::sleep(Duration::from_secs(6));
        out.repair.push(if standby.is_some() {
            "standby took the primary lock; ".to_owned() + &self.up()?
        } else {
            self.up()?
        });
        Ok(())
    }

    /// A full disk for one agent's state directory: harvestd stopped, a 256 KiB tmpfs mounted
    /// over its --state-dir with the state copied in and the rest filled, harvestd started on
    /// it; the repair frees the space and moves the state back to the real directory.
    fn full_disk(&self, out: &mut Injected) -> Result<()> {
        let node = self.nodes.last().context("no node")?.clone();
        let name = format!("harvestd-{node}");
        let state = self.cluster_dir.join("agent").join(&node);
        let backup = self.work.join(format!("state-{node}"));
        let _ = std::fs::remove_dir_all(&backup);
        std::fs::create_dir_all(&backup)?;
        self.stop(&name)?;
        sh(&format!("cp -a {0}/. {1}/", q(&state), q(&backup)))?;
        sh(&format!(
            "mount -t tmpfs -o size=256k,mode=0700 harvest-faults {}",
            q(&state)
        ))?;
        let copied = sh(&format!("cp -a {0}/. {1}/", q(&backup), q(&state)));
        // Fill what is left (dd stops with ENOSPC).
        let _ = sh(&format!(
            "dd if=/dev/zero of={}/.fill bs=4k status=none 2>/dev/null; true",
            q(&state)
        ));
        out.what.push(format!(
            "{name} restarted on a full 256 KiB tmpfs state dir (state copied in: {})",
            copied.is_ok()
        ));
        match self.up() {
            Ok(s) => out.what.push(s),
            Err(e) => out.what.push(format!("up on the full disk failed: {e:#}")),
        }
        std::thread::sleep(Duration::from_secs(8));
        // Repair: free the space, then move the state back to the real directory.
        let _ = std::fs::remove_file(state.join(".fill"));
        self.stop(&name)?;
        let _ = std::fs::remove_dir_all(&backup);
        std::fs::create_dir_all(&backup)?;
        sh(&format!("cp -a {0}/. {1}/", q(&state), q(&backup)))?;
        sh(&format!("umount {}", q(&state)))?;
        sh(&format!("cp -a {0}/. {1}/", q(&backup), q(&state)))?;
        out.repair
            .push(format!("disk freed, state moved back; {}", self.up()?));
        Ok(())
    }

    /// SIGTERM a recorded daemon and wait for it to exit.
    fn stop(&self, name: &str) -> Result<()> {
        if let Some(pid) = self.pid(name) {
            signal(pid, "TERM")?;
            if !wait_gone(pid, Duration::from_secs(20)) {
                signal(pid, "KILL")?;
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        Ok(())
    }
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

fn sh(script: &str) -> Result<()> {
    let out = Command::new("sh").args(["-c", script]).output()?;
    ensure!(
        out.status.success(),
        "`{script}`: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
