//! The normalised form of a hostname a client asked for.
use std::fmt;

use super::Malformed;

/// Longest DNS name in presentation form, without the trailing dot.
pub const MAX_LEN: usize = 253;
const MAX_LABEL: usize = 63;

/// A lowercase DNS hostname without a trailing dot. Letters, digits, `-` and `_` only, so it is
/// safe to log and to compare byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Validates and normalises: ASCII case is folded and one trailing dot is dropped.
    pub fn parse(raw: &[u8]) -> Result<Hostname, Malformed> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if raw.is_empty() {
            return Err(Malformed("empty hostname"));
        }
        if raw.len() > MAX_LEN {
            return Err(Malformed("hostname longer than 253 bytes"));
        }
        for label in raw.split(|&b| b == b'.') {
            if label.is_empty() {
                return Err(Malformed("hostname has an empty label"));
            }
            if label.len() > MAX_LABEL {
                return Err(Malformed("hostname label longer than 63 bytes"));
            }
            if !label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Malformed("hostname has a character outside [A-Za-z0-9._-]"));
            }
        }
        let mut name = String::with_capacity(raw.len());
        name.extend(raw.iter().map(|&b| char::from(b.to_ascii_lowercase())));
        Ok(Hostname(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by Hostname be queried with a suffix slice without allocating. Hash and Eq
// are derived from the inner String, so they agree with str's.
impl std::borrow::Borrow<str> for Hostname {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_case_and_trailing_dot() {
        let h = Hostname::parse(b"Blog.Example.COM.").unwrap();
        assert_eq!(h.as_str(), "blog.example.com");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            &b""[..],
            b".",
            b"a..b",
            b"a b",
            b"caf\xc3\xa9.example",
            b"x/y",
            b"a.b:80",
        ] {
            assert!(Hostname::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Hostname::parse(&[b'a'; 254]).is_err());
        assert!(Hostname::parse(&[b'a'; 64]).is_err());
        assert!(Hostname::parse(&[b'a'; 63]).is_ok());
    }
}
