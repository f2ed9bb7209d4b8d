//! XMPP: the `to` attribute of the opening `<stream:stream>`.
use super::{Hostname, Sniff};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `jabber:client` (c2s).
    Client,
    /// `jabber:server` (s2s).
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<Hostname>,
    pub kind: StreamKind,
}

pub fn sniff(_buf: &[u8]) -> Sniff<StreamHeader> {
    Sniff::NotThis
}
