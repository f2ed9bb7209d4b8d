//! One UDP session, from its first datagram to its idle timeout: sniff (QUIC listeners),
//! route, open the upstream socket, forward both ways, record.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::UdpSocket, sync::mpsc, time::Instant};

use super::{
    fast::{SessionFlows, UdpFastPath},
    flow::Flow,
    socket::ListenSocket,
    Control, Key, SessionSlot, MAX_DATAGRAM,
};
use crate::{
    access_log::{AccessRecord, Outcome},
    config::{ListenerConfig, Target, TargetHost},
    metrics::Metrics,
    pipeline::{route, Snapshot},
    sniff::{quic, Detected, Protocol, Sniff},
    tunnel::hub::Hub,
};

/// A session socket's buffers.
const UPSTREAM_BUFFER: usize = 1 << 20;

pub struct Session {
    /// The client and the local address it sent to.
    pub key: Key,
    /// The kernel path, when it is loaded and the listener's `data_path` allows it.
    pub fast: Option<Arc<UdpFastPath>>,
    pub listener: Arc<ListenerConfig>,
    pub snapshot: Arc<Snapshot>,
    pub socket: Arc<ListenSocket>,
    pub metrics: Arc<Metrics>,
    pub tunnels: Arc<Hub>,
    pub control: mpsc::UnboundedSender<Control>,
    pub slot: SessionSlot,
}

/// Datagram counts and bytes, each way.
#[derive(Default)]
pub(super) struct Counts {
    pub up: (u64, u64),
    pub down: (u64, u64),
    /// Of those, the datagrams the kernel forwarded (up, down).
    pub kernel: Option<(u64, u64)>,
}

impl Session {
    pub async fn run(self, mut rx: mpsc::Receiver<Vec<u8>>) {
        let _active = self.metrics.open_udp_session();
        let mut rec = AccessRecord::new(self.key.0, Arc::from(self.listener.name.as_str()));
        rec.raw = self.listener.to.is_some();
        let mut counts = Counts::default();
        rec.outcome = self.serve(&mut rx, &mut rec, &mut counts).await;
        rec.datagrams = Some((counts.up.0, counts.down.0));
        rec.kernel_datagrams = counts.kernel;
        rec.up_bytes = counts.up.1;
        rec.down_bytes = counts.down.1;
        let _ = self.control.send(Control::Ended(self.key));
        crate::pipeline::record::record(&rec, &self.metrics);
        drop(self.slot);
    }

    pub(super) fn client(&self) -> SocketAddr {
        self.key.0
    }

    pub(super) fn local(&self) -> SocketAddr {
        self.key.1
    }

