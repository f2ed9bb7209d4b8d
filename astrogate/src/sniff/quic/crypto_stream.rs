//! The client's Initial CRYPTO frames (RFC 9000 §19.6) put back in order. Frames may come
//! in any order, within a packet and across packets (Chrome shuffles them on purpose), and
//! may overlap; only the contiguous start of the stream is handed to the TLS sniffer.
use std::collections::BTreeMap;

use super::packet::varint;
use crate::sniff::cursor::Cursor;

/// Frames allowed in a client's Initial packet (RFC 9000 §12.4, Table 3).
const PADDING: u64 = 0x00;
const PING: u64 = 0x01;
const ACK: u64 = 0x02;
const ACK_ECN: u64 = 0x03;
const CRYPTO: u64 = 0x06;
const CONNECTION_CLOSE: u64 = 0x1c;

/// The handshake stream as far as it has arrived.
#[derive(Debug, Default)]
pub struct CryptoStream {
    /// Bytes from offset 0 with no gap.
    contiguous: Vec<u8>,
    /// Pieces past a gap, by offset.
    pending: BTreeMap<u64, Vec<u8>>,
    /// Bytes held in `pending`, for the cap.
    pending_len: usize,
}

impl CryptoStream {
    /// The stream from offset 0 up to the first gap.
    pub fn contiguous(&self) -> &[u8] {
        &self.contiguous
    }

    /// Reads one decrypted Initial payload's frames into the stream. `max` caps the stream's
    /// extent: a ClientHello is a few KB, and every byte held is memory a peer makes us spend.
    pub fn add_frames(&mut self, payload: &[u8], max: usize) -> Result<(), &'static str> {
        let mut c = Cursor::new(payload);
        while !c.is_empty() {
            match varint(&mut c).ok_or("truncated frame type")? {
                PADDING | PING => {}
                kind @ (ACK | ACK_ECN) => {
                    // Largest acknowledged, delay, range count, first range, then the ranges.
                    for _ in 0..2 {
                        varint(&mut c).ok_or("truncated ACK frame")?;
                    }
                    let ranges = varint(&mut c).ok_or("truncated ACK frame")?;
                    varint(&mut c).ok_or("truncated ACK frame")?;
                    if ranges > payload.len() as u64 {
                        return Err("ACK frame claims more ranges than fit");
                    }
                    for _ in 0..ranges * 2 + if kind == ACK_ECN { 3 } else { 0 } {
                        varint(&mut c).ok_or("truncated ACK frame")?;
                    }
                }
                CRYPTO => {
                    let offset = varint(&mut c).ok_or("truncated CRYPTO frame")?;
                    let len = varint(&mut c).ok_or("truncated CRYPTO frame")?;
                    let len = usize::try_from(len).map_err(|_| "CRYPTO frame too long")?;
                    let data = c
                        .take(len)
                        .map_err(|_| "CRYPTO frame overruns the packet")?;
                    self.insert(offset, data, max)?;
                }
                CONNECTION_CLOSE => return Err("the client closed the connection"),
                _ => return Err("a frame that is not allowed in an Initial packet"),
            }
        }
        Ok(())
    }

    fn insert(&mut self, offset: u64, data: &[u8], max: usize) -> Result<(), &'static str> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&end| end <= max as u64)
            .ok_or("CRYPTO data beyond the sniff limit")?;
        let have = self.contiguous.len() as u64;
        if end <= have || data.is_empty() {
            return Ok(()); // a retransmission of what is already here
        }
        if offset > have {
            if self.pending_len + data.len() > max {
                return Err("CRYPTO data beyond the sniff limit");
            }
            self.pending_len += data.len();
            if let Some(old) = self.pending.insert(offset, data.to_vec()) {
                self.pending_len -= old.len();
            }
            return Ok(());
        }
        // Overlaps the end of the contiguous part: append what is new, then whatever pending
        // pieces the gap closing lets through.
        self.contiguous
            .extend_from_slice(&data[(have - offset) as usize..]);
        while let Some(entry) = self.pending.first_entry() {
            let have = self.contiguous.len() as u64;
            let start = *entry.key();
            if start > have {
                break;
            }
            let piece = entry.remove();
            self.pending_len -= piece.len();
            let skip = (have - start) as usize;
            if skip < piece.len() {
                self.contiguous.extend_from_slice(&piece[skip..]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crypto(offset: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x06, offset, data.len() as u8];
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn frames_out_of_order_and_overlapping_come_out_in_order() {
        let mut s = CryptoStream::default();
        let mut payload = crypto(6, b"ghij");
        payload.extend([0x01, 0x00, 0x00]); // PING, PADDING
        payload.extend(crypto(2, b"cdef"));
        s.add_frames(&payload, 100).unwrap();
        assert_eq!(s.contiguous(), b"");
        s.add_frames(&crypto(0, b"abcd"), 100).unwrap();
        assert_eq!(s.contiguous(), b"abcdefghij");
        s.add_frames(&crypto(3, b"def"), 100).unwrap();
        assert_eq!(s.contiguous(), b"abcdefghij");
    }

    #[test]
    fn limits_and_foreign_frames_are_refused() {
        let mut s = CryptoStream::default();
        assert!(s.add_frames(&crypto(60, b"0123456789"), 64).is_err());
        assert!(s.add_frames(&[0x08, 0x00], 64).is_err()); // STREAM
        assert!(s.add_frames(&[0x06, 0x00, 0x05, b'a'], 64).is_err()); // overrun
        assert!(s.add_frames(&[0x1c, 0x00, 0x00, 0x00], 64).is_err());
    }
}
