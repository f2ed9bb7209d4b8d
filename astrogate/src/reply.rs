//! Short protocol-appropriate answers for connections the gateway cannot forward, so clients
//! see a reason instead of a bare close.
use crate::sniff::{dial::DialStatus, Protocol};

/// Why a connection was refused, in terms every protocol can express.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The preamble violated its protocol.
    Malformed,
    /// No route serves the name and the listener has no default.
    NoRoute,
    /// The upstream refused or could not be reached.
    Unreachable,
    /// The upstream did not answer within `connect_timeout`.
    Timeout,
    /// The client's address is not allowed on this listener or route.
    Denied,
}

/// The bytes to send for `refusal` to a client speaking `protocol`; empty for protocols with
/// no way to say it (the connection is then just closed).
pub fn refusal(protocol: Option<Protocol>, refusal: Refusal) -> Vec<u8> {
    match protocol {
        Some(Protocol::Http | Protocol::Acme) => http(refusal),
        Some(Protocol::Tls) => tls_alert(refusal).to_vec(),
        Some(Protocol::Xmpp) => xmpp(refusal),
        Some(Protocol::Dial) => dial_status(refusal).reply_line().to_vec(),
        Some(Protocol::Quic) | None => Vec::new(),
    }
}

fn http(refusal: Refusal) -> Vec<u8> {
    let (status, body) = match refusal {
        Refusal::Malformed => ("400 Bad Request", "astrogate: malformed request\n"),
        Refusal::NoRoute => (
            "421 Misdirected Request",
            "astrogate: no route for this host\n",
        ),
        Refusal::Unreachable => ("502 Bad Gateway", "astrogate: upstream unreachable\n"),
        Refusal::Timeout => (
            "504 Gateway Timeout",
            "astrogate: upstream did not answer\n",
        ),
        Refusal::Denied => ("403 Forbidden", "astrogate: access denied\n"),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A redirect for an ACME HTTP-01 challenge.
pub fn http_redirect(location: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A plaintext fatal alert, which is what a server sends before any handshake keys exist.
fn tls_alert(refusal: Refusal) -> [u8; 7] {
    let description = match refusal {
        Refusal::Malformed => 50,                      // decode_error
        Refusal::NoRoute => 112,                       // unrecognized_name
        Refusal::Unreachable | Refusal::Timeout => 80, // internal_error
        Refusal::Denied => 49,                         // access_denied
    };
    [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
}

/// A stream error (RFC 6120 4.9): the server must open its own stream header before the error.
fn xmpp(refusal: Refusal) -> Vec<u8> {
    let condition = match refusal {
        Refusal::Malformed => "bad-format",
        Refusal::NoRoute => "host-unknown",
        Refusal::Unreachable | Refusal::Timeout => "remote-connection-failed",
        Refusal::Denied => "policy-violation",
    };
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
         <stream:error><{condition} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>\
         </stream:stream>"
    )
    .into_bytes()
}

fn dial_status(refusal: Refusal) -> DialStatus {
    match refusal {
        Refusal::Malformed => DialStatus::Malformed,
        Refusal::NoRoute | Refusal::Denied => DialStatus::Forbidden,
        Refusal::Unreachable => DialStatus::Unreachable,
        Refusal::Timeout => DialStatus::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_replies_are_complete_responses() {
        let r = refusal(Some(Protocol::Http), Refusal::NoRoute);
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut headers);
        let status = resp.parse(&r).unwrap();
        assert_eq!(resp.code, Some(421));
        let httparse::Status::Complete(head) = status else {
            panic!("incomplete")
        };
        assert_eq!(r.len() - head, "astrogate: no route for this host\n".len());
    }

    #[test]
    fn tls_alert_is_fatal_unrecognized_name() {
        assert_eq!(
            refusal(Some(Protocol::Tls), Refusal::NoRoute),
            [0x15, 3, 3, 0, 2, 2, 112]
        );
    }

    #[test]
    fn a_denied_client_is_told_in_its_own_protocol() {
        let http = refusal(Some(Protocol::Http), Refusal::Denied);
        assert!(http.starts_with(b"HTTP/1.1 403 Forbidden\r\n"));
        assert_eq!(
            refusal(Some(Protocol::Tls), Refusal::Denied),
            [0x15, 3, 3, 0, 2, 2, 49]
        );
        let xmpp = String::from_utf8(refusal(Some(Protocol::Xmpp), Refusal::Denied)).unwrap();
        assert!(xmpp.contains("<policy-violation "), "{xmpp}");
        assert!(refusal(Some(Protocol::Dial), Refusal::Denied).starts_with(b"ASTROGATE-DIAL/1 403"));
    }

    #[test]
    fn unknown_protocol_gets_nothing() {
        assert!(refusal(None, Refusal::NoRoute).is_empty());
    }
}
