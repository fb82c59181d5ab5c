//! `harvest-experiments`: the trace-driven simulator and benchmarks, one subcommand each.
//!
//! Each subcommand is a module in `harvest_experiments::cmd` with an `Args` and a `run_cmd`; add
//! one with a variant here.

use clap::{Parser, Subcommand};
use harvest_experiments::cmd;

/// harvest's benchmarks and experiments.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulate a batch trace with functions harvesting idle resources under one policy.
    Simulate(cmd::simulate::Args),
    /// Run the same workload under each placement policy and tabulate the results.
    ComparePolicies(cmd::compare::Args),
    /// Placement decision latency at scale for every policy, beside a scan baseline.
    BenchPlacement(cmd::bench::Args),
    /// The simulator's events/s at scale: replay (the baseline), batch only and with harvest
    /// on one workload, in one run.
    BenchSim(cmd::bench_sim::Args),
    /// Invocation round trip, hot and warm, beside raw TCP ping-pong and srun, in one run.
    Latency(cmd::latency::Args),
    /// Batch-job slowdown beside aggressive functions, without and with interference control,
    /// on the real local cluster.
    Interference(cmd::interference::Args),
    /// Reclaim latency and the step-start delay it adds, on the real local cluster: steps
    /// started onto CPUs that spinning functions hold, beside steps on idle CPUs.
    Reclaim(cmd::reclaim::Args),
    /// Memory leases on the real local cluster: 4 KiB read latency and streaming GB/s beside
    /// raw TCP, and a batch job's slowdown beside a remote client streaming to its node's memory
    /// at increasing rates, without and with interference control.
    RemoteMemory(cmd::remote_memory::Args),
    /// N concurrent clients acquiring leases and invoking, while batch jobs start and end at
    /// random, on the real local cluster; every invocation's outcome recorded.
    Load(cmd::faults::LoadArgs),
    /// Faults injected under that load (killed daemons, executors and workers, a stopped agent,
    /// slurmd restart, drain, OOM, full disk), with the invariants checked after each.
    Faults(cmd::faults::Args),
    /// The same work through harvest (Rust and Python clients), srun steps and Parsl
    /// (HighThroughputExecutor + SlurmProvider) on the local cluster, in one run: latency,
    /// throughput, time to the first result, CPU used by each framework.
    ComparePeers(cmd::peers::Args),
    /// The paper's offloading example: a job prices Black-Scholes options on its own cores and
    /// on harvest functions beside it; timings of each alone and both together.
    Offload(cmd::offload::Args),
    /// (internal) The offload experiment's application, run as a job step.
    #[command(hide = true)]
    OffloadApp(cmd::offload::AppArgs),
    /// (internal) compare-peers' Rust client, run as an ordinary user.
    #[command(hide = true)]
    PeersClient(cmd::peers::PeersClientArgs),
    /// (internal) The load's clients, run as an ordinary user.
    #[command(hide = true)]
    LoadClient(cmd::faults::LoadClientArgs),
    /// (internal) The function client of the interference experiment.
    #[command(hide = true)]
    InterferenceClient(cmd::interference::ClientArgs),
    /// (internal) The remote-memory experiment's memory client, run as an ordinary user.
    #[command(hide = true)]
    RemoteMemoryClient(cmd::remote_memory::MemoryClientArgs),
    /// (internal) A harvest-executor, for the latency benchmark.
    #[command(hide = true)]
    ServeExecutor(harvest_executor::cli::Args),
    /// (internal) A raw TCP echo server, the latency benchmark's floor.
    #[command(hide = true)]
    RawEchoServer(cmd::latency::RawEchoArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Simulate(a) => cmd::simulate::run_cmd(a),
        Command::ComparePolicies(a) => cmd::compare::run_cmd(a),
        Command::BenchPlacement(a) => cmd::bench::run_cmd(a),
        Command::BenchSim(a) => cmd::bench_sim::run_cmd(a).map(|_| ()),
        Command::Latency(a) => cmd::latency::run_cmd(a),
        Command::Interference(a) => cmd::interference::run_cmd(a),
        Command::Reclaim(a) => cmd::reclaim::run_cmd(a),
        Command::RemoteMemory(a) => cmd::remote_memory::run_cmd(a),
        Command::RemoteMemoryClient(a) => cmd::remote_memory::run_memory_client(a),
        Command::Load(a) => cmd::faults::run_load(a),
        Command::Faults(a) => cmd::faults::run_cmd(a),
        Command::ComparePeers(a) => cmd::peers::run_cmd(a),
        Command::PeersClient(a) => cmd::peers::run_peers_client(a),
        Command::Offload(a) => cmd::offload::run_cmd(a),
        Command::OffloadApp(a) => cmd::offload::run_app(a),
        Command::LoadClient(a) => cmd::faults::run_load_client(a),
        Command::InterferenceClient(a) => cmd::interference::run_client(a),
        Command::ServeExecutor(a) => harvest_executor::cli::run(a),
        Command::RawEchoServer(a) => cmd::latency::raw_echo_server(a),
    }
}
