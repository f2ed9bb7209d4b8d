//! Real captures (tests/fixtures/quic) and every cut of them.
use super::*;

/// The datagrams of a capture: each prefixed by its length (u16, big-endian).
fn datagrams(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        out.push(&rest[2..2 + len]);
        rest = &rest[2 + len..];
    }
    out
}

macro_rules! capture {
    ($name:literal) => {
        include_bytes!(concat!("../../../tests/fixtures/quic/", $name))
    };
}

fn host(s: &str) -> Sniff<Option<Hostname>> {
    Sniff::Found(Some(Hostname::parse(s.as_bytes()).unwrap()))
}

#[test]
fn aioquic_v1_and_v2_initials_give_their_sni() {
    assert_eq!(
        sniff(&datagrams(capture!("aioquic_v1.bin"))),
        host("blog.example.com")
    );
    assert_eq!(
        sniff(&datagrams(capture!("aioquic_v2.bin"))),
        host("h3.example.org")
    );
}

#[test]
fn chromiums_post_quantum_client_hello_spans_two_datagrams() {
    let all = datagrams(capture!("chromium_pq.bin"));
    assert_eq!(sniff(&all[..1]), Sniff::Incomplete);
    assert_eq!(sniff(&all[..2]), host("pq.example.com"));
    // Its retransmissions (the server never answered) change nothing.
    assert_eq!(sniff(&all), host("pq.example.com"));
}

#[test]
fn a_client_hello_over_two_datagrams_needs_both() {
    let all = datagrams(capture!("aioquic_v1_split.bin"));
    assert_eq!(all.len(), 2);
    assert_eq!(sniff(&all[..1]), Sniff::Incomplete);
    assert_eq!(sniff(&all), host("split.example.net"));
    // The second datagram alone is not a connection's start: its keys come from the first.
    assert_eq!(
        sniff(&[all[0], all[0]]),
        Sniff::Incomplete,
        "a duplicate adds nothing"
    );
}

/// Where the datagram's last Initial packet ends: bytes after it (padding, other packets)
/// carry nothing the sniffer needs.
fn initial_end(datagram: &[u8]) -> usize {
    let (mut at, mut end) = (0, 0);
    while let Ok((p, next)) = packet::next_packet(&datagram[at..]) {
        let len = datagram.len() - at - next.len();
        if matches!(p, Packet::Initial { .. }) {
            end = at + len;
        }
        at += len;
        if next.is_empty() {
            break;
        }
    }
    end
}

#[test]
fn every_cut_of_the_datagram_that_completes_the_hello_is_refused_or_waits() {
    // Each capture with the number of datagrams its ClientHello takes.
    for (name, takes) in [
        (&capture!("aioquic_v1.bin")[..], 1),
        (&capture!("aioquic_v1_split.bin")[..], 2),
        (&capture!("chromium_pq.bin")[..], 2),
    ] {
        let all = datagrams(name);
        let (last, before) = all[..takes].split_last().unwrap();
        let mut needed = initial_end(last);
        if before.is_empty() {
            needed = needed.max(MIN_INITIAL_DATAGRAM);
        }
        assert!(needed > 0);
        for cut in 0..=last.len() {
            let mut held = before.to_vec();
            held.push(&last[..cut]);
            let got = sniff(&held);
            assert_eq!(
                matches!(got, Sniff::Found(_)),
                cut >= needed,
                "cut at {cut} of {} (the Initial ends at {needed}): {got:?}",
                last.len()
            );
        }
    }
}

#[test]
fn other_udp_is_not_quic_and_tampering_is_caught() {
    assert_eq!(
        sniff(&[b"\x12\x34\x01\x00\x00\x01".as_slice()]),
        Sniff::NotThis
    );
    assert_eq!(sniff(&[&[0x40u8; 1200][..]]), Sniff::NotThis); // a short header
    assert_eq!(sniff(&[]), Sniff::Incomplete);
    // An unknown version: not readable, so not claimed.
    let mut v = datagrams(capture!("aioquic_v1.bin"))[0].to_vec();
    v[1..5].copy_from_slice(&[0x1a, 0x2a, 0x3a, 0x4a]);
    assert_eq!(sniff(&[&v]), Sniff::NotThis);
    // One flipped ciphertext bit fails authentication.
    let mut flipped = datagrams(capture!("aioquic_v1.bin"))[0].to_vec();
    flipped[100] ^= 1;
    assert!(matches!(sniff(&[&flipped]), Sniff::Malformed(_)));
    // Under 1200 bytes a client's Initial is refused before any crypto.
    let short = &datagrams(capture!("aioquic_v1.bin"))[0][..1199];
    assert!(matches!(sniff(&[short]), Sniff::Malformed(_)));
}

/// A CRYPTO frame (RFC 9000 §19.6) with two-byte varints.
fn crypto_frame(offset: usize, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x06];
    f.extend_from_slice(&(0x4000 | offset as u16).to_be_bytes());
    f.extend_from_slice(&(0x4000 | data.len() as u16).to_be_bytes());
    f.extend_from_slice(data);
    f
}

#[test]
fn crypto_frames_shuffled_across_packets_and_datagrams_are_put_back_in_order() {
    // curl's ClientHello without its record header: the bare handshake message.
    let hello = &include_bytes!("../../../tests/fixtures/tls/curl.bin")[5..];
    let dcid = [7u8; 8];
    for version in [1, 2] {
        let (a, rest) = hello.split_at(100);
        let (b, c) = rest.split_at(250);
        // Datagram 1: the last piece, then the first; datagram 2: the middle, with a PING.
        let mut one = crypto_frame(350, c);
        one.extend(crypto_frame(0, a));
        let mut two = vec![0x01];
        two.extend(crypto_frame(100, b));
        let d1 = seal_initial(version, &dcid, 0, &one);
        let d2 = seal_initial(version, &dcid, 1, &two);
        assert_eq!(d1.len(), 1200);
        assert_eq!(sniff(&[&d1]), Sniff::Incomplete);
        assert_eq!(sniff(&[&d1, &d2]), host("blog.example.com"), "v{version}");
        // The same packets coalesced into one datagram.
        let both = [d1.clone(), d2.clone()].concat();
        assert_eq!(sniff(&[&both]), host("blog.example.com"));
        // A packet for another connection ID is not this connection's.
        let other = seal_initial(version, &[9u8; 8], 1, &two);
        assert_eq!(sniff(&[&d1, &other]), Sniff::Incomplete);
    }
}
