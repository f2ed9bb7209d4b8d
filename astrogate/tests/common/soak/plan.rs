//! Randomized scenarios for the soak: what each connection's client and upstream do.
//!
//! Everything derives from one seed, so a failing run is repeated by its seed.

/// SplitMix64: small, fast, and good enough to pick scenarios.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// Log-uniform in `lo..=hi`: small values as often as large ones, per order of magnitude.
    pub fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo.max(1) as f64).ln(), (hi as f64).ln());
        let x = a + (b - a) * (self.next() as f64 / u64::MAX as f64);
        (x.exp() as u64).clamp(lo, hi)
    }
}

/// The protocol a client opens with; the gateway sniffs it, replays it (or, for dial,
/// consumes it) and routes by the name in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Dial,
    Tls,
    Http,
}

/// How a side writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// 256 KiB writes as fast as the socket takes them.
    Fast,
    /// Writes of up to 512 bytes with a pause of a few milliseconds after each.
    Trickle,
    /// Fast, but stops for `ms` after `at` bytes, then resumes.
    StallAt { at: u64, ms: u64 },
}

/// How a side reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    Fast,
    /// Reads of at most 4 KiB with a millisecond's pause after each.
    Slow,
    /// Fast, but stops reading for `ms` after `at` bytes, then resumes.
    StallAt {
        at: u64,
        ms: u64,
    },
}

/// The order a side does its two jobs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Writes and reads at once, on two threads.
    Both,
    /// Writes everything and half-closes, then reads to the end: speaks first.
    WriteFirst,
    /// Reads to the end, then writes and half-closes: answers after the other side's FIN.
    ReadFirst,
    /// Writes back every chunk as soon as it has read it (1 MiB reads), then half-closes
    /// after the other side's FIN: the interdependent flow that found the kernel path's
    /// echo deadlock. Only upstreams echo.
    Echo,
}

/// One side of a connection.
#[derive(Debug, Clone)]
pub struct Side {
    /// Payload bytes this side writes (after any preamble), from `Pattern::new(seed)`.
    pub writes: u64,
    pub seed: u64,
    pub write_style: Writes,
    pub read_style: Reads,
    pub order: Order,
    /// Reset the connection once this many bytes have been read.
    pub reset_after: Option<u64>,
    /// Half-close as soon as the writes are done. Otherwise the FIN waits until the other
    /// side's FIN has arrived, as in request-response protocols that never half-close.
    pub fin_early: bool,
}

/// One connection: its listener's path, its opening, and both sides.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub id: u64,
    pub path: &'static str,
    pub protocol: Protocol,
    pub client: Side,
    pub upstream: Side,
}

