//! The read-only status query: its wire messages, the client `harvestd status` uses, and the
//! human-readable table.
//!
//! The agent answers status on a second socket, `<run-dir>/harvestd-<node>.query.sock`, which
//! anyone may connect to: it can only read. One request line, one reply line, framed with
//! [`harvest_core::step::encode`] like the plugin protocol.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use harvest_core::step::{FrameError, MAX_MESSAGE_BYTES, decode, encode};
use harvest_core::{CpuSet, NodeView};

/// The plugin's socket for `node`: `<run_dir>/harvestd-<node>.sock`.
pub fn plugin_socket(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("harvestd-{node}.sock"))
}

/// The status socket for `node`: `<run_dir>/harvestd-<node>.query.sock`.
pub fn query_socket(run_dir: &Path, node: &str) -> PathBuf {
    run_dir.join(format!("harvestd-{node}.query.sock"))
}

pub use harvest_core::query::{LedgerJob, QueryReply, QueryRequest};

/// A status query that failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(
        "no harvestd for node {node} at {path}: is it running? start it with `harvestd run --node {node} --run-dir {run_dir}` (or pass the --run-dir it uses)"
    )]
    NotRunning {
        node: String,
        path: PathBuf,
        run_dir: PathBuf,
    },
    #[error("talking to harvestd at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("harvestd at {path} sent a bad reply: {source}")]
    Frame { path: PathBuf, source: FrameError },
    #[error("harvestd at {path} answered with an error: {message}")]
    Agent { path: PathBuf, message: String },
}

/// Asks the agent of `node` for its view.
pub fn status(run_dir: &Path, node: &str, timeout: Duration) -> Result<NodeView, QueryError> {
    let path = query_socket(run_dir, node);
    let io = |source| QueryError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(QueryError::NotRunning {
                node: node.to_owned(),
                path,
                run_dir: run_dir.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = encode(&QueryRequest::Status).map_err(|source| QueryError::Frame {
        path: path.clone(),
        source,
    })?;
    stream.write_all(&request).map_err(io)?;
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_MESSAGE_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .map_err(io)?;
    let reply: QueryReply = decode(&line).map_err(|source| QueryError::Frame {
        path: path.clone(),
        source,
    })?;
    match (reply.view, reply.error) {
        (Some(view), _) => Ok(view),
        (None, message) => Err(QueryError::Agent {
            path,
            message: message.unwrap_or_else(|| "no view and no error".into()),
        }),
    }
}

/// The view as a table for people.
pub fn table(view: &NodeView) -> String {
    let list = |s: &CpuSet| {
        if s.is_empty() {
            "-".to_owned()
        } else {
            s.to_list()
        }
    };
    let gpus = |g: &[u32]| {
        if g.is_empty() {
            "-".to_owned()
        } else {
            g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        }
    };
    let c = &view.cpus;
    let m = &view.memory_mib;
    let g = &view.gpus;
    let rows = [
        [
            "".to_owned(),
            "total".into(),
            "batch".into(),
            "function".into(),
            "idle".into(),
        ],
        [
            "cpus".into(),
            list(&c.total),
            list(&c.batch),
            list(&c.function),
            list(&c.idle),
        ],
        [
            "memory (MiB)".into(),
            m.total.to_string(),
            m.batch.to_string(),
            m.function.to_string(),
            m.idle.to_string(),
        ],
        [
            "gpus".into(),
            gpus(&g.total),
            gpus(&g.batch),
            gpus(&g.function),
            gpus(&g.idle),
        ],
    ];
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = format!("node {}\n", view.name);
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use harvest_core::{CpuBreakdown, MemoryBreakdown};

    use super::*;

    #[test]
    fn table_lines_up_every_breakdown() {
        let view = NodeView {
            name: "n1".into(),
            cpus: CpuBreakdown {
                total: CpuSet::first_n(2),
                batch: [1].into_iter().collect(),
                function: CpuSet::new(),
                idle: [0].into_iter().collect(),
            },
            memory_mib: MemoryBreakdown {
                total: 24000,
                batch: 500,
                function: 0,
                idle: 22476,
            },
            gpus: Default::default(),
        };
        let t = table(&view);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "node n1");
        assert!(lines[1].trim_start().starts_with("total"));
        assert!(
            lines[2].starts_with("cpus") && lines[2].ends_with('0'),
            "{t}"
        );
        assert!(lines[2].contains("0-1"), "{t}");
        assert!(
            lines[3].contains("24000") && lines[3].contains("22476"),
            "{t}"
        );
        assert!(lines[4].starts_with("gpus"), "{t}");
        // Columns line up: "batch" sits above the batch values.
        let col = lines[1].find("batch").unwrap();
        assert_eq!(&lines[3][col..col + 3], "500", "{t}");
    }

    #[test]
    fn a_missing_agent_is_named_with_how_to_start_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = status(dir.path(), "n1", Duration::from_secs(1)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("no harvestd for node n1 at "), "{msg}");
        assert!(msg.contains("harvestd-n1.query.sock"), "{msg}");
        assert!(msg.contains("harvestd run --node n1"), "{msg}");
    }

    #[test]
    fn request_frame_is_versioned() {
        let bytes = encode(&QueryRequest::Status).unwrap();
        assert_eq!(bytes, b"{\"v\":1,\"type\":\"status\"}\n");
        assert_eq!(
            decode::<QueryRequest>(&bytes).unwrap(),
            QueryRequest::Status
        );
    }
}
