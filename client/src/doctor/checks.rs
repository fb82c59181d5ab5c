//! The checks' verdicts, from what was observed. Nothing here touches the system: every input
//! is a parameter (file contents, command results, the time), so each verdict has a unit test.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harvest_core::NodeView;

use super::Check;

/// `scontrol --version`'s output (or why it could not run).
pub fn slurm_version(out: Result<String, String>) -> Check {
    const FIX: &str = "install Slurm's client commands (Debian: slurm-client) on PATH, and set \
                       SLURM_CONF when slurm.conf is not in /etc/slurm";
    match out {
        Err(e) => Check::fail("slurm", format!("cannot run scontrol: {e}"), FIX),
        Ok(text) => {
            let version = text
                .split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
            match version {
                Some(v) => Check::ok(
                    "slurm",
                    format!("Slurm {v} (the SPANK plugin must be built for this release)"),
                ),
                None => Check::fail(
                    "slurm",
                    format!("scontrol --version printed no version: {:?}", text.trim()),
                    FIX,
                ),
            }
        }
    }
}

/// One plugin line of a plugstack configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLine {
    /// The file and line it was read from.
    pub file: PathBuf,
    pub line: usize,
    pub required: bool,
    pub path: PathBuf,
    pub args: Vec<String>,
}

/// Reads `path` and the files it includes (`include GLOB`, a `*`/`?` pattern in the file name
/// part), depth first, as slurmstepd does.
pub fn read_plugstack(path: &Path) -> Result<Vec<PluginLine>, String> {
    let mut out = Vec::new();
    read_plugstack_into(path, 0, &mut out)?;
    Ok(out)
}

fn read_plugstack_into(path: &Path, depth: usize, out: &mut Vec<PluginLine>) -> Result<(), String> {
    if depth > 8 {
        return Err(format!(
            "{}: includes nested more than 8 deep",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        match words.next() {
            None => {}
            Some("include") => {
                let pattern = words.next().unwrap_or_default();
                for f in glob(Path::new(pattern))? {
                    read_plugstack_into(&f, depth + 1, out)?;
                }
            }
            Some(kind @ ("required" | "optional")) => {
                let Some(so) = words.next() else {
                    return Err(format!(
                        "{}:{}: `{kind}` without a plugin path",
                        path.display(),
                        i + 1
                    ));
                };
                out.push(PluginLine {
                    file: path.to_path_buf(),
                    line: i + 1,
                    required: kind == "required",
                    path: PathBuf::from(so),
                    args: words.map(str::to_owned).collect(),
                });
            }
            Some(other) => {
                return Err(format!(
                    "{}:{}: unknown directive {other:?} (expected required, optional or include)",
                    path.display(),
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// The files matching `pattern`, whose file name may hold `*` and `?`; sorted.
fn glob(pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let name = pattern
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return Ok(vec![pattern.to_path_buf()]);
    }
    let dir = pattern.parent().unwrap_or(Path::new("."));
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| matches(name, n)))
        .map(|e| e.path())
        .collect();
    found.sort();
    Ok(found)
}

/// Shell-style match of `*` and `?`.
fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(&p, &n)
}

/// Whether harvest's SPANK plugin (a line whose library's file name contains `plugin`) is
/// registered in the plugstack configuration `conf`, and its library is there.
pub fn plugstack(
    conf: &Path,
    lines: Result<Vec<PluginLine>, String>,
    plugin: &str,
    exists: impl Fn(&Path) -> bool,
) -> Check {
    let register = format!(
        "add `optional /usr/lib/slurm/lib{plugin}.so socket=/run/harvest/harvestd-%n.sock` to {} \
         (or a file it includes); slurmstepd reads it at the next step, restart slurmd so that \
         job-end reports reach harvestd",
        conf.display()
    );
    let lines = match lines {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                "plugstack",
                format!("cannot read the plugstack configuration: {e}"),
                format!(
                    "{register}; pass --plugstack PATH if Slurm's PlugStackConfig is elsewhere"
                ),
            );
        }
    };
    let ours: Vec<&PluginLine> = lines
        .iter()
        .filter(|l| {
            l.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(plugin))
        })
        .collect();
    let Some(line) = ours.first() else {
        return Check::fail(
            "plugstack",
            format!(
                "harvest's SPANK plugin ({plugin}) is not registered in {} ({} other plugin line(s)): \
                 harvestd learns of no job step and lends cores that jobs use",
                conf.display(),
                lines.len()
            ),
            register,
        );
    };
    let at = format!("{}:{}", line.file.display(), line.line);
    if ours.len() > 1 {
        return Check::fail(
            "plugstack",
            format!(
                "harvest's plugin is registered {} times (first at {at})",
                ours.len()
            ),
            "keep one plugin line: each registration reports every step again",
        );
    }
    if line.path.is_absolute() && !exists(&line.path) {
        return Check::fail(
            "plugstack",
            format!("{at} names {}, which does not exist", line.path.display()),
            "install the plugin (package harvest-agent) or correct the path",
        );
    }
    Check::ok(
        "plugstack",
        format!(
            "{} {} at {at}{}",
            if line.required {
                "required"
            } else {
                "optional"
            },
            line.path.display(),
            if line.args.is_empty() {
                String::new()
            } else {
                format!(" ({})", line.args.join(" "))
            }
        ),
    )
}

/// The cgroup version a host runs (or is expected to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum CgroupMode {
    /// Controllers in separate v1 hierarchies (also the hybrid layout with a controller-less v2
    /// tree beside them).
    V1,
    /// The unified hierarchy at the cgroup root.
    V2,
}

