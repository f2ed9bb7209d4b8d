//! `sched_cls` on the ingress of the gateway's Ethernet interfaces: a datagram of an
//! established UDP session (client to listener, or upstream to the session's socket) gets the
//! addresses and ports user space would have sent it with, and leaves by the interface user
//! space looked up, without waking the gateway. Everything else, and whatever this program
//! cannot forward exactly (IP fragments, IPv6 extension headers, packets over the outgoing
//! MTU), goes on to the stack and the gateway's sockets as before.
//!
//! `bpf_redirect_neigh` routes and resolves the next hop as the gateway's own output would
//! (an output route lookup: the host need not forward IP), and fills in the MAC addresses.
use astrogate_common::{Counter, UdpFlowKey};
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_csum_diff, bpf_ktime_get_ns, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};

use crate::{counters::count, maps::UDP_FLOWS};

const IPPROTO_UDP: u8 = 17;
const ETH_HEADER: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const UDP_HEADER: usize = 8;
/// bpf_l4_csum_replace flags: the change is to the pseudo-header (so a checksum the sender
/// left for offload is still right); a zero IPv4 UDP checksum (none) stays zero.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

#[classifier]
pub fn astrogate_udp_forward(ctx: TcContext) -> i32 {
    try_udp_forward(&ctx).unwrap_or(TC_ACT_OK)
}

/// Where the parts of the packet are.
struct Layout {
    /// The UDP header.
    l4: usize,
    /// The source address (the destination follows it).
    addrs: usize,
    /// 4 or 16.
    addr_len: usize,
}

