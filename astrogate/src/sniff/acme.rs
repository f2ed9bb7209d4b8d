//! ACME HTTP-01: requests for `/.well-known/acme-challenge/` are routed to the ACME target.
//!
//! This is HTTP routing with a path rule, so it rides on the HTTP sniffer: malformed HTTP is
//! reported with the HTTP sniffer's reason, and an HTTP request for any other path (or one that
//! names no host, so no certificate could be at stake) is `NotThis`, leaving it to the `http`
//! sniffer. A listener lists `acme` before `http` to give challenges priority.
use super::http::{self, found};
use super::{Hostname, Sniff};

pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// An HTTP-01 challenge fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub host: Hostname,
    /// The full request path, starting with [`CHALLENGE_PREFIX`].
    pub path: String,
}

pub fn sniff(buf: &[u8]) -> Sniff<Challenge> {
    // The request line alone settles "not a challenge", so such requests need not wait for
    // the rest of the head.
    let line = match found(http::request_line(buf)) {
        Ok(line) => line,
        Err(undecided) => return undecided,
    };
    if !line.path.starts_with(CHALLENGE_PREFIX) {
        return Sniff::NotThis;
    }
    match http::sniff(buf) {
        Sniff::Found(http::Request {
            host: Some(host),
            path,
        }) => Sniff::Found(Challenge { host, path }),
        Sniff::Found(_) => Sniff::NotThis,
        Sniff::Incomplete => Sniff::Incomplete,
        Sniff::NotThis => Sniff::NotThis,
        Sniff::Malformed(m) => Sniff::Malformed(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::classify_tests::{assert_mutations_stable, is_decided};
    use crate::sniff::test_support::assert_prefixes_incomplete;
    use crate::sniff::Malformed;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/acme/", $name)).as_slice()
        };
    }

    const TOKEN_PATH: &str =
        "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
    /// Real challenge fetches, all for blog.example.com.
    const CHALLENGES: &[&[u8]] = &[
        fixture!("curl-resolve-challenge.bin"),
        fixture!("curl-host-challenge.bin"),
        fixture!("wget-challenge.bin"),
    ];

    fn challenge() -> Challenge {
        Challenge {
            host: Hostname::parse(b"blog.example.com").unwrap(),
            path: TOKEN_PATH.to_owned(),
        }
    }

    fn head_len(buf: &[u8]) -> usize {
        buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
    }

    #[test]
    fn real_challenges_are_found() {
        for &bytes in CHALLENGES {
            assert_eq!(sniff(bytes), Sniff::Found(challenge()));
        }
    }

    #[test]
    fn real_challenges_are_incomplete_until_the_blank_line() {
        for &bytes in CHALLENGES {
            assert_prefixes_incomplete(sniff, bytes, head_len(bytes), challenge());
        }
    }

    #[test]
    fn other_requests_are_not_this_from_the_end_of_the_request_line() {
        let other = fixture!("curl-not-challenge.bin");
        let line_end = other.iter().position(|&b| b == b'\n').unwrap() + 1;
        for end in 0..line_end {
            assert_eq!(sniff(&other[..end]), Sniff::Incomplete, "{end}");
        }
        for end in line_end..=other.len() {
            assert_eq!(sniff(&other[..end]), Sniff::NotThis, "{end}");
        }
    }

    #[test]
    fn challenges_without_a_host_name_are_left_to_http() {
        assert_eq!(
            sniff(fixture!("curl-http10-no-host-challenge.bin")),
            Sniff::NotThis
        );
        assert_eq!(sniff(fixture!("curl-ip-challenge.bin")), Sniff::NotThis);
    }

    #[test]
    fn malformed_challenges_get_the_http_reason() {
        let cases: &[(&[u8], &str)] = &[
            (
                fixture!("hostile-duplicate-host.bin"),
                "more than one Host header",
            ),
            (
                fixture!("hostile-bad-host.bin"),
                "hostname has a character outside [A-Za-z0-9._-]",
            ),
            (
                fixture!("hostile-nul-header.bin"),
                "invalid byte in HTTP header name",
            ),
        ];
        for &(bytes, reason) in cases {
            assert_eq!(
                sniff(bytes),
                Sniff::Malformed(Malformed(reason)),
                "{reason}"
            );
            assert_eq!(sniff(bytes), http::sniff(bytes).map(|_| challenge()));
        }
        assert_eq!(sniff(fixture!("hostile-truncated.bin")), Sniff::Incomplete);
        assert_eq!(sniff(b"\x16\x03\x01"), Sniff::NotThis);
        assert_eq!(sniff(b"<stream"), Sniff::NotThis);
    }

    #[test]
    fn mutations_never_panic_or_change_a_decided_answer() {
        let mut seeds = CHALLENGES.to_vec();
        seeds.push(fixture!("curl-not-challenge.bin"));
        assert_mutations_stable(sniff, is_decided, &seeds, 10_000);
    }
}
