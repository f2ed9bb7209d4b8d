//! One side of a soak connection: writes its pattern, reads and checks every byte of the
//! other side's, and reports what it did through counters the stall watch reads.
use std::{
    hash::Hasher,
    io::{self, ErrorKind, Read, Write},
    net::{Shutdown, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    thread,
    time::Duration,
};

use super::plan::{Order, Reads, Side, Writes};
use crate::common::streams::Pattern;

const CHUNK: usize = 256 * 1024;
/// An echoing side reads this much at a time, as the Python echo server did.
const ECHO_READ: usize = 1 << 20;
/// No socket call waits longer than this; the stall watch reports long before.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// What the stall watch sees of a side. Byte counts are stream bytes that cross the gateway:
/// a dial header (consumed) and the dial reply (made by the gateway) are not counted.
#[derive(Default, Debug)]
pub struct Progress {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Inside a write with bytes left, not pausing on purpose.
    pub writing: AtomicBool,
    /// Inside a read and expecting more, not pausing on purpose.
    pub reading: AtomicBool,
    pub fin_sent: AtomicBool,
    pub eof: AtomicBool,
    pub finished: AtomicBool,
}

/// The bytes a side should receive: `prefix` (made by the gateway, or replayed) then
/// `len` bytes of `Pattern::new(seed)`.
#[derive(Debug, Clone)]
pub struct Expected {
    pub prefix: Vec<u8>,
    pub len: u64,
    pub seed: u64,
    /// How many leading bytes of `prefix` the gateway makes itself (not counted as crossing).
    pub injected: usize,
}

/// What one side did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Bytes written that cross the gateway (a dial header does not), and their hash.
    pub sent: u64,
    pub sent_hash: u64,
    /// Bytes read that crossed the gateway (a dial reply did not), and their hash.
    pub received: u64,
    pub received_hash: u64,
    /// Offset in everything read of the first byte that differed from what was expected.
    pub mismatch_at: Option<u64>,
    /// A reset was seen (or made, by a side that resets).
    pub reset: bool,
    pub error: Option<String>,
}

/// Runs a side on `stream` to the end. `preamble` goes out before the payload; `counted`
/// says how many of its bytes cross the gateway.
pub fn run(
    stream: TcpStream,
    side: &Side,
    preamble: Vec<u8>,
    counted: usize,
    expect: Expected,
    progress: Arc<Progress>,
) -> Report {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let abort = Arc::new(AtomicBool::new(false));
    let writer = Writer {
        preamble,
        counted,
        len: side.writes,
        seed: side.seed,
        style: side.write_style,
        fin: side.fin_early || side.order == Order::ReadFirst,
    };
    let reader = Reader {
        expect,
        style: side.read_style,
        reset_after: side.reset_after,
        echo: side.order == Order::Echo,
    };
    let mut report = match side.order {
        Order::Both => {
            let w_stream = stream.try_clone().expect("cloning a socket");
            let (w_progress, w_abort) = (progress.clone(), abort.clone());
            let w = thread::spawn(move || writer.run(&w_stream, &w_progress, &w_abort));
            let mut r = reader.run(&stream, &progress, &abort);
            let sent = w.join().expect("writer thread");
            r.merge_writes(sent);
            r
        }
        Order::WriteFirst => {
            let sent = writer.run(&stream, &progress, &abort);
            let mut r = reader.run(&stream, &progress, &abort);
            r.merge_writes(sent);
            r
        }
        Order::ReadFirst => {
            let mut r = reader.run(&stream, &progress, &abort);
            let sent = writer.run(&stream, &progress, &abort);
            r.merge_writes(sent);
            r
        }
        Order::Echo => reader.run(&stream, &progress, &abort),
    };
    if abort.load(Relaxed) {
        report.reset = true;
    } else if !report.reset && !progress.fin_sent.load(Relaxed) {
        // The late FIN, now that the other side's has arrived.
        match stream.shutdown(Shutdown::Write) {
            Ok(()) => progress.fin_sent.store(true, Relaxed),
            Err(e) if is_reset(&e) => report.reset = true,
            Err(e) => report.error = report.error.or(Some(format!("shutdown: {e}"))),
        }
    }
    progress.finished.store(true, Relaxed);
    report
}

impl Report {
    fn merge_writes(&mut self, (sent, hash, reset, error): (u64, u64, bool, Option<String>)) {
        self.sent = sent;
        self.sent_hash = hash;
        self.reset |= reset;
        if self.error.is_none() {
            self.error = error;
        }
    }
}

