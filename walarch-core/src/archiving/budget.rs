//! `walarch.max_backlog`: a budget for the WAL waiting in `pg_wal` while the
//! archive is down, so that an archive outage does not become a database
//! outage (PostgreSQL PANICs on a full `pg_wal`).
//!
//! The rule, exactly. The archiver's call for file F reports F archived
//! without storing it ("drops" it) only when all of these hold:
//! - `walarch.max_backlog` is set (not 0);
//! - F is a WAL segment (or a `.partial`): `.history` and `.backup` files are
//!   never dropped;
//! - F is the oldest segment waiting (`pg_wal/archive_status`);
//! - the WAL waiting (`.ready` files and their sizes, F included: what
//!   `pending_bytes` shows) exceeds the budget;
//! - the destination is failing: this very attempt on F failed with a
//!   destination error (unreachable, timed out, full, refused by the
//!   operating system) or was refused at once by the open circuit breaker,
//!   and the destination has failed continuously, with no store succeeding
//!   in between (by the archiver or the copy-ahead worker), for at least
//!   `CONFIRM_FAILING`. A single failure, or a slow store that still
//!   succeeds, never drops anything;
//! - the drop is recorded durably first (the pending ranges file), and
//!   fewer than `MAX_PENDING` separate ranges wait for their markers.
//!
//! Every drop is recorded: a WARNING naming the range, the `dropped_*`
//! statistics, and a marker `DROPPED.<first>-<last>` stored into the archive
//! (create-only, with its checksum record) as soon as the destination takes
//! writes again, before any later file: restore and verify then name the
//! range instead of meeting an unexplained gap.

use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use crate::archiving::breaker::{format_timestamp, DestinationId};
use crate::archiving::shared_state::{bounded, ErrorText, WalName};
use crate::destination::Destination;
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::time::NO_TIME;
use crate::wal::walname::{WalFileKind, WalFileName};

/// How long the destination must have been failing, with no success in
/// between, before a file may be dropped.
pub const CONFIRM_FAILING: Duration = Duration::from_secs(10);
/// Ranges dropped but not yet marked in the archive, at most.
pub const MAX_PENDING: usize = 8;
/// The name of every marker starts with this.
pub const MARKER_PREFIX: &str = "DROPPED.";

/// The budget in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Bytes; 0 = off.
    pub max_backlog: u64,
    /// `wal_segment_size`, to tell consecutive segments.
    pub segment_size: u64,
}

/// A run of consecutive segments of one timeline reported archived without
/// being stored. Plain data, kept in shared memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedRange {
    /// Segment names (a dropped `.partial` counts as its segment).
    pub first: WalName,
    pub last: WalName,
    pub files: u64,
    pub bytes: u64,
    /// `TimestampTz` of the first and the last drop.
    pub first_time: i64,
    pub last_time: i64,
    /// Why: the destination's error when the first file was dropped.
    pub reason: ErrorText,
}

impl DroppedRange {
    /// `DROPPED.<first>-<last>`.
    pub fn marker_name(&self) -> String {
        format!("{MARKER_PREFIX}{}-{}", self.first, self.last)
    }

    /// `FIRST through LAST (N files)`, or `FIRST` alone.
    pub fn describe(&self) -> String {
        if self.files == 1 {
            format!("\"{}\"", self.first)
        } else {
            format!(
                "\"{}\" through \"{}\" ({} files)",
                self.first, self.last, self.files
            )
        }
    }

    /// The marker's contents: what a reader of the archive needs to know.
    pub fn marker_text(&self) -> String {
        format!(
            "walarch_ext dropped range 1\n\
             first {}\nlast {}\nfiles {}\nbytes {}\n\
             dropped_from {}\ndropped_until {}\n\
             reason dropped by walarch.max_backlog: the destination was failing ({})\n\
             note point-in-time recovery cannot pass this range; take a new base backup\n",
            self.first,
            self.last,
            self.files,
            self.bytes,
            format_timestamp(self.first_time),
            format_timestamp(self.last_time),
            self.reason.as_str().replace('\n', " "),
        )
    }
}

