//! `harvest memory`: memory leases (a region of a node's idle memory, read and written by its
//! owner through the lease's executor).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use harvest_core::region::MemorySpec;

use super::exit::CliError;
use super::{io, parse_duration, parse_mem, print_lease, read_input};
use crate::invoke::{ExecutorConnection, Polling};
use crate::lease::{LeaseExt, LeaseRequest, SchedulerClient};

/// The most bytes one read or write carries: the executor's default transfer limit (4 MiB);
/// longer transfers are split.
pub const CHUNK_BYTES: usize = 4 << 20;

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Acquire a memory lease: a region of a node's idle memory (it holds no core; its executor
    /// shares the node's CPUs at the lowest weight under a CPU cap). A batch job that needs the
    /// memory revokes it, and its contents are lost: keep a copy of what matters.
    ///
    /// Example: harvest memory acquire --size 1G --lifetime 10m --json
    #[command(verbatim_doc_comment)]
    Acquire {
        /// The region's size in Slurm's notation (512M, 4G).
        #[arg(long, value_parser = parse_mem)]
        size: u64,
        /// The executor's CPU cap in thousandths of one CPU (10 to 1000; default 100): more
        /// serves more bandwidth and takes more from the node's batch jobs.
        #[arg(long, default_value_t = 0, hide_default_value = true)]
        cpu_millis: u32,
        /// How long the lease lives (e.g. 30s, 10m); default: the scheduler's.
        #[arg(long, value_parser = parse_duration)]
        lifetime: Option<Duration>,
        /// No read, write or renewal for this long ends the lease; default: the scheduler's
        /// (5 min).
        #[arg(long, value_parser = parse_duration)]
        idle_timeout: Option<Duration>,
        /// Not on this node (repeat for several): a replica of another memory lease goes
        /// elsewhere with `--not-on` that lease's node.
        #[arg(long, value_name = "NODE")]
        not_on: Vec<String>,
        /// JSON: the lease (id, node, memory.region_mib, executor_address, ...).
        #[arg(long)]
        json: bool,
    },
    /// Write bytes into a memory lease's region at an offset.
    ///
    /// Example: harvest memory write ID --offset 4096 --input data.bin
    #[command(verbatim_doc_comment)]
    Write {
        /// The lease's id.
        id: String,
        /// Where in the region, in bytes.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// The bytes: a file, or - for stdin.
        #[arg(long)]
        input: PathBuf,
    },
    /// Read bytes of a memory lease's region to stdout (raw).
    ///
    /// Example: harvest memory read ID --offset 4096 --len 1M > data.bin
    #[command(verbatim_doc_comment)]
    Read {
        /// The lease's id.
        id: String,
        /// Where in the region, in bytes.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// How many bytes: a number, or with a binary suffix (4K, 1M, 2G).
        #[arg(long, value_parser = parse_len)]
        len: u64,
    },
    /// Release a memory lease (its region is gone).
    Release {
        /// The lease's id.
        id: String,
    },
}

/// A length in bytes: digits with an optional binary suffix (K, M, G; KiB units).
fn parse_len(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a length: use bytes (4096) or 4K, 1M, 2G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// Runs a `harvest memory` command.
pub fn run(
    rt: &tokio::runtime::Runtime,
    client: &mut SchedulerClient,
    cmd: MemoryCommand,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    match cmd {
        MemoryCommand::Acquire {
            size,
            cpu_millis,
            lifetime,
            idle_timeout,
            not_on,
            json,
        } => {
            let spec = MemorySpec::new(size, cpu_millis).map_err(|e| CliError::Io {
                what: "bad memory lease".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()),
            })?;
            let mut req = LeaseRequest::memory(spec);
            req.lifetime = lifetime;
            req.idle_timeout = idle_timeout;
            req.avoid_nodes = not_on;
            let lease = rt.block_on(client.acquire(&req))?;
            print_lease(stdout, &lease, json)?;
        }
        MemoryCommand::Write { id, offset, input } => {
            let data = read_input(Some(&input))?;
            let mut conn = connect(rt, client, &id)?;
            write_all(&mut conn, offset, &data)?;
        }
        MemoryCommand::Read { id, offset, len } => {
            let mut conn = connect(rt, client, &id)?;
            read_all(&mut conn, offset, len, stdout)?;
            stdout
                .flush()
                .map_err(io("cannot write the bytes to stdout"))?;
        }
        MemoryCommand::Release { id } => rt.block_on(client.release(&id))?,
    }
    Ok(())
}

/// The lease's executor, proved with its secret (GetLease gives it to the owner alone).
fn connect(
    rt: &tokio::runtime::Runtime,
    client: &mut SchedulerClient,
    id: &str,
) -> Result<ExecutorConnection, CliError> {
    let lease = rt.block_on(client.get(id))?;
    if lease.memory.is_none() {
        return Err(CliError::Io {
            what: format!("lease {id} is not a memory lease"),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "acquire one with `harvest memory acquire --size SIZE`",
            ),
        });
    }
    Ok(lease.connect(Polling::Block)?)
}

/// Writes `data` at `offset` in pieces of at most [`CHUNK_BYTES`].
pub fn write_all(conn: &mut ExecutorConnection, offset: u64, data: &[u8]) -> Result<(), CliError> {
    let mut at = offset;
    for piece in data.chunks(CHUNK_BYTES) {
        conn.write(at, piece)?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Reads `len` bytes at `offset` in pieces of at most [`CHUNK_BYTES`] into `out`.
pub fn read_all(
    conn: &mut ExecutorConnection,
    offset: u64,
    len: u64,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut buf = Vec::new();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK_BYTES as u64) as u32;
        conn.read_into(offset + done, n, &mut buf)?;
        out.write_all(&buf)
            .map_err(io("cannot write the bytes to stdout"))?;
        done += u64::from(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_binary_suffixes_and_say_what_is_wrong() {
        assert_eq!(parse_len("4096"), Ok(4096));
        assert_eq!(parse_len("4K"), Ok(4096));
        assert_eq!(parse_len("1m"), Ok(1 << 20));
        assert_eq!(parse_len("2G"), Ok(2 << 30));
        assert!(parse_len("x").unwrap_err().contains("not a length"));
        assert!(
            parse_len("99999999999999G")
                .unwrap_err()
                .contains("too long")
        );
    }
}
