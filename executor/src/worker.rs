//! Serves one client connection in a worker process: read a request, run the function, answer.
//!
//! The socket is non-blocking. While the hot window lasts after an answer, the worker spins on it
//! (rFaaS's hot mode: no wake-up latency, one core burnt); afterwards it blocks in `poll` (warm
//! mode). Requests on one connection are served in order; a client keeps several in flight by
//! pipelining, and uses several connections for parallelism.
//!
//! Stalls: once a frame has begun to arrive, the worker spins for the rest of it only while
//! bytes keep coming (within the hot window of the last one; `always` spins), then blocks; if no
//! byte of the frame arrives for the frame timeout (5 s by default), in any mode, the worker
//! answers ERROR BadRequest and ends, freeing its slot. Between frames an authenticated
//! connection may stay idle as long as it likes (clients keep their connections): what bounds
//! those is the cap on authenticated connections, which only holders of the lease secret reach.

use std::ffi::c_void;
use std::io::{self, Read};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use harvest_core::invoke::memory::{self, Limits, MemOp};
use harvest_core::invoke::{self, CONNECTION_ID, ErrorCode, Frame};

use crate::buffer::GuardedBuffer;
use crate::config::{ExecutorConfig, HotWindow};
use crate::library::{FunctionLibrary, LibraryError};
use crate::region::MemoryRegion;
use crate::slot::{Slot, monotonic_ns};
use crate::supervisor::Serves;

/// The answer to `harvest.mem.*` on an executor without a region.
pub const NO_REGION: &str = "this lease has no memory region (it is a function lease)";
/// The answer to a function name on an executor with a region and no library.
pub const NO_FUNCTIONS: &str = "this is a memory lease: it has no functions";

/// Bytes a request may carry beyond its input (header, timeout, name, pad).
const REQUEST_OVERHEAD: usize = invoke::HEADER_BYTES + 4 + 2 + 1 + 256 + 255;

/// One connection's worker state.
#[derive(Debug)]
pub struct Worker<'a> {
    stream: TcpStream,
    library: Option<&'a mut FunctionLibrary>,
    region: Option<&'a MemoryRegion>,
    slot: &'a Slot,
    config: &'a ExecutorConfig,
    output: GuardedBuffer,
    inbox: Inbox,
    out_frame: Vec<u8>,
}

