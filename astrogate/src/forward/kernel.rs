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

/// The least allowance a direction gets when the global budget is shared by many connections.
const MIN_ALLOWANCE: u64 = 64 * 1024;
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
        let (kernel, maps, events) = Kernel::load()?;
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
        let share = self.limits.max_backlog_total / (directions.max(1) as u64);
        self.limits.max_backlog.min(share.max(MIN_ALLOWANCE))
    }

    fn register(
        &self,
        client: &TcpStream,
        upstream: &TcpStream,
        client_consumed: u64,
    ) -> Result<Pair, SpliceError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| SpliceError::Unavailable {
            why: format!("{what}: {e}"),
            moved: 0,
        };
        let (cfd, ufd) = (client.as_raw_fd(), upstream.as_raw_fd());
        let cc = cookie(cfd).map_err(|e| unavailable("SO_COOKIE", &e))?;
        let uc = cookie(ufd).map_err(|e| unavailable("SO_COOKIE", &e))?;
        // User space read the client's first bytes while sniffing, so the program must be told
        // where they end: a retransmission may bring them back. The upstream has never been
        // read, so its first segment is where it starts.
        let client_start = first_data_seq(cfd)
            .map_err(|e| unavailable("the client's saved SYN", &e))?
            .wrapping_add(client_consumed as u32);
        // The baselines must be read before either socket can redirect into the other.
        let c_base = queued_total(cfd).map_err(|e| unavailable("TCP_INFO", &e))?;
        let u_base = queued_total(ufd).map_err(|e| unavailable("TCP_INFO", &e))?;
        let mut reg = self.registry();
        if reg.signals.len() + 2 > MAX_SOCKETS {
            return Err(SpliceError::Unavailable {
                why: "the sockmap is full".into(),
                moved: 0,
            });
        }
        let allowance = self.allowance(reg.signals.len() + 2);
        // Redirected bytes leave the receive queue at once, so TCP keeps advertising the whole
        // receive buffer and a fast sender can put a full window in flight before a pause takes
        // effect. Capping the buffer at the allowance bounds that overshoot too. (The kernel
        // doubles the value it is given, for its own bookkeeping.)
        for stream in [client, upstream] {
            let _ = SockRef::from(stream).set_recv_buffer_size(recv_buffer_for(allowance));
        }
        let up = Arc::new(DirSignal::default());
        let down = Arc::new(DirSignal::default());
        let mut dirs = [
            Dir::new((cc, cfd), (uc, ufd), u_base, up.clone()),
            Dir::new((uc, ufd), (cc, cfd), c_base, down.clone()),
        ];
        dirs[UP].src_consumed = client_consumed;
        dirs[UP].start_seq = Some(client_start);
        for d in &mut dirs {
            d.limit = allowance;
            d.hard_limit = 2 * allowance;
        }
        let staged = (|| {
            reg.maps.stats.insert(cc, SockStats::default(), 0)?;
            reg.maps.stats.insert(uc, SockStats::default(), 0)?;
            reg.maps.peers.insert(cc, dirs[UP].entry(), 0)?;
            reg.maps.peers.insert(uc, dirs[DOWN].entry(), 0)?;
            reg.maps.targets.insert(cc, cfd, 0)?;
            reg.maps.targets.insert(uc, ufd, 0)?;
            // Upstream first: once the client joins, its bytes are redirected to an upstream
            // that is already a target.
            reg.maps.socks.insert(uc, ufd, 0)
        })();
        if let Err(e) = staged {
            remove_all(&mut reg.maps, &[cc, uc]);
            return Err(unavailable("inserting into the sockmap", &describe(&e)));
        }
        // The client may send FIN at any moment, and the kernel admits only established
        // sockets. If that happened just now, the upstream is already spliced, so the
        // client's last bytes are spliced over (Tail) instead of falling back.
        if let Err(e) = reg.maps.socks.insert(cc, cfd, 0) {
            if !is_half_closed(&e) {
                remove_all(&mut reg.maps, &[cc, uc]);
                return Err(SpliceError::Aborted(format!(
                    "inserting the client: {}",
                    describe(&e)
                )));
            }
            dirs[UP].state = State::Tail;
        }
        reg.signals.insert(cc, up);
        reg.signals.insert(uc, down);
        Ok(Pair { dirs })
    }

    /// Removes the pair from every map. Returns the bytes each direction redirected, and the
    /// segments the program had to drop because it could not trim them (any is a fault).
    fn unregister(&self, pair: &Pair) -> ((u64, u64), u64) {
        let mut reg = self.registry();
        let cookies = [pair.dirs[UP].src_cookie, pair.dirs[DOWN].src_cookie];
        let stats = cookies.map(|c| reg.maps.stats.get(&c, 0).unwrap_or_default());
        remove_all(&mut reg.maps, &cookies);
        for c in cookies {
            reg.signals.remove(&c);
        }
        (
            (stats[UP].redirected, stats[DOWN].redirected),
            stats[UP].faults + stats[DOWN].faults,
        )
    }

    /// Runs the pair until both directions have ended.
    async fn watch(
        &self,
        pair: &mut Pair,
        client: &TcpStream,
        upstream: &TcpStream,
    ) -> (DirectionEnd, DirectionEnd) {
        let streams = [client, upstream];
        // A tail is spliced beside the loop, not inside it: the other direction may need
        // this task (to forward passed bytes) before the tail's source ends.
        let mut tail: Option<TailSplice<'_>> = None;
        loop {
            if pair.dirs.iter().all(|d| matches!(d.state, State::Done(_))) {
                break;
            }
            let polling = pair
                .dirs
                .iter()
                .any(|d| matches!(d.state, State::Passing | State::Draining | State::Tail));
            // A source that is not being peeked (paused, draining or done) would never report
            // a reset by itself; while one is not, both sockets are checked on a timer.
            let unwatched = pair.dirs.iter().any(|d| !d.wants_reads());
            let tick = async {
                if polling {
                    tokio::time::sleep(POLL).await
                } else if unwatched {
                    tokio::time::sleep(HEALTH).await
                } else {
                    std::future::pending().await
                }
            };
            let up_src = pair.dirs[UP].wants_reads().then_some(streams[UP]);
            let down_src = pair.dirs[DOWN].wants_reads().then_some(streams[DOWN]);
            let up_signal = pair.dirs[UP].signal.clone();
            let down_signal = pair.dirs[DOWN].signal.clone();
            let event = tokio::select! {
                r = read_side(up_src) => Event::Read(UP, r),
                r = read_side(down_src) => Event::Read(DOWN, r),
                _ = up_signal.over_limit.notified() => Event::OverLimit(UP),
                _ = down_signal.over_limit.notified() => Event::OverLimit(DOWN),
                r = async { tail.as_mut().expect("guarded by is_some").await }, if tail.is_some() => {
                    Event::TailDone(r)
                }
                _ = tick => Event::Tick,
            };
            let fatal = match event {
                Event::Read(i, r) => self.on_read(pair, i, r, streams).await,
                Event::OverLimit(i) => self.on_over_limit(pair, i),
                Event::TailDone((i, bytes, end)) => {
                    tail = None;
                    tracing::debug!(
                        cookie = pair.dirs[i].src_cookie,
                        bytes,
                        ?end,
                        "kernel path: tail spliced"
                    );
                    pair.dirs[i].spliced += bytes;
                    match end {
                        DirectionEnd::Eof => {
                            pair.dirs[i].state = State::Done(end);
                            None
                        }
                        end => Some((i, end)),
                    }
                }
                Event::Tick => match reset_source(streams) {
                    Some(fatal) => Some(fatal),
                    None => self.on_tick(pair, streams).await,
                },
            };
            if fatal.is_none() && tail.is_none() {
                if let Some(i) = self.tail_ready(pair) {
                    tracing::debug!(
                        cookie = pair.dirs[i].src_cookie,
                        "kernel path: splicing a tail"
                    );
                    pair.dirs[i].state = State::Splicing;
                    let (src, dst) = (streams[i], streams[1 - i]);
                    tail = Some(Box::pin(async move {
                        let (bytes, end) = super::splice::pump(src, dst, TAIL_PIPE).await;
                        (i, bytes, end)
                    }));
                }
            }
            if let Some((i, end)) = fatal {
                pair.dirs[i].state = State::Done(end);
                for d in &mut pair.dirs {
                    if !matches!(d.state, State::Done(_)) {
                        d.state = State::Done(DirectionEnd::Aborted);
                    }
                }
            }
        }
        let [up, down] = &mut pair.dirs;
        (up.take_end(), down.take_end())
    }

    /// Handles what a read on direction `i`'s source returned.
    async fn on_read(
        &self,
        pair: &mut Pair,
        i: usize,
        r: ReadOutcome,
        streams: [&TcpStream; 2],
    ) -> Option<(usize, DirectionEnd)> {
        match r {
            ReadOutcome::Eof => {
                tracing::debug!(cookie = pair.dirs[i].src_cookie, "kernel path: EOF");
                pair.dirs[i].state = State::Draining;
                self.on_tick(pair, streams).await
            }
            ReadOutcome::Reset => Some((i, DirectionEnd::Reset)),
            ReadOutcome::Failed(e) => Some((i, DirectionEnd::ReadFailed(e))),
            ReadOutcome::Passed => {
                // Bytes went past the hard limit into this socket's own queue.
                pair.dirs[i].state = State::Passing;
                self.on_passing(pair, i, streams).await
            }
        }
    }

    /// The program saw direction `i` cross its soft limit: raise the limits while the peer
    /// keeps up. Otherwise leave them: at the hard limit the program passes bytes to the
    /// source's own queue, where they fill its receive buffer and TCP flow control stops the
    /// sender, and `Passing` takes over.
    fn on_over_limit(&self, pair: &mut Pair, i: usize) -> Option<(usize, DirectionEnd)> {
        if !matches!(pair.dirs[i].state, State::Active) {
            return None;
        }
        let mut reg = self.registry();
        let allowance = self.allowance(reg.signals.len());
        let dir = &mut pair.dirs[i];
        let backlog = backlog(&reg, dir)?;
        if passed_pending(&reg, dir) == 0 && backlog < allowance / 2 {
            tracing::trace!(
                cookie = dir.src_cookie,
                backlog,
                "kernel path: raising a limit"
            );
            let _ = raise_limit(&mut reg, dir, allowance, backlog);
        }
        None
    }

    /// Forwards what the program passed to direction `i`'s source queue, once the destination
    /// has drained, and returns to redirecting when caught up. These are the only payload
    /// bytes user space ever copies, and only while a destination is slower than its source.
    async fn on_passing(
        &self,
        pair: &mut Pair,
        i: usize,
        streams: [&TcpStream; 2],
    ) -> Option<(usize, DirectionEnd)> {
        let caught_up = match self.forward_passed(pair, i, streams).await {
            Err(fatal) => return Some(fatal),
            Ok(caught_up) => caught_up,
        };
        let mut reg = self.registry();
        let allowance = self.allowance(reg.signals.len());
        let dir = &mut pair.dirs[i];
        let backlog = backlog(&reg, dir)?;
        // Publishing the consumed count lets the program redirect again the moment nothing
        // passed is left; new limits only once the destination has room.
        let published = if backlog < allowance / 2 {
            raise_limit(&mut reg, dir, allowance, backlog)
        } else {
            publish(&mut reg, dir)
        };
        if caught_up && backlog < allowance / 2 && published.is_ok() {
            tracing::debug!(
                cookie = dir.src_cookie,
                backlog,
                "kernel path: redirecting again"
            );
            dir.state = State::Active;
        }
        None
    }

    /// Forwards bytes the program passed to direction `i`'s source queue, once the destination
    /// has drained. Returns whether none is left pending.
    ///
    /// It never waits for the destination: the pair has one task, and a write that blocked
    /// here would stop it from serving the other direction. In an echo that is a deadlock (the
    /// issue's 8 x 64 MiB echo stalled one run in two): the upstream stops reading because
    /// its replies are not taken, and its replies are not taken because this task waits for
    /// it to read. Bytes read but not yet written wait in the direction's carry buffer, and
    /// only written bytes count as consumed, so the program keeps passing behind them.
    async fn forward_passed(
        &self,
        pair: &mut Pair,
        i: usize,
        streams: [&TcpStream; 2],
    ) -> Result<bool, (usize, DirectionEnd)> {
        let gone = || {
            (
                i,
                DirectionEnd::WriteFailed(io::Error::other("destination gone")),
            )
        };
        let (left, pending) = {
            let reg = self.registry();
            let dir = &pair.dirs[i];
            (
                backlog(&reg, dir).ok_or_else(gone)?,
                passed_pending(&reg, dir),
            )
        };
        if pending == 0 {
            return Ok(true);
        }
        // Passed bytes come after everything redirected, so they may only follow once the
        // destination has queued all of that.
        if left != 0 {
            return Ok(false);
        }
        let dir = &mut pair.dirs[i];
        let mut pending = pending;
        for _ in 0..PASSED_ROUNDS {
            while !dir.carry.is_empty() {
                match streams[1 - i].try_write(&dir.carry) {
                    Ok(n) => {
                        dir.carry.drain(..n);
                        dir.consumed += n as u64;
                        dir.copied += n as u64;
                        dir.dst_user_written += n as u64;
                        pending -= n as u64;
                    }
                    Err(e)
                        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                    {
                        return Ok(false)
                    }
                    Err(e) => return Err((i, DirectionEnd::WriteFailed(e))),
                }
            }
            if pending == 0 {
                // The program may have passed more meanwhile.
                pending = passed_pending(&self.registry(), dir);
                if pending == 0 {
                    return Ok(true);
                }
            }
            // While the source is in the verdict map its receive queue holds nothing the
            // program has not seen, so a read returns passed bytes, in order; never more than
            // are pending. A Vec reads into its spare capacity, which is the read's limit.
            // Idle pairs keep no buffer.
            dir.carry = Vec::new();
            let room = (pending as usize).min(PASSED_CHUNK);
            let mut buf = Vec::with_capacity(room);
            match streams[i].try_read_buf(&mut buf) {
                Ok(0) => break,
                Ok(_) => dir.carry.extend_from_slice(&buf),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    break
                }
                Err(e) => return Err((i, DirectionEnd::ReadFailed(e))),
            }
        }
        Ok(false)
    }

    /// Periodic work for passing and draining directions.
    async fn on_tick(
        &self,
        pair: &mut Pair,
        streams: [&TcpStream; 2],
    ) -> Option<(usize, DirectionEnd)> {
        for i in [UP, DOWN] {
            match pair.dirs[i].state {
                State::Passing => {
                    if let Some(fatal) = self.on_passing(pair, i, streams).await {
                        return Some(fatal);
                    }
                }
                State::Draining => {
                    // TCP wakes readers for the FIN before it hands the last data to the
                    // verdict, so EOF can be seen while bytes still wait in the receive queue.
                    // Nudge them through and wait until the verdict has seen every byte TCP
                    // received. (SIOCINQ cannot tell: on a sockmap socket it may count only
                    // the bytes the program passed.)
                    match self.unverdicted(&pair.dirs[i]) {
                        Ok(0) => {}
                        Ok(_) => {
                            let _ = kick(pair.dirs[i].src_fd);
                            continue;
                        }
                        Err(e) => return Some((i, DirectionEnd::ReadFailed(e))),
                    }
                    match self.forward_passed(pair, i, streams).await {
                        Err(fatal) => return Some(fatal),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    if self.drained(&pair.dirs[i]) {
                        tracing::debug!(
                            cookie = pair.dirs[i].src_cookie,
                            "kernel path: drained after EOF"
                        );
                        // Only now may the FIN follow: every redirected byte is queued ahead.
                        let _ = SockRef::from(streams[1 - i]).shutdown(Shutdown::Write);
                        pair.dirs[i].state = State::Done(DirectionEnd::Eof);
                    } else if let Err(e) = queued_total(pair.dirs[i].dst_fd) {
                        return Some((i, DirectionEnd::WriteFailed(e)));
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// A direction in `Tail` whose destination has drained, ready to splice its rest.
    fn tail_ready(&self, pair: &Pair) -> Option<usize> {
        [UP, DOWN]
            .into_iter()
            .find(|&i| matches!(pair.dirs[i].state, State::Tail) && self.drained(&pair.dirs[i]))
    }

    /// Bytes a source that sent FIN has received that neither user space read before the
    /// splice nor the program has verdicted yet.
    fn unverdicted(&self, dir: &Dir) -> io::Result<u64> {
        let received = received_total(dir.src_fd)?;
        let seen = self
            .registry()
            .maps
            .stats
            .get(&dir.src_cookie, 0)
            .map_or(0, |s| s.redirected + s.passed);
        // The count includes the FIN's sequence number, and only draining sources ask.
        Ok(received.saturating_sub(1 + dir.src_consumed + seen))
    }

    /// Whether every byte of direction `dir` is in its destination's send queue.
    fn drained(&self, dir: &Dir) -> bool {
        backlog(&self.registry(), dir) == Some(0)
    }
}

/// Reads what the client has queued and forwards it, until a read comes back short, before
/// the pair joins the sockmap; the bytes it moves belong with the replayed preamble.
///
/// Sniffing reads in small chunks and can stop inside a received skb. The verdict program is
/// handed whole skbs (tcp_read_skb ignores how much of one was already read), so a partly read
/// skb would reach the upstream twice. A read shorter than its buffer leaves the queue empty,
/// with no partly read skb; whatever arrives later arrives whole.
async fn drain_partial(client: &TcpStream, upstream: &TcpStream) -> Result<u64, SpliceError> {
    const BUF: usize = 256 * 1024;
    const ROUNDS: usize = 16;
    let mut moved = 0u64;
    let mut buf = Vec::with_capacity(BUF);
    for _ in 0..ROUNDS {
        buf.clear();
        match client.try_read_buf(&mut buf) {
            Ok(n) => {
                write_all(upstream, &buf[..n])
                    .await
                    .map_err(|e| SpliceError::Aborted(format!("forwarding queued bytes: {e}")))?;
                moved += n as u64;
                if n < BUF {
                    return Ok(moved);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(moved),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(SpliceError::Aborted(format!("reading queued bytes: {e}"))),
        }
    }
    // A client that keeps the queue full this long is better served by the copying path,
    // which is always correct; the bytes so far are already forwarded in order.
    Err(SpliceError::Unavailable {
        why: "the client kept its queue full".into(),
        moved,
    })
}

/// The SO_RCVBUF value for an allowance: half of it (the kernel doubles what it is given),
/// within what setsockopt's C int can say. Cast unchecked, half of 8 GiB wrapped to 0.
fn recv_buffer_for(allowance: u64) -> usize {
    (allowance / 2).min(i32::MAX as u64) as usize
}

/// The direction whose source failed, if either did. A peek reports errors on an active
/// source; this catches them on the others. Without it, an upstream that reset after it had
/// half-closed left a client writing into a pair that no longer forwarded anything (the soak
/// found it: the client's write blocked for its whole 60 s timeout). The socket's pending
/// error is the signal (a RST leaves ECONNRESET, a failed psock transmit EPIPE), not its
/// state: a socket also reaches TCP_CLOSE cleanly, when it had sent its FIN and the peer's
/// arrives (it becomes a timewait socket), while bytes may still wait to be forwarded.
fn reset_source(streams: [&TcpStream; 2]) -> Option<(usize, DirectionEnd)> {
    [UP, DOWN]
        .into_iter()
        .find_map(|i| match SockRef::from(streams[i]).take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some((i, reset_or_failure(e))),
        })
}

/// How a source error ends its direction: a reset is passed on as a reset, anything else
/// is a failure.
fn reset_or_failure(e: io::Error) -> DirectionEnd {
    if is_reset_error(&e) {
        DirectionEnd::Reset
    } else {
        DirectionEnd::ReadFailed(e)
    }
}

/// A reset, or the EPIPE the psock worker leaves on a socket whose transmit failed because its
/// peer reset it.
fn is_reset_error(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

/// Bytes direction `dir` has redirected that its destination has not yet queued for sending.
fn backlog(reg: &Registry, dir: &Dir) -> Option<u64> {
    let redirected = reg.maps.stats.get(&dir.src_cookie, 0).ok()?.redirected;
    let queued = queued_total(dir.dst_fd).ok()?.saturating_sub(dir.dst_base);
    Some((redirected + dir.dst_user_written).saturating_sub(queued))
}

/// Bytes the program passed to the source's own queue that user space has not forwarded yet.
fn passed_pending(reg: &Registry, dir: &Dir) -> u64 {
    let passed = reg
        .maps
        .stats
        .get(&dir.src_cookie, 0)
        .map_or(0, |s| s.passed);
    passed.saturating_sub(dir.consumed)
}

fn raise_limit(
    reg: &mut Registry,
    dir: &mut Dir,
    allowance: u64,
    backlog: u64,
) -> Result<(), aya::maps::MapError> {
    let redirected = reg.maps.stats.get(&dir.src_cookie, 0)?.redirected;
    dir.limit = redirected + allowance.saturating_sub(backlog);
    dir.hard_limit = dir.limit + allowance;
    publish(reg, dir)
}

/// Writes direction `dir`'s limits and consumed count for the program.
fn publish(reg: &mut Registry, dir: &Dir) -> Result<(), aya::maps::MapError> {
    reg.maps.peers.insert(dir.src_cookie, dir.entry(), 0)
}

/// The kernel refuses sockets that are no longer ESTABLISHED (the peer sent FIN) with
/// EOPNOTSUPP.
fn is_half_closed(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(se) if se.io_error.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// A map error with its OS error, which aya's Display leaves out.
fn describe(e: &aya::maps::MapError) -> String {
    match e {
        aya::maps::MapError::SyscallError(se) if is_half_closed(e) => {
            format!(
                "{}: a socket is already half-closed ({})",
                se.call, se.io_error
            )
        }
        aya::maps::MapError::SyscallError(se) => format!("{}: {}", se.call, se.io_error),
        other => other.to_string(),
    }
}

fn remove_all(maps: &mut SpliceMaps, cookies: &[SockCookie]) {
    // Out of the verdict map first, so nothing is redirected to a socket leaving the targets.
    for c in cookies {
        let _ = maps.socks.remove(c);
    }
    for c in cookies {
        let _ = maps.targets.remove(c);
        let _ = maps.peers.remove(c);
        let _ = maps.stats.remove(c);
    }
}

/// Reads over-limit events and wakes the task that owns the direction.
async fn read_events(path: Weak<KernelPath>, mut events: AsyncFd<RingBuf<MapData>>) {
    loop {
        let Ok(mut guard) = events.readable_mut().await else {
            tracing::error!("kernel path: over-limit events can no longer be read");
            return;
        };
        let Some(path) = path.upgrade() else {
            return;
        };
        // Clear first, then drain: the ring wakes its reader only when it was caught up, so an
        // event landing after the drain but before a later clear would be lost for good, and
        // with it every event behind it.
        guard.clear_ready();
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<OverLimit>() {
                continue;
            }
            let notice: OverLimit =
                bytemuck::pod_read_unaligned(&item[..std::mem::size_of::<OverLimit>()]);
            if let Some(signal) = path.registry().signals.get(&notice.cookie) {
                signal.over_limit.notify_one();
            }
        }
    }
}

const UP: usize = 0;
const DOWN: usize = 1;

/// A half-closed source's rest being spliced: (direction, bytes, how it ended).
type TailSplice<'a> = Pin<Box<dyn Future<Output = (usize, u64, DirectionEnd)> + Send + 'a>>;

enum Event {
    Read(usize, ReadOutcome),
    OverLimit(usize),
    TailDone((usize, u64, DirectionEnd)),
    Tick,
}

enum State {
    Active,
    /// The program is passing this source's bytes to its own queue (hard limit reached);
    /// user space forwards them until caught up.
    Passing,
    /// The source sent FIN; waiting for the destination to queue the rest before passing it on.
    Draining,
    /// The client half-closed between joining the target map and the verdict map, and the
    /// kernel admits only established sockets: once the destination has drained, the rest of
    /// its queue is spliced to the destination.
    Tail,
    /// A `Tail` whose rest is being spliced.
    Splicing,
    Done(DirectionEnd),
}

/// One direction: bytes arriving on `src` leave through `dst`.
struct Dir {
    src_cookie: SockCookie,
    dst_cookie: SockCookie,
    src_fd: RawFd,
    dst_fd: RawFd,
    /// `queued_total(dst)` when the pair was registered.
    dst_base: u64,
    /// Bytes user space read from `src` before the pair was registered.
    src_consumed: u64,
    /// Bytes user space wrote to `dst` after registration.
    dst_user_written: u64,
    /// Payload bytes user space had to copy: zero unless backpressure hit the hard limit.
    copied: u64,
    /// Of the bytes the program passed to the source's queue, how many were forwarded.
    consumed: u64,
    /// The limits last published for the program.
    limit: u64,
    hard_limit: u64,
    /// Bytes moved by splice(2) after a half-close while paused.
    spliced: u64,
    /// Passed bytes read from `src` that `dst` could not take yet.
    carry: Vec<u8>,
    /// Sequence number of the first byte of `src` user space did not read, when known.
    start_seq: Option<u32>,
    state: State,
    signal: Arc<DirSignal>,
}

impl Dir {
    fn new(
        (src_cookie, src_fd): (SockCookie, RawFd),
        (dst_cookie, dst_fd): (SockCookie, RawFd),
        dst_base: u64,
        signal: Arc<DirSignal>,
    ) -> Dir {
        Dir {
            src_cookie,
            dst_cookie,
            src_fd,
            dst_fd,
            dst_base,
            src_consumed: 0,
            dst_user_written: 0,
            copied: 0,
            consumed: 0,
            limit: 0,
            hard_limit: 0,
            spliced: 0,
            carry: Vec::new(),
            start_seq: None,
            state: State::Active,
            signal,
        }
    }

    /// What the program needs to know about this direction.
    fn entry(&self) -> PeerEntry {
        let (flags, start_seq) = match self.start_seq {
            Some(seq) => (PEER_FLAG_ENABLED | PEER_FLAG_START_SEQ, seq),
            None => (PEER_FLAG_ENABLED, 0),
        };
        PeerEntry {
            peer: self.dst_cookie,
            limit: self.limit,
            hard_limit: self.hard_limit,
            consumed: self.consumed,
            flags,
            start_seq,
        }
    }

    /// A paused source must not be read: its queue holds payload the kernel will redirect.
    fn wants_reads(&self) -> bool {
        matches!(self.state, State::Active)
    }

    fn take_end(&mut self) -> DirectionEnd {
        match std::mem::replace(&mut self.state, State::Done(DirectionEnd::Aborted)) {
            State::Done(end) => end,
            _ => DirectionEnd::Aborted,
        }
    }
}

struct Pair {
    dirs: [Dir; 2],
}

enum ReadOutcome {
    Eof,
    Reset,
    Failed(io::Error),
    /// Bytes the program passed to this socket's own queue are waiting.
    Passed,
}

/// Waits for something to read on `src` (forever if `None`) and reads it.
async fn read_side(src: Option<&TcpStream>) -> ReadOutcome {
    let Some(src) = src else {
        return std::future::pending().await;
    };
    // Peek, never read: any byte here is one the program passed, and those are forwarded in
    // exact counts by `forward_passed` only.
    let mut probe = [0u8; 1];
    match src.peek(&mut probe).await {
        Ok(0) => ReadOutcome::Eof,
        Ok(_) => ReadOutcome::Passed,
        // When its transmit fails hard (the peer reset it), the kernel's psock worker marks a
        // socket with EPIPE, which can reach this read before, or instead of, ECONNRESET.
        Err(e) if is_reset_error(&e) => ReadOutcome::Reset,
        Err(e) => ReadOutcome::Failed(e),
    }
}
