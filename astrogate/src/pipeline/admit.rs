//! The admit stage: whether a connection may be served at all, before a byte is read.
//!
//! Every connection is admitted for now. Connection limits and client-address ACLs go here
//! (issue 10), where a refusal costs nothing but the accepted socket.
use std::net::SocketAddr;

use super::Snapshot;
use crate::{config::ListenerConfig, reply::Refusal};

pub fn admit(
    _snapshot: &Snapshot,
    _listener: &ListenerConfig,
    _client: SocketAddr,
) -> Result<(), Refusal> {
    Ok(())
}
