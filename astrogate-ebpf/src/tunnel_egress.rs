//! `sched_cls` on the tunnel client's TUN, egress: every packet the service host sends into
//! the tunnel passes here. Packets of a flow the client opened are counted against it in
//! `TUNNEL_FLOWS`; TCP and UDP packets of no open flow are counted as strays.
//!
//! What steers a TCP reply into the TUN is the client's one source rule (`from <TUN address>
//! lookup <table>`): the kernel routes a reply before TC sees it, and only a rule also satisfies
//! strict reverse-path filtering for the client's packets arriving on the TUN. This program is
//! where the kernel and the client agree on which flows exist, so the client can see from
//! outside that every flow it opened is gone once it closed (`TUNNEL_FLOWS` is empty).
use astrogate_common::{Counter, TunnelFlow};
use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};

use crate::{counters::count, maps::TUNNEL_FLOWS};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

#[classifier]
pub fn astrogate_tunnel_egress(ctx: TcContext) -> i32 {
    // Counting never changes a packet's fate.
    let _ = try_tunnel_egress(&ctx);
    TC_ACT_OK
}

fn try_tunnel_egress(ctx: &TcContext) -> Result<(), i64> {
    // A TUN has no link-layer header: the packet starts with the IP header.
    let first: u8 = ctx.load(0)?;
    let mut flow = TunnelFlow::default();
    let ports_at = match first >> 4 {
        4 => {
            flow.family = 4;
            flow.protocol = ctx.load(9)?;
            let src: [u8; 4] = ctx.load(12)?;
            let dst: [u8; 4] = ctx.load(16)?;
            flow.service_addr[..4].copy_from_slice(&src);
            flow.client_addr[..4].copy_from_slice(&dst);
            usize::from(first & 0x0f) * 4
        }
        6 => {
            flow.family = 6;
            flow.protocol = ctx.load(6)?;
            flow.service_addr = ctx.load(8)?;
            flow.client_addr = ctx.load(24)?;
            40
        }
        _ => return Ok(()),
    };
    if flow.protocol != IPPROTO_TCP && flow.protocol != IPPROTO_UDP {
        return Ok(());
    }
    flow.service_port = ctx.load(ports_at)?;
    flow.client_port = ctx.load(ports_at + 2)?;
    match TUNNEL_FLOWS.get_ptr_mut(&flow) {
        Some(stats) => {
            // SAFETY: a pointer into the map's value; concurrent updates may race, and a
            // counter that is off by a packet under contention is acceptable here.
            unsafe {
                (*stats).packets += 1;
                (*stats).bytes += u64::from(ctx.len());
            }
            count(Counter::TunnelFlowPackets, 1);
        }
        None => count(Counter::TunnelStrays, 1),
    }
    Ok(())
}
