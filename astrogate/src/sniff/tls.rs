//! TLS: the server name (SNI) from a ClientHello.
//!
//! Two layers are read. Records (RFC 8446 §5.1) carry the handshake stream in fragments of
//! any size, so a ClientHello may span several records and is reassembled first. The
//! ClientHello itself (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2) is then parsed in full, so that a
//! length lying anywhere in it is caught, and its server_name extension (RFC 6066 §3) read.
use std::borrow::Cow;

use super::cursor::{Cursor, Short};
use super::{Hostname, Malformed, Sniff};

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// RFC 8446 §5.1: a plaintext record fragment MUST NOT exceed 2^14 bytes, and a ClientHello
/// is always plaintext, so a longer one is refused by every server anyway.
const MAX_FRAGMENT: usize = 1 << 14;

/// Cap on the ClientHello body, and so on the reassembly copy. Real ones are under 3 KB even
/// with post-quantum key shares; the format would allow about 128 KiB, but nothing sends
/// that, and each extra byte is memory an unauthenticated peer makes us hold.
const MAX_CLIENT_HELLO: usize = 1 << 16;

/// RFC 8446 §4.1.2: legacy_session_id is at most 32 bytes.
const MAX_SESSION_ID: usize = 32;

/// Sniffs a TLS ClientHello. `Found(None)` means a well-formed ClientHello without SNI.
pub fn sniff(buf: &[u8]) -> Sniff<Option<Hostname>> {
    match first_handshake_message(buf) {
        Sniff::Found(message) => match server_name(&message) {
            Ok(host) => Sniff::Found(host),
            Err(why) => Sniff::Malformed(why),
        },
        Sniff::Incomplete => Sniff::Incomplete,
        Sniff::NotThis => Sniff::NotThis,
        Sniff::Malformed(why) => Sniff::Malformed(why),
    }
}

/// Sniffs a ClientHello from a bare handshake stream, without the record layer: what QUIC
/// carries in its CRYPTO frames (RFC 9001 §4). `Found(None)`: a ClientHello without SNI.
pub fn sniff_handshake(stream: &[u8]) -> Sniff<Option<Hostname>> {
    match handshake_message_is_whole(stream) {
        Err(why) => Sniff::Malformed(why),
        Ok(false) => Sniff::Incomplete,
        Ok(true) => match server_name(stream) {
            Ok(host) => Sniff::Found(host),
            Err(why) => Sniff::Malformed(why),
        },
    }
}

/// Concatenates the fragments of consecutive handshake records until the first handshake
/// message is whole, and returns it from its 4-byte header on; bytes past its end may follow.
/// Borrows when one record holds it all, which is what every real client sends.
fn first_handshake_message(buf: &[u8]) -> Sniff<Cow<'_, [u8]>> {
    let mut input = Cursor::new(buf);
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    loop {
        let first = input.position() == 0;
        let len = match record_header(&mut input, first) {
            Sniff::Found(len) => len,
            Sniff::Incomplete => return Sniff::Incomplete,
            Sniff::NotThis => return Sniff::NotThis,
            Sniff::Malformed(why) => return Sniff::Malformed(why),
        };
        // Take what has arrived of the record even if it is cut short, so a bad handshake
        // header is refused without waiting for the rest.
        let fragment = input.take_up_to(len);
        let whole_record = fragment.len() == len;
        if message.is_empty() {
            message = Cow::Borrowed(fragment);
        } else {
            // Bounded: handshake_message_is_whole refuses a declared length over the cap
            // as soon as the header is in, and at most one more record is added after that.
            message.to_mut().extend_from_slice(fragment);
        }
        match handshake_message_is_whole(&message) {
            Err(why) => return Sniff::Malformed(why),
            Ok(true) => return Sniff::Found(message),
            // The rest of the message is in the next record.
            Ok(false) if whole_record => continue,
            Ok(false) => return Sniff::Incomplete,
        }
    }
}

