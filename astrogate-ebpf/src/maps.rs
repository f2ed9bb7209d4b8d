//! Every map the programs use, declared in one place so names and sizes match the loader.
use astrogate_common::{PeerEntry, SockCookie, COUNTER_COUNT};
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, SockHash},
};

/// Upper bound on spliced sockets (two per connection). User space checks it before inserting.
pub const MAX_SOCKETS: u32 = 262_144;

/// The sockets whose input the verdict program sees, keyed by socket cookie.
#[map(name = "SOCKS")]
pub static SOCKS: SockHash<SockCookie> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// For each socket in `SOCKS`, the socket its input is redirected to.
#[map(name = "PEERS")]
pub static PEERS: HashMap<SockCookie, PeerEntry> = HashMap::with_max_entries(MAX_SOCKETS, 0);

/// Counters indexed by `astrogate_common::Counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