/// Resets a TCP connection at once, whoever is blocked on it: connect(AF_UNSPEC) makes the
/// kernel disconnect the socket (tcp_disconnect sends RST and wakes every waiter).
pub fn reset(stream: &TcpStream) {
    let addr = libc::sockaddr {
        sa_family: libc::AF_UNSPEC as libc::sa_family_t,
        sa_data: [0; 14],
    };
    // SAFETY: a valid sockaddr of the size given, for the duration of the call.
    unsafe {
        libc::connect(
            stream.as_raw_fd(),
            &addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::BrokenPipe
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected
    )
}

struct Writer {
    preamble: Vec<u8>,
    counted: usize,
    len: u64,
    seed: u64,
    style: Writes,
    /// Half-close once everything is written.
    fin: bool,
}

impl Writer {
    /// Writes everything, and half-closes if `fin`. Returns (bytes, hash, reset seen, error).
    fn run(
        self,
        mut s: &TcpStream,
        progress: &Progress,
        abort: &AtomicBool,
    ) -> (u64, u64, bool, Option<String>) {
        let mut hash = std::hash::DefaultHasher::new();
        let mut sent = 0u64;
        let result = (|| -> io::Result<()> {
            progress.writing.store(true, Relaxed);
            s.write_all(&self.preamble)?;
            let crossing = &self.preamble[self.preamble.len() - self.counted..];
            hash.write(crossing);
            sent += crossing.len() as u64;
            progress.sent.fetch_add(crossing.len() as u64, Relaxed);
            let mut blocks = Blocks::new(self.seed, self.len);
            let mut left = self.len;
            let mut stalled = false;
            let mut trickle = Pattern::new(self.seed ^ 0x5eed);
            while left > 0 {
                if abort.load(Relaxed) {
                    return Ok(());
                }
                let mut n = left.min(CHUNK as u64) as usize;
                if self.style == Writes::Trickle {
                    let mut r = [0u8; 2];
                    trickle.fill(&mut r);
                    n = n.min(1 + usize::from(u16::from_le_bytes(r) % 512));
                }
                if let Writes::StallAt { at, ms } = self.style {
                    let done = self.len - left;
                    if !stalled && done >= at {
                        stalled = true;
                        progress.writing.store(false, Relaxed);
                        thread::sleep(Duration::from_millis(ms));
                        progress.writing.store(true, Relaxed);
                    } else if !stalled {
                        n = n.min((at - done).max(1) as usize);
                    }
                }
                let bytes = blocks.take(n);
                let n = bytes.len();
                s.write_all(bytes)?;
                hash.write(bytes);
                sent += n as u64;
                left -= n as u64;
                progress.sent.fetch_add(n as u64, Relaxed);
                if self.style == Writes::Trickle {
                    progress.writing.store(false, Relaxed);
                    thread::sleep(Duration::from_millis(1 + (left % 3)));
                    progress.writing.store(true, Relaxed);
                }
            }
            progress.writing.store(false, Relaxed);
            if self.fin {
                s.shutdown(Shutdown::Write)?;
                progress.fin_sent.store(true, Relaxed);
            }
            Ok(())
        })();
        progress.writing.store(false, Relaxed);
        match result {
            Ok(()) => (sent, hash.finish(), false, None),
            Err(e) if is_reset(&e) || abort.load(Relaxed) => (sent, hash.finish(), true, None),
            Err(e) => (sent, hash.finish(), false, Some(format!("write: {e}"))),
        }
    }
}

struct Reader {
    expect: Expected,
    style: Reads,
    reset_after: Option<u64>,
    /// Write every chunk read straight back.
    echo: bool,
}

impl Reader {
    fn run(self, mut s: &TcpStream, progress: &Progress, abort: &AtomicBool) -> Report {
        let mut report = Report::default();
        let mut hash = std::hash::DefaultHasher::new();
        let mut want = ExpectedStream::new(&self.expect);
        let injected = self.expect.injected as u64;
        // Everything read, the gateway's own bytes included.
        let mut raw = 0u64;
        let mut buf = vec![0u8; ECHO_READ.max(CHUNK)];
        let mut sent_hash = std::hash::DefaultHasher::new();
        let mut stalled = false;
        loop {
            let mut cap = if self.echo { ECHO_READ } else { CHUNK };
            if self.style == Reads::Slow {
                cap = 4096;
            }
            if let Reads::StallAt { at, ms } = self.style {
                if !stalled && raw >= at {
                    stalled = true;
                    thread::sleep(Duration::from_millis(ms));
                } else if !stalled {
                    cap = cap.min((at - raw).max(1) as usize);
                }
            }
            if let Some(limit) = self.reset_after {
                cap = cap.min((limit.saturating_sub(raw)).max(1) as usize);
            }
            progress.reading.store(true, Relaxed);
            let r = s.read(&mut buf[..cap]);
            progress.reading.store(false, Relaxed);
            match r {
                Ok(0) => {
                    progress.eof.store(true, Relaxed);
                    break;
                }
                Ok(n) => {
                    let chunk = &buf[..n];
                    if let Some(off) = want.check(chunk) {
                        report.mismatch_at.get_or_insert(raw + off as u64);
                    }
                    let skip = injected.saturating_sub(raw).min(n as u64) as usize;
                    hash.write(&chunk[skip..]);
                    raw += n as u64;
                    report.received += (n - skip) as u64;
                    progress.received.fetch_add((n - skip) as u64, Relaxed);
                    if self.echo {
                        progress.writing.store(true, Relaxed);
                        let written = s.write_all(chunk);
                        progress.writing.store(false, Relaxed);
                        match written {
                            Ok(()) => {
                                sent_hash.write(chunk);
                                report.sent += n as u64;
                                progress.sent.fetch_add(n as u64, Relaxed);
                            }
                            Err(e) if is_reset(&e) || abort.load(Relaxed) => {
                                report.reset = true;
                                break;
                            }
                            Err(e) => {
                                report.error = Some(format!("echo: {e}"));
                                break;
                            }
                        }
                    }
                    if self.reset_after.is_some_and(|at| raw >= at) {
                        abort.store(true, Relaxed);
                        reset(s);
                        break;
                    }
                    if self.style == Reads::Slow {
                        thread::sleep(Duration::from_millis(1));
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) || abort.load(Relaxed) => {
                    report.reset = true;
                    break;
                }
                Err(e) => {
                    report.error = Some(format!("read: {e}"));
                    break;
                }
            }
            if abort.load(Relaxed) {
                break;
            }
        }
        report.received_hash = hash.finish();
        if self.echo {
            report.sent_hash = sent_hash.finish();
        }
        report
    }
}

/// A side's payload, generated in `CHUNK`-sized blocks. `Pattern::fill` works in whole
/// 8-byte words, so writer and reader must fill at the same boundaries to agree; both take
/// their bytes from this, in slices of any size.
struct Blocks {
    pattern: Pattern,
    left: u64,
    block: Vec<u8>,
    at: usize,
}

impl Blocks {
    fn new(seed: u64, len: u64) -> Blocks {
        Blocks {
            pattern: Pattern::new(seed),
            left: len,
            block: Vec::new(),
            at: 0,
        }
    }

    /// The next at most `n` bytes (fewer at a block's end; empty once all were taken).
    fn take(&mut self, n: usize) -> &[u8] {
        if self.at == self.block.len() && self.left > 0 {
            let size = self.left.min(CHUNK as u64) as usize;
            self.block.resize(size, 0);
            self.pattern.fill(&mut self.block);
            self.left -= size as u64;
            self.at = 0;
        }
        let end = (self.at + n).min(self.block.len());
        let out = &self.block[self.at..end];
        self.at = end;
        out
    }
}

/// The bytes a reader should see next: the prefix, then the other side's payload.
struct ExpectedStream {
    prefix: Vec<u8>,
    pos: usize,
    blocks: Blocks,
}

impl ExpectedStream {
    fn new(e: &Expected) -> ExpectedStream {
        ExpectedStream {
            prefix: e.prefix.clone(),
            pos: 0,
            blocks: Blocks::new(e.seed, e.len),
        }
    }

    /// Compares `got` with the next expected bytes; returns the offset of the first
    /// difference within `got`, counting bytes past the end as differences.
    fn check(&mut self, mut got: &[u8]) -> Option<usize> {
        let mut done = 0;
        let mut first = None;
        while !got.is_empty() {
            let want: &[u8] = if self.pos < self.prefix.len() {
                let end = (self.pos + got.len()).min(self.prefix.len());
                let w = &self.prefix[self.pos..end];
                self.pos = end;
                w
            } else {
                self.blocks.take(got.len())
            };
            if want.is_empty() {
                return first.or(Some(done));
            }
            let n = want.len();
            if first.is_none() && got[..n] != *want {
                first = Some(
                    done + got[..n]
                        .iter()
                        .zip(want)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0),
                );
            }
            got = &got[n..];
            done += n;
        }
        first
    }
}
