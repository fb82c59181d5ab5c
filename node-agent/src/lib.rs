//! `harvestd`, harvest's node agent: one per Slurm node, it knows what the node has, what batch
//! jobs hold, and so what is idle and may be lent to functions. The batch job always wins: when
//! in doubt the agent holds more for batch, never less.
//!
//! Each piece of state has one owner, and dependencies point one way (domain ← services ← io ←
//! server); no module imports [`server`]. From the OS up (every OS resource sits behind a trait
//! with a real impl and a fake):
//! - [`discover`]: CPUs (hwloc), memory (sysinfo), GPUs (NVML, loaded at run time).
//! - [`cgroup`]: the one cgroup trait, with v1 and v2 backends detected from mountinfo.
//! - [`slurm`]: which jobs Slurm's cgroup tree shows on a node (paths decided in one place);
//!   [`scontrol`]: what only Slurm knows about them (GPUs, unconstrained memory).
//!
//! Domain (pure, synchronous, no I/O):
//! - [`ledger`]: batch allocations per job and step, and all the idle-slot arithmetic.
//! - [`lease`]: function leases in the ledger, and which idle CPUs a new one gets.
//! - [`reclaim`]: which executors leave a starting batch step's resources (move or evict);
//!   [`reclaimer`] carries that out on the step-start path.
//! - [`agent`]: plugin messages, lease changes and reconcile passes applied to the ledger.
//!
//! Services (tasks that own state and take messages):
//! - [`ledger_task`]: the one owner of the ledger; snapshots on a watch; the saver off the hot path.
//! - [`state`]: the ledger on disk, replaced atomically (behind the [`state::Store`] trait).
//! - [`leases`]: one task per lease, the only writer of its cgroup and executor (start, watch,
//!   move, control, stop, evict, re-adopt after a restart).
//! - [`interference`]: interference monitoring and control (signals, detectors, the escalation
//!   ladder weight → quota → freeze → evict, the monitor task; controls go to the lease tasks).
//! - [`reconcile`]: the periodic loops that read Slurm's view first and then hand it in.
//! - [`stats`]: counters (reclaims, interference actions) and states sent with every report.
//!
//! I/O (readers of snapshots, senders of commands):
//! - [`sockets`]: the plugin and query sockets.
//! - [`session`]: the scheduler session (register, slot reports as heartbeat, orders, events).
//! - [`metrics`]: Prometheus metrics over HTTP on `metrics_listen`.
//! - [`query`]: `harvestd status`: the query client and the table.
//!
//! - [`reclaimer`]: carries a reclaim plan out on the step-start path (evictions, moves).
//! - [`sources`]: what harvestd reads the node from (cgroups, scontrol, processes).
//!
//! Wiring: [`server`] (`harvestd run`), [`config`] (the TOML configuration and its defaults;
//! [`config_error`] its error type and duration format).
//! [`fake_scheduler`]: a recording `AgentGateway` server for tests (never run by harvestd).
//!
//! The binary (`src/main.rs`) parses arguments ([`cli`], which the man page is made from too),
//! installs logging and calls [`server::run`].

pub mod agent;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod config_error;
pub mod discover;
pub mod fake_scheduler;
pub mod interference;
pub mod lease;
pub mod leases;
pub mod ledger;
pub mod ledger_task;
pub mod metrics;
pub mod query;
pub mod reclaim;
pub mod reclaimer;
pub mod reconcile;
pub mod scontrol;
pub mod server;
pub mod session;
pub mod slurm;
pub mod sockets;
pub mod sources;
pub mod state;
pub mod stats;
