//! Invoking functions on an executor: client to executor directly, no scheduler hop.
//!
//! An [`ExecutorConnection`] is one TCP connection to a lease's executor, opened with the lease's
//! secret: [`connect`](ExecutorConnection::connect) answers the executor's challenge with a proof
//! of the secret (see `harvest_core::invoke`), so only the lease's owner gets served. [`invoke`] sends a
//! request and waits for its answer; [`submit`] and [`wait`] keep several in flight (the executor
//! answers them in order on one connection; use one connection per leased core for parallelism).
//! [`Polling::Spin`] busy-polls for the answer (pairs with the executor's hot mode, lowest latency);
//! [`Polling::Block`] sleeps in the kernel.
//!
//! A memory lease's executor serves a region instead of (or beside) functions:
//! [`read`](ExecutorConnection::read), [`write`](ExecutorConnection::write),
//! [`readv`](ExecutorConnection::readv), [`writev`](ExecutorConnection::writev) and
//! [`region_size`](ExecutorConnection::region_size) are thin wrappers over the same invocations
//! (the reserved names of `harvest_core::invoke::memory`), with the same errors.
//!
//! [`invoke`]: ExecutorConnection::invoke
//! [`submit`]: ExecutorConnection::submit
//! [`wait`]: ExecutorConnection::wait

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use harvest_core::invoke::auth::{self, LeaseSecret};
use harvest_core::invoke::memory;
use harvest_core::invoke::{self, ErrorCode, Frame};

/// How long `connect` waits for the executor's challenge.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest frame accepted in place of a challenge (an ERROR's message is far shorter).
const MAX_HANDSHAKE_FRAME: usize = 64 * 1024;

/// How the client waits for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polling {
    /// Busy-poll the socket: lowest latency, one core spent waiting.
    Spin,
    /// Block in the kernel.
    Block,
}

/// An invocation that did not produce output.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("cannot connect to the executor at {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connection to the executor at {addr} failed: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error(
        "the executor at {addr} closed the connection with {in_flight} invocation(s) unanswered"
    )]
    Closed { addr: SocketAddr, in_flight: usize },
    #[error("no answer from the executor at {addr} within {waited:?}")]
    NoAnswer { addr: SocketAddr, waited: Duration },
    #[error("the executor at {addr} sent a malformed frame: {source}")]
    Protocol {
        addr: SocketAddr,
        source: invoke::DecodeError,
    },
    /// The executor refused the connection's proof of the lease secret.
    #[error("the executor at {addr} refused the lease secret: {message}")]
    Unauthorized { addr: SocketAddr, message: String },
    /// The lease carries no secret to prove (only its owner is told it).
    #[error(
        "lease {lease} came without its secret, which only its owner is given (AcquireLease's answer, GetLease to the owner): invoke it as the user who acquired it"
    )]
    NoSecret { lease: String },
    /// The executor answered with an error (crash, timeout, OOM, no such function, revoked...).
    #[error("{code}: {message}")]
    Remote {
        id: u64,
        code: ErrorCode,
        message: String,
    },
    #[error("invalid request: {0}")]
    Request(String),
}

impl InvokeError {
    /// The executor's error code, when it answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Remote { code, .. } => Some(*code),
            Self::Unauthorized { .. } => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }

    /// The executor's ERROR frame as an error: an `Unauthorized` one as [`Self::Unauthorized`].
    fn remote(addr: SocketAddr, id: u64, code: ErrorCode, message: &str) -> Self {
        match code {
            ErrorCode::Unauthorized => Self::Unauthorized {
                addr,
                message: message.to_owned(),
            },
            code => Self::Remote {
                id,
                code,
                message: message.to_owned(),
            },
        }
    }
}

/// One connection to an executor.
#[derive(Debug)]
pub struct ExecutorConnection {
    addr: SocketAddr,
    stream: TcpStream,
    polling: Polling,
    next_id: u64,
    in_flight: usize,
    /// How long to wait for an answer beyond the invocation's own timeout before giving up on a
    /// silent executor (its node may be gone).
    pub grace: Duration,
    frame: Vec<u8>,
    /// Bytes received but not yet read: `inbox[in_off + in_start..in_off + in_end]`. One `recv`
    /// brings a whole small answer (header and output) in one system call. `in_off` is where
    /// the buffer's [`invoke::ALIGN`]-aligned region starts, so answers arrive in phase with the
    /// executor's pad (see `harvest_core::invoke`).
    inbox: Vec<u8>,
    in_off: usize,
    in_start: usize,
    in_end: usize,
    /// The socket's read timeout as last set (Block mode), to skip needless `setsockopt`s.
    read_timeout: Option<Option<Duration>>,
}

