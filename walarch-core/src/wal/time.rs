//! PostgreSQL timestamps (`TimestampTz`: microseconds since 2000-01-01 UTC).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// "No time" in the plain-data structs (SQL NULL).
pub const NO_TIME: i64 = i64::MIN;

/// Now, as a PostgreSQL `TimestampTz`.
pub fn now_timestamptz() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_secs() as i64 - PG_EPOCH_UNIX_SECS) * 1_000_000 + d.subsec_micros() as i64
}

pub fn to_option(t: i64) -> Option<i64> {
    if t == NO_TIME {
        None
    } else {
        Some(t)
    }
}

const UNITS: [(&str, u64); 5] = [
    ("w", 7 * 86_400),
    ("d", 86_400),
    ("h", 3_600),
    ("min", 60),
    ("s", 1),
];

/// A duration as an operator writes one: a whole number and a unit, `s`,
/// `min`, `h`, `d` or `w` (`7d`, `36h`); several may follow each other
/// (`1d12h`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("\"{text}\" is not a duration: use a number and a unit (s, min, h, d, w), such as 7d or 36h")
    };
    let mut rest = text.trim();
    let mut total = 0u64;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, secs) = UNITS
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total = n
            .checked_mul(*secs)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_secs(total))
}

/// `d` in the largest units that divide it: `2d`, `36h`, `90s`.
pub fn describe(d: Duration) -> String {
    let secs = d.as_secs();
    let (unit, n) = UNITS
        .iter()
        .find(|(_, u)| secs >= *u && secs.is_multiple_of(*u))
        .map(|(name, u)| (*name, secs / u))
        .unwrap_or(("s", secs));
    format!("{n}{unit}")
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_read_and_print_like_an_operator_writes_them() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1d12h"), Ok(Duration::from_secs(129_600)));
        assert_eq!(parse_duration("90min"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("2w"), Ok(Duration::from_secs(1_209_600)));
        for bad in ["", "7", "d", "7 days", "-1d", "1y", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(describe(Duration::from_secs(129_600)), "36h");
        assert_eq!(describe(Duration::from_secs(604_800)), "1w");
        assert_eq!(describe(Duration::from_secs(90)), "90s");
    }
}

/// `t` as RFC 3339 in UTC, to the second (`2026-12-05T14:45:00Z`).
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day
        assert_eq!(format_utc(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_481_900);
        assert_eq!(format_utc(t), "2026-12-05T14:45:00Z");
    }
}
