//! One client connection: sniff, route, connect, replay, forward.
use std::{io::ErrorKind, net::SocketAddr, sync::Arc, time::Duration};

use socket2::SockRef;
use tokio::{net::TcpStream, time::Instant};

use crate::{
    access_log::{AccessRecord, Outcome},
    config::{GatewaySettings, ListenerConfig, Target},
    forward::{
        self,
        kernel::{self, KernelPath, SpliceError},
        userspace::{reset_on_close, write_all},
        Forwarded, PathKind,
    },
    reply::{self, Refusal},
    route::{AcmeAction, RouteTable},
    sniff::{classify, dial::DialStatus, Classified, Detected, Malformed, Protocol},
    upstream::{self, ConnectError},
};

/// The parts of the config a connection reads; swapped as a whole on reload.
pub struct Snapshot {
    pub settings: GatewaySettings,
    pub routes: RouteTable,
    /// The kernel forwarding path, when it is loaded and the config allows it.
    pub kernel: Option<Arc<KernelPath>>,
}

/// How long a refusal may take to write and drain, so a client that does not read cannot
/// hold the connection open.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Handles a connection to the end and returns its access record.
pub async fn handle(
    snapshot: Arc<Snapshot>,
    listener: Arc<ListenerConfig>,
    listener_name: Arc<str>,
    client: TcpStream,
    peer: SocketAddr,
) -> AccessRecord {
    let mut rec = AccessRecord::new(peer, listener_name);
    rec.outcome = serve(&snapshot, &listener, &client, &mut rec).await;
    rec
}

async fn serve(
    snap: &Snapshot,
    listener: &ListenerConfig,
    client: &TcpStream,
    rec: &mut AccessRecord,
) -> Outcome {
    let _ = client.set_nodelay(true);
    let local_port = match client.local_addr() {
        Ok(a) => a.port(),
        Err(e) => return fail(rec, Outcome::Error, e),
    };
    let mut buf = Vec::new();
    let detected = match sniff(client, &listener.protocols, &snap.settings, &mut buf).await {
        Ok(d) => d,
        Err(SniffError::Malformed(protocol, why)) => {
            rec.protocol = Some(protocol);
            rec.detail = Some(why.to_string());
            refuse(client, Some(protocol), Refusal::Malformed).await;
            return Outcome::Malformed;
        }
        Err(e) => {
            rec.detail = Some(e.to_string());
            close_gracefully(client).await;
            return e.outcome();
        }
    };
    rec.protocol = detected.as_ref().map(Detected::protocol);
    rec.host = detected.as_ref().and_then(Detected::host).cloned();

    let plan = match plan(detected.as_ref(), listener, &snap.routes, local_port) {
        Some(plan) => plan,
        None => {
            refuse(client, rec.protocol, Refusal::NoRoute).await;
            return if detected.is_some() {
                Outcome::NoRoute
            } else {
                Outcome::Unrecognized
            };
        }
    };
    let (target, default_port) = match plan {
        Plan::Redirect(location) => {
            rec.target = Some(location.clone());
            let _ = write_all(client, &reply::http_redirect(&location)).await;
            close_gracefully(client).await;
            return Outcome::AcmeRedirect;
        }
        Plan::Connect {
            target,
            default_port,
        } => (target, default_port),
    };
    rec.target = Some(target.to_string());

    let (upstream, addr) =
        match upstream::connect(&target, default_port, snap.settings.connect_timeout).await {
            Ok(ok) => ok,
            Err(e) => {
                let (refusal, outcome) = match e {
                    ConnectError::Timeout(_) => (Refusal::Timeout, Outcome::UpstreamTimeout),
                    _ => (Refusal::Unreachable, Outcome::UpstreamUnreachable),
                };
                rec.detail = Some(e.to_string());
                refuse(client, rec.protocol, refusal).await;
                return outcome;
            }
        };
    rec.upstream = Some(addr);

    // The dial header is the one preamble the gateway consumes; everything else is replayed
    // exactly as the client sent it.
    let mut replay = &buf[..];
    if let Some(Detected::Dial(req)) = &detected {
        replay = buf.get(req.header_len..).unwrap_or_default();
        if let Err(e) = write_all(client, DialStatus::Connected.reply_line()).await {
            return fail(rec, Outcome::ClientReset, e);
        }
    }
    if let Err(e) = write_all(&upstream, replay).await {
        reset_on_close(client);
        return fail(rec, Outcome::UpstreamReset, e);
    }
    rec.up_bytes = replay.len() as u64;

    let path = forward::choose(listener.data_path, rec.protocol, snap.kernel.is_some());
    let done = match forward_established(path, buf.len() as u64, snap, client, &upstream, rec).await
    {
        Ok(done) => done,
        Err(e) => {
            reset_on_close(client);
            reset_on_close(&upstream);
            return fail(rec, Outcome::Error, std::io::Error::other(e.to_string()));
        }
    };
    rec.path = Some(done.path);
    rec.up_bytes += done.up_bytes;
    rec.down_bytes = done.down_bytes;
    rec.copied_bytes += done.copied_bytes;
    let outcome = done.outcome();
    if outcome != Outcome::Ok {
        rec.detail = Some(format!("up: {:?}, down: {:?}", done.up_end, done.down_end));
    }
    outcome
}

