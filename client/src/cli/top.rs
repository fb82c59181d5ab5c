//! `harvest top`: the dashboard's picture in a terminal, refreshed every `--interval`.
//!
//! One frame: the cluster's CPUs, memory and GPUs by state (batch, function, idle, reserved),
//! one line per node with a cell per CPU, the utilization since `top` started (a sparkline of
//! its own samples; the scheduler's dashboard keeps the last hour), the live leases and the
//! recent revocations. Plain text with ANSI colours on a terminal (`--no-color` or `NO_COLOR`
//! turn them off); `--once` prints one frame and exits, `--json` prints the numbers instead.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::Args as ClapArgs;
use serde::Serialize;

use super::exit::CliError;
use super::io;
use crate::lease::{Lease, Node, SchedulerClient};
use harvest_core::{Counts, Usage};
use harvest_proto::views::level_name;

/// How many samples the sparkline keeps.
pub const HISTORY: usize = 60;

#[derive(Debug, ClapArgs)]
pub struct TopArgs {
    /// Print one frame and exit (for scripts and tests).
    #[arg(long)]
    pub once: bool,
    /// Time between frames (e.g. 1s, 500ms).
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Print the frame's numbers as JSON (one object; implies --once).
    #[arg(long)]
    pub json: bool,
    /// No colours (also when NO_COLOR is set or stdout is not a terminal).
    #[arg(long)]
    pub no_color: bool,
}

/// A node's counts: the sizes of its lists, and `reserved` for what is in none of them (as the
/// scheduler's metrics count them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeCounts {
    pub name: String,
    pub state: String,
    pub cpus: Counts,
    pub memory_mib: Counts,
    pub gpus: Counts,
    pub interference: String,
    pub reclaims: u64,
}

impl NodeCounts {
    pub fn of(n: &Node) -> Self {
        let u = Usage::of(&n.view);
        Self {
            name: n.view.name.clone(),
            state: n.state.clone(),
            cpus: u.cpus,
            memory_mib: u.memory_mib,
            gpus: u.gpus,
            interference: n
                .interference
                .as_ref()
                .map_or_else(|| "-".to_owned(), |i| level_name(i.level).to_owned()),
            reclaims: n.reclaims,
        }
    }
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Picture {
    pub generated_unix_ms: i64,
    pub cpus: Counts,
    pub memory_mib: Counts,
    pub gpus: Counts,
    pub nodes: Vec<NodeCounts>,
    /// Live leases (pending, active).
    pub leases: Vec<Lease>,
}

impl Picture {
    pub fn new(nodes: &[Node], leases: &[Lease], now_unix_ms: i64) -> Self {
        let nodes: Vec<NodeCounts> = nodes.iter().map(NodeCounts::of).collect();
        let (mut cpus, mut memory_mib, mut gpus) =
            (Counts::default(), Counts::default(), Counts::default());
        for n in &nodes {
            cpus = cpus.add(&n.cpus);
            memory_mib = memory_mib.add(&n.memory_mib);
            gpus = gpus.add(&n.gpus);
        }
        Self {
            generated_unix_ms: now_unix_ms,
            cpus,
            memory_mib,
            gpus,
            nodes,
            leases: leases.iter().filter(|l| l.is_live()).cloned().collect(),
        }
    }
}

/// Colours on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn bold(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// One CPU's cell: a letter, on its state's colour.
    fn cell(&self, state: &str) -> String {
        let (code, letter) = match state {
            "batch" => ("30;43", "B"),
            "function" => ("30;42", "F"),
            "contested" => ("30;41", "*"),
            "idle" => ("2", "."),
            _ => ("37;100", "R"),
        };
        self.paint(code, letter)
    }
}

fn cpu_state(n: &Node, cpu: u32) -> &'static str {
    let c = &n.view.cpus;
    match (c.batch.contains(cpu), c.function.contains(cpu)) {
        (true, true) => "contested",
        (true, false) => "batch",
        (false, true) => "function",
        _ if c.idle.contains(cpu) => "idle",
        _ => "reserved",
    }
}

fn mib(n: u64) -> String {
    if n >= 10 * 1024 {
        format!("{:.1}G", n as f64 / 1024.0)
    } else {
        format!("{n}M")
    }
}

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

