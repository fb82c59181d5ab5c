use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::thread;

use harvest_core::step::{StepAllocation, StepId};

use super::*;

const TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling slack on a loaded 2-core machine; the deadline itself is what is checked.
const SLACK: Duration = Duration::from_millis(400);

fn message() -> PluginMessage {
    PluginMessage::StepStart(StepAllocation {
        job_id: 7,
        step_id: StepId(0),
        uid: 1000,
        node: "n1".into(),
        cpus: [0, 1].into_iter().collect(),
        memory_mib: Some(256),
        gpus: vec![],
        harvest: true,
    })
}

/// A fake agent serving one connection with `serve`; returns the socket path and its thread.
fn agent(
    dir: &tempfile::TempDir,
    serve: impl FnOnce(UnixStream) + Send + 'static,
) -> (PathBuf, thread::JoinHandle<()>) {
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream);
    });
    (path, handle)
}

#[test]
fn sends_one_line_and_reads_the_reply() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let (path, h) = agent(&dir, move |stream| {
        let mut line = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut line)
            .unwrap();
        tx.send(line).unwrap();
        (&stream)
            .write_all(&step::encode(&AgentReply::error("no room")).unwrap())
            .unwrap();
    });
    let reply = AgentClient::new(&path, Duration::from_secs(5))
        .send(&message())
        .unwrap();
    h.join().unwrap();
    assert_eq!(reply, AgentReply::error("no room"));
    let got: PluginMessage = step::decode(&rx.recv().unwrap()).unwrap();
    assert_eq!(got, message());
}

#[test]
fn a_silent_agent_costs_at_most_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // Accepts, then neither reads nor answers until the test is over.
    let (path, h) = agent(&dir, move |_stream| {
        let _ = done_rx.recv();
    });
    let start = Instant::now();
    let err = AgentClient::new(&path, TIMEOUT)
        .send(&message())
        .unwrap_err();
    let took = start.elapsed();
    drop(done_tx);
    h.join().unwrap();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(took >= TIMEOUT, "gave up early: {took:?}");
    assert!(took < TIMEOUT + SLACK, "deadline overrun: {took:?}");
}

#[test]
fn a_dribbling_agent_cannot_stretch_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // One byte every 30 ms never completes a line: each read succeeds, the total must still end.
    let (path, h) = agent(&dir, |stream| {
        for _ in 0..40 {
            if (&stream).write_all(b" ").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(30));
        }
    });
    let start = Instant::now();
    let err = AgentClient::new(&path, TIMEOUT)
        .send(&message())
        .unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    assert!(took < TIMEOUT + SLACK, "deadline overrun: {took:?}");
    h.join().unwrap();
}

#[test]
fn no_agent_fails_fast_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let start = Instant::now();
    let err = AgentClient::new(&path, TIMEOUT)
        .send(&message())
        .unwrap_err();
    assert!(start.elapsed() < TIMEOUT, "{:?}", start.elapsed());
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("nobody.sock"), "{err}");
}

#[test]
fn a_full_backlog_fails_fast_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stuck.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    // Fill the backlog of a listener that never accepts.
    let mut held = Vec::new();
    let filled = (0..1024).any(|_| {
        let s = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let full = s.connect(&SockAddr::unix(&path).unwrap()).is_err();
        held.push(s);
        full
    });
    assert!(filled, "the backlog never filled");
    let start = Instant::now();
    let err = AgentClient::new(&path, TIMEOUT)
        .send(&message())
        .unwrap_err();
    assert!(matches!(err, ClientError::Busy { .. }), "{err}");
    assert!(start.elapsed() < TIMEOUT + SLACK, "{:?}", start.elapsed());
}

#[test]
fn hang_up_and_garbage_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (path, h) = agent(&dir, |stream| {
        let mut line = Vec::new();
        BufReader::new(&stream)
            .read_until(b'\n', &mut line)
            .unwrap();
    });
    let err = AgentClient::new(&path, Duration::from_secs(5))
        .send(&message())
        .unwrap_err();
    h.join().unwrap();
    assert!(matches!(err, ClientError::Closed { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let (path, h) = agent(&dir, |stream| {
        (&stream).write_all(b"hello agent here\n").unwrap();
    });
    let err = AgentClient::new(&path, Duration::from_secs(5))
        .send(&message())
        .unwrap_err();
    h.join().unwrap();
    assert!(matches!(err, ClientError::Frame { .. }), "{err}");
}
