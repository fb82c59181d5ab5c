//! One module per subcommand; each has an `Args` (clap) and a `run`.
//!
//! To add a subcommand: a module here and one variant in `main.rs`'s `Command`.

pub mod bench;
pub mod bench_sim;
pub mod compare;
pub mod faults;
pub mod interference;
pub mod latency;
pub mod offload;
pub mod peers;
pub mod reclaim;
pub mod reclaim_load;
pub mod remote_memory;
pub mod simulate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use crate::sim::Progress;

/// Where results go unless `--out` says otherwise: `experiments/results/` in the source tree.
pub fn results_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// `shared/data` beside the checkout (`../shared/data` from the repository root).
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
}

/// A progress line on stderr: rewritten in place on a terminal, every 10 s otherwise.
pub fn progress_printer(label: String) -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    move |p: Progress| {
        if !tty && last.elapsed().as_secs() < 10 {
            return;
        }
        last = Instant::now();
        let total = (p.end_ms) as f64;
        let done = (p.sim_ms as f64 / total).min(1.0);
        let bar_len = 30;
        let filled = (done * bar_len as f64) as usize;
        let line = format!(
            "{label} [{}{}] {:5.1}%  {:.1} h simulated  {:.1} M events  {:.2} M events/s",
            "#".repeat(filled),
            " ".repeat(bar_len - filled),
            done * 100.0,
            p.sim_ms as f64 / 3.6e6,
            p.events as f64 / 1e6,
            p.events as f64 / p.wall_s.max(1e-9) / 1e6
        );
        if tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

/// Ends a progress line started with `\r`.
pub fn progress_done() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}
