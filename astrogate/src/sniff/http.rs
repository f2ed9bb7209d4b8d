//! HTTP/1.x: the Host header (or the authority of an absolute-form target).
//!
//! The head is parsed with `httparse`; this module only decides what the parse means for
//! routing. Decisions are made as early as the bytes allow and never change once made:
//!
//! * The first bytes must be a method of 1..=16 uppercase ASCII letters and a space, or this is
//!   not HTTP at all (TLS, XMPP and dial headers are thereby `NotThis` on their first byte or
//!   first few bytes). The HTTP/2 prior-knowledge preface is `NotThis` too.
//! * The request line is judged as soon as its terminator arrives: a bad target is `Malformed`
//!   even while headers are still missing.
//! * No line of the head may exceed [`MAX_LINE`] bytes, and at most [`MAX_HEADERS`] headers.
//! * The host comes from an absolute-form target if there is one (RFC 9112 §3.2.2), otherwise
//!   from the single Host header, port stripped. IP literals name no host (`None`).
//! * `CONNECT` (authority-form) is `Malformed`: Astrogate is not a forward proxy, and a tunnel
//!   request has no path to route.
use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Hostname, Malformed, Sniff};

/// The parts of a request head the gateway routes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The host without its port; `None` when the request names none (HTTP/1.0 without Host)
    /// or names an IP literal.
    pub host: Option<Hostname>,
    /// The request target in origin form (path and query), as sent.
    pub path: String,
}

/// Headers beyond this many make the request `Malformed`; real clients send about a dozen.
pub const MAX_HEADERS: usize = 64;
/// Longest line of a head, terminator included.
pub const MAX_LINE: usize = 8 * 1024;
/// Longest method token accepted; longer uppercase runs are some other protocol.
const MAX_METHOD: usize = 16;
/// The request line of the HTTP/2 prior-knowledge preface (RFC 9113 §3.4).
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";
const LINE_TOO_LONG: Malformed = Malformed("HTTP head line longer than 8 KiB");

pub fn sniff(buf: &[u8]) -> Sniff<Request> {
    let line = match found(request_line(buf)) {
        Ok(line) => line,
        Err(undecided) => return undecided,
    };
    let (data, truncated) = within_line_limit(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Err(e) => Sniff::Malformed(parse_error(e)),
        Ok(httparse::Status::Partial) if truncated => Sniff::Malformed(LINE_TOO_LONG),
        Ok(httparse::Status::Partial) => Sniff::Incomplete,
        Ok(httparse::Status::Complete(_)) => match route(&line, req.headers) {
            Ok(host) => Sniff::Found(Request {
                host,
                path: line.path,
            }),
            Err(m) => Sniff::Malformed(m),
        },
    }
}

/// Unwraps `Found`, or passes any other answer on with the caller's payload type.
pub(super) fn found<T, U>(answer: Sniff<T>) -> Result<T, Sniff<U>> {
    match answer {
        Sniff::Found(t) => Ok(t),
        Sniff::Incomplete => Err(Sniff::Incomplete),
        Sniff::NotThis => Err(Sniff::NotThis),
        Sniff::Malformed(m) => Err(Sniff::Malformed(m)),
    }
}

/// A complete, valid request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RequestLine {
    /// `true` for HTTP/1.1, which requires a Host header.
    http11: bool,
    /// Set for an absolute-form target: the host its authority names.
    authority: Option<Option<Hostname>>,
    /// Origin-form path and query (`*` for `OPTIONS *`).
    pub(super) path: String,
}

/// Judges the request line alone, so that callers (the ACME sniffer) can decide on the path
/// before the headers have arrived.
pub(super) fn request_line(buf: &[u8]) -> Sniff<RequestLine> {
    if let Err(undecided) = found(screen(buf)) {
        return undecided;
    }
    let (data, truncated) = within_line_limit(buf);
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => data.get(..=end).unwrap_or(data),
        None => data,
    };
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(line) {
        Err(e) => return Sniff::Malformed(parse_error(e)),
        Ok(status) => status,
    };
    // httparse fills method, path and version as it goes; the line is done once its newline is
    // in the slice and no error was found in it.
    let complete = status.is_complete() || line.last() == Some(&b'\n');
    match (complete, req.method, req.path, req.version) {
        (true, Some(method), Some(target), Some(version)) => {
            match parse_target(method, target, version == 1) {
                Ok(line) => Sniff::Found(line),
                Err(m) => Sniff::Malformed(m),
            }
        }
        _ if truncated => Sniff::Malformed(LINE_TOO_LONG),
        _ => Sniff::Incomplete,
    }
}

