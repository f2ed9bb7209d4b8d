//! The QUIC Initial sniffer. The input is datagrams in the fixtures' format (each after a
//! big-endian u16 length). Random datagrams almost never decrypt, so a datagram whose first
//! byte is below 0x80 (never a long header) is taken as frames and sealed into a real Initial
//! packet first (QUIC v2 when the first datagram starts with 0x7f, which is then dropped):
//! that is how the frame parser, the CRYPTO reassembly and the TLS parser behind them get
//! exercised. Nothing may panic, and a decision must not change when another datagram
//! arrives, since the gateway acts on it at once.
#![no_main]
use astrogate::sniff::{quic, Sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pieces = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && pieces.len() < 8 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        pieces.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    let v2 = pieces.first().is_some_and(|p| p.first() == Some(&0x7f));
    let datagrams: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| match p.first() {
            Some(&b) if b < 0x80 => {
                let frames = if i == 0 && v2 { &p[1..] } else { p };
                quic::seal_initial(if v2 { 2 } else { 1 }, b"fuzzdcid", i as u32, frames)
            }
            _ => p.to_vec(),
        })
        .collect();
    let held: Vec<&[u8]> = datagrams.iter().map(Vec::as_slice).collect();
    let whole = quic::sniff(&held);
    if matches!(whole, Sniff::Found(_) | Sniff::NotThis) {
        let mut more = held.clone();
        more.push(b"\x40late short-header datagram");
        assert_eq!(quic::sniff(&more), whole);
    }
});
