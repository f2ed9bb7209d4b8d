//! `classify` over the text-protocol fixtures, and the mutation check the sniffers share.
use super::{Malformed, Sniff};

const CURL: &[u8] = include_bytes!("../../tests/fixtures/http/curl-http11-host-port.bin");

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
