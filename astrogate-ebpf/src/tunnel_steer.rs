//! `sched_cls` on the egress of the service host's other interfaces (its uplinks): a UDP reply
//! of a flow the tunnel client opened, which the main table routed out of the host because the
//! service's socket is bound to the wildcard and did not choose the TUN's address as source,
//! is sent into the TUN instead, with the TUN's address as its source.
//!
//! TCP never needs this: an accepted TCP socket replies from the address it was reached at,
//! so the client's source rule routes it into the TUN. An unconnected UDP socket has no such
//! address, and UDP sockets inherit no mark a rule could match, so the reply is routed by the
//! main table; this is where it is caught, without a route per client.
use astrogate_common::{Counter, TunnelFlow};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_csum_diff, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};

use crate::{
    counters::count,
    maps::{TUNNEL_ADDRS, TUNNEL_FLOWS},
};

const IPPROTO_UDP: u8 = 17;
const ETH_HEADER: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// bpf_l4_csum_replace flags: the address is part of the pseudo-header; a zero UDP checksum
/// (IPv4: none) stays zero.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

#[classifier]
pub fn astrogate_tunnel_steer(ctx: TcContext) -> i32 {
    try_tunnel_steer(&ctx).unwrap_or(TC_ACT_OK)
}

fn try_tunnel_steer(ctx: &TcContext) -> Result<i32, i64> {
    let ethertype = u16::from_be(ctx.load::<u16>(12)?);
    let l3 = ETH_HEADER;
    let mut flow = TunnelFlow {
        protocol: IPPROTO_UDP,
        ..TunnelFlow::default()
    };
    let (ports_at, src_at, src_len, index) = match ethertype {
        ETH_P_IP => {
            let first: u8 = ctx.load(l3)?;
            if ctx.load::<u8>(l3 + 9)? != IPPROTO_UDP {
                return Ok(TC_ACT_OK);
            }
            flow.family = 4;
            let dst: [u8; 4] = ctx.load(l3 + 16)?;
            flow.client_addr[..4].copy_from_slice(&dst);
            (l3 + usize::from(first & 0x0f) * 4, l3 + 12, 4usize, 0u32)
        }
        ETH_P_IPV6 => {
            // Extension headers are not walked: a reply with one is left alone.
            if ctx.load::<u8>(l3 + 6)? != IPPROTO_UDP {
                return Ok(TC_ACT_OK);
            }
            flow.family = 6;
            flow.client_addr = ctx.load(l3 + 24)?;
            (l3 + 40, l3 + 8, 16usize, 1u32)
        }
        _ => return Ok(TC_ACT_OK),
    };
    let Some(tun) = TUNNEL_ADDRS.get(index) else {
        return Ok(TC_ACT_OK);
    };
    if tun.ifindex == 0 {
        return Ok(TC_ACT_OK);
    }
    flow.service_addr = tun.addr;
    flow.service_port = ctx.load(ports_at)?;
    flow.client_port = ctx.load(ports_at + 2)?;
    if TUNNEL_FLOWS.get_ptr(&flow).is_none() {
        return Ok(TC_ACT_OK);
    }
    // The new source, and the checksums fixed by the difference.
    let mut old = [0u8; 16];
    let mut new = [0u8; 16];
    if src_len == 4 {
        let o: [u8; 4] = ctx.load(src_at)?;
        old[..4].copy_from_slice(&o);
    } else {
        old = ctx.load(src_at)?;
    }
    new[..src_len].copy_from_slice(&tun.addr[..src_len]);
    // SAFETY: both buffers live on the stack for the call, `src_len` bytes each (4 or 16,
    // multiples of 4 as the helper requires).
    let diff = unsafe {
        bpf_csum_diff(
            old.as_mut_ptr().cast(),
            src_len as u32,
            new.as_mut_ptr().cast(),
            src_len as u32,
            0,
        )
    };
    if diff < 0 {
        return Ok(TC_ACT_OK);
    }
    if src_len == 4 {
        ctx.store(src_at, &[new[0], new[1], new[2], new[3]], 0)?;
        ctx.l3_csum_replace(l3 + 10, 0, diff as u64, 0)?;
    } else {
        ctx.store(src_at, &new, 0)?;
    }
    ctx.l4_csum_replace(
        ports_at + 6,
        0,
        diff as u64,
        BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0,
    )?;
    count(Counter::TunnelSteered, 1);
    // SAFETY: a helper call with plain integer arguments.
    Ok(unsafe { bpf_redirect(tun.ifindex, 0) } as i32)
        .map(|r| if r == TC_ACT_REDIRECT { r } else { TC_ACT_OK })
}
