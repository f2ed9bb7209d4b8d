//! Backpressure and the end of a direction: raising limits while the destination drains,
//! forwarding the bytes the program passed past the hard limit, and passing EOF on.
use super::*;

impl KernelPath {
    /// The program saw direction `i` cross its soft limit: raise the limits while the peer
    /// keeps up. Otherwise leave them: at the hard limit the program passes bytes to the
    /// source's own queue, where they fill its receive buffer and TCP flow control stops the
    /// sender, and `Passing` takes over.
    pub(super) fn on_over_limit(&self, pair: &mut Pair, i: usize) -> Option<(usize, DirectionEnd)> {
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
    pub(super) async fn on_passing(
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
    pub(super) async fn forward_passed(
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
    pub(super) async fn on_tick(
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
    pub(super) fn tail_ready(&self, pair: &Pair) -> Option<usize> {
        [UP, DOWN]
            .into_iter()
            .find(|&i| matches!(pair.dirs[i].state, State::Tail) && self.drained(&pair.dirs[i]))
    }

    /// Bytes a source that sent FIN has received that neither user space read before the
    /// splice nor the program has verdicted yet.
    pub(super) fn unverdicted(&self, dir: &Dir) -> io::Result<u64> {
        let received = received_total(dir.src_fd)?;
        let seen = self
            .registry()
            .maps
            .stats
            .get(&dir.src_cookie, 0)
            .map_or(0, |s| s.redirected + s.passed);
        // Only draining sources ask, so the count includes the FIN.
        Ok(accounting::unverdicted(received, dir.src_consumed, seen))
    }

    /// Whether every byte of direction `dir` is in its destination's send queue.
    pub(super) fn drained(&self, dir: &Dir) -> bool {
        backlog(&self.registry(), dir) == Some(0)
    }
}

/// Bytes direction `dir` has redirected that its destination has not yet queued for sending.
pub(super) fn backlog(reg: &Registry, dir: &Dir) -> Option<u64> {
    let redirected = reg.maps.stats.get(&dir.src_cookie, 0).ok()?.redirected;
    let queued = queued_total(dir.dst_fd).ok()?.saturating_sub(dir.dst_base);
    Some(accounting::backlog(
        redirected,
        dir.dst_user_written,
        queued,
    ))
}

/// Bytes the program passed to the source's own queue that user space has not forwarded yet.
pub(super) fn passed_pending(reg: &Registry, dir: &Dir) -> u64 {
    let passed = reg
        .maps
        .stats
        .get(&dir.src_cookie, 0)
        .map_or(0, |s| s.passed);
    passed.saturating_sub(dir.consumed)
}

pub(super) fn raise_limit(
    reg: &mut Registry,
    dir: &mut Dir,
    allowance: u64,
    backlog: u64,
) -> Result<(), aya::maps::MapError> {
    let redirected = reg.maps.stats.get(&dir.src_cookie, 0)?.redirected;
    (dir.limit, dir.hard_limit) = accounting::raised_limits(redirected, allowance, backlog);
    publish(reg, dir)
}

/// Writes direction `dir`'s limits and consumed count for the program.
pub(super) fn publish(reg: &mut Registry, dir: &Dir) -> Result<(), aya::maps::MapError> {
    reg.maps.peers.insert(dir.src_cookie, dir.entry(), 0)
}
