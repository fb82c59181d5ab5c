//! Gathers the checks' inputs on the real system and runs the checks in order.
//!
//! Every path (plugstack.conf, mountinfo, the cgroup root, the agent's run directory, munged's
//! socket, certificate files) comes from a flag, the environment or the configuration, with the
//! usual location as the default.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use clap::Args as ClapArgs;
use harvest_core::NodeView;
use harvest_core::query::{LedgerJob, QueryReply, QueryRequest};
use harvest_core::step::{MAX_MESSAGE_BYTES, decode, encode};

use super::checks::{self, CgroupMode, LedgerSample, MungeProbe};
use super::{Check, Report};
use crate::identity::Munge;
use crate::lease::SchedulerClient;
use crate::locate::ClientConfig;

/// The agent's run directory when neither --run-dir nor $HARVEST_RUN_DIR says.
pub const DEFAULT_RUN_DIR: &str = "/run/harvest";
/// The agent configuration read for certificate paths when it exists.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/harvest/harvestd.toml";
/// The scheduler configuration read for certificate paths when it exists.
pub const DEFAULT_SCHEDULER_CONFIG: &str = "/etc/harvest/harvest-scheduler.toml";

/// `harvest doctor`'s options.
#[derive(Debug, Clone, ClapArgs)]
pub struct DoctorArgs {
    /// JSON: {"verdict": "ok|warn|fail", "checks": [{"name", "verdict", "summary", "fix"}]}.
    #[arg(long)]
    pub json: bool,
    /// A Slurm node whose harvestd and ledger to check (repeat for several) [default: the nodes
    /// whose NodeHostname is this host, per `scontrol show node`].
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// harvestd's run directory (its sockets) [default: $HARVEST_RUN_DIR, else /run/harvest].
    #[arg(long, env = "HARVEST_RUN_DIR", default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Slurm's plugstack configuration [default: PlugStackConfig from `scontrol show config`,
    /// else plugstack.conf beside slurm.conf].
    #[arg(long)]
    pub plugstack: Option<PathBuf>,
    /// What harvest's plugin library is called (a plugin line whose file name contains it).
    #[arg(long, default_value = "harvest_spank")]
    pub plugin: String,
    /// The cgroup mode the node must run: v1, v2, or auto [default: Slurm's cgroup.conf
    /// CgroupPlugin when it names one].
    #[arg(long, value_parser = ["v1", "v2", "auto"])]
    pub cgroup_mode: Option<String>,
    /// The cgroup filesystem root.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// The mount table read to detect the cgroup mode.
    #[arg(long, default_value = "/proc/self/mountinfo")]
    pub mountinfo: PathBuf,
    /// munged's socket [default: the client configuration's munge_socket, else munge's own].
    #[arg(long)]
    pub munge_socket: Option<PathBuf>,
    /// The unmunge program.
    #[arg(long, default_value = "unmunge")]
    pub unmunge: PathBuf,
    /// An agent configuration whose tls_ca and tls_cert to check (repeat for several)
    /// [default: /etc/harvest/harvestd.toml when it exists].
    #[arg(long = "agent-config")]
    pub agent_configs: Vec<PathBuf>,
    /// The scheduler configuration whose tls_cert and tls_client_ca to check [default:
    /// /etc/harvest/harvest-scheduler.toml when it exists].
    #[arg(long)]
    pub scheduler_config: Option<PathBuf>,
    /// Another certificate (PEM) to check (repeat for several).
    #[arg(long = "cert")]
    pub certs: Vec<PathBuf>,
    /// Warn when a certificate expires within this many days.
    #[arg(long, default_value_t = 30)]
    pub cert_warn_days: u64,
    /// The scheduler's HTTP address (its http_listen, `host:port` or `http://host:port/...`),
    /// whose Date header gives its clock [default: $HARVEST_DASHBOARD].
    #[arg(long, env = "HARVEST_DASHBOARD")]
    pub scheduler_http: Option<String>,
    /// Clock skew that warns, in seconds.
    #[arg(long, default_value_t = 2.0)]
    pub clock_warn_s: f64,
    /// Clock skew that fails, in seconds (munge credentials live 300 s).
    #[arg(long, default_value_t = 60.0)]
    pub clock_fail_s: f64,
    /// How long to wait before looking again at a ledger that disagrees with Slurm (a job that
    /// was starting or ending is no fault).
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub settle: Duration,
    /// How long each network probe and agent query may take.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    harvest_core::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs a program and returns its stdout, or why it failed (its stderr).
fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            one_line(&String::from_utf8_lossy(&out.stderr))
        ))
    }
}

