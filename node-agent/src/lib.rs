//! `harvestd`, harvest's node agent: one per Slurm node, it knows what the node has, what batch
//! jobs hold, and so what is idle and may be lent to functions. The batch job always wins: when
//! in doubt the agent holds more for batch, never less.
//!
//! Layout, from the OS up (every OS resource sits behind a trait with a real impl and a fake):
//! - [`discover`]: CPUs (hwloc), memory (sysinfo), GPUs (NVML, loaded at run time).
//! - [`cgroup`]: the one cgroup trait, with v1 and v2 backends detected from mountinfo.
//! - [`slurm`]: which jobs Slurm's cgroup tree shows on a node (paths decided in one place);
//!   [`scontrol`]: what only Slurm knows about them (GPUs, unconstrained memory).
//! - [`ledger`]: batch allocations per job and step, and all the idle-slot arithmetic.
//! - [`state`]: the ledger on disk, replaced atomically.
//! - [`lease`]: function leases in the ledger, and which idle CPUs a new one gets.
//! - [`reclaim`]: which executors leave a starting batch step's resources (move or evict).
//! - [`agent`]: plugin messages, reconcile passes and leases applied to the ledger (synchronous).
//! - [`executor`]: one harvest-executor per lease, in its cgroup, as its user (start, watch,
//!   stop, expire, re-adopt after a restart).
//! - [`session`]: the scheduler session (register, slot reports as heartbeat, orders, events).
//! - [`server`]: `harvestd run`: the plugin and query sockets and the reconcile loop (tokio).
//! - [`interference`]: interference monitoring and control (signals, detectors, the escalation
//!   ladder weight → quota → freeze → evict, the monitor task).
//! - [`stats`]: counters (reclaims, interference actions) and states sent with every report.
//! - [`metrics`]: Prometheus metrics over HTTP on `metrics_listen`.
//! - [`query`]: `harvestd status`: the query client and the table.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`fake_scheduler`]: a recording `AgentGateway` server for tests (never run by harvestd).
//!
//! The binary (`src/main.rs`) parses arguments, installs logging and calls [`server::run`].

pub mod agent;
pub mod cgroup;
pub mod config;
pub mod discover;
pub mod executor;
pub mod fake_scheduler;
pub mod interference;
pub mod lease;
pub mod ledger;
pub mod metrics;
pub mod query;
pub mod reclaim;
pub mod scontrol;
pub mod server;
pub mod session;
pub mod slurm;
pub mod state;
pub mod stats;
