//! The Astrogate dial header: a one-line preamble naming the host and port to connect to.
//!
//! # Request
//!
//! A client that wants the gateway to connect it somewhere sends, before any payload:
//!
//! ```text
//! ASTROGATE-DIAL/1 <host> <port>\r\n
//! ```
//!
//! * The line starts with `ASTROGATE-DIAL/` (case-sensitive), then the version `1`. Any other
//!   version is refused as `unsupported dial version`.
//! * Fields are separated by exactly one space.
//! * `<host>` is a DNS hostname: letters, digits, `-`, `_` and `.`, labels of 1..=63 bytes,
//!   at most 253 bytes, one trailing dot allowed; case is folded. IP literals are not accepted:
//!   the gateway routes by name.
//! * `<port>` is 1..=65535 in decimal, without sign or leading zeros.
//! * The line ends with `\r\n`; a bare `\n` is accepted too. The whole line, terminator
//!   included, is at most 300 bytes ([`MAX_LINE`]).
//! * The gateway consumes exactly the header line ([`DialRequest::header_len`] bytes) and
//!   forwards everything after it, so a client may pipeline payload right behind the header.
//!
//! Input that diverges from `ASTROGATE-DIAL/` is not a dial header, and the sniffer says so as
//! soon as the first differing byte arrives; a strict prefix of it is still undecided. Past the
//! prefix every violation is reported as soon as the offending byte arrives.
//!
//! # Reply
//!
//! The gateway answers with one line before any upstream bytes:
//!
//! ```text
//! ASTROGATE-DIAL/1 <code> <reason>\r\n
//! ```
//!
//! | code | reason                   | meaning                                     |
//! |------|--------------------------|---------------------------------------------|
//! | 200  | connected                | the upstream connection is open; bytes flow |
//! | 400  | malformed header         | the dial header was refused                 |
//! | 403  | host not allowed         | no route for this host and port             |
//! | 502  | upstream unreachable     | the upstream refused or could not be reached|
//! | 504  | upstream connect timeout | the upstream did not answer in time         |
//!
//! After any code other than 200 the gateway closes the connection. [`parse_reply`] reads this
//! line on the client side.
use super::cursor::{bad, Cursor, Short, Stop};
use super::http::host_or_ip;
use super::{Hostname, Malformed, Sniff};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    pub host: Hostname,
    pub port: u16,
    /// Length of the header line, terminator included. The gateway consumes exactly these bytes.
    pub header_len: usize,
}

/// Every dial header and reply starts with this.
pub const PREFIX: &[u8] = b"ASTROGATE-DIAL/";
/// Longest header or reply line, terminator included.
pub const MAX_LINE: usize = 300;

const BAD_VERSION: Malformed = Malformed("unsupported dial version");

pub fn sniff(buf: &[u8]) -> Sniff<DialRequest> {
    read_line(buf, request)
}

/// The gateway's answer to a dial header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialStatus {
    Connected,
    Malformed,
    Forbidden,
    Unreachable,
    Timeout,
}

impl DialStatus {
    pub const ALL: [DialStatus; 5] = [
        DialStatus::Connected,
        DialStatus::Malformed,
        DialStatus::Forbidden,
        DialStatus::Unreachable,
        DialStatus::Timeout,
    ];

    pub fn code(self) -> u16 {
        match self {
            DialStatus::Connected => 200,
            DialStatus::Malformed => 400,
            DialStatus::Forbidden => 403,
            DialStatus::Unreachable => 502,
            DialStatus::Timeout => 504,
        }
    }

