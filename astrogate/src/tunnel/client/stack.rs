//! The userspace TCP/IP stack (smoltcp) on the TUN: where the tunnel client opens each
//! connection to the service *from the internet client's address and port*.
//!
//! Why a userspace stack: the kernel will not let a socket connect from an address it does not
//! own without IP_TRANSPARENT and policy routing per client address (the route churn this
//! design exists to avoid). smoltcp with `set_any_ip` sends from any source, and the service's
//! kernel sees an ordinary connection arriving on the TUN.
use std::{
    cell::RefCell,
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use futures_util::FutureExt;
use smoltcp::{
    iface::{Config, Interface, SocketHandle, SocketSet},
    phy::{Checksum, Device, DeviceCapabilities, Medium},
    socket::tcp,
    time::Instant as SmolInstant,
    wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint},
};
use tokio::{
    sync::{mpsc, oneshot, Notify},
    time::Instant,
};

use super::{
    datagrams::{self, DatagramFlow},
    flow::FlowShared,
};
use crate::tunnel::wire::DataStatus;

/// The stack's MTU, and the largest packet either side writes. Large, so bulk transfers cost
/// few packets; the TUN has no GSO, so the kernel segments to it (at [`TUN_MTU`]).
pub const MTU: usize = 65535;
/// The TUN's own MTU, lower than the stack's by all the option space TCP has (40 bytes).
/// smoltcp sizes a segment's payload as if its TCP header had no options, then adds timestamps
/// and SACK blocks, and drops the packet if that exceeds its MTU (it does not fragment): every
/// full-size segment was lost and an upload stalled. The kernel advertises an MSS from the
/// TUN's MTU, so a full segment with every option still fits the stack's MTU.
pub const TUN_MTU: usize = MTU - 40;
/// Each socket's receive and send buffer in the stack.
const SOCKET_BUFFER: usize = 512 * 1024;
/// Packets read from the TUN per turn of the loop before the stack runs.
const BATCH: usize = 64;
/// A connection whose peer stops acknowledging for this long is dropped.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(120);

/// Asks the stack to connect `client` → `service`.
pub struct Open {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub timeout: Duration,
    /// A UDP flow rather than a TCP connection.
    pub udp: bool,
    pub reply: oneshot::Sender<Result<Arc<FlowShared>, DataStatus>>,
}

/// A packet in a reused buffer of `MTU` bytes (allocating and zeroing 64 KiB for every packet
/// showed in profiles), `len` bytes long.
struct Packet {
    buf: Vec<u8>,
    len: usize,
}

impl Packet {
    fn ip(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Buffers kept for reuse: enough for a batch each way.
const POOL: usize = 2 * BATCH;

/// The packets the interface reads and writes: the TUN task fills `rx` and empties `tx`.
struct Queues {
    rx: VecDeque<Packet>,
    tx: VecDeque<Packet>,
    free: RefCell<Vec<Vec<u8>>>,
}

impl Queues {
    fn buffer(free: &RefCell<Vec<Vec<u8>>>) -> Vec<u8> {
        free.borrow_mut().pop().unwrap_or_else(|| vec![0; MTU])
    }

    fn recycle(free: &RefCell<Vec<Vec<u8>>>, buf: Vec<u8>) {
        let mut free = free.borrow_mut();
        if free.len() < POOL {
            free.push(buf);
        }
    }
}

struct RxToken<'a> {
    packet: Packet,
    free: &'a RefCell<Vec<Vec<u8>>>,
}

struct TxToken<'a> {
    tx: &'a mut VecDeque<Packet>,
    free: &'a RefCell<Vec<Vec<u8>>>,
}

impl smoltcp::phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(self.packet.ip());
        Queues::recycle(self.free, self.packet.buf);
        r
    }
}

