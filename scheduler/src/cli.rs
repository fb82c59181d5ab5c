//! `harvest-scheduler`'s command line (clap), in the library so that the packaging tool
//! (harvest-xtask) renders its man page from the very definition the binary parses.

use std::path::PathBuf;

use clap::Parser;

/// harvest's cluster scheduler: leases idle cores, memory and GPUs on Slurm nodes to functions.
///
/// Serves the `Scheduler` service (clients: `harvest nodes`, `harvest lease acquire`, ...) and
/// the `AgentGateway` service (one harvestd per node) on one address. Clients authenticate with
/// munge credentials, so munged must run on this host with the cluster's key.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Configuration file (TOML); every key is described in docs/config.md.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Address to serve on (overrides the file's `listen`; default 0.0.0.0:6820, every
    /// interface).
    #[arg(long)]
    pub listen: Option<String>,
    /// host:port agents and clients reach this scheduler at (overrides the file's `advertise`;
    /// default: the listen address if a specific one, else this host's name's address). Must be
    /// an address of this host, or a name resolving to one.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Placement policy (overrides the file's `policy`): first-fit, best-fit, spread, ...
    #[arg(long)]
    pub policy: Option<String>,
    /// Serve the dashboard (/), its JSON (/api/cluster) and Prometheus metrics (/metrics) over
    /// HTTP on this address, e.g. 127.0.0.1:6821 (overrides the file's `http_listen`).
    #[arg(long)]
    pub http: Option<String>,
    /// Serve plaintext gRPC without certificates (sets the file's `insecure_plaintext`):
    /// anyone who reaches the port can act as any agent. For tests on a trusted host only.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Log format: text or json [default: the file's log_format, else text]. The level comes
    /// from RUST_LOG, else the file's log_level, else info; SIGHUP re-reads log_level.
    #[arg(long, env = harvest_logging::FORMAT_ENV)]
    pub log_format: Option<harvest_logging::Format>,
}
