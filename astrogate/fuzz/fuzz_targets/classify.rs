//! All sniffers together, in the order a listener might list them: nothing may panic, and the
//! answer for a prefix must never contradict the answer for the whole input.
#![no_main]
use astrogate::sniff::{classify, Classified, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let order = Protocol::ALL;
    let whole = classify(&order, data);
    if let Classified::Detected(_) | Classified::Malformed(..) = whole {
        // Once decided, more bytes must not change the decision.
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\r\n\r\nextra");
        assert_eq!(classify(&order, &longer), whole);
    }
});
