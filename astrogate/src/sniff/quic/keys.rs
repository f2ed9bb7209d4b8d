//! QUIC Initial packet protection: keys derived from the client's Destination Connection ID
//! with a salt that every endpoint knows (RFC 9001 §5.2 for v1, RFC 9369 §3.3 for v2), so
//! anyone on the path can read an Initial packet. That is what lets the gateway read the SNI.
use ring::{
    aead::{self, quic::HeaderProtectionKey, Aad, LessSafeKey, Nonce, UnboundKey},
    hkdf,
};

/// QUIC version 1 (RFC 9000).
pub const V1: u32 = 0x0000_0001;
/// QUIC version 2 (RFC 9369).
pub const V2: u32 = 0x6b33_43cf;

/// RFC 9001 §5.2.
const SALT_V1: [u8; 20] = [
    0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
    0xcc, 0xbb, 0x7f, 0x0a,
];
/// RFC 9369 §3.3.1.
const SALT_V2: [u8; 20] = [
    0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
    0xf9, 0xbd, 0x2e, 0xd9,
];

/// The client's Initial keys for one connection.
pub struct InitialKeys {
    packet: LessSafeKey,
    iv: [u8; 12],
    header: HeaderProtectionKey,
}

/// An output length for ring's HKDF.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label (RFC 8446 §7.1) with an empty context.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    let length = (out.len() as u16).to_be_bytes();
    let label_len = [6 + label.len() as u8];
    let context_len = [0u8];
    let info: [&[u8]; 5] = [&length, &label_len, b"tls13 ", label, &context_len];
    // Cannot fail: every length asked for here is far below 255 * 32.
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

impl InitialKeys {
    /// The keys a client of `version` protects its Initial packets with, or `None` for a
    /// version this gateway cannot read.
    pub fn client(version: u32, dcid: &[u8]) -> Option<InitialKeys> {
        let (salt, key_label, iv_label, hp_label): (&[u8], &[u8], &[u8], &[u8]) = match version {
            V1 => (&SALT_V1, b"quic key", b"quic iv", b"quic hp"),
            V2 => (&SALT_V2, b"quicv2 key", b"quicv2 iv", b"quicv2 hp"),
            _ => return None,
        };
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, b"client in", &mut secret);
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
        expand_label(&client, key_label, &mut key);
        expand_label(&client, iv_label, &mut iv);
        expand_label(&client, hp_label, &mut hp);
        Some(InitialKeys {
            packet: LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &key).ok()?),
            iv,
            header: HeaderProtectionKey::new(&aead::quic::AES_128, &hp).ok()?,
        })
    }

    /// The header protection mask for a 16-byte ciphertext sample (RFC 9001 §5.4.1).
    pub fn mask(&self, sample: &[u8]) -> Option<[u8; 5]> {
        self.header.new_mask(sample).ok()
    }

    /// Decrypts `payload` (ciphertext and tag) in place, authenticating `header`; the
    /// plaintext, or `None` when the packet was not protected with these keys.
    pub fn open<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &'a mut [u8],
    ) -> Option<&'a mut [u8]> {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(packet_number.to_be_bytes()) {
            *n ^= p;
        }
        self.packet
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                payload,
            )
            .ok()
            .map(|plain| &mut plain[..])
    }
}

impl InitialKeys {
    /// Encrypts `payload` in place and appends the tag: what a client does, for tests and
    /// the fuzzer to build Initial packets around chosen frames.
    pub fn seal(&self, packet_number: u64, header: &[u8], payload: &mut Vec<u8>) {
        let mut nonce = self.iv;
        for (n, p) in nonce[4..].iter_mut().zip(packet_number.to_be_bytes()) {
            *n ^= p;
        }
        let nonce = Nonce::assume_unique_for_key(nonce);
        // Cannot fail for Initial-sized payloads.
        let _ = self
            .packet
            .seal_in_place_append_tag(nonce, Aad::from(header), payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9001 Appendix A.1: the keys for DCID 0x8394c8f03e515708. The header protection
    /// key is checked through the mask it gives for the sample in A.2.
    #[test]
    fn derives_the_rfc_9001_sample_keys() {
        let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &SALT_V1).extract(&dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, b"client in", &mut secret);
        assert_eq!(
            hex(&secret),
            "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"
        );
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
        expand_label(&client, b"quic key", &mut key);
        expand_label(&client, b"quic iv", &mut iv);
        expand_label(&client, b"quic hp", &mut hp);
        assert_eq!(hex(&key), "1f369613dd76d5467730efcbe3b1a22d");
        assert_eq!(hex(&iv), "fa044b2f42a3fd3b46fb255c");
        assert_eq!(hex(&hp), "9f50449e04a0e810283a1e9933adedd2");
        let keys = InitialKeys::client(V1, &dcid).unwrap();
        let sample = unhex("d1b1c98dd7689fb8ec11d242b123dc9b");
        assert_eq!(hex(&keys.mask(&sample).unwrap()), "437b9aec36");
    }

    /// RFC 9369 Appendix A.1: the v2 keys for the same DCID.
    #[test]
    fn derives_the_rfc_9369_sample_keys() {
        let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
        let initial = hkdf::Salt::new(hkdf::HKDF_SHA256, &SALT_V2).extract(&dcid);
        let mut secret = [0u8; 32];
        expand_label(&initial, b"client in", &mut secret);
        assert_eq!(
            hex(&secret),
            "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
        );
        let client = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &secret);
        let (mut key, mut iv, mut hp) = ([0u8; 16], [0u8; 12], [0u8; 16]);
        expand_label(&client, b"quicv2 key", &mut key);
        expand_label(&client, b"quicv2 iv", &mut iv);
        expand_label(&client, b"quicv2 hp", &mut hp);
        assert_eq!(hex(&key), "8b1a0bc121284290a29e0971b5cd045d");
        assert_eq!(hex(&iv), "91f73e2351d8fa91660e909f");
        assert_eq!(hex(&hp), "45b95e15235d6f45a6b19cbcb0294ba9");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
