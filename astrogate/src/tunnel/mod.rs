//! Tunnel mode: services on a host that runs `astrogate-tunnel` are reached through the
//! gateway, and see each connection come from the client's real address and port.
//!
//! - `keys`, `noise`, `wire`: what both sides share (key files, the authenticated control
//!   channel, the messages and the data connection's header).
//! - `hub`: the gateway's side: control sessions by tunnel name, and data connections matched
//!   to the client connections waiting for them.
//! - `client`: the tunnel client's side (the `astrogate-tunnel` binary).
pub mod client;
pub mod hub;
pub mod keys;
pub mod noise;
pub mod session;
pub mod wire;