/// Decides from the first bytes whether this can be an HTTP/1 request at all.
fn screen(buf: &[u8]) -> Sniff<()> {
    // A strict prefix of the h2 preface line is undecided; httparse would call it a bad
    // version, which would later flip to NotThis.
    if buf.starts_with(H2_PREFACE_LINE) {
        return Sniff::NotThis;
    }
    if H2_PREFACE_LINE.starts_with(buf) {
        return Sniff::Incomplete;
    }
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' if i < MAX_METHOD => {}
            b' ' if i > 0 => return Sniff::Found(()),
            _ => return Sniff::NotThis,
        }
    }
    Sniff::Incomplete
}

/// `buf` up to the byte where some line reaches [`MAX_LINE`] bytes without ending (so it cannot
/// end within the limit), and whether that happened. Parsing only this prefix makes a verdict
/// that involves the limit independent of the bytes after it.
fn within_line_limit(buf: &[u8]) -> (&[u8], bool) {
    let mut line_len = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            line_len = 0;
            continue;
        }
        line_len += 1;
        // With MAX_LINE bytes and no newline, the line cannot end within the limit.
        if line_len == MAX_LINE {
            return (buf.get(..=i).unwrap_or(buf), true);
        }
    }
    (buf, false)
}

fn parse_error(e: httparse::Error) -> Malformed {
    Malformed(match e {
        httparse::Error::HeaderName => "invalid byte in HTTP header name",
        httparse::Error::HeaderValue => "invalid byte in HTTP header value",
        httparse::Error::NewLine => "invalid HTTP line ending",
        httparse::Error::Status => "invalid HTTP status",
        httparse::Error::Token => "invalid HTTP request line",
        httparse::Error::TooManyHeaders => "more than 64 HTTP headers",
        httparse::Error::Version => "unsupported HTTP version",
    })
}

