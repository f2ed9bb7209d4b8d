//! Joining a pair to the sockmap, and leaving it.
use super::*;

impl KernelPath {
    pub(super) fn register(
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
    pub(super) fn unregister(&self, pair: &Pair) -> ((u64, u64), u64) {
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
}

/// Reads what the client has queued and forwards it, until a read comes back short, before
/// the pair joins the sockmap; the bytes it moves belong with the replayed preamble.
///
/// Sniffing reads in small chunks and can stop inside a received skb. The verdict program is
/// handed whole skbs (tcp_read_skb ignores how much of one was already read), so a partly read
/// skb would reach the upstream twice. A read shorter than its buffer leaves the queue empty,
/// with no partly read skb; whatever arrives later arrives whole.
pub(super) async fn drain_partial(
    client: &TcpStream,
    upstream: &TcpStream,
) -> Result<u64, SpliceError> {
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

/// The kernel refuses sockets that are no longer ESTABLISHED (the peer sent FIN) with
/// EOPNOTSUPP.
pub(super) fn is_half_closed(e: &aya::maps::MapError) -> bool {
    matches!(e, aya::maps::MapError::SyscallError(se) if se.io_error.raw_os_error() == Some(libc::EOPNOTSUPP))
}

/// A map error with its OS error, which aya's Display leaves out.
pub(super) fn describe(e: &aya::maps::MapError) -> String {
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

pub(super) fn remove_all(maps: &mut SpliceMaps, cookies: &[SockCookie]) {
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