/// A program's message on one line: its lines joined with "; ".
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `KEY = value` lines of `scontrol show config`.
fn slurm_config() -> Result<Vec<(String, String)>, String> {
    Ok(output("scontrol", &["show", "config"])?
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

fn config_value<'a>(config: &'a [(String, String)], key: &str) -> Option<&'a str> {
    config
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The real munge: `munge -n` piped to `unmunge`, both on `socket` when given.
#[derive(Debug)]
pub struct RealMunge {
    pub munge: PathBuf,
    pub unmunge: PathBuf,
    pub socket: Option<PathBuf>,
}

impl RealMunge {
    fn run(&self, program: &Path, args: &[&str], input: &str) -> Result<String, String> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(s) = &self.socket {
            cmd.arg("--socket").arg(s);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{} failed ({}): {}",
                program.display(),
                out.status,
                one_line(&String::from_utf8_lossy(&out.stderr))
            ))
        }
    }
}

impl MungeProbe for RealMunge {
    fn encode(&self) -> Result<String, String> {
        self.run(&self.munge, &["-n"], "")
            .map(|s| s.trim().to_owned())
    }
    fn decode(&self, credential: &str) -> Result<String, String> {
        self.run(&self.unmunge, &[], credential)
    }
}

/// One request to the agent of `node` on its query socket.
pub fn query_agent(
    run_dir: &Path,
    node: &str,
    request: &QueryRequest,
    timeout: Duration,
) -> Result<QueryReply, String> {
    let path = run_dir.join(format!("harvestd-{node}.query.sock"));
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut stream = UnixStream::connect(&path).map_err(at)?;
    stream.set_read_timeout(Some(timeout)).map_err(at)?;
    stream.set_write_timeout(Some(timeout)).map_err(at)?;
    let bytes = encode(request).map_err(|e| e.to_string())?;
    stream.write_all(&bytes).map_err(at)?;
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_MESSAGE_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(at)?;
    let reply: QueryReply =
        decode(&line).map_err(|e| format!("{}: bad reply: {e}", path.display()))?;
    match &reply.error {
        Some(e) => Err(format!("{}: harvestd answered: {e}", path.display())),
        None => Ok(reply),
    }
}

fn agent_status(run_dir: &Path, node: &str, timeout: Duration) -> Result<NodeView, String> {
    query_agent(run_dir, node, &QueryRequest::Status, timeout)?
        .view
        .ok_or_else(|| "harvestd sent no view".to_owned())
}

fn agent_jobs(run_dir: &Path, node: &str, timeout: Duration) -> Result<Vec<LedgerJob>, String> {
    query_agent(run_dir, node, &QueryRequest::Jobs, timeout)?
        .jobs
        .ok_or_else(|| "harvestd does not list its jobs (an older harvestd?)".to_owned())
}

/// Job ids `squeue` shows on `node` in `states`.
fn squeue(node: &str, states: &str) -> Result<BTreeSet<u32>, String> {
    output("squeue", &["-h", "-w", node, "-t", states, "-o", "%A"])?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>()
                .map_err(|e| format!("squeue printed {l:?}: {e}"))
        })
        .collect()
}

fn ledger_sample(run_dir: &Path, node: &str, timeout: Duration) -> Result<LedgerSample, String> {
    // Slurm first, then the agent, then Slurm again: a job that Slurm showed running both times
    // was running while the agent answered.
    let running_before = squeue(node, "RUNNING,SUSPENDED")?;
    let agent = agent_jobs(run_dir, node, timeout)?
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let any = squeue(node, "all")?;
    let running_after = squeue(node, "RUNNING,SUSPENDED")?;
    Ok(LedgerSample {
        agent,
        slurm_running: running_before
            .intersection(&running_after)
            .copied()
            .collect(),
        slurm_any: any.union(&running_before).copied().collect(),
    })
}

