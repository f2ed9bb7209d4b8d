//! The TLS sniffer alone: nothing may panic, and once it has decided, more bytes must not
//! change the decision, since the caller stops reading and acts on it.
#![no_main]
use astrogate::sniff::{tls, Sniff};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = tls::sniff(data);
    if whole != Sniff::Incomplete {
        // Whatever follows a ClientHello (or garbage) must be ignored.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x16\x03\x01\x00\x01\x01\x17\x03\x03\x00\x00");
        assert_eq!(tls::sniff(&longer), whole);
    }
    // A prefix either waits for more or has already reached the same answer. Checking every
    // prefix would be quadratic; the midpoint and one byte short catch the usual slips.
    for end in [data.len() / 2, data.len().saturating_sub(1)] {
        let prefix = tls::sniff(&data[..end]);
        assert!(prefix == Sniff::Incomplete || prefix == whole);
    }
});