/// Reads a record header and returns its fragment length. The first record's type and
/// version are what tell TLS from other protocols, so a mismatch there is `NotThis`; in a
/// later record it breaks a ClientHello already under way (RFC 8446 §5.1 forbids
/// interleaving other record types with a fragmented handshake message).
fn record_header(input: &mut Cursor<'_>, first: bool) -> Sniff<usize> {
    let reject = |why| {
        if first {
            Sniff::NotThis
        } else {
            Sniff::Malformed(Malformed(why))
        }
    };
    // Each byte is judged as soon as it arrives, so that another sniffer gets its turn early.
    let Ok(content_type) = input.u8() else {
        return Sniff::Incomplete;
    };
    if content_type != CONTENT_HANDSHAKE {
        return reject("a non-handshake record interrupts the ClientHello");
    }
    let Ok(major) = input.u8() else {
        return Sniff::Incomplete;
    };
    if major != 3 {
        return reject("record version is not SSL 3.0 to TLS 1.2");
    }
    let Ok(minor) = input.u8() else {
        return Sniff::Incomplete;
    };
    // legacy_record_version: 0x0301 or 0x0303 in practice; SSL 3.0 and TLS 1.1 may appear.
    if minor > 3 {
        return reject("record version is not SSL 3.0 to TLS 1.2");
    }
    let Ok(len) = input.u16() else {
        return Sniff::Incomplete;
    };
    match usize::from(len) {
        // RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
        0 => Sniff::Malformed(Malformed("empty handshake record")),
        len if len > MAX_FRAGMENT => Sniff::Malformed(Malformed("record longer than 2^14 bytes")),
        len => Sniff::Found(len),
    }
}

/// Whether `message` holds the whole first handshake message; an error as soon as its header
/// shows it is not an acceptable ClientHello.
fn handshake_message_is_whole(message: &[u8]) -> Result<bool, Malformed> {
    let mut message = Cursor::new(message);
    let Ok(kind) = message.u8() else {
        return Ok(false);
    };
    if kind != HANDSHAKE_CLIENT_HELLO {
        return Err(Malformed("first handshake message is not a ClientHello"));
    }
    let Ok(len) = message.u24() else {
        return Ok(false);
    };
    // A u24 fits any usize this builds for; saturating keeps even that conversion panic-free.
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > MAX_CLIENT_HELLO {
        return Err(Malformed("ClientHello longer than 64 KiB"));
    }
    Ok(message.remaining() >= len)
}

/// Parses a whole ClientHello message and returns the host_name of its server_name
/// extension, if any. Everything is length-checked, so lengths that disagree with each
/// other are refused rather than read past.
fn server_name(message: &[u8]) -> Result<Option<Hostname>, Malformed> {
    const OVERRUN: Malformed = Malformed("ClientHello field overruns its enclosing block");
    let overrun = |Short| OVERRUN;

    // The type and length were checked during reassembly; the body is the declared length,
    // and whatever follows it belongs to later messages.
    let mut message = Cursor::new(message);
    message.skip(1).map_err(overrun)?;
    let len = message.u24().map_err(overrun)?;
    let body = message
        .take(usize::try_from(len).unwrap_or(usize::MAX))
        .map_err(overrun)?;

    let mut hello = Cursor::new(body);
    let legacy_version = hello.u16().map_err(overrun)?;
    if legacy_version >> 8 != 3 {
        return Err(Malformed("ClientHello version is not SSL 3.0 to TLS 1.3"));
    }
    hello.skip(32).map_err(overrun)?; // random
    if hello.block8().map_err(overrun)?.remaining() > MAX_SESSION_ID {
        return Err(Malformed("ClientHello session id longer than 32 bytes"));
    }
    let cipher_suites = hello.block16().map_err(overrun)?.remaining();
    if cipher_suites == 0 || cipher_suites % 2 != 0 {
        return Err(Malformed(
            "ClientHello cipher suite list is empty or of odd length",
        ));
    }
    if hello.block8().map_err(overrun)?.is_empty() {
        return Err(Malformed("ClientHello compression method list is empty"));
    }
    // RFC 5246 §7.4.1.2: a ClientHello may end here, with no extensions block at all.
    if hello.is_empty() {
        return Ok(None);
    }
    let mut extensions = hello.block16().map_err(overrun)?;
    if !hello.is_empty() {
        return Err(Malformed("bytes after the ClientHello extensions"));
    }

    let mut host = None;
    let mut seen_server_name = false;
    // Every extension is walked, not just up to server_name, so framing errors after it are
    // caught and a second server_name cannot hide a different name from other readers.
    while !extensions.is_empty() {
        let kind = extensions.u16().map_err(overrun)?;
        let data = extensions.block16().map_err(overrun)?;
        if kind == EXTENSION_SERVER_NAME {
            if seen_server_name {
                return Err(Malformed("duplicate server_name extension"));
            }
            seen_server_name = true;
            host = host_name(data)?;
        }
    }
    Ok(host)
}

