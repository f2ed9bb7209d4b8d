//! `classify` over the text-protocol fixtures, and the mutation check the sniffers share.
use super::xmpp::{StreamHeader, StreamKind};
use super::{acme, classify, http, Classified, Detected, Hostname, Malformed, Protocol, Sniff};

const CURL: &[u8] = include_bytes!("../../tests/fixtures/http/curl-http11-host-port.bin");
const H2: &[u8] = include_bytes!("../../tests/fixtures/http/curl-http2-prior-knowledge.bin");
const CHALLENGE: &[u8] = include_bytes!("../../tests/fixtures/acme/curl-resolve-challenge.bin");
const CHALLENGE_NO_HOST: &[u8] =
    include_bytes!("../../tests/fixtures/acme/curl-http10-no-host-challenge.bin");
const XMPP_C2S: &[u8] = include_bytes!("../../tests/fixtures/xmpp/sendxmpp-c2s.bin");
const XMPP_S2S: &[u8] = include_bytes!("../../tests/fixtures/xmpp/prosody-s2s.bin");
const DIAL: &[u8] = include_bytes!("../../tests/fixtures/dial/pipelined.bin");
const DUP_HOST: &[u8] = include_bytes!("../../tests/fixtures/http/hostile-duplicate-host.bin");

use Protocol::{Acme, Dial, Http, Tls, Xmpp};

fn host(name: &str) -> Option<Hostname> {
    Some(Hostname::parse(name.as_bytes()).unwrap())
}

fn detected_protocol(c: &Classified) -> Option<Protocol> {
    match c {
        Classified::Detected(d) => Some(d.protocol()),
        _ => None,
    }
}

#[test]
fn acme_first_takes_challenges_and_leaves_the_rest_to_http() {
    let order = [Acme, Http];
    let Classified::Detected(Detected::Acme(ch)) = classify(&order, CHALLENGE) else {
        panic!("challenge not routed to acme");
    };
    assert_eq!(Some(ch.host), host("blog.example.com"));
    assert!(ch.path.starts_with(acme::CHALLENGE_PREFIX));
    assert_eq!(detected_protocol(&classify(&order, CURL)), Some(Http));
    // Without a host no certificate is at stake: plain HTTP handles it.
    assert_eq!(
        classify(&order, CHALLENGE_NO_HOST),
        Classified::Detected(Detected::Http(http::Request {
            host: None,
            path: "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"
                .to_owned(),
        }))
    );
}

#[test]
fn acme_decides_on_the_request_line_so_http_is_not_held_back() {
    // A non-challenge request line: acme steps aside, and http waits for the headers.
    let line_end = CURL.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(acme::sniff(&CURL[..line_end]), Sniff::NotThis);
    assert_eq!(
        classify(&[Acme, Http], &CURL[..line_end]),
        Classified::NeedMore
    );
    // A challenge request line keeps acme undecided, which holds http back.
    let line_end = CHALLENGE.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert_eq!(
        classify(&[Acme, Http], &CHALLENGE[..line_end]),
        Classified::NeedMore
    );
}

#[test]
fn http_first_shadows_acme() {
    let order = [Http, Acme];
    assert_eq!(detected_protocol(&classify(&order, CHALLENGE)), Some(Http));
    assert_eq!(detected_protocol(&classify(&order, CURL)), Some(Http));
}

#[test]
fn malformed_http_is_reported_whichever_of_acme_and_http_sees_it() {
    let expected = Malformed("more than one Host header");
    assert_eq!(
        classify(&[Http, Acme], DUP_HOST),
        Classified::Malformed(Http, expected)
    );
    // The fixture asks for a non-challenge path, so acme steps aside and http reports it.
    assert_eq!(
        classify(&[Acme, Http], DUP_HOST),
        Classified::Malformed(Http, expected)
    );
}

#[test]
fn mixed_listener_routes_each_protocol() {
    let order = [Tls, Http, Xmpp, Dial];
    assert_eq!(detected_protocol(&classify(&order, CURL)), Some(Http));
    assert_eq!(
        classify(&order, XMPP_C2S),
        Classified::Detected(Detected::Xmpp(StreamHeader {
            to: host("example.com"),
            kind: StreamKind::Client,
        }))
    );
    assert_eq!(
        classify(&order, XMPP_S2S),
        Classified::Detected(Detected::Xmpp(StreamHeader {
            to: host("federated.example"),
            kind: StreamKind::Server,
        }))
    );
    let Classified::Detected(Detected::Dial(dial)) = classify(&order, DIAL) else {
        panic!("dial header not detected");
    };
    assert_eq!((Some(dial.host), dial.port), (host("blog.example.com"), 22));
    // Acme is not enabled here, so a challenge is plain HTTP.
    assert_eq!(detected_protocol(&classify(&order, CHALLENGE)), Some(Http));
}

