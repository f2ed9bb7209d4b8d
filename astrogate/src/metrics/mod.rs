//! Prometheus metrics: what the record stage and a few other stages count, and the tiny
//! HTTP server that exposes them at `[metrics] bind`.
//!
//! Every label is bounded by the config or by the code: listener names, protocol, outcome,
//! data path, direction, refusal reason. Never a hostname a client sent.
mod kernel;
mod server;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    access_log::{AccessRecord, Outcome},
    forward::kernel::KernelPath,
};
pub use server::{serve, MetricsServer};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    listener: String,
    protocol: &'static str,
    outcome: &'static str,
    path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Seconds: a sniff or connect on loopback takes tens of microseconds, the default timeouts
/// are 10 s.
const DURATION_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1, 0.5,
    2.5, 10.0,
];

/// The gateway's metrics. Cheap to update from any task: each family takes a read lock to
/// find its series and then an atomic add.
pub struct Metrics {
    registry: Registry,
    connections: Family<ConnectionLabels, Counter>,
    active: Gauge,
    bytes: Family<DirectionLabels, Counter>,
    refusals: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    sniff_duration: Histogram,
    connect_duration: Histogram,
    udp_active: Gauge,
    udp_datagrams: Family<DirectionLabels, Counter>,
    udp_dropped: Family<ReasonLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// The metrics of one gateway; `kernel` is read at each scrape for the kernel path's own
    /// counters, while it runs.
    pub fn new(kernel: Arc<ArcSwapOption<KernelPath>>) -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("astrogate");
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Client connections that ended, by listener, protocol, outcome and data path",
            connections.clone(),
        );
        let active = Gauge::default();
        registry.register(
            "connections_active",
            "Client connections open now, from accept to the end of forwarding",
            active.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes forwarded by connections that ended: up is client to upstream, down the reverse",
            bytes.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "refusals",
            "Connections turned away before forwarding, by reason",
            refusals.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Config reloads (SIGHUP), by result: applied or refused",
            reloads.clone(),
        );
        let sniff_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "sniff_duration_seconds",
            "From accept to a recognised preamble (PROXY header included), for connections that got that far",
            sniff_duration.clone(),
        );
        let connect_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "upstream_connect_duration_seconds",
            "Time to open the upstream connection (or the tunnel's data connection), when it opened",
            connect_duration.clone(),
        );
        let udp_active = Gauge::default();
        registry.register(
            "udp_sessions_active",
            "UDP sessions open now, under gateway.max_udp_sessions",
            udp_active.clone(),
        );
        let udp_datagrams = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "udp_datagrams",
            "UDP datagrams forwarded: up is client to upstream, down the reverse",
            udp_datagrams.clone(),
        );
        let udp_dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "udp_dropped",
            "UDP datagrams dropped, by reason: session_cap, queue_full, or the outcome of a refused session",
            udp_dropped.clone(),
        );
        registry.register_collector(Box::new(kernel::KernelCounters(kernel)));
        Arc::new(Metrics {
            registry,
            connections,
            active,
            bytes,
            refusals,
            reloads,
            sniff_duration,
            connect_duration,
            udp_active,
            udp_datagrams,
            udp_dropped,
        })
    }

    /// The record stage's sink: one finished connection.
    pub fn record(&self, rec: &AccessRecord) {
        let protocol = match rec.protocol_name() {
            "-" => "none",
            name => name,
        };
        let path = match (rec.path, rec.datagrams) {
            (Some(p), _) => p.as_str(),
            (None, Some(_)) => "udp",
            (None, None) => "none",
        };
        self.connections
            .get_or_create(&ConnectionLabels {
                listener: rec.listener.to_string(),
                protocol,
                outcome: rec.outcome.as_str(),
                path,
            })
            .inc();
        for (direction, n) in [("up", rec.up_bytes), ("down", rec.down_bytes)] {
            if n > 0 {
                self.bytes
                    .get_or_create(&DirectionLabels { direction })
                    .inc_by(n);
            }
        }
        if let Some(reason) = refusal_reason(rec.outcome) {
            self.refusals.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn open_connection(self: &Arc<Self>) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.clone())
    }

    /// Counts a UDP session as open until the returned guard drops.
    pub fn open_udp_session(self: &Arc<Self>) -> UdpActiveGuard {
        self.udp_active.inc();
        UdpActiveGuard(self.clone())
    }

    /// The counter of datagrams forwarded `direction` ("up" or "down"), to keep and bump per
    /// datagram without looking the series up each time.
    pub fn udp_datagrams(&self, direction: &'static str) -> Counter {
        self.udp_datagrams
            .get_or_create(&DirectionLabels { direction })
            .clone()
    }

    pub fn udp_dropped(&self, reason: &'static str) {
        self.udp_dropped
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn sniffed(&self, took: Duration) {
        self.sniff_duration.observe(took.as_secs_f64());
    }

    pub fn connected(&self, took: Duration) {
        self.connect_duration.observe(took.as_secs_f64());
    }

    pub fn reloaded(&self, applied: bool) {
        let result = if applied { "applied" } else { "refused" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The text exposition (OpenMetrics), as served at GET /metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; a collector's error would only cut the text short.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

/// Decrements `astrogate_connections_active` when the connection ends.
pub struct ActiveGuard(Arc<Metrics>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// Decrements `astrogate_udp_sessions_active` when the session ends.
pub struct UdpActiveGuard(Arc<Metrics>);

impl Drop for UdpActiveGuard {
    fn drop(&mut self) {
        self.0.udp_active.dec();
    }
}

/// The outcomes that mean the gateway turned the client away, as the refusal reason.
fn refusal_reason(outcome: Outcome) -> Option<&'static str> {
    use Outcome::*;
    match outcome {
        Denied | Limited | NoRoute | Unrecognized | Malformed | BadProxyHeader | SniffTimeout
        | SniffLimit => Some(outcome.as_str()),
        _ => None,
    }
}
