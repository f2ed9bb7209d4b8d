//! The PROXY header parser must not panic, and once it has decided (a header or malformed),
//! more bytes must not change its answer: the bytes after a header are the client's own.
#![no_main]
use astrogate::proxy_protocol::{parse, Parsed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Parsed::Header { len, .. } = &whole {
        assert!(*len <= data.len());
    }
    if whole != Parsed::NeedMore {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n\x16\x03\x01 client bytes");
        assert_eq!(parse(&longer), whole);
    }
});
