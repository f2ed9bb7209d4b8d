//! `sk_skb` stream verdict: redirects bytes that arrive on one socket of a pair to the egress
//! of its peer, so established connections are forwarded without a copy through user space.
use astrogate_common::{Counter, OverLimit, PeerEntry, SockStats, PEER_FLAG_ENABLED};
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::stream_verdict,
    programs::SkBuffContext,
    EbpfContext as _,
};

use crate::{
    counters::count,
    maps::{EVENTS, PEERS, STATS, TARGETS},
    seen::{cut_seen, Unseen},
};

#[stream_verdict]
pub fn astrogate_verdict(ctx: SkBuffContext) -> u32 {
    try_verdict(&ctx)
}

fn try_verdict(ctx: &SkBuffContext) -> u32 {
    let len = u64::from(ctx.len());
    // A bare FIN arrives as an empty skb. It must go nowhere: redirected, it breaks the peer's
    // transmit (EPIPE); passed while bytes are queued for this socket's egress, the kernel
    // queues it behind them on the same psock list, and the empty ingress then disables that
    // list, silently dropping every later byte to this socket. TCP has already recorded the
    // FIN (RCV_SHUTDOWN), so user space still reads EOF here.
    if len == 0 {
        count(Counter::FinDropped, 1);
        return SK_DROP;
    }
    // SAFETY: the context pointer is the skb the kernel handed to this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the entry is copied out at once; user space replaces entries, never edits them.
    let Some(mut entry) = (unsafe { PEERS.get(&cookie) }).copied() else {
        count(Counter::NoPeer, 1);
        return SK_PASS;
    };
    let Some(stats) = STATS.get_ptr_mut(&cookie) else {
        count(Counter::NoPeer, 1);
        return SK_PASS;
    };
    // SAFETY: only this program writes STATS, and one socket's verdicts run one at a time
    // (under the socket's lock), so these plain read-modify-writes do not race.
    let stats = unsafe { &mut *stats };
    let len = match cut_seen(ctx, stats, &entry, len) {
        Unseen::Bytes(len) => len,
        // Dropping an empty skb moves nothing: tcp_eat_skb ignores it, and TCP already
        // counted these bytes once.
        Unseen::Nothing => return SK_DROP,
        Unseen::Fault => return SK_DROP,
    };
    if entry.flags & PEER_FLAG_ENABLED == 0 {
        stats.passed += len;
        count(Counter::Passed, 1);
        return SK_PASS;
    }
    let redirected = stats.redirected + len;
    if redirected > entry.hard_limit || stats.passed != entry.consumed {
        stats.passed += len;
        notify(cookie, stats, &entry, redirected);
        count(Counter::Passed, 1);
        return SK_PASS;
    }
    if redirected > entry.limit {
        notify(cookie, stats, &entry, redirected);
    }
    let verdict = TARGETS.redirect_skb(ctx, &mut entry.peer, 0) as u32;
    if verdict != SK_PASS {
        // The peer left the target map: the connection is closing, and user space reports it.
        count(Counter::RedirectFailed, 1);
        return SK_DROP;
    }
    stats.redirected = redirected;
    count(Counter::Redirected, 1);
    count(Counter::RedirectedBytes, len);
    verdict
}

/// Tells user space, once per limit, that a socket crossed it.
#[inline(always)]
fn notify(cookie: u64, stats: &mut SockStats, entry: &PeerEntry, redirected: u64) {
    if stats.notified_limit != entry.limit {
        stats.notified_limit = entry.limit;
        let notice = OverLimit { cookie, redirected };
        if EVENTS.output::<OverLimit>(&notice, 0).is_err() {
            count(Counter::EventsLost, 1);
        }
    }
}