impl smoltcp::phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = Queues::buffer(self.free);
        let r = f(&mut buf[..len]);
        self.tx.push_back(Packet { buf, len });
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        let free = &self.free;
        Some((
            RxToken { packet, free },
            TxToken {
                tx: &mut self.tx,
                free,
            },
        ))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: &mut self.tx,
            free: &self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // Every packet read comes from this host's own kernel over the TUN, which has just
        // computed its checksums: there is no wire to corrupt them, so they are not verified
        // again. Packets written carry checksums, which the kernel verifies.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.udp = Checksum::Tx;
        caps
    }
}

enum Phase {
    Connecting {
        reply: oneshot::Sender<Result<Arc<FlowShared>, DataStatus>>,
        deadline: Instant,
    },
    Open,
}

struct Flow {
    shared: Arc<FlowShared>,
    phase: Phase,
    /// The service sent FIN (seen as a state that follows one).
    fin_seen: bool,
    /// The state after this flow's last pump: a socket that is Closed now closed cleanly only
    /// if it was in LAST-ACK.
    last_state: tcp::State,
    fin_sent: bool,
    /// The end (FIN or reset) has been handed to the data connection.
    end_passed: bool,
    /// Ended by FIN both ways, with the service holding TIME_WAIT or none.
    closed_cleanly: bool,
    tuple: (SocketAddr, SocketAddr),
}

/// What the tunnel's TC program needs to know as flows come and go.
pub trait FlowObserver: Send {
    /// A flow opened: TCP, or UDP with `udp`.
    fn opened(&mut self, client: SocketAddr, service: SocketAddr, udp: bool);
    fn closed(&mut self, client: SocketAddr, service: SocketAddr, udp: bool);
}

pub struct Stack<T> {
    iface: Interface,
    sockets: SocketSet<'static>,
    queues: Queues,
    flows: HashMap<SocketHandle, Flow>,
    /// UDP flows.
    datagram_flows: HashMap<SocketHandle, DatagramFlow>,
    /// Opens whose 4-tuple a flow still holds, or closed within the current millisecond, with
    /// their deadlines.
    waiting: Vec<(Open, Instant)>,
    /// 4-tuples whose flow closed cleanly, and the TCP timestamp it closed at: the service
    /// holds them in TIME_WAIT, and takes a new SYN on one only with a newer timestamp.
    closed_at: HashMap<(SocketAddr, SocketAddr), u32>,
    wake: Arc<Notify>,
    tun: T,
    observer: Box<dyn FlowObserver>,
}

/// The TUN as the stack uses it.
pub trait Tun {
    fn recv(&self, buf: &mut [u8]) -> impl std::future::Future<Output = std::io::Result<usize>>;
    fn send(&self, buf: &[u8]) -> impl std::future::Future<Output = std::io::Result<usize>>;
}

impl Tun for tun::AsyncDevice {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        tun::AsyncDevice::recv(self, buf).await
    }
    async fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
        tun::AsyncDevice::send(self, buf).await
    }
}

