//! The executor's output, bounded: its stdout and stderr are the write end of a pipe that the
//! lease's drain task copies into `executor.log` up to a cap.
//!
//! Past the cap the drain writes one line saying so and keeps reading and discarding, so the
//! executor never blocks on a full pipe; when the output ends it adds how much it dropped. The
//! log is root's file (created before the directory is handed over, written only through root's
//! fd, never by name), so the user cannot grow it past the cap either. The last
//! [`LOG_TAIL_BYTES`](super::LOG_TAIL_BYTES) of the output are kept in memory ([`Tail`]) for a
//! failed start's message: nothing is read back from the user's directory.
//!
//! The drain stops when every write end is closed (the executor and whatever it forked exited)
//! or when harvestd stops. An executor re-adopted after a restart has no reader any more: its
//! writes fail with `EPIPE` and its output is lost (docs/security.md).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a failed start's message waits for the drain to reach the end of the output (the
/// executor has exited, so this is the time to read what is left in the pipe).
pub const TAIL_SETTLE: Duration = Duration::from_millis(200);
/// The most read from the pipe at once.
const CHUNK: usize = 64 * 1024;

/// The last bytes of an executor's output, kept in memory by its drain.
#[derive(Debug, Clone)]
pub struct Tail {
    bytes: Arc<Mutex<VecDeque<u8>>>,
    limit: usize,
    done: watch::Receiver<bool>,
}

impl Tail {
    fn push(&self, chunk: &[u8]) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let keep = &chunk[chunk.len().saturating_sub(self.limit)..];
        let overflow = (bytes.len() + keep.len()).saturating_sub(self.limit);
        bytes.drain(..overflow);
        bytes.extend(keep);
    }

    /// The kept bytes as text, once the drain has read to the end of the output or
    /// [`TAIL_SETTLE`] has passed; `(empty)` when there was none.
    pub async fn text(&self) -> String {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(TAIL_SETTLE, done.wait_for(|d| *d)).await;
        self.snapshot()
    }

    /// The kept bytes as text now.
    pub fn snapshot(&self) -> String {
        let bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = bytes.as_slices();
        let text = String::from_utf8_lossy(&[a, b].concat()).trim().to_owned();
        if text.is_empty() {
            "(empty)".to_owned()
        } else {
            text
        }
    }
}

/// How much of the output went where.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Bytes of output written to the log (at most the cap).
    pub written: u64,
    /// Bytes read and discarded past the cap.
    pub dropped: u64,
}

/// An executor's output pipe: give `output` to the process as stdout and stderr, spawn `drain`.
pub struct OutputPipe {
    pub output: OwnedFd,
    pub tail: Tail,
    pub drain: std::pin::Pin<Box<dyn std::future::Future<Output = Drained> + Send>>,
}

impl std::fmt::Debug for OutputPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputPipe")
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

/// A pipe whose read end is drained into `log` (at most `cap` bytes of output), keeping the last
/// `tail_bytes` in memory; the drain also ends when `cancel` fires.
pub fn output_pipe(
    log: File,
    cap: u64,
    tail_bytes: usize,
    cancel: CancellationToken,
) -> io::Result<OutputPipe> {
    let (read, write) = io::pipe()?;
    let read = pipe::Receiver::from_owned_fd(read.into())?;
    let (done_tx, done) = watch::channel(false);
    let tail = Tail {
        bytes: Arc::new(Mutex::new(VecDeque::with_capacity(tail_bytes))),
        limit: tail_bytes,
        done,
    };
    let kept = tail.clone();
    let drain = Box::pin(async move {
        let log = tokio::fs::File::from_std(log);
        let drained = tokio::select! {
            d = drain(read, log, cap, &kept) => d,
            () = cancel.cancelled() => Drained::default(),
        };
        let _ = done_tx.send(true);
        drained
    });
    Ok(OutputPipe {
        output: write.into(),
        tail,
        drain,
    })
}