fn try_udp_forward(ctx: &TcContext) -> Result<i32, i64> {
    let mut key = UdpFlowKey::default();
    let Some(at) = parse(ctx, &mut key)? else {
        return Ok(TC_ACT_OK);
    };
    let Some(action) = UDP_FLOWS.get_ptr_mut(&key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a pointer into the map's value, valid for this run of the program; the fields
    // read are written only by user space before the entry is inserted. Copies have constant
    // lengths: the verifier allows no other.
    let (new_addrs, new_ports, ifindex, mtu) = unsafe {
        let a = &*action;
        let mut addrs = [0u8; 32];
        if at.addr_len == 4 {
            addrs[..4].copy_from_slice(&a.src_addr[..4]);
            addrs[4..8].copy_from_slice(&a.dst_addr[..4]);
        } else {
            addrs[..16].copy_from_slice(&a.src_addr);
            addrs[16..].copy_from_slice(&a.dst_addr);
        }
        let ports = [a.src_port[0], a.src_port[1], a.dst_port[0], a.dst_port[1]];
        (addrs, ports, a.ifindex, a.mtu)
    };
    // Each IP packet that will leave must fit the link: a GSO packet is cut into segments of
    // gso_size payload bytes, each with the headers in front.
    let len = ctx.len() as usize;
    if len < at.l4 + UDP_HEADER {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: reading fields of the program's own context.
    let (gso_size, gso_segs) = unsafe { ((*ctx.skb.skb).gso_size, (*ctx.skb.skb).gso_segs) };
    let headers = at.l4 + UDP_HEADER - ETH_HEADER;
    let largest = if gso_size > 0 {
        headers + gso_size as usize
    } else {
        len - ETH_HEADER
    };
    let datagrams = u64::from(gso_segs.max(1));
    if largest > mtu as usize {
        count(Counter::UdpTooBig, datagrams);
        return Ok(TC_ACT_OK);
    }
    rewrite(ctx, &at, new_addrs, new_ports)?;
    // SAFETY: this CPU's copy of the value; nothing else on this CPU runs while the program
    // does, so the counts are exact, and user space sums the copies.
    unsafe {
        let a = &mut *action;
        a.datagrams += datagrams;
        a.bytes += (len - at.l4 - UDP_HEADER) as u64;
        a.last_ns = bpf_ktime_get_ns();
    }
    count(Counter::UdpForwarded, datagrams);
    // SAFETY: a helper call with plain arguments; no neighbour parameters are passed.
    let r = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    // The packet is rewritten already: if the redirect cannot be set up, the stack would drop
    // it as addressed elsewhere, which is what a failed send is for UDP.
    Ok(if r == TC_ACT_REDIRECT { r } else { TC_ACT_OK })
}

/// Fills `key` from an unfragmented UDP packet over IPv4 or IPv6 without extension headers,
/// or says it is not one.
fn parse(ctx: &TcContext, key: &mut UdpFlowKey) -> Result<Option<Layout>, i64> {
    let l3 = ETH_HEADER;
    let at = match u16::from_be(ctx.load::<u16>(12)?) {
        ETH_P_IP => {
            let first: u8 = ctx.load(l3)?;
            if ctx.load::<u8>(l3 + 9)? != IPPROTO_UDP {
                return Ok(None);
            }
            // More fragments, or an offset: only the stack can reassemble it.
            if u16::from_be(ctx.load::<u16>(l3 + 6)?) & 0x3fff != 0 {
                return Ok(None);
            }
            key.family = 4;
            let src: [u8; 4] = ctx.load(l3 + 12)?;
            let dst: [u8; 4] = ctx.load(l3 + 16)?;
            key.src_addr[..4].copy_from_slice(&src);
            key.dst_addr[..4].copy_from_slice(&dst);
            Layout {
                l4: l3 + usize::from(first & 0x0f) * 4,
                addrs: l3 + 12,
                addr_len: 4,
            }
        }
        ETH_P_IPV6 => {
            if ctx.load::<u8>(l3 + 6)? != IPPROTO_UDP {
                return Ok(None);
            }
            key.family = 6;
            key.src_addr = ctx.load(l3 + 8)?;
            key.dst_addr = ctx.load(l3 + 24)?;
            Layout {
                l4: l3 + 40,
                addrs: l3 + 8,
                addr_len: 16,
            }
        }
        _ => return Ok(None),
    };
    key.src_port = ctx.load(at.l4)?;
    key.dst_port = ctx.load(at.l4 + 2)?;
    Ok(Some(at))
}

/// Writes the new addresses and ports and fixes the IPv4 header checksum and the UDP
/// checksum by the difference.
fn rewrite(ctx: &TcContext, at: &Layout, new_addrs: [u8; 32], ports: [u8; 4]) -> Result<(), i64> {
    let addr_diff = if at.addr_len == 4 {
        let mut old: [u8; 8] = ctx.load(at.addrs)?;
        let mut new = [0u8; 8];
        new.copy_from_slice(&new_addrs[..8]);
        let diff = diff(&mut old, &mut new)?;
        ctx.store(at.addrs, &new, 0)?;
        ctx.l3_csum_replace(at.addrs - 2, 0, diff, 0)?;
        diff
    } else {
        let mut old: [u8; 32] = ctx.load(at.addrs)?;
        let mut new = new_addrs;
        let diff = diff(&mut old, &mut new)?;
        ctx.store(at.addrs, &new, 0)?;
        diff
    };
    let mut old_ports: [u8; 4] = ctx.load(at.l4)?;
    let mut new_ports = ports;
    let port_diff = diff(&mut old_ports, &mut new_ports)?;
    ctx.store(at.l4, &new_ports, 0)?;
    let check = at.l4 + 6;
    ctx.l4_csum_replace(check, 0, addr_diff, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0)?;
    ctx.l4_csum_replace(check, 0, port_diff, BPF_F_MARK_MANGLED_0)?;
    Ok(())
}

/// The checksum difference between `old` and `new` (lengths a multiple of 4).
fn diff<const N: usize>(old: &mut [u8; N], new: &mut [u8; N]) -> Result<u64, i64> {
    // SAFETY: two stack buffers of N bytes each.
    let d = unsafe {
        bpf_csum_diff(
            old.as_mut_ptr().cast(),
            N as u32,
            new.as_mut_ptr().cast(),
            N as u32,
            0,
        )
    };
    if d < 0 {
        return Err(d);
    }
    Ok(d as u64)
}
