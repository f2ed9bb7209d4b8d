//! The splice path: bytes move socket -> pipe -> socket with splice(2), as page references,
//! never copied into user space. User space still drives each step, so it pays a system call
//! per chunk, but no copy.
//!
//! Like HAProxy's `splice-auto`, a direction starts by copying: a pipe costs five system calls
//! of its own (pipe2, its size, two closes, and a splice more per chunk), which a short
//! exchange (a request, a one-byte answer) never earns back. The first read that fills
//! [`PROBE`] shows a bulk transfer, and from then on that direction splices.
use std::{
    io::{self, ErrorKind},
    net::Shutdown,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use socket2::SockRef;
use tokio::{io::Interest, net::TcpStream};

use super::{DirectionEnd, Forwarded, PathKind};

/// How much a direction reads into user space at a time before it splices: a read that fills
/// it means more is waiting, which is when a pipe pays.
pub const PROBE: usize = 16 * 1024;

/// Forwards until both directions have ended, with the same FIN and reset semantics as the
/// copying path.
pub async fn forward(client: &TcpStream, upstream: &TcpStream, pipe_size: usize) -> Forwarded {
    // Atomics only because the pumps' future must be Send; nothing else touches them.
    let copied = [AtomicU64::new(0), AtomicU64::new(0)];
    let up = pump_adaptive(client, upstream, pipe_size, &copied[0]);
    let down = pump_adaptive(upstream, client, pipe_size, &copied[1]);
    let mut done = super::run_pair(PathKind::Splice, false, (client, upstream), up, down).await;
    done.copied_bytes = copied.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    done
}

/// Copies what `src` has while it comes in reads smaller than [`PROBE`], then splices the
/// rest. `copied` counts the bytes that went through user space.
async fn pump_adaptive(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
    copied: &AtomicU64,
) -> (u64, DirectionEnd) {
    let mut total = 0u64;
    loop {
        if let Err(e) = src.readable().await {
            return (total, DirectionEnd::ReadFailed(e));
        }
        let mut buf = Vec::with_capacity(PROBE);
        // Everything the socket holds now, up to PROBE; how the reading ended decides what
        // comes after the bytes are passed on.
        let end = loop {
            match src.try_read_buf(&mut buf) {
                Ok(0) => break Some(DirectionEnd::Eof),
                Ok(_) if buf.len() == buf.capacity() => break None,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    break Some(DirectionEnd::Reset)
                }
                Err(e) => break Some(DirectionEnd::ReadFailed(e)),
            }
        };
        let eof = matches!(end, Some(DirectionEnd::Eof));
        // Before a FIN, the last bytes wait (MSG_MORE) so that the FIN rides in their segment:
        // one packet fewer for both peers.
        if let Err(e) = send_all(dst, &buf, eof).await {
            return (total, DirectionEnd::WriteFailed(e));
        }
        total += buf.len() as u64;
        copied.fetch_add(buf.len() as u64, Ordering::Relaxed);
        match end {
            Some(DirectionEnd::Eof) => {
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                return (total, DirectionEnd::Eof);
            }
            Some(end) => return (total, end),
            None if buf.len() == PROBE => {
                let (more, end) = pump(src, dst, pipe_size).await;
                return (total + more, end);
            }
            None => {}
        }
    }
}

/// Writes all of `bytes`; with `more`, asks the kernel to hold a short last segment for what
/// follows (the FIN).
async fn send_all(dst: &TcpStream, mut bytes: &[u8], more: bool) -> io::Result<()> {
    let flags = if more { libc::MSG_MORE } else { 0 };
    while !bytes.is_empty() {
        match dst.try_io(Interest::WRITABLE, || {
            SockRef::from(dst).send_with_flags(bytes, flags)
        }) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => dst.writable().await?,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