/// Splits a request target into the host of its authority (absolute-form only) and its
/// origin-form path.
fn parse_target(method: &str, target: &str, http11: bool) -> Result<RequestLine, Malformed> {
    // httparse lets obs-text through; a target is ASCII (RFC 3986), and the path gets logged.
    if !target.is_ascii() {
        return Err(Malformed("non-ASCII byte in HTTP request target"));
    }
    let origin = |path: &str| RequestLine {
        http11,
        authority: None,
        path: path.to_owned(),
    };
    if target.starts_with('/') {
        return Ok(origin(target));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(origin(target))
        } else {
            Err(Malformed("asterisk-form target outside OPTIONS"))
        };
    }
    if method == "CONNECT" {
        return Err(Malformed("CONNECT is not routable"));
    }
    let rest = strip_prefix_ignore_case(target, "http://")
        .or_else(|| strip_prefix_ignore_case(target, "https://"))
        .ok_or(Malformed(
            "request target is not origin, absolute http(s) or asterisk form",
        ))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at_checked(end).unwrap_or((rest, ""));
    if authority.is_empty() {
        return Err(Malformed("absolute-form target without a host"));
    }
    if authority.contains('@') {
        return Err(Malformed("userinfo in HTTP request target"));
    }
    let host = host_or_ip(strip_port(authority.as_bytes())?)?;
    let path = match path.strip_prefix('?') {
        Some(_) => format!("/{path}"),
        None if path.is_empty() => "/".to_owned(),
        None => path.to_owned(),
    };
    Ok(RequestLine {
        http11,
        authority: Some(host),
        path,
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// The host the request is for, from its target or its Host header.
fn route(
    line: &RequestLine,
    headers: &[httparse::Header<'_>],
) -> Result<Option<Hostname>, Malformed> {
    let mut hosts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = hosts.next();
    // Two Host headers let a front end and a back end disagree on the target (smuggling).
    if hosts.next().is_some() {
        return Err(Malformed("more than one Host header"));
    }
    if line.http11 && host.is_none() {
        return Err(Malformed("HTTP/1.1 request without Host"));
    }
    if let Some(from_target) = &line.authority {
        // RFC 9112 §3.2.2: the target's authority wins and Host is ignored.
        return Ok(from_target.clone());
    }
    match host {
        Some(h) => host_header(h.value),
        None => Ok(None),
    }
}

fn host_header(value: &[u8]) -> Result<Option<Hostname>, Malformed> {
    let value = value.trim_ascii();
    if value.is_empty() {
        // An http URI always has a host, so an empty Host never describes one (RFC 9110 §4.2.1).
        return Err(Malformed("empty Host header"));
    }
    host_or_ip(strip_port(value)?)
}

/// Removes an optional `:port` from an authority's `host[:port]`.
fn strip_port(authority: &[u8]) -> Result<&[u8], Malformed> {
    let host_end = if authority.starts_with(b"[") {
        let close = authority.iter().position(|&b| b == b']');
        close.ok_or(Malformed("unterminated IPv6 literal in host"))? + 1
    } else {
        let colon = authority.iter().position(|&b| b == b':');
        colon.unwrap_or(authority.len())
    };
    let (host, port) = authority
        .split_at_checked(host_end)
        .unwrap_or((authority, &[]));
    match port {
        [] => Ok(host),
        [b':', digits @ ..] if valid_port(digits) => Ok(host),
        _ => Err(Malformed("invalid port in host")),
    }
}

/// RFC 3986 allows an empty port; a present one must fit in 16 bits.
fn valid_port(digits: &[u8]) -> bool {
    digits.len() <= 5
        && digits.iter().all(u8::is_ascii_digit)
        && digits
            .iter()
            .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
            <= u32::from(u16::MAX)
}

/// A host as written in a URI authority or a Host header, port removed. IP literals are valid
/// but name no hostname, so they give `None`.
pub(crate) fn host_or_ip(raw: &[u8]) -> Result<Option<Hostname>, Malformed> {
    if let Some(inner) = raw.strip_prefix(b"[") {
        return match inner.strip_suffix(b"]").map(parse_ascii::<Ipv6Addr>) {
            Some(Some(_)) => Ok(None),
            _ => Err(Malformed("invalid IPv6 literal in host")),
        };
    }
    if parse_ascii::<Ipv4Addr>(raw).is_some() {
        return Ok(None);
    }
    // A numeric last label is no DNS name (RFC 3696 §2) but what a resolver would take for an
    // IPv4 shorthand like `127.1`; routing on it would be ambiguous.
    let trimmed = raw.strip_suffix(b".").unwrap_or(raw);
    let last = trimmed.rsplit(|&b| b == b'.').next().unwrap_or_default();
    if !last.is_empty() && last.iter().all(u8::is_ascii_digit) {
        return Err(Malformed("numeric host that is not an IPv4 address"));
    }
    Hostname::parse(raw).map(Some)
}

fn parse_ascii<T: std::str::FromStr>(raw: &[u8]) -> Option<T> {
    std::str::from_utf8(raw).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::classify_tests::{assert_mutations_stable, is_decided};
    use crate::sniff::test_support::assert_prefixes_incomplete;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/http/", $name)).as_slice()
        };
    }

    /// Real client captures: bytes, expected host, expected path.
    const CAPTURES: &[(&[u8], Option<&str>, &str)] = &[
        (
            fixture!("curl-http11-host-port.bin"),
            Some("blog.example.com"),
            "/",
        ),
        (
            fixture!("curl-http10-host.bin"),
            Some("blog.example.com"),
            "/index.html?q=1",
        ),
        (fixture!("curl-http10-no-host.bin"), None, "/"),
        (fixture!("curl-http11-ip.bin"), None, "/"),
        (fixture!("curl-http11-ipv6-host.bin"), None, "/"),
        (
            fixture!("curl-options-star.bin"),
            Some("blog.example.com"),
            "*",
        ),
        (
            fixture!("curl-post-body.bin"),
            Some("blog.example.com"),
            "/submit",
        ),
        (
            fixture!("curl-proxy-absolute.bin"),
            Some("blog.example.com"),
            "/",
        ),
        (
            fixture!("curl-proxy-absolute-host-mismatch.bin"),
            Some("blog.example.com"),
            "/x",
        ),
        (
            fixture!("python-http-client.bin"),
            Some("blog.example.com"),
            "/api?x=1",
        ),
        (
            fixture!("python-urllib-proxy.bin"),
            Some("blog.example.com"),
            "/x?y=z",
        ),
        (fixture!("wget.bin"), Some("blog.example.com"), "/page"),
    ];

    fn request(host: Option<&str>, path: &str) -> Request {
        Request {
            host: host.map(|h| Hostname::parse(h.as_bytes()).unwrap()),
            path: path.to_owned(),
        }
    }

    fn head_len(buf: &[u8]) -> usize {
        buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    }

    #[test]
    fn real_captures_are_found() {
        for &(bytes, host, path) in CAPTURES {
            assert_eq!(
                sniff(bytes),
                Sniff::Found(request(host, path)),
                "{host:?} {path}"
            );
        }
    }

    #[test]
    fn real_captures_are_incomplete_until_the_blank_line() {
        for &(bytes, host, path) in CAPTURES {
            assert_prefixes_incomplete(sniff, bytes, head_len(bytes), request(host, path));
        }
    }

    #[test]
    fn hostile_inputs_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                fixture!("hostile-duplicate-host.bin"),
                "more than one Host header",
            ),
            (
                fixture!("hostile-space-before-colon.bin"),
                "invalid byte in HTTP header name",
            ),
            (
                fixture!("hostile-obs-fold.bin"),
                "invalid byte in HTTP header name",
            ),
            (
                fixture!("hostile-http11-no-host.bin"),
                "HTTP/1.1 request without Host",
            ),
            (
                fixture!("hostile-bad-host-chars.bin"),
                "hostname has a character outside [A-Za-z0-9._-]",
            ),
            (
                fixture!("hostile-nul-in-host.bin"),
                "invalid byte in HTTP header value",
            ),
            (
                fixture!("hostile-overlong-request-line.bin"),
                "HTTP head line longer than 8 KiB",
            ),
            (
                fixture!("hostile-overlong-header.bin"),
                "HTTP head line longer than 8 KiB",
            ),
            (
                fixture!("hostile-too-many-headers.bin"),
                "more than 64 HTTP headers",
            ),
            (fixture!("hostile-connect.bin"), "CONNECT is not routable"),
            (
                fixture!("hostile-userinfo.bin"),
                "userinfo in HTTP request target",
            ),
            (fixture!("hostile-http09.bin"), "invalid HTTP request line"),
            (
                fixture!("hostile-numeric-host.bin"),
                "numeric host that is not an IPv4 address",
            ),
            (fixture!("hostile-bad-port.bin"), "invalid port in host"),
        ];
        for &(bytes, reason) in cases {
            assert_eq!(
                sniff(bytes),
                Sniff::Malformed(Malformed(reason)),
                "{reason}"
            );
        }
        assert_eq!(sniff(fixture!("hostile-truncated.bin")), Sniff::Incomplete);
        assert_eq!(
            sniff(fixture!("hostile-lowercase-method.bin")),
            Sniff::NotThis
        );
    }

    #[test]
    fn overlong_lines_are_refused_as_soon_as_they_pass_the_limit() {
        let line = fixture!("hostile-overlong-request-line.bin");
        assert_eq!(sniff(&line[..MAX_LINE - 1]), Sniff::Incomplete);
        assert_eq!(sniff(&line[..MAX_LINE]), Sniff::Malformed(LINE_TOO_LONG));
        let header = fixture!("hostile-overlong-header.bin");
        let start = header.windows(8).position(|w| w == b"Cookie: ").unwrap();
        assert_eq!(sniff(&header[..start + MAX_LINE - 1]), Sniff::Incomplete);
        assert_eq!(
            sniff(&header[..start + MAX_LINE]),
            Sniff::Malformed(LINE_TOO_LONG)
        );
    }

    #[test]
    fn other_protocols_are_not_this_on_their_first_bytes() {
        assert_eq!(sniff(b""), Sniff::Incomplete);
        assert_eq!(sniff(b"\x16"), Sniff::NotThis);
        assert_eq!(sniff(b"<"), Sniff::NotThis);
        assert_eq!(sniff(b"ASTROGATE-"), Sniff::NotThis);
        assert_eq!(sniff(b"SSH-2.0"), Sniff::NotThis);
        assert_eq!(sniff(b"ABCDEFGHIJKLMNOPQ"), Sniff::NotThis);
        assert_eq!(sniff(b"ABCDEFGHIJKLMNOP"), Sniff::Incomplete);
        assert_eq!(sniff(b" GET"), Sniff::NotThis);
    }

    #[test]
    fn h2_prior_knowledge_is_not_this_and_never_malformed_on_the_way() {
        let preface = fixture!("curl-http2-prior-knowledge.bin");
        for end in 0..H2_PREFACE_LINE.len() {
            assert_eq!(sniff(&preface[..end]), Sniff::Incomplete, "{end}");
        }
        for end in H2_PREFACE_LINE.len()..=preface.len() {
            assert_eq!(sniff(&preface[..end]), Sniff::NotThis, "{end}");
        }
        // Other methods with an h2 version are simply bad HTTP/1.
        assert!(matches!(sniff(b"GET / HTTP/2.0\r\n"), Sniff::Malformed(_)));
    }

    #[test]
    fn bad_targets_are_refused_with_the_request_line() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET * HTTP/1.1\r\n",
                "asterisk-form target outside OPTIONS",
            ),
            (
                b"GET ftp://a.example/ HTTP/1.1\r\n",
                "request target is not origin, absolute http(s) or asterisk form",
            ),
            (
                b"GET http:///x HTTP/1.1\r\n",
                "absolute-form target without a host",
            ),
            (
                b"GET /caf\xc3\xa9 HTTP/1.1\r\n",
                "non-ASCII byte in HTTP request target",
            ),
            (
                b"GET http://[::1 HTTP/1.1\r\n",
                "unterminated IPv6 literal in host",
            ),
            (
                b"GET http://[zz]/ HTTP/1.1\r\n",
                "invalid IPv6 literal in host",
            ),
        ];
        for &(line, reason) in cases {
            assert_eq!(sniff(line), Sniff::Malformed(Malformed(reason)), "{reason}");
        }
    }

    #[test]
    fn hosts_are_normalised() {
        let ok = |head: &[u8], host: Option<&str>, path: &str| {
            assert_eq!(sniff(head), Sniff::Found(request(host, path)));
        };
        ok(
            b"GET / HTTP/1.1\r\nhOsT: Blog.Example.COM.:\r\n\r\n",
            Some("blog.example.com"),
            "/",
        );
        ok(b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n", None, "/");
        ok(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", None, "/");
        ok(
            b"GET HTTPS://Blog.Example.com?q HTTP/1.1\r\nHost: x\r\n\r\n",
            Some("blog.example.com"),
            "/?q",
        );
        ok(
            b"GET http://[2001:db8::1]:8080/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            None,
            "/",
        );
        ok(
            b"GET / HTTP/1.1\nHost: a.example\n\n",
            Some("a.example"),
            "/",
        );
        let empty = sniff(b"GET / HTTP/1.1\r\nHost: \r\n\r\n");
        assert_eq!(empty, Sniff::Malformed(Malformed("empty Host header")));
    }

    #[test]
    fn mutations_never_panic_or_change_a_decided_answer() {
        let seeds: Vec<&[u8]> = CAPTURES.iter().map(|c| c.0).collect();
        assert_mutations_stable(sniff, is_decided, &seeds, 10_000);
    }
}
