//! A TCP peer made of hand-written IPv4 segments on a TUN device, for what a kernel peer will
//! not do on demand: retransmit a segment that overlaps bytes the gateway already has, exactly
//! when a test wants it. It keeps just enough state to hold a connection: sequence numbers
//! both ways, and an ACK for whatever arrives.
#![allow(dead_code)]

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    net::Ipv4Addr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use astrogate_lab::Netns;

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;

/// A TUN device in a namespace: the kernel there routes `peer` through it, and whatever it
/// sends to `peer` arrives here as raw IPv4 packets.
pub struct Tun {
    file: File,
    pub local: Ipv4Addr,
    pub peer: Ipv4Addr,
}

impl Tun {
    /// Creates `name` in `ns` with `local/24` on it; `peer` is the address this side plays.
    pub fn create(ns: &Netns, name: &str, local: Ipv4Addr, peer: Ipv4Addr) -> Tun {
        ns.ip(&["tuntap", "add", "dev", name, "mode", "tun"])
            .expect("creating the TUN device");
        ns.ip(&["addr", "add", &format!("{local}/24"), "dev", name])
            .expect("addressing the TUN device");
        ns.ip(&["link", "set", name, "up"])
            .expect("raising the TUN device");
        let name = name.to_string();
        let file = ns
            .enter(move || attach(&name))
            .expect("entering the namespace")
            .expect("attaching to the TUN device");
        Tun { file, local, peer }
    }

    fn send(&mut self, packet: &[u8]) {
        self.file
            .write_all(packet)
            .expect("writing to the TUN device");
    }

    /// The next IPv4/TCP packet the kernel sent, or `None` after `wait`.
    fn recv(&mut self, wait: Duration) -> Option<Segment> {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 65536];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut poll = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, 1000) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            if unsafe { libc::poll(&mut poll, 1, ms) } <= 0 {
                continue;
            }
            let n = self.file.read(&mut buf).expect("reading the TUN device");
            if let Some(seg) = Segment::parse(&buf[..n]) {
                return Some(seg);
            }
        }
    }
}

fn attach(name: &str) -> io::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads an ifreq; ours is laid out as the kernel's and lives for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// The parts of a received TCP segment these tests look at.
#[derive(Debug, Clone)]
pub struct Segment {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Segment {
    fn parse(p: &[u8]) -> Option<Segment> {
        if p.len() < 40 || p[0] >> 4 != 4 || p[9] != 6 {
            return None;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
        let tcp = p.get(ihl..total)?;
        let doff = usize::from(tcp.get(12)? >> 4) * 4;
        Some(Segment {
            src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
            dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            seq: u32::from_be_bytes(tcp[4..8].try_into().ok()?),
            ack: u32::from_be_bytes(tcp[8..12].try_into().ok()?),
            flags: tcp[13],
            payload: tcp.get(doff..)?.to_vec(),
        })
    }
}

/// One connection between this peer and a kernel socket behind the TUN device. Offsets are
/// stream offsets: 0 is the first payload byte this side sends.
pub struct RawTcp {
    tun: Tun,
    port: u16,
    remote_port: u16,
    /// Our initial sequence number plus one: the sequence number of stream offset 0.
    base: u32,
    /// The next sequence number we expect from the kernel.
    rcv_nxt: u32,
    /// Stream bytes the kernel sent us, in order.
    pub received: Vec<u8>,
    /// The kernel sent its FIN.
    pub fin: bool,
    /// The highest stream offset sent so far (plus one for a FIN).
    sent: u32,
}

impl RawTcp {
    /// Opens a connection from `peer:port` to the kernel's `local:remote_port`.
    pub fn connect(mut tun: Tun, port: u16, remote_port: u16, isn: u32) -> RawTcp {
        let syn = segment(&tun, port, remote_port, isn, 0, SYN, &[], true);
        tun.send(&syn);
        let synack = wait(&mut tun, port, |s| s.flags & (SYN | ACK) == SYN | ACK)
            .expect("no SYN-ACK from the gateway");
        let mut conn = RawTcp {
            tun,
            port,
            remote_port,
            base: isn.wrapping_add(1),
            rcv_nxt: synack.seq.wrapping_add(1),
            received: Vec::new(),
            fin: false,
            sent: 0,
        };
        conn.ack();
        conn
    }

    /// Waits for the kernel to connect to `peer:port` and completes the handshake.
    pub fn accept(mut tun: Tun, port: u16, isn: u32) -> RawTcp {
        let syn = wait(&mut tun, port, |s| s.flags & (SYN | ACK) == SYN)
            .expect("no SYN from the gateway");
        let synack = segment(
            &tun,
            port,
            syn.src_port,
            isn,
            syn.seq.wrapping_add(1),
            SYN | ACK,
            &[],
            true,
        );
        tun.send(&synack);
        let mut conn = RawTcp {
            tun,
            port,
            remote_port: syn.src_port,
            base: isn.wrapping_add(1),
            rcv_nxt: syn.seq.wrapping_add(1),
            received: Vec::new(),
            fin: false,
            sent: 0,
        };
        // The kernel's ACK of our SYN-ACK completes the handshake.
        conn.pump(Duration::from_millis(200));
        conn
    }