impl CgroupMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// From Slurm's `CgroupPlugin` value (`cgroup/v1`, `cgroup/v2`); `None` for `autodetect`.
    pub fn from_slurm_plugin(value: &str) -> Option<Self> {
        match value.trim() {
            "cgroup/v1" => Some(Self::V1),
            "cgroup/v2" => Some(Self::V2),
            _ => None,
        }
    }
}

pub use harvest_core::mountinfo::{CgroupMount, MalformedLine};

/// The controllers harvest's agent needs (cpuset, memory) and uses when present (the rest).
pub const NEEDED_CONTROLLERS: &[&str] = &["cpuset", "memory"];
pub const WANTED_CONTROLLERS: &[&str] = &["cpu", "freezer", "devices", "pids"];

/// The cgroup mounts under `root` in mountinfo text, read by the agent's own parser
/// (harvest-core's); v1 named hierarchies (`name=systemd`) are no controllers here.
pub fn parse_mountinfo(text: &str, root: &Path) -> Result<Vec<CgroupMount>, MalformedLine> {
    Ok(harvest_core::mountinfo::parse(text)?
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .map(|mut m| {
            m.controllers.retain(|c| !c.starts_with("name="));
            m
        })
        .collect())
}

/// The mode of a host, as harvest's agent detects it: v2 when the root itself is a `cgroup2`
/// mount, v1 when any v1 hierarchy is mounted under it.
pub fn detect_mode(mounts: &[CgroupMount], root: &Path) -> Option<CgroupMode> {
    if mounts.iter().any(|m| m.unified && m.mount_point == root) {
        Some(CgroupMode::V2)
    } else if mounts.iter().any(|m| !m.unified) {
        Some(CgroupMode::V1)
    } else {
        None
    }
}

/// The cgroup mode and controllers. `expected` is what Slurm's `cgroup.conf` (or
/// `--cgroup-mode`) says the node runs, `None` to accept either; `v2_controllers` is the
/// root's `cgroup.controllers` (read only on a v2 host).
pub fn cgroup(
    mounts: &[CgroupMount],
    root: &Path,
    expected: Option<(CgroupMode, String)>,
    v2_controllers: Option<Result<String, String>>,
) -> Check {
    let Some(mode) = detect_mode(mounts, root) else {
        return Check::fail(
            "cgroup",
            format!("no cgroup hierarchy is mounted under {}", root.display()),
            "mount the cgroup filesystem (systemd does at boot), or pass --cgroup-root",
        );
    };
    if let Some((want, from)) = &expected
        && *want != mode
    {
        return Check::fail(
            "cgroup",
            format!(
                "wrong cgroup mode: {from} says cgroup {}, but this node runs cgroup {}{}",
                want.name(),
                mode.name(),
                if mode == CgroupMode::V1 && mounts.iter().any(|m| m.unified) {
                    " (hybrid: its v2 tree has no controllers)"
                } else {
                    ""
                }
            ),
            format!(
                "make them agree: set CgroupPlugin=cgroup/{} (or autodetect) in Slurm's cgroup.conf, \
                 or boot the node with cgroup {} (systemd.unified_cgroup_hierarchy=...)",
                mode.name(),
                want.name()
            ),
        );
    }
    let present: BTreeSet<String> = match mode {
        CgroupMode::V1 => mounts
            .iter()
            .filter(|m| !m.unified)
            .flat_map(|m| m.controllers.iter().cloned())
            .collect(),
        CgroupMode::V2 => match v2_controllers {
            Some(Ok(text)) => text.split_whitespace().map(str::to_owned).collect(),
            Some(Err(e)) => {
                return Check::fail(
                    "cgroup",
                    format!("cgroup v2, but its controllers cannot be read: {e}"),
                    "run doctor as root on the node, or pass --cgroup-root",
                );
            }
            None => BTreeSet::new(),
        },
    };
    let missing = |list: &[&str]| -> Vec<String> {
        list.iter()
            .filter(|c| !present.contains(**c))
            .map(|c| (*c).to_owned())
            .collect()
    };
    let (needed, wanted) = (missing(NEEDED_CONTROLLERS), missing(WANTED_CONTROLLERS));
    let have = format!(
        "cgroup {} under {} with {}",
        mode.name(),
        root.display(),
        present.iter().cloned().collect::<Vec<_>>().join(",")
    );
    let enable = match mode {
        CgroupMode::V1 => "mount the missing v1 hierarchies under the cgroup root",
        CgroupMode::V2 => "enable them in the root's cgroup.subtree_control (systemd: Delegate=)",
    };
    if !needed.is_empty() {
        Check::fail(
            "cgroup",
            format!(
                "{have}: missing {} (harvest cannot confine leases)",
                needed.join(",")
            ),
            enable,
        )
    } else if !wanted.is_empty() {
        Check::warn(
            "cgroup",
            format!(
                "{have}: missing {} (no CPU weights, freezing or GPU fencing for leases)",
                wanted.join(",")
            ),
            enable,
        )
    } else {
        Check::ok("cgroup", have)
    }
}

