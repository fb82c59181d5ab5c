//! The lease-secret handshake, done by the supervisor before it forks a worker for a connection
//! (see `harvest_core::invoke` for the frames): an unauthenticated peer never costs a process
//! and never holds one of the [`max_connections`](crate::ExecutorConfig::max_connections) slots.
//!
//! Each accepted connection is sent a CHALLENGE with a fresh nonce and waits here, non-blocking,
//! for its AUTH. Two bounds keep peers without the secret from locking the owner out:
//! - a deadline ([`handshake_timeout`](crate::ExecutorConfig::handshake_timeout), 2 s by
//!   default) after which a connection without a valid AUTH is refused;
//! - a cap on waiting connections ([`max_pending`](crate::ExecutorConfig::max_pending)): a new
//!   connection past it closes the *oldest* waiting one, so whoever holds connections open must
//!   keep opening new ones faster than the owner answers its challenge (one round trip) to keep
//!   the owner out, and the supervisor reads answers before it accepts new connections.
//!
//! Exactly the AUTH frame's bytes are read, so an INVOKE the client sent right behind it stays
//! in the socket for the worker.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use harvest_core::invoke::auth::{self, LeaseSecret};
use harvest_core::invoke::{self, AUTH_FRAME_BYTES, CONNECTION_ID, ErrorCode, Frame};

/// A connection that has been challenged and has not yet proved the secret.
#[derive(Debug)]
struct Pending {
    conn: TcpStream,
    nonce: [u8; auth::NONCE_BYTES],
    deadline: Instant,
    got: [u8; AUTH_FRAME_BYTES],
    have: usize,
}

/// What reading a pending connection's bytes led to.
enum Progress {
    Waiting,
    Proved,
    Refused(String),
    /// The peer closed or broke the connection: nothing to tell it.
    Gone,
}

/// The connections waiting to prove the lease secret, oldest first.
#[derive(Debug)]
pub struct Handshakes {
    pending: VecDeque<Pending>,
    max: usize,
    timeout: Duration,
}

impl Handshakes {
    pub fn new(max: usize, timeout: Duration) -> Self {
        Self {
            pending: VecDeque::with_capacity(max),
            max: max.max(1),
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The waiting connections' descriptors, in the order [`progress`](Self::progress) takes
    /// their poll results.
    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.pending.iter().map(|p| p.conn.as_raw_fd())
    }

    /// The earliest deadline of a waiting connection.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.deadline).min()
    }

    /// Challenges a newly accepted connection and keeps it waiting for its AUTH; past the cap,
    /// the oldest waiting connection is refused to make room.
    pub fn admit(&mut self, conn: TcpStream, now: Instant) {
        let nonce = match auth::nonce() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot make a challenge nonce; closing the connection");
                refuse(conn, ErrorCode::Internal, &e.to_string());
                return;
            }
        };
        let mut frame = Vec::with_capacity(AUTH_FRAME_BYTES);
        invoke::encode_challenge(&mut frame, &nonce);
        // A fresh socket's send buffer is empty: the 45 bytes go at once or the peer is gone.
        let sent = conn
            .set_nonblocking(true)
            .and_then(|()| (&conn).write(&frame));
        if !matches!(sent, Ok(n) if n == frame.len()) {
            return;
        }
        if self.pending.len() >= self.max
            && let Some(oldest) = self.pending.pop_front()
        {
            tracing::debug!("handshake cap reached: closing the oldest unauthenticated connection");
            refuse(
                oldest.conn,
                ErrorCode::Unauthorized,
                "the connection did not prove the lease secret before newer connections took its place",
            );
        }
        self.pending.push_back(Pending {
            conn,
            nonce,
            deadline: now + self.timeout,
            got: [0; AUTH_FRAME_BYTES],
            have: 0,
        });
    }

    /// Reads the connections whose poll result in `revents` (aligned with [`fds`](Self::fds))
    /// is set, refuses wrong proofs and expired ones, and returns the connections that proved
    /// the secret (ready for a worker; any bytes after the AUTH are still in the socket).
    pub fn progress(
        &mut self,
        revents: &[i16],
        secret: &LeaseSecret,
        now: Instant,
    ) -> Vec<TcpStream> {
        let mut proved = Vec::new();
        let mut kept = VecDeque::with_capacity(self.pending.len());
        let all = std::mem::take(&mut self.pending);
        for (i, mut p) in all.into_iter().enumerate() {
            let step = if revents.get(i).is_some_and(|&r| r != 0) {
                p.read(secret)
            } else {
                Progress::Waiting
            };
            match step {
                Progress::Proved => proved.push(p.conn),
                Progress::Gone => {}
                Progress::Refused(why) => {
                    tracing::info!(reason = %why, "refused a connection without the lease secret");
                    refuse(p.conn, ErrorCode::Unauthorized, &why);
                }
                Progress::Waiting if now >= p.deadline => {
                    let why = format!(
                        "the connection did not prove the lease secret: no AUTH within {:?}",
                        self.timeout
                    );
                    refuse(p.conn, ErrorCode::Unauthorized, &why);
                }
                Progress::Waiting => kept.push_back(p),
            }
        }
        self.pending = kept;
        proved
    }
}

