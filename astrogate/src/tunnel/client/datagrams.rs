//! UDP flows on the tunnel client: datagrams from the internet client's address and port to
//! the service, through the userspace stack, and the service's replies back.
//!
//! A flow reuses the byte pipes of a TCP flow ([`FlowShared`]) and its data connection, with
//! each datagram framed by its length (u16, big-endian) there; only this end and the gateway
//! read the frames. The flow ends when the gateway closes the data connection (its session
//! went idle) or it breaks.
use std::{net::SocketAddr, sync::Arc};

use smoltcp::{
    iface::{SocketHandle, SocketSet},
    socket::udp,
    wire::{IpAddress, IpEndpoint, IpListenEndpoint},
};
use tokio::sync::Notify;

use super::flow::FlowShared;
use crate::tunnel::wire::DataStatus;

/// Datagrams each of the socket's buffers holds, and their bytes.
const PACKETS: usize = 256;
const BYTES: usize = 512 * 1024;
/// A frame's length prefix.
const PREFIX: usize = 2;

pub struct DatagramFlow {
    pub shared: Arc<FlowShared>,
    pub client: SocketAddr,
    pub service: SocketAddr,
}

/// A socket that sends from `client` and receives what is sent to it: the stack answers for
/// any address (`set_any_ip`), and the kernel routes the service's replies to the TUN.
pub fn start(
    sockets: &mut SocketSet<'static>,
    client: SocketAddr,
    service: SocketAddr,
    wake: Arc<Notify>,
) -> Result<(SocketHandle, DatagramFlow), DataStatus> {
    let buffer =
        || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; PACKETS], vec![0; BYTES]);
    let mut socket = udp::Socket::new(buffer(), buffer());
    let local = IpListenEndpoint {
        addr: Some(IpAddress::from(client.ip())),
        port: client.port(),
    };
    socket.bind(local).map_err(|_| DataStatus::Failed)?;
    let handle = sockets.add(socket);
    let flow = DatagramFlow {
        shared: FlowShared::new(wake),
        client,
        service,
    };
    Ok((handle, flow))
}

/// Moves one flow's datagrams between its socket and pipes: (whether anything moved,
/// whether the flow is over).
pub fn pump(socket: &mut udp::Socket<'_>, flow: &DatagramFlow) -> (bool, bool) {
    let mut moved = false;
    let service = IpEndpoint::new(IpAddress::from(flow.service.ip()), flow.service.port());
    // Gateway → service: whole frames only.
    {
        let mut pipe = flow.shared.to_service();
        if pipe.reset || (pipe.eof && pipe.buf.len() < PREFIX) {
            drop(pipe);
            let mut back = flow.shared.to_gateway();
            back.eof = true;
            drop(back);
            flow.shared.gateway_data.notify_one();
            return (true, true);
        }
        let before = pipe.buf.len();
        while pipe.buf.len() >= PREFIX && socket.can_send() {
            let len = usize::from(u16::from_be_bytes([pipe.buf[0], pipe.buf[1]]));
            if pipe.buf.len() < PREFIX + len {
                break;
            }
            let datagram: Vec<u8> = pipe.buf.range(PREFIX..PREFIX + len).copied().collect();
            let mut meta = udp::UdpMetadata::from(service);
            meta.local_address = Some(IpAddress::from(flow.client.ip()));
            if socket.send_slice(&datagram, meta).is_err() {
                break;
            }
            pipe.buf.drain(..PREFIX + len);
        }
        if pipe.buf.len() != before {
            moved = true;
            flow.shared.service_space.notify_one();
        }
    }
    // Service → gateway: a datagram waits in the socket until its whole frame fits.
    {
        let mut pipe = flow.shared.to_gateway();
        let before = pipe.buf.len();
        while let Ok((data, meta)) = socket.peek() {
            let from_service = meta.endpoint == service;
            if from_service && pipe.space() < PREFIX + data.len() {
                break;
            }
            if from_service {
                pipe.buf.extend((data.len() as u16).to_be_bytes());
                pipe.buf.extend(data);
            }
            let _ = socket.recv();
        }
        if pipe.buf.len() != before {
            moved = true;
            drop(pipe);
            flow.shared.gateway_data.notify_one();
        }
    }
    (moved, false)
}