/// The Slurm nodes whose NodeHostname is this host.
fn local_nodes() -> Result<Vec<String>, String> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("this host's name: {e}"))?;
    let short = host.trim().split('.').next().unwrap_or_default().to_owned();
    let text = output("scontrol", &["-o", "show", "node"])?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let field = |key: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(str::to_owned)
            };
            let name = field("NodeName=")?;
            let hostname = field("NodeHostName=")?;
            (hostname.split('.').next() == Some(short.as_str())).then_some(name)
        })
        .collect())
}

/// A configuration file as a TOML table (read leniently: doctor looks at a few keys only).
fn read_table(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", path.display()))
}

/// TLS file keys of a configuration (TOML), read leniently: only these keys matter here.
fn tls_files(path: &Path, keys: &[&str]) -> Result<Vec<PathBuf>, String> {
    let table = read_table(path)?;
    Ok(keys
        .iter()
        .filter_map(|k| table.get(*k).and_then(|v| v.as_str()).map(PathBuf::from))
        .collect())
}

/// The scheduler's clock minus ours, from the Date header of its HTTP server.
fn http_skew(address: &str, timeout: Duration) -> Result<f64, String> {
    let hostport = address
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let addr = hostport
        .to_socket_addrs()
        .map_err(|e| format!("{hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport}: no address"))?;
    let before = SystemTime::now();
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{hostport}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "HEAD /metrics HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("{hostport}: {e}"))?;
    let mut head = String::new();
    BufReader::new(stream.take(16 * 1024))
        .read_to_string(&mut head)
        .map_err(|e| format!("{hostport}: {e}"))?;
    let rtt = started.elapsed();
    let date = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("date").then(|| v.trim().to_owned())
        })
        .ok_or_else(|| format!("{hostport} sent no Date header"))?;
    let theirs = httpdate::parse_http_date(&date).map_err(|e| format!("Date {date:?}: {e}"))?;
    // The header has whole seconds: compare with the middle of the exchange, truncated alike.
    let ours = before + rtt / 2;
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    };
    Ok(secs(theirs) - secs(ours).floor())
}

fn tcp_connect(address: &str, timeout: Duration) -> Result<(), String> {
    let addr = address
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_owned())?;
    TcpStream::connect_timeout(&addr, timeout)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Runs every check; `env` reads environment variables.
