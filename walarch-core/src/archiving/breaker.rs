//! The circuit breaker the archiver and the copy-ahead worker share: while
//! the destination is known to be failing (an `Unavailable` error: connect
//! failure, timeout, 5xx), attempts fail at once instead of each paying a
//! full request timeout, and one attempt per back-off interval probes the
//! store. A hung store then costs the archiver's last round at shutdown
//! seconds, not minutes; nothing is lost, the files stay ready.
//!
//! - opened by an `Unavailable` failure only: a refusal (conflict,
//!   credentials) is an answer from a store that works;
//! - one probe per back-off, granted to whichever process asks first;
//! - the back-off doubles from `FIRST_BACKOFF` up to `MAX_BACKOFF`, only on
//!   the failure of an attempt begun since the last failure (four parallel
//!   uploads timing out together count once);
//! - closed by a success begun since the last failure;
//! - keyed to the destination: another one configured starts closed.
//!
//! Plain data (times are `TimestampTz` microseconds), kept in shared memory.

use std::time::Duration;

use crate::archiving::shared_state::{bounded, ErrorText};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::time::NO_TIME;

pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// PostgreSQL's archiver sleeps up to 60 s after failing a file three times.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Which destination something is about: a digest of what names the store
/// (not of credentials), never 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationId(pub u64);

impl DestinationId {
    /// The identity of a destination named by `parts` (the normalized
    /// setting, endpoint, bucket, prefix...).
    pub fn of(parts: &[&str]) -> DestinationId {
        let mut joined = Vec::new();
        for p in parts {
            joined.extend_from_slice(&(p.len() as u64).to_le_bytes());
            joined.extend_from_slice(p.as_bytes());
        }
        let d = crate::wal::checksum::sha256(&joined);
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        DestinationId(u64::from_le_bytes(b).max(1))
    }
}

/// What a process may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Gate {
    /// No known failure: go ahead.
    Closed,
    /// Failing, but this process's attempt is the probe: go ahead.
    Probe,
    /// Failing: fail this attempt at once.
    Open(Outage),
}

/// An outage, for the message of an attempt refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outage {
    pub since: i64,
    pub next_probe: i64,
    pub last_error: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    dest: DestinationId,
    /// The first failure of the outage; `NO_TIME` when closed.
    failing_since: i64,
    last_failure: i64,
    next_probe: i64,
    backoff_us: i64,
    last_error: ErrorText,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            dest: DestinationId::default(),
            failing_since: NO_TIME,
            last_failure: NO_TIME,
            next_probe: NO_TIME,
            backoff_us: 0,
            last_error: ErrorText::default(),
        }
    }
}

impl Breaker {
    fn for_dest(&mut self, dest: DestinationId) {
        if self.dest != dest {
            *self = Breaker {
                dest,
                ..Breaker::default()
            };
        }
    }

    pub fn is_open(&self, dest: DestinationId) -> bool {
        self.dest == dest && self.failing_since != NO_TIME
    }

    /// May an attempt on `dest` start at `now`? Grants the probe (and moves
    /// the next one a back-off away) when it is due.
    pub fn gate(&mut self, dest: DestinationId, now: i64) -> Gate {
        self.for_dest(dest);
        if self.failing_since == NO_TIME {
            return Gate::Closed;
        }
        // A clock set back must not keep the breaker open for longer.
        if now >= self.next_probe || now < self.last_failure {
            self.next_probe = now.saturating_add(self.backoff_us);
            return Gate::Probe;
        }
        Gate::Open(Outage {
            since: self.failing_since,
            next_probe: self.next_probe,
            last_error: self.last_error.to_string(),
        })
    }

    /// `gate` for a process that is shutting down: it never takes the
    /// probe (one attempt on a hung store costs a full request timeout, and
    /// a shutdown must not wait for that), so an open breaker refuses.
    pub fn gate_at_shutdown(&mut self, dest: DestinationId) -> Gate {
        self.for_dest(dest);
        if self.failing_since == NO_TIME {
            return Gate::Closed;
        }
        Gate::Open(Outage {
            since: self.failing_since,
            next_probe: self.next_probe,
            last_error: self.last_error.to_string(),
        })
    }