    async fn serve(
        &self,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        rec: &mut AccessRecord,
        counts: &mut Counts,
    ) -> Outcome {
        let settings = &self.snapshot.settings;
        let idle = settings.udp_idle_timeout;
        // Admit: the listener's lists, before anything is read.
        if !self.listener.acl.permits(self.client().ip()) {
            return self.refused(rx, Outcome::Denied, idle).await;
        }
        // Sniff: hold the datagrams until the Initial packets name a host.
        let mut held: Vec<Vec<u8>> = Vec::new();
        let target = match &self.listener.to {
            Some(to) => to.clone(),
            None => {
                let deadline = Instant::now() + settings.sniff_timeout;
                let detected = match self
                    .sniff(rx, &mut held, deadline, settings.max_sniff_bytes)
                    .await
                {
                    Ok(d) => d,
                    Err((outcome, why)) => {
                        rec.detail = Some(why.to_string());
                        rec.protocol = (outcome == Outcome::Malformed).then_some(Protocol::Quic);
                        return self.refused(rx, outcome, idle).await;
                    }
                };
                self.metrics.sniffed(rec.started.elapsed());
                rec.protocol = detected.as_ref().map(|_| Protocol::Quic);
                rec.host = detected.as_ref().and_then(Detected::host).cloned();
                let plan = route::plan(
                    detected.as_ref(),
                    &self.listener,
                    &self.snapshot.routes,
                    self.local().port(),
                    self.client().ip(),
                );
                match plan {
                    Some(route::Plan::Connect { target, .. }) => target,
                    Some(route::Plan::Denied) => {
                        return self.refused(rx, Outcome::Denied, idle).await
                    }
                    _ if detected.is_some() => {
                        return self.refused(rx, Outcome::NoRoute, idle).await
                    }
                    _ => return self.refused(rx, Outcome::Unrecognized, idle).await,
                }
            }
        };
        rec.target = Some(target.to_string());
        if let TargetHost::Tunnel(name) = &target.host {
            let port = target.port.unwrap_or(self.local().port());
            let timeout = settings.connect_timeout;
            let connecting = Instant::now();
            let stream = match self
                .tunnels
                .open(name, self.client(), port, timeout, true)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    rec.detail = Some(e.to_string());
                    return self.refused(rx, Outcome::UpstreamUnreachable, idle).await;
                }
            };
            self.metrics.connected(connecting.elapsed());
            rec.upstream = stream.peer_addr().ok();
            return super::tunnel::forward(self, rx, stream, held, idle, counts, rec).await;
        }
        // Connect: a socket of its own, connected to the upstream, so replies are this
        // session's and nobody else's.
        let connecting = Instant::now();
        let upstream =
            match open_upstream(&target, self.local().port(), settings.connect_timeout).await {
                Ok(u) => u,
                Err(why) => {
                    rec.detail = Some(why);
                    return self.refused(rx, Outcome::UpstreamUnreachable, idle).await;
                }
            };
        self.metrics.connected(connecting.elapsed());
        rec.upstream = upstream.peer_addr().ok();
        let kernel = self.kernel_flows(&upstream).await;
        // Forward: hand the upstream to the receive loop with what was held, in order and
        // unchanged; from then on the loop sends the client's datagrams straight up. Closing
        // the queue first means nothing can be left in it behind the handover.
        rx.close();
        while let Ok(d) = rx.try_recv() {
            held.push(d);
        }
        let flow = Arc::new(Flow::new(upstream));
        let _ = self.control.send(Control::Ready(
            self.key,
            flow.clone(),
            held,
            kernel.map(Box::new),
        ));
        let outcome = self.forward(&flow, idle, counts, rec).await;
        counts.up = flow.up();
        if let (Some(fast), Some(flows)) = (&self.fast, flow.kernel.get()) {
            let (up, down) = fast.remove(flows);
            counts.up.0 += up.datagrams;
            counts.up.1 += up.bytes;
            counts.down.0 += down.datagrams;
            counts.down.1 += down.bytes;
            counts.kernel = Some((up.datagrams, down.datagrams));
            self.metrics.udp_datagrams("up").inc_by(up.datagrams);
            self.metrics.udp_datagrams("down").inc_by(down.datagrams);
        }
        outcome
    }

    /// Both directions of the session for the kernel path, when it may take it.
    async fn kernel_flows(&self, upstream: &UdpSocket) -> Option<(Arc<UdpFastPath>, SessionFlows)> {
        let fast = self.fast.as_ref()?;
        let (socket, peer) = (upstream.local_addr().ok()?, upstream.peer_addr().ok()?);
        match fast
            .prepare(self.client(), self.local(), socket, peer)
            .await
        {
            Ok(flows) => Some((fast.clone(), flows)),
            Err(why) => {
                tracing::debug!(client = %self.client(), why, "UDP session stays in user space");
                None
            }
        }
    }

    /// Reads datagrams until the QUIC sniffer decides: the detected ClientHello (`None`: not
    /// QUIC at all), or the outcome to refuse with.
    async fn sniff(
        &self,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        held: &mut Vec<Vec<u8>>,
        deadline: Instant,
        max: usize,
    ) -> Result<Option<Detected>, (Outcome, &'static str)> {
        let mut bytes = 0;
        loop {
            let datagram = match tokio::time::timeout_at(deadline, rx.recv()).await {
                Err(_) => {
                    return Err((
                        Outcome::SniffTimeout,
                        "no whole ClientHello within the sniff timeout",
                    ))
                }
                Ok(None) => return Err((Outcome::ClientClosed, "the listener stopped")),
                Ok(Some(d)) => d,
            };
            bytes += datagram.len();
            held.push(datagram);
            let views: Vec<&[u8]> = held.iter().map(Vec::as_slice).collect();
            match quic::sniff(&views) {
                Sniff::Found(host) => return Ok(Some(Detected::Tls(host))),
                Sniff::NotThis => return Ok(None),
                Sniff::Malformed(why) => return Err((Outcome::Malformed, why.0)),
                Sniff::Incomplete if bytes >= max => {
                    return Err((
                        Outcome::SniffLimit,
                        "no whole ClientHello within max_sniff_bytes",
                    ))
                }
                Sniff::Incomplete => {}
            }
        }
    }

    /// Sends the upstream's datagrams to the client, from the address the client sent to,
    /// until neither side has sent for `idle`.
    async fn forward(
        &self,
        flow: &Flow,
        idle: Duration,
        counts: &mut Counts,
        rec: &mut AccessRecord,
    ) -> Outcome {
        let down = self.metrics.udp_datagrams("down");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut last_down = Instant::now();
        loop {
            let quiet_since = last_down
                .max(flow.last_up())
                .max(self.kernel_last(flow).unwrap_or(last_down));
            tokio::select! {
                r = flow.upstream.recv(&mut buf) => match r {
                    Ok(n) => {
                        last_down = Instant::now();
                        match self.socket.send(&buf[..n], self.client(), self.local()).await {
                            Ok(()) => {
                                counts.down.0 += 1;
                                counts.down.1 += n as u64;
                                down.inc();
                            }
                            Err(e) => rec.detail = Some(format!("to the client: {e}")),
                        }
                    }
                    // An ICMP error from the upstream (port unreachable): UDP carries on, as
                    // the upstream may come back; the record says what happened last.
                    Err(e) => rec.detail = Some(format!("from the upstream: {e}")),
                },
                _ = tokio::time::sleep_until(quiet_since + idle) => {
                    // The client may have sent meanwhile: only a full quiet period ends it.
                    let last = last_down
                        .max(flow.last_up())
                        .max(self.kernel_last(flow).unwrap_or(last_down));
                    if Instant::now() >= last + idle {
                        return Outcome::Ok;
                    }
                }
            }
        }
    }

    /// When the kernel last forwarded a datagram of the session, either way; `None` if never.
    /// Its clock is CLOCK_MONOTONIC, as `Instant`'s is.
    fn kernel_last(&self, flow: &Flow) -> Option<Instant> {
        let (fast, flows) = (self.fast.as_ref()?, flow.kernel.get()?);
        let (up, down) = fast.counts(flows);
        let last_ns = up.last_ns.max(down.last_ns);
        if last_ns == 0 {
            return None;
        }
        let clock = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        let now_ns = clock.tv_sec() as u64 * 1_000_000_000 + clock.tv_nsec() as u64;
        let now = Instant::now();
        now.checked_sub(Duration::from_nanos(now_ns.saturating_sub(last_ns)))
    }

    /// A refused session stays until it has been quiet for the idle timeout, dropping what
    /// its client sends, so that a client sending on and on costs one log line, not one per
    /// datagram. It holds no socket meanwhile, and counts against the cap.
    async fn refused(
        &self,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        outcome: Outcome,
        idle: Duration,
    ) -> Outcome {
        while let Ok(Some(_)) = tokio::time::timeout(idle, rx.recv()).await {
            self.metrics.udp_dropped(outcome.as_str());
        }
        outcome
    }
}

