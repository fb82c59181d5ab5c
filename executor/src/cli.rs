//! The executor's command line, in the library so that other binaries (the latency benchmark)
//! can run the very same executor as a subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{self, ExecutorConfig, HotWindow, MAX_PAYLOAD_BYTES, SECRET_ENV};
use anyhow::Context;
use harvest_core::invoke::auth::{LeaseSecret, SecretError};

/// Runs C-ABI functions (`uint32_t fn(void *in, uint32_t in_len, void *out)`) from a shared
/// library and serves invocations from clients over TCP, one worker process per connection.
/// With --region it also (or, without --lib, only) serves a memory region that the lease's owner
/// reads and writes by offset (the harvest.mem.* operations, docs/executor.md).
///
/// The lease secret comes from the environment variable HARVEST_LEASE_SECRET (64 hex digits),
/// never from the command line (which every user on the node can read).
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("serves").required(true).multiple(true).args(["lib", "region"])))]
pub struct Args {
    /// The function library (a .so exporting the functions by name). Optional with --region (a
    /// memory lease); one of the two is needed.
    #[arg(long)]
    lib: Option<PathBuf>,
    /// Serve a memory region of this size (a memory lease): bytes or with a binary suffix (64M,
    /// 4G, 1T), from 4K to 1T. Its pages are allocated (and charged to this process's memory
    /// cgroup) when first read or written.
    #[arg(long, value_parser = parse_region_size)]
    region: Option<u64>,
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// After each invocation, busy-poll this long before blocking: 'always' (hot), 'warm' (block
    /// at once), or a duration such as 100us or 5ms.
    #[arg(long, default_value = "1ms", value_parser = HotWindow::parse)]
    hot: HotWindow,
    /// Timeout of an invocation that asks for none, e.g. 500ms or 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Size of each worker's output buffer, and so the largest read of a region: bytes (1048576)
    /// or with a binary suffix (64K, 1M, 1G); 1 byte to 1G. Default: 1M, or 4M + 64 bytes with
    /// --region.
    #[arg(long, value_parser = parse_output_size)]
    max_output: Option<usize>,
    /// Largest accepted input: bytes or with a suffix (K, M, G); at most 1G. Default: 64M, or
    /// 4M + 16K with --region (a 4 MiB write and the longest range list of a writev).
    #[arg(long, value_parser = parse_input_size)]
    max_input: Option<usize>,
    /// Most authenticated connections served at once (each is a worker process).
    #[arg(long, default_value_t = config::DEFAULT_MAX_CONNECTIONS as u16, value_parser = clap::value_parser!(u16).range(1..))]
    max_connections: u16,
    /// Most connections still proving the lease secret at once; a new one past this closes the
    /// oldest.
    #[arg(long, default_value_t = config::DEFAULT_MAX_PENDING as u16, value_parser = clap::value_parser!(u16).range(1..))]
    max_pending: u16,
    /// Time a new connection has to prove the lease secret, e.g. 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_positive_duration)]
    handshake_timeout: Duration,
    /// Time a worker waits for the next byte of a frame that has begun to arrive before it
    /// closes the connection, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration)]
    frame_timeout: Duration,
    /// The lease cgroup's OOM counter file (v1 memory.oom_control, v2 memory.events), to report
    /// OOM kills as such.
    #[arg(long)]
    oom_events: Option<PathBuf>,
    /// Write the bound address to this file (atomically) once listening.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Write the bound address and a newline to this inherited pipe once listening, then close
    /// it (how harvestd learns the address: nothing in the lease directory is read by name).
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// Write the time of the latest invocation (Unix ms) here, at most once a second (the
    /// node agent reads it to end idle leases).
    #[arg(long)]
    activity_file: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    harvest_core::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} must be longer than zero, e.g. 2s or 500ms")),
        d => Ok(d),
    }
}

/// A size on the command line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid size {0:?}: use bytes (1048576) or a number with K, M, G or T (64K, 1M)")]
    Syntax(String),
    #[error("size {text:?} is {bytes} bytes, outside {min} to {max} bytes ({max_text})")]
    Range {
        text: String,
        bytes: u64,
        min: u64,
        max: u64,
        max_text: &'static str,
    },
}