pub fn run(
    args: &DoctorArgs,
    config: &ClientConfig,
    scheduler_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Report {
    let mut out = Vec::new();
    let slurm = slurm_config();

    // Slurm.
    out.push(checks::slurm_version(output("scontrol", &["--version"])));
    let slurm_dir = env("SLURM_CONF")
        .map(PathBuf::from)
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/etc/slurm"));
    let plugstack = args.plugstack.clone().unwrap_or_else(|| {
        slurm
            .as_ref()
            .ok()
            .and_then(|c| config_value(c, "PlugStackConfig"))
            .map(PathBuf::from)
            .unwrap_or_else(|| slurm_dir.join("plugstack.conf"))
    });
    out.push(checks::plugstack(
        &plugstack,
        checks::read_plugstack(&plugstack),
        &args.plugin,
        Path::exists,
    ));

    // cgroups.
    let expected = match args.cgroup_mode.as_deref() {
        Some("v1") => Some((CgroupMode::V1, "--cgroup-mode".to_owned())),
        Some("v2") => Some((CgroupMode::V2, "--cgroup-mode".to_owned())),
        Some(_) => None,
        None => {
            let conf = slurm_dir.join("cgroup.conf");
            std::fs::read_to_string(&conf).ok().and_then(|text| {
                text.lines()
                    .filter_map(|l| l.split('#').next()?.trim().split_once('='))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("CgroupPlugin"))
                    .and_then(|(_, v)| CgroupMode::from_slurm_plugin(v))
                    .map(|m| (m, format!("{} (CgroupPlugin)", conf.display())))
            })
        }
    };
    match std::fs::read_to_string(&args.mountinfo) {
        Err(e) => out.push(Check::fail(
            "cgroup",
            format!("cannot read {}: {e}", args.mountinfo.display()),
            "pass --mountinfo PATH",
        )),
        Ok(text) => match checks::parse_mountinfo(&text, &args.cgroup_root) {
            Err(e) => out.push(Check::fail(
                "cgroup",
                format!("{}: {e}", args.mountinfo.display()),
                "pass --mountinfo PATH naming a mountinfo file (/proc/self/mountinfo)",
            )),
            Ok(mounts) => {
                let v2 = (checks::detect_mode(&mounts, &args.cgroup_root) == Some(CgroupMode::V2))
                    .then(|| {
                        let p = args.cgroup_root.join("cgroup.controllers");
                        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
                    });
                out.push(checks::cgroup(&mounts, &args.cgroup_root, expected, v2));
            }
        },
    }

    // munge.
    let munge = RealMunge {
        munge: config
            .munge
            .clone()
            .unwrap_or_else(|| Munge::default().program),
        unmunge: args.unmunge.clone(),
        socket: args
            .munge_socket
            .clone()
            .or_else(|| config.munge_socket.clone()),
    };
    out.push(checks::munge(&munge));

    // Agents and their ledgers.
    let nodes = if args.nodes.is_empty() {
        local_nodes()
    } else {
        Ok(args.nodes.clone())
    };
    match nodes {
        Err(e) => out.push(Check::skip(
            "agent",
            format!("cannot tell which Slurm nodes run here ({e}); pass --node NAME"),
        )),
        Ok(n) if n.is_empty() => out.push(Check::skip(
            "agent",
            "no Slurm node has this host as NodeHostname; pass --node NAME to check one",
        )),
        Ok(nodes) => {
            let mut first = Vec::new();
            for node in &nodes {
                let socket = args.run_dir.join(format!("harvestd-{node}.query.sock"));
                let status = agent_status(&args.run_dir, node, args.timeout);
                let up = status.is_ok();
                out.push(checks::agent(node, &socket, status));
                first.push(up.then(|| ledger_sample(&args.run_dir, node, args.timeout)));
            }
            // One pause for every node, then a second look where they disagreed.
            if first
                .iter()
                .any(|s| matches!(s, Some(Ok(s)) if s.disagrees()))
            {
                std::thread::sleep(args.settle);
            }
            for (node, sample) in nodes.iter().zip(first) {
                let name = format!("ledger:{node}");
                match sample {
                    None => out.push(Check::skip(name, "harvestd does not answer")),
                    Some(Err(e)) => out.push(Check::fail(
                        name,
                        format!("cannot compare the ledger with Slurm: {e}"),
                        "check that squeue works here (SLURM_CONF) and harvestd is current",
                    )),
                    Some(Ok(s)) if s.disagrees() => {
                        let again = ledger_sample(&args.run_dir, node, args.timeout);
                        out.push(match again {
                            Ok(t) => checks::ledger(node, &[s, t]),
                            Err(e) => Check::fail(
                                name,
                                format!("cannot compare the ledger with Slurm: {e}"),
                                "check that squeue works here and harvestd answers",
                            ),
                        });
                    }
                    Some(Ok(s)) => out.push(checks::ledger(node, &[s])),
                }
            }
        }
    }

    // Certificates.
    let mut files: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !files.contains(&p) {
            files.push(p);
        }
    };
    if let Some(ca) = config.ca(env) {
        add(ca);
    }
    let agent_configs = if args.agent_configs.is_empty() {
        let p = PathBuf::from(DEFAULT_AGENT_CONFIG);
        if p.exists() { vec![p] } else { Vec::new() }
    } else {
        args.agent_configs.clone()
    };
    let scheduler_config = args.scheduler_config.clone().or_else(|| {
        let p = PathBuf::from(DEFAULT_SCHEDULER_CONFIG);
        p.exists().then_some(p)
    });
    let mut config_errors = Vec::new();
    let configs = agent_configs
        .iter()
        .map(|p| (p, &["tls_ca", "tls_cert"][..]))
        .chain(
            scheduler_config
                .iter()
                .map(|p| (p, &["tls_cert", "tls_client_ca"][..])),
        );
    // An agent given its scheduler on the command line has none in the file: then the one
    // this client uses.
    let our_scheduler = config.scheduler(scheduler_flag, env).ok();
    for path in &agent_configs {
        if let Ok(table) = read_table(path) {
            let key = |k: &str| table.get(k).and_then(|v| v.as_str());
            out.push(checks::addresses(
                path,
                key("scheduler").or(our_scheduler.as_deref()),
                key("executor_bind_address"),
                key("executor_advertise_address"),
                key("metrics_listen"),
            ));
        }
    }
    for (path, keys) in configs {
        match tls_files(path, keys) {
            Ok(found) => found.into_iter().for_each(&mut add),
            Err(e) => config_errors.push(Check::fail(
                format!("config:{}", path.display()),
                format!("cannot read its certificate paths: {e}"),
                "fix the file, or point --agent-config / --scheduler-config at the right one",
            )),
        }
    }
    args.certs.iter().cloned().for_each(&mut add);
    out.extend(config_errors);
    if files.is_empty() {
        out.push(Check::skip(
            "cert",
            "no certificate configured here (HARVEST_CA, --agent-config, --scheduler-config, --cert)",
        ));
    }
    let now = SystemTime::now();
    for f in &files {
        out.push(checks::certificate(
            f,
            std::fs::read(f).map_err(|e| e.to_string()),
            now,
            Duration::from_secs(args.cert_warn_days * 86_400),
        ));
    }

    // The scheduler: reachable, its clock, and the executors it advertises.
    match &args.scheduler_http {
        Some(http) => out.push(checks::clock(
            http,
            http_skew(http, args.timeout),
            args.clock_warn_s,
            args.clock_fail_s,
        )),
        None => out.push(Check::skip(
            "clock",
            "no scheduler HTTP address: pass --scheduler-http HOST:PORT (its http_listen)",
        )),
    }
    out.extend(scheduler_checks(args, config, scheduler_flag, env));
    Report::new(out)
}