/// The receive buffer's size; outputs larger than half of it are read straight into the
/// caller's buffer.
const INBOX_BYTES: usize = 16 * 1024;

impl ExecutorConnection {
    /// Connects to the executor at `addr` and proves `secret` (the lease's) to it. A wrong
    /// secret shows up as [`InvokeError::Unauthorized`] at the first answer: the proof is sent
    /// without waiting for a verdict, so the first invocation costs no extra round trip.
    pub fn connect(
        addr: SocketAddr,
        polling: Polling,
        secret: &LeaseSecret,
    ) -> Result<Self, InvokeError> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|source| InvokeError::Connect { addr, source })?;
        let io_err = |source| InvokeError::Io { addr, source };
        stream.set_nodelay(true).map_err(io_err)?;
        handshake(&mut stream, addr, secret)?;
        stream
            .set_nonblocking(polling == Polling::Spin)
            .map_err(io_err)?;
        let mut conn = Self {
            addr,
            stream,
            polling,
            next_id: 1,
            in_flight: 0,
            grace: Duration::from_secs(5),
            frame: Vec::new(),
            inbox: vec![0; INBOX_BYTES + invoke::ALIGN],
            in_off: 0,
            in_start: 0,
            in_end: 0,
            read_timeout: None,
        };
        conn.in_off = conn.inbox.as_ptr().align_offset(invoke::ALIGN);
        Ok(conn)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends an invocation without waiting; returns its id. `timeout` 0/None: the executor's default.
    pub fn submit(
        &mut self,
        function: &str,
        input: &[u8],
        timeout: Option<Duration>,
    ) -> Result<u64, InvokeError> {
        self.submit_parts(function, &[], &[input], timeout)
    }

    /// Sends an invocation whose input is `head` then every part, without copying the parts.
    fn submit_parts(
        &mut self,
        function: &str,
        head: &[u8],
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<u64, InvokeError> {
        let input_len = parts
            .iter()
            .try_fold(head.len(), |n, p| n.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        if function.is_empty() || function.len() > 255 {
            return Err(InvokeError::Request(format!(
                "function name {function:?} must be 1 to 255 bytes"
            )));
        }
        if input_len > u32::MAX as usize - 1024 {
            return Err(InvokeError::Request(format!(
                "input of {input_len} bytes is too large"
            )));
        }
        let timeout_ms = timeout.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32);
        let id = self.next_id;
        self.next_id += 1;
        self.frame.clear();
        // Pad so the (first part of the) input sits in the stream in phase with its buffer: the
        // kernel's copies then run at full speed (see harvest_core::invoke).
        let first = parts.first().map_or(0, |p| p.as_ptr() as usize);
        let phase = first.wrapping_sub(head.len()) % invoke::ALIGN;
        let pad = invoke::invoke_pad(function, phase);
        invoke::encode_invoke_header_padded(
            &mut self.frame,
            id,
            timeout_ms,
            function,
            input_len,
            pad,
        );
        self.frame.extend_from_slice(head);
        let addr = self.addr;
        write_all(&mut self.stream, &self.frame, parts)
            .map_err(|source| InvokeError::Io { addr, source })?;
        self.in_flight += 1;
        Ok(id)
    }

    /// Waits for the next answer: `(id, output)` or the executor's error for that id. The output
    /// is written into `output` (cleared first), so a caller can reuse one buffer.
    pub fn wait_into(
        &mut self,
        output: &mut Vec<u8>,
        max_wait: Option<Duration>,
    ) -> Result<u64, InvokeError> {
        let deadline = max_wait.map(|w| Instant::now() + w);
        let addr = self.addr;
        // Prefix and header first, so a result's output lands in `output` without a copy.
        let mut head = [0u8; invoke::LEN_BYTES + invoke::HEADER_BYTES];
        self.read_full(&mut head, deadline)?;
        let len = invoke::body_len(head[..invoke::LEN_BYTES].try_into().expect("4 bytes"));
        let Some(rest) = len.checked_sub(invoke::HEADER_BYTES) else {
            return Err(InvokeError::Protocol {
                addr,
                source: invoke::DecodeError::Short(len),
            });
        };
        output.clear();
        if head[invoke::LEN_BYTES] == invoke::RESULT_KIND {
            // The pad's length, then the pad (skipped), then the output.
            let mut pad = [0u8; 1 + u8::MAX as usize];
            self.read_full(&mut pad[..1], deadline)?;
            let skip = usize::from(pad[0]);
            let Some(rest) = rest.checked_sub(1 + skip) else {
                return Err(InvokeError::Protocol {
                    addr,
                    source: invoke::DecodeError::Short(len),
                });
            };
            self.read_full(&mut pad[1..1 + skip], deadline)?;
            output.resize(rest, 0);
            self.read_full(output, deadline)?;
            self.in_flight = self.in_flight.saturating_sub(1);
            let id = u64::from_le_bytes(head[invoke::LEN_BYTES + 1..].try_into().expect("8 bytes"));
            return Ok(id);
        }
        // Anything else is small: decode it whole.
        output.extend_from_slice(&head[invoke::LEN_BYTES..]);
        output.resize(len, 0);
        self.read_full(&mut output[invoke::HEADER_BYTES..], deadline)?;
        self.in_flight = self.in_flight.saturating_sub(1);
        let result = match invoke::decode(output) {
            Ok(Frame::Error { id, code, message }) => {
                Err(InvokeError::remote(addr, id, code, message))
            }
            Ok(_) => Err(InvokeError::Protocol {
                addr,
                source: invoke::DecodeError::Kind(1),
            }),
            Err(source) => Err(InvokeError::Protocol { addr, source }),
        };
        output.clear();
        result
    }

    /// Invokes `function` on `input` and waits for its output.
    pub fn invoke(
        &mut self,
        function: &str,
        input: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, InvokeError> {
        let mut out = Vec::new();
        self.invoke_into(function, input, timeout, &mut out)?;
        Ok(out)
    }

    /// Like [`invoke`](Self::invoke), reusing `output`.
    pub fn invoke_into(
        &mut self,
        function: &str,
        input: &[u8],
        timeout: Option<Duration>,
        output: &mut Vec<u8>,
    ) -> Result<(), InvokeError> {
        let id = self.submit(function, input, timeout)?;
        let max_wait = timeout.map(|t| t + self.grace);
        let got = self.wait_into(output, max_wait)?;
        if got != id {
            return Err(InvokeError::Request(format!(
                "answer for invocation {got} while waiting for {id}: use submit/wait to pipeline"
            )));
        }
        Ok(())
    }

    /// The size in bytes of the executor's memory region (`harvest.mem.size`).
    pub fn region_size(&mut self) -> Result<u64, InvokeError> {
        let out = self.invoke(memory::SIZE, &[], None)?;
        memory::decode_size(&out).ok_or_else(|| {
            InvokeError::Request(format!(
                "the executor answered harvest.mem.size with {} bytes, not 8",
                out.len()
            ))
        })
    }

    /// Reads `len` bytes at `offset` of the executor's memory region.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, InvokeError> {
        let mut out = Vec::new();
        self.read_into(offset, len, &mut out)?;
        Ok(out)
    }

    /// Like [`read`](Self::read), into `out` (cleared first), so a caller can reuse one buffer.
    pub fn read_into(
        &mut self,
        offset: u64,
        len: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), InvokeError> {
        self.invoke_into(memory::READ, &memory::encode_read(offset, len), None, out)?;
        expect_len(memory::READ, u64::from(len), out.len())
    }

    /// Writes `data` at `offset` of the executor's memory region.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), InvokeError> {
        let id = self.submit_write(offset, data)?;
        self.wait_empty(memory::WRITE, id)
    }

    /// Reads several ranges `(offset, len)` in one round trip (at most 1024, in total at most
    /// the executor's output limit); their bytes in order.
    pub fn readv(&mut self, ranges: &[(u64, u32)]) -> Result<Vec<Vec<u8>>, InvokeError> {
        let mut all = Vec::new();
        self.readv_into(ranges, &mut all)?;
        let mut at = 0;
        Ok(ranges
            .iter()
            .map(|&(_, len)| {
                let part = all[at..at + len as usize].to_vec();
                at += len as usize;
                part
            })
            .collect())
    }

    /// Like [`readv`](Self::readv), the ranges' bytes concatenated into `out` (cleared first).
    pub fn readv_into(
        &mut self,
        ranges: &[(u64, u32)],
        out: &mut Vec<u8>,
    ) -> Result<(), InvokeError> {
        let mut list = Vec::new();
        memory::encode_ranges(&mut list, ranges.iter().map(|&(o, l)| (o, l as usize)))
            .map_err(|e| InvokeError::Request(e.to_string()))?;
        self.invoke_into(memory::READV, &list, None, out)?;
        let total = ranges.iter().map(|&(_, l)| u64::from(l)).sum();
        expect_len(memory::READV, total, out.len())
    }

    /// Writes several `(offset, data)` pieces in one round trip (at most 1024), without copying
    /// the data.
    pub fn writev(&mut self, pieces: &[(u64, &[u8])]) -> Result<(), InvokeError> {
        let mut list = Vec::new();
        memory::encode_ranges(&mut list, pieces.iter().map(|&(o, d)| (o, d.len())))
            .map_err(|e| InvokeError::Request(e.to_string()))?;
        let parts: Vec<&[u8]> = pieces.iter().map(|&(_, d)| d).collect();
        let id = self.submit_parts(memory::WRITEV, &list, &parts, None)?;
        self.wait_empty(memory::WRITEV, id)
    }

    /// Sends a read without waiting (pipelining, as [`submit`](Self::submit)); its answer, from
    /// [`wait_into`](Self::wait_into), is the bytes.
    pub fn submit_read(&mut self, offset: u64, len: u32) -> Result<u64, InvokeError> {
        self.submit(memory::READ, &memory::encode_read(offset, len), None)
    }

    /// Sends a write without waiting (pipelining, as [`submit`](Self::submit)); its answer, from
    /// [`wait_into`](Self::wait_into), is empty.
    pub fn submit_write(&mut self, offset: u64, data: &[u8]) -> Result<u64, InvokeError> {
        self.submit_parts(
            memory::WRITE,
            &memory::encode_write_head(offset),
            &[data],
            None,
        )
    }

    /// Waits for the answer to `id`, which carries no output.
    fn wait_empty(&mut self, op: &str, id: u64) -> Result<(), InvokeError> {
        let mut out = Vec::new();
        let got = self.wait_into(&mut out, None)?;
        if got != id {
            return Err(InvokeError::Request(format!(
                "answer for invocation {got} while waiting for {id}: use submit/wait to pipeline"
            )));
        }
        expect_len(op, 0, out.len())
    }

    /// Moves buffered bytes into `buf`; returns how many.
    fn take_buffered(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.in_end - self.in_start);
        let from = self.in_off + self.in_start;
        buf[..n].copy_from_slice(&self.inbox[from..from + n]);
        self.in_start += n;
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        n
    }

    fn set_read_timeout(&mut self, deadline: Option<Instant>) -> Result<(), InvokeError> {
        let wanted = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        if self.read_timeout == Some(wanted) && wanted.is_none() {
            return Ok(());
        }
        let addr = self.addr;
        self.stream
            .set_read_timeout(wanted)
            .map_err(|source| InvokeError::Io { addr, source })?;
        self.read_timeout = Some(wanted);
        Ok(())
    }

    fn read_full(&mut self, buf: &mut [u8], deadline: Option<Instant>) -> Result<(), InvokeError> {
        let addr = self.addr;
        let mut got = self.take_buffered(buf);
        if got == buf.len() {
            return Ok(());
        }
        if self.polling == Polling::Block {
            self.set_read_timeout(deadline)?;
        }
        let mut spins = 0u32;
        while got < buf.len() {
            // Large remainders go straight to the caller; small ones through the inbox, which
            // also takes whatever follows (the next answer, when several are in flight).
            let direct = buf.len() - got >= INBOX_BYTES / 2;
            let read = if direct {
                self.stream.read(&mut buf[got..])
            } else {
                self.stream
                    .read(&mut self.inbox[self.in_off..self.in_off + INBOX_BYTES])
            };
            match read {
                Ok(0) => {
                    return Err(InvokeError::Closed {
                        addr,
                        in_flight: self.in_flight,
                    });
                }
                Ok(n) if direct => got += n,
                Ok(n) => {
                    self.in_start = 0;
                    self.in_end = n;
                    got += self.take_buffered(&mut buf[got..]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.polling == Polling::Block {
                        let waited = deadline.map_or(Duration::ZERO, |d| d.elapsed());
                        return Err(InvokeError::NoAnswer { addr, waited });
                    }
                    spins = spins.wrapping_add(1);
                    // Check the clock only now and then: it is the hot loop.
                    if spins.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(InvokeError::NoAnswer {
                            addr,
                            waited: Duration::ZERO,
                        });
                    }
                    std::hint::spin_loop();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Err(InvokeError::Closed {
                        addr,
                        in_flight: self.in_flight,
                    });
                }
                Err(source) => return Err(InvokeError::Io { addr, source }),
            }
        }
        Ok(())
    }
}

