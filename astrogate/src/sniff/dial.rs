//! The Astrogate dial header: a one-line preamble naming the host and port to connect to.
use super::{Hostname, Sniff};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    pub host: Hostname,
    pub port: u16,
    /// Length of the header line, terminator included. The gateway consumes exactly these bytes.
    pub header_len: usize,
}

pub fn sniff(_buf: &[u8]) -> Sniff<DialRequest> {
    Sniff::NotThis
}

/// The gateway's one-line answer to a dial header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    Connected,
    Malformed,
    Forbidden,
    Unreachable,
    Timeout,
}

impl DialStatus {
    pub fn code(self) -> u16 {
        match self {
            DialStatus::Connected => 200,
            DialStatus::Malformed => 400,
            DialStatus::Forbidden => 403,
            DialStatus::Unreachable => 502,
            DialStatus::Timeout => 504,
        }
    }

    pub fn reply_line(self) -> &'static [u8] {
        match self {
            DialStatus::Connected => b"ASTROGATE-DIAL/1 200 connected\r\n",
            DialStatus::Malformed => b"ASTROGATE-DIAL/1 400 malformed header\r\n",
            DialStatus::Forbidden => b"ASTROGATE-DIAL/1 403 host not allowed\r\n",
            DialStatus::Unreachable => b"ASTROGATE-DIAL/1 502 upstream unreachable\r\n",
            DialStatus::Timeout => b"ASTROGATE-DIAL/1 504 upstream timeout\r\n",
        }
    }
}

/// Parses the gateway's reply line: the status code and the line's length.
pub fn parse_reply(buf: &[u8]) -> Sniff<(u16, usize)> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Sniff::Incomplete;
    };
    let line = &buf[..end];
    let Some(rest) = line.strip_prefix(b"ASTROGATE-DIAL/1 ") else {
        return Sniff::Malformed(super::Malformed("bad dial reply"));
    };
    match std::str::from_utf8(rest.get(..3).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
    {
        Some(code) => Sniff::Found((code, end + 1)),
        None => Sniff::Malformed(super::Malformed("bad dial reply")),
    }
}
