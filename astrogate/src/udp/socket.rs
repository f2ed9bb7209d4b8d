//! A listening UDP socket that knows which of its addresses each datagram arrived on, and
//! answers from that address. A socket bound to a wildcard (`0.0.0.0:53`) would otherwise
//! answer from whatever address the route to the client picks, and a client talking to one
//! address of a multi-homed host would get its replies from another, which it drops.
use std::{
    io::{self, IoSlice, IoSliceMut},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
};

use nix::sys::socket::{
    recvmmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

/// Receive buffer for a listening socket: a burst of datagrams waits here while the loop
/// catches up, instead of being dropped by the kernel.
const RECV_BUFFER: usize = 4 << 20;

/// One buffer from `recv_batch`: `len` bytes in the buffer of the same index.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    /// The address it was sent to.
    pub to: SocketAddr,
    /// With GRO, the size of each datagram the buffer holds (the last may be shorter); 0 when
    /// it holds one.
    pub segment: u16,
}

pub struct ListenSocket {
    socket: UdpSocket,
    /// The bound address; for a wildcard, each datagram's own destination comes from
    /// IP_PKTINFO / IPV6_PKTINFO.
    local: SocketAddr,
    wildcard: bool,
}

impl ListenSocket {
    /// Binds `addr`. Must be called inside a Tokio runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<ListenSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
            socket.set_freebind_ipv6(true)?;
        } else {
            socket.set_freebind(true)?;
        }
        size_buffers(&socket, RECV_BUFFER);
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        // GRO: a burst of same-size datagrams from one client may arrive as one buffer, split
        // back at the segment size; forwarded with GSO, it stays one system call and one
        // trip through the stack. Older kernels lack it, and then nothing changes.
        let _ = setsockopt(&socket, sockopt::UdpGroSegment, &true);
        let wildcard = addr.ip().is_unspecified();
        if wildcard {
            if addr.is_ipv6() {
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
            } else {
                setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
            }
        }
        let socket = UdpSocket::from_std(socket.into())?;
        let local = socket.local_addr()?;
        Ok(ListenSocket {
            socket,
            local,
            wildcard,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Receives up to `bufs.len()` buffers with one system call (recvmmsg), waiting for the
    /// first. Under load, one call per batch instead of one per datagram is what lets a single
    /// loop keep up with a fast sender.
    pub async fn recv_batch(
        &self,
        bufs: &mut [Vec<u8>],
        out: &mut Vec<Received>,
    ) -> io::Result<()> {
        out.clear();
        let fd = self.socket.as_raw_fd();
        let (local, wildcard) = (self.local, self.wildcard);
        self.socket
            .async_io(Interest::READABLE, || {
                let cmsg = Some(nix::cmsg_space!(libc::in6_pktinfo, i32));
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), cmsg);
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(&mut b[..])])
                    .collect();
                let received = recvmmsg(
                    fd,
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)?;
                for msg in received {
                    let Some(from) = msg.address.and_then(|a| to_std(&a)) else {
                        continue;
                    };
                    let mut received = Received {
                        len: msg.bytes,
                        from,
                        to: local,
                        segment: 0,
                    };
                    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                        if let ControlMessageOwned::UdpGroSegments(size) = cmsg {
                            received.segment = u16::try_from(size).unwrap_or(0);
                        } else if let Some(ip) = destination(&cmsg).filter(|_| wildcard) {
                            received.to = SocketAddr::new(ip, local.port());
                        }
                    }
                    out.push(received);
                }
                Ok(())
            })
            .await
    }

    /// Sends `data` to `to`, from `from` (the address the client sent to).
    pub async fn send(&self, data: &[u8], to: SocketAddr, from: SocketAddr) -> io::Result<()> {
        if !self.wildcard {
            self.socket.send_to(data, to).await?;
            return Ok(());
        }
        let fd = self.socket.as_raw_fd();
        let dest = SockaddrStorage::from(to);
        self.socket
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(data)];
                let sent = match from.ip() {
                    IpAddr::V4(ip) => {
                        let info = libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: u32::from(ip).to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        };
                        let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                        sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&dest))
                    }
                    IpAddr::V6(ip) => {
                        let info = libc::in6_pktinfo {
                            ipi6_addr: libc::in6_addr {
                                s6_addr: ip.octets(),
                            },
                            ipi6_ifindex: 0,
                        };
                        let cmsg = [ControlMessage::Ipv6PacketInfo(&info)];
                        sendmsg(fd, &iov, &cmsg, MsgFlags::empty(), Some(&dest))
                    }
                };
                sent.map(|_| ()).map_err(io::Error::from)
            })
            .await
    }
}

/// The address a datagram was sent to, from its IP_PKTINFO / IPV6_PKTINFO.
fn destination(cmsg: &ControlMessageOwned) -> Option<IpAddr> {
    match cmsg {
        ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::V4(std::net::Ipv4Addr::from(
            u32::from_be(info.ipi_addr.s_addr),
        ))),
        ControlMessageOwned::Ipv6PacketInfo(info) => {
            Some(IpAddr::V6(std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr)))
        }
        _ => None,
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Sets a UDP socket's buffers to `bytes`: with SO_RCVBUFFORCE/SO_SNDBUFFORCE when the
/// gateway may (it runs as root, with CAP_NET_ADMIN), since the default net.core.rmem_max
/// (208 KiB) would cap them below one burst of large datagrams; else as far as the system
/// limit allows.
pub fn size_buffers(socket: &socket2::Socket, bytes: usize) {
    let forced = setsockopt(socket, sockopt::RcvBufForce, &bytes).is_ok()
        && setsockopt(socket, sockopt::SndBufForce, &bytes).is_ok();
    if !forced {
        let _ = socket.set_recv_buffer_size(bytes);
        let _ = socket.set_send_buffer_size(bytes);
    }
}