/// A marker found in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub name: String,
    pub timeline: u32,
    pub first: String,
    pub last: String,
}

impl Marker {
    /// Reads a marker name; `None` for any other name.
    pub fn parse(name: &str) -> Option<Marker> {
        let (first, last) = name.strip_prefix(MARKER_PREFIX)?.split_once('-')?;
        let (f, l) = (WalFileName::parse(first)?, WalFileName::parse(last)?);
        (f.kind == WalFileKind::Segment
            && l.kind == WalFileKind::Segment
            && f.timeline == l.timeline
            && first <= last)
            .then(|| Marker {
                name: name.to_string(),
                timeline: f.timeline,
                first: first.to_string(),
                last: last.to_string(),
            })
    }

    /// Whether segment `walfile` is inside the range. Names of one timeline
    /// sort as their segment numbers do.
    pub fn covers(&self, walfile: &str) -> bool {
        let Some(w) = WalFileName::parse(walfile) else {
            return false;
        };
        let seg = match w.kind {
            WalFileKind::Segment | WalFileKind::Partial => &walfile[..24],
            _ => return false,
        };
        w.timeline == self.timeline && self.first.as_str() <= seg && seg <= self.last.as_str()
    }
}

/// The markers stored in `dest`.
pub fn markers(dest: &dyn Destination) -> Result<Vec<Marker>, ArchiveError> {
    let mut v: Vec<Marker> = dest
        .entries()?
        .iter()
        .filter_map(|e| Marker::parse(&e.name))
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// The marker of a dropped range that holds segment `walfile`, if any: for
/// restore, verify and (later) the backup list ("can this backup reach the
/// present?").
pub fn dropped_range_of(
    dest: &dyn Destination,
    walfile: &str,
) -> Result<Option<Marker>, ArchiveError> {
    Ok(markers(dest)?.into_iter().find(|m| m.covers(walfile)))
}

/// A marker's contents; `None` when gone or not text.
pub fn marker_contents(dest: &dyn Destination, name: &str) -> Result<Option<String>, ArchiveError> {
    use std::io::Read;
    let Some(mut r) = dest.open(name)? else {
        return Ok(None);
    };
    let mut text = String::new();
    Ok(r.read_to_string(&mut text).ok().map(|_| text))
}

/// A marker's text field (`dropped_from`, `reason`, ...).
pub fn marker_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
}

/// Failures of the destination with no success in between: how long it has
/// been failing. Plain data, in shared memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailingStreak {
    dest: DestinationId,
    /// The first failure of the streak; `NO_TIME` when none.
    since: i64,
}

impl Default for FailingStreak {
    fn default() -> Self {
        FailingStreak {
            dest: DestinationId::default(),
            since: NO_TIME,
        }
    }
}

impl FailingStreak {
    pub fn failed(&mut self, dest: DestinationId, now: i64) {
        if self.dest != dest || self.since == NO_TIME {
            *self = FailingStreak { dest, since: now };
        }
    }

    /// Any store into `dest` succeeded: it accepts files.
    pub fn succeeded(&mut self, dest: DestinationId) {
        if self.dest == dest {
            self.since = NO_TIME;
        }
    }

    /// Failing continuously for at least `CONFIRM_FAILING` (a clock set back
    /// confirms nothing).
    pub fn confirmed(&self, dest: DestinationId, now: i64) -> bool {
        self.dest == dest
            && self.since != NO_TIME
            && now.saturating_sub(self.since) >= CONFIRM_FAILING.as_micros() as i64
    }

    pub fn since(&self, dest: DestinationId) -> Option<i64> {
        (self.dest == dest && self.since != NO_TIME).then_some(self.since)
    }
}

/// What the budget shares between processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    pub streak: FailingStreak,
    /// Ranges dropped whose marker is not yet in the archive, oldest first.
    pub pending: heapless::Vec<DroppedRange, MAX_PENDING>,
}

/// Why a file is kept (not dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Off,
    /// `.history`, `.backup`.
    NotASegment,
    /// The destination is not known to be failing.
    DestinationNotFailing,
    UnderBudget,
    /// An older segment waits (the archiver takes files in order; this is a
    /// safety net).
    NotTheOldest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Drop it; `backlog` bytes were waiting, this file included.
    Drop {
        backlog: u64,
    },
    Keep(Keep),
}