    /// The whole reply line, terminator included.
    pub fn reply_line(self) -> &'static [u8] {
        match self {
            DialStatus::Connected => b"ASTROGATE-DIAL/1 200 connected\r\n",
            DialStatus::Malformed => b"ASTROGATE-DIAL/1 400 malformed header\r\n",
            DialStatus::Forbidden => b"ASTROGATE-DIAL/1 403 host not allowed\r\n",
            DialStatus::Unreachable => b"ASTROGATE-DIAL/1 502 upstream unreachable\r\n",
            DialStatus::Timeout => b"ASTROGATE-DIAL/1 504 upstream connect timeout\r\n",
        }
    }

    pub fn from_code(code: u16) -> Option<DialStatus> {
        DialStatus::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// Reads a gateway reply: `Found((code, line length))`. Any three-digit code from 100 to 599
/// is accepted so that a client can tell a newer gateway's codes from garbage; the reason is
/// any printable ASCII.
pub fn parse_reply(buf: &[u8]) -> Sniff<(u16, usize)> {
    read_line(buf, reply)
}

/// Runs a line parser over at most [`MAX_LINE`] bytes. The cap is applied to a fixed prefix,
/// so a verdict reached within it never changes when more bytes arrive.
fn read_line<T>(buf: &[u8], parse: fn(&mut Cursor<'_>) -> Result<T, Stop>) -> Sniff<T> {
    let data = buf.get(..MAX_LINE).unwrap_or(buf);
    match parse(&mut Cursor::new(data)) {
        Ok(found) => Sniff::Found(found),
        Err(Stop::NotThis) => Sniff::NotThis,
        Err(Stop::Bad(m)) => Sniff::Malformed(m),
        Err(Stop::Short) if buf.len() >= MAX_LINE => {
            Sniff::Malformed(Malformed("dial line longer than 300 bytes"))
        }
        Err(Stop::Short) => Sniff::Incomplete,
    }
}

fn request(c: &mut Cursor<'_>) -> Result<DialRequest, Stop> {
    prefix_and_version(c)?;
    space(c)?;
    let host = host(c)?;
    space(c)?;
    let port = port(c)?;
    line_end(c)?;
    Ok(DialRequest {
        host,
        port,
        header_len: c.position(),
    })
}

fn reply(c: &mut Cursor<'_>) -> Result<(u16, usize), Stop> {
    prefix_and_version(c)?;
    space(c)?;
    let code = status_code(c)?;
    space(c)?;
    reason(c)?;
    line_end(c)?;
    Ok((code, c.position()))
}

fn prefix_and_version(c: &mut Cursor<'_>) -> Result<(), Stop> {
    for &expected in PREFIX {
        if c.u8()? != expected {
            return Err(Stop::NotThis);
        }
    }
    if c.u8()? != b'1' {
        return Err(Stop::Bad(BAD_VERSION));
    }
    // `/10` or `/1.1` is another version, not version 1 followed by garbage.
    if !matches!(c.peek()?, b' ' | b'\r' | b'\n') {
        return Err(Stop::Bad(BAD_VERSION));
    }
    Ok(())
}

fn space(c: &mut Cursor<'_>) -> Result<(), Stop> {
    match c.u8()? {
        b' ' => Ok(()),
        b'\r' | b'\n' => bad("dial line ends before all its fields"),
        _ => bad("dial fields must be separated by one space"),
    }
}

fn host(c: &mut Cursor<'_>) -> Result<Hostname, Stop> {
    let rest = c.rest();
    let len = rest
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')))
        .ok_or(Short)?;
    let raw = c.take(len)?;
    if !matches!(c.peek()?, b' ' | b'\r' | b'\n') {
        return bad("dial host has a character outside [A-Za-z0-9._-]");
    }
    // Hostname::parse takes `127.0.0.1` for a name; the gateway routes by name only.
    match host_or_ip(raw) {
        Ok(Some(host)) => Ok(host),
        Ok(None) => bad("dial host is an IP address, not a hostname"),
        Err(m) => Err(Stop::Bad(m)),
    }
}

const BAD_PORT: &str = "dial port is not 1..=65535 without leading zeros";

fn port(c: &mut Cursor<'_>) -> Result<u16, Stop> {
    let mut port: u32 = 0;
    let mut digits = 0;
    loop {
        match c.peek()? {
            b'0' if digits == 0 => return bad(BAD_PORT),
            d @ b'0'..=b'9' => {
                port = port * 10 + u32::from(d - b'0');
                digits += 1;
                // Checked per digit, so the value never grows past six digits.
                if port > u32::from(u16::MAX) {
                    return bad(BAD_PORT);
                }
                c.skip(1)?;
            }
            b'\r' | b'\n' if digits > 0 => break,
            _ => return bad("dial port is not a decimal number"),
        }
    }
    u16::try_from(port).or_else(|_| bad(BAD_PORT))
}

fn status_code(c: &mut Cursor<'_>) -> Result<u16, Stop> {
    let mut code = 0u16;
    for i in 0..3 {
        let d = c.u8()?;
        let valid = match i {
            0 => (b'1'..=b'5').contains(&d),
            _ => d.is_ascii_digit(),
        };
        if !valid {
            return bad("dial reply code is not 100..=599");
        }
        code = code * 10 + u16::from(d - b'0');
    }
    Ok(code)
}

fn reason(c: &mut Cursor<'_>) -> Result<(), Stop> {
    loop {
        match c.peek()? {
            b'\r' | b'\n' => return Ok(()),
            0x20..=0x7E => c.skip(1)?,
            _ => return bad("dial reply reason is not printable ASCII"),
        }
    }
}

fn line_end(c: &mut Cursor<'_>) -> Result<(), Stop> {
    if c.u8()? == b'\r' && c.u8()? != b'\n' {
        return bad("dial line has a CR without LF");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::classify_tests::{assert_mutations_stable, is_decided};
    use crate::sniff::test_support::assert_prefixes_incomplete;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/dial/", $name)).as_slice()
        };
    }

    fn dial(host: &str, port: u16, header_len: usize) -> DialRequest {
        DialRequest {
            host: Hostname::parse(host.as_bytes()).unwrap(),
            port,
            header_len,
        }
    }

    fn line_len(buf: &[u8]) -> usize {
        buf.iter().position(|&b| b == b'\n').unwrap() + 1
    }

    #[test]
    fn headers_are_found_at_their_line_end() {
        for (bytes, host, port) in [
            (fixture!("basic.bin"), "blog.example.com", 443),
            (fixture!("bare-lf.bin"), "blog.example.com", 8080),
            (fixture!("pipelined.bin"), "blog.example.com", 22),
        ] {
            let len = line_len(bytes);
            assert_prefixes_incomplete(sniff, bytes, len, dial(host, port, len));
        }
    }

    #[test]
    fn the_gateway_strips_exactly_the_header() {
        let bytes = fixture!("pipelined.bin");
        let Sniff::Found(req) = sniff(bytes) else {
            panic!("not found");
        };
        assert_eq!(
            bytes.get(req.header_len..),
            Some(&b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"[..])
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                fixture!("hostile-version-2.bin"),
                "unsupported dial version",
            ),
            (
                fixture!("hostile-version-10.bin"),
                "unsupported dial version",
            ),
            (fixture!("hostile-port-0.bin"), BAD_PORT),
            (fixture!("hostile-port-70000.bin"), BAD_PORT),
            (fixture!("hostile-port-leading-zero.bin"), BAD_PORT),
            (
                fixture!("hostile-port-plus.bin"),
                "dial port is not a decimal number",
            ),
            (fixture!("hostile-double-space.bin"), "empty hostname"),
            (
                fixture!("hostile-bad-host.bin"),
                "dial host has a character outside [A-Za-z0-9._-]",
            ),
            (
                fixture!("hostile-nul.bin"),
                "dial host has a character outside [A-Za-z0-9._-]",
            ),
            (
                fixture!("hostile-ip-host.bin"),
                "dial host is an IP address, not a hostname",
            ),
            (
                fixture!("hostile-cr-without-lf.bin"),
                "dial line has a CR without LF",
            ),
            (
                fixture!("hostile-overlong.bin"),
                "dial line longer than 300 bytes",
            ),
        ];
        for &(bytes, reason) in cases {
            assert_eq!(
                sniff(bytes),
                Sniff::Malformed(Malformed(reason)),
                "{reason}"
            );
        }
        assert_eq!(sniff(fixture!("hostile-truncated.bin")), Sniff::Incomplete);
        assert_eq!(sniff(fixture!("hostile-lowercase.bin")), Sniff::NotThis);
    }

    #[test]
    fn violations_are_reported_at_the_offending_byte() {
        assert_eq!(sniff(b"ASTROGATE-DIAL/2"), Sniff::Malformed(BAD_VERSION));
        assert_eq!(sniff(b"ASTROGATE-DIAL/1"), Sniff::Incomplete);
        assert_eq!(sniff(b"ASTROGATE-DIAL/1."), Sniff::Malformed(BAD_VERSION));
        assert_eq!(
            sniff(b"ASTROGATE-DIAL/1 a 0"),
            Sniff::Malformed(Malformed(BAD_PORT))
        );
        assert_eq!(
            sniff(b"ASTROGATE-DIAL/1 a 65536"),
            Sniff::Malformed(Malformed(BAD_PORT))
        );
        assert_eq!(sniff(b"ASTROGATE-DIAL/1 a 65535"), Sniff::Incomplete);
        let short = Sniff::Malformed(Malformed("dial line ends before all its fields"));
        assert_eq!(sniff(b"ASTROGATE-DIAL/1\r\n"), short);
        assert_eq!(sniff(b"ASTROGATE-DIAL/1 a.example\n"), short);
    }

    #[test]
    fn the_line_limit_counts_the_terminator() {
        let prefix = b"ASTROGATE-DIAL/1 ";
        let suffix = b" 443\r\n";
        // Labels of 60 bytes keep the name valid up to the 253-byte name limit.
        let host_len = MAX_LINE - prefix.len() - suffix.len();
        let host: Vec<u8> = (0..host_len)
            .map(|i| if i % 61 == 60 { b'.' } else { b'a' })
            .collect();
        let line = [&prefix[..], &host, suffix].concat();
        assert_eq!(line.len(), MAX_LINE);
        // The name is too long for DNS, but the line itself fits.
        let too_long = Malformed("hostname longer than 253 bytes");
        assert_eq!(sniff(&line), Sniff::Malformed(too_long));
        let long_port = [&b"ASTROGATE-DIAL/1 a.example "[..], &[b'1'; 300]].concat();
        assert_eq!(sniff(&long_port), Sniff::Malformed(Malformed(BAD_PORT)));
    }

    #[test]
    fn other_protocols_are_not_this_on_the_first_differing_byte() {
        assert_eq!(sniff(b""), Sniff::Incomplete);
        assert_eq!(sniff(b"ASTRO"), Sniff::Incomplete);
        assert_eq!(sniff(b"ASTROX"), Sniff::NotThis);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniff::NotThis);
        assert_eq!(sniff(b"\x16\x03\x01"), Sniff::NotThis);
        assert_eq!(sniff(b"<?xml"), Sniff::NotThis);
    }

    #[test]
    fn replies_round_trip() {
        for status in DialStatus::ALL {
            let line = status.reply_line();
            assert_prefixes_incomplete(parse_reply, line, line.len(), (status.code(), line.len()));
            assert_eq!(DialStatus::from_code(status.code()), Some(status));
        }
        let piped = fixture!("reply-connected-pipelined.bin");
        assert_eq!(parse_reply(piped), Sniff::Found((200, 32)));
        assert_eq!(DialStatus::from_code(201), None);
        assert_eq!(
            parse_reply(b"ASTROGATE-DIAL/1 600 x\r\n"),
            Sniff::Malformed(Malformed("dial reply code is not 100..=599"))
        );
        assert_eq!(
            parse_reply(b"ASTROGATE-DIAL/1 200 \x01\r\n"),
            Sniff::Malformed(Malformed("dial reply reason is not printable ASCII"))
        );
        assert_eq!(parse_reply(b"HTTP/1.1 200 OK\r\n"), Sniff::NotThis);
    }

    #[test]
    fn mutations_never_panic_or_change_a_decided_answer() {
        let seeds = [
            fixture!("basic.bin"),
            fixture!("bare-lf.bin"),
            fixture!("pipelined.bin"),
        ];
        assert_mutations_stable(sniff, is_decided, &seeds, 10_000);
        let replies: Vec<&[u8]> = DialStatus::ALL.iter().map(|s| s.reply_line()).collect();
        assert_mutations_stable(parse_reply, is_decided, &replies, 10_000);
    }
}
