//! The supervisor: accepts clients, forks one worker per connection, and makes every failure of
//! a function an explicit error for its caller.
//!
//! The supervisor is single-threaded (so `fork` is sound) and never runs user code. It watches its
//! workers through pidfds, in one `poll` loop with the listener, a signalfd for SIGTERM/SIGINT
//! and the connections still in the lease-secret handshake ([`crate::handshake`]): a worker is
//! forked only for a connection that proved the secret.
//! It keeps each connection's socket: when a worker dies, it writes an ERROR frame naming the
//! invocation that was running (from the worker's shared [`Slot`]) and why (crash and signal,
//! the function's own exit and its status, timeout, or OOM kill from the cgroup's `oom_kill`
//! counter), then closes the connection.
//!
//! Workers run user code with every signal at its default disposition and an empty signal
//! mask (the Rust runtime's SIGSEGV handler would otherwise swallow a `raise(SIGSEGV)`, and the
//! supervisor's blocked SIGTERM/SIGINT would stay blocked).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use harvest_core::invoke::{self, CONNECTION_ID, ErrorCode};

use crate::config::ExecutorConfig;
use crate::handshake::Handshakes;
use crate::library::FunctionLibrary;
use crate::region::{MemoryRegion, RegionError};
use crate::slot::{Durations, Slot, monotonic_ns};
use crate::worker::{Worker, write_all_until};

/// How often running invocations are checked against their deadlines.
pub const DEADLINE_TICK: Duration = Duration::from_millis(2);

/// The executor could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Library(#[from] crate::library::LibraryError),
    #[error(transparent)]
    Harden(#[from] crate::harden::HardenError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(
        "nothing to serve: give a function library (--lib) or a memory region (--region), or both"
    )]
    NothingToServe,
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },
}

fn os(what: &'static str) -> impl FnOnce(io::Error) -> SupervisorError {
    move |source| SupervisorError::Os { what, source }
}

#[derive(Debug)]
struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    conn: TcpStream,
    slot: Slot,
    /// The invocation this supervisor killed for running past its deadline.
    timed_out: Option<(u64, u64)>,
    oom_kills_before: Option<u64>,
    /// `slot.begun()` when last looked at.
    begun_seen: u64,
}

/// Writes the latest activity to the activity file, at most once per interval: one line,
/// `LAST_MS COUNT SUM_NS B0 .. B7` (the latest invocation in Unix ms, finished invocations, the
/// sum of their durations, and their count per duration bucket, see [`crate::slot::DURATION_BUCKETS_NS`]).
struct Activity<'a> {
    file: Option<&'a std::path::Path>,
    written: Option<std::time::Instant>,
    pending: bool,
    last_ms: u128,
    /// Durations of workers that have exited.
    done: Durations,
}

impl Activity<'_> {
    fn note(&mut self) {
        self.pending = true;
        self.last_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
    }

    fn flush(&mut self, children: &[Child]) {
        let Some(file) = self.file else { return };
        let due = self
            .written
            .is_none_or(|w| w.elapsed() >= crate::config::ACTIVITY_WRITE_INTERVAL);
        if !self.pending || !due {
            return;
        }
        let mut all = self.done;
        for c in children {
            all.add(&c.slot.durations());
        }
        let buckets: Vec<String> = all.buckets.iter().map(u64::to_string).collect();
        let line = format!(
            "{} {} {} {}\n",
            self.last_ms,
            all.count(),
            all.sum_ns,
            buckets.join(" ")
        );
        if let Err(e) = std::fs::write(file, line) {
            tracing::warn!(file = %file.display(), error = %e, "cannot write the activity file");
        }
        self.written = Some(std::time::Instant::now());
        self.pending = false;
    }
}

