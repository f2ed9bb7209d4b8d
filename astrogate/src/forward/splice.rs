//! The splice path: bytes move socket -> pipe -> socket with splice(2), as page references,
//! never copied into user space. User space still drives each step, so it pays a system call
//! per chunk, but no copy.
use std::{
    io::{self, ErrorKind},
    net::Shutdown,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

use super::{DirectionEnd, Forwarded, PathKind};

/// Forwards until both directions have ended, with the same FIN and reset semantics as the
/// copying path.
pub async fn forward(client: &TcpStream, upstream: &TcpStream, pipe_size: usize) -> Forwarded {
    let up = pump(client, upstream, pipe_size);
    let down = pump(upstream, client, pipe_size);
    super::run_pair(PathKind::Splice, false, (client, upstream), up, down).await
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

fn pipe(size: usize) -> io::Result<Pipe> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe moves more per system call; failure (above the pipe-max-size sysctl) just
    // keeps the default.
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
    unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok(Pipe { read, write })
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between fds we hold; null offsets mean "current position".
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(crate) async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
) -> (u64, DirectionEnd) {
    let mut total = 0u64;
    // Created on the first byte, so idle connections hold no pipe.
    let mut pipe: Option<Pipe> = None;
    loop {
        if let Err(e) = src.readable().await {
            return (total, DirectionEnd::ReadFailed(e));
        }
        let p = match &pipe {
            Some(p) => p,
            None => {
                // Readiness may be left over from sniffing; an idle connection must not cost
                // a pipe (two descriptors), so look for a byte or EOF first.
                match src.peek(&mut [0u8; 1]).await {
                    Ok(0) => {
                        let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                        return (total, DirectionEnd::Eof);
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        return (total, DirectionEnd::Reset)
                    }
                    Err(e) => return (total, DirectionEnd::ReadFailed(e)),
                }
                match self::pipe(pipe_size) {
                    Ok(p) => pipe.insert(p),
                    Err(e) => return (total, DirectionEnd::ReadFailed(e)),
                }
            }
        };
        let (pr, pw) = (p.read.as_raw_fd(), p.write.as_raw_fd());
        let moved = src.try_io(Interest::READABLE, || {
            splice(src.as_raw_fd(), pw, pipe_size)
        });
        let mut in_pipe = match moved {
            Ok(0) => {
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                return (total, DirectionEnd::Eof);
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return (total, DirectionEnd::Reset)
            }
            Err(e) => return (total, DirectionEnd::ReadFailed(e)),
        };
        while in_pipe > 0 {
            match dst.try_io(Interest::WRITABLE, || splice(pr, dst.as_raw_fd(), in_pipe)) {
                Ok(n) => {
                    in_pipe -= n;
                    total += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if let Err(e) = dst.writable().await {
                        return (total, DirectionEnd::WriteFailed(e));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return (total, DirectionEnd::WriteFailed(e)),
            }
        }
    }
}
