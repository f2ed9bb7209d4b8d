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
