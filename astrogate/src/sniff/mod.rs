//! Protocol sniffers: pure functions over the first bytes of a connection.
//!
//! Each protocol has one module with a `sniff(&[u8]) -> Sniff<T>` function. A sniffer never
//! consumes input and never panics; it answers one of four things:
//! need more bytes, found (with what it found), not this protocol, or malformed.
//! [`classify`] runs the sniffers a listener enables, in the listener's order.
pub mod acme;
pub mod cursor;
pub mod dial;
pub mod hostname;
pub mod http;
pub mod quic;
pub mod tls;
pub mod xmpp;

#[cfg(test)]
mod classify_tests;

use std::fmt;

use serde::Deserialize;

pub use hostname::Hostname;

/// What a sniffer concluded from the bytes it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff<T> {
    /// The input is a prefix of something this sniffer could accept: read more.
    Incomplete,
    /// The input is this protocol, and this is what it says.
    Found(T),
    /// The input is not this protocol; another sniffer may claim it.
    NotThis,
    /// The input is this protocol but violates it.
    Malformed(Malformed),
}

/// Why input that claimed to be a protocol was rejected. The text is fixed so that logging it
/// never echoes attacker-controlled bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// The protocols a listener can sniff, named as in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tls,
    Http,
    Acme,
    Xmpp,
    Dial,
    /// QUIC, on UDP listeners only: the SNI from the Initial packets.
    Quic,
}

impl Protocol {
    pub const ALL: [Protocol; 6] = [
        Protocol::Tls,
        Protocol::Http,
        Protocol::Acme,
        Protocol::Xmpp,
        Protocol::Dial,
        Protocol::Quic,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Http => "http",
            Protocol::Acme => "acme",
            Protocol::Xmpp => "xmpp",
            Protocol::Dial => "dial",
            Protocol::Quic => "quic",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A recognised connection preamble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    /// A TLS ClientHello; `None` when it carries no SNI.
    Tls(Option<Hostname>),
    /// An HTTP/1.x request head.
    Http(http::Request),
    /// An HTTP-01 challenge request.
    Acme(acme::Challenge),
    /// An XMPP stream header.
    Xmpp(xmpp::StreamHeader),
    /// An Astrogate dial header.
    Dial(dial::DialRequest),
}

impl Detected {
    pub fn protocol(&self) -> Protocol {
        match self {
            Detected::Tls(_) => Protocol::Tls,
            Detected::Http(_) => Protocol::Http,
            Detected::Acme(_) => Protocol::Acme,
            Detected::Xmpp(_) => Protocol::Xmpp,
            Detected::Dial(_) => Protocol::Dial,
        }
    }

    /// The hostname the client asked for, if it named one.
    pub fn host(&self) -> Option<&Hostname> {
        match self {
            Detected::Tls(host) => host.as_ref(),
            Detected::Http(req) => req.host.as_ref(),
            Detected::Acme(ch) => Some(&ch.host),
            Detected::Xmpp(hdr) => hdr.to.as_ref(),
            Detected::Dial(req) => Some(&req.host),
        }
    }
}

/// The decision over all of a listener's sniffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// Some sniffer, in listener order, still needs more bytes before the others may speak.
    NeedMore,
    Detected(Detected),
    /// Every enabled sniffer said "not this protocol".
    Unrecognized,
    Malformed(Protocol, Malformed),
}

/// Runs the sniffers in `order`. The first that does not answer "not this protocol" decides:
/// a later sniffer is never consulted while an earlier one is still undecided, so the
/// listener's order is the priority order.
pub fn classify(order: &[Protocol], buf: &[u8]) -> Classified {
    for &protocol in order {
        let outcome = match protocol {
            Protocol::Tls => tls::sniff(buf).map(Detected::Tls),
            Protocol::Http => http::sniff(buf).map(Detected::Http),
            Protocol::Acme => acme::sniff(buf).map(Detected::Acme),
            Protocol::Xmpp => xmpp::sniff(buf).map(Detected::Xmpp),
            Protocol::Dial => dial::sniff(buf).map(Detected::Dial),
            // Datagrams, not a byte stream: the UDP listeners sniff it (`udp`).
            Protocol::Quic => Sniff::NotThis,
        };
        match outcome {
            Sniff::NotThis => continue,
            Sniff::Incomplete => return Classified::NeedMore,
            Sniff::Found(d) => return Classified::Detected(d),
            Sniff::Malformed(m) => return Classified::Malformed(protocol, m),
        }
    }
    Classified::Unrecognized
}

impl<T> Sniff<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Sniff<U> {
        match self {
            Sniff::Incomplete => Sniff::Incomplete,
            Sniff::Found(t) => Sniff::Found(f(t)),
            Sniff::NotThis => Sniff::NotThis,
            Sniff::Malformed(m) => Sniff::Malformed(m),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Sniff;

    /// Asserts the contract every sniffer keeps: each strict prefix of a complete input is
    /// `Incomplete`, and from `complete_at` bytes on the answer is `Found(expected)`.
    pub fn assert_prefixes_incomplete<T: std::fmt::Debug + PartialEq + Clone>(
        sniff: impl Fn(&[u8]) -> Sniff<T>,
        input: &[u8],
        complete_at: usize,
        expected: T,
    ) {
        for end in 0..complete_at {
            assert_eq!(
                sniff(&input[..end]),
                Sniff::Incomplete,
                "prefix of {end} bytes"
            );
        }
        for end in complete_at..=input.len() {
            assert_eq!(
                sniff(&input[..end]),
                Sniff::Found(expected.clone()),
                "prefix of {end} bytes"
            );
        }
    }
}
