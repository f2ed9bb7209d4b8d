//! The kernel path: once a connection is routed, both sockets join the eBPF sockmap and the
//! verdict program redirects each side's input to the other side's egress. User space then
//! only watches each pair for EOF, resets and backlog; no payload byte passes through it.
//!
//! Three kernel behaviours shape this module (see platform-facts.md and the tests):
//! - bytes that reached a receive queue before the socket joined the map stay there until the
//!   data-ready callback runs again, so each socket is kicked after insertion;
//! - EOF is not redirected: user space sees the FIN, waits until the peer has queued every
//!   redirected byte, and only then shuts the peer's write side;
//! - redirected bytes wait in the peer's psock queue with no limit, so each direction has a
//!   byte allowance. When the program reports it crossed, the owning task raises the allowance
//!   if the peer is draining; past a hard limit the program passes bytes to the source's own
//!   queue, where TCP flow control holds the client back, and this task forwards them.
//!
//! A socket leaves the verdict map only when its connection is over: taken out while bytes
//! arrive, the kernel drops (already acknowledged) skbs of a batch in flight on another CPU.
use std::{
    collections::HashMap,
    future::Future,
    io::{self, ErrorKind},
    net::Shutdown,
    os::fd::{AsRawFd, RawFd},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use astrogate_common::{
    OverLimit, PeerEntry, SockCookie, SockStats, PEER_FLAG_ENABLED, PEER_FLAG_START_SEQ,
};
use aya::maps::{MapData, RingBuf};
use socket2::SockRef;
use tokio::{io::unix::AsyncFd, net::TcpStream, sync::Notify};

use super::{
    sockopt::{cookie, first_data_seq, kick, queued_total, received_total},
    userspace::{reset_on_close, write_all},
    DirectionEnd, Forwarded, PathKind,
};
use crate::ebpf::{Kernel, LoadError, SpliceMaps};

mod accounting;
mod events;
mod flow;
mod pair;
mod register;

use accounting::recv_buffer_for;
use events::read_events;
use pair::{Dir, Pair, State, DOWN, UP};
use register::drain_partial;

/// Pipe size for splicing a half-closed source's remaining bytes.
const TAIL_PIPE: usize = 1 << 20;
/// Passed bytes forwarded per read, and reads per step before other work gets a turn.
const PASSED_CHUNK: usize = 256 * 1024;
const PASSED_ROUNDS: usize = 64;
/// How often a passing or draining direction re-checks its peer's progress.
const POLL: Duration = Duration::from_millis(2);
/// How often a pair with a source nobody peeks checks both sockets for a reset.
const HEALTH: Duration = Duration::from_millis(50);
/// Sockets the maps hold at most (two per connection); mirrors `MAX_SOCKETS` in the programs.
const MAX_SOCKETS: usize = 262_144;

/// Memory bounds of the kernel path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLimits {
    /// Bytes one direction may have redirected but not yet queued on its peer.
    pub max_backlog: u64,
    /// The same, summed over all directions of all connections.
    pub max_backlog_total: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("watching the eBPF event ring: {0}")]
    Events(io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    /// Nothing was inserted; the connection can take the user-space path instead. `moved`
    /// bytes of the client's were already forwarded (read while draining before the splice).
    #[error("kernel path unavailable for this connection: {why}")]
    Unavailable { why: String, moved: u64 },
    /// The pair was partly spliced when setup failed; the connection must be reset.
    #[error("kernel path setup failed midway: {0}")]
    Aborted(String),
}

/// Per-direction wake-up from the over-limit event reader.
#[derive(Default)]
struct DirSignal {
    over_limit: Notify,
}

struct Registry {
    maps: SpliceMaps,
    signals: HashMap<SockCookie, Arc<DirSignal>>,
}

/// The loaded programs and the maps, shared by every spliced connection.
pub struct KernelPath {
    registry: Mutex<Registry>,
    limits: KernelLimits,
    _kernel: Kernel,
}

