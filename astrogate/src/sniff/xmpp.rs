//! XMPP: the `to` attribute of the opening `<stream:stream>`.
//!
//! Accepted preamble (RFC 6120 §4.7, XML 1.0): an optional UTF-8 BOM, optional whitespace, an
//! optional XML declaration, optional whitespace, then the stream start tag. Leading whitespace
//! before the declaration is tolerated although XML does not allow it.
//!
//! * The element is recognised by namespace, not spelling: its prefix must be declared as
//!   `http://etherx.jabber.org/streams` (`<x:stream xmlns:x=...>` is fine). An unprefixed
//!   `<stream xmlns='http://etherx.jabber.org/streams'>` is accepted too; then the content
//!   namespace must come from an `xmlns:*` declaration of `jabber:client` or `jabber:server`.
//! * The kind comes from the content namespace: `jabber:client` (c2s) or `jabber:server` (s2s).
//!   Any other (components, BOSH, none) is `Malformed`.
//! * Attribute values may use the five predefined entities (`&lt;` `&gt;` `&amp;` `&apos;`
//!   `&quot;`), which are decoded. Character references and any other `&` are `Malformed`: no
//!   client needs them in a stream header, and refusing them keeps the decoder trivial.
//! * Duplicate attributes, a self-closing tag and a header longer than [`MAX_HEADER`] bytes are
//!   `Malformed`. An IP literal in `to` names no host (`to: None`), like a missing `to`.
use std::borrow::Cow;

use super::cursor::{bad, Cursor, Short, Stop};
use super::http::host_or_ip;
use super::{Hostname, Malformed, Sniff};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `jabber:client` (c2s).
    Client,
    /// `jabber:server` (s2s).
    Server,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<Hostname>,
    pub kind: StreamKind,
}

/// Bytes from the start of the input up to and including the `>` that ends the stream tag.
/// Real headers are 200-300 bytes.
pub const MAX_HEADER: usize = 4096;
/// Real headers carry about seven attributes.
const MAX_ATTRIBUTES: usize = 32;
const STREAMS_NS: &[u8] = b"http://etherx.jabber.org/streams";
const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

pub fn sniff(buf: &[u8]) -> Sniff<StreamHeader> {
    let data = buf.get(..MAX_HEADER).unwrap_or(buf);
    match parse(&mut Cursor::new(data)) {
        Ok(header) => Sniff::Found(header),
        Err(Stop::NotThis) => Sniff::NotThis,
        Err(Stop::Bad(m)) => Sniff::Malformed(m),
        // Only whitespace so far claims nothing, so running into the cap then is not Malformed.
        Err(Stop::Short) if buf.len() >= MAX_HEADER && data.contains(&b'<') => {
            Sniff::Malformed(Malformed("XMPP stream header longer than 4 KiB"))
        }
        Err(Stop::Short) if buf.len() >= MAX_HEADER => Sniff::NotThis,
        Err(Stop::Short) => Sniff::Incomplete,
    }
}

fn parse(c: &mut Cursor<'_>) -> Result<StreamHeader, Stop> {
    if c.peek()? == BOM[0] {
        literal(c, &BOM)?;
    }
    skip_ws(c)?;
    literal(c, b"<")?;
    if c.peek()? == b'?' {
        xml_declaration(c)?;
        skip_ws(c)?;
        literal(c, b"<")?;
    }
    let name = element_name(c)?;
    let attrs = attributes(c)?;
    resolve(name, &attrs)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Skips XML whitespace and says whether there was any. Stops short at the end of input,
/// since something must follow.
fn skip_ws(c: &mut Cursor<'_>) -> Result<bool, Short> {
    let mut any = false;
    while is_ws(c.peek()?) {
        c.skip(1)?;
        any = true;
    }
    Ok(any)
}

/// Consumes `lit`; bytes that diverge from it mean this is not XMPP.
fn literal(c: &mut Cursor<'_>, lit: &[u8]) -> Result<(), Stop> {
    for &expected in lit {
        if c.u8()? != expected {
            return Err(Stop::NotThis);
        }
    }
    Ok(())
}

/// `?xml` (the `<` already read), whitespace, then anything up to `?>`.
fn xml_declaration(c: &mut Cursor<'_>) -> Result<(), Stop> {
    literal(c, b"?xml")?;
    // `<?xml-stylesheet` and friends are processing instructions, not a declaration.
    if !skip_ws(c)? {
        return Err(Stop::NotThis);
    }
    loop {
        match c.u8()? {
            b'?' if c.peek()? == b'>' => return Ok(c.skip(1)?),
            b'<' | b'>' => return Err(Stop::NotThis),
            _ => {}
        }
    }
}

/// XML 1.0 allows no C0 controls but tab, CR and LF.
fn is_forbidden_control(b: u8) -> bool {
    b < 0x20 && !is_ws(b)
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_name_char(b: u8) -> bool {
    is_name_start(b) || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
}

/// Reads an XML name; its first byte has been checked to start one.
fn name<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], Short> {
    let rest = c.rest();
    let len = rest.iter().take_while(|&&b| is_name_char(b)).count();
    if len == rest.len() {
        // The name may go on in bytes not yet received.
        return Err(Short);
    }
    c.take(len)
}

/// The element's name, which must be `stream` or `PREFIX:stream`.
fn element_name<'a>(c: &mut Cursor<'a>) -> Result<&'a [u8], Stop> {
    if !is_name_start(c.peek()?) {
        // `<!--`, `<!DOCTYPE`, `</x>` or no markup at all.
        return Err(Stop::NotThis);
    }
    let name = match name(&mut c.clone()) {
        Ok(name) => name,
        Err(Short) if could_become_stream(c.rest()) => return Err(Stop::Short),
        Err(Short) => return Err(Stop::NotThis),
    };
    c.skip(name.len())?;
    if local_name(name) != b"stream" || name.iter().filter(|&&b| b == b':').count() > 1 {
        return Err(Stop::NotThis);
    }
    Ok(name)
}