#[test]
fn mixed_listener_waits_while_an_earlier_sniffer_is_undecided() {
    let order = [Tls, Http, Xmpp, Dial];
    assert_eq!(classify(&order, b""), Classified::NeedMore);
    // Uppercase letters could still be an HTTP method, so dial must wait...
    assert_eq!(classify(&order, &DIAL[..9]), Classified::NeedMore);
    // ...until the `-` rules HTTP out; then dial itself is undecided.
    assert_eq!(classify(&order, &DIAL[..12]), Classified::NeedMore);
    assert_eq!(classify(&order, H2), Classified::Unrecognized);
    assert_eq!(
        classify(&order, b"\x00\x01garbage"),
        Classified::Unrecognized
    );
    assert_eq!(
        classify(&order, b"SSH-2.0-OpenSSH_9.2\r\n"),
        Classified::Unrecognized
    );
}

#[test]
fn classify_survives_mutations() {
    let order = Protocol::ALL;
    assert_mutations_stable(
        |b| classify(&order, b),
        |c| !matches!(c, Classified::NeedMore | Classified::Unrecognized),
        &[CURL, CHALLENGE, XMPP_C2S, XMPP_S2S, DIAL, DUP_HOST],
        4_000,
    );
}

/// A tiny deterministic PRNG (xorshift64), so mutation runs are reproducible without crates.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n`; `n` must be non-zero.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Bytes that sit on the decision points of the text protocols.
const INTERESTING: &[u8] = b"\r\n :/<>'\"=?&[].\0\x16\xff09AZaz";

/// Mutates `seeds` `rounds` times and checks the sniffer contract on each result: no panic,
/// and an answer that `decided` accepts stays the same whatever bytes are appended (checked
/// both by appending and by cutting the mutant at a random point).
pub(crate) fn assert_mutations_stable<T: std::fmt::Debug + PartialEq>(
    sniff: impl Fn(&[u8]) -> T,
    decided: impl Fn(&T) -> bool,
    seeds: &[&[u8]],
    rounds: usize,
) {
    let mut rng = XorShift::new(0x5eed_a57e_0a7e);
    for round in 0..rounds {
        let mut input = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut input);
        }
        let whole = sniff(&input);
        if decided(&whole) {
            let mut longer = input.clone();
            for _ in 0..rng.below(16) {
                longer.push(rng.next() as u8);
            }
            longer.extend_from_slice(b"\r\n\r\n>");
            assert_eq!(
                sniff(&longer),
                whole,
                "round {round}: appending changed the decided answer for {input:?}"
            );
        }
        let cut = rng.below(input.len() + 1);
        let prefix = sniff(&input[..cut]);
        if decided(&prefix) {
            assert_eq!(
                whole, prefix,
                "round {round}: the decided answer for {cut} bytes of {input:?} changed"
            );
        }
    }
}

fn mutate(rng: &mut XorShift, input: &mut Vec<u8>) {
    let at = rng.below(input.len() + 1);
    let byte = if rng.below(2) == 0 {
        INTERESTING[rng.below(INTERESTING.len())]
    } else {
        rng.next() as u8
    };
    match rng.below(6) {
        0 if at < input.len() => input[at] = byte,
        1 if at < input.len() => input[at] ^= 1 << rng.below(8),
        2 if at < input.len() => {
            input.remove(at);
        }
        3 => input.truncate(at),
        4 => {
            // Repeating a chunk makes duplicate headers and attributes and overlong lines.
            let len = rng.below(64).min(input.len() - at);
            let chunk = input[at..at + len].to_vec();
            let max_times = if rng.below(8) == 0 { 300 } else { 2 };
            let times = 1 + rng.below(max_times);
            for _ in 0..times {
                input.splice(at..at, chunk.iter().copied());
            }
        }
        _ => input.insert(at, byte),
    }
}

/// `decided` for a single sniffer's answer.
pub(crate) fn is_decided<T>(s: &Sniff<T>) -> bool {
    matches!(s, Sniff::Found(_) | Sniff::Malformed(_))
}

#[test]
#[should_panic(expected = "decided answer")]
fn mutation_check_catches_an_answer_that_flips() {
    // Decided on short input, and changes its mind when more bytes arrive.
    let flaky = |b: &[u8]| {
        if b.len() < 40 {
            Sniff::Found(())
        } else {
            Sniff::Malformed(Malformed("long"))
        }
    };
    assert_mutations_stable(flaky, is_decided, &[CURL], 1_000);
}
