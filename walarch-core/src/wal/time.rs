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

/// Seconds since the Unix epoch as (year, month, day, hour, minute,
/// second) in UTC (Howard Hinnant's civil_from_days).
pub fn civil_utc(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3_600, rem % 3_600 / 60, rem % 60)
}

/// `t` as RFC 3339 in UTC, to the second (`2026-12-05T14:45:00Z`).
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let (y, m, d, hh, mm, ss) = civil_utc(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
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

/// Seconds since the Unix epoch of a time as PostgreSQL reads
/// `recovery_target_time` in its common ISO forms: `YYYY-MM-DD HH:MM[:SS[.frac]]`
/// (or `T` between) followed by a zone: `Z`, `UTC`, `+HH`, `+HHMM` or
/// `+HH:MM`. `Ok(None)` when the zone is missing (PostgreSQL would use its
/// own `timezone` setting, which is not known here); `Err` when it is not a
/// time in these forms.
pub fn parse_iso_time(text: &str) -> Result<Option<i64>, String> {
    let bad = || format!("\"{text}\" is not a time of the form YYYY-MM-DD HH:MM:SS+ZZ");
    let t = text.trim();
    let (date, rest) = t.split_at_checked(10).ok_or_else(bad)?;
    let d: Vec<&str> = date.split('-').collect();
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    if d.len() != 3 || d[0].len() != 4 || d[1].len() != 2 || d[2].len() != 2 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    let rest = rest.strip_prefix([' ', 'T']).ok_or_else(bad)?;
    // The clock: up to where the zone starts.
    let zone_at = rest
        .find(|c: char| c == 'Z' || c == '+' || c == '-' || c == ' ' || c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let (clock, zone) = rest.split_at(zone_at);
    let clock = clock.split('.').next().unwrap_or(clock);
    let c: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&c.len()) || c.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let (hh, mm) = (num(c[0])?, num(c[1])?);
    let ss = if c.len() == 3 { num(c[2])? } else { 0 };
    if hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    let zone = zone.trim();
    let offset = match zone {
        "" => return Ok(None),
        "Z" | "z" | "UTC" | "utc" | "GMT" | "gmt" => 0,
        _ => {
            let (sign, z) = match zone.split_at(1) {
                ("+", z) => (1, z),
                ("-", z) => (-1, z),
                _ => return Err(bad()),
            };
            let z = z.replace(':', "");
            let (zh, zm) = match z.len() {
                2 => (num(&z)?, 0),
                4 => (num(&z[..2])?, num(&z[2..])?),
                _ => return Err(bad()),
            };
            sign * (zh * 3600 + zm * 60)
        }
    };
    // Howard Hinnant's days_from_civil.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn iso_times_with_and_without_zone() {
        let t = 1_796_481_900; // 2026-12-05 14:45:00 UTC
        for s in [
            "2026-12-05 14:45:00+00",
            "2026-12-05T14:45:00Z",
            "2026-12-05 14:45:00.123456 UTC",
            "2026-12-05 15:45:00+01",
            "2026-12-05 16:15:00+01:30",
            "2026-12-05 09:45:00-0500",
            "2026-12-05 14:45+00",
        ] {
            assert_eq!(parse_iso_time(s), Ok(Some(t)), "{s}");
        }
        assert_eq!(parse_iso_time("2026-12-05 14:45:00"), Ok(None));
        assert_eq!(
            parse_iso_time("2000-02-29T00:00:00Z"),
            Ok(Some(951_782_400))
        );
        assert_eq!(
            parse_iso_time(&format_utc(UNIX_EPOCH + Duration::from_secs(t as u64))),
            Ok(Some(t))
        );
        for s in [
            "yesterday",
            "2026-13-01 00:00:00Z",
            "2026-12-05",
            "2026-12-05 1:00Z",
            "2026-12-05 14:45:00 +xx",
        ] {
            assert!(parse_iso_time(s).is_err(), "{s}");
        }
    }
}