fn scheduler_checks(
    args: &DoctorArgs,
    config: &ClientConfig,
    scheduler_flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<Check> {
    let url = match config.scheduler(scheduler_flag, env) {
        Ok(u) => u,
        Err(e) => return vec![checks::scheduler("(none)", Err(e.to_string()))],
    };
    let uid = match config.scheduler_uid(env) {
        Ok(u) => u,
        Err(e) => return vec![checks::scheduler(&url, Err(e.to_string()))],
    };
    let munge = Munge {
        program: config
            .munge
            .clone()
            .unwrap_or_else(|| Munge::default().program),
        socket: args.munge_socket.clone().or(config.munge_socket.clone()),
        scheduler_uid: uid,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return vec![checks::scheduler(
                &url,
                Err(format!("no async runtime: {e}")),
            )];
        }
    };
    let connected = rt.block_on(async {
        let connect = async {
            match config.ca(env) {
                Some(ca) => SchedulerClient::connect_tls(&url, Arc::new(munge), &ca).await,
                None => SchedulerClient::connect(&url, Arc::new(munge)).await,
            }
        };
        let mut client = tokio::time::timeout(args.timeout, connect)
            .await
            .map_err(|_| format!("no answer within {:?}", args.timeout))?
            .map_err(|e| e.to_string())?;
        let nodes = tokio::time::timeout(args.timeout, client.nodes())
            .await
            .map_err(|_| format!("no answer within {:?}", args.timeout))?
            .map_err(|e| e.to_string())?;
        let leases = tokio::time::timeout(args.timeout, client.leases())
            .await
            .map_err(|_| format!("no answer within {:?}", args.timeout))
            .and_then(|r| r.map_err(|e| e.to_string()));
        Ok::<_, String>((client.url().to_owned(), nodes.len(), leases))
    });
    let (serving, n, leases) = match connected {
        Ok(x) => x,
        Err(e) => return vec![checks::scheduler(&url, Err(e))],
    };
    let mut out = vec![checks::scheduler(&serving, Ok(n))];
    match leases {
        Err(e) => out.push(Check::warn(
            "executor",
            format!("cannot list leases: {e}"),
            "run doctor as root (or an operator) to check every executor",
        )),
        Ok(leases) => {
            let live: Vec<_> = leases
                .iter()
                .filter(|l| {
                    matches!(l.state.as_str(), "active" | "pending")
                        && !l.executor_address.is_empty()
                })
                .collect();
            if live.is_empty() {
                out.push(Check::skip("executor", "no live lease with an executor"));
            }
            for l in live {
                out.push(checks::executor(
                    &l.id,
                    &l.node,
                    &l.executor_address,
                    tcp_connect(&l.executor_address, args.timeout),
                ));
            }
        }
    }
    out
}
