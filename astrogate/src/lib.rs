//! Astrogate: a gateway that routes TCP connections by the hostname their first bytes name.
pub mod config;
pub mod route;
pub mod sniff;