/// Makes and decodes one munge credential.
pub trait MungeProbe {
    /// A new credential (`munge -n`).
    fn encode(&self) -> Result<String, String>;
    /// `unmunge`'s report on `credential`.
    fn decode(&self, credential: &str) -> Result<String, String>;
}

pub fn munge(probe: &dyn MungeProbe) -> Check {
    const FIX: &str = "start munged (systemctl start munge) with the cluster's key in \
                       /etc/munge/munge.key, or pass --munge-socket if it listens elsewhere";
    let credential = match probe.encode() {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                "munge",
                format!("munge down: cannot make a credential: {e}"),
                FIX,
            );
        }
    };
    match probe.decode(&credential) {
        Err(e) => Check::fail(
            "munge",
            format!("munge down: cannot decode a credential: {e}"),
            FIX,
        ),
        Ok(report)
            if report
                .lines()
                .any(|l| l.starts_with("STATUS:") && l.contains("Success")) =>
        {
            Check::ok("munge", "a credential was made and decoded")
        }
        Ok(report) => {
            let status = report
                .lines()
                .find(|l| l.starts_with("STATUS:"))
                .unwrap_or("no STATUS line")
                .to_owned();
            Check::fail(
                "munge",
                format!("munge refused its own credential: {status}"),
                "every host needs the same /etc/munge/munge.key and clocks within munge's TTL",
            )
        }
    }
}

/// The agent of `node`, by its status answer.
pub fn agent(node: &str, socket: &Path, status: Result<NodeView, String>) -> Check {
    let name = format!("agent:{node}");
    match status {
        Ok(v) => Check::ok(
            name,
            format!(
                "harvestd answers on {}: {} CPUs ({} batch, {} function, {} idle)",
                socket.display(),
                v.cpus.total.len(),
                v.cpus.batch.len(),
                v.cpus.function.len(),
                v.cpus.idle.len()
            ),
        ),
        Err(e) => Check::fail(
            name,
            format!("agent down: no harvestd answers for node {node}: {e}"),
            format!(
                "start it (systemctl start harvestd@{node}, or harvestd run --node {node}) and \
                 read its log; pass --run-dir if it uses another run directory"
            ),
        ),
    }
}

/// What the agent's ledger and Slurm said about a node's jobs at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerSample {
    /// Jobs in the agent's ledger.
    pub agent: BTreeSet<u32>,
    /// Jobs Slurm runs on the node (RUNNING, SUSPENDED).
    pub slurm_running: BTreeSet<u32>,
    /// Jobs Slurm has on the node in any state (also COMPLETING: their steps may still end).
    pub slurm_any: BTreeSet<u32>,
}

impl LedgerSample {
    /// Whether the agent holds a job Slurm does not have, or Slurm runs one the agent lacks.
    pub fn disagrees(&self) -> bool {
        !self.agent.is_subset(&self.slurm_any) || !self.slurm_running.is_subset(&self.agent)
    }
}

