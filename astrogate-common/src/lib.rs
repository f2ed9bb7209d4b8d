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

/// Value of the `PEERS` map: where bytes arriving on a socket are redirected to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerEntry {
    /// Cookie of the socket that receives this socket's input on its egress.
    pub peer: SockCookie,
    /// Bit set of `PEER_FLAG_*`.
    pub flags: u32,
    /// Explicit padding so the layout has no hidden bytes.
    pub _reserved: u32,
}
const _: () = assert!(core::mem::size_of::<PeerEntry>() == 16);

/// Set once both sockets of a pair are in the sockhash. Until then the verdict passes data to
/// the socket's own receive queue, where user space can still read it: a redirect to a key that
/// is not yet present would drop it silently.
pub const PEER_FLAG_ENABLED: u32 = 1;

/// Per-CPU counters the verdict program maintains, indexed by `Counter`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// skbs redirected to the peer socket.
    Redirected = 0,
    /// bytes redirected to the peer socket.
    RedirectedBytes = 1,
    /// skbs passed to the socket's own receive queue (pair not enabled, or zero length).
    Passed = 2,
    /// skbs for which no peer entry existed.
    NoPeer = 3,
}
/// Number of `Counter` variants; size of the counter array map.
pub const COUNTER_COUNT: u32 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: PeerEntry is repr(C), Pod (no padding, every bit pattern valid).
    unsafe impl aya::Pod for super::PeerEntry {}
}