/// A byte count: plain bytes, or a number with a binary suffix K, M, G or T (either case,
/// optionally followed by `B` or `iB`). Too large for `u64`: `u64::MAX`.
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let syntax = || SizeError::Syntax(text.to_owned());
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix(['B', 'b']))
        .unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let n: u64 = digits.parse().map_err(|_| syntax())?;
    Ok(n.checked_shl(shift)
        .filter(|b| b >> shift == n)
        .unwrap_or(u64::MAX))
}

/// A byte count ([`parse_bytes`]) within `min..=MAX_PAYLOAD_BYTES`.
pub fn parse_size(text: &str, min: usize) -> Result<usize, SizeError> {
    let bytes = parse_bytes(text)?;
    match usize::try_from(bytes) {
        Ok(b) if (min..=MAX_PAYLOAD_BYTES).contains(&b) => Ok(b),
        _ => Err(SizeError::Range {
            text: text.to_owned(),
            bytes,
            min: min as u64,
            max: MAX_PAYLOAD_BYTES as u64,
            max_text: "1G",
        }),
    }
}

/// A memory region's size ([`parse_bytes`]) within 4K..=1T.
pub fn parse_region_size(text: &str) -> Result<u64, SizeError> {
    let bytes = parse_bytes(text)?;
    if (config::MIN_REGION_BYTES..=config::MAX_REGION_BYTES).contains(&bytes) {
        Ok(bytes)
    } else {
        Err(SizeError::Range {
            text: text.to_owned(),
            bytes,
            min: config::MIN_REGION_BYTES,
            max: config::MAX_REGION_BYTES,
            max_text: "1T",
        })
    }
}

fn parse_output_size(s: &str) -> Result<usize, SizeError> {
    parse_size(s, 1)
}

fn parse_input_size(s: &str) -> Result<usize, SizeError> {
    parse_size(s, 0)
}

/// The lease secret could not be taken from the environment.
#[derive(Debug, thiserror::Error)]
pub enum SecretEnvError {
    #[error(
        "{SECRET_ENV} is not set: the executor needs its lease's secret (64 hex digits) in it; harvestd sets it"
    )]
    Missing,
    #[error("{SECRET_ENV} is not a lease secret: {0}")]
    Malformed(SecretError),
}

/// Reads the lease secret from [`SECRET_ENV`] and removes the variable from this process's
/// environment, so no worker and no program a function starts inherits it.
///
/// Call it while the process has a single thread (first thing in `main`): it edits the
/// environment.
pub fn take_secret_from_env() -> Result<LeaseSecret, SecretEnvError> {
    let value = std::env::var_os(SECRET_ENV);
    // SAFETY: the executor calls this first thing, while it is single-threaded (no runtime, no
    // threads are ever started by it), so no other thread reads the environment meanwhile.
    unsafe { std::env::remove_var(SECRET_ENV) };
    let value = value.ok_or(SecretEnvError::Missing)?;
    let text = value
        .to_str()
        .ok_or(SecretEnvError::Malformed(SecretError::Hex {
            len: value.len(),
            bad_digit: true,
        }))?;
    LeaseSecret::from_hex(text.trim()).map_err(SecretEnvError::Malformed)
}