impl Pending {
    fn read(&mut self, secret: &LeaseSecret) -> Progress {
        while self.have < AUTH_FRAME_BYTES {
            match (&self.conn).read(&mut self.got[self.have..]) {
                Ok(0) => return Progress::Gone,
                Ok(n) => self.have += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Progress::Gone,
            }
        }
        // Refuse as soon as the length prefix shows this is no AUTH frame.
        if self.have >= invoke::LEN_BYTES {
            let len = invoke::body_len(self.got[..invoke::LEN_BYTES].try_into().expect("4"));
            if len != AUTH_FRAME_BYTES - invoke::LEN_BYTES {
                return Progress::Refused(format!(
                    "the connection did not prove the lease secret: its first frame ({len} bytes) is no AUTH"
                ));
            }
        }
        if self.have < AUTH_FRAME_BYTES {
            return Progress::Waiting;
        }
        match invoke::decode(&self.got[invoke::LEN_BYTES..]) {
            Ok(Frame::Auth { proof }) if auth::verify(secret, &self.nonce, &proof) => {
                Progress::Proved
            }
            Ok(Frame::Auth { .. }) => Progress::Refused(
                "the connection did not prove the lease secret: wrong proof (only the lease's owner has its secret)"
                    .to_owned(),
            ),
            _ => Progress::Refused(
                "the connection did not prove the lease secret: its first frame is no AUTH"
                    .to_owned(),
            ),
        }
    }
}