    /// Sends `data` as stream offsets `offset..offset + data.len()`, with `extra` flags
    /// (`FIN`) on top of ACK and PSH. The same offsets may be sent again: a retransmission.
    pub fn send_at(&mut self, offset: u32, data: &[u8], extra: u8) {
        self.note_sent(offset, data.len(), extra);
        for (i, chunk) in data.chunks(1400).enumerate() {
            let last = (i + 1) * 1400 >= data.len();
            let flags = ACK | PSH | if last { extra } else { 0 };
            let seq = self.base.wrapping_add(offset + (i * 1400) as u32);
            let seg = segment(
                &self.tun,
                self.port,
                self.remote_port,
                seq,
                self.rcv_nxt,
                flags,
                chunk,
                false,
            );
            self.tun.send(&seg);
        }
    }

    /// Sends `data` at `offset` as one segment however long it is (up to 64 KiB): what a
    /// sender that merges segments on retransmission puts on the wire.
    pub fn send_segment_at(&mut self, offset: u32, data: &[u8], extra: u8) {
        self.note_sent(offset, data.len(), extra);
        let seq = self.base.wrapping_add(offset);
        let seg = segment(
            &self.tun,
            self.port,
            self.remote_port,
            seq,
            self.rcv_nxt,
            ACK | PSH | extra,
            data,
            false,
        );
        self.tun.send(&seg);
    }

    /// Reads what the kernel sends for `for_` and acknowledges it; returns early once `until`
    /// holds.
    pub fn pump_until(&mut self, for_: Duration, until: impl Fn(&RawTcp) -> bool) -> bool {
        let deadline = Instant::now() + for_;
        while !until(self) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            let Some(seg) = self.tun.recv(left) else {
                return until(self);
            };
            if seg.dst_port != self.port || seg.src_port != self.remote_port {
                continue;
            }
            assert!(seg.flags & RST == 0, "the kernel reset the connection");
            let mut advanced = false;
            if !seg.payload.is_empty() && seg.seq == self.rcv_nxt {
                self.received.extend_from_slice(&seg.payload);
                self.rcv_nxt = self.rcv_nxt.wrapping_add(seg.payload.len() as u32);
                advanced = true;
            }
            if seg.flags & FIN != 0
                && seg.seq.wrapping_add(seg.payload.len() as u32) == self.rcv_nxt
            {
                self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
                self.fin = true;
                advanced = true;
            }
            if advanced || !seg.payload.is_empty() {
                self.ack();
            }
        }
        true
    }

    /// Acknowledges everything for a while.
    pub fn pump(&mut self, for_: Duration) {
        self.pump_until(for_, |_| false);
    }

    /// A pure ACK carries our next unsent sequence number.
    fn ack(&mut self) {
        let seq = self.base.wrapping_add(self.sent);
        let seg = segment(
            &self.tun,
            self.port,
            self.remote_port,
            seq,
            self.rcv_nxt,
            ACK,
            &[],
            false,
        );
        self.tun.send(&seg);
    }

    fn note_sent(&mut self, offset: u32, len: usize, flags: u8) {
        let end = offset + len as u32 + u32::from(flags & FIN != 0);
        self.sent = self.sent.max(end);
    }
}

fn wait(tun: &mut Tun, port: u16, pred: impl Fn(&Segment) -> bool) -> Option<Segment> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let seg = tun.recv(left)?;
        if seg.dst_port == port && pred(&seg) {
            return Some(seg);
        }
    }
    None
}

/// An IPv4 packet carrying one TCP segment from the peer to the kernel.
#[allow(clippy::too_many_arguments)]
fn segment(
    tun: &Tun,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
    syn_options: bool,
) -> Vec<u8> {
    // SYNs carry an MSS option and window scaling so the kernel accepts large windows.
    let options: &[u8] = if syn_options {
        &[2, 4, 0xff, 0xd7, 1, 3, 3, 7]
    } else {
        &[]
    };
    let tcp_len = 20 + options.len() + payload.len();
    let total = 20 + tcp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    p.extend_from_slice(&tun.peer.octets());
    p.extend_from_slice(&tun.local.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let tcp_start = p.len();
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ack.to_be_bytes());
    p.push((((20 + options.len()) / 4) as u8) << 4);
    p.push(flags);
    // A big window, scaled by 2^7 after the handshake: about 8 MiB.
    p.extend_from_slice(&0xffffu16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(options);
    p.extend_from_slice(payload);
    let mut pseudo = 0u32;
    for pair in tun
        .peer
        .octets()
        .chunks(2)
        .chain(tun.local.octets().chunks(2))
    {
        pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    pseudo += 6 + tcp_len as u32;
    let sum = checksum(&p[tcp_start..], pseudo);
    p[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = if pair.len() == 2 {
            u16::from_be_bytes([pair[0], pair[1]])
        } else {
            u16::from_be_bytes([pair[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
