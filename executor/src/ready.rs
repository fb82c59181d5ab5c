//! `--ready-fd N`: the bound address, as one line, on a descriptor the parent passed down (the
//! node agent's ready pipe). The descriptor is taken at start, marked close-on-exec, and closed
//! once the line is written, so no worker or program the functions start inherits it.

use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;

/// Takes ownership of the inherited descriptor `fd`.
pub fn take_fd(fd: i32) -> anyhow::Result<File> {
    if fd <= 2 {
        anyhow::bail!("--ready-fd {fd}: stdin, stdout and stderr cannot carry the ready line");
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an unopened number fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        anyhow::bail!(
            "--ready-fd {fd} is not an open descriptor ({}); the parent must pass it open",
            io::Error::last_os_error()
        );
    }
    // SAFETY: the descriptor is open (F_GETFD succeeded), it was handed to this process for the
    // ready line alone, and this runs once at start, before anything else could claim it; the
    // File is its only owner from here on.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: `fd` is open and owned by `file`; setting FD_CLOEXEC changes no ownership.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        anyhow::bail!(
            "--ready-fd {fd}: setting close-on-exec: {}",
            io::Error::last_os_error()
        );
    }
    Ok(file)
}

/// Writes `ADDRESS:PORT\n` in one write (under PIPE_BUF, so atomic on a pipe) and closes it.
pub fn send(mut pipe: File, addr: SocketAddr) -> io::Result<()> {
    pipe.write_all(format!("{addr}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::IntoRawFd;

    #[test]
    fn the_address_arrives_as_one_line_and_the_pipe_closes() {
        let (mut rx, tx) = std::io::pipe().unwrap();
        let fd = tx.into_raw_fd();
        let file = take_fd(fd).unwrap();
        // SAFETY: F_GETFD only reads flags of a descriptor `file` owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        send(file, "127.0.0.1:4242".parse().unwrap()).unwrap();
        let mut text = String::new();
        rx.read_to_string(&mut text).unwrap();
        assert_eq!(text, "127.0.0.1:4242\n");
    }

    #[test]
    fn standard_and_closed_descriptors_are_refused() {
        assert!(take_fd(1).is_err());
        // A number above any descriptor limit is never open. (Closing a descriptor and then
        // taking its number would race with the other tests' threads, which may be given that
        // number meanwhile: take_fd would then own their descriptor.)
        let fd = 1 << 30;
        let err = take_fd(fd).unwrap_err().to_string();
        assert!(err.contains("not an open descriptor"), "{err}");
    }
}
