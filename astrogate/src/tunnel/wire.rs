//! What tunnel clients and the gateway say to each other.
//!
//! A connection to `[tunnels] bind` starts with an 8-byte magic that says what it is:
//! - `ASTGCTL1`: the control connection. A Noise IK handshake follows, then control messages,
//!   each one Noise transport message in a frame of a 2-byte big-endian length.
//! - `ASTGDAT1`: a data connection for one proxied connection: a 16-byte token the gateway
//!   sent in an `Open`, then one status byte once the client's connection to the service is
//!   up (or has failed), then the proxied bytes themselves, untouched, in both directions.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const CONTROL_MAGIC: &[u8; 8] = b"ASTGCTL1";
pub const DATA_MAGIC: &[u8; 8] = b"ASTGDAT1";
/// What the client writes on a data connection before its status byte.
pub const DATA_HEADER_LEN: usize = 8 + TOKEN_LEN;
pub const TOKEN_LEN: usize = 16;
pub type Token = [u8; TOKEN_LEN];

/// The status byte on a data connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DataStatus {
    Connected = 0,
    /// The service answered with a reset: nothing listens on that port.
    Refused = 1,
    TimedOut = 2,
    /// The tunnel has no address of the client's family (an IPv6 client, an IPv4-only TUN).
    NoAddress = 3,
    Failed = 4,
}

impl DataStatus {
    pub fn from_byte(b: u8) -> DataStatus {
        match b {
            0 => DataStatus::Connected,
            1 => DataStatus::Refused,
            2 => DataStatus::TimedOut,
            3 => DataStatus::NoAddress,
            _ => DataStatus::Failed,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            DataStatus::Connected => "connected",
            DataStatus::Refused => "the service refused the connection",
            DataStatus::TimedOut => "the service did not answer in time",
            DataStatus::NoAddress => "the tunnel has no address of the client's family",
            DataStatus::Failed => "the tunnel client could not open the connection",
        }
    }
}

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Gateway to client, right after the handshake: which tunnel the key serves, and how often
    /// each side must hear from the other.
    Welcome {
        tunnel: String,
        heartbeat_ms: u32,
    },
    Ping(u64),
    Pong(u64),
    /// Gateway to client: open a TCP connection from `client` to the service's `port`, then a
    /// data connection that presents `token`. With `udp`, a UDP flow instead: the data
    /// connection then carries datagrams, each after its length (u16, big-endian).
    Open {
        token: Token,
        client: SocketAddr,
        port: u16,
        timeout_ms: u32,
        udp: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed control message: {0}")]
pub struct Malformed(&'static str);

const WELCOME: u8 = 1;
const PING: u8 = 2;
const PONG: u8 = 3;
const OPEN: u8 = 4;
/// An Open for a UDP flow: the same body, so a client that predates UDP refuses it as an
/// unknown message rather than opening a TCP connection.
const OPEN_UDP: u8 = 5;
/// Longer names are refused by config validation, so a Welcome always fits.
pub const MAX_TUNNEL_NAME: usize = 64;

impl Control {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        match self {
            Control::Welcome {
                tunnel,
                heartbeat_ms,
            } => {
                out.push(WELCOME);
                out.extend_from_slice(&heartbeat_ms.to_be_bytes());
                out.extend_from_slice(tunnel.as_bytes());
            }
            Control::Ping(n) => {
                out.push(PING);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::Pong(n) => {
                out.push(PONG);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Control::Open {
                token,
                client,
                port,
                timeout_ms,
                udp,
            } => {
                out.push(if *udp { OPEN_UDP } else { OPEN });
                out.extend_from_slice(token);
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&timeout_ms.to_be_bytes());
                out.extend_from_slice(&client.port().to_be_bytes());
                // The family is explicit: a cut IPv6 address must not read as an IPv4 one.
                match client.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
            }
        }
        out
    }

    pub fn decode(msg: &[u8]) -> Result<Control, Malformed> {
        let (&tag, body) = msg.split_first().ok_or(Malformed("empty"))?;
        let u64_of = |b: &[u8]| -> Result<u64, Malformed> {
            Ok(u64::from_be_bytes(
                b.try_into().map_err(|_| Malformed("bad length"))?,
            ))
        };
        match tag {
            WELCOME => {
                let (ms, name) = body
                    .split_first_chunk::<4>()
                    .ok_or(Malformed("short welcome"))?;
                if name.is_empty() || name.len() > MAX_TUNNEL_NAME {
                    return Err(Malformed("bad tunnel name"));
                }
                let tunnel = std::str::from_utf8(name).map_err(|_| Malformed("bad tunnel name"))?;
                Ok(Control::Welcome {
                    tunnel: tunnel.to_string(),
                    heartbeat_ms: u32::from_be_bytes(*ms),
                })
            }
            PING => Ok(Control::Ping(u64_of(body)?)),
            PONG => Ok(Control::Pong(u64_of(body)?)),
            OPEN | OPEN_UDP => {
                let (token, rest) = body
                    .split_first_chunk::<TOKEN_LEN>()
                    .ok_or(Malformed("short open"))?;
                let (port, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or(Malformed("short open"))?;
                let (ms, rest) = rest
                    .split_first_chunk::<4>()
                    .ok_or(Malformed("short open"))?;
                let (cport, rest) = rest
                    .split_first_chunk::<2>()
                    .ok_or(Malformed("short open"))?;
                let bad = || Malformed("bad client address");
                let ip = match rest.split_first() {
                    Some((4, ip)) => {
                        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip).map_err(|_| bad())?))
                    }
                    Some((6, ip)) => {
                        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).map_err(|_| bad())?))
                    }
                    _ => return Err(bad()),
                };
                Ok(Control::Open {
                    token: *token,
                    client: SocketAddr::new(ip, u16::from_be_bytes(*cport)),
                    port: u16::from_be_bytes(*port),
                    timeout_ms: u32::from_be_bytes(*ms),
                    udp: tag == OPEN_UDP,
                })
            }
            _ => Err(Malformed("unknown message type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Control> {
        vec![
            Control::Welcome {
                tunnel: "alpha".into(),
                heartbeat_ms: 10_000,
            },
            Control::Ping(7),
            Control::Pong(u64::MAX),
            Control::Open {
                token: [9; 16],
                client: "203.0.113.9:51234".parse().unwrap(),
                port: 8080,
                timeout_ms: 5000,
                udp: false,
            },
            Control::Open {
                token: [1; 16],
                client: "[2001:db8::7]:40000".parse().unwrap(),
                port: 443,
                timeout_ms: 1,
                udp: true,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            assert_eq!(Control::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        for m in all() {
            let bytes = m.encode();
            for cut in 0..bytes.len() {
                // A cut Welcome may still be a valid shorter name; everything else must fail.
                if let Ok(d) = Control::decode(&bytes[..cut]) {
                    assert!(matches!(d, Control::Welcome { .. }), "{m:?} cut at {cut}");
                }
            }
        }
        assert!(Control::decode(&[99, 1, 2]).is_err());
    }
}
