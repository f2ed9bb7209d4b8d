//! QUIC long-header packets (RFC 9000 §17.2) in a datagram, and the Initial ones opened:
//! header protection removed (RFC 9001 §5.4) and the payload decrypted (§5.3).
use super::keys::{InitialKeys, V1, V2};
use crate::sniff::cursor::Cursor;

/// A connection ID is at most 20 bytes in QUIC v1 and v2 (RFC 9000 §17.2).
const MAX_CID: usize = 20;
/// AES-128-GCM's tag.
const TAG: usize = 16;
/// Header protection samples 16 bytes, taken 4 bytes after the packet number starts.
const SAMPLE: usize = 16;

/// The invariant part of a long header: enough to tell whether a datagram is QUIC at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader<'a> {
    pub version: u32,
    pub dcid: &'a [u8],
}

/// What one packet in a datagram turned out to be.
#[derive(Debug)]
pub enum Packet<'a> {
    /// An Initial packet of `version` for `dcid`, still protected.
    Initial {
        header: LongHeader<'a>,
        /// The whole packet, from its first byte to the end of its payload.
        bytes: &'a [u8],
        /// Where the (protected) packet number starts in `bytes`.
        pn_offset: usize,
    },
    /// Another long-header packet (0-RTT, Handshake, Retry) or a version this gateway cannot
    /// read: not needed to find the SNI.
    Other,
}

/// Reads a QUIC variable-length integer (RFC 9000 §16).
pub fn varint(c: &mut Cursor<'_>) -> Option<u64> {
    let first = c.u8().ok()?;
    let extra = (1usize << (first >> 6)) - 1;
    let mut v = u64::from(first & 0x3f);
    for b in c.take(extra).ok()? {
        v = (v << 8) | u64::from(*b);
    }
    Some(v)
}

/// Splits the next packet off `datagram`: the packet and what follows it (coalesced packets,
/// RFC 9000 §12.2). `Err` when the datagram does not start with a QUIC long header.
pub fn next_packet<'a>(datagram: &'a [u8]) -> Result<(Packet<'a>, &'a [u8]), &'static str> {
    let mut c = Cursor::new(datagram);
    let first = c.u8().map_err(|_| "empty datagram")?;
    if first & 0x80 == 0 {
        return Err("not a long-header packet");
    }
    let version = c.u32().map_err(|_| "truncated version")?;
    let dcid = c.block8().map_err(|_| "truncated connection ID")?.rest();
    let scid = c.block8().map_err(|_| "truncated connection ID")?.rest();
    if version == 0 {
        return Err("a version negotiation packet");
    }
    if dcid.len() > MAX_CID || scid.len() > MAX_CID {
        return Err("connection ID longer than 20 bytes");
    }
    let header = LongHeader { version, dcid };
    let kind = (first >> 4) & 0x03;
    let initial = match version {
        V1 => kind == 0,
        V2 => kind == 1,
        // A version this gateway cannot read: nothing after the connection IDs is known.
        _ => return Ok((Packet::Other, &[])),
    };
    let is_retry = matches!((version, kind), (V1, 3) | (V2, 0));
    if is_retry {
        return Ok((Packet::Other, &[]));
    }
    if initial {
        let token = varint(&mut c).ok_or("truncated token length")?;
        c.skip(usize::try_from(token).map_err(|_| "token too long")?)
            .map_err(|_| "token overruns the datagram")?;
    }
    let length = varint(&mut c).ok_or("truncated length")?;
    let pn_offset = c.position();
    let length = usize::try_from(length).map_err(|_| "length overruns the datagram")?;
    let end = pn_offset
        .checked_add(length)
        .filter(|&end| end <= datagram.len())
        .ok_or("length overruns the datagram")?;
    let packet = if initial {
        Packet::Initial {
            header,
            bytes: &datagram[..end],
            pn_offset,
        }
    } else {
        Packet::Other
    };
    Ok((packet, &datagram[end..]))
}

