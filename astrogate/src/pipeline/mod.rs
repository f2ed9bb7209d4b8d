//! One client connection, stage by stage:
//! accept → admit → preamble → sniff → route → connect → forward → record.
//!
//! `accept` is the runtime's listener loop; it hands each connection here with the config
//! snapshot that was current when it was accepted, and the connection keeps that snapshot to
//! its end. Each later stage is a module.
pub mod admit;
pub mod connect;
mod forward;
mod preamble;
pub mod record;
mod refuse;
pub mod route;
mod sniff;

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpStream, time::Instant};

use crate::{
    access_log::{AccessRecord, Outcome},
    config::{DataPath, GatewaySettings, ListenerConfig},
    forward::{kernel::KernelPath, userspace::reset_on_close, userspace::write_all},
    metrics::Metrics,
    proxy_protocol,
    reply::{self, Refusal},
    route::RouteTable,
    sniff::{dial::DialStatus, Detected},
    target::TargetHost,
    tunnel::hub::Hub,
};
use admit::{Limiter, Rejection};
use refuse::{close_gracefully, refuse};
use route::Plan;
use sniff::SniffError;

/// The parts of the config a connection reads. Immutable: a reload swaps in a new one, and
/// connections already accepted keep the one they started with.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: GatewaySettings,
    pub routes: RouteTable,
}

/// What outlives a config and every stage may use: the loaded kernel path, the tunnel
/// sessions, the limits' counts and the metrics.
#[derive(Clone)]
pub struct Shared {
    pub kernel: Option<Arc<KernelPath>>,
    pub tunnels: Arc<Hub>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
}

/// Handles a connection to the end and returns its access record. `bound` is the listening
/// socket's address when it names one (not a wildcard): the connection's local address.
pub async fn handle(
    snapshot: Arc<Snapshot>,
    shared: Shared,
    listener: Arc<ListenerConfig>,
    client: TcpStream,
    peer: SocketAddr,
    bound: Option<SocketAddr>,
) -> AccessRecord {
    let mut rec = AccessRecord::new(peer, Arc::from(listener.name.as_str()));
    rec.raw = listener.to.is_some();
    rec.outcome = serve(&snapshot, &shared, &listener, &client, &mut rec, bound).await;
    rec
}