fn sparkline(values: impl Iterator<Item = u64>, top: u64) -> String {
    values
        .map(|v| {
            let i = (v * (SPARKS.len() as u64 - 1))
                .checked_div(top)
                .unwrap_or(0);
            SPARKS[(i as usize).min(SPARKS.len() - 1)]
        })
        .collect()
}

/// CPUs over time, one sample per frame: (batch, batch + function, total).
#[derive(Debug, Default)]
pub struct History(VecDeque<(u64, u64, u64)>);

impl History {
    pub fn push(&mut self, cpus: &Counts) {
        self.0
            .push_back((cpus.batch, cpus.batch + cpus.function, cpus.total));
        while self.0.len() > HISTORY {
            self.0.pop_front();
        }
    }
}

fn ago(ms: i64, now: i64) -> String {
    let s = ((now - ms).max(0) / 1000) as u64;
    match s {
        0..90 => format!("{s}s"),
        90..5400 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// One frame as text.
pub fn frame(
    nodes: &[Node],
    leases: &[Lease],
    history: &History,
    style: Style,
    header: &str,
    now_unix_ms: i64,
) -> String {
    let p = Picture::new(nodes, leases, now_unix_ms);
    let mut out = String::new();
    let _ = writeln!(out, "{}", style.bold(header));
    let c = &p.cpus;
    let _ = writeln!(
        out,
        "CPUs    {} batch {}  {} function {}  {} idle {}  {} reserved {}  of {}",
        style.cell("batch"),
        c.batch,
        style.cell("function"),
        c.function,
        style.cell("idle"),
        c.idle,
        style.cell("reserved"),
        c.reserved,
        c.total
    );
    let m = &p.memory_mib;
    let _ = writeln!(
        out,
        "Memory  batch {}  function {}  idle {}  reserved {}  of {}",
        mib(m.batch),
        mib(m.function),
        mib(m.idle),
        mib(m.reserved),
        mib(m.total)
    );
    if p.gpus.total > 0 {
        let g = &p.gpus;
        let _ = writeln!(
            out,
            "GPUs    batch {}  function {}  idle {}  reserved {}  of {}",
            g.batch, g.function, g.idle, g.reserved, g.total
        );
    }
    let up = p.nodes.iter().filter(|n| n.state == "up").count();
    let active = p.leases.iter().filter(|l| l.state == "active").count();
    let _ = writeln!(
        out,
        "Nodes   {up} of {} up   Leases {active} active, {} pending",
        p.nodes.len(),
        p.leases.len() - active
    );
    if history.0.len() > 1 {
        let top = history.0.iter().map(|s| s.2).max().unwrap_or(1);
        let _ = writeln!(
            out,
            "Usage   batch            {}\n        batch+functions  {}   ({} samples since top started)",
            sparkline(history.0.iter().map(|s| s.0), top),
            sparkline(history.0.iter().map(|s| s.1), top),
            history.0.len()
        );
    }
    let _ = writeln!(
        out,
        "\n{}",
        style.bold(&format!(
            "{:<12} {:<9} {:<13} {:<26} {:<12} {}",
            "NODE", "STATE", "CPUS b/f/i", "MEMORY b/f/i (of total)", "INTERFERENCE", "CPU CELLS"
        ))
    );
    for (n, counts) in nodes.iter().zip(&p.nodes) {
        let cells: String = n
            .view
            .cpus
            .total
            .iter()
            .map(|cpu| style.cell(cpu_state(n, cpu)))
            .collect();
        let cm = &counts.memory_mib;
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<13} {:<26} {:<12} {}",
            counts.name,
            counts.state,
            format!(
                "{}/{}/{}",
                counts.cpus.batch, counts.cpus.function, counts.cpus.idle
            ),
            format!(
                "{}/{}/{} ({})",
                mib(cm.batch),
                mib(cm.function),
                mib(cm.idle),
                mib(cm.total)
            ),
            counts.interference,
            cells
        );
    }
    if !p.leases.is_empty() {
        let _ = writeln!(
            out,
            "\n{}",
            style.bold(&format!(
                "{:<20} {:<12} {:<12} {:<10} {:<8} {:<8} {}",
                "LEASE", "NODE", "USER", "CPUS", "MEMORY", "STATE", "AGE"
            ))
        );
        for l in &p.leases {
            let cpus: harvest_core::CpuSet = l.cpus.iter().copied().collect();
            let _ = writeln!(
                out,
                "{:<20} {:<12} {:<12} {:<10} {:<8} {:<8} {}",
                l.id,
                l.node,
                if l.user.is_empty() {
                    l.uid.to_string()
                } else {
                    l.user.clone()
                },
                if cpus.is_empty() {
                    "-".to_owned()
                } else {
                    cpus.to_string()
                },
                mib(l.memory_mib),
                l.state,
                ago(l.created_unix_ms, now_unix_ms)
            );
        }
    }
    let mut revoked: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.is_live() && (l.state == "revoked" || l.state == "failed"))
        .collect();
    revoked.sort_by_key(|l| std::cmp::Reverse(l.created_unix_ms));
    if !revoked.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("RECENT REVOCATIONS"));
        for l in revoked.iter().take(8) {
            let _ = writeln!(
                out,
                "{:<20} {:<12} {:<14} {}",
                l.id, l.node, l.end_cause, l.end_reason
            );
        }
    }
    out
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Runs `harvest top` against `client` until interrupted (or once).
pub fn run(
    rt: &tokio::runtime::Runtime,
    client: &mut SchedulerClient,
    url: &str,
    args: &TopArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    let tty = stdout.is_terminal();
    let style = Style {
        color: tty && !args.no_color && env("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let mut history = History::default();
    loop {
        let fetched = rt.block_on(async {
            let nodes = client.nodes().await?;
            let leases = client.leases().await?;
            Ok::<_, crate::lease::LeaseError>((nodes, leases))
        });
        let now = now_ms();
        let text = match fetched {
            Ok((mut nodes, leases)) => {
                nodes.sort_by_cached_key(|n| natural_key(&n.view.name));
                if args.json {
                    let mut s = serde_json::to_string_pretty(&Picture::new(&nodes, &leases, now))
                        .expect("plain data serializes");
                    s.push('\n');
                    stdout
                        .write_all(s.as_bytes())
                        .map_err(io("cannot write to stdout"))?;
                    return Ok(());
                }
                history.push(&Picture::new(&nodes, &[], now).cpus);
                let clock = chrono_free_clock(now);
                let header = if args.once {
                    format!("harvest top · {url} · {clock}")
                } else {
                    format!(
                        "harvest top · {url} · {clock} · every {:?} (Ctrl-C quits)",
                        args.interval
                    )
                };
                frame(&nodes, &leases, &history, style, &header, now)
            }
            // One frame: the error is the command's. Refreshing: say so and keep trying.
            Err(e) if args.once => return Err(e.into()),
            Err(e) => format!(
                "harvest top · {url}: {e}\n(retrying every {:?})\n",
                args.interval
            ),
        };
        let clear = if tty && !args.once {
            "\x1b[H\x1b[2J"
        } else {
            ""
        };
        write!(stdout, "{clear}{text}")
            .and_then(|()| stdout.flush())
            .map_err(io("cannot write to stdout"))?;
        if args.once {
            return Ok(());
        }
        if !tty {
            let _ = writeln!(stdout);
        }
        std::thread::sleep(args.interval);
    }
}

/// Orders node names as people count: n2 before n10.
fn natural_key(name: &str) -> (String, u64, String) {
    let digits = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (prefix, number) = name.split_at(name.len() - digits);
    (
        prefix.to_owned(),
        number.parse().unwrap_or(0),
        name.to_owned(),
    )
}

/// hh:mm:ss UTC (no time zone database needed).
fn chrono_free_clock(unix_ms: i64) -> String {
    let s = unix_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s % 3600) / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harvest_core::{CpuSet, NodeView};

    fn node(name: &str, batch: &[u32], function: &[u32], idle: &[u32]) -> Node {
        let mut view = NodeView {
            name: name.into(),
            ..NodeView::default()
        };
        view.cpus.total = CpuSet::first_n(4);
        view.cpus.batch = batch.iter().copied().collect();
        view.cpus.function = function.iter().copied().collect();
        view.cpus.idle = idle.iter().copied().collect();
        view.memory_mib.total = 4096;
        view.memory_mib.batch = 1024;
        view.memory_mib.function = 512;
        view.memory_mib.idle = 1536;
        Node {
            view,
            state: "up".into(),
            last_report_unix_ms: 0,
            reclaims: 0,
            counters: Default::default(),
            revocations: Default::default(),
            interference: None,
        }
    }

    fn lease(id: &str, state: &str, cause: &str) -> Lease {
        Lease {
            id: id.into(),
            node: "m1".into(),
            uid: 1000,
            user: "alice".into(),
            cpus: vec![1],
            memory_mib: 512,
            gpus: vec![],
            state: state.into(),
            executor_address: String::new(),
            created_unix_ms: 0,
            expires_unix_ms: 0,
            end_reason: if cause.is_empty() {
                String::new()
            } else {
                "reclaimed by job 7".into()
            },
            end_cause: cause.into(),
            idle_timeout_ms: 0,
            last_active_unix_ms: 0,
            memory: None,
            secret: None,
        }
    }

    #[test]
    fn a_frame_shows_each_cpu_each_node_the_leases_and_revocations() {
        let nodes = [
            node("m1", &[0], &[1], &[2]),
            node("m2", &[0, 1], &[], &[2, 3]),
        ];
        let leases = [
            lease("L-live", "active", ""),
            lease("L-gone", "revoked", "reclaimed"),
            lease("L-done", "released", "released"),
        ];
        let mut h = History::default();
        h.push(&Picture::new(&nodes, &[], 0).cpus);
        h.push(&Picture::new(&nodes, &[], 0).cpus);
        let text = frame(&nodes, &leases, &h, Style { color: false }, "head", 5000);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} row in\n{text}"))
                .to_owned()
        };
        // m1: CPU 0 batch, 1 function, 2 idle, 3 in no list (reserved).
        assert!(row("m1 ").ends_with("BF.R"), "{text}");
        assert!(row("m1 ").contains("1/1/1"), "{text}");
        assert!(row("m2 ").ends_with("BB.."), "{text}");
        assert!(
            text.contains("batch 3") && text.contains("function 1"),
            "{text}"
        );
        assert!(text.contains("reserved 1  of 8"), "{text}");
        assert!(row("L-live").contains("alice"), "{text}");
        assert!(row("L-gone").contains("reclaimed by job 7"), "{text}");
        assert!(!text.contains("L-done"), "{text}");
        assert!(text.contains("2 samples"), "{text}");
        assert!(!text.contains('\x1b'), "no colour asked for: {text:?}");
        let colored = frame(&nodes, &leases, &h, Style { color: true }, "head", 5000);
        assert!(colored.contains("\x1b[30;42mF\x1b[0m"), "{colored:?}");
    }

    #[test]
    fn the_picture_counts_each_state_and_lists_only_live_leases() {
        let nodes = [node("m1", &[0], &[1, 0], &[2])];
        let p = Picture::new(
            &nodes,
            &[lease("a", "active", ""), lease("b", "expired", "expired")],
            1,
        );
        // CPU 0 is both batch and function (mid-reclaim): counted in both.
        assert_eq!(
            p.cpus,
            Counts {
                total: 4,
                batch: 1,
                function: 2,
                idle: 1,
                reserved: 1
            }
        );
        assert_eq!(p.memory_mib.reserved, 1024);
        assert_eq!(p.leases.len(), 1);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["nodes"][0]["cpus"]["function"], 2);
        assert_eq!(cpu_state(&nodes[0], 0), "contested");
    }

    #[test]
    fn sparklines_scale_to_the_top_and_clocks_are_utc() {
        assert_eq!(sparkline([0, 4, 8].into_iter(), 8), "▁▄█");
        assert_eq!(sparkline([3].into_iter(), 0), "▁");
        assert_eq!(chrono_free_clock(3_600_000 + 61_000), "01:01:01 UTC");
        let mut names = ["n10", "n2", "a", "n1"];
        names.sort_by_cached_key(|n| natural_key(n));
        assert_eq!(names, ["a", "n1", "n2", "n10"]);
    }
}