/// Forwards a routed connection on the path chosen for it, falling back to copying for a
/// connection the kernel path cannot take. `sniffed` is how many bytes sniffing read.
async fn forward_established(
    path: PathKind,
    sniffed: u64,
    snap: &Snapshot,
    client: &TcpStream,
    upstream: &TcpStream,
    rec: &mut AccessRecord,
) -> Result<Forwarded, SpliceError> {
    let settings = &snap.settings;
    match (path, &snap.kernel) {
        (PathKind::Kernel, Some(kernel)) => {
            let spliced = match kernel::drain_partial(client, upstream).await {
                Ok(drained) => {
                    rec.up_bytes += drained;
                    rec.copied_bytes += drained;
                    kernel.splice(client, upstream, sniffed + drained).await
                }
                Err(e) => Err(e),
            };
            match spliced {
                Err(SpliceError::Unavailable(why)) => {
                    // Expected for a client that half-closed before the splice (the kernel
                    // only takes established sockets); the access log shows the path taken.
                    tracing::debug!(%why, "kernel path cannot take this connection");
                }
                result => return result,
            }
        }
        (PathKind::Splice, _) => {
            return Ok(forward::splice::forward(client, upstream, settings.pipe_size).await)
        }
        _ => {}
    }
    Ok(forward::userspace::forward(client, upstream, settings.buffer_size).await)
}

fn fail(rec: &mut AccessRecord, outcome: Outcome, e: std::io::Error) -> Outcome {
    rec.detail = Some(e.to_string());
    outcome
}

#[derive(Debug, thiserror::Error)]
enum SniffError {
    #[error("no host named within the sniff timeout")]
    Timeout,
    #[error("no host named within max_sniff_bytes")]
    Limit,
    #[error("client closed before naming a host")]
    ClientClosed,
    #[error("{0}: {1}")]
    Malformed(Protocol, Malformed),
    #[error("reading the client: {0}")]
    Io(std::io::Error),
}

impl SniffError {
    fn outcome(&self) -> Outcome {
        match self {
            SniffError::Timeout => Outcome::SniffTimeout,
            SniffError::Limit => Outcome::SniffLimit,
            SniffError::ClientClosed => Outcome::ClientClosed,
            SniffError::Malformed(..) => Outcome::Malformed,
            SniffError::Io(_) => Outcome::ClientReset,
        }
    }
}

/// Reads until the listener's sniffers decide, within the time and byte budget. The whole
/// budget is one deadline, so a client trickling a byte at a time gains nothing.
async fn sniff(
    client: &TcpStream,
    protocols: &[Protocol],
    settings: &GatewaySettings,
    buf: &mut Vec<u8>,
) -> Result<Option<Detected>, SniffError> {
    let deadline = Instant::now() + settings.sniff_timeout;
    let max = settings.max_sniff_bytes;
    loop {
        match classify(protocols, buf) {
            Classified::NeedMore => {}
            Classified::Detected(d) => return Ok(Some(d)),
            Classified::Unrecognized => return Ok(None),
            Classified::Malformed(p, m) => return Err(SniffError::Malformed(p, m)),
        }
        if buf.len() >= max {
            return Err(SniffError::Limit);
        }
        let readable = tokio::time::timeout_at(deadline, client.readable()).await;
        match readable {
            Err(_) => return Err(SniffError::Timeout),
            Ok(Err(e)) => return Err(SniffError::Io(e)),
            Ok(Ok(())) => {}
        }
        let mut chunk = Vec::with_capacity((max - buf.len()).min(8192));
        match client.try_read_buf(&mut chunk) {
            Ok(0) => return Err(SniffError::ClientClosed),
            Ok(_) => buf.extend_from_slice(&chunk),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(SniffError::Io(e)),
        }
    }
}

enum Plan {
    Connect { target: Target, default_port: u16 },
    Redirect(String),
}

/// Decides where a sniffed connection goes. `None` means nowhere: no route and no default.
fn plan(
    detected: Option<&Detected>,
    listener: &ListenerConfig,
    routes: &RouteTable,
    local_port: u16,
) -> Option<Plan> {
    let default_port = match detected {
        Some(Detected::Dial(req)) => req.port,
        _ => local_port,
    };
    let connect = |target: &Target| Plan::Connect {
        target: target.clone(),
        default_port,
    };
    let route = detected
        .and_then(Detected::host)
        .and_then(|host| routes.lookup(host, &listener.name));
    match (detected, route) {
        (Some(Detected::Acme(challenge)), Some(route)) => Some(match &route.acme {
            Some(AcmeAction::Proxy(target)) => connect(target),
            Some(AcmeAction::Redirect(base)) => Plan::Redirect(format!("{base}{}", challenge.path)),
            None => connect(&route.to),
        }),
        (_, Some(route)) => Some(connect(&route.to)),
        // A dial names its destination explicitly; sending it to a default would connect the
        // client somewhere it did not ask for.
        (Some(Detected::Dial(_)), None) => None,
        (_, None) => listener.default.as_ref().map(connect),
    }
}

/// Sends the protocol's refusal, then closes without a reset so the client can read it.
async fn refuse(client: &TcpStream, protocol: Option<Protocol>, refusal: Refusal) {
    let bytes = reply::refusal(protocol, refusal);
    let _ = tokio::time::timeout(REFUSAL_LINGER, write_all(client, &bytes)).await;
    close_gracefully(client).await;
}

/// Sends FIN and discards what the client still sends for a moment: closing with unread input
/// would make the kernel answer with RST and the client could lose the reply.
async fn close_gracefully(client: &TcpStream) {
    let _ = SockRef::from(client).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut discarded = 0usize;
        let mut scratch = Vec::with_capacity(4096);
        while discarded < 64 * 1024 {
            if client.readable().await.is_err() {
                return;
            }
            scratch.clear();
            match client.try_read_buf(&mut scratch) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}