impl Scenario {
    pub fn resets(&self) -> bool {
        self.client.reset_after.is_some() || self.upstream.reset_after.is_some()
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A payload size from 0 bytes to 2 GiB (at most `max`): mostly small, now and then huge.
fn size(rng: &mut Rng, max: u64) -> u64 {
    let size = match rng.range(0, 99) {
        0..=9 => 0,
        10..=34 => rng.range(1, 4 * KIB),
        35..=64 => rng.log_range(4 * KIB, MIB),
        65..=89 => rng.log_range(MIB, 64 * MIB),
        90..=97 => rng.log_range(64 * MIB, 512 * MIB),
        _ => rng.log_range(512 * MIB, 2 * GIB),
    };
    size.min(max)
}

fn writes(rng: &mut Rng, len: u64) -> Writes {
    match rng.range(0, 9) {
        0 | 1 if len <= 256 * KIB => Writes::Trickle,
        2 if len > 1 => Writes::StallAt {
            at: rng.range(1, len - 1),
            ms: rng.range(500, 2500),
        },
        _ => Writes::Fast,
    }
}

fn reads(rng: &mut Rng, len: u64) -> Reads {
    match rng.range(0, 9) {
        0 | 1 if len <= 8 * MIB => Reads::Slow,
        2 if len > 1 => Reads::StallAt {
            at: rng.range(1, len - 1),
            ms: rng.range(500, 2500),
        },
        _ => Reads::Fast,
    }
}

fn side(
    rng: &mut Rng,
    writes_len: u64,
    reads_len: u64,
    order: Order,
    resets: bool,
    fin_early: bool,
) -> Side {
    Side {
        fin_early,
        writes: writes_len,
        seed: rng.next(),
        write_style: writes(rng, writes_len),
        read_style: reads(rng, reads_len),
        order,
        reset_after: (resets && reads_len > 1).then(|| rng.range(1, reads_len - 1)),
    }
}

/// A scenario for connection `id` on `path`. Combinations that would deadlock by themselves
/// (both sides writing megabytes before reading a byte) are not generated: that would test
/// the peers, not the gateway.
pub fn scenario(rng: &mut Rng, id: u64, path: &'static str, max: u64) -> Scenario {
    let protocol = match rng.range(0, 5) {
        0 => Protocol::Tls,
        1 => Protocol::Http,
        _ => Protocol::Dial,
    };
    let (up, down) = match rng.range(0, 2) {
        0 => (size(rng, max), 0),
        1 => (0, size(rng, max)),
        _ => (size(rng, max), size(rng, max)),
    };
    if rng.chance(20) {
        let up = size(rng, max);
        return echo(rng, id, path, protocol, up);
    }
    let client_order = if rng.chance(50) {
        Order::Both
    } else {
        Order::WriteFirst
    };
    let mut upstream_order = match rng.range(0, 2) {
        0 => Order::Both,
        1 => Order::WriteFirst,
        _ => Order::ReadFirst,
    };
    if client_order == Order::WriteFirst
        && upstream_order == Order::WriteFirst
        && up.min(down) > 64 * KIB
    {
        upstream_order = Order::Both;
    }
    // One connection in ten ends in a reset, from one side or the other.
    let reset = rng.chance(10);
    let client_resets = reset && rng.chance(50);
    let upstream_resets = reset && !client_resets;
    // Somebody has to half-close first or both would wait for the other's FIN; an upstream
    // that answers after the client's FIN needs it to be the client.
    // Mostly the side with more to say closes first, as a server ends a download or a
    // client an upload; a side with nothing to say that half-closes at once is the rarer case
    // (and one the kernel path cannot take: it splices only established sockets).
    let client_first = if up == down {
        rng.chance(50)
    } else {
        up > down
    };
    let (client_early, upstream_early) = match rng.range(0, 9) {
        _ if upstream_order == Order::ReadFirst => (true, rng.chance(20)),
        0..=6 => (client_first, !client_first),
        7 => (!client_first, client_first),
        _ => (true, true),
    };
    Scenario {
        id,
        path,
        protocol,
        client: side(rng, up, down, client_order, client_resets, client_early),
        upstream: side(
            rng,
            down,
            up,
            upstream_order,
            upstream_resets,
            upstream_early,
        ),
    }
}

/// An upstream that echoes a client's `up` bytes back while the client is still sending.
fn echo(rng: &mut Rng, id: u64, path: &'static str, protocol: Protocol, up: u64) -> Scenario {
    let reset = rng.chance(10);
    let client_resets = reset && rng.chance(50);
    let mut client = side(rng, up, up, Order::Both, client_resets, true);
    // Slow reading at the client is what backs an echo up into the upstream.
    client.read_style = reads(rng, up);
    let mut upstream = side(rng, 0, up, Order::Echo, reset && !client_resets, false);
    upstream.write_style = Writes::Fast;
    Scenario {
        id,
        path,
        protocol,
        client,
        upstream,
    }
}

/// How many connections run at once in a round: 1 to 64, small counts as often as large.
pub fn concurrency(rng: &mut Rng) -> usize {
    rng.log_range(1, 64) as usize
}
