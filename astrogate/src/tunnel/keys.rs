//! Tunnel keys: X25519 key pairs for the Noise handshake, written as base64 (44 characters, as
//! WireGuard writes its keys) so an operator can paste a public key into a config file.
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use base64::{engine::general_purpose::STANDARD, Engine};

use super::noise::PARAMS;

/// An X25519 public or private key.
pub type Key = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: cannot read key: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path}: cannot write key: {source}")]
    Write { path: String, source: io::Error },
    #[error("not a key: expected 44 characters of base64 (32 bytes)")]
    Malformed,
    #[error("{path}: not a private key: expected 44 characters of base64 (32 bytes)")]
    MalformedFile { path: String },
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// Parses a base64 key.
pub fn parse(text: &str) -> Result<Key, KeyError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::Malformed)?;
    bytes.try_into().map_err(|_| KeyError::Malformed)
}

pub fn encode(key: &Key) -> String {
    STANDARD.encode(key)
}

/// The public half of a private key.
pub fn public_of(private: &Key) -> Key {
    x25519_public(private)
}

/// Generates a key pair: (private, public).
pub fn generate() -> Result<(Key, Key), KeyError> {
    let pair = snow::Builder::new(
        PARAMS
            .parse()
            .map_err(|e| KeyError::Generate(format!("{e}")))?,
    )
    .generate_keypair()
    .map_err(|e| KeyError::Generate(e.to_string()))?;
    let private: Key = pair
        .private
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Generate("unexpected private key length".into()))?;
    Ok((private, public_of(&private)))
}

/// Reads a private key file.
pub fn read_private(path: &Path) -> Result<Key, KeyError> {
    let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|_| KeyError::MalformedFile {
        path: path.display().to_string(),
    })
}

/// Writes a private key file readable by its owner only. An existing file is replaced only
/// through a fresh inode, so a key is never readable by others, not even for a moment.
pub fn write_private(path: &Path, key: &Key) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp-keygen");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(format!("{}\n", encode(key)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// X25519 scalar multiplication by the base point, through snow: a handshake-free way to get
/// the public key of a private one that uses the same implementation the handshake does.
fn x25519_public(private: &Key) -> Key {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let mut dh = DefaultResolver
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .expect("the default resolver has X25519");
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    public
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_base64_and_files() {
        let (private, public) = generate().unwrap();
        assert_eq!(public_of(&private), public);
        assert_eq!(parse(&encode(&public)).unwrap(), public);
        assert_eq!(encode(&public).len(), 44);
        let dir = std::env::temp_dir().join(format!("astrogate-keys-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        write_private(&path, &private).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_private(&path).unwrap(), private);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_what_is_not_a_key() {
        for bad in [
            "",
            "abc",
            &STANDARD.encode([0u8; 31]),
            &STANDARD.encode([0u8; 33]),
            "!!!!",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
