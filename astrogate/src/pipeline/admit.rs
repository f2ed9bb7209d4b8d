//! The admit stage: whether a connection may be served at all, before a byte is read.
//!
//! The listener's `allow` and `deny` lists are checked here. Connection limits go here too
//! (issue 10), where a refusal costs nothing but the accepted socket.
use std::net::SocketAddr;

use super::Snapshot;
use crate::{config::ListenerConfig, reply::Refusal};

pub fn admit(
    _snapshot: &Snapshot,
    listener: &ListenerConfig,
    client: SocketAddr,
) -> Result<(), Refusal> {
    if listener.acl.permits(client.ip()) {
        Ok(())
    } else {
        Err(Refusal::Denied)
    }
}
