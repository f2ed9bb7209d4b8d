//! The config file as written: serde structs that keep source spans, so validation errors can
//! point at the line and column of the offending value.
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub listener: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    pub tunnels: Option<Spanned<RawTunnels>>,
    #[serde(default)]
    pub tunnel: Vec<Spanned<RawTunnel>>,
    pub metrics: Option<Spanned<RawMetrics>>,
}

/// `[metrics]`: where the Prometheus endpoint listens.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub bind: Spanned<String>,
}

/// `[tunnels]`: where tunnel clients connect, and the gateway's own key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnels {
    pub bind: Spanned<Vec<Spanned<String>>>,
    pub key: Spanned<String>,
    pub heartbeat: Option<Spanned<String>>,
}

/// `[[tunnel]]`: one tunnel client the gateway accepts, by its public key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTunnel {
    pub name: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub sniff_timeout: Option<Spanned<String>>,
    pub max_sniff_bytes: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub data_path: Option<Spanned<String>>,
    pub buffer_size: Option<Spanned<i64>>,
    pub pipe_size: Option<Spanned<super::size::RawSize>>,
    pub kernel_max_backlog: Option<Spanned<super::size::RawSize>>,
    pub kernel_max_backlog_total: Option<Spanned<super::size::RawSize>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub udp_idle_timeout: Option<Spanned<String>>,
    pub max_udp_sessions: Option<Spanned<i64>>,
    pub user: Option<Spanned<String>>,
    pub workers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    /// "tcp" (the default) or "udp".
    pub transport: Option<Spanned<String>>,
    pub bind: Spanned<Vec<Spanned<String>>>,
    pub protocols: Option<Spanned<Vec<Spanned<String>>>>,
    pub default: Option<Spanned<String>>,
    pub data_path: Option<Spanned<String>>,
    /// A raw TCP listener: every connection goes here, without sniffing.
    pub to: Option<Spanned<String>>,
    pub max_connections_per_source: Option<Spanned<i64>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// Sources that must start with a PROXY protocol header.
    pub proxy_protocol_from: Option<Spanned<Vec<Spanned<String>>>>,
    /// Send a PROXY protocol header to `to` or `default`.
    pub proxy_protocol: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub hosts: Spanned<Vec<Spanned<String>>>,
    pub to: Spanned<String>,
    pub acme: Option<Spanned<String>>,
    pub acme_redirect: Option<Spanned<String>>,
    pub listeners: Option<Spanned<Vec<Spanned<String>>>>,
    pub allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub deny: Option<Spanned<Vec<Spanned<String>>>>,
    /// Send a PROXY protocol header ("v1" or "v2") to the upstream.
    pub proxy_protocol: Option<Spanned<String>>,
}
