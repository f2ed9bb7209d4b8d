//! Keeps the TC program's flow map in step with the stack's flows.
use std::net::{IpAddr, SocketAddr};

use astrogate_common::{Counter, TunnelFlow, TunnelFlowStats};

use super::stack::FlowObserver;
use crate::ebpf::TunnelKernel;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// The key of a flow (TCP, or UDP with `udp`) from `client` to `service`, as its packets
/// leave through the TUN.
pub fn flow_key(client: SocketAddr, service: SocketAddr, udp: bool) -> TunnelFlow {
    let mut key = TunnelFlow {
        protocol: if udp { IPPROTO_UDP } else { IPPROTO_TCP },
        service_port: service.port().to_be_bytes(),
        client_port: client.port().to_be_bytes(),
        ..TunnelFlow::default()
    };
    let put = |out: &mut [u8; 16], ip: IpAddr| match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => *out = v6.octets(),
    };
    put(&mut key.service_addr, service.ip());
    put(&mut key.client_addr, client.ip());
    key.family = if service.is_ipv4() { 4 } else { 6 };
    key
}

pub struct TcFlows(pub TunnelKernel);

impl FlowObserver for TcFlows {
    fn opened(&mut self, client: SocketAddr, service: SocketAddr, udp: bool) {
        let key = flow_key(client, service, udp);
        if let Err(e) = self.0.flows.insert(key, TunnelFlowStats::default(), 0) {
            tracing::warn!(%client, %service, error = %e, "the TC flow map refused a flow");
        }
    }

    fn closed(&mut self, client: SocketAddr, service: SocketAddr, udp: bool) {
        let _ = self.0.flows.remove(&flow_key(client, service, udp));
    }
}

impl TcFlows {
    /// Flows in the map, and the counters, for the exit log.
    pub fn summary(&self) -> (usize, u64, u64) {
        let flows = self.0.flows.keys().count();
        let counted = self.0.counter(Counter::TunnelFlowPackets).unwrap_or(0);
        let strays = self.0.counter(Counter::TunnelStrays).unwrap_or(0);
        (flows, counted, strays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_addresses_and_ports_in_network_order() {
        let k = flow_key(
            "203.0.113.9:51234".parse().unwrap(),
            "100.64.77.1:8080".parse().unwrap(),
            false,
        );
        assert_eq!(&k.client_addr[..4], &[203, 0, 113, 9]);
        assert_eq!(&k.client_addr[4..], &[0; 12]);
        assert_eq!(&k.service_addr[..4], &[100, 64, 77, 1]);
        assert_eq!(k.client_port, [0xc8, 0x22]);
        assert_eq!(k.service_port, [0x1f, 0x90]);
        assert_eq!((k.family, k.protocol), (4, 6));
        let k6 = flow_key(
            "[2001:db8::7]:1".parse().unwrap(),
            "[fd64:77::1]:2".parse().unwrap(),
            true,
        );
        assert_eq!((k6.family, k6.protocol), (6, 17));
        assert_eq!(k6.client_addr[0..2], [0x20, 0x01]);
    }
}