/// A UDP socket connected to the target: its first address, resolved within `timeout`.
async fn open_upstream(
    target: &Target,
    default_port: u16,
    timeout: Duration,
) -> Result<UdpSocket, String> {
    let port = target.port.unwrap_or(default_port);
    let addr = match &target.host {
        TargetHost::Ip(ip) => SocketAddr::new(*ip, port),
        TargetHost::Tunnel(name) => {
            return Err(format!(
                "tunnel {name}: UDP through tunnels is not supported yet"
            ))
        }
        TargetHost::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout(timeout, lookup).await {
                Err(_) => return Err(format!("resolving {name}: timed out")),
                Ok(Err(e)) => return Err(format!("resolving {name}: {e}")),
                Ok(Ok(mut addrs)) => addrs
                    .next()
                    .ok_or_else(|| format!("{name} resolved to no addresses"))?,
            }
        }
    };
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap_or(addr)
    } else {
        "0.0.0.0:0".parse().unwrap_or(addr)
    };
    let socket = upstream_socket(bind).map_err(|e| format!("{addr}: {e}"))?;
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    Ok(socket)
}

/// The session's own socket, with [`UPSTREAM_BUFFER`] buffers: replies arrive in bursts (a QUIC server's flight, a DNS server's
/// answers), and the default 208 KiB drops a burst of large datagrams before the session's
/// task runs.
fn upstream_socket(bind: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        None,
    )?;
    super::socket::size_buffers(&socket, UPSTREAM_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&bind.into())?;
    UdpSocket::from_std(socket.into())
}
