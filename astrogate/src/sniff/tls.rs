//! TLS: the server name (SNI) from a ClientHello.
use super::{Hostname, Sniff};

/// Sniffs a TLS ClientHello. `Found(None)` means a well-formed ClientHello without SNI.
pub fn sniff(_buf: &[u8]) -> Sniff<Option<Hostname>> {
    Sniff::NotThis
}