/// A memory operation's output must be exactly as long as asked for.
fn expect_len(op: &str, want: u64, got: usize) -> Result<(), InvokeError> {
    if got as u64 == want {
        Ok(())
    } else {
        Err(InvokeError::Request(format!(
            "the executor answered {op} with {got} bytes instead of {want}"
        )))
    }
}

/// Reads the executor's CHALLENGE and answers it with the proof of `secret`. The stream is
/// still blocking.
fn handshake(
    stream: &mut TcpStream,
    addr: SocketAddr,
    secret: &LeaseSecret,
) -> Result<(), InvokeError> {
    let io_err = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => InvokeError::NoAnswer {
            addr,
            waited: HANDSHAKE_TIMEOUT,
        },
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
            InvokeError::Closed { addr, in_flight: 0 }
        }
        _ => InvokeError::Io { addr, source },
    };
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io_err)?;
    let mut prefix = [0u8; invoke::LEN_BYTES];
    stream.read_exact(&mut prefix).map_err(io_err)?;
    let len = invoke::body_len(prefix);
    if len > MAX_HANDSHAKE_FRAME {
        return Err(InvokeError::Protocol {
            addr,
            source: invoke::DecodeError::AuthLength {
                expected: invoke::AUTH_FRAME_BYTES - invoke::LEN_BYTES,
                got: len,
            },
        });
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).map_err(io_err)?;
    let nonce = match invoke::decode(&body) {
        Ok(Frame::Challenge { nonce }) => nonce,
        Ok(Frame::Error { id, code, message }) => {
            return Err(InvokeError::remote(addr, id, code, message));
        }
        Ok(_) => {
            return Err(InvokeError::Protocol {
                addr,
                source: invoke::DecodeError::Kind(body[0]),
            });
        }
        Err(source) => return Err(InvokeError::Protocol { addr, source }),
    };
    let mut frame = Vec::with_capacity(invoke::AUTH_FRAME_BYTES);
    invoke::encode_auth(&mut frame, &auth::proof(secret, &nonce));
    stream.write_all(&frame).map_err(io_err)?;
    stream.set_read_timeout(None).map_err(io_err)
}