    /// An attempt on `dest` begun at `started` failed at `now`.
    pub fn failed(&mut self, dest: DestinationId, started: i64, now: i64, e: &ArchiveError) {
        if e.kind != ErrorKind::Unavailable {
            return;
        }
        self.for_dest(dest);
        if self.failing_since == NO_TIME {
            self.failing_since = now;
            self.backoff_us = FIRST_BACKOFF.as_micros() as i64;
        } else if started >= self.last_failure {
            self.backoff_us = (self.backoff_us * 2).min(MAX_BACKOFF.as_micros() as i64);
        }
        self.last_failure = self.last_failure.max(now);
        self.next_probe = now.saturating_add(self.backoff_us);
        self.last_error = bounded(&e.message);
    }

    /// An attempt on `dest` begun at `started` succeeded: the store serves.
    pub fn succeeded(&mut self, dest: DestinationId, started: i64) {
        if self.dest == dest && self.failing_since != NO_TIME && started >= self.last_failure {
            *self = Breaker {
                dest,
                ..Breaker::default()
            };
        }
    }
}

/// The error of an attempt refused while `dest_text` is failing.
pub fn unavailable(dest_text: &str, outage: &Outage, now: i64) -> ArchiveError {
    let wait = Duration::from_micros(outage.next_probe.saturating_sub(now).max(0) as u64);
    ArchiveError::new(
        ErrorKind::Unavailable,
        format!(
            "archive destination \"{dest_text}\" is unavailable since {}",
            format_timestamp(outage.since)
        ),
    )
    .with_detail(format!(
        "The last attempt failed: {}. The next attempt is at {} (in {} s); until then attempts fail at once. The file stays ready for archiving: nothing is lost.",
        outage.last_error,
        format_timestamp(outage.next_probe),
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
    ))
    .with_hint("Check that the store is running and reachable.")
}

