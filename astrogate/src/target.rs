//! Where a route sends connections: an IP address or a DNS name, with an optional port.
use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use crate::sniff::Hostname;

/// The host part of a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    Ip(IpAddr),
    /// Resolved through the system resolver at connect time, so DNS changes apply without a
    /// restart.
    Name(Hostname),
    /// A `[[tunnel]]` by name: the connection is opened by that tunnel's client, on its host.
    Tunnel(String),
}

/// A route or listener target: `[v6]:port`, `v4:port` or `name:port`; with no port, the port
/// the client connected to (or, for dial, the port it asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: TargetHost,
    pub port: Option<u16>,
}

impl Target {
    /// The socket address when no resolution is needed.
    pub fn socket_addr(&self, default_port: u16) -> Option<SocketAddr> {
        match self.host {
            TargetHost::Ip(ip) => Some(SocketAddr::new(ip, self.port.unwrap_or(default_port))),
            TargetHost::Name(_) | TargetHost::Tunnel(_) => None,
        }
    }
}

impl FromStr for Target {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("empty target");
        }
        if let Some(rest) = s.strip_prefix("tunnel:") {
            let (name, port) = match rest.split_once(':') {
                Some((n, p)) => (n, Some(parse_port(p)?)),
                None => (rest, None),
            };
            if !valid_tunnel_name(name) {
                return Err("a tunnel target is \"tunnel:NAME\" or \"tunnel:NAME:PORT\"; NAME uses letters, digits, `-`, `_` or `.`");
            }
            return Ok(Target {
                host: TargetHost::Tunnel(name.to_string()),
                port,
            });
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (ip, after) = rest
                .split_once(']')
                .ok_or("missing `]` after IPv6 address")?;
            let ip: Ipv6Addr = ip.parse().map_err(|_| "invalid IPv6 address")?;
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    p.strip_prefix(':').ok_or("expected `:port` after `]`")?,
                )?),
            };
            return Ok(Target {
                host: TargetHost::Ip(IpAddr::V6(ip)),
                port,
            });
        }
        if s.parse::<Ipv6Addr>().is_ok() {
            return Err("IPv6 addresses need brackets: \"[v6]\" or \"[v6]:port\"");
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(parse_port(p)?)),
            None => (s, None),
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => TargetHost::Ip(ip),
            Err(_) => TargetHost::Name(
                Hostname::parse(host.as_bytes()).map_err(|_| "invalid hostname or address")?,
            ),
        };
        Ok(Target { host, port })
    }
}

/// A `[[tunnel]]` name: what a `tunnel:NAME` target may say.
pub fn valid_tunnel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn parse_port(p: &str) -> Result<u16, &'static str> {
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err("port must be 1-65535"),
        Ok(port) => Ok(port),
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]")?,
            TargetHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}")?,
            TargetHost::Name(name) => write!(f, "{name}")?,
            TargetHost::Tunnel(name) => write!(f, "tunnel:{name}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        for (input, shown) in [
            ("[201:5d78::9]:443", "[201:5d78::9]:443"),
            ("[201:5d78::1]", "[201:5d78::1]"),
            ("10.0.0.1:80", "10.0.0.1:80"),
            ("10.0.0.1", "10.0.0.1"),
            ("Backend.Example.:8443", "backend.example:8443"),
            ("backend", "backend"),
            ("tunnel:alpha:8080", "tunnel:alpha:8080"),
            ("tunnel:alpha", "tunnel:alpha"),
        ] {
            let t: Target = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(t.to_string(), shown);
        }
    }

    #[test]
    fn rejects_bad_targets() {
        for bad in [
            "",
            "201:5d78::1",
            "[201:5d78::1",
            "[zz::1]:80",
            "[::1]80",
            "host:0",
            "host:65536",
            "host:",
            "bad host:80",
            "tunnel:",
            "tunnel::80",
            "tunnel:al pha",
            "tunnel:alpha:0",
            "tunnel:alpha:80:1",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }
}