/// The most buffers one `writev` takes (Linux's IOV_MAX).
const IOV_MAX: usize = 1024;

/// Writes `head` then every part (one `writev` when the kernel takes them all), spinning on a
/// full socket.
fn write_all(stream: &mut TcpStream, head: &[u8], parts: &[&[u8]]) -> io::Result<()> {
    // One input (an invocation, a read or write) needs no allocation.
    let mut few = [io::IoSlice::new(&[]); 4];
    let mut many = Vec::new();
    let bufs: &mut [io::IoSlice<'_>] = if parts.len() < few.len() {
        few[0] = io::IoSlice::new(head);
        for (slot, p) in few[1..].iter_mut().zip(parts) {
            *slot = io::IoSlice::new(p);
        }
        &mut few
    } else {
        many.push(io::IoSlice::new(head));
        many.extend(parts.iter().map(|p| io::IoSlice::new(p)));
        &mut many
    };
    let mut bufs = bufs;
    while bufs.iter().any(|b| !b.is_empty()) {
        match stream.write_vectored(&bufs[..bufs.len().min(IOV_MAX)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// The lease secret of the fake executors.
    fn secret() -> LeaseSecret {
        LeaseSecret::from_bytes(&[42; 32]).unwrap()
    }

    /// A fake executor that checks the proof of [`secret`] (refusing a wrong one as the real
    /// executor does), answers each INVOKE of "echo" with its input and anything else with
    /// NoSuchFunction, then closes after `n` requests.
    fn fake_executor(n: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            // No Nagle: an answer held back waiting for an ACK would be lost to the reset
            // that closing with the unread third request sends.
            s.set_nodelay(true).unwrap();
            let nonce = auth::nonce().unwrap();
            let mut out = Vec::new();
            invoke::encode_challenge(&mut out, &nonce);
            s.write_all(&out).unwrap();
            let mut a = [0u8; invoke::AUTH_FRAME_BYTES];
            s.read_exact(&mut a).unwrap();
            let good = matches!(invoke::decode(&a[4..]), Ok(Frame::Auth { proof }) if auth::verify(&secret(), &nonce, &proof));
            if !good {
                out.clear();
                invoke::encode_error(&mut out, 0, ErrorCode::Unauthorized, "wrong proof");
                s.write_all(&out).unwrap();
                return;
            }
            for _ in 0..n {
                let mut p = [0u8; 4];
                s.read_exact(&mut p).unwrap();
                let mut body = vec![0u8; invoke::body_len(p)];
                s.read_exact(&mut body).unwrap();
                let mut out = Vec::new();
                match invoke::decode(&body).unwrap() {
                    Frame::Invoke {
                        id,
                        function: "echo",
                        input,
                        ..
                    } => invoke::encode_result(&mut out, id, input).unwrap(),
                    Frame::Invoke { id, function, .. } => {
                        invoke::encode_error(&mut out, id, ErrorCode::NoSuchFunction, function)
                    }
                    f => panic!("{f:?}"),
                }
                s.write_all(&out).unwrap();
            }
        });
        addr
    }

    #[test]
    fn inputs_at_any_alignment_and_of_any_size_come_back_whole() {
        // The client pads each INVOKE to its input's phase; the executor pads each RESULT.
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let cases = [
            (0, 1),
            (1, 100),
            (13, 20_000),
            (32, 65_536),
            (63, 65_537),
            (7, 0),
        ];
        let mut c =
            ExecutorConnection::connect(fake_executor(cases.len()), Polling::Spin, &secret())
                .unwrap();
        for (at, len) in cases {
            let input = &data[at..at + len];
            assert_eq!(
                c.invoke("echo", input, None).unwrap(),
                input,
                "at {at}, {len} B"
            );
        }
    }

    #[test]
    fn invokes_in_both_polling_modes() {
        for polling in [Polling::Spin, Polling::Block] {
            let mut c = ExecutorConnection::connect(fake_executor(2), polling, &secret()).unwrap();
            assert_eq!(c.invoke("echo", b"hi", None).unwrap(), b"hi");
            let err = c
                .invoke("nope", b"", Some(Duration::from_secs(1)))
                .unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::NoSuchFunction));
        }
    }

    #[test]
    fn pipelines_and_reports_a_closed_connection() {
        let mut c =
            ExecutorConnection::connect(fake_executor(2), Polling::Block, &secret()).unwrap();
        let a = c.submit("echo", b"a", None).unwrap();
        let b = c.submit("echo", b"b", None).unwrap();
        let third = c.submit("echo", b"c", None).unwrap();
        let mut out = Vec::new();
        assert_eq!(c.wait_into(&mut out, None).unwrap(), a);
        assert_eq!(out, b"a");
        assert_eq!(c.wait_into(&mut out, None).unwrap(), b);
        assert_eq!(out, b"b");
        // The fake closes after two: the third must be an error, never silence.
        assert!(third > b);
        let err = c
            .wait_into(&mut out, Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(
            matches!(err, InvokeError::Closed { in_flight: 1, .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_requests_before_sending() {
        let mut c =
            ExecutorConnection::connect(fake_executor(0), Polling::Block, &secret()).unwrap();
        assert!(matches!(
            c.submit("", b"", None),
            Err(InvokeError::Request(_))
        ));
    }

    #[test]
    fn a_wrong_secret_is_a_typed_refusal_at_the_first_answer() {
        let other = LeaseSecret::from_bytes(&[7; 32]).unwrap();
        let mut c = ExecutorConnection::connect(fake_executor(1), Polling::Block, &other).unwrap();
        let err = c
            .invoke("echo", b"x", Some(Duration::from_secs(5)))
            .unwrap_err();
        assert!(
            matches!(&err, InvokeError::Unauthorized { message, .. } if message == "wrong proof"),
            "{err:?}"
        );
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
        assert!(
            err.to_string().contains("refused the lease secret"),
            "{err}"
        );
    }

    #[test]
    fn a_peer_that_sends_no_challenge_is_a_protocol_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut out = Vec::new();
            invoke::encode_result(&mut out, 1, b"not a challenge").unwrap();
            let _ = s.write_all(&out);
            std::thread::sleep(Duration::from_millis(200));
        });
        let err = ExecutorConnection::connect(addr, Polling::Block, &secret()).unwrap_err();
        assert!(matches!(err, InvokeError::Protocol { .. }), "{err}");
    }
}
