//! The human-readable summary `astrogate check` prints.
use std::fmt::Write as _;

use super::Config;
use crate::route::AcmeAction;

/// Describes the listeners and the routing table, most specific lookup rules first.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    let g = &config.gateway;
    let _ = writeln!(out, "config {} is valid", config.source.display());
    let _ = writeln!(
        out,
        "gateway: sniff_timeout={:?} max_sniff_bytes={} connect_timeout={:?} data_path={} buffer_size={} pipe_size={}",
        g.sniff_timeout, g.max_sniff_bytes, g.connect_timeout, g.data_path, g.buffer_size, g.pipe_size
    );
    if let Some(max) = g.max_connections {
        let _ = writeln!(out, "gateway: at most {max} open client connections");
    }
    match g.idle_timeout {
        Some(idle) => {
            let _ = writeln!(out, "gateway: idle connections closed after {idle:?}");
        }
        None => {
            let _ = writeln!(out, "gateway: idle connections are never closed");
        }
    }
    if config
        .listeners
        .iter()
        .any(|l| l.transport == super::Transport::Udp)
    {
        let _ = writeln!(
            out,
            "gateway: UDP sessions end after {:?} without a datagram; at most {}",
            g.udp_idle_timeout, g.max_udp_sessions
        );
    }
    if let Some(bind) = config.metrics {
        let _ = writeln!(out, "metrics: http://{bind}/metrics");
    }
    let _ = writeln!(out, "\nlisteners:");
    for l in &config.listeners {
        let binds: Vec<String> = l.bind.iter().map(ToString::to_string).collect();
        let protocols: Vec<&str> = l.protocols.iter().map(|p| p.name()).collect();
        let default = l.default.as_ref().map_or(
            "(none: unknown names are refused)".to_string(),
            ToString::to_string,
        );
        let _ = writeln!(out, "  {}", l.name);
        let udp = if l.transport == super::Transport::Udp {
            "udp "
        } else {
            ""
        };
        let _ = writeln!(out, "    bind      {udp}{}", binds.join(", "));
        match &l.to {
            Some(to) if l.transport == super::Transport::Udp => {
                let _ = writeln!(out, "    plain UDP every datagram -> {to} (no sniffing)");
            }
            Some(to) => {
                let _ = writeln!(out, "    raw TCP   every connection -> {to} (no sniffing)");
            }
            None => {
                let _ = writeln!(out, "    sniff     {}", protocols.join(" -> "));
                let _ = writeln!(out, "    default   {default}");
            }
        }
        let experimental = if l.data_path == super::DataPath::Kernel {
            " (experimental: a rare stall is not fixed yet; see the README's \"Data paths\")"
        } else {
            ""
        };
        if l.transport == super::Transport::Tcp {
            let _ = writeln!(out, "    path      {}{experimental}", l.data_path);
        }
        if !l.acl.is_open() {
            let _ = writeln!(out, "    sources   {}", l.acl);
        }
        if let Some(max) = l.max_connections_per_source {
            let _ = writeln!(out, "    limit     {max} open connections per source");
        }
        if !l.proxy_protocol_from.is_empty() {
            let from: Vec<String> = l
                .proxy_protocol_from
                .iter()
                .map(ToString::to_string)
                .collect();
            let _ = writeln!(
                out,
                "    PROXY in  required from {} (the client is the one the header names)",
                from.join(" ")
            );
        }
        if let Some(version) = l.proxy_protocol {
            let _ = writeln!(out, "    PROXY out {version} to `to`/`default`");
        }
    }
    let _ = writeln!(
        out,
        "\nroutes (exact names beat wildcards; longer wildcard suffixes beat shorter):"
    );
    if config.routes.routes().is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for r in config.routes.routes() {
        let hosts: Vec<String> = r.hosts.iter().map(ToString::to_string).collect();
        let _ = write!(out, "  {} -> {}", hosts.join(", "), r.to);
        if r.to.port.is_none() {
            let _ = write!(out, " (port: the listener's)");
        }
        match &r.acme {
            Some(AcmeAction::Proxy(t)) => {
                let _ = write!(out, "; acme challenges -> {t}");
            }
            Some(AcmeAction::Redirect(base)) => {
                let _ = write!(
                    out,
                    "; acme challenges -> redirect to {base}/.well-known/acme-challenge/..."
                );
            }
            None => {}
        }
        if let Some(names) = &r.listeners {
            let _ = write!(out, "; only on listeners {}", names.join(", "));
        }
        if !r.acl.is_open() {
            let _ = write!(out, "; sources {}", r.acl);
        }
        if let Some(version) = r.proxy_protocol {
            let _ = write!(out, "; sends PROXY {version}");
        }
        let _ = writeln!(out);
    }
    out
}
