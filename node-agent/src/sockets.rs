//! The two Unix sockets: the SPANK plugin's and the status query's.
//!
//! - `<run-dir>/harvestd-<node>.sock`: the SPANK plugin's socket, mode 0600 (root only), or 0660
//!   with `plugin_socket_group`. One [`PluginMessage`] line in, one [`AgentReply`] line out.
//! - `<run-dir>/harvestd-<node>.query.sock`: status for anyone, mode 0666, read-only by design.
//!
//! Each connection must deliver its line within `read_timeout` and at most
//! [`MAX_MESSAGE_BYTES`]; at most `max_connections` are served at once per socket (more are
//! answered "busy"). The plugin's path is the shortest thing in harvestd: the ledger task applies
//! the message in memory, [`Reclaimer`] takes the leases off the step's resources, the answer
//! goes out; saving happens after, elsewhere.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use harvest_core::step::{AgentReply, MAX_MESSAGE_BYTES, PluginMessage, decode, encode};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ledger_task::LedgerHandle;
use crate::query::{LedgerJob, QueryReply, QueryRequest};
use crate::reclaimer::Reclaimer;

/// A socket that could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another harvestd already serves {path}: stop it first (or use another --run-dir)")]
    AlreadyRunning { path: PathBuf },
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A socket file that is removed when the server stops.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds a socket with `mode` (and group `gid`) already set when it appears at `path`: it is
/// bound under a temp name, given its mode, then renamed into place. A stale socket from a
/// killed agent is replaced; a live one is an error.
pub fn bind(
    path: &Path,
    mode: u32,
    gid: Option<u32>,
) -> Result<(UnixListener, SocketFile), BindError> {
    let bind_err = |source| BindError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(BindError::AlreadyRunning {
                path: path.to_path_buf(),
            });
        }
        tracing::info!(path = %path.display(), "removing a stale socket");
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(bind_err)?;
    let tmp_file = SocketFile(tmp.clone());
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(bind_err)?;
    }
    std::fs::rename(&tmp, path).map_err(bind_err)?;
    std::mem::forget(tmp_file);
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// What the socket loops need.
#[derive(Debug, Clone)]
pub struct Served {
    pub ledger: LedgerHandle,
    pub reclaimer: Reclaimer,
    pub read_timeout: Duration,
    pub max_connections: usize,
}

/// Accepts on both sockets until `cancel` fires; connections run on `tracker`.
pub async fn serve(
    plugin: UnixListener,
    query: UnixListener,
    s: Served,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let plugin_slots = Arc::new(Semaphore::new(s.max_connections));
    let query_slots = Arc::new(Semaphore::new(s.max_connections));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            accepted = plugin.accept() => match accepted {
                Ok((stream, _)) => spawn_conn(stream, &plugin_slots, &tracker, {
                    let s = s.clone();
                    move |stream| serve_plugin(stream, s)
                }),
                Err(e) => tracing::warn!(error = %e, "accept on the plugin socket failed"),
            },
            accepted = query.accept() => match accepted {
                Ok((stream, _)) => spawn_conn(stream, &query_slots, &tracker, {
                    let s = s.clone();
                    move |stream| serve_query(stream, s)
                }),
                Err(e) => tracing::warn!(error = %e, "accept on the query socket failed"),
            },
        }
    }
}

/// Runs `serve` for the connection if a slot is free, else answers "busy".
fn spawn_conn<F, Fut>(
    mut stream: UnixStream,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
    serve: F,
) where
    F: FnOnce(UnixStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match slots.clone().try_acquire_owned() {
        Ok(permit) => {
            let fut = serve(stream);
            tracker.spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        Err(_) => {
            tracing::warn!("all connection slots busy; refusing a connection");
            tracker.spawn(async move {
                let reply = AgentReply::error("harvestd is busy: too many connections, retry");
                if let Ok(bytes) = encode(&reply) {
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes))
                        .await;
                }
            });
        }
    }
}

/// Reads one line of at most [`MAX_MESSAGE_BYTES`] within `timeout`.
async fn read_line(stream: &mut UnixStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let limited = (&mut *stream).take(MAX_MESSAGE_BYTES as u64 + 1);
    let mut reader = BufReader::new(limited);
    let read = reader.read_until(b'\n', &mut line);
    match tokio::time::timeout(timeout, read).await {
        Err(_) => Err(format!("no complete message within {timeout:?}")),
        Ok(Err(e)) => Err(format!("reading the message: {e}")),
        Ok(Ok(_)) if line.len() > MAX_MESSAGE_BYTES => Err(format!(
            "message exceeds the limit of {MAX_MESSAGE_BYTES} bytes"
        )),
        Ok(Ok(0)) => Err("connection closed before a message arrived".into()),
        Ok(Ok(_)) => Ok(line),
    }
}

async fn reply<T: Serialize>(stream: &mut UnixStream, body: &T, timeout: Duration) {
    let bytes = match encode(body) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            return;
        }
    };
    match tokio::time::timeout(timeout, stream.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "client left before the reply"),
        Err(_) => tracing::warn!("client did not take the reply within {timeout:?}"),
    }
}

/// One plugin message. A step start is answered only once every executor on the step's
/// resources has moved off them or is gone (bounded by `reclaim_timeout`): the batch job's
/// tasks never start beside a function on their CPUs.
async fn serve_plugin(mut stream: UnixStream, s: Served) {
    let answer = match read_line(&mut stream, s.read_timeout).await {
        Err(e) => AgentReply::error(e),
        Ok(line) => match decode::<PluginMessage>(&line) {
            Ok(msg) => handle_plugin(&s, msg).await,
            Err(e) => AgentReply::error(e.to_string()),
        },
    };
    if let Some(e) = &answer.error {
        tracing::warn!(error = %e, "plugin message refused");
    }
    reply(&mut stream, &answer, s.read_timeout).await;
}

/// The plugin path without the socket: ledger (memory), then reclaim.
pub async fn handle_plugin(s: &Served, msg: PluginMessage) -> AgentReply {
    let arrived = std::time::Instant::now();
    match s.ledger.plugin(msg, SystemTime::now()).await {
        Ok((reply, plan)) => {
            s.reclaimer.run(plan, arrived).await;
            reply
        }
        Err(e) => AgentReply::error(e.to_string()),
    }
}

async fn serve_query(mut stream: UnixStream, s: Served) {
    let answer = match read_line(&mut stream, s.read_timeout).await {
        Err(e) => QueryReply::error(e),
        Ok(line) => match decode::<QueryRequest>(&line) {
            Ok(QueryRequest::Status) => QueryReply {
                view: Some(s.ledger.snapshot().view.clone()),
                jobs: None,
                error: None,
            },
            Ok(QueryRequest::Jobs) => QueryReply {
                view: None,
                jobs: Some(ledger_jobs(&s.ledger.snapshot().ledger)),
                error: None,
            },
            Err(e) => QueryReply::error(e.to_string()),
        },
    };
    reply(&mut stream, &answer, s.read_timeout).await;
}

/// The ledger's batch jobs as the query protocol lists them.
pub fn ledger_jobs(ledger: &crate::ledger::Ledger) -> Vec<LedgerJob> {
    ledger
        .jobs
        .iter()
        .map(|(id, job)| LedgerJob {
            job_id: *id,
            uid: job.uid,
            steps: job.steps.iter().map(|s| s.step_id.0).collect(),
            recovered: job.recovered,
        })
        .collect()
}
