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
    let outcome = Outcome::of(&done);
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
///
/// Classifying reads the whole buffer, so doing it after every read made a one-byte trickle
/// cost O(n^2) up to `max_sniff_bytes`. A buffer past `CHEAP_SNIFF` bytes is classified again
/// only once it has grown by an eighth, or when the client has gone quiet for `SNIFF_QUIET`
/// (it may have sent all it will before an answer), or at the byte limit: O(n log n) bytes
/// scanned, plus one scan per quiet pause.
async fn sniff(
    client: &TcpStream,
    protocols: &[Protocol],
    settings: &GatewaySettings,
    buf: &mut Vec<u8>,
) -> Result<Option<Detected>, SniffError> {
    let deadline = Instant::now() + settings.sniff_timeout;
    let max = settings.max_sniff_bytes;
    let mut rescan = Rescan::default();
    let mut quiet = false;
    loop {
        if rescan.due(buf.len(), max, quiet) {
            match classify(protocols, buf) {
                Classified::NeedMore => {}
                Classified::Detected(d) => return Ok(Some(d)),
                Classified::Unrecognized => return Ok(None),
                Classified::Malformed(p, m) => return Err(SniffError::Malformed(p, m)),
            }
            if buf.len() >= max {
                return Err(SniffError::Limit);
            }
        }
        // Bytes not yet classified: wait only briefly for more before classifying them.
        let pending = rescan.pending(buf.len());
        let wait_until = if pending {
            deadline.min(Instant::now() + SNIFF_QUIET)
        } else {
            deadline
        };
        match tokio::time::timeout_at(wait_until, client.readable()).await {
            Err(_) if pending && Instant::now() < deadline => {
                quiet = true;
                continue;
            }
            Err(_) => return Err(SniffError::Timeout),
            Ok(Err(e)) => return Err(SniffError::Io(e)),
            Ok(Ok(())) => {}
        }
        quiet = false;
        let mut chunk = Vec::with_capacity((max - buf.len()).min(8192));
        match client.try_read_buf(&mut chunk) {
            Ok(0) if pending => {
                // The client is done sending: decide on what it sent.
                if let Some(d) = decide_final(protocols, buf)? {
                    return Ok(d);
                }
                return Err(SniffError::ClientClosed);
            }
            Ok(0) => return Err(SniffError::ClientClosed),
            Ok(_) => buf.extend_from_slice(&chunk),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(SniffError::Io(e)),
        }
    }
}

/// When the growing sniff buffer is worth classifying again.
#[derive(Default)]
struct Rescan {
    /// Buffer length at the last classification; `None` before the first.
    classified: Option<usize>,
}

impl Rescan {
    /// Whether to classify a buffer of `len` bytes now; if so, it counts as classified.
    fn due(&mut self, len: usize, max: usize, quiet: bool) -> bool {
        let due = match self.classified {
            None => true,
            Some(at) => {
                len > at && (len <= CHEAP_SNIFF || len >= at + at / 8 || len >= max || quiet)
            }
        };
        if due {
            self.classified = Some(len);
        }
        due
    }

    /// Whether some of a buffer of `len` bytes has not been classified.
    fn pending(&self, len: usize) -> bool {
        self.classified.is_some_and(|at| len > at)
    }
}

/// A buffer up to this size is classified after every read: cheap, and most preambles are
/// this small.
const CHEAP_SNIFF: usize = 4096;
/// How long a larger buffer with unclassified bytes waits for more before it is classified.
const SNIFF_QUIET: std::time::Duration = std::time::Duration::from_millis(10);

/// The classification of bytes a client sent before half-closing: a decision, or `None`
/// when they still do not decide anything.
fn decide_final(
    protocols: &[Protocol],
    buf: &[u8],
) -> Result<Option<Option<Detected>>, SniffError> {
    match classify(protocols, buf) {
        Classified::NeedMore => Ok(None),
        Classified::Detected(d) => Ok(Some(Some(d))),
        Classified::Unrecognized => Ok(Some(None)),
        Classified::Malformed(p, m) => Err(SniffError::Malformed(p, m)),
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

#[cfg(test)]
mod tests {
    use super::Rescan;

    /// A client trickling one byte per read up to a 1 MiB budget: classifying after every
    /// read scanned n^2/2 = 550 GB; the rescan schedule must keep it to O(n log n).
    #[test]
    fn a_one_byte_trickle_is_scanned_in_n_log_n() {
        const MAX: usize = 1 << 20;
        let mut rescan = Rescan::default();
        let mut scanned = 0u64;
        for len in 1..=MAX {
            if rescan.due(len, MAX, false) {
                scanned += len as u64;
            }
        }
        assert!(scanned < 32 << 20, "scanned {scanned} bytes");
        // The full buffer is always looked at before the byte limit refuses it.
        assert!(!rescan.pending(MAX));
    }

    #[test]
    fn quiet_clients_and_small_buffers_are_classified_at_once() {
        let mut rescan = Rescan::default();
        assert!(rescan.due(10, 1 << 20, false));
        assert!(rescan.due(11, 1 << 20, false), "small buffers: every read");
        assert!(rescan.due(100_000, 1 << 20, false));
        assert!(!rescan.due(100_001, 1 << 20, false));
        assert!(rescan.pending(100_001));
        assert!(
            rescan.due(100_001, 1 << 20, true),
            "a quiet client is not kept waiting"
        );
        assert!(
            !rescan.due(100_001, 1 << 20, true),
            "nothing new, nothing to do"
        );
    }
}
