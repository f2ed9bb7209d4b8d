//! A session's upstream once connected, shared by the receive loop (which sends the client's
//! datagrams up) and the session's task (which sends the replies down and ends it when idle).
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{net::UdpSocket, time::Instant};

pub struct Flow {
    pub upstream: UdpSocket,
    /// The session's directions, once the receive loop has handed them to the kernel.
    pub kernel: std::sync::OnceLock<super::fast::SessionFlows>,
    started: Instant,
    /// When the client last sent, in milliseconds since `started`.
    last_up_ms: AtomicU64,
    up_datagrams: AtomicU64,
    up_bytes: AtomicU64,
}

impl Flow {
    pub fn new(upstream: UdpSocket) -> Flow {
        Flow {
            upstream,
            kernel: std::sync::OnceLock::new(),
            started: Instant::now(),
            last_up_ms: AtomicU64::new(0),
            up_datagrams: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
        }
    }

    /// Sends one datagram up without waiting. When the socket's buffer is full it is dropped,
    /// as the kernel would drop it anywhere else on the path; the error names why, as a
    /// metrics label.
    pub fn send_up(&self, datagram: &[u8]) -> Result<(), &'static str> {
        self.last_up_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        // Straight to the kernel: tokio's try_send would first consult its cached readiness,
        // which says nothing until the socket has been polled for writing.
        match socket2::SockRef::from(&self.upstream).send(datagram) {
            Ok(_) => {
                self.up_datagrams.fetch_add(1, Ordering::Relaxed);
                self.up_bytes
                    .fetch_add(datagram.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err("upstream_busy"),
            // An ICMP error from an earlier datagram (port unreachable): UDP carries on.
            Err(_) => Err("upstream_error"),
        }
    }

    /// Sends a GRO buffer of `segment`-byte datagrams up in one call, with GSO: the kernel
    /// cuts it back into the same datagrams. Returns how many datagrams went. Where GSO is
    /// refused, they go one by one.
    pub fn send_up_segments(&self, data: &[u8], segment: u16) -> Result<u64, &'static str> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
        use std::{io::IoSlice, os::fd::AsRawFd};
        self.last_up_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let count = data.len().div_ceil(usize::from(segment)) as u64;
        let iov = [IoSlice::new(data)];
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        let fd = self.upstream.as_raw_fd();
        match sendmsg::<SockaddrStorage>(fd, &iov, &cmsg, MsgFlags::MSG_DONTWAIT, None) {
            Ok(_) => {
                self.up_datagrams.fetch_add(count, Ordering::Relaxed);
                self.up_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                Ok(count)
            }
            Err(nix::errno::Errno::EAGAIN) => Err("upstream_busy"),
            Err(_) => {
                let mut sent = 0;
                for d in data.chunks(usize::from(segment)) {
                    if self.send_up(d).is_ok() {
                        sent += 1;
                    }
                }
                Ok(sent)
            }
        }
    }

    /// Sends several datagrams up in one call (sendmmsg): what one client sent in a burst,
    /// received in one batch. Returns how many went; the rest were dropped for a full buffer.
    pub fn send_up_many(&self, datagrams: &[&[u8]]) -> u64 {
        use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        use std::{io::IoSlice, os::fd::AsRawFd};
        self.last_up_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        let iovs: Vec<[IoSlice<'_>; 1]> = datagrams.iter().map(|d| [IoSlice::new(d)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = vec![None; datagrams.len()];
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(datagrams.len(), None);
        let fd = self.upstream.as_raw_fd();
        let sent = match sendmmsg(fd, &mut headers, &iovs, &addrs, [], MsgFlags::MSG_DONTWAIT) {
            Ok(results) => results.count(),
            // The first could not go (a full buffer, or an ICMP error to report): one by one.
            Err(_) => {
                return datagrams.iter().filter(|d| self.send_up(d).is_ok()).count() as u64;
            }
        };
        let bytes: usize = datagrams[..sent].iter().map(|d| d.len()).sum();
        self.up_datagrams.fetch_add(sent as u64, Ordering::Relaxed);
        self.up_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        sent as u64
    }

    /// When the client last sent a datagram.
    pub fn last_up(&self) -> Instant {
        self.started + std::time::Duration::from_millis(self.last_up_ms.load(Ordering::Relaxed))
    }

    /// (datagrams, bytes) sent up.
    pub fn up(&self) -> (u64, u64) {
        (
            self.up_datagrams.load(Ordering::Relaxed),
            self.up_bytes.load(Ordering::Relaxed),
        )
    }
}