/// The decision for `name` given the files waiting (`ready`: names and
/// sizes, as `archive_status::ready_with_sizes` lists them) and whether the
/// destination is failing (see the module's rule).
pub fn decide(budget: &Budget, name: &str, ready: &[(String, u64)], failing: bool) -> Decision {
    if budget.max_backlog == 0 {
        return Decision::Keep(Keep::Off);
    }
    if !droppable(name) {
        return Decision::Keep(Keep::NotASegment);
    }
    if !failing {
        return Decision::Keep(Keep::DestinationNotFailing);
    }
    let backlog: u64 = ready.iter().map(|(_, s)| *s).sum();
    if backlog <= budget.max_backlog {
        return Decision::Keep(Keep::UnderBudget);
    }
    let oldest = ready.iter().map(|(n, _)| n.as_str()).find(|n| droppable(n));
    if oldest != Some(name) {
        return Decision::Keep(Keep::NotTheOldest);
    }
    Decision::Drop { backlog }
}

/// Segments and `.partial` files may be dropped; nothing else.
pub fn droppable(name: &str) -> bool {
    WalFileName::parse(name)
        .is_some_and(|w| matches!(w.kind, WalFileKind::Segment | WalFileKind::Partial))
}

/// Too many separate ranges wait for their markers: nothing more is dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyRanges;

impl BudgetState {
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Records the drop of `name` (`bytes` long) at `now`: it extends the
    /// newest range when it is that range's next segment, or starts a new
    /// one. Returns the range it is in.
    pub fn record_drop(
        &mut self,
        name: &str,
        segment_size: u64,
        bytes: u64,
        now: i64,
        reason: &str,
    ) -> Result<DroppedRange, TooManyRanges> {
        let seg = &name[..24.min(name.len())];
        let w = WalFileName::parse(seg).ok_or(TooManyRanges)?;
        if let Some(r) = self.pending.last_mut() {
            let next = WalFileName::parse(&r.last).and_then(|l| {
                (l.timeline == w.timeline && l.segno(segment_size) + 1 == w.segno(segment_size))
                    .then_some(())
            });
            if next.is_some() {
                r.last = bounded(seg);
                r.files += 1;
                r.bytes += bytes;
                r.last_time = now;
                return Ok(r.clone());
            }
            if r.first.as_str() <= seg && seg <= r.last.as_str() {
                // Dropped again (the archiver's retry after a lost answer).
                return Ok(r.clone());
            }
        }
        let r = DroppedRange {
            first: bounded(seg),
            last: bounded(seg),
            files: 1,
            bytes,
            first_time: now,
            last_time: now,
            reason: bounded(reason),
        };
        self.pending.push(r.clone()).map_err(|_| TooManyRanges)?;
        Ok(r)
    }

    /// The markers of these ranges are stored.
    pub fn marked(&mut self, stored: &[DroppedRange]) {
        self.pending.retain(|r| !stored.contains(r));
    }
}

