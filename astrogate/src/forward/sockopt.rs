//! The few socket calls the kernel path needs that std and tokio do not offer.
use std::{io, mem, os::fd::RawFd};

use astrogate_common::SockCookie;

/// The kernel's socket cookie: unique per socket for the boot, and what the eBPF maps key on.
pub fn cookie(fd: RawFd) -> io::Result<SockCookie> {
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes one u64 into a buffer of exactly that size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Makes the kernel run the socket's data-ready callback now. Bytes that reached the receive
/// queue before the socket joined the sockmap are otherwise left there until more arrive;
/// setting SO_RCVLOWAT re-checks the queue and hands them to the verdict program.
pub fn kick(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: SO_RCVLOWAT reads one c_int from a buffer of exactly that size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn tcp_info(fd: RawFd) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO writes up to `len` bytes into `info`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// Bytes ever queued for sending on a TCP socket, up to a constant offset: acknowledged bytes
/// plus the send queue. Reading the acknowledged count first can only undercount (acks that
/// land in between move bytes out of the queue), so callers waiting for a drain never stop
/// early.
pub fn queued_total(fd: RawFd) -> io::Result<u64> {
    let acked = tcp_info(fd)?.tcpi_bytes_acked;
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(acked + u64::try_from(outq).unwrap_or(0))
}

/// Sequence space a TCP socket has received in order since it was opened, whether or not
/// anyone has consumed it yet: the payload bytes, plus one once the FIN has arrived.
pub fn received_total(fd: RawFd) -> io::Result<u64> {
    Ok(tcp_info(fd)?.tcpi_bytes_received)
}
