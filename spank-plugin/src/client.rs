//! One exchange with the node agent over its Unix socket, within a hard deadline.
//!
//! The plugin runs inside slurmstepd before the job's tasks start, so every step on the node
//! waits for this. The connect is non-blocking (a Unix socket whose listen backlog is full would
//! otherwise block), and every read and write carries the time left until the deadline, so a
//! silent or stuck agent costs at most the configured timeout. No threads, no runtime.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harvest_core::step::{self, AgentReply, FrameError, MAX_MESSAGE_BYTES, PluginMessage};
use socket2::{Domain, SockAddr, Socket, Type};

/// Talks to the agent at one socket path.
#[derive(Debug, Clone)]
pub struct AgentClient {
    pub socket: PathBuf,
    pub timeout: Duration,
}

/// What went wrong talking to the agent. None of these may fail a job.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to the harvest agent at {path}: {source} (is harvestd running for this node?)"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("the harvest agent at {path} is not accepting connections (listen backlog full)")]
    Busy { path: PathBuf },
    #[error("the harvest agent at {path} did not answer within {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("talking to the harvest agent at {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the harvest agent at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("bad answer from the harvest agent at {path}: {source}")]
    Frame { path: PathBuf, source: FrameError },
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    /// Sends `msg` and waits for the agent's one-line reply, all within `self.timeout`.
    pub fn send(&self, msg: &PluginMessage) -> Result<AgentReply, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let frame = step::encode(msg).map_err(|source| self.frame(source))?;
        let mut stream = self.connect()?;
        self.set_timeout(&stream, deadline)?;
        stream
            .write_all(&frame)
            .map_err(|e| self.io_or_timeout(e))?;
        let line = self.read_line(&mut stream, deadline)?;
        step::decode(&line).map_err(|source| self.frame(source))
    }

    fn connect(&self) -> Result<UnixStream, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: self.socket.clone(),
            source,
        };
        let addr = SockAddr::unix(&self.socket).map_err(connect_err)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(connect_err)?;
        socket.set_nonblocking(true).map_err(connect_err)?;
        match socket.connect(&addr) {
            Ok(()) => {}
            // On Linux a non-blocking Unix connect either completes at once or fails with EAGAIN
            // when the backlog is full; it never waits.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ClientError::Busy {
                    path: self.socket.clone(),
                });
            }
            Err(e) => return Err(connect_err(e)),
        }
        socket.set_nonblocking(false).map_err(connect_err)?;
        Ok(UnixStream::from(std::os::fd::OwnedFd::from(socket)))
    }

    /// Gives the next read or write the time left; an elapsed deadline is a timeout.
    fn set_timeout(&self, stream: &UnixStream, deadline: Instant) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout_err());
        }
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(|source| self.io(source))
    }

    fn read_line(
        &self,
        stream: &mut UnixStream,
        deadline: Instant,
    ) -> Result<Vec<u8>, ClientError> {
        let mut line = Vec::with_capacity(256);
        let mut buf = [0u8; 4096];
        loop {
            self.set_timeout(stream, deadline)?;
            let n = match stream.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_or_timeout(e)),
            };
            if n == 0 {
                return Err(ClientError::Closed {
                    path: self.socket.clone(),
                });
            }
            line.extend_from_slice(&buf[..n]);
            if let Some(end) = line.iter().position(|&b| b == b'\n') {
                line.truncate(end + 1);
                return Ok(line);
            }
            if line.len() > MAX_MESSAGE_BYTES {
                return Err(self.frame(FrameError::TooLarge(line.len())));
            }
        }
    }

    fn timeout_err(&self) -> ClientError {
        ClientError::Timeout {
            path: self.socket.clone(),
            timeout: self.timeout,
        }
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.socket.clone(),
            source,
        }
    }

    fn io_or_timeout(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout_err(),
            _ => self.io(e),
        }
    }

    fn frame(&self, source: FrameError) -> ClientError {
        ClientError::Frame {
            path: self.socket.clone(),
            source,
        }
    }

    /// The socket path this client talks to.
    pub fn path(&self) -> &Path {
        &self.socket
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
