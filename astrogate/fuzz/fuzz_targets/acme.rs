//! The acme sniffer must not panic, and once it has decided (found or malformed) more bytes must
//! not change its answer.
#![no_main]
use astrogate::sniff::{acme, Sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = acme::sniff(data);
    if let Sniff::Found(_) | Sniff::Malformed(_) = whole {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n\r\n>extra");
        assert_eq!(acme::sniff(&longer), whole);
    }
});
