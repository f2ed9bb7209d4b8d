//! Types shared by the eBPF programs and user space.
//!
//! Every type is `#[repr(C)]`, has no implicit padding, no `bool` and no `Option`, so the kernel
//! and user space agree on the layout byte for byte. `bytemuck::Pod` derives refuse to compile a
//! type with padding, and each type also has a compile-time size assertion.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// The sockhash is keyed by the kernel's socket cookie, which is unique for the lifetime of the
/// boot and available both to `sk_skb` programs and to user space (`SO_COOKIE`).
pub type SockCookie = u64;

/// Value of the `PEERS` map, written only by user space: where bytes arriving on a socket go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerEntry {
    /// Cookie of the socket that receives this socket's input on its egress.
    pub peer: SockCookie,
    /// Redirected-byte count (`SockStats::redirected`) past which the program asks user space
    /// to look at the peer's backlog. User space raises it as the peer drains.
    pub limit: u64,
    /// Redirected-byte count the program never goes past: beyond it, bytes are passed to the
    /// socket's own queue, where they count against its receive buffer and TCP flow control
    /// stops the sender. This is what makes the memory bound hold however slowly user space
    /// answers the `limit` notice.
    pub hard_limit: u64,
    /// How many of this socket's passed bytes (`SockStats::passed`) user space has forwarded.
    /// While the two differ the program keeps passing: a redirected byte would overtake the
    /// passed ones still waiting in the socket's queue.
    pub consumed: u64,
    /// Bit set of `PEER_FLAG_*`.
    pub flags: u32,
    /// With `PEER_FLAG_START_SEQ`: the TCP sequence number of the first byte user space has
    /// not read from this socket. Bytes before it were read (sniffed) already and must never
    /// be forwarded again, even when a retransmission brings them back.
    pub start_seq: u32,
}
const _: () = assert!(core::mem::size_of::<PeerEntry>() == 40);

/// Set once both sockets of a pair are in the redirect-target map. Until then the verdict
/// passes data to the socket's own receive queue, where user space can still read it: a
/// redirect to a key that is not yet present would drop it silently.
pub const PEER_FLAG_ENABLED: u32 = 1;

/// `PeerEntry::start_seq` is set. Without it the program takes the first segment it sees
/// as the start, which is exact only for a socket user space has never read from.
pub const PEER_FLAG_START_SEQ: u32 = 2;

/// Value of the `STATS` map, written only by the verdict program (user space creates each
/// entry zeroed before the socket can be verdicted, then only reads it). Keeping writers apart
/// matters: a user-space update replaces the whole element, which would lose the program's
/// in-place increments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockStats {
    /// Bytes redirected from this socket to its peer's egress.
    pub redirected: u64,
    /// Bytes passed to this socket's own receive queue (pair not yet enabled).
    pub passed: u64,
    /// The `PeerEntry::limit` for which an over-limit event was last sent, so each limit is
    /// reported once.
    pub notified_limit: u64,
    /// Bytes cut from the head of segments that repeated bytes already seen (partial
    /// retransmissions, which TCP queues whole).
    pub trimmed: u64,
    /// Segments whose repeated head could not be cut. Any is a fault: the bytes were dropped
    /// and the connection must be reset.
    pub faults: u64,
    /// TCP sequence number of the next byte the program has not seen.
    pub next_seq: u32,
    /// 1 once `next_seq` is set.
    pub seq_known: u32,
}
const _: () = assert!(core::mem::size_of::<SockStats>() == 48);

/// Ring-buffer record: a socket's redirected bytes crossed its limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct OverLimit {
    pub cookie: SockCookie,
    /// `SockStats::redirected` after the skb that crossed the limit.
    pub redirected: u64,
}
const _: () = assert!(core::mem::size_of::<OverLimit>() == 16);

