//! `harvestd`'s command line (clap), in the library so that the packaging tool (harvest-xtask)
//! renders its man page from the very definition the binary parses.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::DEFAULT_RUN_DIR;

/// harvestd: harvest's node agent.
///
/// One harvestd runs per Slurm node. It learns every job step's CPUs, memory and GPUs from the
/// harvest SPANK plugin (and from Slurm's cgroup tree, so a restart forgets nothing) and keeps
/// the node's idle resources, which the rest of harvest lends to serverless functions.
///
/// Start with `harvestd discover` to see what the node has, run the agent with
/// `harvestd run --node n1`, and ask it with `harvestd status --node n1`.
/// Logging (on stderr): the level from RUST_LOG, else the file's log_level, else info; SIGHUP
/// re-reads log_level from the --config file. --log-format json (or the file's log_format)
/// writes one JSON object per line; under systemd, text lines carry syslog priorities and no
/// timestamps (journald adds them).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// Log format: text or json [default: the file's log_format, else text].
    #[arg(long, global = true, env = harvest_logging::FORMAT_ENV)]
    pub log_format: Option<harvest_logging::Format>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print this node's CPUs (hwloc), memory and GPUs (NVML).
    ///
    /// Without a GPU driver the GPUs are reported as unavailable, with the reason.
    Discover {
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Run the agent for one Slurm node until SIGTERM or SIGINT.
    ///
    /// Serves the plugin on <run-dir>/harvestd-<node>.sock (mode 0600) and status on
    /// <run-dir>/harvestd-<node>.query.sock, keeps its ledger in
    /// <state-dir>/ledger-<node>.json, and reconciles it with Slurm's cgroup tree every second.
    /// Example: harvestd run --node n1 --config /etc/harvest/harvestd.toml
    Run {
        /// The Slurm node name (as in slurm.conf's NodeName).
        #[arg(long)]
        node: String,
        /// A TOML configuration file (every key: docs/config.md); defaults apply without one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where the sockets go [default: $HARVEST_RUN_DIR, else the file's run_dir, else /run/harvest].
        #[arg(long, env = "HARVEST_RUN_DIR")]
        run_dir: Option<PathBuf>,
        /// Where the ledger is kept [default: the file's state_dir, else /var/lib/harvest].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The cgroup filesystem root [default: the file's cgroup_root, else /sys/fs/cgroup].
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// The scheduler's URL, e.g. http://127.0.0.1:7070 [default: the file's scheduler; none:
        /// standalone, no executors].
        #[arg(long, env = "HARVEST_SCHEDULER")]
        scheduler: Option<String>,
        /// Talk to the scheduler without TLS (sets the file's insecure_plaintext): whoever
        /// answers at its address can start executors here. Tests on a trusted host only.
        #[arg(long)]
        insecure_plaintext: bool,
    },
    /// Internal: joins a lease cgroup and becomes the executor (harvestd runs this itself).
    ///
    /// Writes its own pid to each --procs file, then execs PROGRAM as --uid/--gid with no
    /// supplementary groups.
    #[command(hide = true)]
    ExecLease {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        /// Stdin is the ready pipe's write end: pass it on as `--ready-fd N`, stdin /dev/null.
        #[arg(long)]
        ready_pipe: bool,
        /// A cgroup.procs file to join (repeat for each hierarchy).
        #[arg(long)]
        procs: Vec<PathBuf>,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Print the running agent's view of its node: CPUs, memory and GPUs by state.
    ///
    /// With --json, exactly harvest_core::NodeView: name, cpus.{total,batch,function,idle}
    /// (OS CPU ids), memory_mib.{...}, gpus.{...} (GPU indices).
    Status {
        /// The Slurm node name the agent serves.
        #[arg(long)]
        node: String,
        /// The agent's run directory.
        #[arg(long, env = "HARVEST_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to wait for the agent's answer, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
}