/// Copies `pipe` into `log` up to `cap` bytes, then one truncation line, then discards (still
/// reading) until end-of-file; the last line says how much was dropped. Every byte read goes to
/// `tail`. A log that cannot be written any more (a full disk) is given up on, the pipe is still
/// drained.
pub async fn drain(
    mut pipe: pipe::Receiver,
    mut log: impl AsyncWrite + Unpin,
    cap: u64,
    tail: &Tail,
) -> Drained {
    let mut buf = vec![0u8; CHUNK];
    let mut d = Drained::default();
    let mut log_ok = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading an executor's output failed");
                break;
            }
        };
        let chunk = &buf[..n];
        tail.push(chunk);
        let room = usize::try_from(cap - d.written).unwrap_or(usize::MAX);
        let (keep, rest) = chunk.split_at(n.min(room));
        if !keep.is_empty() && log_ok {
            log_ok = write(&mut log, keep).await;
        }
        d.written += keep.len() as u64;
        if !rest.is_empty() {
            if d.dropped == 0 && log_ok {
                let line = format!(
                    "\n[harvest: log truncated after {} bytes; later output is dropped]\n",
                    d.written
                );
                log_ok = write(&mut log, line.as_bytes()).await;
            }
            d.dropped += rest.len() as u64;
        }
    }
    if d.dropped > 0 {
        if log_ok {
            let line = format!(
                "[harvest: log truncated after {} bytes; {} bytes dropped]\n",
                d.written, d.dropped
            );
            let _ = write(&mut log, line.as_bytes()).await;
        }
        tracing::info!(
            written = d.written,
            dropped = d.dropped,
            "an executor's log reached its cap"
        );
    }
    d
}

async fn write(log: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> bool {
    match log.write_all(bytes).await {
        Ok(()) => log.flush().await.is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "writing an executor's log failed; the rest of its output is dropped");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    fn log_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("executor.log"))
            .unwrap();
        (dir, f)
    }

    fn contents(f: &mut File) -> String {
        let mut s = String::new();
        f.rewind().unwrap();
        f.read_to_string(&mut s).unwrap();
        s
    }

    #[tokio::test]
    async fn output_past_the_cap_is_counted_and_dropped_and_the_writer_never_blocks() {
        let (_dir, mut f) = log_file();
        let p = output_pipe(f.try_clone().unwrap(), 1000, 16, CancellationToken::new()).unwrap();
        let drain = tokio::spawn(p.drain);
        // Ten times a pipe's capacity from a thread that blocks if nobody reads.
        let writer = std::thread::spawn(move || {
            let mut out = File::from(p.output);
            for _ in 0..640 {
                out.write_all(&[b'x'; 1024]).unwrap();
            }
            out.write_all(b"the last words\n").unwrap();
        });
        let drained = drain.await.unwrap();
        writer.join().unwrap();
        let total = 640 * 1024 + 15;
        assert_eq!(
            drained,
            Drained {
                written: 1000,
                dropped: total - 1000
            }
        );
        let log = contents(&mut f);
        assert!(log.starts_with(&"x".repeat(1000)), "{}", &log[..40]);
        assert_eq!(
            &log[1000..],
            format!(
                "\n[harvest: log truncated after 1000 bytes; later output is dropped]\n\
                 [harvest: log truncated after 1000 bytes; {} bytes dropped]\n",
                total - 1000
            )
        );
        // The tail is the end of everything written, dropped or not.
        assert_eq!(p.tail.text().await, "xthe last words");
    }

    #[tokio::test]
    async fn output_under_the_cap_is_kept_whole_and_the_tail_waits_for_the_end() {
        let (_dir, mut f) = log_file();
        let p = output_pipe(
            f.try_clone().unwrap(),
            1 << 20,
            600,
            CancellationToken::new(),
        )
        .unwrap();
        let tail = p.tail.clone();
        assert_eq!(tail.snapshot(), "(empty)");
        let drain = tokio::spawn(p.drain);
        let mut out = File::from(p.output);
        out.write_all(b"harvestd exec-lease: joining the lease cgroup: No space left\n")
            .unwrap();
        drop(out);
        // Read after the writer is gone: the drain has reached the end.
        assert_eq!(
            tail.text().await,
            "harvestd exec-lease: joining the lease cgroup: No space left"
        );
        assert_eq!(drain.await.unwrap().dropped, 0);
        assert_eq!(
            contents(&mut f),
            "harvestd exec-lease: joining the lease cgroup: No space left\n"
        );
    }

    #[tokio::test]
    async fn the_drain_ends_when_harvestd_stops_even_with_a_writer_left() {
        let (_dir, f) = log_file();
        let cancel = CancellationToken::new();
        let p = output_pipe(f, 100, 100, cancel.clone()).unwrap();
        let drain = tokio::spawn(p.drain);
        cancel.cancel();
        assert_eq!(drain.await.unwrap(), Drained::default());
        drop(p.output);
    }
}
