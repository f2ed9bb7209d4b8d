//! Retransmitted segments that overlap bytes the gateway already has, on every data path.
//!
//! TCP queues a segment that starts before `rcv_nxt` and ends after it whole; readers must
//! skip its head. The kernel path's verdict is handed whole skbs by `tcp_read_skb`, so it
//! forwarded such heads twice (issue 7: 65,483 extra bytes in 2 GiB downloads). A hand-made
//! TCP peer on a TUN device sends these segments on purpose, at chosen moments: before the
//! pair is spliced and after, overlapping sniffed bytes and forwarded bytes, from the client
//! and from the upstream.
mod common;

use std::{io::Read, net::Ipv4Addr, sync::mpsc, thread, time::Duration};

use common::{
    rawtcp::{RawTcp, Tun, FIN},
    streams::{dial, finish, Pattern, Server},
    Lab,
};

const GW_TUN: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const HEADER: &[u8] = b"ASTROGATE-DIAL/1 up.test 9100\r\n";
/// Small enough to fit the receive window without waiting for ACKs.
const PAYLOAD: usize = 48_000;

fn lab(tag: &str, mode: &str) -> (Lab, Tun) {
    let mut lab = Lab::new(tag);
    let tun = Tun::create(&lab.ns, "rtx0", GW_TUN, PEER);
    lab.ns
        .ip(&["link", "set", "rtx0", "mtu", "65000"])
        .expect("raising the TUN MTU");
    lab.gateway(&format!(
        r#"
[gateway]
data_path = "{mode}"

[[listener]]
name = "dial"
bind = ["{GW_TUN}:7070", "127.0.0.1:7070"]
protocols = ["dial"]

[[route]]
hosts = ["up.test"]
to = "127.0.0.1"

[[route]]
hosts = ["down.test"]
to = "{PEER}:9200"
"#
    ));
    (lab, tun)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Pattern::new(seed).fill(&mut v);
    v
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {:?}",
            got.len(),
            want.len(),
            at.or(Some(got.len().min(want.len())))
        );
    }
}

/// The client's retransmissions: one that repeats bytes the gateway read while sniffing, sent
/// the moment the dial reply arrives (so it meets the splice however it is timed), and one
/// that repeats bytes already forwarded.
fn client_retransmits(mode: &str) {
    let (lab, tun) = lab(&format!("rtxc-{mode}"), mode);
    let (tx, rx) = mpsc::channel();
    let _upstream = Server::start(&lab.ns, "127.0.0.1:9100", move |mut s| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        tx.send(got).unwrap();
    });
    let payload = pattern(7, PAYLOAD);
    let stream = [HEADER, &payload].concat();
    let h = HEADER.len();
    // An initial sequence number just below the wrap, so sequence space wraps mid-stream.
    let mut c = RawTcp::connect(tun, 40_000, 7070, 0xffff_f000);
    c.send_at(0, &stream[..h + 3000], 0);
    assert!(
        c.pump_until(Duration::from_secs(5), |c| c.received.len() >= 32),
        "no dial reply"
    );
    assert!(c.received.starts_with(b"ASTROGATE-DIAL/1 200"));
    c.send_segment_at((h + 1000) as u32, &stream[h + 1000..h + 6000], 0);
    c.pump(Duration::from_millis(300));
    c.send_at((h + 6000) as u32, &stream[h + 6000..h + 20_000], 0);
    c.pump(Duration::from_millis(50));
    c.send_segment_at((h + 15_000) as u32, &stream[h + 15_000..h + 40_000], 0);
    c.pump(Duration::from_millis(50));
    // Wholly old: TCP itself drops this one.
    c.send_segment_at((h + 2000) as u32, &stream[h + 2000..h + 4000], 0);
    c.send_at((h + 40_000) as u32, &stream[h + 40_000..], FIN);
    c.pump(Duration::from_millis(50));
    let got = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the upstream did not see the client's FIN");
    assert_same(&got, &payload, "client to upstream");
    lab.wait_access_log(&[
        "host=up.test",
        &format!("path={mode}"),
        &format!("up_bytes={PAYLOAD} "),
    ]);
}

/// The upstream's retransmissions, before and after the splice, seen by an ordinary client.
fn upstream_retransmits(mode: &str) {
    let (lab, tun) = lab(&format!("rtxu-{mode}"), mode);
    let payload = pattern(9, PAYLOAD);
    let data = payload.clone();
    let server = thread::spawn(move || {
        let mut s = RawTcp::accept(tun, 9200, 0x7fff_fff0);
        // Sent while the gateway is still connecting: queued before the splice.
        s.send_at(0, &data[..10_000], 0);
        s.send_segment_at(5_000, &data[5_000..12_000], 0);
        s.pump(Duration::from_millis(300));
        s.send_at(12_000, &data[12_000..30_000], 0);
        s.pump(Duration::from_millis(50));
        s.send_segment_at(20_000, &data[20_000..36_000], 0);
        s.pump(Duration::from_millis(50));
        s.send_at(36_000, &data[36_000..], FIN);
        s.pump_until(Duration::from_secs(5), |s| s.fin);
    });
    // The client stays open until the end: a half-closed socket cannot join the sockmap.
    let mut client = dial(&lab.ns, "127.0.0.1:7070", "down.test", 9200);
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    client
        .read_to_end(&mut got)
        .expect("reading the upstream's bytes");
    assert_same(&got, &payload, "upstream to client");
    server.join().expect("the raw upstream failed");
    finish(&client);
    lab.wait_access_log(&[
        "host=down.test",
        &format!("path={mode}"),
        &format!("down_bytes={PAYLOAD} "),
    ]);
}

macro_rules! on_every_path {
    ($($name:ident),*) => {
        mod kernel {
            $(#[test] fn $name() { super::$name("kernel"); })*
        }
        mod splice {
            $(#[test] fn $name() { super::$name("splice"); })*
        }
        mod userspace {
            $(#[test] fn $name() { super::$name("userspace"); })*
        }
    };
}

on_every_path!(client_retransmits, upstream_retransmits);