/// Tells the peer why (one ERROR frame with id 0, without blocking: the supervisor never waits
/// on a peer) and closes the connection. What the peer sent meanwhile is read and dropped
/// first, so that the close does not reset the connection before the peer reads the error.
fn refuse(conn: TcpStream, code: ErrorCode, message: &str) {
    let mut frame = Vec::new();
    invoke::encode_error(&mut frame, CONNECTION_ID, code, message);
    let _ = conn.set_nonblocking(true);
    let _ = (&conn).write(&frame);
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match (&conn).read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn pair(l: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (client, server)
    }

    fn challenge(client: &mut TcpStream) -> [u8; 32] {
        let mut c = [0u8; AUTH_FRAME_BYTES];
        client.read_exact(&mut c).unwrap();
        match invoke::decode(&c[4..]).unwrap() {
            Frame::Challenge { nonce } => nonce,
            f => panic!("{f:?}"),
        }
    }

    fn all_ready(h: &Handshakes) -> Vec<i16> {
        vec![libc::POLLIN; h.len()]
    }

    /// Polls `h` until `done` says so or 5 s pass.
    fn drive(
        h: &mut Handshakes,
        secret: &LeaseSecret,
        mut done: impl FnMut(&Handshakes, &[TcpStream]) -> bool,
    ) -> Vec<TcpStream> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut proved = Vec::new();
        while !done(h, &proved) {
            assert!(Instant::now() < deadline, "the handshake never settled");
            let r = all_ready(h);
            proved.extend(h.progress(&r, secret, Instant::now()));
            std::thread::sleep(Duration::from_millis(1));
        }
        proved
    }

    #[test]
    fn a_good_proof_passes_and_leaves_the_next_frame_in_the_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let secret = LeaseSecret::random().unwrap();
        let mut h = Handshakes::new(4, Duration::from_secs(5));
        let (mut client, server) = pair(&l);
        h.admit(server, Instant::now());
        let nonce = challenge(&mut client);
        let mut out = Vec::new();
        invoke::encode_auth(&mut out, &auth::proof(&secret, &nonce));
        invoke::encode_invoke(&mut out, 1, 0, "echo", b"x");
        client.write_all(&out).unwrap();
        let mut proved = drive(&mut h, &secret, |_, p| !p.is_empty());
        assert!(h.is_empty());
        let mut rest = [0u8; 64];
        let mut server = proved.pop().unwrap();
        server.set_nonblocking(false).unwrap();
        let n = server.read(&mut rest).unwrap();
        assert_eq!(
            &rest[..n],
            &out[AUTH_FRAME_BYTES..],
            "the INVOKE is left unread"
        );
    }

    #[test]
    fn wrong_proofs_and_other_frames_are_refused_with_unauthorized() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let secret = LeaseSecret::random().unwrap();
        let other = LeaseSecret::random().unwrap();
        let mut h = Handshakes::new(4, Duration::from_secs(5));
        let (mut wrong, s1) = pair(&l);
        let (mut invoker, s2) = pair(&l);
        h.admit(s1, Instant::now());
        h.admit(s2, Instant::now());
        let nonce = challenge(&mut wrong);
        challenge(&mut invoker);
        let mut out = Vec::new();
        invoke::encode_auth(&mut out, &auth::proof(&other, &nonce));
        wrong.write_all(&out).unwrap();
        out.clear();
        invoke::encode_invoke(&mut out, 1, 0, "echo", b"not authenticated");
        invoker.write_all(&out).unwrap();
        let proved = drive(&mut h, &secret, |h, _| h.is_empty());
        assert!(proved.is_empty());
        for (mut c, why) in [(wrong, "wrong proof"), (invoker, "no AUTH")] {
            let mut e = Vec::new();
            c.read_to_end(&mut e).unwrap();
            match invoke::decode(&e[4..]).unwrap() {
                Frame::Error {
                    id: 0,
                    code: ErrorCode::Unauthorized,
                    message,
                } => assert!(message.contains(why), "{message}"),
                f => panic!("{f:?}"),
            }
        }
    }

    #[test]
    fn silent_connections_expire_and_the_oldest_makes_room_past_the_cap() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let secret = LeaseSecret::random().unwrap();
        let mut h = Handshakes::new(2, Duration::from_millis(50));
        let t0 = Instant::now();
        let (mut a, sa) = pair(&l);
        let (_b, sb) = pair(&l);
        let (_c, sc) = pair(&l);
        h.admit(sa, t0);
        h.admit(sb, t0);
        h.admit(sc, t0);
        assert_eq!(h.len(), 2, "the cap holds");
        challenge(&mut a);
        let mut e = Vec::new();
        a.read_to_end(&mut e).unwrap();
        assert!(
            matches!(invoke::decode(&e[4..]), Ok(Frame::Error { code: ErrorCode::Unauthorized, message, .. }) if message.contains("newer connections")),
            "the oldest was closed"
        );
        assert_eq!(h.next_deadline(), Some(t0 + Duration::from_millis(50)));
        assert!(h.progress(&[0, 0], &secret, t0).is_empty());
        assert_eq!(h.len(), 2, "nothing expires before its deadline");
        h.progress(&[0, 0], &secret, t0 + Duration::from_millis(50));
        assert!(h.is_empty(), "both expired");
    }
}
