//! `sk_skb` stream verdict: redirects bytes that arrive on one socket of a pair to the egress
//! of its peer, so established connections are forwarded without a copy through user space.
use astrogate_common::{Counter, PEER_FLAG_ENABLED};
use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    helpers::bpf_get_socket_cookie,
    macros::stream_verdict,
    programs::SkBuffContext,
    EbpfContext as _,
};

use crate::maps::{COUNTERS, PEERS, SOCKS};

#[stream_verdict]
pub fn astrogate_verdict(ctx: SkBuffContext) -> u32 {
    try_verdict(&ctx)
}

fn try_verdict(ctx: &SkBuffContext) -> u32 {
    let len = ctx.len();
    // A bare FIN arrives as an empty skb; redirecting it makes the peer's transmit fail. EOF is
    // handled by user space, so pass it to the socket's own queue.
    if len == 0 {
        count(Counter::Passed, 0);
        return SK_PASS;
    }
    // SAFETY: the context pointer is the skb the kernel handed to this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is only read, and copied out before any other map call.
    let entry = match unsafe { PEERS.get(&cookie) } {
        Some(entry) => *entry,
        None => {
            count(Counter::NoPeer, 0);
            return SK_PASS;
        }
    };
    if entry.flags & PEER_FLAG_ENABLED == 0 {
        count(Counter::Passed, 0);
        return SK_PASS;
    }
    let mut peer = entry.peer;
    let verdict = SOCKS.redirect_skb(ctx, &mut peer, 0) as u32;
    if verdict == SK_PASS {
        count(Counter::Redirected, u64::from(len));
    } else {
        // The peer left the map between the lookup and the redirect: the connection is ending
        // and user space will see the error on its side.
        count(Counter::NoPeer, 0);
        return SK_DROP;
    }
    verdict
}

#[inline(always)]
fn count(counter: Counter, bytes: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
    if bytes > 0 {
        if let Some(slot) = COUNTERS.get_ptr_mut(Counter::RedirectedBytes as u32) {
            // SAFETY: as above.
            unsafe { *slot += bytes };
        }
    }
}