/// Per-CPU counters the verdict program maintains, indexed by `Counter`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// skbs redirected to the peer socket.
    Redirected = 0,
    /// bytes redirected to the peer socket.
    RedirectedBytes = 1,
    /// skbs passed to the socket's own receive queue (pair not enabled).
    Passed = 2,
    /// skbs for which no peer entry existed.
    NoPeer = 3,
    /// skbs whose redirect failed because the peer had left the target map.
    RedirectFailed = 4,
    /// over-limit events that did not fit in the ring buffer.
    EventsLost = 5,
    /// bare FINs (empty skbs) the verdict dropped; TCP has already recorded them.
    FinDropped = 6,
    /// skbs that began with bytes already seen (partial retransmissions), trimmed.
    Overlaps = 7,
    /// bytes trimmed from the head of those skbs.
    OverlapBytes = 8,
    /// skbs that began after the next unseen byte: a hole the program cannot fill.
    Gaps = 9,
    /// Packets into the tunnel that belong to a flow the tunnel client opened.
    TunnelFlowPackets = 10,
    /// TCP or UDP packets into the tunnel that belong to no open flow (a late retransmission,
    /// or the host's own traffic from the TUN's address).
    TunnelStrays = 11,
    /// UDP replies of an open flow caught leaving through another interface and sent into the
    /// tunnel instead (a wildcard-bound service).
    TunnelSteered = 12,
    /// Datagrams of established UDP sessions the gateway's ingress program rewrote and sent on
    /// itself (a GSO packet counts each datagram it carries).
    UdpForwarded = 13,
    /// Datagrams of such sessions left to user space because they did not fit the outgoing
    /// link's MTU (user space sends them, fragmented).
    UdpTooBig = 14,
}
/// Number of `Counter` variants; size of the counter array map.
pub const COUNTER_COUNT: u32 = 15;

/// Key of the `TUNNEL_FLOWS` map: one connection the tunnel client opened, as its packets
/// look when they leave the service host through the TUN (from the service, to the client).
/// IPv4 addresses are stored in the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct TunnelFlow {
    /// The service's address (one of the TUN's), network byte order.
    pub service_addr: [u8; 16],
    /// The internet client's address.
    pub client_addr: [u8; 16],
    /// Ports in network byte order, as they appear in the packet.
    pub service_port: [u8; 2],
    pub client_port: [u8; 2],
    /// 4 or 6.
    pub family: u8,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TunnelFlow>() == 40);

/// Value of `TUNNEL_FLOWS`: what the TC program counted for the flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TunnelFlowStats {
    pub packets: u64,
    /// IP bytes (headers included).
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<TunnelFlowStats>() == 16);

/// One of the TUN's addresses and the TUN's interface index: where the tunnel client's
/// steering program sends a service's reply that the main table routed elsewhere. Index 0
/// of `TUNNEL_ADDRS` is IPv4 (the address in the first 4 bytes), index 1 IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelAddr {
    pub addr: [u8; 16],
    /// 0: the TUN has no address of this family.
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<TunnelAddr>() == 20);

/// Key of the `UDP_FLOWS` map: a datagram of an established UDP session as it reaches the
/// gateway, from the client to the listener or from the upstream to the session's socket.
/// IPv4 addresses are stored in the first 4 bytes, the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct UdpFlowKey {
    /// Source and destination, network byte order.
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// Ports as they appear in the packet.
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<UdpFlowKey>() == 40);

/// Value of `UDP_FLOWS`: what the datagram's addresses and ports become, where it leaves, and
/// what the program has forwarded this way. User space writes the first part; the program
/// only adds to the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct UdpFlowAction {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    /// The interface the rewritten datagram leaves by, and its MTU: an IP packet longer than
    /// this is left to user space, which fragments it.
    pub ifindex: u32,
    pub mtu: u32,
    pub _pad: [u8; 4],
    /// Datagrams and UDP payload bytes forwarded, and when the last one was
    /// (CLOCK_MONOTONIC, ns).
    pub datagrams: u64,
    pub bytes: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<UdpFlowAction>() == 72);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is repr(C) and Pod: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::PeerEntry {}
    unsafe impl aya::Pod for super::SockStats {}
    unsafe impl aya::Pod for super::OverLimit {}
    unsafe impl aya::Pod for super::TunnelFlow {}
    unsafe impl aya::Pod for super::TunnelFlowStats {}
    unsafe impl aya::Pod for super::TunnelAddr {}
    unsafe impl aya::Pod for super::UdpFlowKey {}
    unsafe impl aya::Pod for super::UdpFlowAction {}
}