/// Whether a name still being received can end up as `stream` or `PREFIX:stream`.
fn could_become_stream(partial: &[u8]) -> bool {
    match partial.iter().position(|&b| b == b':') {
        None => true,
        Some(colon) => {
            let local = partial.get(colon + 1..).unwrap_or_default();
            b"stream".starts_with(local)
        }
    }
}

fn split_qname(name: &[u8]) -> (Option<&[u8]>, &[u8]) {
    let mut parts = name.splitn(2, |&b| b == b':');
    match (parts.next(), parts.next()) {
        (Some(prefix), Some(local)) => (Some(prefix), local),
        _ => (None, name),
    }
}

fn local_name(name: &[u8]) -> &[u8] {
    split_qname(name).1
}

struct Attr<'a> {
    name: &'a [u8],
    value: Cow<'a, [u8]>,
}

/// Attributes up to the `>` that ends the start tag.
fn attributes<'a>(c: &mut Cursor<'a>) -> Result<Vec<Attr<'a>>, Stop> {
    let mut attrs: Vec<Attr<'a>> = Vec::new();
    loop {
        let separated = skip_ws(c)?;
        match c.peek()? {
            b'>' => {
                c.skip(1)?;
                return Ok(attrs);
            }
            // A stream header opens an element that lasts the whole session.
            b'/' => return bad("self-closing XMPP stream header"),
            _ if !separated => return bad("XML attributes not separated by whitespace"),
            _ => {}
        }
        let attr = attribute(c)?;
        if attrs.iter().any(|a| a.name == attr.name) {
            return bad("duplicate attribute in XMPP stream header");
        }
        if attrs.len() == MAX_ATTRIBUTES {
            return bad("too many attributes in XMPP stream header");
        }
        attrs.push(attr);
    }
}

fn attribute<'a>(c: &mut Cursor<'a>) -> Result<Attr<'a>, Stop> {
    if !is_name_start(c.peek()?) {
        return bad("invalid XML attribute name");
    }
    let name = name(c)?;
    skip_ws(c)?;
    if c.u8()? != b'=' {
        return bad("XML attribute without a value");
    }
    skip_ws(c)?;
    let quote = c.u8()?;
    if quote != b'\'' && quote != b'"' {
        return bad("unquoted XML attribute value");
    }
    let rest = c.rest();
    let len = rest
        .iter()
        .position(|&b| b == quote || b == b'<' || is_forbidden_control(b))
        .ok_or(Short)?;
    let raw = c.take(len)?;
    match c.u8()? {
        b'<' => return bad("'<' in XML attribute value"),
        b if b != quote => return bad("control character in XML attribute value"),
        _ => {}
    }
    Ok(Attr {
        name,
        value: decode_entities(raw)?,
    })
}

