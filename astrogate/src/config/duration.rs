//! Durations written as `"250ms"`, `"5s"`, `"2m"` or `"1h"`.
use std::time::Duration;

pub fn parse(s: &str) -> Result<Duration, &'static str> {
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("duration needs a unit: ms, s, m or h")?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "duration must start with a number")?;
    let secs_per_unit = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err("unknown duration unit: use ms, s, m or h"),
    };
    n.checked_mul(secs_per_unit)
        .map(Duration::from_secs)
        .ok_or("duration too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5 s", "5d", "-1s", "99999999999999999999s"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
