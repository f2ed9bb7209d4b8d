//! QUIC: the server name from the TLS ClientHello inside a client's Initial packets.
//!
//! The Initial keys come from the connection ID the client chose (RFC 9001 §5.2, RFC 9369
//! §3.3), so the gateway decrypts the Initial packets of QUIC v1 and v2, puts their CRYPTO
//! frames back in order, and hands the handshake stream to the TLS sniffer. The ClientHello
//! may span several Initial packets and several datagrams (post-quantum key shares make it
//! larger than one), so the sniffer reads every datagram held so far, not only the first.
mod crypto_stream;
mod keys;
mod packet;

use super::{tls, Hostname, Malformed, Sniff};
use crypto_stream::CryptoStream;
use keys::InitialKeys;
use packet::Packet;

/// RFC 9000 §14.1: a client's datagrams carrying Initial packets are at least 1200 bytes.
pub const MIN_INITIAL_DATAGRAM: usize = 1200;
/// Cap on the handshake stream reassembled, as for TLS over TCP.
const MAX_CRYPTO: usize = 1 << 16;

/// A client Initial datagram of `version` (1 or 2; anything else is v1) for `dcid`, carrying
/// `frames`: for tests and the fuzzer, which need packets that decrypt around chosen frames.
#[doc(hidden)]
pub fn seal_initial(version: u32, dcid: &[u8], number: u32, frames: &[u8]) -> Vec<u8> {
    let version = if version == 2 { keys::V2 } else { keys::V1 };
    let dcid = &dcid[..dcid.len().min(20)];
    match InitialKeys::client(version, dcid) {
        Some(keys) => packet::seal_initial(&keys, version, dcid, number, frames),
        None => Vec::new(),
    }
}

/// Sniffs the SNI from the datagrams a client has sent so far, oldest first. `NotThis`: the
/// first datagram is not a QUIC Initial of a version the gateway reads. `Found(None)`: a
/// ClientHello without SNI.
pub fn sniff(datagrams: &[&[u8]]) -> Sniff<Option<Hostname>> {
    let Some(first) = datagrams.first() else {
        return Sniff::Incomplete;
    };
    let (version, dcid) = match packet::next_packet(first) {
        Ok((Packet::Initial { header, .. }, _)) => (header.version, header.dcid),
        _ => return Sniff::NotThis,
    };
    let Some(keys) = InitialKeys::client(version, dcid) else {
        return Sniff::NotThis;
    };
    if first.len() < MIN_INITIAL_DATAGRAM {
        return Sniff::Malformed(Malformed("Initial datagram shorter than 1200 bytes"));
    }
    let mut stream = CryptoStream::default();
    let mut largest: Option<u64> = None;
    for (i, datagram) in datagrams.iter().enumerate() {
        let mut rest: &[u8] = datagram;
        let mut first_packet = i == 0;
        while !rest.is_empty() {
            // What follows the last packet may be padding, or a short-header packet: neither
            // carries the ClientHello.
            let Ok((packet, next)) = packet::next_packet(rest) else {
                break;
            };
            rest = next;
            let Packet::Initial {
                header,
                bytes,
                pn_offset,
            } = packet
            else {
                continue;
            };
            if header.version != version || header.dcid != dcid {
                continue;
            }
            match packet::open(&keys, bytes, pn_offset, largest) {
                Ok((number, frames)) => {
                    largest = Some(largest.map_or(number, |l| l.max(number)));
                    if let Err(why) = stream.add_frames(&frames, MAX_CRYPTO) {
                        return Sniff::Malformed(Malformed(why));
                    }
                }
                // The very first packet is what made this QUIC: if it does not open, the
                // datagram was never a client's Initial.
                Err(why) if first_packet => return Sniff::Malformed(Malformed(why)),
                // A later one that does not open is dropped, as the server would drop it.
                Err(_) => {}
            }
            first_packet = false;
        }
    }
    match tls::sniff_handshake(stream.contiguous()) {
        Sniff::NotThis => Sniff::Malformed(Malformed("CRYPTO stream is not a TLS handshake")),
        other => other,
    }
}

#[cfg(test)]
mod tests;
