//! `harvestd exec-lease` on a real process: an executor whose log drain is gone (harvestd
//! restarted; a re-adopted executor's pipe has no reader) does not die of SIGPIPE when its
//! functions print: the output lands in the pipe (1 MiB). Runs as any user (exec-lease then
//! becomes the same user).

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn an_executor_without_its_log_drain_does_not_die_when_it_prints() {
    let (reader, writer) = std::io::pipe().unwrap();
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    // 4000 lines of 41 bytes: past a default pipe's 64 KiB, within the 1 MiB exec-lease sets.
    let script = "i=0; while [ $i -lt 4000 ]; do \
                  echo 0123456789012345678901234567890123456789; i=$((i+1)); done; exit 0";
    let mut child = Command::new(env!("CARGO_BIN_EXE_harvestd"))
        .args([
            "exec-lease",
            "--uid",
            &uid.to_string(),
            "--gid",
            &gid.to_string(),
        ])
        .args(["--", "/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Nobody drains the pipe.
    drop(reader);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the program blocked on its output pipe (not grown to 1 MiB?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.signal(),
        None,
        "killed by signal {:?} (13: SIGPIPE)",
        status.signal()
    );
    assert!(status.success(), "{status}");
}
