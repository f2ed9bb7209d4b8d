//! The dial header and reply parsers must not panic, and once decided (found or malformed)
//! more bytes must not change their answer: the gateway forwards whatever follows the header.
#![no_main]
use astrogate::sniff::{dial, Sniff};
use libfuzzer_sys::fuzz_target;

fn assert_stable<T: std::fmt::Debug + PartialEq>(parse: fn(&[u8]) -> Sniff<T>, data: &[u8]) {
    let whole = parse(data);
    if let Sniff::Found(_) | Sniff::Malformed(_) = whole {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\nextra");
        assert_eq!(parse(&longer), whole);
    }
}

fuzz_target!(|data: &[u8]| {
    assert_stable(dial::sniff, data);
    assert_stable(dial::parse_reply, data);
    if let Sniff::Found(req) = dial::sniff(data) {
        assert!(req.header_len <= data.len());
    }
});