/// Runs the executor until SIGTERM/SIGINT. The caller installs the tracing subscriber and calls
/// this while the process is single-threaded: the lease secret is taken from the environment
/// ([`take_secret_from_env`]) first.
pub fn run(args: Args) -> anyhow::Result<()> {
    let secret = take_secret_from_env()?;
    let mut cfg = ExecutorConfig::new(PathBuf::new(), secret);
    cfg.library = args.lib;
    cfg.region_bytes = args.region;
    cfg.listen = args.listen;
    cfg.hot_window = args.hot;
    cfg.default_timeout = args.timeout;
    let memory = args.region.is_some();
    cfg.max_output_bytes = args.max_output.unwrap_or(if memory {
        config::DEFAULT_REGION_MAX_OUTPUT_BYTES
    } else {
        config::DEFAULT_MAX_OUTPUT_BYTES
    });
    cfg.max_input_bytes = args.max_input.unwrap_or(if memory {
        config::DEFAULT_REGION_MAX_INPUT_BYTES
    } else {
        config::DEFAULT_MAX_INPUT_BYTES
    });
    cfg.max_connections = usize::from(args.max_connections);
    cfg.max_pending = usize::from(args.max_pending);
    cfg.handshake_timeout = args.handshake_timeout;
    cfg.frame_timeout = args.frame_timeout;
    cfg.oom_events = args.oom_events;
    cfg.activity_file = args.activity_file;
    let ready_file = args.ready_file;
    let mut ready_pipe = args.ready_fd.map(crate::ready::take_fd).transpose()?;
    crate::supervisor::run(&cfg, |addr| {
        println!("listening on {addr}");
        if let Some(pipe) = ready_pipe.take()
            && let Err(e) = crate::ready::send(pipe, addr)
        {
            // Whoever waits for the address would wait until its timeout: fail now, loudly.
            tracing::error!("cannot write the address to the ready fd: {e}");
            std::process::exit(1);
        }
        if let Some(path) = &ready_file {
            let tmp = path.with_extension("tmp");
            let r = std::fs::write(&tmp, format!("{addr}\n"))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = r {
                // Whoever waits for the file would wait forever: fail now, loudly.
                tracing::error!("cannot write the ready file {}: {e}", path.display());
                std::process::exit(1);
            }
        }
    })
    .context("harvest-executor failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_unless_they_carry_a_suffix() {
        // What harvestd passes: a plain byte count (read as MiB before, 1 MiB became 1 TiB).
        assert_eq!(parse_size("1048576", 1), Ok(1 << 20));
        assert_eq!(parse_size("4096", 1), Ok(4096));
        assert_eq!(parse_size("64K", 1), Ok(64 << 10));
        assert_eq!(parse_size("64k", 1), Ok(64 << 10));
        assert_eq!(parse_size("1M", 1), Ok(1 << 20));
        assert_eq!(parse_size("16MiB", 1), Ok(16 << 20));
        assert_eq!(parse_size("2MB", 1), Ok(2 << 20));
        assert_eq!(parse_size("1G", 1), Ok(1 << 30));
        assert_eq!(parse_size(" 7 ", 1), Ok(7));
        assert_eq!(parse_size("7B", 1), Ok(7));
        assert_eq!(parse_size("0", 0), Ok(0));
    }

    #[test]
    fn sizes_out_of_bounds_or_malformed_are_refused_with_the_rule() {
        for bad in ["", "M", "1.5M", "-1", "12X", "1P", "K1", "0x10"] {
            let e = parse_size(bad, 1).unwrap_err();
            assert!(
                matches!(e, SizeError::Syntax(_)),
                "{bad:?} should be a syntax error, got {e}"
            );
            assert!(e.to_string().contains("64K"), "{e}");
        }
        let e = parse_size("2G", 1).unwrap_err();
        assert!(
            matches!(e, SizeError::Range { bytes, .. } if bytes == 2 << 30),
            "{e}"
        );
        assert!(e.to_string().contains("1073741824"), "{e}");
        assert!(matches!(parse_size("0", 1), Err(SizeError::Range { .. })));
        assert!(matches!(parse_size("1T", 1), Err(SizeError::Range { .. })));
        // Overflow saturates into a range error, never wraps.
        assert!(matches!(
            parse_size("18446744073709551615G", 1),
            Err(SizeError::Range { .. })
        ));
        assert!(matches!(
            parse_size("99999999999999999999999", 1),
            Err(SizeError::Syntax(_))
        ));
    }

    #[test]
    fn region_sizes_run_from_a_page_to_a_tebibyte() {
        assert_eq!(parse_region_size("4K"), Ok(4096));
        assert_eq!(parse_region_size("4096"), Ok(4096));
        assert_eq!(parse_region_size("64M"), Ok(64 << 20));
        assert_eq!(parse_region_size("16G"), Ok(16 << 30));
        assert_eq!(parse_region_size("1T"), Ok(1 << 40));
        assert_eq!(parse_region_size("1TiB"), Ok(1 << 40));
        for bad in ["4095", "1025G", "2T", "0", "99999999999T"] {
            let e = parse_region_size(bad).unwrap_err();
            assert!(matches!(e, SizeError::Range { .. }), "{bad}: {e}");
            assert!(
                e.to_string().contains("4096 to 1099511627776 bytes (1T)"),
                "{e}"
            );
        }
        assert!(matches!(
            parse_region_size("lots"),
            Err(SizeError::Syntax(_))
        ));
    }
}