/// Compares the agent's ledger with Slurm's view. A job counts as a disagreement only when
/// every sample shows it (a job starting or ending between two commands is no fault).
pub fn ledger(node: &str, samples: &[LedgerSample]) -> Check {
    let name = format!("ledger:{node}");
    let Some(first) = samples.first() else {
        return Check::skip(name, "no sample");
    };
    let in_all = |f: &dyn Fn(&LedgerSample) -> BTreeSet<u32>| -> Vec<u32> {
        samples
            .iter()
            .skip(1)
            .fold(f(first), |acc, s| {
                acc.intersection(&f(s)).copied().collect()
            })
            .into_iter()
            .collect()
    };
    let extra = in_all(&|s| s.agent.difference(&s.slurm_any).copied().collect());
    let missing = in_all(&|s| s.slurm_running.difference(&s.agent).copied().collect());
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let mut wrong = Vec::new();
    if !extra.is_empty() {
        wrong.push(format!(
            "harvestd's ledger holds job(s) {} that Slurm does not have on {node} (their cores \
             stay withheld from functions)",
            list(&extra)
        ));
    }
    if !missing.is_empty() {
        wrong.push(format!(
            "Slurm runs job(s) {} on {node} that harvestd's ledger does not know (it may lend \
             their cores)",
            list(&missing)
        ));
    }
    if wrong.is_empty() {
        Check::ok(
            name,
            format!(
                "ledger agrees with Slurm: {} job(s) on {node}",
                first.slurm_running.len()
            ),
        )
    } else {
        Check::fail(
            name,
            format!("ledger disagrees with Slurm: {}", wrong.join("; ")),
            "check that the plugin is registered (plugstack) and harvestd's cgroup root is \
             Slurm's; restarting harvestd rebuilds its ledger from Slurm's cgroup tree",
        )
    }
}

/// One certificate (or CA bundle) file, against `now`.
pub fn certificate(
    path: &Path,
    pem: Result<Vec<u8>, String>,
    now: SystemTime,
    warn_within: Duration,
) -> Check {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_cert::der::Decode;

    let name = format!("cert:{}", path.display());
    let renew = format!(
        "issue a new certificate from the cluster's CA and install it at {}, then restart the \
         component that reads it",
        path.display()
    );
    let pem = match pem {
        Ok(p) => p,
        Err(e) => return Check::fail(name, format!("cannot read it: {e}"), renew),
    };
    let ders: Vec<CertificateDer<'static>> =
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>() {
            Ok(d) => d,
            Err(e) => return Check::fail(name, format!("not PEM certificates: {e}"), renew),
        };
    if ders.is_empty() {
        return Check::fail(name, "holds no certificate", renew);
    }
    let now_s = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    // The certificate of the file that expires first decides.
    let mut soonest: Option<(u64, u64, String)> = None;
    for der in &ders {
        let cert = match x509_cert::Certificate::from_der(der) {
            Ok(c) => c,
            Err(e) => return Check::fail(name, format!("not an X.509 certificate: {e}"), renew),
        };
        let v = &cert.tbs_certificate.validity;
        let (from, until) = (
            v.not_before.to_unix_duration().as_secs(),
            v.not_after.to_unix_duration().as_secs(),
        );
        let subject = cert.tbs_certificate.subject.to_string();
        if soonest.as_ref().is_none_or(|(_, u, _)| until < *u) {
            soonest = Some((from, until, subject));
        }
    }
    let (from, until, subject) = soonest.expect("at least one certificate");
    let day = 86_400;
    if now_s >= until {
        Check::fail(
            name,
            format!(
                "expired certificate: {subject} expired {} day(s) ago (TLS to the scheduler fails)",
                (now_s - until) / day
            ),
            renew,
        )
    } else if now_s < from {
        Check::fail(
            name,
            format!(
                "{subject} is not valid yet (from {} s in the future): is this host's clock right?",
                from - now_s
            ),
            "set the clock (chrony/ntpd), or reissue the certificate",
        )
    } else if until - now_s < warn_within.as_secs() {
        Check::warn(
            name,
            format!("{subject} expires in {} day(s)", (until - now_s) / day),
            renew,
        )
    } else {
        Check::ok(
            name,
            format!("{subject} valid for {} more day(s)", (until - now_s) / day),
        )
    }
}

