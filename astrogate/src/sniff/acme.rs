//! ACME HTTP-01: requests for `/.well-known/acme-challenge/` are routed to the ACME target.
use super::{Hostname, Sniff};

pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// An HTTP-01 challenge fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub host: Hostname,
    /// The full request path, starting with [`CHALLENGE_PREFIX`].
    pub path: String,
}

pub fn sniff(_buf: &[u8]) -> Sniff<Challenge> {
    Sniff::NotThis
}
