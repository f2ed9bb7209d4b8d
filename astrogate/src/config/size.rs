//! Byte sizes written as `65536`, `"512KiB"`, `"4MiB"` or `"1GiB"`.
use serde::Deserialize;

/// A size as written: a plain integer of bytes, or a string with a binary unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

pub fn parse(raw: &RawSize) -> Result<u64, &'static str> {
    let text = match raw {
        RawSize::Bytes(n) => return u64::try_from(*n).map_err(|_| "size must not be negative"),
        RawSize::Text(t) => t.as_str(),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "size must start with a number")?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err("unknown size unit: use B, KiB, MiB or GiB"),
    };
    n.checked_mul(scale).ok_or("size too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        let t = |s: &str| parse(&RawSize::Text(s.into()));
        assert_eq!(t("4MiB"), Ok(4 << 20));
        assert_eq!(t("512KiB"), Ok(512 << 10));
        assert_eq!(t("1GiB"), Ok(1 << 30));
        assert_eq!(t("100"), Ok(100));
        assert_eq!(parse(&RawSize::Bytes(65536)), Ok(65536));
        for bad in ["", "4MB", "MiB", "4 MiB", "-1MiB", "99999999999GiB"] {
            assert!(t(bad).is_err(), "{bad}");
        }
        assert!(parse(&RawSize::Bytes(-1)).is_err());
    }
}
