//! Astrogate: a gateway that routes TCP connections by the hostname their first bytes name.
pub mod access_log;
pub mod acl;
pub mod assets;
pub mod config;
pub mod ebpf;
pub mod forward;
pub mod metrics;
pub mod pipeline;
pub mod privileges;
pub mod proxy_protocol;
pub mod reply;
pub mod route;
pub mod runtime;
pub mod sniff;
pub mod target;
pub mod tunnel;
pub mod udp;