/// Replaces the five predefined entities; refuses character references and unknown entities.
fn decode_entities(raw: &[u8]) -> Result<Cow<'_, [u8]>, Stop> {
    if !raw.contains(&b'&') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.iter().position(|&b| b == b'&') {
        let (text, tail) = rest.split_at_checked(amp).unwrap_or((rest, &[]));
        out.extend_from_slice(text);
        let (byte, len) = [
            (&b"&lt;"[..], b'<'),
            (b"&gt;", b'>'),
            (b"&amp;", b'&'),
            (b"&apos;", b'\''),
            (b"&quot;", b'"'),
        ]
        .into_iter()
        .find(|(entity, _)| tail.starts_with(entity))
        .map(|(entity, byte)| (byte, entity.len()))
        .ok_or(Stop::Bad(Malformed(
            "unsupported entity or character reference in XML attribute value",
        )))?;
        out.push(byte);
        rest = tail.get(len..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    Ok(Cow::Owned(out))
}

fn attr<'v>(attrs: &'v [Attr<'_>], name: &[u8]) -> Option<&'v [u8]> {
    attrs.iter().find(|a| a.name == name).map(|a| &*a.value)
}

/// Applies the namespace declarations to decide whether this is a stream and of which kind.
fn resolve(name: &[u8], attrs: &[Attr<'_>]) -> Result<StreamHeader, Stop> {
    let kind = match split_qname(name).0 {
        Some(prefix) => {
            let decl = [b"xmlns:", prefix].concat();
            match attr(attrs, &decl) {
                None => return bad("XMPP stream prefix is not declared"),
                Some(ns) if ns != STREAMS_NS => return Err(Stop::NotThis),
                Some(_) => {}
            }
            attr(attrs, b"xmlns").and_then(content_kind)
        }
        None => {
            if attr(attrs, b"xmlns") != Some(STREAMS_NS) {
                return Err(Stop::NotThis);
            }
            prefixed_content_kind(attrs)?
        }
    };
    let kind = match kind {
        Some(kind) => kind,
        None => return bad("XMPP stream declares neither jabber:client nor jabber:server"),
    };
    let to = match attr(attrs, b"to") {
        Some(to) => host_or_ip(to).map_err(Stop::Bad)?,
        None => None,
    };
    Ok(StreamHeader { to, kind })
}

fn content_kind(ns: &[u8]) -> Option<StreamKind> {
    match ns {
        b"jabber:client" => Some(StreamKind::Client),
        b"jabber:server" => Some(StreamKind::Server),
        _ => None,
    }
}

/// For an unprefixed stream element the default namespace is the streams namespace, so the
/// content namespace can only be a prefixed declaration; both kinds at once is ambiguous.
fn prefixed_content_kind(attrs: &[Attr<'_>]) -> Result<Option<StreamKind>, Stop> {
    let mut kinds = attrs
        .iter()
        .filter(|a| a.name.starts_with(b"xmlns:"))
        .filter_map(|a| content_kind(&a.value));
    let first = kinds.next();
    if kinds.any(|k| Some(k) != first) {
        return bad("XMPP stream declares both jabber:client and jabber:server");
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sniff::classify_tests::{assert_mutations_stable, is_decided};
    use crate::sniff::test_support::assert_prefixes_incomplete;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/fixtures/xmpp/", $name)).as_slice()
        };
    }

    const C2S: &[u8] = fixture!("sendxmpp-c2s.bin");
    const S2S: &[u8] = fixture!("prosody-s2s.bin");
    const SLIXMPP: &[u8] = fixture!("slixmpp-c2s.bin");

    fn header(to: Option<&str>, kind: StreamKind) -> StreamHeader {
        StreamHeader {
            to: to.map(|h| Hostname::parse(h.as_bytes()).unwrap()),
            kind,
        }
    }

    fn tag_end(buf: &[u8]) -> usize {
        buf.iter().rposition(|&b| b == b'>').unwrap() + 1
    }

    fn malformed(reason: &'static str) -> Sniff<StreamHeader> {
        Sniff::Malformed(Malformed(reason))
    }

    #[test]
    fn real_headers_are_found_once_the_tag_closes() {
        let c2s = header(Some("example.com"), StreamKind::Client);
        assert_prefixes_incomplete(sniff, C2S, tag_end(C2S), c2s);
        let s2s = header(Some("federated.example"), StreamKind::Server);
        assert_prefixes_incomplete(sniff, S2S, tag_end(S2S), s2s);
        let slixmpp = header(Some("chat.example.org"), StreamKind::Client);
        assert_prefixes_incomplete(sniff, SLIXMPP, tag_end(SLIXMPP), slixmpp);
    }

    #[test]
    fn crafted_variants_are_found() {
        let bom = fixture!("crafted-bom-prefix-double-quotes.bin");
        let server = header(Some("federated.example"), StreamKind::Server);
        assert_prefixes_incomplete(sniff, bom, tag_end(bom), server);
        let unprefixed = fixture!("crafted-unprefixed.bin");
        assert_eq!(
            sniff(unprefixed),
            Sniff::Found(header(Some("example.com"), StreamKind::Client))
        );
        let no_to = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client'>";
        assert_eq!(sniff(no_to), Sniff::Found(header(None, StreamKind::Client)));
        let ip = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:server' to='192.0.2.1'>";
        assert_eq!(sniff(ip), Sniff::Found(header(None, StreamKind::Server)));
        let entities = b"<stream:stream xmlns:stream='http://etherx.jabber.org/streams' xmlns='jabber:client' to=\"&apos;\" from='&lt;&amp;&gt;&quot;'>";
        assert_eq!(
            sniff(entities),
            malformed("hostname has a character outside [A-Za-z0-9._-]")
        );
        assert_eq!(
            decode_entities(b"a&lt;&gt;&amp;&apos;&quot;b")
                .ok()
                .as_deref(),
            Some(&b"a<>&'\"b"[..])
        );
    }

    #[test]
    fn hostile_headers_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (
                fixture!("hostile-self-closing.bin"),
                "self-closing XMPP stream header",
            ),
            (
                fixture!("hostile-duplicate-to.bin"),
                "duplicate attribute in XMPP stream header",
            ),
            (
                fixture!("hostile-overlong.bin"),
                "XMPP stream header longer than 4 KiB",
            ),
            (
                fixture!("hostile-bad-to.bin"),
                "hostname has a character outside [A-Za-z0-9._-]",
            ),
            (
                fixture!("hostile-char-reference.bin"),
                "unsupported entity or character reference in XML attribute value",
            ),
            (
                fixture!("hostile-undeclared-prefix.bin"),
                "XMPP stream prefix is not declared",
            ),
            (
                fixture!("hostile-component-ns.bin"),
                "XMPP stream declares neither jabber:client nor jabber:server",
            ),
            (
                fixture!("hostile-nul-in-to.bin"),
                "control character in XML attribute value",
            ),
            (
                fixture!("hostile-unprefixed-no-content-ns.bin"),
                "XMPP stream declares neither jabber:client nor jabber:server",
            ),
        ];
        for &(bytes, reason) in cases {
            assert_eq!(sniff(bytes), malformed(reason), "{reason}");
        }
        assert_eq!(sniff(fixture!("hostile-truncated.bin")), Sniff::Incomplete);
        assert_eq!(sniff(fixture!("hostile-atom-feed.bin")), Sniff::NotThis);
    }

    #[test]
    fn other_input_is_not_this_early() {
        assert_eq!(sniff(b""), Sniff::Incomplete);
        assert_eq!(sniff(b" \r\n\t"), Sniff::Incomplete);
        assert_eq!(sniff(b"\xEF\xBB"), Sniff::Incomplete);
        assert_eq!(sniff(b"\xEF\xBBX"), Sniff::NotThis);
        assert_eq!(sniff(b"GET"), Sniff::NotThis);
        assert_eq!(sniff(b"\x16\x03"), Sniff::NotThis);
        assert_eq!(sniff(b"<!--"), Sniff::NotThis);
        assert_eq!(sniff(b"<?xml-stylesheet"), Sniff::NotThis);
        assert_eq!(sniff(b"<?php"), Sniff::NotThis);
        assert_eq!(sniff(b"<html "), Sniff::NotThis);
        assert_eq!(sniff(b"<stream:str"), Sniff::Incomplete);
        assert_eq!(sniff(b"<stream:x"), Sniff::NotThis);
        assert_eq!(sniff(b"<a:b:stream "), Sniff::NotThis);
        assert_eq!(sniff(&[b' '; MAX_HEADER]), Sniff::NotThis);
        let other_ns = b"<stream:stream xmlns:stream='urn:other' xmlns='jabber:client'>";
        assert_eq!(sniff(other_ns), Sniff::NotThis);
    }

    #[test]
    fn attribute_syntax_errors_are_malformed() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"<stream:stream to='a'from='b'>",
                "XML attributes not separated by whitespace",
            ),
            (b"<stream:stream to>", "XML attribute without a value"),
            (b"<stream:stream to=a>", "unquoted XML attribute value"),
            (b"<stream:stream to='<'>", "'<' in XML attribute value"),
            (b"<stream:stream 1='a'>", "invalid XML attribute name"),
        ];
        for &(bytes, reason) in cases {
            assert_eq!(sniff(bytes), malformed(reason), "{reason}");
        }
        let many: Vec<u8> = (0..=MAX_ATTRIBUTES)
            .flat_map(|i| format!(" a{i}='x'").into_bytes())
            .collect();
        let tag = [&b"<stream:stream"[..], &many, b">"].concat();
        assert_eq!(
            sniff(&tag),
            malformed("too many attributes in XMPP stream header")
        );
    }

    #[test]
    fn mutations_never_panic_or_change_a_decided_answer() {
        let seeds = [
            C2S,
            S2S,
            SLIXMPP,
            fixture!("crafted-bom-prefix-double-quotes.bin"),
        ];
        assert_mutations_stable(sniff, is_decided, &seeds, 10_000);
    }
}