/// Reads the server_name extension's data: a non-empty list of (name type, name). Only
/// host_name is defined; RFC 6066 §3 requires any future type to start with a u16 length,
/// which is what lets unknown types be skipped. A list without host_name yields `None`.
fn host_name(mut data: Cursor<'_>) -> Result<Option<Hostname>, Malformed> {
    const OVERRUN: Malformed = Malformed("server_name field overruns its enclosing block");
    let overrun = |Short| OVERRUN;

    let mut list = data.block16().map_err(overrun)?;
    if !data.is_empty() {
        return Err(Malformed("bytes after the server_name list"));
    }
    if list.is_empty() {
        return Err(Malformed("empty server_name list"));
    }
    let mut host = None;
    while !list.is_empty() {
        let kind = list.u8().map_err(overrun)?;
        let name = list.block16().map_err(overrun)?;
        if kind == NAME_TYPE_HOST_NAME {
            // RFC 6066 §3: at most one name of each type; two would make routing ambiguous.
            if host.is_some() {
                return Err(Malformed("two host_name entries in server_name"));
            }
            host = Some(Hostname::parse(name.rest())?);
        }
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::test_support::assert_prefixes_incomplete;

    const CURL: &[u8] = include_bytes!("../../tests/fixtures/tls/curl.bin");
    const OPENSSL: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl.bin");
    const OPENSSL_NOSNI: &[u8] = include_bytes!("../../tests/fixtures/tls/openssl_nosni.bin");
    const GNUTLS: &[u8] = include_bytes!("../../tests/fixtures/tls/gnutls.bin");
    const PYTHON: &[u8] = include_bytes!("../../tests/fixtures/tls/python.bin");
    const CHROMIUM_PQ: &[u8] = include_bytes!("../../tests/fixtures/tls/chromium_pq.bin");
    const CHROMIUM_PQ_LONG: &[u8] = include_bytes!("../../tests/fixtures/tls/chromium_pq_long.bin");

    const CHROMIUM_PQ_LABEL64: &[u8] =
        include_bytes!("../../tests/fixtures/tls/chromium_pq_label64.bin");

    const PQ_LONG_NAME: &str = "pq.post-quantum-x25519mlkem768-key-share-makes-clienthellos-big.a-second-long-label-so-the-record-passes-two-kib.example.com";

    /// Every real capture with the name its client asked for.
    const CAPTURES: [(&str, &[u8], Option<&str>); 7] = [
        ("curl", CURL, Some("blog.example.com")),
        ("openssl", OPENSSL, Some("shop.example.org")),
        ("openssl -noservername", OPENSSL_NOSNI, None),
        ("gnutls-cli", GNUTLS, Some("mail.example.net")),
        ("python ssl", PYTHON, Some("api.example.io")),
        ("chromium", CHROMIUM_PQ, Some("pq.example.com")),
        ("chromium, long name", CHROMIUM_PQ_LONG, Some(PQ_LONG_NAME)),
    ];

    /// Stands for whatever a client sends after its ClientHello; it must change nothing.
    const AFTERWARDS: &[u8] = b"\x14\x03\x03\x00\x01\x01\x17\x03\x03\x00\x05hello";

    fn host(name: &str) -> Option<Hostname> {
        Some(Hostname::parse(name.as_bytes()).unwrap())
    }

    fn expected(name: Option<&str>) -> Option<Hostname> {
        name.and_then(host)
    }

    fn malformed(why: &'static str) -> Sniff<Option<Hostname>> {
        Sniff::Malformed(Malformed(why))
    }

    fn record(out: &mut Vec<u8>, content_type: u8, fragment: &[u8]) {
        out.extend_from_slice(&[content_type, 3, 1]);
        out.extend_from_slice(&u16::try_from(fragment.len()).unwrap().to_be_bytes());
        out.extend_from_slice(fragment);
    }

    /// The handshake message a single-record capture carries.
    fn message_of(capture: &[u8]) -> &[u8] {
        let len = usize::from(u16::from_be_bytes([capture[3], capture[4]]));
        assert_eq!(capture.len(), 5 + len, "a capture is exactly one record");
        &capture[5..]
    }

    /// Re-frames a capture's handshake message into one record per piece, cutting it at the
    /// given offsets, as a client fragmenting its ClientHello would.
    fn reframe(capture: &[u8], cuts: &[usize]) -> Vec<u8> {
        let message = message_of(capture);
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([message.len()].iter()) {
            record(&mut out, CONTENT_HANDSHAKE, &message[start..end]);
            start = end;
        }
        out
    }

    /// Cut points worth trying on a message of `len` bytes: inside the handshake header,
    /// right after it, in the middle, and three cuts for four records.
    fn cut_sets(len: usize) -> Vec<Vec<usize>> {
        vec![
            vec![1],
            vec![2],
            vec![3],
            vec![4],
            vec![1, 2, 3],
            vec![len / 2],
            vec![len - 1],
            vec![40, len / 3, 2 * len / 3],
        ]
    }

    /// A ClientHello taken apart, so a test can change one field and put it back together
    /// with every enclosing length recomputed.
    #[derive(Clone)]
    struct Hello {
        version_and_random: Vec<u8>,
        session_id: Vec<u8>,
        cipher_suites: Vec<u8>,
        compression: Vec<u8>,
        extensions: Option<Vec<(u16, Vec<u8>)>>,
    }

    impl Hello {
        fn from_capture(capture: &[u8]) -> Hello {
            let mut c = Cursor::new(&message_of(capture)[4..]);
            let version_and_random = c.take(34).unwrap().to_vec();
            let session_id = c.block8().unwrap().rest().to_vec();
            let cipher_suites = c.block16().unwrap().rest().to_vec();
            let compression = c.block8().unwrap().rest().to_vec();
            let mut block = c.block16().unwrap();
            let mut extensions = Vec::new();
            while !block.is_empty() {
                let kind = block.u16().unwrap();
                extensions.push((kind, block.block16().unwrap().rest().to_vec()));
            }
            assert!(c.is_empty());
            Hello {
                version_and_random,
                session_id,
                cipher_suites,
                compression,
                extensions: Some(extensions),
            }
        }

        fn body(&self) -> Vec<u8> {
            fn push16(out: &mut Vec<u8>, bytes: &[u8]) {
                out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
                out.extend_from_slice(bytes);
            }
            let mut out = self.version_and_random.clone();
            out.push(u8::try_from(self.session_id.len()).unwrap());
            out.extend_from_slice(&self.session_id);
            push16(&mut out, &self.cipher_suites);
            out.push(u8::try_from(self.compression.len()).unwrap());
            out.extend_from_slice(&self.compression);
            if let Some(extensions) = &self.extensions {
                let mut block = Vec::new();
                for (kind, data) in extensions {
                    block.extend_from_slice(&kind.to_be_bytes());
                    push16(&mut block, data);
                }
                push16(&mut out, &block);
            }
            out
        }

        fn to_wire(&self) -> Vec<u8> {
            wrap(&self.body())
        }

        fn extensions(&mut self) -> &mut Vec<(u16, Vec<u8>)> {
            self.extensions.as_mut().unwrap()
        }

        fn set_server_name(&mut self, data: Vec<u8>) {
            let sni = self.extensions().iter_mut().find(|(kind, _)| *kind == 0);
            sni.unwrap().1 = data;
        }
    }

    /// A ClientHello body in its handshake header and one record.
    fn wrap(body: &[u8]) -> Vec<u8> {
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        message.extend_from_slice(body);
        let mut out = Vec::new();
        record(&mut out, CONTENT_HANDSHAKE, &message);
        out
    }

    /// server_name extension data listing these (name type, name) entries.
    fn server_name_list(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (kind, name) in entries {
            list.push(*kind);
            list.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            list.extend_from_slice(name);
        }
        let mut data = u16::try_from(list.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(&list);
        data
    }

    #[test]
    fn real_captures_name_their_host() {
        for (client, capture, name) in CAPTURES {
            assert_eq!(sniff(capture), Sniff::Found(expected(name)), "{client}");
        }
    }

    #[test]
    fn every_prefix_of_a_real_capture_is_incomplete() {
        for (_, capture, name) in CAPTURES {
            let input = [capture, AFTERWARDS].concat();
            assert_prefixes_incomplete(sniff, &input, capture.len(), expected(name));
        }
    }

    #[test]
    fn a_clienthello_split_across_records_is_reassembled() {
        for (client, capture, name) in CAPTURES {
            for cuts in cut_sets(message_of(capture).len()) {
                let framed = reframe(capture, &cuts);
                assert_eq!(framed.len(), capture.len() + 5 * cuts.len());
                assert_eq!(
                    sniff(&framed),
                    Sniff::Found(expected(name)),
                    "{client} cut at {cuts:?}"
                );
                let input = [&framed[..], AFTERWARDS].concat();
                assert_prefixes_incomplete(sniff, &input, framed.len(), expected(name));
            }
        }
    }

    #[test]
    fn large_post_quantum_clienthello() {
        assert!(CHROMIUM_PQ_LONG.len() > 2000);
        // An X25519MLKEM768 key share: group 0x11ec, 1216 bytes of key.
        let share = [0x11, 0xec, 0x04, 0xc0];
        for capture in [CHROMIUM_PQ, CHROMIUM_PQ_LONG, CHROMIUM_PQ_LABEL64] {
            assert!(capture.windows(4).any(|w| w == share));
        }
        assert_eq!(sniff(CHROMIUM_PQ_LONG), Sniff::Found(host(PQ_LONG_NAME)));
    }

    #[test]
    fn a_real_clienthello_with_an_overlong_label_is_malformed() {
        // Chromium sends a 66-byte DNS label in SNI; no DNS name can have one.
        let why = "hostname label longer than 63 bytes";
        assert_eq!(sniff(CHROMIUM_PQ_LABEL64), malformed(why));
        // Decided only once the whole ClientHello is in.
        assert_eq!(sniff(&CHROMIUM_PQ_LABEL64[..2069]), Sniff::Incomplete);
        let framed = reframe(CHROMIUM_PQ_LABEL64, &[500, 1000]);
        assert_eq!(sniff(&framed), malformed(why));
    }

    #[test]
    fn the_hello_editor_rebuilds_captures_byte_for_byte() {
        for (client, capture, _) in CAPTURES {
            assert_eq!(Hello::from_capture(capture).to_wire(), capture, "{client}");
        }
    }

    #[test]
    fn clienthellos_without_a_host_name_are_found_without_one() {
        let mut no_extensions = Hello::from_capture(CURL);
        no_extensions.extensions = None;
        assert_eq!(sniff(&no_extensions.to_wire()), Sniff::Found(None));

        let mut empty_extensions = Hello::from_capture(CURL);
        empty_extensions.extensions().clear();
        assert_eq!(sniff(&empty_extensions.to_wire()), Sniff::Found(None));

        let mut no_sni = Hello::from_capture(CURL);
        no_sni.extensions().retain(|(kind, _)| *kind != 0);
        assert_eq!(sniff(&no_sni.to_wire()), Sniff::Found(None));

        // An unknown name type is skipped by its length (RFC 6066 §3), alone or beside a name.
        let mut other_type = Hello::from_capture(CURL);
        other_type.set_server_name(server_name_list(&[(7, b"\x00\x01z")]));
        assert_eq!(sniff(&other_type.to_wire()), Sniff::Found(None));
        let mut both = Hello::from_capture(CURL);
        both.set_server_name(server_name_list(&[(7, b"x"), (0, b"Blog.Example.com.")]));
        assert_eq!(
            sniff(&both.to_wire()),
            Sniff::Found(host("blog.example.com"))
        );
    }

    #[test]
    fn other_protocols_are_not_this() {
        for input in [
            &b"GET / HTTP/1.1\r\nHost: blog.example.com\r\n\r\n"[..],
            b"<?xml version='1.0'?><stream:stream to='example.com'>",
            // An SSLv2-compatible ClientHello: two-byte length with the top bit set.
            b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10\x01\x00\x80",
            b"\x16\x02\x00\x00\x05",
            b"\x16\x04",
            b"\x16\x03\x04",
            b"\x16\x03\xff\x12\x34garbage",
            b"\x17\x03\x03\x00\x10",
            b"\x15",
        ] {
            assert_eq!(sniff(input), Sniff::NotThis, "{input:?}");
        }
    }

    #[test]
    fn nothing_is_decided_before_a_byte_arrives() {
        assert_eq!(sniff(b""), Sniff::Incomplete);
        assert_eq!(sniff(b"\x16"), Sniff::Incomplete);
        assert_eq!(sniff(b"\x16\x03\x01\x02"), Sniff::Incomplete);
    }

    #[test]
    fn hostile_record_layers_are_malformed() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "zero-length record",
                b"\x16\x03\x01\x00\x00\x01".to_vec(),
                "empty handshake record",
            ),
            (
                "huge declared record length",
                b"\x16\x03\x01\xff\xff".to_vec(),
                "record longer than 2^14 bytes",
            ),
            (
                "one byte over 2^14",
                b"\x16\x03\x03\x40\x01".to_vec(),
                "record longer than 2^14 bytes",
            ),
            (
                "garbage after 16 03 01",
                b"\x16\x03\x01\x00\x05hello".to_vec(),
                "first handshake message is not a ClientHello",
            ),
            (
                "ServerHello first",
                [&CURL[..5], b"\x02", &CURL[6..]].concat(),
                "first handshake message is not a ClientHello",
            ),
            (
                "handshake length over the cap",
                b"\x16\x03\x01\x00\x04\x01\x01\x00\x01".to_vec(),
                "ClientHello longer than 64 KiB",
            ),
            (
                "change_cipher_spec between fragments",
                {
                    let framed = reframe(CURL, &[100]);
                    [&framed[..105], b"\x14\x03\x03\x00\x01\x01", &framed[105..]].concat()
                },
                "a non-handshake record interrupts the ClientHello",
            ),
            (
                "alert after a short record",
                {
                    let mut input = CURL.to_vec();
                    input[8] += 1; // the handshake message now needs one more byte
                    input.extend_from_slice(b"\x15\x03\x03\x00\x02\x02\x28");
                    input
                },
                "a non-handshake record interrupts the ClientHello",
            ),
            (
                "continuation record with a bad version",
                {
                    let framed = reframe(CURL, &[100]);
                    [&framed[..105], b"\x16\x02", &framed[107..]].concat()
                },
                "record version is not SSL 3.0 to TLS 1.2",
            ),
        ];
        for (what, input, why) in cases {
            assert_eq!(sniff(&input), malformed(why), "{what}");
        }
        // A record that is cut short is waited for, not judged.
        let mut waiting = CURL.to_vec();
        waiting[8] += 1;
        assert_eq!(sniff(&waiting), Sniff::Incomplete);
    }

    #[test]
    fn hostile_clienthellos_are_malformed() {
        const OVERRUN: &str = "ClientHello field overruns its enclosing block";
        const SNI_OVERRUN: &str = "server_name field overruns its enclosing block";
        let edit = |change: &dyn Fn(&mut Hello)| {
            let mut hello = Hello::from_capture(CURL);
            change(&mut hello);
            hello.to_wire()
        };
        // Offsets into the record of the curl capture.
        let body_len_at = 6;
        let extensions_len_at = {
            let hello = Hello::from_capture(CURL);
            9 + 34 + 1 + hello.session_id.len() + 2 + hello.cipher_suites.len() + 1 + 1
        };
        let bump = |at: usize, by: i32| {
            let mut input = CURL.to_vec();
            let len = i32::from(u16::from_be_bytes([input[at], input[at + 1]])) + by;
            input[at..at + 2].copy_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
            input
        };

        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("body length one short", bump(body_len_at + 1, -1), OVERRUN),
            (
                "extensions overrun the body",
                bump(extensions_len_at, 1),
                OVERRUN,
            ),
            (
                "extensions length one short",
                bump(extensions_len_at, -1),
                "bytes after the ClientHello extensions",
            ),
            (
                "trailing byte after the extensions",
                {
                    let mut body = Hello::from_capture(CURL).body();
                    body.push(0);
                    wrap(&body)
                },
                "bytes after the ClientHello extensions",
            ),
            (
                "first extension overruns the block",
                {
                    let mut input = CURL.to_vec();
                    input[extensions_len_at + 4..extensions_len_at + 6]
                        .copy_from_slice(&[0xff, 0xff]);
                    input
                },
                OVERRUN,
            ),
            (
                "truncated ClientHello",
                wrap(&Hello::from_capture(CURL).body()[..40]),
                OVERRUN,
            ),
            (
                "not TLS inside",
                edit(&|h| h.version_and_random[0] = 2),
                "ClientHello version is not SSL 3.0 to TLS 1.3",
            ),
            (
                "33-byte session id",
                edit(&|h| h.session_id = vec![7; 33]),
                "ClientHello session id longer than 32 bytes",
            ),
            (
                "odd cipher_suites length",
                edit(&|h| h.cipher_suites.push(0)),
                "ClientHello cipher suite list is empty or of odd length",
            ),
            (
                "no cipher suites",
                edit(&|h| h.cipher_suites.clear()),
                "ClientHello cipher suite list is empty or of odd length",
            ),
            (
                "no compression methods",
                edit(&|h| h.compression.clear()),
                "ClientHello compression method list is empty",
            ),
            (
                "duplicate server_name extension",
                edit(&|h| {
                    let other = server_name_list(&[(0, b"evil.example.com")]);
                    h.extensions().push((0, other));
                }),
                "duplicate server_name extension",
            ),
            (
                "two host_name entries",
                edit(&|h| {
                    h.set_server_name(server_name_list(&[(0, b"a.example"), (0, b"b.example")]))
                }),
                "two host_name entries in server_name",
            ),
            (
                "empty server_name extension",
                edit(&|h| h.set_server_name(Vec::new())),
                SNI_OVERRUN,
            ),
            (
                "empty server_name list",
                edit(&|h| h.set_server_name(vec![0, 0])),
                "empty server_name list",
            ),
            (
                "server_name list overruns the extension",
                edit(&|h| h.set_server_name(b"\x00\x10\x00\x00\x03abc".to_vec())),
                SNI_OVERRUN,
            ),
            (
                "host_name overruns the list",
                edit(&|h| h.set_server_name(b"\x00\x06\x00\x00\x09abc".to_vec())),
                SNI_OVERRUN,
            ),
            (
                "byte after the server_name list",
                edit(&|h| {
                    let mut data = server_name_list(&[(0, b"blog.example.com")]);
                    data.push(0);
                    h.set_server_name(data)
                }),
                "bytes after the server_name list",
            ),
            (
                "space in the host name",
                edit(&|h| h.set_server_name(server_name_list(&[(0, b"blog example.com")]))),
                "hostname has a character outside [A-Za-z0-9._-]",
            ),
            (
                "slash in the host name",
                edit(&|h| h.set_server_name(server_name_list(&[(0, b"blog.example.com/x")]))),
                "hostname has a character outside [A-Za-z0-9._-]",
            ),
            (
                "empty host name",
                edit(&|h| h.set_server_name(server_name_list(&[(0, b"")]))),
                "empty hostname",
            ),
        ];
        for (what, input, why) in cases {
            assert_eq!(sniff(&input), malformed(why), "{what}");
            // Spread over records, the verdict is the same.
            let framed = reframe(&input, &[3, message_of(&input).len() / 2]);
            assert_eq!(sniff(&framed), malformed(why), "{what}, fragmented");
        }
    }

    #[test]
    fn a_huge_clienthello_within_the_cap_is_reassembled() {
        // 40 KiB of padding (extension 21) needs three full records and a fourth.
        let mut hello = Hello::from_capture(OPENSSL);
        hello.extensions().push((21, vec![0; 40 * 1024]));
        let body = hello.body();
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut input = Vec::new();
        for fragment in message.chunks(MAX_FRAGMENT) {
            record(&mut input, CONTENT_HANDSHAKE, fragment);
        }
        assert_eq!(sniff(&input), Sniff::Found(host("shop.example.org")));
        assert_eq!(sniff(&input[..input.len() - 1]), Sniff::Incomplete);
    }

    /// xorshift64: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
        }

        fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }
    }

    #[test]
    fn mutations_never_panic_and_decisions_stick() {
        let mut seeds: Vec<Vec<u8>> = CAPTURES.iter().map(|(_, c, _)| c.to_vec()).collect();
        seeds.extend(CAPTURES.iter().map(|(_, c, _)| reframe(c, &[2, 60, 200])));
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut seen = [0usize; 4];
        for _ in 0..20_000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(3) {
                // Half the edits land in the first 64 bytes, where the headers and lengths are.
                let span = if rng.below(2) == 0 { 64 } else { input.len() };
                let at = rng.below(span.min(input.len()));
                match rng.below(5) {
                    0 => input.truncate(at),
                    1 => input.insert(at, rng.byte()),
                    2 => {
                        let bit = 1 << rng.below(8);
                        if let Some(b) = input.get_mut(at) {
                            *b ^= bit;
                        }
                    }
                    _ => {
                        let byte = rng.byte();
                        if let Some(b) = input.get_mut(at) {
                            *b = byte;
                        }
                    }
                }
            }
            let whole = sniff(&input);
            seen[match whole {
                Sniff::Incomplete => 0,
                Sniff::Found(_) => 1,
                Sniff::NotThis => 2,
                Sniff::Malformed(_) => 3,
            }] += 1;
            if whole != Sniff::Incomplete {
                let mut longer = input.clone();
                longer.extend((0..rng.below(64)).map(|_| rng.byte()));
                longer.extend_from_slice(CURL);
                assert_eq!(sniff(&longer), whole, "{input:?}");
            }
            // A prefix either waits or already knows the answer.
            let prefix = sniff(&input[..rng.below(input.len() + 1)]);
            assert!(prefix == Sniff::Incomplete || prefix == whole, "{input:?}");
        }
        assert!(seen.iter().all(|&n| n > 100), "outcomes {seen:?}");
    }
}
