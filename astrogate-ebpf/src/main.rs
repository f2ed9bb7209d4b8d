//! Astrogate's eBPF programs. Each program is its own module; every map is declared in `maps`.
#![no_std]
#![no_main]

mod counters;
mod maps;
mod seen;
mod stream_verdict;
mod tunnel_egress;
mod tunnel_steer;
mod udp_forward;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
