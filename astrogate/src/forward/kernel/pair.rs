//! One spliced pair's task: what it waits for, and what each event does.
use super::*;

impl KernelPath {
    /// Runs the pair until both directions have ended.
    pub(super) async fn watch(
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
                        let (bytes, end) = crate::forward::splice::pump(src, dst, TAIL_PIPE).await;
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
    pub(super) async fn on_read(
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
}

/// The direction whose source failed, if either did. A peek reports errors on an active
/// source; this catches them on the others. Without it, an upstream that reset after it had
/// half-closed left a client writing into a pair that no longer forwarded anything (the soak
/// found it: the client's write blocked for its whole 60 s timeout). The socket's pending
/// error is the signal (a RST leaves ECONNRESET, a failed psock transmit EPIPE), not its
/// state: a socket also reaches TCP_CLOSE cleanly, when it had sent its FIN and the peer's
/// arrives (it becomes a timewait socket), while bytes may still wait to be forwarded.
pub(super) fn reset_source(streams: [&TcpStream; 2]) -> Option<(usize, DirectionEnd)> {
    [UP, DOWN]
        .into_iter()
        .find_map(|i| match SockRef::from(streams[i]).take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some((i, reset_or_failure(e))),
        })
}

/// How a source error ends its direction: a reset is passed on as a reset, anything else
/// is a failure.
pub(super) fn reset_or_failure(e: io::Error) -> DirectionEnd {
    if is_reset_error(&e) {
        DirectionEnd::Reset
    } else {
        DirectionEnd::ReadFailed(e)
    }
}

/// A reset, or the EPIPE the psock worker leaves on a socket whose transmit failed because its
/// peer reset it.
pub(super) fn is_reset_error(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
}

pub(super) const UP: usize = 0;
pub(super) const DOWN: usize = 1;

/// A half-closed source's rest being spliced: (direction, bytes, how it ended).
pub(super) type TailSplice<'a> =
    Pin<Box<dyn Future<Output = (usize, u64, DirectionEnd)> + Send + 'a>>;

pub(super) enum Event {
    Read(usize, ReadOutcome),
    OverLimit(usize),
    TailDone((usize, u64, DirectionEnd)),
    Tick,
}

pub(super) enum State {
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
pub(super) struct Dir {
    pub(super) src_cookie: SockCookie,
    pub(super) dst_cookie: SockCookie,
    pub(super) src_fd: RawFd,
    pub(super) dst_fd: RawFd,
    /// `queued_total(dst)` when the pair was registered.
    pub(super) dst_base: u64,
    /// Bytes user space read from `src` before the pair was registered.
    pub(super) src_consumed: u64,
    /// Bytes user space wrote to `dst` after registration.
    pub(super) dst_user_written: u64,
    /// Payload bytes user space had to copy: zero unless backpressure hit the hard limit.
    pub(super) copied: u64,
    /// Of the bytes the program passed to the source's queue, how many were forwarded.
    pub(super) consumed: u64,
    /// The limits last published for the program.
    pub(super) limit: u64,
    pub(super) hard_limit: u64,
    /// Bytes moved by splice(2) after a half-close while paused.
    pub(super) spliced: u64,
    /// Passed bytes read from `src` that `dst` could not take yet.
    pub(super) carry: Vec<u8>,
    /// Sequence number of the first byte of `src` user space did not read, when known.
    pub(super) start_seq: Option<u32>,
    pub(super) state: State,
    pub(super) signal: Arc<DirSignal>,
}

impl Dir {
    pub(super) fn new(
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
    pub(super) fn entry(&self) -> PeerEntry {
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
    pub(super) fn wants_reads(&self) -> bool {
        matches!(self.state, State::Active)
    }

    pub(super) fn take_end(&mut self) -> DirectionEnd {
        match std::mem::replace(&mut self.state, State::Done(DirectionEnd::Aborted)) {
            State::Done(end) => end,
            _ => DirectionEnd::Aborted,
        }
    }
}

pub(super) struct Pair {
    pub(super) dirs: [Dir; 2],
}

pub(super) enum ReadOutcome {
    Eof,
    Reset,
    Failed(io::Error),
    /// Bytes the program passed to this socket's own queue are waiting.
    Passed,
}

/// Waits for something to read on `src` (forever if `None`) and reads it.
pub(super) async fn read_side(src: Option<&TcpStream>) -> ReadOutcome {
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