/// Removes header protection and decrypts an Initial packet: its frames, or why not.
/// `largest` is the largest packet number opened so far on this connection, if any.
pub fn open(
    keys: &InitialKeys,
    bytes: &[u8],
    pn_offset: usize,
    largest: Option<u64>,
) -> Result<(u64, Vec<u8>), &'static str> {
    let sample = bytes
        .get(pn_offset + 4..pn_offset + 4 + SAMPLE)
        .ok_or("packet too short to sample")?;
    let mask = keys.mask(sample).ok_or("header protection failed")?;
    let mut header = bytes[..pn_offset].to_vec();
    header[0] ^= mask[0] & 0x0f;
    let pn_len = usize::from(header[0] & 0x03) + 1;
    let protected = bytes
        .get(pn_offset..pn_offset + pn_len)
        .ok_or("packet number overruns the packet")?;
    let mut truncated = 0u64;
    for (i, b) in protected.iter().enumerate() {
        let b = b ^ mask[1 + i];
        header.push(b);
        truncated = (truncated << 8) | u64::from(b);
    }
    let packet_number = decode_packet_number(largest, truncated, pn_len * 8);
    let mut payload = bytes[pn_offset + pn_len..].to_vec();
    if payload.len() < TAG {
        return Err("payload shorter than its tag");
    }
    let plain_len = keys
        .open(packet_number, &header, &mut payload)
        .ok_or("Initial packet does not decrypt")?
        .len();
    payload.truncate(plain_len);
    Ok((packet_number, payload))
}

/// Builds a client Initial packet carrying `frames`, padded to fill a 1200-byte datagram,
/// and protected as a client would (for tests and the fuzzer).
pub fn seal_initial(
    keys: &InitialKeys,
    version: u32,
    dcid: &[u8],
    number: u32,
    frames: &[u8],
) -> Vec<u8> {
    let kind: u8 = if version == V2 { 1 } else { 0 };
    let mut header = vec![0xc0 | (kind << 4) | 0x03];
    header.extend_from_slice(&version.to_be_bytes());
    header.push(dcid.len() as u8);
    header.extend_from_slice(dcid);
    header.extend_from_slice(&[0, 0]); // no source connection ID, no token
    let fixed = header.len() + 2 + 4 + TAG;
    let mut payload = frames.to_vec();
    // PADDING frames are zero bytes.
    payload.resize(payload.len().max(1200usize.saturating_sub(fixed)), 0);
    let length = (4 + payload.len() + TAG) as u16;
    header.extend_from_slice(&(0x4000 | length).to_be_bytes());
    let pn_offset = header.len();
    header.extend_from_slice(&number.to_be_bytes());
    keys.seal(u64::from(number), &header, &mut payload);
    let mut packet = header;
    packet.extend_from_slice(&payload);
    if let Some(mask) = keys.mask(&packet[pn_offset + 4..pn_offset + 4 + SAMPLE]) {
        packet[0] ^= mask[0] & 0x0f;
        for i in 0..4 {
            packet[pn_offset + i] ^= mask[1 + i];
        }
    }
    packet
}

/// RFC 9000 Appendix A.3.
fn decode_packet_number(largest: Option<u64>, truncated: u64, bits: usize) -> u64 {
    let expected = largest.map_or(0, |l| l.saturating_add(1));
    let window = 1u64 << bits;
    let half = window / 2;
    let mask = window - 1;
    let candidate = (expected & !mask) | truncated;
    if candidate.saturating_add(half) <= expected && candidate < (1u64 << 62) - window {
        candidate + window
    } else if candidate > expected.saturating_add(half) && candidate >= window {
        candidate - window
    } else {
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_numbers_decode_as_rfc_9000_appendix_a3() {
        assert_eq!(
            decode_packet_number(Some(0xa82f30ea), 0x9b32, 16),
            0xa82f9b32
        );
        assert_eq!(decode_packet_number(None, 0, 8), 0);
        assert_eq!(decode_packet_number(Some(1), 2, 8), 2);
    }

    #[test]
    fn varints_decode_as_rfc_9000_appendix_a1() {
        for (bytes, value) in [
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c][..],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d][..], 494_878_333),
            (&[0x7b, 0xbd][..], 15_293),
            (&[0x25][..], 37),
            (&[0x40, 0x25][..], 37),
        ] {
            assert_eq!(varint(&mut Cursor::new(bytes)), Some(value));
        }
        assert_eq!(varint(&mut Cursor::new(&[0x7b])), None);
    }
}