/// Runs the executor until SIGTERM or SIGINT. `ready` is called once with the bound address.
///
/// This process is the executor: before loading the library it sets no_new_privs and its
/// rlimits ([`crate::harden`]), which hold for good.
pub fn run(config: &ExecutorConfig, ready: impl FnOnce(SocketAddr)) -> Result<(), SupervisorError> {
    crate::harden::harden_process()?;
    if config.library.is_none() && config.region_bytes.is_none() {
        return Err(SupervisorError::NothingToServe);
    }
    // Mapped once, before any worker forks: every worker shares the same pages.
    let region = config.region_bytes.map(MemoryRegion::map).transpose()?;
    let mut library = config
        .library
        .as_deref()
        .map(FunctionLibrary::load)
        .transpose()?;
    let listener = TcpListener::bind(config.listen).map_err(|source| SupervisorError::Listen {
        addr: config.listen,
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(os("making the listener non-blocking"))?;
    let addr = listener
        .local_addr()
        .map_err(os("reading the bound address"))?;
    let signals = block_signals_fd().map_err(os("creating a signalfd"))?;
    tracing::info!(
        %addr,
        library = %config.library.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
        region_bytes = config.region_bytes.unwrap_or(0),
        "executor listening"
    );
    ready(addr);

    let mut children: Vec<Child> = Vec::new();
    let mut handshakes = Handshakes::new(config.max_pending, config.handshake_timeout);
    let mut activity = Activity {
        file: config.activity_file.as_deref(),
        written: None,
        pending: false,
        last_ms: 0,
        done: Durations::default(),
    };
    loop {
        let mut fds = vec![
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        fds.extend(children.iter().map(|c| libc::pollfd {
            fd: c.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let first_pending = fds.len();
        fds.extend(handshakes.fds().map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        let mut timeout = if children.is_empty() && !activity.pending {
            -1
        } else if children.is_empty() {
            crate::config::ACTIVITY_WRITE_INTERVAL.as_millis() as i32
        } else {
            DEADLINE_TICK.as_millis() as i32
        };
        if let Some(d) = handshakes.next_deadline() {
            // Round up, so the deadline has passed when poll returns.
            let ms = d
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000);
            let ms = i32::try_from(ms).unwrap_or(i32::MAX);
            timeout = if timeout < 0 { ms } else { timeout.min(ms) };
        }
        // SAFETY: `fds` is a valid array of pollfds for its length.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(os("poll")(e));
        }
        if fds[1].revents != 0 {
            tracing::info!(workers = children.len(), "executor shutting down");
            for c in &children {
                // SAFETY: signals a child this supervisor forked and has not yet reaped.
                unsafe { libc::kill(c.pid, libc::SIGKILL) };
            }
            for c in children.drain(..) {
                reap(c.pid);
                tell(
                    &c.conn,
                    CONNECTION_ID,
                    ErrorCode::LeaseRevoked,
                    "executor shut down",
                );
            }
            return Ok(());
        }
        // Reap dead workers (iterate from the back so indices stay valid).
        for i in (0..children.len()).rev() {
            if fds[2 + i].revents != 0 {
                let child = children.swap_remove(i);
                activity.done.add(&child.slot.durations());
                activity.pending = true;
                finish(child, config);
            }
        }
        enforce_deadlines(&mut children);
        // A new invocation, or one still running (a long one keeps its lease from idling out).
        if children.iter_mut().any(|c| {
            let begun = c.slot.begun();
            std::mem::replace(&mut c.begun_seen, begun) != begun || c.slot.running().is_some()
        }) {
            activity.note();
        }
        // Answers to challenges before new connections: a peer that keeps opening connections
        // cannot push out an owner whose AUTH has arrived.
        let revents: Vec<i16> = fds[first_pending..].iter().map(|p| p.revents).collect();
        let mut proved = handshakes.progress(&revents, &config.secret, Instant::now());
        while let Some(conn) = proved.pop() {
            // Every other socket this process holds is the supervisor's, not the new worker's:
            // the listener, the signalfd, the workers' connections and pidfds, the connections
            // in the handshake and those proved beside this one.
            let mut inherited: Vec<RawFd> = vec![listener.as_raw_fd(), signals.as_raw_fd()];
            inherited.extend(handshakes.fds());
            inherited.extend(proved.iter().map(AsRawFd::as_raw_fd));
            for c in &children {
                inherited.push(c.conn.as_raw_fd());
                inherited.push(c.pidfd.as_raw_fd());
            }
            let serves = Serves {
                library: library.as_mut(),
                region: region.as_ref(),
            };
            admit_worker(conn, &inherited, &mut children, serves, config);
            activity.note();
        }
        if fds[0].revents != 0 {
            accept_all(&listener, &mut handshakes);
        }
        activity.flush(&children);
    }
}

fn enforce_deadlines(children: &mut [Child]) {
    let now = monotonic_ns();
    for c in children.iter_mut() {
        if let Some((id, deadline)) = c.slot.running()
            && now > deadline
            && c.timed_out.is_none()
        {
            // SAFETY: signals a child this supervisor forked and has not yet reaped.
            unsafe { libc::kill(c.pid, libc::SIGKILL) };
            c.timed_out = Some((id, deadline));
        }
    }
}

fn accept_all(listener: &TcpListener, handshakes: &mut Handshakes) {
    loop {
        match listener.accept() {
            Ok((conn, _)) => handshakes.admit(conn, Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return;
            }
        }
    }
}

/// What a worker serves: functions, a memory region, or both.
#[derive(Debug)]
pub struct Serves<'a> {
    pub library: Option<&'a mut FunctionLibrary>,
    pub region: Option<&'a MemoryRegion>,
}

/// Forks a worker for a connection that proved the lease secret, if a slot is free.
/// `inherited` are the supervisor's descriptors, which the worker closes.
fn admit_worker(
    conn: TcpStream,
    inherited: &[RawFd],
    children: &mut Vec<Child>,
    serves: Serves<'_>,
    config: &ExecutorConfig,
) {
    if children.len() >= config.max_connections {
        let msg = format!("executor busy: {} connections open", children.len());
        tell(&conn, CONNECTION_ID, ErrorCode::Internal, &msg);
        return;
    }
    match spawn_worker(conn, inherited, serves, config) {
        Ok(child) => children.push(child),
        Err(e) => tracing::error!(error = %e, "cannot start a worker"),
    }
}

/// Forks a worker for `conn`; `inherited` are the supervisor's descriptors, which the worker
/// closes.
fn spawn_worker(
    conn: TcpStream,
    inherited: &[RawFd],
    serves: Serves<'_>,
    config: &ExecutorConfig,
) -> io::Result<Child> {
    let slot = Slot::new()?;
    let oom_kills_before = config.oom_events.as_deref().and_then(read_oom_kills);
    // SAFETY: the supervisor is single-threaded, so the child may run arbitrary code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The worker: drop what belongs to the supervisor, then serve this one connection.
        let code = worker_main(conn, inherited, serves, &slot, config);
        // SAFETY: leave without running the supervisor's destructors or atexit handlers.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: pidfd_open on a child we just forked; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd < 0 {
        let e = io::Error::last_os_error();
        // SAFETY: kill and reap the child we cannot watch.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        reap(pid);
        return Err(e);
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Child {
        pid,
        pidfd,
        conn,
        slot,
        timed_out: None,
        oom_kills_before,
        begun_seen: 0,
    })
}

fn worker_main(
    conn: TcpStream,
    inherited: &[RawFd],
    serves: Serves<'_>,
    slot: &Slot,
    config: &ExecutorConfig,
) -> i32 {
    for &fd in inherited {
        // SAFETY: these descriptors belong to the supervisor; the worker never uses them.
        unsafe { libc::close(fd) };
    }
    // SAFETY: plain prctl call on this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    default_signals();
    // Under memory pressure the kernel should pick a worker, never the supervisor.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    match Worker::new(conn, serves, slot, config).and_then(|mut w| w.serve()) {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(error = %e, "worker connection ended");
            1
        }
    }
}

/// Gives user code what a freshly exec'd program has: every signal at its default disposition
/// (the Rust runtime installs SIGSEGV/SIGBUS handlers for its stack-overflow guard, which would
/// swallow a `raise(SIGSEGV)`, and ignores SIGPIPE) and an empty signal mask (the supervisor
/// blocks SIGTERM and SIGINT for its signalfd). The worker's own writes use MSG_NOSIGNAL.
pub fn default_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: resetting a disposition to SIG_DFL; the numbers glibc reserves fail with
        // EINVAL, which is fine.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: standard sigset manipulation on this process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Reports a dead worker's last invocation to its caller, then closes the connection.
fn finish(child: Child, config: &ExecutorConfig) {
    let status = reap(child.pid);
    let running = child.slot.running().map(|(id, _)| id);
    if let (Some(s), Some(id)) = (status, running)
        && libc::WIFEXITED(s)
    {
        // The function ended its worker (exit, _exit) in the middle of the invocation.
        let message = format!(
            "the function exited with status {} during invocation {id}",
            libc::WEXITSTATUS(s)
        );
        tracing::warn!(invocation = id, %message, "worker exited");
        tell(&child.conn, id, ErrorCode::Crashed, &message);
        return;
    }
    let Some(sig) = status.and_then(|s| libc::WIFSIGNALED(s).then(|| libc::WTERMSIG(s))) else {
        return; // A clean exit: the client closed its connection, or stalled mid-frame.
    };
    let id = running.unwrap_or(CONNECTION_ID);
    let (code, message) = if let Some((tid, _)) = child.timed_out {
        (
            ErrorCode::Timeout,
            format!("invocation {tid} ran past its timeout and was killed"),
        )
    } else if sig == libc::SIGKILL {
        let after = config.oom_events.as_deref().and_then(read_oom_kills);
        match (child.oom_kills_before, after) {
            (Some(b), Some(a)) if a > b => (
                ErrorCode::OutOfMemory,
                "function exceeded the lease's memory and was killed by the OOM killer".to_owned(),
            ),
            (Some(_), Some(_)) => (
                ErrorCode::Crashed,
                "function's worker was killed (SIGKILL)".to_owned(),
            ),
            _ => (
                ErrorCode::Crashed,
                "function's worker was killed (SIGKILL; possibly out of memory)".to_owned(),
            ),
        }
    } else {
        (
            ErrorCode::Crashed,
            format!("function crashed with {} (signal {sig})", signal_name(sig)),
        )
    };
    tracing::warn!(invocation = id, ?code, %message, "worker died");
    tell(&child.conn, id, code, &message);
}

/// How long the supervisor waits for room to write an ERROR frame to a client that does not
/// read (after which the frame is dropped and the connection closed).
pub const TELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Writes one ERROR frame (best effort: the client may be gone; at most [`TELL_TIMEOUT`]) and
/// shuts the connection down.
fn tell(conn: &TcpStream, id: u64, code: ErrorCode, message: &str) {
    let mut frame = Vec::new();
    invoke::encode_error(&mut frame, id, code, message);
    let _ = conn.set_nonblocking(true);
    let _ = write_all_until(conn, &frame, Instant::now() + TELL_TIMEOUT);
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// Waits for `pid` and returns its wait status.
fn reap(pid: libc::pid_t) -> Option<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out-pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Some(status);
        }
        if rc < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Reads the `oom_kill N` counter from a v1 `memory.oom_control` or v2 `memory.events` file.
pub fn read_oom_kills(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

/// Blocks SIGTERM and SIGINT and returns a signalfd that becomes readable when one arrives.
fn block_signals_fd() -> io::Result<OwnedFd> {
    // SAFETY: standard sigset manipulation and signalfd creation; results are checked.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_oom_counters_from_v1_and_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = dir.path().join("memory.oom_control");
        std::fs::write(&v1, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(read_oom_kills(&v1), Some(3));
        let v2 = dir.path().join("memory.events");
        std::fs::write(&v2, "low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n").unwrap();
        assert_eq!(read_oom_kills(&v2), Some(2));
        assert_eq!(read_oom_kills(&dir.path().join("missing")), None);
    }
}