impl<T: Tun> Stack<T> {
    pub fn new(tun: T, observer: Box<dyn FlowObserver>) -> Stack<T> {
        let mut queues = Queues {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            free: RefCell::new(Vec::new()),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut queues, SmolInstant::now());
        iface.set_any_ip(true);
        // The stack's own addresses are placeholders (RFC 7335's 192.0.0.8 and a documentation
        // address): every connection names its source explicitly, and the default routes only
        // tell smoltcp that every destination is reachable through the TUN.
        let (v4, v6) = (
            Ipv4Addr::new(192, 0, 0, 8),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8),
        );
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(v4), 32));
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6), 128));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(v4);
        let _ = iface.routes_mut().add_default_ipv6_route(v6);
        Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            queues,
            flows: HashMap::new(),
            datagram_flows: HashMap::new(),
            waiting: Vec::new(),
            closed_at: HashMap::new(),
            wake: Arc::new(Notify::new()),
            tun,
            observer,
        }
    }

    /// Flows open now (for tests and the cleanup check).
    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    /// Runs the stack until `opens` closes or the TUN fails.
    pub async fn run(mut self, mut opens: mpsc::Receiver<Open>) -> std::io::Result<()> {
        // The buffer the next packet from the TUN goes into.
        let mut buf = Queues::buffer(&self.queues.free);
        loop {
            self.turn();
            while let Some(packet) = self.queues.tx.pop_front() {
                // A TUN write fails only if the interface is gone (or a packet is malformed,
                // which the kernel drops and counts); neither is worth stopping for one packet.
                let sent = self.tun.send(&packet.buf[..packet.len]).await;
                Queues::recycle(&self.queues.free, packet.buf);
                if let Err(e) = sent {
                    if e.raw_os_error() == Some(libc::EIO) || e.raw_os_error() == Some(libc::EBADFD)
                    {
                        return Err(e);
                    }
                }
            }
            let delay = self
                .iface
                .poll_delay(SmolInstant::now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(self.next_deadline());
            tokio::select! {
                n = self.tun.recv(&mut buf) => {
                    let len = n?;
                    let full = std::mem::replace(&mut buf, Queues::buffer(&self.queues.free));
                    self.queues.rx.push_back(Packet { buf: full, len });
                    // Take what else is queued now, so the stack runs once per batch.
                    for _ in 1..BATCH {
                        let mut buf = Queues::buffer(&self.queues.free);
                        match self.tun.recv(&mut buf).now_or_never() {
                            Some(Ok(len)) => self.queues.rx.push_back(Packet { buf, len }),
                            Some(Err(e)) => return Err(e),
                            None => {
                                Queues::recycle(&self.queues.free, buf);
                                break;
                            }
                        }
                    }
                }
                open = opens.recv() => match open {
                    Some(open) => self.open(open),
                    None => return Ok(()),
                },
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn next_deadline(&self) -> Duration {
        let now = Instant::now();
        self.flows
            .values()
            .filter_map(|f| match &f.phase {
                Phase::Connecting { deadline, .. } => Some(*deadline),
                Phase::Open => None,
            })
            .chain(self.waiting.iter().map(|(_, deadline)| *deadline))
            .map(|deadline| deadline.saturating_duration_since(now))
            // A waiting open may be one the next millisecond lets through.
            .chain((!self.waiting.is_empty()).then_some(Duration::from_millis(1)))
            .min()
            .unwrap_or(Duration::from_secs(1))
    }

    fn open(&mut self, open: Open) {
        if open.udp {
            return self.open_datagrams(open);
        }
        let deadline = Instant::now() + open.timeout;
        self.start(open, deadline);
    }

    /// A UDP flow has no handshake: it is open as soon as its socket is bound.
    fn open_datagrams(&mut self, open: Open) {
        let started = datagrams::start(
            &mut self.sockets,
            open.client,
            open.service,
            self.wake.clone(),
        );
        match started {
            Ok((handle, flow)) => {
                self.observer.opened(open.client, open.service, true);
                if open.reply.send(Ok(flow.shared.clone())).is_err() {
                    self.observer.closed(open.client, open.service, true);
                    self.sockets.remove(handle);
                    return;
                }
                self.datagram_flows.insert(handle, flow);
            }
            Err(status) => {
                let _ = open.reply.send(Err(status));
            }
        }
    }

    /// Moves every UDP flow's datagrams; ends the flows that are over. Returns whether
    /// anything moved.
    fn service_datagram_flows(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        for (&handle, flow) in &self.datagram_flows {
            let socket = self.sockets.get_mut::<smoltcp::socket::udp::Socket>(handle);
            let (m, done) = datagrams::pump(socket, flow);
            moved |= m;
            if done {
                finished.push(handle);
            }
        }
        for handle in finished {
            if let Some(flow) = self.datagram_flows.remove(&handle) {
                self.observer.closed(flow.client, flow.service, true);
            }
            self.sockets.remove(handle);
        }
        moved
    }

    /// Connects `open`'s socket, which must be connected by `deadline`.
    fn start(&mut self, open: Open, deadline: Instant) {
        let tuple = (open.client, open.service);
        let same_millisecond = self
            .closed_at
            .get(&tuple)
            .is_some_and(|&closed| tsval_now() == closed);
        if same_millisecond || self.flows.values().any(|f| f.tuple == tuple) {
            // The same client address and port to the same service port while a flow still
            // holds that 4-tuple: most often the last connection from a reused client port,
            // still exchanging its final ACK. One 4-tuple cannot carry two connections on the
            // TUN, so the new one waits for the old one to go, until its own deadline. And a
            // SYN in the same millisecond as the old connection's last segment would carry the
            // same timestamp, which the service's TIME_WAIT does not take as newer.
            self.waiting.push((open, deadline));
            return;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        // The stack forwards what it is given at once: the client already chose how to batch.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_timeout(Some(SOCKET_TIMEOUT.into()));
        socket.set_tsval_generator(Some(tsval_now));
        let remote = IpEndpoint::new(IpAddress::from(open.service.ip()), open.service.port());
        let local = IpEndpoint::new(IpAddress::from(open.client.ip()), open.client.port());
        if socket.connect(self.iface.context(), remote, local).is_err() {
            let _ = open.reply.send(Err(DataStatus::Failed));
            return;
        }
        self.observer.opened(open.client, open.service, false);
        let handle = self.sockets.add(socket);
        self.flows.insert(
            handle,
            Flow {
                shared: FlowShared::new(self.wake.clone()),
                phase: Phase::Connecting {
                    reply: open.reply,
                    deadline,
                },
                fin_seen: false,
                last_state: tcp::State::SynSent,
                fin_sent: false,
                end_passed: false,
                closed_cleanly: false,
                tuple,
            },
        );
    }

    /// Runs the stack until nothing more moves: packets in, bytes between sockets and pipes,
    /// packets out.
    fn turn(&mut self) {
        for _ in 0..16 {
            let _ = self
                .iface
                .poll(SmolInstant::now(), &mut self.queues, &mut self.sockets);
            let tcp = self.service_flows();
            if !(self.service_datagram_flows() || tcp) {
                break;
            }
        }
    }

    /// Moves bytes between each flow's socket and pipes. Returns whether anything moved.
    fn service_flows(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        let now = Instant::now();
        for (&handle, flow) in self.flows.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if let Phase::Connecting { deadline, .. } = &flow.phase {
                let status = match socket.state() {
                    tcp::State::SynSent if now >= *deadline => Some(DataStatus::TimedOut),
                    tcp::State::SynSent => continue,
                    tcp::State::Closed | tcp::State::TimeWait => Some(DataStatus::Refused),
                    _ => None,
                };
                let Phase::Connecting { reply, .. } =
                    std::mem::replace(&mut flow.phase, Phase::Open)
                else {
                    unreachable!("matched above")
                };
                if let Some(status) = status {
                    socket.abort();
                    let _ = reply.send(Err(status));
                    finished.push(handle);
                    continue;
                }
                if reply.send(Ok(flow.shared.clone())).is_err() {
                    // Nobody waits for it any more (the open timed out on the other side).
                    socket.abort();
                    finished.push(handle);
                    continue;
                }
                moved = true;
            }
            let before = flow.last_state;
            moved |= pump(socket, flow);
            let state = socket.state();
            let clean = state == tcp::State::TimeWait
                || (state == tcp::State::Closed && before == tcp::State::LastAck);
            flow.closed_cleanly = clean;
            // Bytes still in the socket's buffer are passed on before the flow goes.
            if (state == tcp::State::Closed || state == tcp::State::TimeWait) && !socket.can_recv()
            {
                if !flow.end_passed {
                    let mut pipe = flow.shared.to_gateway();
                    if clean {
                        pipe.eof = true;
                    } else {
                        pipe.reset = true;
                    }
                    drop(pipe);
                    flow.shared.gateway_data.notify_one();
                }
                finished.push(handle);
            }
        }
        let ms = tsval_now();
        // Only the current millisecond matters (see `start`).
        self.closed_at.retain(|_, &mut closed| closed == ms);
        for handle in finished {
            if let Some(flow) = self.flows.remove(&handle) {
                self.observer.closed(flow.tuple.0, flow.tuple.1, false);
                if flow.closed_cleanly {
                    self.closed_at.insert(flow.tuple, ms);
                }
            }
            self.sockets.remove(handle);
        }
        if !self.waiting.is_empty() {
            for (open, deadline) in std::mem::take(&mut self.waiting) {
                if now >= deadline {
                    let _ = open.reply.send(Err(DataStatus::TimedOut));
                } else {
                    // Back into `waiting` if the tuple is still held.
                    let held = self.waiting.len();
                    self.start(open, deadline);
                    moved |= self.waiting.len() == held;
                }
            }
        }
        moved
    }
}

/// Moves one open flow's bytes. Returns whether anything moved.
fn pump(socket: &mut tcp::Socket<'_>, flow: &mut Flow) -> bool {
    let mut moved = false;
    // Gateway → service.
    {
        let mut pipe = flow.shared.to_service();
        if pipe.reset {
            socket.abort();
            drop(pipe);
            flow.end_passed = true;
            flow.shared.to_gateway().reset = true;
            flow.shared.gateway_data.notify_one();
            return true;
        }
        let before = pipe.buf.len();
        while socket.can_send() && !pipe.buf.is_empty() {
            let (head, _) = pipe.buf.as_slices();
            match socket.send_slice(head) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    pipe.buf.drain(..n);
                }
            }
        }
        if pipe.eof && pipe.buf.is_empty() && !flow.fin_sent {
            socket.close();
            flow.fin_sent = true;
            moved = true;
        }
        if pipe.buf.len() != before {
            moved = true;
            flow.shared.service_space.notify_one();
        }
    }
    // Service → gateway.
    {
        let mut pipe = flow.shared.to_gateway();
        let before = pipe.buf.len();
        while socket.can_recv() && pipe.space() > 0 {
            let space = pipe.space();
            let taken = socket.recv(|data| {
                let n = data.len().min(space);
                pipe.buf.extend(&data[..n]);
                (n, n)
            });
            if !matches!(taken, Ok(n) if n > 0) {
                break;
            }
        }
        if matches!(
            socket.state(),
            tcp::State::CloseWait
                | tcp::State::LastAck
                | tcp::State::Closing
                | tcp::State::TimeWait
        ) {
            flow.fin_seen = true;
        }
        let pass_fin = flow.fin_seen && !flow.end_passed && !socket.can_recv();
        if pass_fin {
            pipe.eof = true;
            flow.end_passed = true;
        }
        if pipe.buf.len() != before || pass_fin {
            moved = true;
            drop(pipe);
            flow.shared.gateway_data.notify_one();
        }
    }
    flow.last_state = socket.state();
    moved
}

/// TCP timestamps for the stack's connections: milliseconds, as Linux's own, counted from the
/// wall clock when the client started and then monotonically, so they rise across connections
/// and across restarts.
///
/// Why at all: a service that closes first keeps the connection in TIME_WAIT, and the next
/// internet client to reuse that address and port arrives on the same 4-tuple. Linux takes a
/// SYN for a TIME_WAIT tuple only if its sequence number is higher (a random ISN: one time in
/// two) or its timestamp is newer; otherwise it answers with an ACK, smoltcp resets, and the
/// connection waits a second for its SYN to be retransmitted. Measured before this: 8 clients
/// opening connections in a loop saw 1 s stalls and 169 connections/s.
fn tsval_now() -> u32 {
    static START: std::sync::OnceLock<(std::time::Instant, u64)> = std::sync::OnceLock::new();
    let (start, wall_ms) = START.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        (std::time::Instant::now(), wall.as_millis() as u64)
    });
    // Wrapping is part of TCP timestamps: peers compare them modulo 2^32.
    (wall_ms + start.elapsed().as_millis() as u64) as u32
}

/// Which TUN address a client of `client`'s family reaches, if the tunnel has one.
pub fn service_addr(
    client: SocketAddr,
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    port: u16,
) -> Option<SocketAddr> {
    match client.ip() {
        IpAddr::V4(_) => v4.map(|a| SocketAddr::new(IpAddr::V4(a), port)),
        IpAddr::V6(_) => v6.map(|a| SocketAddr::new(IpAddr::V6(a), port)),
    }
}
