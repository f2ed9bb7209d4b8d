//! The kernel programs: the only module that touches aya. It owns the loaded `Ebpf` object
//! (load, attach, detach on drop) and hands typed map handles to the forwarding code.
mod loader;
pub mod logs;

pub use loader::{
    embedded_object_len, Kernel, LoadError, SpliceMaps, TunnelKernel, UdpFlowCounts, UdpKernel,
};