/// A `TimestampTz` as `2026-12-05 11:16:18 UTC`.
pub fn format_timestamp(t: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let secs = t.div_euclid(1_000_000) + PG_EPOCH_UNIX_SECS;
    let (y, m, d, hh, mm, ss) = crate::wal::time::civil_utc(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;
    fn dest() -> DestinationId {
        DestinationId::of(&["s3", "http://127.0.0.1:8333", "wal", ""])
    }
    fn down() -> ArchiveError {
        ArchiveError::new(ErrorKind::Unavailable, "could not store: timed out")
    }

    #[test]
    fn identities_differ_by_any_part_and_are_never_zero() {
        let a = DestinationId::of(&["s3", "http://a", "wal", "p"]);
        assert_eq!(a, DestinationId::of(&["s3", "http://a", "wal", "p"]));
        assert_ne!(a, DestinationId::of(&["s3", "http://b", "wal", "p"]));
        assert_ne!(a, DestinationId::of(&["s3", "http://a", "walp", ""]));
        assert_ne!(DestinationId::of(&[]).0, 0);
    }

    #[test]
    fn an_unavailable_failure_opens_it_until_the_probe() {
        let mut b = Breaker::default();
        assert_eq!(b.gate(dest(), 0), Gate::Closed);
        b.failed(dest(), 0, 10 * S, &down());
        let Gate::Open(o) = b.gate(dest(), 11 * S) else {
            panic!("not open")
        };
        assert_eq!((o.since, o.next_probe), (10 * S, 15 * S));
        assert_eq!(o.last_error, "could not store: timed out");
        assert!(matches!(b.gate(dest(), 15 * S - 1), Gate::Open(_)));
        // One probe per back-off: the first to ask gets it.
        assert_eq!(b.gate(dest(), 15 * S), Gate::Probe);
        assert!(matches!(b.gate(dest(), 15 * S + 1), Gate::Open(_)));
        assert!(b.is_open(dest()));
    }

    #[test]
    fn back_off_doubles_on_failed_probes_up_to_the_cap_and_a_success_closes() {
        let mut b = Breaker::default();
        b.failed(dest(), 0, 0, &down());
        let mut now = 0;
        let mut backoffs = vec![];
        for _ in 0..6 {
            let Gate::Open(o) = b.gate(dest(), now) else {
                panic!()
            };
            backoffs.push((o.next_probe - now) / S);
            now = o.next_probe;
            assert_eq!(b.gate(dest(), now), Gate::Probe);
            b.failed(dest(), now, now + S, &down());
            now += S;
        }
        assert_eq!(backoffs, vec![5, 10, 20, 40, 60, 60]);
        assert!(matches!(b.gate(dest(), now + 59 * S), Gate::Open(_)));
        assert_eq!(b.gate(dest(), now + 60 * S), Gate::Probe);
        b.succeeded(dest(), now + 60 * S);
        assert_eq!(b.gate(dest(), now + 60 * S + 1), Gate::Closed);
        // Closed, it starts from the first back-off again.
        b.failed(dest(), now + 61 * S, now + 62 * S, &down());
        let Gate::Open(o) = b.gate(dest(), now + 62 * S) else {
            panic!()
        };
        assert_eq!(o.next_probe, now + 67 * S);
    }

    #[test]
    fn attempts_begun_before_the_last_failure_neither_grow_nor_close_it() {
        let mut b = Breaker::default();
        // Four uploads started together time out together.
        for i in 0..4 {
            b.failed(dest(), 0, 10 * S + i, &down());
        }
        let Gate::Open(o) = b.gate(dest(), 11 * S) else {
            panic!()
        };
        assert_eq!(o.next_probe, 10 * S + 3 + 5 * S, "counted once");
        b.succeeded(dest(), 9 * S);
        assert!(b.is_open(dest()), "a success begun before the failure");
        b.succeeded(dest(), 11 * S);
        assert!(!b.is_open(dest()));
    }

    #[test]
    fn refusals_do_not_open_it() {
        let mut b = Breaker::default();
        for kind in [
            ErrorKind::Conflict,
            ErrorKind::Configuration,
            ErrorKind::Io,
            ErrorKind::DiskFull,
            ErrorKind::Busy,
        ] {
            b.failed(dest(), 0, S, &ArchiveError::new(kind, "refused"));
            assert_eq!(b.gate(dest(), S), Gate::Closed, "{kind:?}");
        }
    }

    #[test]
    fn another_destination_starts_closed() {
        let mut b = Breaker::default();
        b.failed(dest(), 0, 0, &down());
        let other = DestinationId::of(&["dir", "/var/lib/wal"]);
        assert!(!b.is_open(other));
        assert_eq!(b.gate(other, S), Gate::Closed);
        assert_eq!(b.gate(dest(), S), Gate::Closed, "reset by the change");
    }

    #[test]
    fn a_clock_set_back_grants_the_probe() {
        let mut b = Breaker::default();
        b.failed(dest(), 100 * S, 100 * S, &down());
        assert_eq!(b.gate(dest(), 50 * S), Gate::Probe);
    }

    #[test]
    fn the_refusal_says_since_when_and_when_next() {
        let mut b = Breaker::default();
        // 2026-12-05 11:16:18 UTC.
        let t = (1_796_469_378 - 946_684_800) * S;
        b.failed(dest(), t, t, &down());
        let Gate::Open(o) = b.gate(dest(), t + S) else {
            panic!()
        };
        let e = unavailable("s3://wal", &o, t + S);
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(
            e.message,
            "archive destination \"s3://wal\" is unavailable since 2026-12-05 11:16:18 UTC"
        );
        let detail = e.detail.unwrap();
        assert!(
            detail.contains("The next attempt is at 2026-12-05 11:16:23 UTC (in 4 s)"),
            "{detail}"
        );
        assert!(detail.contains("could not store: timed out"), "{detail}");
        assert_eq!(format_timestamp(0), "2000-01-01 00:00:00 UTC");
        assert_eq!(format_timestamp(-S), "1999-12-31 23:59:59 UTC");
    }
}
