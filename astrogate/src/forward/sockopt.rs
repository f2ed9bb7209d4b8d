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

/// Bytes received in order plus bytes the peer has acknowledged, since the socket was opened,
/// from one TCP_INFO read: it changes whenever anything moves either way.
pub fn moved_total(fd: RawFd) -> io::Result<u64> {
    let info = tcp_info(fd)?;
    Ok(info.tcpi_bytes_received.wrapping_add(info.tcpi_bytes_acked))
}

/// Makes a listening socket keep each accepted connection's SYN headers (TCP_SAVE_SYN), so
/// the kernel path can learn where the client's byte stream starts in sequence space.
pub fn save_syn(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: TCP_SAVE_SYN reads one c_int from a buffer of exactly that size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SAVE_SYN,
            (&one as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The TCP sequence number of the first payload byte the peer of an accepted socket sent:
/// its SYN's sequence number plus one, from the SYN the listener saved (`save_syn`). The
/// kernel frees the saved SYN once it is read, so this works once per socket.
pub fn first_data_seq(fd: RawFd) -> io::Result<u32> {
    // An IPv6 header with extension headers plus a TCP header with options fits easily.
    let mut buf = [0u8; 512];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: TCP_SAVED_SYN writes at most `len` bytes into `buf` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SAVED_SYN,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let saved = &buf[..(len as usize).min(buf.len())];
    syn_seq(saved)
        .map(|isn| isn.wrapping_add(1))
        .ok_or_else(|| io::Error::other(format!("no saved SYN ({} bytes)", saved.len())))
}

/// The sequence number of a SYN, from its network and TCP headers.
fn syn_seq(headers: &[u8]) -> Option<u32> {
    let tcp = match headers.first()? >> 4 {
        4 => headers.get(usize::from(headers[0] & 0x0f) * 4..)?,
        6 => ipv6_payload(headers)?,
        _ => return None,
    };
    let seq = tcp.get(4..8)?;
    Some(u32::from_be_bytes(seq.try_into().ok()?))
}

/// The TCP header behind an IPv6 header and any extension headers.
fn ipv6_payload(packet: &[u8]) -> Option<&[u8]> {
    const TCP: u8 = 6;
    let mut next = *packet.get(6)?;
    let mut at = 40usize;
    // Hop-by-hop, routing, destination options and fragment headers may come first.
    for _ in 0..8 {
        match next {
            TCP => return packet.get(at..),
            0 | 43 | 60 => {
                next = *packet.get(at)?;
                at += (usize::from(*packet.get(at + 1)?) + 1) * 8;
            }
            44 => {
                next = *packet.get(at)?;
                at += 8;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::syn_seq;

    #[test]
    fn reads_the_sequence_number_of_an_ipv4_syn() {
        // 20-byte IPv4 header, then a TCP header with seq 0x01020304.
        let mut syn = vec![0x45u8; 1];
        syn.resize(20, 0);
        syn.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50, 0x01, 0x02, 0x03, 0x04]);
        syn.resize(40, 0);
        assert_eq!(syn_seq(&syn), Some(0x0102_0304));
        // IPv4 options make the header longer (IHL 6).
        let mut opt = vec![0x46u8];
        opt.resize(24, 0);
        opt.extend_from_slice(&syn[20..]);
        assert_eq!(syn_seq(&opt), Some(0x0102_0304));
    }

    #[test]
    fn reads_the_sequence_number_of_an_ipv6_syn_after_extension_headers() {
        let mut syn = vec![0x60u8, 0, 0, 0, 0, 0, 0 /* hop-by-hop */, 64];
        syn.resize(40, 0);
        // Hop-by-hop header: next = TCP, length 0 (8 bytes).
        syn.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
        syn.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50, 0xff, 0xee, 0xdd, 0xcc]);
        syn.resize(68, 0);
        assert_eq!(syn_seq(&syn), Some(0xffee_ddcc));
    }

    #[test]
    fn truncated_or_foreign_headers_give_nothing() {
        assert_eq!(syn_seq(&[]), None);
        assert_eq!(syn_seq(&[0x45, 0, 0]), None);
        assert_eq!(syn_seq(&[0x55; 60]), None);
        let mut udp6 = vec![0x60u8, 0, 0, 0, 0, 0, 17, 64];
        udp6.resize(60, 0);
        assert_eq!(syn_seq(&udp6), None);
    }
}