async fn serve(
    snap: &Snapshot,
    shared: &Shared,
    listener: &ListenerConfig,
    client: &TcpStream,
    rec: &mut AccessRecord,
    bound: Option<SocketAddr>,
) -> Outcome {
    // TCP_NODELAY comes from the listening socket (`runtime::listeners::bind_one`).
    let local = bound.map_or_else(|| client.local_addr(), Ok);
    let mut local = match local {
        Ok(a) => a,
        Err(e) => return fail(rec, Outcome::Error, e),
    };
    let local_port = local.port();
    // Held to the end of the connection: it counts the connection against the limits.
    let mut admission = match admit::admit(snap, &shared.limiter) {
        Ok(admission) => admission,
        Err(rejection) => return reject(rejection, rec),
    };
    // One deadline and one byte cap for the PROXY header and the sniffed preamble together.
    let deadline = Instant::now() + snap.settings.sniff_timeout;
    let mut buf = Vec::new();
    let mut consumed = 0;
    if listener.expects_proxy_header(rec.client.ip()) {
        let max = snap.settings.max_sniff_bytes;
        match preamble::read(client, deadline, max, &mut buf).await {
            Ok(header) => {
                consumed = header.len;
                if let Some((source, destination)) = header.addresses {
                    rec.via = Some(rec.client);
                    rec.client = source;
                    local = destination;
                }
            }
            Err(e) => {
                rec.detail = Some(e.to_string());
                close_gracefully(client).await;
                return e.outcome();
            }
        }
    }
    match admission.source(listener, rec.client.ip()) {
        Ok(()) => {}
        Err(Rejection::Refused(refusal)) => {
            return refuse_admission(snap, listener, client, rec, refusal, deadline, buf).await
        }
        Err(limited) => return reject(limited, rec),
    }

    let (detected, plan) = match &listener.to {
        // A raw listener forwards everything to its one target, unsniffed.
        Some(to) => (
            None,
            Some(Plan::Connect {
                target: to.clone(),
                default_port: local_port,
                proxy: listener.proxy_protocol,
            }),
        ),
        None => {
            let sniffed = sniff::sniff(
                client,
                &listener.protocols,
                &snap.settings,
                deadline,
                &mut buf,
            )
            .await;
            let detected = match sniffed {
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
            if detected.is_some() {
                shared.metrics.sniffed(rec.started.elapsed());
            }
            rec.protocol = detected.as_ref().map(Detected::protocol);
            rec.host = detected.as_ref().and_then(Detected::host).cloned();
            let plan = route::plan(
                detected.as_ref(),
                listener,
                &snap.routes,
                local_port,
                rec.client.ip(),
            );
            (detected, plan)
        }
    };
    let (target, default_port, proxy) = match plan {
        None => {
            refuse(client, rec.protocol, Refusal::NoRoute).await;
            return if detected.is_some() {
                Outcome::NoRoute
            } else {
                Outcome::Unrecognized
            };
        }
        Some(Plan::Denied) => {
            refuse(client, rec.protocol, Refusal::Denied).await;
            return Outcome::Denied;
        }
        Some(Plan::Redirect(location)) => {
            rec.target = Some(location.clone());
            let _ = write_all(client, &reply::http_redirect(&location)).await;
            close_gracefully(client).await;
            return Outcome::AcmeRedirect;
        }
        Some(Plan::Connect {
            target,
            default_port,
            proxy,
        }) => (target, default_port, proxy),
    };
    rec.target = Some(target.to_string());

    // The dial header is the one preamble the gateway consumes; everything else is replayed
    // exactly as the client sent it.
    let replay = match &detected {
        Some(Detected::Dial(req)) => buf.get(req.header_len..).unwrap_or_default(),
        _ => &buf[..],
    };
    // The upstream learns who the client is before any of the client's bytes: the header and
    // the replay go in one write, so one segment, as a balancer would send them.
    let first = match proxy {
        Some(version) => {
            let mut first = proxy_protocol::encode(version, rec.client, local);
            first.extend_from_slice(replay);
            std::borrow::Cow::Owned(first)
        }
        None => std::borrow::Cow::Borrowed(replay),
    };

    let timeout = snap.settings.connect_timeout;
    let connecting = Instant::now();
    let sends_first = !first.is_empty();
    let opened = connect::open(
        &target,
        default_port,
        timeout,
        &shared.tunnels,
        rec.client,
        sends_first,
    );
    let (upstream, addr) = match opened.await {
        Ok(ok) => {
            shared.metrics.connected(connecting.elapsed());
            ok
        }
        Err(e) => {
            let (refusal, outcome) = if e.is_timeout() {
                (Refusal::Timeout, Outcome::UpstreamTimeout)
            } else {
                (Refusal::Unreachable, Outcome::UpstreamUnreachable)
            };
            rec.detail = Some(e.to_string());
            refuse(client, rec.protocol, refusal).await;
            return outcome;
        }
    };
    rec.upstream = Some(addr);

    if let Some(Detected::Dial(_)) = &detected {
        if let Err(e) = write_all(client, DialStatus::Connected.reply_line()).await {
            return fail(rec, Outcome::ClientReset, e);
        }
    }
    if let Err(e) = write_all(&upstream, &first).await {
        reset_on_close(client);
        return fail(rec, Outcome::UpstreamReset, e);
    }
    rec.up_bytes = replay.len() as u64;

    // A tunnel's data connection never takes the kernel path: the gateway read the tunnel's
    // header from it, and the verdict program would need that socket's saved SYN and the same
    // partial-read care as the client's. splice(2) moves its bytes without a copy too.
    let data_path = match (&target.host, listener.data_path) {
        (TargetHost::Tunnel(_), DataPath::Kernel) => DataPath::Splice,
        (_, setting) => setting,
    };
    let (done, idle) = match forward::forward(
        data_path,
        rec.protocol,
        (consumed + buf.len()) as u64,
        snap,
        shared,
        client,
        &upstream,
    )
    .await
    {
        Ok(forward::Forwarded { forwarded, idle }) => (forwarded, idle),
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
    let outcome = if idle {
        Outcome::IdleTimeout
    } else {
        Outcome::of(&done)
    };
    if outcome != Outcome::Ok {
        rec.detail = Some(format!("up: {:?}, down: {:?}", done.up_end, done.down_end));
    }
    outcome
}

/// Refuses a connection the admit stage turned away. A sniffing listener first reads the
/// preamble (under the same deadline and byte cap as any other) only to learn the protocol, so
/// that the refusal is one the client understands: HTTP 403, a TLS `access_denied` alert, an
/// XMPP `policy-violation`, a dial 403. Nothing is routed or connected. A raw listener has no
/// protocol to speak, and closes.
async fn refuse_admission(
    snap: &Snapshot,
    listener: &ListenerConfig,
    client: &TcpStream,
    rec: &mut AccessRecord,
    refusal: Refusal,
    deadline: Instant,
    mut buf: Vec<u8>,
) -> Outcome {
    if listener.to.is_none() {
        let protocols = &listener.protocols;
        match sniff::sniff(client, protocols, &snap.settings, deadline, &mut buf).await {
            Ok(Some(detected)) => {
                rec.protocol = Some(detected.protocol());
                rec.host = detected.host().cloned();
            }
            Err(SniffError::Malformed(protocol, _)) => rec.protocol = Some(protocol),
            _ => {}
        }
    }
    refuse(client, rec.protocol, refusal).await;
    Outcome::Denied
}

/// A connection over a limit: closed at once, unread. Under a flood, a refusal must cost
/// nothing more.
fn reject(rejection: Rejection, rec: &mut AccessRecord) -> Outcome {
    match rejection {
        Rejection::Limited(limit) => {
            rec.detail = Some(format!("over {limit}"));
            Outcome::Limited
        }
        Rejection::Refused(_) => Outcome::Denied,
    }
}

fn fail(rec: &mut AccessRecord, outcome: Outcome, e: std::io::Error) -> Outcome {
    rec.detail = Some(e.to_string());
    outcome
}
