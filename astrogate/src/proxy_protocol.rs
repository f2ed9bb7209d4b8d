//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer in front of the
//! gateway puts before the client's bytes, and the header the gateway puts before them for an
//! upstream that wants one. The `ppp` crate parses and builds; this module decides what a
//! header means here, as a pure function over the bytes read so far, like a sniffer.
use std::net::{IpAddr, SocketAddr};

use ppp::{v1, v2, HeaderResult, PartialResult};

/// What every v2 header starts with.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Which header a route sends upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Version, String> {
        match s {
            "v1" => Ok(Version::V1),
            "v2" => Ok(Version::V2),
            _ => Err(format!("`{s}` is not \"v1\" or \"v2\"")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// What the first bytes of a connection from a trusted peer say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes to decide.
    NeedMore,
    /// A complete header of `len` bytes. `addresses` is the client and the address it
    /// connected to, or `None` when the peer speaks for itself (v2 `LOCAL`, v1 `UNKNOWN`:
    /// health checks), so the connection's own addresses stand.
    Header {
        len: usize,
        addresses: Option<(SocketAddr, SocketAddr)>,
    },
    /// Not a PROXY header, or a broken one: the connection is refused.
    Malformed(String),
}

/// Parses a PROXY header at the start of `buf`. A header's bytes are capped by the protocol
/// itself (107 for v1, 16 + 65,535 for v2); the caller caps the buffer as for sniffing.
pub fn parse(buf: &[u8]) -> Parsed {
    let result = match v1_line(buf) {
        // ppp's own fallback to v1 decides on the last bytes read ("P" could start "PROXY"),
        // so a buffer that is not v1 is parsed as v2 only.
        V1Line::NotV1 => HeaderResult::V2(v2::Header::try_from(buf)),
        V1Line::Unfinished => return Parsed::NeedMore,
        // The line alone, so the bytes after it never change the answer.
        V1Line::Line(line) => HeaderResult::V1(v1::Header::try_from(line)),
    };
    if result.is_incomplete() {
        if let HeaderResult::V1(_) = result {
            return Parsed::Malformed("PROXY v1 header: the line is cut short".into());
        }
        return Parsed::NeedMore;
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Header {
            len: header.header.len(),
            addresses: match header.addresses {
                v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(header)) => {
            let addresses = match (header.command, header.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::new(a.source_address.into(), a.source_port),
                    SocketAddr::new(a.destination_address.into(), a.destination_port),
                )),
                // PROXY with no address, or a UNIX socket's: the spec says to accept the
                // connection and use its real addresses.
                (v2::Command::Proxy, _) => None,
            };
            if header.protocol == v2::Protocol::Datagram && addresses.is_some() {
                return Parsed::Malformed("PROXY v2 header for a datagram on a TCP stream".into());
            }
            Parsed::Header {
                len: header.header.len(),
                addresses,
            }
        }
        HeaderResult::V1(Err(e)) => Parsed::Malformed(format!("PROXY v1 header: {e}")),
        HeaderResult::V2(Err(_)) if !buf.starts_with(V2_SIGNATURE) => {
            Parsed::Malformed("not a PROXY v1 or v2 header".into())
        }
        HeaderResult::V2(Err(e)) => Parsed::Malformed(format!("PROXY v2 header: {e}")),
    }
}

/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;

enum V1Line<'a> {
    NotV1,
    Unfinished,
    /// Up to and including the first LF, or the first `V1_MAX` bytes when there is none.
    Line(&'a [u8]),
}

/// A v1 header is decided on its whole line and nothing after it. `ppp` decides some cut
/// lines early ("PROXY TCP4 a b 51234 " is an invalid empty port to it, not a partial one: the
/// every-prefix test found it), and parses past a lone LF up to the next CR.
fn v1_line(buf: &[u8]) -> V1Line<'_> {
    let prefix = b"PROXY";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return V1Line::NotV1;
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    match window.iter().position(|&b| b == b'\n') {
        Some(lf) => V1Line::Line(&window[..=lf]),
        None if buf.len() >= V1_MAX => V1Line::Line(window),
        None => V1Line::Unfinished,
    }
}

/// The header that tells an upstream the connection came from `client` to `destination`.
/// Mixed families (an IPv4 client reached over IPv6) are both given as IPv6, IPv4 ones mapped.
pub fn encode(version: Version, client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (client, destination) = same_family(client, destination);
    match version {
        Version::V1 => {
            // `Display` writes "PROXY TCP4 a b p q\r\n".
            v1::Addresses::from((client, destination))
                .to_string()
                .into_bytes()
        }
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, destination),
        )
        .build()
        // Building into a Vec cannot fail: the addresses are fixed-size and there are no TLVs.
        .unwrap_or_default(),
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_versions_round_trip_through_parse() {
        let cases = [
            (addr("192.0.2.7:51234"), addr("198.51.100.1:443")),
            (addr("[2001:db8::7]:51234"), addr("[2001:db8::1]:443")),
        ];
        for version in [Version::V1, Version::V2] {
            for (client, dest) in cases {
                let mut bytes = encode(version, client, dest);
                let len = bytes.len();
                bytes.extend_from_slice(b"\x16\x03\x01rest of the stream");
                assert_eq!(
                    parse(&bytes),
                    Parsed::Header {
                        len,
                        addresses: Some((client, dest))
                    },
                    "{version}"
                );
            }
        }
    }

    #[test]
    fn v1_text_is_what_haproxy_writes() {
        let bytes = encode(
            Version::V1,
            addr("192.0.2.7:51234"),
            addr("198.51.100.1:443"),
        );
        assert_eq!(bytes, b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n");
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let bytes = encode(Version::V2, addr("192.0.2.7:1"), addr("[2001:db8::1]:443"));
        let Parsed::Header {
            addresses: Some((client, _)),
            ..
        } = parse(&bytes)
        else {
            panic!("not parsed back");
        };
        assert_eq!(client, addr("[::ffff:192.0.2.7]:1"));
        let mapped = encode(
            Version::V1,
            addr("[::ffff:192.0.2.7]:1"),
            addr("198.51.100.1:443"),
        );
        assert!(mapped.starts_with(b"PROXY TCP4 192.0.2.7 "));
    }

    /// Every proper prefix of a valid header asks for more; only the whole decides.
    #[test]
    fn every_prefix_needs_more() {
        let client = addr("[2001:db8::7]:51234");
        let dest = addr("[2001:db8::1]:443");
        for version in [Version::V1, Version::V2] {
            let bytes = encode(version, client, dest);
            for end in 0..bytes.len() {
                assert_eq!(parse(&bytes[..end]), Parsed::NeedMore, "{version} {end}");
            }
        }
    }

    #[test]
    fn local_and_unknown_keep_the_connections_own_addresses() {
        let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
        assert_eq!(
            parse(local),
            Parsed::Header {
                len: 16,
                addresses: None
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nGET"),
            Parsed::Header {
                len: 15,
                addresses: None
            }
        );
    }

    #[test]
    fn other_bytes_are_malformed() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 99999\r\n",
            b"PROXY TCP9 a b 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Malformed(_)),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                parse(bad)
            );
        }
        // A v1 header that never ends is cut at the protocol's 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(parse(&long), Parsed::Malformed(_)));
    }
}