/// The scheduler's clock minus this host's, in seconds.
pub fn clock(peer: &str, skew_s: Result<f64, String>, warn_s: f64, fail_s: f64) -> Check {
    let fix = "run a time service (chrony or ntpd) on every host, against the same servers";
    match skew_s {
        Err(e) => Check::warn(
            "clock",
            format!("cannot read the scheduler's time from {peer}: {e}"),
            "pass --scheduler-http HOST:PORT (its http_listen address)",
        ),
        Ok(s) if s.abs() > fail_s => Check::fail(
            "clock",
            format!(
                "clock skew: the scheduler ({peer}) is {:.0} s {} this host (munge credentials and \
                 lease lifetimes go wrong)",
                s.abs(),
                if s > 0.0 { "ahead of" } else { "behind" }
            ),
            fix,
        ),
        Ok(s) if s.abs() > warn_s => Check::warn(
            "clock",
            format!("the scheduler ({peer}) is {s:+.1} s off this host"),
            fix,
        ),
        Ok(s) => Check::ok(
            "clock",
            format!("within {:.1} s of the scheduler ({peer})", s.abs().max(1.0)),
        ),
    }
}

/// Whether `host` (a name or an address, without port) is this host only.
fn loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The host of `host:port`, `[v6]:port` or a URL (`https://host:port`, the first of a list).
fn host_of(address: &str) -> &str {
    let first = address.split(',').next().unwrap_or_default().trim();
    let rest = first.split_once("://").map_or(first, |(_, r)| r);
    let hostport = rest.split('/').next().unwrap_or_default();
    match hostport.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => hostport.rsplit_once(':').map_or(hostport, |(h, _)| h),
    }
}

/// The addresses an agent's configuration binds and advertises, against where its scheduler
/// is: a loopback executor or metrics address serves this host only, which is wrong once the
/// scheduler (and so the clients and Prometheus) are elsewhere.
pub fn addresses(
    config: &Path,
    scheduler: Option<&str>,
    executor_bind_address: Option<&str>,
    executor_advertise_address: Option<&str>,
    metrics_listen: Option<&str>,
) -> Check {
    let name = format!("addresses:{}", config.display());
    // harvestd's defaults: bind every interface, advertise the bound address when it is a
    // specific one, else the host name's address.
    let bind = executor_bind_address.unwrap_or("0.0.0.0");
    let unspecified = |a: &str| {
        a.parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_unspecified())
    };
    let advertised = match executor_advertise_address {
        Some(a) => a.to_owned(),
        None if unspecified(bind) => "this host name's address".to_owned(),
        None => bind.to_owned(),
    };
    let summary = format!(
        "executors bind {bind} and are advertised as {advertised}; metrics {}",
        metrics_listen.map_or("not served".to_owned(), |m| format!("on {m}"))
    );
    let Some(scheduler) = scheduler else {
        return Check::ok(name, format!("{summary} (no scheduler: standalone)"));
    };
    if loopback(host_of(scheduler)) {
        return Check::ok(name, format!("{summary}; scheduler on this host"));
    }
    let mut local_only = Vec::new();
    if loopback(bind) {
        local_only.push(format!("executor_bind_address = {bind}"));
    }
    if let Some(a) = executor_advertise_address.filter(|a| loopback(a)) {
        local_only.push(format!("executor_advertise_address = {a}"));
    }
    if let Some(m) = metrics_listen.filter(|m| loopback(host_of(m))) {
        local_only.push(format!("metrics_listen = {m}"));
    }
    if local_only.is_empty() {
        Check::ok(name, summary)
    } else {
        Check::warn(
            name,
            format!(
                "{} serve(s) this host only, but the scheduler is at {}: clients and Prometheus \
                 on other hosts cannot reach them",
                local_only.join(" and "),
                host_of(scheduler)
            ),
            "set them to this node's address on the cluster network (its cluster interface; \
             executor_bind_address may also be 0.0.0.0) in the agent's configuration",
        )
    }
}

/// Whether the scheduler answered (with the number of nodes it knows).
pub fn scheduler(url: &str, answer: Result<usize, String>) -> Check {
    match answer {
        Ok(n) => Check::ok("scheduler", format!("{url} answers ({n} node(s) known)")),
        Err(e) => Check::fail(
            "scheduler",
            format!("scheduler unreachable: {e}"),
            "start harvest-scheduler, open its port to this host, and check --scheduler \
             / $HARVEST_SCHEDULER / the client configuration",
        ),
    }
}

/// Whether a live lease's executor accepts connections at its advertised address.
pub fn executor(lease: &str, node: &str, address: &str, connect: Result<(), String>) -> Check {
    let name = format!("executor:{lease}");
    match connect {
        Ok(()) => Check::ok(name, format!("{address} (node {node}) accepts connections")),
        Err(e) => Check::fail(
            name,
            format!("executor unreachable: lease {lease} on {node} advertises {address}: {e}"),
            format!(
                "set executor_advertise_address in {node}'s harvestd configuration to an \
                 address clients can reach (and executor_bind_address to it or 0.0.0.0), and \
                 open the executor port range"
            ),
        ),
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