impl KernelPath {
    /// Loads the programs and starts the task that reads over-limit events. Must be called
    /// inside a Tokio runtime.
    pub fn start(limits: KernelLimits) -> Result<Arc<KernelPath>, StartError> {
        let (mut kernel, maps, events) = Kernel::load()?;
        if let Some(logs) = kernel.take_logs() {
            tokio::spawn(crate::ebpf::logs::forward(logs));
        }
        let path = Arc::new(KernelPath {
            registry: Mutex::new(Registry {
                maps,
                signals: HashMap::new(),
            }),
            limits,
            _kernel: kernel,
        });
        // SAFETY: the ring buffer owns its fd and keeps it open, unchanged, until it is dropped
        // together with the AsyncFd.
        let events = unsafe { AsyncFd::register(events) }
            .map_err(|e| StartError::Events(io::Error::other(e.to_string())))?;
        tokio::spawn(read_events(Arc::downgrade(&path), events));
        Ok(path)
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the maps as consistent as the kernel made
        // them; later connections can still use them.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of sockets currently spliced.
    pub fn spliced_sockets(&self) -> usize {
        self.registry().signals.len()
    }

    /// The program's counters, summed over CPUs, as (name, value) pairs.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        use astrogate_common::Counter::*;
        let reg = self.registry();
        [
            ("redirected_skbs", Redirected),
            ("redirected_bytes", RedirectedBytes),
            ("passed_skbs", Passed),
            ("no_peer", NoPeer),
            ("redirect_failed", RedirectFailed),
            ("events_lost", EventsLost),
            ("fins_dropped", FinDropped),
        ]
        .into_iter()
        .map(|(name, c)| (name, reg.maps.counter(c).unwrap_or(0)))
        .collect()
    }

    /// Entries left in every per-socket map, for leak checks: (sockhash, targets, peers, stats).
    pub fn map_entries(&self) -> (usize, usize, usize, usize) {
        let reg = self.registry();
        (
            reg.maps.socks.keys().count(),
            reg.maps.targets.keys().count(),
            reg.maps.peers.keys().count(),
            reg.maps.stats.keys().count(),
        )
    }

    /// Forwards `client` <-> `upstream` in the kernel until both directions end. Bytes the
    /// caller already wrote (replayed preamble, dial reply) must be written before this call;
    /// `sniffed` is how many bytes it read from the client.
    pub async fn splice(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        sniffed: u64,
    ) -> Result<Forwarded, SpliceError> {
        let drained = drain_partial(client, upstream).await?;
        let mut pair = self
            .register(client, upstream, sniffed + drained)
            .map_err(|e| match e {
                SpliceError::Unavailable { why, .. } => SpliceError::Unavailable {
                    why,
                    moved: drained,
                },
                aborted => aborted,
            })?;
        let _ = kick(client.as_raw_fd());
        let _ = kick(upstream.as_raw_fd());
        let mut ends = self.watch(&mut pair, client, upstream).await;
        let ((up_redirected, down_redirected), faults) = self.unregister(&pair);
        if faults > 0 {
            // Bytes were dropped in the kernel; a clean end would hand the peers a stream
            // with a hole in it.
            ends.0 = DirectionEnd::ReadFailed(io::Error::other(format!(
                "the kernel path dropped {faults} segment(s) it could not trim"
            )));
        }
        let forwarded = Forwarded {
            path: PathKind::Kernel,
            up_bytes: drained + up_redirected + pair.dirs[UP].copied + pair.dirs[UP].spliced,
            down_bytes: down_redirected + pair.dirs[DOWN].copied + pair.dirs[DOWN].spliced,
            copied_bytes: drained + pair.dirs[UP].copied + pair.dirs[DOWN].copied,
            up_end: ends.0,
            down_end: ends.1,
        };
        if !forwarded.clean() {
            reset_on_close(client);
            reset_on_close(upstream);
        }
        Ok(forwarded)
    }

    fn allowance(&self, directions: usize) -> u64 {
        accounting::allowance(self.limits, directions)
    }
}