/// Stores the marker of each range (create-only; one already there counts
/// as stored: it records the same drop). Returns the ranges marked, in
/// order, and the error that stopped it.
pub fn store_markers(
    dest: &dyn Destination,
    pending: &[DroppedRange],
) -> (Vec<DroppedRange>, Option<ArchiveError>) {
    let mut done = vec![];
    for r in pending {
        match dest.store_new_bytes(&r.marker_name(), r.marker_text().as_bytes()) {
            Ok(_) => done.push(r.clone()),
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// Whether a failed attempt says the destination does not take files (as
/// opposed to the WAL file being unreadable, a name refused, a conflict
/// with another file, or the worker holding it): unreachable or failing
/// (`Unavailable`), full, or any other I/O failure while the WAL file itself
/// is readable.
pub fn destination_error(e: &ArchiveError, source: &Path) -> bool {
    match e.kind {
        ErrorKind::Unavailable | ErrorKind::DiskFull => true,
        ErrorKind::Io => std::fs::File::open(source).is_ok(),
        _ => false,
    }
}

// The pending ranges, persisted: written (durably) before a drop is
// reported, read at start-up. Text, like the statistics file.

const HEADER: &str = "walarch_ext dropped 1";

use crate::archiving::stats_file::{escape, unescape};

pub fn serialize(pending: &[DroppedRange]) -> String {
    let mut out = format!("{HEADER}\n");
    for r in pending {
        out.push_str(&format!(
            "range {} {} {} {} {} {} {}\n",
            r.first,
            r.last,
            r.files,
            r.bytes,
            r.first_time,
            r.last_time,
            escape(&r.reason)
        ));
    }
    out.push_str("end\n");
    out
}

pub fn parse(text: &str) -> Option<Vec<DroppedRange>> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut v = vec![];
    for l in lines {
        if l == "end" {
            return Some(v);
        }
        let mut f = l.strip_prefix("range ")?.splitn(7, ' ');
        let mut next = || f.next();
        let (first, last) = (next()?, next()?);
        WalFileName::parse(first)?;
        WalFileName::parse(last)?;
        let files = next()?.parse().ok()?;
        let bytes = next()?.parse().ok()?;
        let first_time = next()?.parse().ok()?;
        let last_time = next()?.parse().ok()?;
        let reason = unescape(next().unwrap_or(""));
        v.push(DroppedRange {
            first: bounded(first),
            last: bounded(last),
            files,
            bytes,
            first_time,
            last_time,
            reason: bounded(&reason),
        });
    }
    None
}

/// Writes the pending ranges durably (temporary file, fsync, rename,
/// directory fsync); no ranges: the file is removed.
pub fn save(path: &Path, pending: &[DroppedRange]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if pending.is_empty() {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        return crate::support::fsutil::fsync_dir(dir);
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serialize(pending).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    crate::support::fsutil::fsync_dir(dir)
}

/// Reads the pending ranges: none when there is no file; an error when it
/// cannot be read as one (it is then left in place: never lose a range).
pub fn load(path: &Path) -> io::Result<Vec<DroppedRange>> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse(&t).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "it is incomplete or damaged")
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;
    const S: i64 = 1_000_000;

    fn seg(n: u64) -> String {
        crate::wal::walname::segment_file_name(1, n, MB16)
    }

    fn ready(names: &[String]) -> Vec<(String, u64)> {
        names.iter().map(|n| (n.clone(), MB16)).collect()
    }

    fn budget(mb: u64) -> Budget {
        Budget {
            max_backlog: mb << 20,
            segment_size: MB16,
        }
    }

    #[test]
    fn drops_only_the_oldest_segment_over_budget_while_failing() {
        let waiting: Vec<String> = (1..=10).map(seg).collect();
        let r = ready(&waiting);
        // 160 MB waiting, budget 128 MB, destination failing.
        assert_eq!(
            decide(&budget(128), &seg(1), &r, true),
            Decision::Drop { backlog: 160 << 20 }
        );
        assert_eq!(
            decide(&budget(0), &seg(1), &r, true),
            Decision::Keep(Keep::Off)
        );
        assert_eq!(
            decide(&budget(128), &seg(1), &r, false),
            Decision::Keep(Keep::DestinationNotFailing),
            "a healthy (slow) destination never loses a file"
        );
        assert_eq!(
            decide(&budget(160), &seg(1), &r, true),
            Decision::Keep(Keep::UnderBudget),
            "exceeds, not reaches"
        );
        assert_eq!(
            decide(&budget(128), &seg(2), &r, true),
            Decision::Keep(Keep::NotTheOldest)
        );
    }

    #[test]
    fn history_and_backup_files_are_never_dropped_and_do_not_shield_segments() {
        let mut r = ready(&(1..=10).map(seg).collect::<Vec<_>>());
        r.insert(0, ("00000002.history".into(), 50));
        r.push((format!("{}.00000028.backup", seg(3)), 300));
        for name in ["00000002.history", &format!("{}.00000028.backup", seg(3))] {
            assert_eq!(
                decide(&budget(1), name, &r, true),
                Decision::Keep(Keep::NotASegment)
            );
        }
        // The oldest segment is the first segment, whatever comes before.
        assert!(matches!(
            decide(&budget(1), &seg(1), &r, true),
            Decision::Drop { .. }
        ));
        // A .partial is the last segment of an old timeline: droppable.
        let p = format!("{}.partial", seg(1));
        assert!(droppable(&p));
        assert!(!droppable("00000002.history"));
    }

    #[test]
    fn failing_means_continuously_for_a_while() {
        let d = DestinationId::of(&["dir", "/a"]);
        let mut s = FailingStreak::default();
        assert!(!s.confirmed(d, 100 * S));
        s.failed(d, 100 * S);
        assert!(!s.confirmed(d, 100 * S), "one failure is a one-off");
        s.failed(d, 105 * S);
        assert!(!s.confirmed(d, 109 * S));
        assert!(s.confirmed(d, 110 * S));
        // Another destination: not this one's outage.
        assert!(!s.confirmed(DestinationId::of(&["dir", "/b"]), 200 * S));
        // A success (the worker's or the archiver's) ends it.
        s.succeeded(d);
        assert!(!s.confirmed(d, 200 * S));
        s.failed(d, 200 * S);
        assert_eq!(s.since(d), Some(200 * S));
        // A clock set back confirms nothing.
        assert!(!s.confirmed(d, 50 * S));
    }

    #[test]
    fn consecutive_drops_make_one_range_a_skip_starts_another() {
        let mut b = BudgetState::default();
        let r = b.record_drop(&seg(5), MB16, MB16, 10, "down").unwrap();
        assert_eq!(r.marker_name(), format!("DROPPED.{}-{}", seg(5), seg(5)));
        b.record_drop(&seg(6), MB16, MB16, 20, "still down")
            .unwrap();
        let r = b.record_drop(&seg(7), MB16, 100, 30, "x").unwrap();
        assert_eq!((r.first.as_str(), r.last.as_str()), (&*seg(5), &*seg(7)));
        assert_eq!(
            (r.files, r.bytes, r.first_time, r.last_time),
            (3, 2 * MB16 + 100, 10, 30)
        );
        assert_eq!(r.reason.as_str(), "down");
        assert_eq!(
            r.describe(),
            format!("\"{}\" through \"{}\" (3 files)", seg(5), seg(7))
        );
        // The same file again (a retry): nothing changes.
        assert_eq!(b.record_drop(&seg(6), MB16, MB16, 40, "x").unwrap(), r);
        // Not the next one: a new range.
        b.record_drop(&seg(9), MB16, MB16, 50, "x").unwrap();
        // Another timeline: a new range.
        let t2 = crate::wal::walname::segment_file_name(2, 10, MB16);
        b.record_drop(&t2, MB16, MB16, 60, "x").unwrap();
        assert_eq!(b.pending.len(), 3);
        // A .partial counts as its segment.
        let p = format!(
            "{}.partial",
            crate::wal::walname::segment_file_name(2, 11, MB16)
        );
        let r = b.record_drop(&p, MB16, MB16, 70, "x").unwrap();
        assert_eq!(r.files, 2);
        // Bounded: once full, nothing more is dropped.
        for i in 0..5 {
            b.record_drop(&seg(100 + 2 * i), MB16, 1, 80, "x").unwrap();
        }
        assert_eq!(
            b.record_drop(&seg(200), MB16, 1, 90, "x"),
            Err(TooManyRanges)
        );
        let first = b.pending[0].clone();
        b.marked(&[first]);
        assert_eq!(b.pending.len(), MAX_PENDING - 1);
    }

    #[test]
    fn markers_name_their_range_and_cover_it() {
        let mut b = BudgetState::default();
        b.record_drop(
            &seg(0xFE),
            MB16,
            MB16,
            0,
            "could not create file: Permission denied",
        )
        .unwrap();
        let r = b.record_drop(&seg(0x100), MB16, MB16, 5 * S, "x");
        assert!(r.is_ok());
        let r = b.pending[0].clone();
        let m = Marker::parse(&r.marker_name()).unwrap();
        assert!(m.covers(&seg(0xFE)));
        assert!(!m.covers(&seg(0xFF)));
        let text = r.marker_text();
        assert_eq!(marker_field(&text, "first"), Some(&*seg(0xFE)));
        assert_eq!(
            marker_field(&text, "dropped_from"),
            Some("2000-01-01 00:00:00 UTC")
        );
        assert!(marker_field(&text, "reason")
            .unwrap()
            .contains("Permission denied"));
        // Across a log boundary (16 MB segments: ...FF, then the next log).
        let mut b = BudgetState::default();
        for n in 0xFE..=0x101 {
            b.record_drop(&seg(n), MB16, MB16, 0, "x").unwrap();
        }
        let m = Marker::parse(&b.pending[0].marker_name()).unwrap();
        assert_eq!(b.pending.len(), 1);
        for n in 0xFE..=0x101 {
            assert!(m.covers(&seg(n)), "{}", seg(n));
        }
        assert!(!m.covers(&seg(0x102)));
        assert!(!m.covers(&crate::wal::walname::segment_file_name(2, 0xFF, MB16)));
        assert!(!m.covers("00000001.history"));
        for bad in [
            "DROPPED.x-y",
            "DROPPED.000000010000000000000002-000000010000000000000001",
            "DROPPED.000000010000000000000001-000000020000000000000002",
            "000000010000000000000001",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn markers_are_stored_create_only_and_found_again() {
        use crate::support::testing::{MemoryDestination, Unreachable};
        let dest = MemoryDestination::default();
        let mut b = BudgetState::default();
        b.record_drop(&seg(3), MB16, MB16, 0, "x").unwrap();
        b.record_drop(&seg(4), MB16, MB16, 0, "x").unwrap();
        b.record_drop(&seg(9), MB16, MB16, 0, "x").unwrap();
        let pending: Vec<_> = b.pending.iter().cloned().collect();
        let (done, err) = store_markers(&Unreachable, &pending);
        assert!(done.is_empty() && err.is_some());
        let (done, err) = store_markers(&dest, &pending);
        assert_eq!((done.len(), err), (2, None));
        // Already there (stored before a crash): counts as stored.
        assert_eq!(store_markers(&dest, &pending).0.len(), 2);
        assert_eq!(
            dropped_range_of(&dest, &seg(4)).unwrap().unwrap().name,
            pending[0].marker_name()
        );
        assert!(dropped_range_of(&dest, &seg(5)).unwrap().is_none());
        assert_eq!(markers(&dest).unwrap().len(), 2);
    }

    #[test]
    fn pending_ranges_survive_a_restart_and_a_damaged_file_is_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("walarch_ext.dropped");
        assert_eq!(load(&p).unwrap(), vec![]);
        let mut b = BudgetState::default();
        b.record_drop(&seg(3), MB16, MB16, 7, "a \"reason\"\nwith \\ two lines")
            .unwrap();
        b.record_drop(&seg(9), MB16, 5, 8, "").unwrap();
        let pending: Vec<_> = b.pending.iter().cloned().collect();
        save(&p, &pending).unwrap();
        assert_eq!(load(&p).unwrap(), pending);
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, &text[..text.len() - 4]).unwrap();
        assert!(load(&p).is_err());
        assert!(p.exists(), "never removed when unreadable");
        save(&p, &[]).unwrap();
        assert!(!p.exists());
        assert_eq!(load(&p).unwrap(), vec![]);
    }

    #[test]
    fn only_destination_failures_count() {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("w");
        std::fs::write(&wal, b"x").unwrap();
        let e = |k| ArchiveError::new(k, "e");
        assert!(destination_error(&e(ErrorKind::Unavailable), &wal));
        assert!(destination_error(&e(ErrorKind::DiskFull), &wal));
        assert!(destination_error(&e(ErrorKind::Io), &wal));
        assert!(
            !destination_error(&e(ErrorKind::Io), &d.path().join("gone")),
            "the WAL file is the problem"
        );
        for k in [ErrorKind::Conflict, ErrorKind::Busy, ErrorKind::InvalidName] {
            assert!(!destination_error(&e(k), &wal), "{k:?}");
        }
    }
}
