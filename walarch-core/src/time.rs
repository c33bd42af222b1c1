//! PostgreSQL timestamps (`TimestampTz`: microseconds since 2000-01-01 UTC).

use std::time::{SystemTime, UNIX_EPOCH};

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
