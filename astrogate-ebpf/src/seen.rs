//! Cutting bytes the verdict has already seen off the head of a segment.
//!
//! TCP queues a retransmitted segment that overlaps bytes it already has ("partial packet,
//! seq < rcv_nxt < end_seq" in `tcp_data_queue`) whole, and leaves skipping the old head to
//! its readers: `tcp_recvmsg` and `tcp_read_sock` start at `copied_seq`. `tcp_read_skb`, which
//! feeds a sockmap verdict, hands over the whole skb instead, so without this the old head
//! would be forwarded a second time. In an `sk_skb` program `__sk_buff.cb[0..2]` reads the
//! start of the kernel's `skb->cb`, where TCP keeps the segment's `seq` and `end_seq`.
use astrogate_common::{Counter, PeerEntry, SockStats, PEER_FLAG_START_SEQ};
use aya_ebpf::programs::SkBuffContext;
use aya_log_ebpf::{error, warn};

use crate::counters::count;

/// `bpf_skb_adjust_room` on an `sk_skb` removes at most 0xfff bytes per call.
const TRIM_STEP: u32 = 0xfff;
/// Enough steps for the largest skb loopback TCP builds (64 x 4095 > 256 KiB).
const TRIM_STEPS: u32 = 64;

/// What is left of a segment once the bytes already seen are cut off its head.
pub enum Unseen {
    /// This many new bytes remain at the head of the skb.
    Bytes(u64),
    /// Nothing new: every byte was seen before.
    Nothing,
    /// The old head could not be removed; the segment must not be forwarded.
    Fault,
}

/// Tracks the socket's next expected sequence number and trims the skb to the bytes after it.
#[inline(always)]
pub fn cut_seen(ctx: &SkBuffContext, stats: &mut SockStats, entry: &PeerEntry, len: u64) -> Unseen {
    let seq = ctx.cb()[0];
    if stats.seq_known == 0 {
        stats.next_seq = if entry.flags & PEER_FLAG_START_SEQ != 0 {
            entry.start_seq
        } else {
            seq
        };
        stats.seq_known = 1;
    }
    let end = seq.wrapping_add(len as u32);
    // Sequence numbers wrap: compare by signed distance, as TCP's before()/after() do.
    let seen = stats.next_seq.wrapping_sub(seq) as i32;
    if (end.wrapping_sub(stats.next_seq) as i32) > 0 {
        stats.next_seq = end;
    }
    if seen < 0 {
        // A hole: TCP delivers in order, so this would be a bug of ours (or of the kernel's).
        count(Counter::Gaps, 1);
        warn!(
            ctx,
            "a segment starts {} bytes past the next unseen byte",
            -(seen as i64)
        );
        return Unseen::Bytes(len);
    }
    if seen == 0 {
        return Unseen::Bytes(len);
    }
    let cut = (seen as u32).min(len as u32);
    count(Counter::Overlaps, 1);
    count(Counter::OverlapBytes, u64::from(cut));
    if !trim_head(ctx, cut) {
        stats.faults += 1;
        error!(
            ctx,
            "could not trim {} repeated bytes off a segment: dropped, pair reset", cut
        );
        return Unseen::Fault;
    }
    stats.trimmed += u64::from(cut);
    match len - u64::from(cut) {
        0 => Unseen::Nothing,
        left => Unseen::Bytes(left),
    }
}

fn trim_head(ctx: &SkBuffContext, cut: u32) -> bool {
    let mut left = cut;
    for _ in 0..TRIM_STEPS {
        if left == 0 {
            break;
        }
        let step = left.min(TRIM_STEP);
        if ctx.adjust_room(-(step as i32), 0, 0).is_err() {
            return false;
        }
        left -= step;
    }
    left == 0
}