impl<'a> Worker<'a> {
    pub fn new(
        stream: TcpStream,
        serves: Serves<'a>,
        slot: &'a Slot,
        config: &'a ExecutorConfig,
    ) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            library: serves.library,
            region: serves.region,
            slot,
            config,
            output: GuardedBuffer::new(config.max_output_bytes)?,
            inbox: Inbox::default(),
            out_frame: Vec::new(),
        })
    }

    /// Serves requests until the client closes the connection.
    pub fn serve(&mut self) -> io::Result<()> {
        let mut idle_since = Instant::now();
        loop {
            if !self.fill_to(invoke::LEN_BYTES, idle_since)? {
                return Ok(());
            }
            let prefix = self.inbox.peek_prefix();
            let len = invoke::body_len(prefix);
            if len > self.config.max_input_bytes + REQUEST_OVERHEAD {
                let msg = format!(
                    "request of {len} bytes exceeds this executor's input limit of {} bytes",
                    self.config.max_input_bytes
                );
                self.send_error(CONNECTION_ID, ErrorCode::BadRequest, &msg)?;
                return Ok(());
            }
            if !self.fill_to(invoke::LEN_BYTES + len, idle_since)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut inbox = std::mem::take(&mut self.inbox);
            let result = self.handle(inbox.frame_body(len));
            inbox.consume(invoke::LEN_BYTES + len);
            self.inbox = inbox;
            result?;
            idle_since = Instant::now();
        }
    }

    fn handle(&mut self, body: &mut [u8]) -> io::Result<()> {
        // Decode borrows the body; copy out what is needed so the input can be passed mutably (the
        // ABI's `void *in` lets a function scribble on its input).
        let (id, timeout_ms, input_at, name) = match invoke::decode(body) {
            Ok(Frame::Invoke {
                id,
                timeout_ms,
                function,
                input,
            }) => (
                id,
                timeout_ms,
                body.len() - input.len(),
                function.to_owned(),
            ),
            Ok(_) => {
                return self.send_error(CONNECTION_ID, ErrorCode::BadRequest, "expected INVOKE");
            }
            Err(e) => return self.send_error(CONNECTION_ID, ErrorCode::BadRequest, &e.to_string()),
        };
        let input = &mut body[input_at..];
        if memory::is_memory_op(&name) {
            return self.memory_op(id, timeout_ms, &name, input);
        }
        let Some(library) = self.library.as_deref_mut() else {
            return self.send_error(id, ErrorCode::NoSuchFunction, NO_FUNCTIONS);
        };
        let function = match library.get(&name) {
            Ok(f) => f,
            Err(e @ (LibraryError::NotFound(_) | LibraryError::BadName(_))) => {
                return self.send_error(id, ErrorCode::NoSuchFunction, &e.to_string());
            }
            Err(e) => return self.send_error(id, ErrorCode::Internal, &e.to_string()),
        };
        self.slot.begin(id, self.deadline(timeout_ms));
        // SAFETY: this is the rFaaS function ABI. `input` is valid for `len` bytes and writable;
        // the output buffer is valid for its capacity and ends at a guard page, so an overflow is
        // a SIGSEGV (reported by the supervisor as a crash), not silent corruption. The input
        // length fits in u32 because the frame length does.
        let written = unsafe {
            function(
                input.as_mut_ptr().cast::<c_void>(),
                input.len() as u32,
                self.output.as_mut_ptr().cast::<c_void>(),
            )
        } as usize;
        self.slot.end();
        if written > self.output.capacity() {
            let msg = format!(
                "function {name} returned {written} bytes but its output buffer holds {}",
                self.output.capacity()
            );
            return self.send_error(id, ErrorCode::OutputTooLarge, &msg);
        }
        let header = match invoke::result_header(id, written) {
            Ok(h) => h,
            Err(e) => return self.send_error(id, ErrorCode::OutputTooLarge, &e.to_string()),
        };
        let output = self.output.as_slice(written);
        write_all_vectored(&self.stream, &header, output, self.spins())
    }

    /// The monotonic deadline of an invocation that asked for `timeout_ms` (0: the default).
    fn deadline(&self, timeout_ms: u32) -> u64 {
        let timeout = match timeout_ms {
            0 => self.config.default_timeout,
            ms => Duration::from_millis(ms.into()),
        };
        monotonic_ns().saturating_add(timeout.as_nanos() as u64)
    }

    /// Serves a `harvest.mem.*` operation from the region. It counts as an invocation (the
    /// slot's begin and end: activity, durations, the deadline), and answers on the normal
    /// RESULT path: a read is copied into the output buffer first.
    fn memory_op(&mut self, id: u64, timeout_ms: u32, name: &str, input: &[u8]) -> io::Result<()> {
        let Some(region) = self.region else {
            return self.send_error(id, ErrorCode::NoSuchFunction, NO_REGION);
        };
        let limits = Limits {
            region: region.len(),
            max_read: self.config.max_output_bytes.min(self.output.capacity()) as u64,
        };
        let op = match MemOp::decode(name, input, limits) {
            Ok(op) => op,
            Err(e) => return self.send_error(id, e.code(), &e.to_string()),
        };
        self.slot.begin(id, self.deadline(timeout_ms));
        let out = self.output.as_mut_slice();
        // Every range was checked against the region and the output limit by `decode`; the
        // region checks again (a false here is a bug, answered as such, never a wild copy).
        let (ok, written) = match op {
            MemOp::Size => {
                out[..8].copy_from_slice(&region.len().to_le_bytes());
                (true, 8)
            }
            MemOp::Read(r) => (region.read(r, out), r.len as usize),
            MemOp::Write { offset, data } => (region.write(offset, data), 0),
            MemOp::ReadV(ranges) => {
                let mut at = 0;
                let mut ok = true;
                for r in ranges.iter() {
                    ok &= region.read(r, &mut out[at..]);
                    at += r.len as usize;
                }
                (ok, at)
            }
            MemOp::WriteV { ranges, data } => {
                let mut at = 0;
                let mut ok = true;
                for r in ranges.iter() {
                    let len = r.len as usize;
                    ok &= region.write(r.offset, &data[at..at + len]);
                    at += len;
                }
                (ok, 0)
            }
        };
        self.slot.end();
        if !ok {
            let msg = format!("{name}: a checked range fell outside the region (a bug)");
            return self.send_error(id, ErrorCode::Internal, &msg);
        }
        let header = match invoke::result_header(id, written) {
            Ok(h) => h,
            Err(e) => return self.send_error(id, ErrorCode::OutputTooLarge, &e.to_string()),
        };
        let output = self.output.as_slice(written);
        write_all_vectored(&self.stream, &header, output, self.spins())
    }

    /// Whether this worker busy-polls (any hot window) rather than sleeping in the kernel.
    fn spins(&self) -> bool {
        self.config.hot_window != HotWindow::WARM
    }

    fn send_error(&mut self, id: u64, code: ErrorCode, message: &str) -> io::Result<()> {
        self.out_frame.clear();
        invoke::encode_error(&mut self.out_frame, id, code, message);
        write_all_vectored(&self.stream, &self.out_frame, &[], self.spins())
    }

    /// Receives until the inbox holds `want` bytes, spinning while the hot window lasts and
    /// blocking after. One `recv` takes whatever the kernel has, so a small request (length
    /// prefix and body) usually arrives in one system call. Returns false on a clean end of
    /// stream before the first byte; a frame that stops arriving for the frame timeout is
    /// answered with an error and ends the connection (`TimedOut`).
    fn fill_to(&mut self, want: usize, idle_since: Instant) -> io::Result<bool> {
        let started_empty = self.inbox.len() == 0;
        let frame_timeout = self.config.frame_timeout;
        let mut last_byte = Instant::now();
        while self.inbox.len() < want {
            let midway = self.inbox.len() > 0;
            // Hot: spin through the window after the last answer, and through the rest of a
            // frame while its bytes keep coming. Warm: sleep in the kernel until there is
            // something to read, or until a begun frame's time is up.
            let now =
                (midway || !matches!(self.config.hot_window, HotWindow::Always)).then(Instant::now);
            let stalled_for = now.map_or(Duration::ZERO, |n| n - last_byte);
            if midway && stalled_for >= frame_timeout {
                let msg = format!(
                    "incomplete frame: {} of {want} bytes arrived, then none for {frame_timeout:?}; closing the connection",
                    self.inbox.len()
                );
                self.send_error(CONNECTION_ID, ErrorCode::BadRequest, &msg)?;
                return Err(io::Error::new(io::ErrorKind::TimedOut, msg));
            }
            let hot = match self.config.hot_window {
                HotWindow::Always => true,
                HotWindow::For(w) if w.is_zero() => false,
                HotWindow::For(w) if midway => stalled_for < w,
                HotWindow::For(w) => now.is_some_and(|n| n - idle_since < w),
            };
            if !hot {
                let wait = midway.then(|| frame_timeout - stalled_for);
                if !wait_fd(self.stream.as_raw_fd(), libc::POLLIN, wait)? {
                    continue; // Timed out: the check above ends the connection.
                }
            }
            match self.inbox.recv(&self.stream, want) {
                Ok(0) if started_empty && !midway => return Ok(false),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {
                    if self.inbox.len() < want {
                        last_byte = Instant::now();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if hot {
                        std::hint::spin_loop();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Received bytes not yet consumed: `data()[start..end]`, where `data()` starts at an
/// [`invoke::ALIGN`]-aligned address, so a frame received at the start lands in phase with the
/// sender's pad (see `harvest_core::invoke`).
#[derive(Debug, Default)]
struct Inbox {
    buf: Vec<u8>,
    /// Where the aligned region starts in `buf`.
    off: usize,
    start: usize,
    end: usize,
}

/// The inbox's initial size: room for a small request and the next one's start.
const INBOX_BYTES: usize = 64 * 1024;

impl Inbox {
    fn len(&self) -> usize {
        self.end - self.start
    }

    fn data(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..]
    }

    fn peek_prefix(&self) -> [u8; invoke::LEN_BYTES] {
        let at = self.off + self.start;
        self.buf[at..at + invoke::LEN_BYTES]
            .try_into()
            .expect("the caller filled the prefix")
    }

    /// The body of the frame at the front (after its length prefix), mutable.
    fn frame_body(&mut self, len: usize) -> &mut [u8] {
        let at = self.start + invoke::LEN_BYTES;
        &mut self.data()[at..at + len]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room for `want` bytes from `start`: moves what is buffered to the front, or into a
    /// larger aligned buffer.
    fn make_room(&mut self, want: usize) {
        let cap = self.buf.len().saturating_sub(self.off);
        if self.start + want <= cap {
            return;
        }
        if want <= cap {
            let (start, end, off) = (self.start, self.end, self.off);
            self.buf.copy_within(off + start..off + end, off);
        } else {
            let mut bigger = vec![0u8; want.max(INBOX_BYTES) + invoke::ALIGN];
            let off = bigger.as_ptr().align_offset(invoke::ALIGN);
            let live = self.len();
            let from = self.off + self.start;
            bigger[off..off + live].copy_from_slice(&self.buf[from..from + live]);
            self.buf = bigger;
            self.off = off;
        }
        self.end -= self.start;
        self.start = 0;
    }

    /// One `recv` into the free space, first making room for `want` bytes from `start`.
    fn recv(&mut self, mut stream: &TcpStream, want: usize) -> io::Result<usize> {
        self.make_room(want);
        let end = self.end;
        let n = stream.read(&mut self.data()[end..])?;
        self.end += n;
        Ok(n)
    }
}

/// How long a write spins on a full socket buffer before it blocks in `poll`.
const WRITE_SPIN: Duration = Duration::from_millis(1);

/// Writes `a` then `b` to a non-blocking socket, in one `sendmsg` when the kernel takes it all
/// (with MSG_NOSIGNAL: workers run with SIGPIPE at its default, which would kill them when a
/// client goes away). On a full socket buffer it spins for a moment when `spin` (hot mode: no
/// wake-up latency), then blocks.
pub fn write_all_vectored(stream: &TcpStream, a: &[u8], b: &[u8], spin: bool) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    let mut blocked_since: Option<Instant> = None;
    while !a.is_empty() || !b.is_empty() {
        match send_vectored(stream.as_raw_fd(), a, b) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                blocked_since = None;
                let from_a = n.min(a.len());
                a = &a[from_a..];
                n -= from_a;
                b = &b[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if spin && since.elapsed() < WRITE_SPIN {
                    std::hint::spin_loop();
                } else {
                    wait_fd(stream.as_raw_fd(), libc::POLLOUT, None)?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `frame` to a non-blocking socket, waiting for room until `deadline` at the latest
/// (the supervisor's bounded write of an ERROR frame: it never waits on a peer for long).
pub fn write_all_until(stream: &TcpStream, frame: &[u8], deadline: Instant) -> io::Result<()> {
    let mut rest = frame;
    while !rest.is_empty() {
        match send_vectored(stream.as_raw_fd(), rest, &[]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || !wait_fd(stream.as_raw_fd(), libc::POLLOUT, Some(left))? {
                    return Err(io::ErrorKind::TimedOut.into());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One `sendmsg(MSG_NOSIGNAL)` of `a` then `b`.
fn send_vectored(fd: i32, a: &[u8], b: &[u8]) -> io::Result<usize> {
    let mut iov = [
        libc::iovec {
            iov_base: a.as_ptr() as *mut libc::c_void,
            iov_len: a.len(),
        },
        libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        },
    ];
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the iovecs point into `a` and `b`, which outlive the call; the kernel only reads
    // them.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Blocks until `fd` is ready for `events` (true) or `timeout` passes (false; `None` waits
/// for ever).
fn wait_fd(fd: i32, events: i16, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| {
        i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    loop {
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod inbox_tests {
    use super::*;

    #[test]
    fn the_inbox_stays_aligned_and_keeps_what_it_holds_when_it_grows() {
        let mut inbox = Inbox::default();
        inbox.make_room(10);
        assert_eq!(inbox.data().as_ptr() as usize % invoke::ALIGN, 0);
        inbox.data()[..6].copy_from_slice(b"abcdef");
        inbox.end = 6;
        inbox.consume(2);
        inbox.make_room(INBOX_BYTES * 2);
        assert_eq!(inbox.data().as_ptr() as usize % invoke::ALIGN, 0);
        assert_eq!((inbox.start, inbox.end), (0, 4));
        assert_eq!(&inbox.data()[..4], b"cdef");
        inbox.consume(1);
        // Room that fits only after a move to the front.
        inbox.make_room(inbox.buf.len() - inbox.off);
        assert_eq!((inbox.start, inbox.end), (0, 3));
        assert_eq!(&inbox.data()[..3], b"def");
    }
}
