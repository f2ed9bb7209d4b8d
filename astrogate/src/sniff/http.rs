//! HTTP/1.x: the Host header (or the authority of an absolute-form target).
use super::{Hostname, Sniff};

/// The parts of a request head the gateway routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The host without its port; `None` when the request names none (HTTP/1.0 without Host)
    /// or names an IP literal.
    pub host: Option<Hostname>,
    /// The request target in origin form (path and query), as sent.
    pub path: String,
}

pub fn sniff(_buf: &[u8]) -> Sniff<Request> {
    Sniff::NotThis
}
