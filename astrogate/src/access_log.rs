//! One line per connection: who, through which listener, what was asked for, where it went,
//! how much moved, how long it took, and how it ended.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use crate::{
    forward::{DirectionEnd, Forwarded, PathKind},
    sniff::{Hostname, Protocol},
};

/// How a connection ended, as one stable word for log processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    ClientReset,
    UpstreamReset,
    Error,
    NoRoute,
    /// The client's address is not allowed on the listener or the route.
    Denied,
    /// Over `max_connections` or `max_connections_per_source`: closed at once.
    Limited,
    SniffTimeout,
    SniffLimit,
    ClientClosed,
    Malformed,
    Unrecognized,
    UpstreamUnreachable,
    UpstreamTimeout,
    AcmeRedirect,
    /// A trusted load balancer's PROXY header was missing or broken.
    BadProxyHeader,
    /// No byte either way for `gateway.idle_timeout`.
    IdleTimeout,
}

impl Outcome {
    /// How a forwarded connection ended: a reset or failed write on one side names that side.
    pub fn of(forwarded: &Forwarded) -> Outcome {
        use DirectionEnd::*;
        match (&forwarded.up_end, &forwarded.down_end) {
            (Eof, Eof) => Outcome::Ok,
            (Reset, _) | (_, WriteFailed(_)) => Outcome::ClientReset,
            (_, Reset) | (WriteFailed(_), _) => Outcome::UpstreamReset,
            _ => Outcome::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::ClientReset => "client_reset",
            Outcome::UpstreamReset => "upstream_reset",
            Outcome::Error => "error",
            Outcome::NoRoute => "no_route",
            Outcome::Denied => "denied",
            Outcome::Limited => "limited",
            Outcome::SniffTimeout => "sniff_timeout",
            Outcome::SniffLimit => "sniff_limit",
            Outcome::ClientClosed => "client_closed",
            Outcome::Malformed => "malformed",
            Outcome::Unrecognized => "unrecognized",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::AcmeRedirect => "acme_redirect",
            Outcome::BadProxyHeader => "bad_proxy_header",
            Outcome::IdleTimeout => "idle_timeout",
        }
    }
}

#[derive(Debug)]
pub struct AccessRecord {
    /// The client: the connection's peer, or the one a trusted peer's PROXY header names.
    pub client: SocketAddr,
    /// The trusted peer (a load balancer) that named the client in a PROXY header.
    pub via: Option<SocketAddr>,
    pub listener: Arc<str>,
    pub started: Instant,
    pub protocol: Option<Protocol>,
    pub host: Option<Hostname>,
    pub target: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub up_bytes: u64,
    pub down_bytes: u64,
    /// Payload bytes, after the sniffed preamble, that passed through user-space buffers.
    pub copied_bytes: u64,
    pub path: Option<PathKind>,
    /// Came through a raw TCP listener (no sniffing): logged as protocol `raw`.
    pub raw: bool,
    pub outcome: Outcome,
    /// Error text for failures; fixed strings or OS errors, never client bytes.
    pub detail: Option<String>,
    /// A UDP session's datagrams forwarded (up, down); `None` for a TCP connection.
    pub datagrams: Option<(u64, u64)>,
    /// Of those, the ones the kernel forwarded (up, down); `None` when the session stayed in
    /// user space.
    pub kernel_datagrams: Option<(u64, u64)>,
}

impl AccessRecord {
    pub fn new(client: SocketAddr, listener: Arc<str>) -> Self {
        Self {
            client,
            via: None,
            listener,
            started: Instant::now(),
            protocol: None,
            host: None,
            target: None,
            upstream: None,
            up_bytes: 0,
            down_bytes: 0,
            copied_bytes: 0,
            path: None,
            raw: false,
            outcome: Outcome::Error,
            detail: None,
            datagrams: None,
            kernel_datagrams: None,
        }
    }

    /// The protocol as logged and labelled: `raw` for a raw TCP listener, `udp` for plain UDP.
    pub fn protocol_name(&self) -> &'static str {
        match (self.protocol, self.raw, self.datagrams) {
            (Some(p), _, _) => p.name(),
            (None, true, Some(_)) => "udp",
            (None, true, None) => "raw",
            (None, false, _) => "-",
        }
    }

    pub fn emit(&self) {
        let none = "-";
        if let Some((up, down)) = self.datagrams {
            tracing::info!(
                target: "astrogate::access",
                client = %self.client,
                listener = %self.listener,
                protocol = %self.protocol_name(),
                host = %self.host.as_ref().map_or(none, Hostname::as_str),
                target = %self.target.as_deref().unwrap_or(none),
                upstream = %self.upstream.map_or_else(|| none.to_string(), |a| a.to_string()),
                up_datagrams = up,
                down_datagrams = down,
                kernel_datagrams = %self
                    .kernel_datagrams
                    .map_or_else(|| none.to_string(), |(u, d)| format!("{u}/{d}")),
                up_bytes = self.up_bytes,
                down_bytes = self.down_bytes,
                duration_ms = self.started.elapsed().as_millis() as u64,
                outcome = %self.outcome.as_str(),
                detail = %self.detail.as_deref().unwrap_or(none),
                "udp session"
            );
            return;
        }
        tracing::info!(
            target: "astrogate::access",
            client = %self.client,
            via = %self.via.map_or_else(|| none.to_string(), |a| a.to_string()),
            listener = %self.listener,
            protocol = %self.protocol_name(),
            host = %self.host.as_ref().map_or(none, Hostname::as_str),
            target = %self.target.as_deref().unwrap_or(none),
            upstream = %self.upstream.map_or_else(|| none.to_string(), |a| a.to_string()),
            up_bytes = self.up_bytes,
            down_bytes = self.down_bytes,
            copied_bytes = self.copied_bytes,
            duration_ms = self.started.elapsed().as_millis() as u64,
            path = %self.path.map_or_else(|| none.to_string(), |p| p.to_string()),
            outcome = %self.outcome.as_str(),
            detail = %self.detail.as_deref().unwrap_or(none),
            "connection"
        );
    }
}
