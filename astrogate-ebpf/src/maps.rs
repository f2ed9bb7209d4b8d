//! Every map the programs use, declared in one place so names and sizes match the loader.
//! (aya-log-ebpf declares its own ring, AYA_LOGS, for the rare events the programs log.)
use astrogate_common::{
    PeerEntry, SockCookie, SockStats, TunnelAddr, TunnelFlow, TunnelFlowStats, UdpFlowAction,
    UdpFlowKey, COUNTER_COUNT,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf, SockHash},
};

/// BPF_F_NO_PREALLOC: hash maps allocate entries on insert instead of reserving every entry at
/// load time, so an idle gateway does not pin tens of MB of kernel memory.
const NO_PREALLOC: u32 = 1;

/// Upper bound on spliced sockets (two per connection). User space checks it before inserting.
pub const MAX_SOCKETS: u32 = 262_144;

/// The sockets whose input the verdict program sees, keyed by socket cookie. The verdict is
/// attached to this map. Sockets leave it only at the end of a connection: removing one while
/// bytes arrive makes the kernel drop skbs of a batch it is already verdicting.
#[map(name = "SOCKS")]
pub static SOCKS: SockHash<SockCookie> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// Every spliced socket, keyed by cookie: the redirect targets. No program is attached; a
/// socket joins it before `SOCKS`, so a redirect never names a socket that is not yet here.
#[map(name = "TARGETS")]
pub static TARGETS: SockHash<SockCookie> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// For each socket in `SOCKS`, where its input goes and its backlog limit. User space writes it.
#[map(name = "PEERS")]
pub static PEERS: HashMap<SockCookie, PeerEntry> =
    HashMap::with_max_entries(MAX_SOCKETS, NO_PREALLOC);

/// Per-socket byte counts. Only the verdict program writes them.
#[map(name = "STATS")]
pub static STATS: HashMap<SockCookie, SockStats> =
    HashMap::with_max_entries(MAX_SOCKETS, NO_PREALLOC);

/// Over-limit notices for user space, which raises the limit while the destination drains.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Counters indexed by `astrogate_common::Counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Upper bound on flows one tunnel client has open at once.
pub const MAX_TUNNEL_FLOWS: u32 = 65_536;

/// The tunnel client's open flows, keyed as their packets leave through the TUN. The client
/// inserts a flow before its first packet and removes it when the flow ends; the TC program
/// counts each flow's packets here.
#[map(name = "TUNNEL_FLOWS")]
pub static TUNNEL_FLOWS: HashMap<TunnelFlow, TunnelFlowStats> =
    HashMap::with_max_entries(MAX_TUNNEL_FLOWS, NO_PREALLOC);

/// The TUN's IPv4 (index 0) and IPv6 (index 1) address and its interface index, written by
/// the tunnel client at start: what the steering program rewrites a reply's source to, and
/// where it sends it.
#[map(name = "TUNNEL_ADDRS")]
pub static TUNNEL_ADDRS: Array<TunnelAddr> = Array::with_max_entries(2, 0);

/// Upper bound on UDP session directions the gateway forwards in the kernel (two per
/// session). User space checks it before inserting and leaves a session in user space beyond.
pub const MAX_UDP_FLOWS: u32 = 131_072;

/// Established UDP sessions, each direction keyed as its datagrams reach the gateway: how the
/// ingress program rewrites them and where it sends them. User space inserts both directions
/// once the session's upstream socket is connected and removes them when the session ends.
/// Per CPU, so that each CPU counts in its own copy of the value, exactly and without atomics.
#[map(name = "UDP_FLOWS")]
pub static UDP_FLOWS: PerCpuHashMap<UdpFlowKey, UdpFlowAction> =
    PerCpuHashMap::with_max_entries(MAX_UDP_FLOWS, NO_PREALLOC);
