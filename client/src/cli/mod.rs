//! The `harvest` command line: argument definitions and the commands, over the client library.
//!
//! - [`exit`]: failures and their exit codes.
//! - [`memory`]: `harvest memory`, memory leases.
//! - [`show`]: the tables printed without `--json`.
//! - [`top`]: `harvest top`, the cluster's picture refreshed in a terminal.

pub mod exit;
pub mod memory;
pub mod show;
pub mod top;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::failover;
use crate::identity::Munge;
use crate::invoke::Polling;
use crate::lease::{Lease, LeaseExt, LeaseRequest, Library, SchedulerClient};
use crate::locate::ClientConfig;
use exit::CliError;

/// harvest: run short functions in the idle cores, memory and GPUs of an HPC cluster's batch
/// nodes.
///
/// A lease holds cores and memory on one node for a while; its executor runs your functions
/// (C ABI: `uint32_t fn(void *in, uint32_t in_len, void *out)`, in a shared library) under the
/// lease's cgroup, as you. Batch jobs always win: a lease on a node a job needs is revoked.
///
/// Examples:
///   harvest nodes
///   harvest invoke --lib ./libf.so --fn square --cores 1 --mem 256M --input in.bin > out.bin
///   harvest lease acquire --lib ./libf.so --cores 2 --lifetime 10m --json
///   harvest invoke --lease ID --fn square --input -
///   harvest lease release ID
///   harvest memory acquire --size 1G --json
///   harvest memory write ID --offset 0 --input data.bin
///   harvest memory read ID --offset 0 --len 1M > data.bin
///
/// The scheduler's address comes from --scheduler, else $HARVEST_SCHEDULER
/// (`eval "$(deploy/local-cluster env)"` sets it), else `scheduler = "host:port"` in the client
/// configuration ($HARVEST_CONFIG, ~/.config/harvest/client.toml, /etc/harvest/client.toml).
/// With $HARVEST_CA (or `ca = "/path/ca.pem"` in that file) the client speaks TLS and verifies
/// the scheduler's certificate against that CA (deploy/local-cluster env sets it).
/// You are who munge says you are: each request carries a new munge credential made for it
/// and for the scheduler's uid ($HARVEST_SCHEDULER_UID or `scheduler_uid` in that file,
/// default 0); munged must run on this host.
/// Exit codes are listed in docs/cli.md (0 success, 3 scheduler unreachable, 5 no idle
/// resources, 10 crashed, 11 timed out, 12 out of memory, ...).
#[derive(Debug, Parser)]
#[command(version, about, verbatim_doc_comment)]
pub struct Args {
    /// The scheduler, `host:port` or `http://host:port` (overrides $HARVEST_SCHEDULER).
    #[arg(long, global = true)]
    pub scheduler: Option<String>,
    /// The client configuration file (TOML: scheduler, munge, munge_socket).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every node: its state (up, down) and CPUs, memory and GPUs by owner (batch, function,
    /// idle), as its agent reports them.
    Nodes {
        /// JSON: an array of harvestd's NodeView (name, cpus, memory_mib, gpus) plus state.
        #[arg(long)]
        json: bool,
    },
    /// Your leases: live ones and recently ended ones (with why they ended), then what other
    /// users' live leases hold together. Operators see every lease.
    Leases {
        /// JSON: an array of your leases (id, node, uid, user, cpus, memory_mib, state, ...).
        #[arg(long)]
        json: bool,
    },
    /// Acquire or release a lease.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Memory leases: borrow a region of a node's idle memory, write and read it by offset
    /// (docs/memory.md). A batch job that needs the memory takes it back, contents and all.
    #[command(subcommand)]
    Memory(memory::MemoryCommand),
    /// Invoke a function once and print its output bytes to stdout. Without --lease, acquires
    /// a lease for the call and releases it afterwards (also when the call fails). When a batch
    /// job takes the lease back (or its node goes down) during the call, retries it on a new
    /// lease elsewhere (unless --no-failover); a revocation that failover cannot cover fails
    /// with `LeaseRevoked: ... revoked: reclaimed by job N` and exit code 15.
    Invoke(InvokeArgs),
    /// The cluster in a terminal, refreshed: each node's CPUs as batch (B), function (F), idle
    /// (.) or reserved (R) cells, memory and GPUs by state, utilization since top started,
    /// live leases and recent revocations. The scheduler's web dashboard (its http_listen
    /// address) shows the same with the last hour.
    Top(top::TopArgs),
    /// Operators' actions (operator_uids / operator_gids in the scheduler's [access] table;
    /// root always): drain a node from harvesting, revoke any lease.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Check this node (or, from anywhere, the scheduler) and say what is wrong and how to fix
    /// it: Slurm and harvest's plugin in plugstack.conf, the cgroup mode and controllers,
    /// munge, each local harvestd and its ledger against Slurm's jobs, certificates and their
    /// expiry, clock skew with the scheduler, and whether the scheduler and every live lease's
    /// executor can be reached. Run it as root on a node for every check.
    /// Exit code 0 when every check is ok (skipped ones do not count), 20 when one failed, 21
    /// when one only warned.
    ///
    /// Examples:
    ///   harvest doctor
    ///   harvest doctor --node n1 --agent-config /etc/harvest/harvestd.toml --json
    ///   harvest doctor --scheduler-http sched1:6821
    #[command(verbatim_doc_comment)]
    Doctor(crate::doctor::probe::DoctorArgs),
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Stop placing leases on a node (Slurm is not touched: batch jobs still run there). Its
    /// live leases run on until they end, or end now with --revoke-leases. `harvest nodes`
    /// shows the node as `drained`.
    Drain {
        /// The node's name, as `harvest nodes` shows it.
        node: String,
        /// Also revoke the node's live leases now (their clients see cause `operator`).
        #[arg(long)]
        revoke_leases: bool,
        /// Why (shown in the revoked leases' end reason and the scheduler's log).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Allow placements on a drained node again.
    Undrain { node: String },
    /// End any user's lease now (state revoked, cause operator).
    Revoke {
        /// The lease's id.
        id: String,
        /// Why (shown to the lease's owner as its end reason).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Acquire a lease; prints it once its executor listens.
    Acquire {
        #[command(flatten)]
        res: ResourceArgs,
        /// JSON: the lease (id, node, cpus, executor_address, ...).
        #[arg(long)]
        json: bool,
    },
    /// Release a lease (yours; root may release any).
    Release {
        /// The lease's id, as `harvest leases` shows it.
        id: String,
    },
    /// Say you still use a lease: a lease with neither an invocation nor a renewal for its idle
    /// timeout (default 5 min) ends. Prints the lease as it is now (an ended one with why).
    Renew {
        /// The lease's id.
        id: String,
        /// JSON: the lease.
        #[arg(long)]
        json: bool,
    },
}

/// What a lease holds and runs.
#[derive(Debug, ClapArgs)]
pub struct ResourceArgs {
    /// The function library (a .so); its bytes are shipped to the node.
    #[arg(long, required_unless_present = "lib_on_node")]
    pub lib: Option<PathBuf>,
    /// Instead of --lib: a library path the node can read itself (a shared file system).
    #[arg(long, conflicts_with = "lib")]
    pub lib_on_node: Option<String>,
    /// Cores.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Memory in Slurm's notation (512M, 4G); default: the scheduler's per-core default.
    #[arg(long, value_parser = parse_mem)]
    pub mem: Option<u64>,
    /// GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// How long the lease lives (e.g. 30s, 10m); default: the scheduler's.
    #[arg(long, value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    /// How long the executor's workers busy-poll for the next request after each answer:
    /// `always` (rFaaS's hot invocations: the lowest latency, each leased core burnt while the
    /// lease waits), a window such as 250us or 1ms (hot through bursts, asleep between them), or
    /// `warm` (the default: workers sleep in poll; a call costs a wake-up, 5-10 µs more here).
    /// Pair `always` with a client that busy-polls too (Rust `Polling::Spin`, Python
    /// `spin=True`).
    #[arg(long, value_name = "always|warm|DURATION", value_parser = harvest_core::HotWindow::parse)]
    pub hot: Option<harvest_core::HotWindow>,
}

#[derive(Debug, ClapArgs)]
pub struct InvokeArgs {
    /// The function's name in the library.
    #[arg(long = "fn")]
    pub function: String,
    /// Use this existing lease instead of acquiring one.
    #[arg(long, conflicts_with_all = ["lib", "lib_on_node"])]
    pub lease: Option<String>,
    #[command(flatten)]
    pub res: InvokeResources,
    /// The input bytes: a file, or - for stdin (default: empty input).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The invocation's timeout (e.g. 500ms, 2s); default: the executor's (10 s).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Fail with LeaseRevoked (exit code 15) when the lease is revoked under the invocation,
    /// instead of retrying it on a new lease. Always the case with --lease.
    #[arg(long)]
    pub no_failover: bool,
    /// How long failover keeps trying to finish the invocation on new leases after the first
    /// revocation (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub failover_deadline: Duration,
}

/// [`ResourceArgs`] without the requirement of a library (for `invoke --lease`).
#[derive(Debug, ClapArgs)]
pub struct InvokeResources {
    /// The function library (a .so); its bytes are shipped to the node.
    #[arg(long)]
    pub lib: Option<PathBuf>,
    /// Instead of --lib: a library path the node can read itself.
    #[arg(long, conflicts_with = "lib")]
    pub lib_on_node: Option<String>,
    /// Cores.
    #[arg(long, default_value_t = 1)]
    pub cores: u32,
    /// Memory in Slurm's notation (512M, 4G).
    #[arg(long, value_parser = parse_mem)]
    pub mem: Option<u64>,
    /// GPUs.
    #[arg(long, default_value_t = 0)]
    pub gpus: u32,
    /// How long the lease lives; default: the scheduler's.
    #[arg(long, value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
}

fn parse_mem(s: &str) -> Result<u64, String> {
    harvest_core::parse_memory_mib(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    harvest_core::parse_duration(s).map_err(|e| e.to_string())
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.into();
    move |source| CliError::Io { what, source }
}

fn request(
    lib: Option<&PathBuf>,
    lib_on_node: Option<&String>,
    cores: u32,
    mem: Option<u64>,
    gpus: u32,
    lifetime: Option<Duration>,
) -> Result<LeaseRequest, CliError> {
    let library = match (lib, lib_on_node) {
        (Some(path), _) => Library::read(path)?,
        (None, Some(p)) => Library::Path(p.clone()),
        (None, None) => {
            return Err(CliError::Io {
                what: "no function library".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "pass --lib PATH (or --lib-on-node PATH, or --lease ID)",
                ),
            });
        }
    };
    let mut req = LeaseRequest::new(cores, library);
    req.memory_mib = mem.unwrap_or(0);
    req.gpus = gpus;
    req.lifetime = lifetime;
    Ok(req)
}

/// Runs a parsed command; `env` reads environment variables (a parameter for tests).
pub fn run(args: Args, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    let config = ClientConfig::find(args.config.as_deref(), env)?;
    if let Command::Doctor(a) = &args.command {
        return doctor(a, &config, args.scheduler.as_deref(), env);
    }
    let url = config.scheduler(args.scheduler.as_deref(), env)?;
    let munge = Munge {
        program: config
            .munge
            .clone()
            .unwrap_or_else(|| Munge::default().program),
        socket: config.munge_socket.clone(),
        scheduler_uid: config.scheduler_uid(env)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))?;
    let mut client = match config.ca(env) {
        Some(ca) => rt.block_on(SchedulerClient::connect_tls(&url, Arc::new(munge), &ca))?,
        None => rt.block_on(SchedulerClient::connect(&url, Arc::new(munge)))?,
    };
    let mut stdout = std::io::stdout().lock();
    match args.command {
        Command::Nodes { json: as_json } => {
            let nodes = rt.block_on(client.nodes())?;
            let text = if as_json {
                to_json(&nodes)
            } else {
                show::nodes(&nodes)
            };
            stdout
                .write_all(text.as_bytes())
                .map_err(io("cannot write to stdout"))?;
        }
        Command::Leases { json: as_json } => {
            let (leases, others) = rt.block_on(client.leases_and_others())?;
            let text = if as_json {
                to_json(&leases)
            } else {
                let mut text = show::leases(&leases);
                if let Some(others) = &others {
                    text.push_str(&show::others(others));
                }
                text
            };
            stdout
                .write_all(text.as_bytes())
                .map_err(io("cannot write to stdout"))?;
        }
        Command::Lease(LeaseCommand::Acquire { res, json: as_json }) => {
            let mut req = request(
                res.lib.as_ref(),
                res.lib_on_node.as_ref(),
                res.cores,
                res.mem,
                res.gpus,
                res.lifetime,
            )?;
            req.hot_window = res.hot;
            let lease = rt.block_on(client.acquire(&req))?;
            print_lease(&mut stdout, &lease, as_json)?;
        }
        Command::Lease(LeaseCommand::Release { id }) => {
            rt.block_on(client.release(&id))?;
        }
        Command::Lease(LeaseCommand::Renew { id, json: as_json }) => {
            let lease = rt.block_on(client.renew(&id))?;
            print_lease(&mut stdout, &lease, as_json)?;
        }
        Command::Memory(cmd) => memory::run(&rt, &mut client, cmd, &mut stdout)?,
        Command::Top(a) => top::run(&rt, &mut client, &url, &a, env)?,
        Command::Admin(AdminCommand::Drain {
            node,
            revoke_leases,
            reason,
        }) => {
            let revoked = rt.block_on(client.drain_node(&node, true, revoke_leases, &reason))?;
            let text = format!("node {node} drained from harvesting; {revoked} lease(s) revoked\n");
            stdout
                .write_all(text.as_bytes())
                .map_err(io("cannot write to stdout"))?;
        }
        Command::Admin(AdminCommand::Undrain { node }) => {
            rt.block_on(client.drain_node(&node, false, false, ""))?;
            let text = format!("node {node} open to harvesting again\n");
            stdout
                .write_all(text.as_bytes())
                .map_err(io("cannot write to stdout"))?;
        }
        Command::Admin(AdminCommand::Revoke { id, reason }) => {
            let lease = rt.block_on(client.revoke(&id, &reason))?;
            stdout
                .write_all(show::lease(&lease).as_bytes())
                .map_err(io("cannot write to stdout"))?;
        }
        Command::Doctor(_) => unreachable!("doctor runs before connecting"),
        Command::Invoke(a) => {
            let input = read_input(a.input.as_ref())?;
            let output = if let Some(id) = &a.lease {
                // GetLease: the lease with its secret, which only its owner gets.
                let lease = rt.block_on(client.get(id))?;
                match invoke_once(&lease, &a.function, &input, a.timeout) {
                    Ok(output) => output,
                    Err(CliError::Invoke(e)) if failover::may_be_revoked(&e) => {
                        let why = rt.block_on(failover::explain(
                            &mut client,
                            id,
                            failover::EXPLAIN_WAIT,
                        ))?;
                        return Err(match why {
                            Some(revocation) => CliError::Revoked {
                                revocation,
                                failover: Some(
                                    "no failover for an existing lease (--lease)".into(),
                                ),
                            },
                            None => CliError::Invoke(e),
                        });
                    }
                    Err(e) => return Err(e),
                }
            } else {
                let r = &a.res;
                let req = request(
                    r.lib.as_ref(),
                    r.lib_on_node.as_ref(),
                    r.cores,
                    r.mem,
                    r.gpus,
                    r.lifetime,
                )?;
                let policy = failover::Failover {
                    enabled: !a.no_failover,
                    deadline: a.failover_deadline,
                    polling: Polling::Block,
                };
                let done = rt.block_on(failover::invoke_with_failover(
                    &mut client,
                    &req,
                    &a.function,
                    &input,
                    a.timeout,
                    policy,
                    |r| {
                        let next = if policy.enabled {
                            "; retrying on a new lease"
                        } else {
                            ""
                        };
                        eprintln!("harvest: {r}{next}");
                    },
                ))?;
                if let Some(e) = &done.release_error {
                    eprintln!(
                        "harvest: warning: lease {} not released ({e}); it ends when idle",
                        done.lease.id
                    );
                }
                done.output
            };
            stdout
                .write_all(&output)
                .map_err(io("cannot write the output to stdout"))?;
            stdout
                .flush()
                .map_err(io("cannot write the output to stdout"))?;
        }
    }
    Ok(())
}

/// `harvest doctor`: prints the report; fails (with exit code 20 or 21) unless all is well.
fn doctor(
    a: &crate::doctor::probe::DoctorArgs,
    config: &ClientConfig,
    scheduler: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CliError> {
    use crate::doctor::Verdict;
    let report = crate::doctor::probe::run(a, config, scheduler, env);
    let text = if a.json {
        to_json(&report)
    } else {
        report.text()
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .map_err(io("cannot write to stdout"))?;
    match report.verdict {
        Verdict::Ok | Verdict::Skip => Ok(()),
        Verdict::Warn | Verdict::Fail => Err(CliError::Doctor {
            failed: report.count(Verdict::Fail),
            warned: report.count(Verdict::Warn),
        }),
    }
}

fn read_input(input: Option<&PathBuf>) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    match input {
        None => {}
        Some(p) if p.as_os_str() == "-" => {
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(io("cannot read the input from stdin"))?;
        }
        Some(p) => {
            buf = std::fs::read(p).map_err(io(format!("cannot read the input {}", p.display())))?;
        }
    }
    Ok(buf)
}

fn invoke_once(
    lease: &Lease,
    function: &str,
    input: &[u8],
    timeout: Option<Duration>,
) -> Result<Vec<u8>, CliError> {
    let mut conn = lease.connect(Polling::Block)?;
    Ok(conn.invoke(function, input, timeout)?)
}

/// A lease as `--json` (pretty JSON) or as the one-line summary people read.
fn print_lease(out: &mut dyn Write, lease: &Lease, json: bool) -> Result<(), CliError> {
    let text = if json {
        to_json(lease)
    } else {
        show::lease(lease)
    };
    out.write_all(text.as_bytes())
        .map_err(io("cannot write to stdout"))
}

/// Pretty JSON with a final newline.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("plain data serializes");
    s.push('\n');
    s
}
