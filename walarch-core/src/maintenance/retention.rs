//! Which archived WAL files a retention rule removes, and removing them.
//!
//! What a base backup needs is read from the archive itself: its backup
//! history file (`.backup`: start and stop location, timelines, stop time)
//! and the timeline history files (`.history`). Restoring a backup replays
//! from its start on its timeline and, with `recovery_target_timeline =
//! latest`, onto any later timeline whose history leaves the backup's
//! timeline at or after that start; so a kept backup keeps, from its start
//! segment on, the segments of its timeline and of every such descendant.
//! Other timelines (forks that left before the backup began, abandoned
//! branches) are not its concern, though another kept backup may need them.
//! A timeline whose history cannot be read counts as a descendant: when in
//! doubt, keep. `.history` files always stay (each is tiny, and recovery
//! reads them to pick its timeline).
//!
//! "The most recent backups" are the most recent in the archive's history:
//! a backup whose stop record is part of another's history (same timeline
//! before it, or on a timeline the other's forked from later) is older, and
//! otherwise the stop time decides; the WAL position alone does not, since a
//! point-in-time recovery forks a new timeline back in position.
//!
//! A rule never removes WAL that the newest backup needs, nor the WAL of the
//! newest backup that the latest timeline (the one a restore follows by
//! default, and the one a server archives after a recovery) can be restored
//! from. With no backup known, `--before` and `--older-than` remove nothing
//! unless told the backups are kept elsewhere.
//!
//! Files go oldest first, each data before its record, so an expiry that
//! stops midway leaves a shorter archive without a hole, and never a record
//! without its file.
//!
//! Backups taken through the target (`backups/LABEL/`, see `crate::backup`)
//! count too, by their `backup.json`; the `.backup` file PostgreSQL also
//! archives for such a backup is the same backup (same start timeline and
//! location, which its name encodes), counted once. A backup taken through
//! the target that the rule expires loses its objects before any WAL goes,
//! `backup.json` first: a crash midway leaves an incomplete backup, never a
//! listed one with objects missing. Incomplete backups (no `backup.json`)
//! untouched for `INCOMPLETE_AFTER` are removed too, unless a backup is in
//! progress.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backup::catalog::{removal_order, Catalog, StoredBackup};
use crate::backup::{BACKUPS_DIR, INCOMPLETE_AFTER};
use crate::destination::sealed::Identities;
use crate::destination::{Destination, Entry};
use crate::restore::reading::{open_stored, read_back_small, ReadFailure};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::timeline_history::Timelines;
use crate::wal::walname::{WalFileKind, WalFileName};

/// What to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The WAL the N most recent base backups need.
    KeepBackups(u32),
    /// Everything from this segment on.
    Before(String),
    /// Everything from the oldest segment archived less than this long ago.
    OlderThan(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Remove,
    /// Not a WAL file name: never touched, reported.
    Leave,
}

impl Action {
    pub fn as_str(&self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (Action::Remove, true) => "remove",
            (Action::Remove, false) => "removed",
            (Action::Leave, _) => "left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub walfile: String,
    pub action: Action,
    pub reason: String,
}

impl Decision {
    /// Whether it names an object of a backup (`backups/LABEL/…`), removed
    /// with `remove_object`, rather than a WAL file: WAL file names have no
    /// `/`.
    pub fn is_backup_object(&self) -> bool {
        self.walfile.contains('/')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The oldest segment position kept (`None`: nothing to cut at).
    pub cut: Option<String>,
    /// Why the archive is cut there.
    pub why: String,
    /// Removals oldest first, then the names left alone.
    pub decisions: Vec<Decision>,
}

impl Plan {
    pub fn removals(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Remove)
    }
}

/// The texts retention reads besides the names: every backup history file
/// (by name) and timeline history file (by timeline), and the backups taken
/// through the target.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub backups: BTreeMap<String, String>,
    pub histories: BTreeMap<u32, String>,
    pub stored: Catalog,
}

/// History files are a few hundred bytes; anything much larger is not one.
const MAX_HISTORY_TEXT: u64 = 1 << 20;

/// Reads the `.backup` and `.history` files among `entries` from `dest`,
/// and the backups under `backups/`. One that vanished meanwhile is skipped
/// (a `.backup` then counts as unreadable and `plan` refuses); one that
/// cannot be read is an error. An encrypted one is refused: see
/// `read_facts_opening`.
pub fn read_facts(dest: &dyn Destination, entries: &[Entry]) -> Result<Facts, ArchiveError> {
    read_facts_opening(dest, None, entries)
}

/// `read_facts`, reading encrypted files with `ids`. `dest` is the archive
/// as stored (not the `Compressing` view): `entries` may name WAL files by
/// their own names, and each is read from whichever form holds it. An
/// encrypted one is checked as restore checks it; without `ids` it is
/// refused, since what it says decides what is removed, and a timeline or
/// a backup is never guessed.
pub fn read_facts_opening(
    dest: &dyn Destination,
    ids: Option<&Identities>,
    entries: &[Entry],
) -> Result<Facts, ArchiveError> {
    let mut facts = Facts {
        stored: Catalog::read(dest)?,
        ..Facts::default()
    };
    for e in entries {
        let Some(w) = WalFileName::parse(&e.name) else {
            continue;
        };
        if !matches!(w.kind, WalFileKind::Backup | WalFileKind::History) {
            continue;
        }
        let Some((h, r)) = open_stored(dest, &e.name)? else {
            continue;
        };
        let bytes = if h.form.encrypted {
            if ids.is_none() {
                return Err(ArchiveError::new(
                    ErrorKind::Configuration,
                    format!(
                        "archive file \"{}\" is encrypted and no identity was given to read it",
                        dest.location(&h.stored)
                    ),
                )
                .with_detail(
                    "Retention reads every timeline history and backup history file to know which WAL the base backups need; it never guesses. Nothing was removed.",
                )
                .with_hint(
                    "Run \"walarch expire\" with --identity-file FILE (or WALARCH_IDENTITY_FILE) where the archive's private key is kept; the database server holds only the public key.",
                ));
            }
            match read_back_small(dest, ids, &h, r, MAX_HISTORY_TEXT) {
                Ok(b) => b,
                Err(ReadFailure::Store(e)) => return Err(e),
                Err(f) => {
                    return Err(ArchiveError::new(
                        ErrorKind::Conflict,
                        format!("could not read \"{}\"", dest.location(&h.stored)),
                    )
                    .with_detail(format!(
                        "{}. Nothing was removed.",
                        f.describe(&h.stored, ids)
                    )))
                }
            }
        } else {
            let mut bytes = vec![];
            r.take(MAX_HISTORY_TEXT)
                .read_to_end(&mut bytes)
                .map_err(|err| {
                    ArchiveError::new(
                        ErrorKind::Io,
                        format!(
                            "could not read \"{}\": {}",
                            dest.location(&h.stored),
                            crate::support::error::os_message(&err)
                        ),
                    )
                })?;
            bytes
        };
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match w.kind {
            WalFileKind::Backup => {
                facts.backups.insert(e.name.clone(), text);
            }
            _ => {
                facts.histories.insert(w.timeline, text);
            }
        }
    }
    Ok(facts)
}

/// A base backup as its backup history file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The `.backup` file's name.
    pub name: String,
    pub start_timeline: u32,
    pub stop_timeline: u32,
    pub start_lsn: u64,
    pub stop_lsn: u64,
    /// Seconds since the Unix epoch: the stop time when its zone is known,
    /// else when the archive stored the file, else the stop time read as UTC.
    pub stopped: Option<i64>,
    /// The label of a backup taken through the target (`backups/LABEL/`).
    pub label: Option<String>,
}

impl Backup {
    /// The log/segment position of its start segment.
    fn start_position(&self) -> &str {
        position(&self.name)
    }

    /// For messages: the label of a backup taken through the target, with
    /// the backup history file name that stands for it.
    pub fn describe(&self) -> String {
        match &self.label {
            Some(l) => format!("{l} ({})", self.name),
            None => self.name.clone(),
        }
    }
}

/// The backup history file name of a backup starting at `lsn` on `tli`:
/// `TTTTTTTTLLLLLLLLSSSSSSSS.OOOOOOOO.backup`, as PostgreSQL names it.
fn backup_file_name(tli: u32, lsn: u64, seg_size: u64) -> String {
    format!(
        "{}.{:08X}.backup",
        crate::wal::walname::segment_file_name(tli, lsn / seg_size, seg_size),
        lsn % seg_size
    )
}

/// `2026-12-05T14:45:09Z` (fractions of a second and `+00:00` accepted) as
/// seconds since the Unix epoch.
fn parse_rfc3339_utc(text: &str) -> Option<i64> {
    let (date, time) = text.split_once('T')?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let time = time.split('.').next()?;
    let (local, offset) = parse_stop_time(&format!("{date} {time} UTC"))?;
    Some(local - offset?)
}

/// A backup taken through the target as retention sees it; `None` when
/// its `backup.json` lacks a usable start or stop.
fn stored_backup(s: &StoredBackup) -> Option<Backup> {
    let i = &s.info;
    let size = i.wal_segment_size;
    if !(size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)) {
        return None;
    }
    let start_lsn = parse_lsn(&i.start_lsn)?;
    let stop_lsn = parse_lsn(&i.stop_lsn)?;
    let json = crate::backup::object_name(&s.label, crate::backup::BACKUP_JSON);
    let stored = s
        .objects
        .iter()
        .find(|o| o.name == json)
        .and_then(|o| o.stored_at)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    Some(Backup {
        name: backup_file_name(i.start_timeline, start_lsn, size),
        start_timeline: i.start_timeline,
        stop_timeline: i.stop_timeline,
        start_lsn,
        stop_lsn,
        stopped: parse_rfc3339_utc(&i.stop_time).or(stored),
        label: Some(s.label.clone()),
    })
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `STOP TIME` as PostgreSQL writes it (`%Y-%m-%d %H:%M:%S %Z` in the
/// server's log_timezone): the local time as if UTC, and the zone's offset
/// in seconds when the zone says it (UTC, GMT, or a numeric offset such as
/// `+03` or `-0330`; an abbreviation such as CET is ambiguous).
fn parse_stop_time(text: &str) -> Option<(i64, Option<i64>)> {
    let mut parts = text.split_whitespace();
    let (date, time) = (parts.next()?, parts.next()?);
    let zone = parts.next().unwrap_or("");
    let num = |s: &str| s.parse::<i64>().ok();
    let d: Vec<i64> = date.split('-').map(num).collect::<Option<_>>()?;
    let t: Vec<i64> = time.split(':').map(num).collect::<Option<_>>()?;
    let (&[y, mo, da], &[h, mi, se]) = (&d[..], &t[..]) else {
        return None;
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 24 || mi > 59 || se > 60 {
        return None;
    }
    let local = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    let offset = match zone {
        "UTC" | "GMT" | "UCT" | "Z" | "+00" | "-00" => Some(0),
        z if z.starts_with(['+', '-']) && z.len() >= 3 => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let digits: String = z[1..].chars().filter(|c| *c != ':').collect();
            match (digits.len(), digits.chars().all(|c| c.is_ascii_digit())) {
                (2, true) => Some(sign * num(&digits)? * 3600),
                (4, true) => Some(sign * (num(&digits[..2])? * 3600 + num(&digits[2..])? * 60)),
                _ => None,
            }
        }
        _ => None,
    };
    Some((local, offset))
}

/// Parses the backup history file `name` (its text `text`, stored at
/// `stored_at`); `None` when it lacks its start or stop location.
pub fn parse_backup(name: &str, text: &str, stored_at: Option<SystemTime>) -> Option<Backup> {
    let w = WalFileName::parse(name).filter(|w| w.kind == WalFileKind::Backup)?;
    // PostgreSQL writes the label (free text, newlines allowed) between the
    // start fields and the stop fields: a field before it is the first of
    // its name, one after it the last, so a label cannot forge either.
    const AFTER_LABEL: [&str; 3] = ["START TIMELINE", "STOP TIME", "STOP TIMELINE"];
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(": ") {
            let k = k.trim();
            if AFTER_LABEL.contains(&k) {
                fields.insert(k, v.trim());
            } else {
                fields.entry(k).or_insert(v.trim());
            }
        }
    }
    let location = |k: &str| parse_lsn(fields.get(k)?.split_whitespace().next()?);
    let tli = |k: &str| fields.get(k).and_then(|v| v.parse::<u32>().ok());
    let start_lsn = location("START WAL LOCATION")?;
    let stop_lsn = location("STOP WAL LOCATION")?;
    let start_timeline = tli("START TIMELINE").unwrap_or(w.timeline);
    let stop_timeline = tli("STOP TIMELINE").unwrap_or(start_timeline);
    let stored = stored_at
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    let stopped = match fields.get("STOP TIME").and_then(|t| parse_stop_time(t)) {
        Some((local, Some(offset))) => Some(local - offset),
        Some((local, None)) => stored.or(Some(local)),
        None => stored,
    };
    Some(Backup {
        name: name.to_string(),
        start_timeline,
        stop_timeline,
        start_lsn,
        stop_lsn,
        stopped,
        label: None,
    })
}

/// The archive's timeline histories, by timeline; timeline 1 has none.
struct Histories(BTreeMap<u32, Timelines>);

impl Histories {
    fn new(facts: &Facts) -> Histories {
        let mut m: BTreeMap<u32, Timelines> = facts
            .histories
            .iter()
            .filter_map(|(&t, text)| Some((t, Timelines::parse(t, text)?)))
            .collect();
        m.insert(1, Timelines::single(1));
        Histories(m)
    }

    /// Whether a restore that begins on `root` at `from` may go on to timeline
    /// `tli`: it is `root`, or its history leaves `root` at or after `from`.
    /// A timeline whose history is unknown may, if it is a later one.
    fn followable(&self, root: u32, from: u64, tli: u32) -> bool {
        if tli == root {
            return true;
        }
        match self.0.get(&tli) {
            Some(h) => h.leaves(root).is_some_and(|at| at >= from),
            None => tli > root,
        }
    }

    /// Whether backup `a`'s stop record is part of the history that leads to
    /// `b`'s start: `a` is older, whatever the clocks said.
    fn precedes(&self, a: &Backup, b: &Backup) -> bool {
        if a.name == b.name {
            return false;
        }
        if a.stop_timeline == b.start_timeline {
            return a.stop_lsn <= b.start_lsn;
        }
        self.0
            .get(&b.start_timeline)
            .and_then(|h| h.leaves(a.stop_timeline))
            .is_some_and(|at| a.stop_lsn <= at)
    }
}

/// The backups the archive holds, newest first in its history: a backup
/// that precedes another in the timeline history is older; otherwise the
/// later stop time is the newer (then the later position, then the name).
pub fn backups_newest_first(entries: &[Entry], facts: &Facts) -> Result<Vec<Backup>, ArchiveError> {
    let histories = Histories::new(facts);
    backups_ordered(entries, facts, &histories)
}

fn backups_ordered(
    entries: &[Entry],
    facts: &Facts,
    histories: &Histories,
) -> Result<Vec<Backup>, ArchiveError> {
    let mut left = vec![];
    for e in entries {
        if WalFileName::parse(&e.name).is_none_or(|w| w.kind != WalFileKind::Backup) {
            continue;
        }
        let b = facts
            .backups
            .get(&e.name)
            .and_then(|text| parse_backup(&e.name, text, e.stored_at))
            .ok_or_else(|| {
                refused(
                    &format!("could not read backup history file \"{}\", so nothing is removed", e.name),
                    "Retention reads the start and stop locations of each base backup from its backup history file; this one is missing them.".into(),
                )
                .with_hint("Check the file; if it does not belong to the archive, move it out of the archive.")
            })?;
        // The `.backup` file of a backup taken through the target that has
        // no backup.json (in progress, failed, aborted): not a backup.
        if claimed_by_incomplete(facts, &b).is_some() {
            continue;
        }
        left.push(b);
    }
    // Backups taken through the target: the same as their `.backup` file
    // when PostgreSQL archived one (same start timeline and location).
    if let Some(u) = facts.stored.unreadable.first() {
        return Err(refused(
            &format!(
                "could not read \"{}\", so nothing is removed",
                crate::backup::object_name(&u.label, crate::backup::BACKUP_JSON)
            ),
            format!("Retention reads the start and stop of each base backup taken through the walarch target from its backup.json: {}.", u.error),
        )
        .with_hint("Check the file; if the backup does not belong to the archive, move its folder out of the archive."));
    }
    for s in &facts.stored.complete {
        let b = stored_backup(s).ok_or_else(|| {
            refused(
                &format!(
                    "could not read \"{}\", so nothing is removed",
                    crate::backup::object_name(&s.label, crate::backup::BACKUP_JSON)
                ),
                "Its start or stop location or its WAL segment size is not valid.".into(),
            )
        })?;
        match left
            .iter_mut()
            .find(|o| o.name == b.name && o.label.is_none())
        {
            Some(o) => o.label = b.label,
            None => left.push(b),
        }
    }
    let older = |a: &Backup, b: &Backup| {
        a.stopped
            .cmp(&b.stopped)
            .then(a.start_position().cmp(b.start_position()))
            .then(a.start_timeline.cmp(&b.start_timeline))
            .then(a.name.cmp(&b.name))
    };
    // Oldest first: of the backups that no remaining one precedes, the one
    // with the oldest stop time (all of them if the history is circular,
    // which only a damaged archive could make).
    let mut ordered = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let free: Vec<usize> = (0..left.len())
            .filter(|&i| !left.iter().any(|o| histories.precedes(o, &left[i])))
            .collect();
        let pool = if free.is_empty() {
            (0..left.len()).collect()
        } else {
            free
        };
        let i = pool
            .into_iter()
            .min_by(|&a, &b| older(&left[a], &left[b]))
            .unwrap_or(0);
        ordered.push(left.swap_remove(i));
    }
    ordered.reverse();
    Ok(ordered)
}

/// The incomplete backup taken through the target (a label without
/// `backup.json`) that the backup history file `b` stands for: same start
/// as its `backup.started` records, and no complete backup with that start.
/// PostgreSQL archives the `.backup` file at the backup's stop, before
/// walarch stores the manifest and `backup.json`: until then, and forever
/// when the backup failed after its stop, the file describes a backup that
/// cannot be restored.
fn claimed_by_incomplete<'a>(facts: &'a Facts, b: &Backup) -> Option<&'a str> {
    let complete = facts.stored.complete.iter().any(|s| {
        s.info.start_timeline == b.start_timeline
            && parse_lsn(&s.info.start_lsn) == Some(b.start_lsn)
    });
    if complete {
        return None;
    }
    facts
        .stored
        .incomplete
        .iter()
        .find(|i| {
            i.start
                .is_some_and(|c| c.matches(b.start_lsn, b.start_timeline))
        })
        .map(|i| i.label.as_str())
}

/// The backup history files that stand for incomplete backups taken
/// through the target: (label, file name).
fn claimed_history_files(entries: &[Entry], facts: &Facts) -> Vec<(String, String)> {
    entries
        .iter()
        .filter_map(|e| {
            let text = facts.backups.get(&e.name)?;
            let b = parse_backup(&e.name, text, e.stored_at)?;
            let label = claimed_by_incomplete(facts, &b)?;
            Some((label.to_string(), e.name.clone()))
        })
        .collect()
}

/// The log/segment part of a segment, `.partial` or `.backup` name
/// (`XLogFileName` without the timeline): what pg_archivecleanup compares.
fn position(name: &str) -> &str {
    name.get(8..24).unwrap_or_default()
}

/// Oldest first: by position, then timeline, then segment before its
/// `.partial` and `.backup` files.
fn wal_order(a: &(String, WalFileName), b: &(String, WalFileName)) -> Ordering {
    let rank = |k: WalFileKind| match k {
        WalFileKind::Segment => 0,
        WalFileKind::Partial => 1,
        WalFileKind::Backup => 2,
        WalFileKind::History => 3,
    };
    position(&a.0)
        .cmp(position(&b.0))
        .then(a.1.timeline.cmp(&b.1.timeline))
        .then(rank(a.1.kind).cmp(&rank(b.1.kind)))
        .then(a.0.cmp(&b.0))
}

fn refused(message: &str, detail: String) -> ArchiveError {
    ArchiveError::new(ErrorKind::Configuration, message).with_detail(detail)
}

/// Whether restoring `b` may need the file `name` (on timeline `tli`): from
/// its start segment on, on its timelines and those a restore may follow.
fn needed_by(histories: &Histories, b: &Backup, name: &str, tli: u32) -> bool {
    position(name) >= b.start_position()
        && [b.start_timeline, b.stop_timeline]
            .iter()
            .any(|&root| histories.followable(root, b.start_lsn, tli))
}

/// The latest timeline in the archive: what `recovery_target_timeline =
/// latest` picks (the highest with a history file), or the highest with WAL.
fn latest_timeline(wal: &[(String, WalFileName)], facts: &Facts) -> u32 {
    let with_wal = wal.iter().map(|(_, w)| w.timeline).max().unwrap_or(1);
    facts
        .histories
        .keys()
        .copied()
        .max()
        .unwrap_or(1)
        .max(with_wal)
}

/// Whether to refuse `--before` and `--older-than` when the archive holds no
/// base backup (the default) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupCheck {
    Required,
    /// The backups are kept elsewhere: the rule applies as given.
    Skipped,
}

/// The plan for `rule` over the archive's `entries` (WAL file names as the
/// archive holds them, whatever their form, and anything else found there)
/// and the `facts` read from its history files. `now` is the time
/// `OlderThan` counts back from.
pub fn plan(
    entries: &[Entry],
    facts: &Facts,
    rule: &Rule,
    now: SystemTime,
    check: BackupCheck,
) -> Result<Plan, ArchiveError> {
    let mut wal: Vec<(String, WalFileName)> = Vec::new();
    let mut foreign = Vec::new();
    for e in entries {
        // The backups taken through the target: read from `facts.stored`.
        if e.name == BACKUPS_DIR || e.name.starts_with(&format!("{BACKUPS_DIR}/")) {
            continue;
        }
        match WalFileName::parse(&e.name) {
            // Never removed: recovery needs every timeline's history.
            Some(w) if w.kind == WalFileKind::History => {}
            Some(w) => wal.push((e.name.clone(), w)),
            None => foreign.push(e.name.clone()),
        }
    }
    wal.sort_by(wal_order);
    if let Rule::Before(first) = rule {
        if WalFileName::parse(first).is_none_or(|w| w.kind != WalFileKind::Segment) {
            return Err(ArchiveError::new(
                ErrorKind::InvalidName,
                format!("\"{first}\" is not a WAL segment file name"),
            )
            .with_hint("Give a name such as 000000010000000000000010."));
        }
    }
    if *rule == Rule::KeepBackups(0) {
        return Err(refused(
            "--keep-backups must be at least 1",
            "Keeping no base backup would leave nothing to recover from.".into(),
        ));
    }
    let histories = Histories::new(facts);
    let backups = backups_ordered(entries, facts, &histories)?;
    let latest = latest_timeline(&wal, facts);
    // The newest backup a restore to the latest timeline can start from.
    let of_latest = backups.iter().find(|b| {
        [b.start_timeline, b.stop_timeline]
            .iter()
            .any(|&root| histories.followable(root, b.start_lsn, latest))
    });

    // Candidates for removal by the rule alone (`None`: every WAL file), and
    // the backups whose WAL stays whatever the rule says.
    let (cut, mut why, mut kept): (Option<String>, String, Vec<&Backup>) = match rule {
        Rule::KeepBackups(n) => {
            if backups.is_empty() {
                return Err(refused(
                    "no base backup is recorded in the archive, so nothing is removed",
                    "--keep-backups counts the backup history files (.backup) that pg_basebackup and pg_backup_stop() archive, and the backups taken through the walarch target (backups/LABEL/backup.json); the archive holds none.".into(),
                )
                .with_hint("Take a base backup first, or use --before to name the first WAL file to keep."));
            }
            let kept: Vec<&Backup> = backups.iter().take(*n as usize).collect();
            let names: Vec<String> = kept.iter().map(|b| b.describe()).collect();
            (
                None,
                format!(
                    "not needed by the {} most recent base backup(s) ({})",
                    kept.len(),
                    names.join(", ")
                ),
                kept,
            )
        }
        Rule::Before(first) => (
            Some(first.clone()),
            format!("before {first}, as asked"),
            vec![],
        ),
        Rule::OlderThan(age) => {
            let threshold = now.checked_sub(*age).unwrap_or(SystemTime::UNIX_EPOCH);
            // A file whose time is unknown counts as recent: kept.
            let recent = entries
                .iter()
                .filter(|e| e.stored_at.is_none_or(|t| t >= threshold))
                .filter_map(|e| {
                    let w = WalFileName::parse(&e.name)?;
                    (w.kind == WalFileKind::Segment).then(|| e.name.clone())
                })
                .min_by(|a, b| position(a).cmp(position(b)));
            let why = format!(
                "archived more than {} ago",
                crate::wal::time::describe(*age)
            );
            // None: every segment is older, all of them go.
            (recent, why, vec![])
        }
    };
    if !matches!(rule, Rule::KeepBackups(_)) && backups.is_empty() && check == BackupCheck::Required
    {
        let what = match rule {
            Rule::Before(_) => "--before",
            _ => "--older-than",
        };
        return Err(refused(
            "no base backup is recorded in the archive, so nothing is removed",
            format!(
                "{what} removes WAL only while a base backup (a .backup history file, archived by pg_basebackup and pg_backup_stop()) shows what is still needed; the archive holds none, and without one its WAL may be the only copy of the data."
            ),
        )
        .with_hint(
            "If this archive's base backups are kept elsewhere, run walarch expire with --no-backup-check.",
        ));
    }
    // Whatever the rule, the newest backup stays restorable, and so does the
    // newest one of the latest timeline.
    let mut spared = vec![];
    for b in backups.first().into_iter().chain(of_latest) {
        if !kept.iter().any(|k| k.name == b.name && k.label == b.label) {
            kept.push(b);
            spared.push(b.describe());
        }
    }
    let needed = |(n, w): &(String, WalFileName)| {
        kept.iter().any(|b| needed_by(&histories, b, n, w.timeline))
    };
    let by_rule = |(n, _): &(String, WalFileName)| {
        matches!(rule, Rule::KeepBackups(_))
            || cut.as_deref().is_none_or(|c| position(n) < position(c))
    };
    let mut kept_back = false;
    let mut removals = vec![];
    for x in &wal {
        if !by_rule(x) {
            continue;
        }
        if needed(x) {
            kept_back = true;
        } else {
            removals.push(x.0.clone());
        }
    }
    if kept_back && !matches!(rule, Rule::KeepBackups(_)) {
        why = format!(
            "{why}, except the WAL that the newest base backup{} ({}) need{}",
            if spared.len() > 1 { "s" } else { "" },
            spared.join(", "),
            if spared.len() > 1 { "" } else { "s" },
        );
    } else if matches!(rule, Rule::KeepBackups(_)) && !spared.is_empty() {
        why = format!(
            "{why}, nor by {} (the newest base backup of the latest timeline, {latest})",
            spared.join(", ")
        );
    }
    // The oldest position still holding WAL, for the summary.
    let removed: BTreeSet<&str> = removals.iter().map(String::as_str).collect();
    let oldest_kept = wal
        .iter()
        .filter(|(n, w)| w.kind == WalFileKind::Segment && !removed.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .next();
    // Backups taken through the target: the objects of those the rule
    // expires, and of abandoned incomplete ones, go before any WAL.
    let claimed = claimed_history_files(entries, facts);
    let mut decisions = backup_objects(&backups, &kept, facts, &claimed, rule, cut.as_deref(), now);
    // A `.backup` file removed with its incomplete backup goes there, once.
    removals.retain(|n| {
        !decisions
            .iter()
            .any(|d| d.action == Action::Remove && &d.walfile == n)
    });
    let left_objects: Vec<Decision> = decisions
        .iter()
        .filter(|d| d.action == Action::Leave)
        .cloned()
        .collect();
    decisions.retain(|d| d.action == Action::Remove);
    decisions.extend(removals.into_iter().map(|n| Decision {
        walfile: n,
        action: Action::Remove,
        reason: why.clone(),
    }));
    decisions.extend(leave(foreign));
    decisions.extend(left_objects);
    Ok(Plan {
        cut: oldest_kept,
        why,
        decisions,
    })
}

/// What happens to the objects under `backups/`: a backup taken through the
/// target that the rule expires (not `kept`; under `--before` and
/// `--older-than`, one whose start segment is cut) loses them all,
/// `backup.json` first; an incomplete backup untouched for
/// `INCOMPLETE_AFTER` too, unless a backup is in progress, together with the
/// `.backup` file PostgreSQL archived for it (`claimed`); other incomplete
/// backups and stray objects are left, and reported.
///
/// The `.backup` file of an incomplete backup goes *before* its objects:
/// what tells that the file stands for no restorable backup is the label's
/// `backup.started`, so the file must never outlive it. An expiry stopped
/// after the file leaves an incomplete label, removed by the next one; one
/// stopped after `backup.started` but before the file would leave a
/// `.backup` file that counts as the newest backup, and a later
/// `--keep-backups` would remove the WAL of the real ones.
fn backup_objects(
    backups: &[Backup],
    kept: &[&Backup],
    facts: &Facts,
    claimed: &[(String, String)],
    rule: &Rule,
    cut: Option<&str>,
    now: SystemTime,
) -> Vec<Decision> {
    let remove = |label: &str, objects, reason: &str| {
        removal_order(label, objects)
            .into_iter()
            .map(|walfile| Decision {
                walfile,
                action: Action::Remove,
                reason: reason.to_string(),
            })
            .collect::<Vec<_>>()
    };
    let mut out = vec![];
    // Oldest first.
    for b in backups.iter().rev() {
        let Some(label) = &b.label else {
            continue;
        };
        if kept.iter().any(|k| k.name == b.name && k.label == b.label) {
            continue;
        }
        let reason = match rule {
            Rule::KeepBackups(n) => {
                format!("base backup {label} is not among the {n} most recent base backup(s)")
            }
            _ if cut.is_none_or(|c| b.start_position() < position(c)) => format!(
                "base backup {label} starts in WAL that this rule removes ({})",
                b.name
            ),
            _ => continue,
        };
        if let Some(s) = facts.stored.complete.iter().find(|s| &s.label == label) {
            out.extend(remove(label, &s.objects, &reason));
        }
    }
    let age = crate::wal::time::describe(INCOMPLETE_AFTER);
    let busy = facts.stored.in_progress(now);
    for i in &facts.stored.incomplete {
        let folder = format!("{BACKUPS_DIR}/{}/", i.label);
        let left = |reason: String| Decision {
            walfile: folder.clone(),
            action: Action::Leave,
            reason,
        };
        if !i.abandoned(now) {
            out.push(left(format!(
                "incomplete base backup (no backup.json) changed less than {age} ago: it may be in progress, left alone"
            )));
        } else if let Some(b) = busy {
            out.push(left(format!(
                "incomplete base backup (no backup.json), left alone while a base backup may be in progress ({})",
                crate::backup::object_name(&b.label, crate::backup::STARTED)
            )));
        } else {
            for (_, name) in claimed.iter().filter(|(l, _)| *l == i.label) {
                out.push(Decision {
                    walfile: name.clone(),
                    action: Action::Remove,
                    reason: format!(
                        "backup history file of incomplete base backup {} (no backup.json): it describes no restorable backup",
                        i.label
                    ),
                });
            }
            out.extend(remove(
                &i.label,
                &i.objects,
                &format!(
                    "incomplete base backup {} (no backup.json), untouched for more than {age}",
                    i.label
                ),
            ));
        }
    }
    out.extend(facts.stored.stray.iter().map(|o| Decision {
        walfile: o.name.clone(),
        action: Action::Leave,
        reason: "not in a base backup's folder: left alone".into(),
    }));
    out
}

fn leave(names: Vec<String>) -> Vec<Decision> {
    names
        .into_iter()
        .map(|n| Decision {
            reason: if crate::archiving::budget::Marker::parse(&n).is_some() {
                "marker of WAL dropped by walarch.max_backlog: kept, it explains a gap".into()
            } else {
                "not a WAL file name: left alone".into()
            },
            walfile: n,
            action: Action::Leave,
        })
        .collect()
}

/// `archive_cleanup_command`: the files that logically precede
/// `restart_file` (`%r`), as pg_archivecleanup removes them: segments and
/// `.partial` files on every timeline, `.backup` files too when asked.
pub fn plan_cleanup(
    entries: &[Entry],
    restart_file: &str,
    backup_history: bool,
) -> Result<Plan, ArchiveError> {
    // pg_archivecleanup accepts the segment itself or its .partial/.backup.
    let w = WalFileName::parse(restart_file)
        .filter(|w| w.kind != WalFileKind::History)
        .ok_or_else(|| {
            ArchiveError::new(
                ErrorKind::InvalidName,
                format!("\"{restart_file}\" is not a WAL file name"),
            )
            .with_hint("archive_cleanup_command passes it as %r.")
        })?;
    let cut = restart_file[..24].to_string();
    let why = format!(
        "before {cut}, the oldest file the standby still needs (timeline {})",
        w.timeline
    );
    let mut wal: Vec<(String, WalFileName)> = entries
        .iter()
        .filter_map(|e| Some((e.name.clone(), WalFileName::parse(&e.name)?)))
        .filter(|(_, w)| match w.kind {
            WalFileKind::Segment | WalFileKind::Partial => true,
            WalFileKind::Backup => backup_history,
            WalFileKind::History => false,
        })
        .filter(|(n, _)| position(n) < position(&cut))
        .collect();
    wal.sort_by(wal_order);
    Ok(Plan {
        decisions: wal
            .into_iter()
            .map(|(n, _)| Decision {
                walfile: n,
                action: Action::Remove,
                reason: why.clone(),
            })
            .collect(),
        cut: Some(cut),
        why,
    })
}

/// Carries out `plan` on `dest`, oldest first, calling `done` after each
/// removal. Stops at the first failure: what was removed before it is a
/// prefix of the archive, so it stays without a hole; the objects of
/// backups go first, each backup's `backup.json` before its other objects.
pub fn execute(
    dest: &dyn Destination,
    plan: &Plan,
    mut done: impl FnMut(&Decision),
) -> Result<usize, ArchiveError> {
    let mut n = 0;
    for d in plan.removals() {
        if d.is_backup_object() {
            dest.remove_object(&d.walfile)?;
        } else {
            dest.remove(&d.walfile)?;
        }
        n += 1;
        done(d);
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn entries(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .map(|n| Entry {
                name: n.to_string(),
                stored_at: None,
            })
            .collect()
    }

    fn removed(p: &Plan) -> Vec<&str> {
        p.removals().map(|d| d.walfile.as_str()).collect()
    }

    /// The text PostgreSQL writes for a backup that starts at the offset of
    /// its file name and stops 0x100 later, `stopped` seconds after T0.
    fn backup_text(name: &str, stopped: u64) -> String {
        let (tli, log, seg) = (&name[..8], &name[8..16], &name[16..24]);
        let off = u64::from_str_radix(&name[25..33], 16).unwrap();
        let seg = u64::from_str_radix(seg, 16).unwrap();
        let log = u64::from_str_radix(log, 16).unwrap();
        let tli = u32::from_str_radix(tli, 16).unwrap();
        let start = (seg << 24) + off;
        let days = (T0 + stopped) as i64 / 86_400;
        let secs = (T0 + stopped) % 86_400;
        // 1970-01-01 + days, by counting back with days_from_civil.
        let (mut y, mut m) = (1970, 1);
        while days_from_civil(y + 1, 1, 1) <= days {
            y += 1;
        }
        while m < 12 && days_from_civil(y, m + 1, 1) <= days {
            m += 1;
        }
        let d = days - days_from_civil(y, m, 1) + 1;
        format!(
            "START WAL LOCATION: {log:X}/{start:X} (file {})\nSTOP WAL LOCATION: {log:X}/{:X} (file {})\nCHECKPOINT LOCATION: {log:X}/{:X}\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2027-01-01 00:00:00 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: {tli}\nSTOP TIME: {y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC\nSTOP TIMELINE: {tli}\n",
            &name[..24],
            start + 0x100,
            &name[..24],
            start + 0x60,
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }

    /// Facts for backups (name, seconds after T0 it stopped) and histories.
    fn facts(backups: &[(&str, u64)], histories: &[(u32, &str)]) -> Facts {
        Facts {
            backups: backups
                .iter()
                .map(|&(n, t)| (n.to_string(), backup_text(n, t)))
                .collect(),
            histories: histories.iter().map(|&(t, h)| (t, h.to_string())).collect(),
            stored: Catalog::default(),
        }
    }

    fn run(e: &[Entry], f: &Facts, rule: Rule) -> Result<Plan, ArchiveError> {
        plan(e, f, &rule, at(T0 + 86_400), BackupCheck::Required)
    }

    fn names_of(order: &[Backup]) -> Vec<&str> {
        order.iter().map(|b| b.name.as_str()).collect()
    }

    /// Timeline 1 up to segment 8, a switch to timeline 2 in segment 6 (TL1's
    /// 6 is a .partial), three backups at 2, 4 and 7, in that order.
    fn two_timelines() -> (Vec<Entry>, Facts) {
        let e = entries(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000004.00000060.backup",
            "000000010000000000000005",
            "000000010000000000000006.partial",
            "00000002.history",
            "000000020000000000000006",
            "000000020000000000000007",
            "000000020000000000000007.00000028.backup",
            "000000020000000000000008",
            "README.txt",
            "00000001000000000000000G",
        ]);
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 100),
                ("000000010000000000000004.00000060.backup", 200),
                ("000000020000000000000007.00000028.backup", 300),
            ],
            &[(2, "1\t0/6000100\tno recovery target specified\n")],
        );
        (e, f)
    }

    #[test]
    fn parses_backup_history_files() {
        let text = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-05 11:14:02 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\nSTOP TIME: 2026-12-05 11:14:03 UTC\nSTOP TIMELINE: 1\n";
        let b = parse_backup("000000010000000000000002.00000028.backup", text, None).unwrap();
        assert_eq!((b.start_lsn, b.stop_lsn), (0x2000028, 0x2000100));
        assert_eq!((b.start_timeline, b.stop_timeline), (1, 1));
        // date -u -d '2026-12-05 11:14:03' +%s
        assert_eq!(b.stopped, Some(1_796_469_243));
        let zoned = text.replace("11:14:03 UTC", "14:14:03 +03");
        let b = parse_backup("000000010000000000000002.00000028.backup", &zoned, None).unwrap();
        assert_eq!(b.stopped, Some(1_796_469_243));
        let zoned = text.replace("11:14:03 UTC", "16:44:03 +0530");
        let b = parse_backup("000000010000000000000002.00000028.backup", &zoned, None).unwrap();
        assert_eq!(b.stopped, Some(1_796_469_243));
        // An abbreviation is ambiguous: when the archive stored it counts.
        let zoned = text.replace("11:14:03 UTC", "12:14:03 CET");
        let b = parse_backup(
            "000000010000000000000002.00000028.backup",
            &zoned,
            Some(at(1_796_469_250)),
        )
        .unwrap();
        assert_eq!(b.stopped, Some(1_796_469_250));
        // A label cannot forge the fields around it.
        let forged = text.replace(
            "LABEL: pg_basebackup base backup\n",
            "LABEL: x\nSTART WAL LOCATION: 9/0 (file 000000010000000900000000)\nSTOP TIME: 2099-01-01 00:00:00 UTC\nSTOP TIMELINE: 99\n",
        );
        let b = parse_backup("000000010000000000000002.00000028.backup", &forged, None).unwrap();
        assert_eq!((b.start_lsn, b.stop_timeline), (0x2000028, 1));
        assert_eq!(b.stopped, Some(1_796_469_243));
        assert_eq!(
            parse_backup(
                "000000010000000000000002.00000028.backup",
                "LABEL: x\n",
                None
            ),
            None
        );
    }

    #[test]
    fn orders_backups_by_history_not_position() {
        // A backup at 6 on timeline 1, then a recovery from the backup at 2
        // to 0/3000100 (timeline 2, back in position) and a backup at 4 on
        // timeline 2: that one is the newest.
        let e = entries(&[
            "000000010000000000000002.00000028.backup",
            "000000010000000000000006.00000028.backup",
            "000000020000000000000004.00000028.backup",
        ]);
        let hist = [(2, "1\t0/3000100\tbefore the mistake\n")];
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 100),
                ("000000010000000000000006.00000028.backup", 200),
                ("000000020000000000000004.00000028.backup", 300),
            ],
            &hist,
        );
        assert_eq!(
            names_of(&backups_newest_first(&e, &f).unwrap()),
            [
                "000000020000000000000004.00000028.backup",
                "000000010000000000000006.00000028.backup",
                "000000010000000000000002.00000028.backup",
            ]
        );
        // A clock that went back: the backup at 2 stopped before timeline 2
        // left timeline 1 and before the backup at 6 began on timeline 1, so
        // it is the oldest whatever its time.
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 900),
                ("000000010000000000000006.00000028.backup", 200),
                ("000000020000000000000004.00000028.backup", 300),
            ],
            &hist,
        );
        assert_eq!(
            names_of(&backups_newest_first(&e, &f).unwrap()),
            [
                "000000020000000000000004.00000028.backup",
                "000000010000000000000006.00000028.backup",
                "000000010000000000000002.00000028.backup",
            ]
        );
        // The backup at 6 is on another branch than timeline 2: its time
        // alone places it.
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 100),
                ("000000010000000000000006.00000028.backup", 400),
                ("000000020000000000000004.00000028.backup", 300),
            ],
            &hist,
        );
        assert_eq!(
            names_of(&backups_newest_first(&e, &f).unwrap())[0],
            "000000010000000000000006.00000028.backup"
        );
        // On one timeline, the position wins over a wrong clock.
        let e = entries(&[
            "000000010000000000000002.00000028.backup",
            "000000010000000000000006.00000028.backup",
        ]);
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 500),
                ("000000010000000000000006.00000028.backup", 200),
            ],
            &[],
        );
        assert_eq!(
            names_of(&backups_newest_first(&e, &f).unwrap())[0],
            "000000010000000000000006.00000028.backup"
        );
        // A backup history file that cannot be read: nothing is decided.
        let mut f = f;
        f.backups.insert(
            "000000010000000000000002.00000028.backup".into(),
            "garbage".into(),
        );
        let err = backups_newest_first(&e, &f).unwrap_err();
        assert!(
            err.message.contains("could not read backup history file"),
            "{err}"
        );
        assert!(run(&e, &f, Rule::KeepBackups(1)).is_err());
    }

    #[test]
    fn keep_backups_keeps_what_each_kept_backup_needs() {
        let (e, f) = two_timelines();
        let p = run(&e, &f, Rule::KeepBackups(2)).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000010000000000000004"));
        assert_eq!(
            removed(&p),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
            ]
        );
        assert!(
            p.why.contains("000000010000000000000004.00000060.backup"),
            "{}",
            p.why
        );
        // The unparsable names are reported, never removed.
        let left: Vec<_> = p
            .decisions
            .iter()
            .filter(|d| d.action == Action::Leave)
            .map(|d| d.walfile.as_str())
            .collect();
        assert_eq!(left, ["README.txt", "00000001000000000000000G"]);

        let p = run(&e, &f, Rule::KeepBackups(1)).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000020000000000000007"));
        // Both timelines before 7 go, the .partial with them; the history
        // file stays.
        let r = removed(&p);
        assert_eq!(r.len(), 9, "{r:?}");
        assert!(r.contains(&"000000010000000000000006.partial"));
        assert!(r.contains(&"000000020000000000000006"));
        assert!(!r.iter().any(|n| n.ends_with(".history")));
        // Oldest first: positions never go down.
        let pos: Vec<_> = r.iter().map(|n| &n[8..24]).collect();
        assert!(pos.windows(2).all(|w| w[0] <= w[1]), "{r:?}");

        // More backups kept than there are: the WAL before the oldest goes.
        let p = run(&e, &f, Rule::KeepBackups(9)).unwrap();
        assert_eq!(removed(&p), ["000000010000000000000001"]);
    }

    /// Timeline 1 to segment 8 with backups at 2 and 6; a recovery from the
    /// backup at 2 to 0/3000100 made timeline 2 (segments 3 to 6), with a
    /// backup at 4: the fork goes back in position.
    fn fork_back() -> (Vec<Entry>, Facts) {
        let e = entries(&[
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000006",
            "000000010000000000000006.00000028.backup",
            "000000010000000000000007",
            "000000010000000000000008",
            "00000002.history",
            "000000020000000000000003",
            "000000020000000000000004",
            "000000020000000000000004.00000028.backup",
            "000000020000000000000005",
            "000000020000000000000006",
        ]);
        let f = facts(
            &[
                ("000000010000000000000002.00000028.backup", 100),
                ("000000010000000000000006.00000028.backup", 200),
                ("000000020000000000000004.00000028.backup", 300),
            ],
            &[(2, "1\t0/3000100\tbefore 2027-01-01 00:00:00+00\n")],
        );
        (e, f)
    }

    #[test]
    fn keep_backups_after_a_fork_back_in_position() {
        let (e, f) = fork_back();
        let p = run(&e, &f, Rule::KeepBackups(1)).unwrap();
        let r = removed(&p);
        // The newest backup (timeline 2, at 4) keeps its WAL: everything of
        // timeline 2 from 4 on. Timeline 1 after the fork is another branch.
        for kept in [
            "000000020000000000000004",
            "000000020000000000000004.00000028.backup",
            "000000020000000000000005",
            "000000020000000000000006",
        ] {
            assert!(!r.contains(&kept), "{kept} removed: {r:?}");
        }
        assert_eq!(r.len(), 11, "{r:?}");
        assert!(r.contains(&"000000010000000000000008"));
        assert!(r.contains(&"000000020000000000000003"));

        // Two: the backup at 6 on timeline 1 keeps timeline 1 from 6 on, but
        // not timeline 2, which left timeline 1 before it began.
        let p = run(&e, &f, Rule::KeepBackups(2)).unwrap();
        assert_eq!(
            removed(&p),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "000000020000000000000003",
                "000000010000000000000004",
                "000000010000000000000005",
            ]
        );
        // Three: the backup at 2 needs both timelines from 2 on.
        let p = run(&e, &f, Rule::KeepBackups(3)).unwrap();
        assert_eq!(removed(&p), ["000000010000000000000001"]);
    }

    #[test]
    fn a_backup_on_an_abandoned_timeline_and_the_latest_timeline() {
        // Timeline 2 left timeline 1 at 0/4000000 and had a backup at 5;
        // then a recovery from the backup at 2 went to 0/3000000 on timeline
        // 1 again (timeline 3), abandoning timeline 2. No backup on 3 yet.
        let mut names = vec![
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "000000010000000000000003",
            "00000002.history",
            "000000020000000000000004",
            "000000020000000000000005",
            "000000020000000000000005.00000028.backup",
            "000000020000000000000006",
            "00000003.history",
            "000000030000000000000003",
            "000000030000000000000004",
            "000000030000000000000005",
            "000000030000000000000006",
        ];
        let hist = [(2, "1\t0/4000000\tr\n"), (3, "1\t0/3000000\tr\n")];
        let mut backups = vec![
            ("000000010000000000000002.00000028.backup", 100),
            ("000000020000000000000005.00000028.backup", 200),
        ];
        let f = facts(&backups, &hist);
        // The newest backup is on timeline 2; but the latest timeline, 3,
        // can only be restored from the backup at 2, whose WAL is kept too:
        // removing it would leave timeline 3's data without any backup.
        let p = run(&entries(&names), &f, Rule::KeepBackups(1)).unwrap();
        assert_eq!(removed(&p), ["000000010000000000000001"]);
        assert!(p.why.contains("latest timeline"), "{}", p.why);

        // Once timeline 3 has its own backup (at 5), it is the newest: the
        // abandoned timeline 2 and the old timeline 1 go.
        names.extend(["000000030000000000000005.00000028.backup"]);
        backups.push(("000000030000000000000005.00000028.backup", 300));
        let f = facts(&backups, &hist);
        let e = entries(&names);
        let p = run(&e, &f, Rule::KeepBackups(1)).unwrap();
        let mut r = removed(&p);
        r.sort();
        assert_eq!(
            r,
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000002.00000028.backup",
                "000000010000000000000003",
                "000000020000000000000004",
                "000000020000000000000005",
                "000000020000000000000005.00000028.backup",
                "000000020000000000000006",
                "000000030000000000000003",
                "000000030000000000000004",
            ]
        );
        // Two: the backup on the abandoned timeline keeps its own WAL only.
        let p = run(&e, &f, Rule::KeepBackups(2)).unwrap();
        let r = removed(&p);
        assert_eq!(r.len(), 7, "{r:?}");
        assert!(!r.contains(&"000000020000000000000005"));
        assert!(!r.contains(&"000000020000000000000006"));
        assert!(r.contains(&"000000020000000000000004"));
    }

    #[test]
    fn a_timeline_without_its_history_file_is_kept_as_a_descendant() {
        let e = entries(&[
            "000000010000000000000001",
            "000000010000000000000004.00000028.backup",
            "000000010000000000000004",
            "000000020000000000000003",
            "000000020000000000000004",
        ]);
        let f = facts(&[("000000010000000000000004.00000028.backup", 100)], &[]);
        let p = run(&e, &f, Rule::KeepBackups(1)).unwrap();
        assert_eq!(
            removed(&p),
            ["000000010000000000000001", "000000020000000000000003"]
        );
    }

    #[test]
    fn no_backup_refuses_every_rule_unless_told() {
        let mut e = entries(&["000000010000000000000001", "000000010000000000000002"]);
        for x in &mut e {
            x.stored_at = Some(at(T0));
        }
        let f = Facts::default();
        let err = run(&e, &f, Rule::KeepBackups(1)).unwrap_err();
        assert!(err.message.contains("no base backup"), "{err}");
        assert!(err.hint.is_some());
        assert!(run(&e, &f, Rule::KeepBackups(0)).is_err());
        for (rule, what) in [
            (Rule::OlderThan(Duration::ZERO), "--older-than"),
            (Rule::Before("000000010000000000000002".into()), "--before"),
        ] {
            let err = run(&e, &f, rule.clone()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Configuration);
            assert!(err.message.contains("no base backup"), "{err}");
            assert!(err.detail.as_deref().unwrap().contains(what), "{err:?}");
            assert!(err.hint.as_deref().unwrap().contains("--no-backup-check"));
            let p = plan(&e, &f, &rule, at(T0 + 1), BackupCheck::Skipped).unwrap();
            assert_eq!(removed(&p)[0], "000000010000000000000001");
        }
        // Told, --older-than 0s empties the archive as asked.
        let p = plan(
            &e,
            &f,
            &Rule::OlderThan(Duration::ZERO),
            at(T0 + 1),
            BackupCheck::Skipped,
        )
        .unwrap();
        assert_eq!(removed(&p).len(), 2);
    }

    #[test]
    fn before_removes_what_precedes_but_never_the_newest_backups_wal() {
        let e = entries(&[
            "000000010000000000000001",
            "000000010000000000000001.00000028.backup",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
        ]);
        let f = facts(&[("000000010000000000000001.00000028.backup", 1)], &[]);
        let p = run(&e, &f, Rule::Before("000000010000000000000003".into())).unwrap();
        assert!(removed(&p).is_empty(), "{:?}", removed(&p));
        assert!(p.why.contains("newest base backup"), "{}", p.why);
        let p = plan(
            &e,
            &f,
            &Rule::Before("000000010000000000000003".into()),
            at(T0),
            BackupCheck::Skipped,
        )
        .unwrap();
        assert!(removed(&p).is_empty());

        let (e, f) = two_timelines();
        let p = run(&e, &f, Rule::Before("000000020000000000000008".into())).unwrap();
        assert_eq!(p.cut.as_deref(), Some("000000020000000000000007"));
        assert!(p.why.contains("newest base backup"), "{}", p.why);
        for bad in ["00000002.history", "000000010000000000000002.partial", "x"] {
            assert!(run(&e, &f, Rule::Before(bad.into())).is_err(), "{bad}");
        }
        // After a fork back in position, --before cuts by position but never
        // into the WAL of the newest backup, on timeline 2.
        let (e, f) = fork_back();
        let p = run(&e, &f, Rule::Before("000000010000000000000007".into())).unwrap();
        let r = removed(&p);
        assert!(r.contains(&"000000010000000000000006"));
        assert!(r.contains(&"000000020000000000000003"));
        assert!(!r.contains(&"000000020000000000000004"), "{r:?}");
        assert!(!r.contains(&"000000020000000000000005"), "{r:?}");
        assert!(
            p.why.contains("000000020000000000000004.00000028.backup"),
            "{}",
            p.why
        );
    }

    #[test]
    fn older_than_cuts_at_the_oldest_recent_segment() {
        let mut e = entries(&[
            "000000010000000000000001",
            "000000010000000000000001.00000028.backup",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000004.00000028.backup",
        ]);
        for (i, x) in e.iter_mut().enumerate() {
            x.stored_at = Some(at(T0 - 86_400 * (4 - (i as u64).min(4))));
        }
        let f = facts(
            &[
                ("000000010000000000000001.00000028.backup", 1),
                ("000000010000000000000004.00000028.backup", 2),
            ],
            &[],
        );
        let older_than = |s: u64, now: u64| {
            plan(
                &e,
                &f,
                &Rule::OlderThan(Duration::from_secs(s)),
                at(now),
                BackupCheck::Required,
            )
            .unwrap()
        };
        // 2.5 days: the files of 4 and 3 days ago go.
        let p = older_than(216_000, T0);
        assert_eq!(
            removed(&p),
            [
                "000000010000000000000001",
                "000000010000000000000001.00000028.backup",
            ]
        );
        // Everything older: all but the newest backup's WAL.
        let p = older_than(60, T0 + 3600);
        assert_eq!(removed(&p).len(), 4);
        assert_eq!(p.cut.as_deref(), Some("000000010000000000000004"));
        assert!(p.why.contains("newest base backup"), "{}", p.why);
    }

    #[test]
    fn older_than_counts_an_unknown_time_as_recent() {
        let mut e = entries(&["000000010000000000000001", "000000010000000000000002"]);
        e[1].stored_at = Some(at(T0 - 86_400));
        let p = plan(
            &e,
            &Facts::default(),
            &Rule::OlderThan(Duration::from_secs(60)),
            at(T0),
            BackupCheck::Skipped,
        )
        .unwrap();
        assert!(removed(&p).is_empty());
    }

    #[test]
    fn cleanup_follows_pg_archivecleanup() {
        let (e, _) = two_timelines();
        let p = plan_cleanup(&e, "000000020000000000000007", false).unwrap();
        let r = removed(&p);
        assert_eq!(r.len(), 7, "{r:?}");
        assert!(r.contains(&"000000010000000000000006.partial"));
        assert!(!r
            .iter()
            .any(|n| n.ends_with(".backup") || n.ends_with(".history")));
        let p = plan_cleanup(&e, "000000020000000000000007", true).unwrap();
        assert_eq!(removed(&p).len(), 9);
        // %r may name the .partial or .backup of the segment.
        let p = plan_cleanup(&e, "000000010000000000000004.00000060.backup", false).unwrap();
        assert_eq!(removed(&p).len(), 3);
        assert!(plan_cleanup(&e, "00000002.history", false).is_err());
        assert!(plan_cleanup(&e, "nonsense", false).is_err());
    }

    #[test]
    fn reads_the_history_texts_and_executes_oldest_first() {
        use crate::support::testing::MemoryDestination;
        let dest = MemoryDestination::default();
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000003.00000028.backup",
            "00000002.history",
        ];
        let backup = backup_text(names[3], 5);
        for n in names {
            let data = match n {
                _ if n.ends_with(".backup") => backup.clone(),
                _ if n.ends_with(".history") => "1\t0/9000000\tr\n".to_string(),
                _ => n.to_string(),
            };
            dest.store_new_bytes(n, data.as_bytes()).unwrap();
        }
        let entries = dest.entries().unwrap();
        let f = read_facts(&dest, &entries).unwrap();
        assert_eq!(f.backups[names[3]], backup);
        assert_eq!(f.histories[&2], "1\t0/9000000\tr\n");
        let p = plan(
            &entries,
            &f,
            &Rule::KeepBackups(1),
            at(T0),
            BackupCheck::Required,
        )
        .unwrap();
        let mut seen = vec![];
        let n = execute(&dest, &p, |d| seen.push(d.walfile.clone())).unwrap();
        assert_eq!(n, 2);
        assert_eq!(seen, &names[..2]);
        let mut left = dest.list().unwrap();
        left.sort();
        assert_eq!(left, [names[2], names[3], names[4]]);
    }

    /// An encrypted history or backup history file decides what goes: read
    /// with the key, refused without it, never guessed.
    #[test]
    fn encrypted_history_files_are_read_with_the_key_and_refused_without() {
        use crate::archiving::archive_protocol::archive_file;
        use crate::destination::compressing::{Compressing, Sealing};
        use crate::destination::local_directory::LocalDirectory;
        use crate::destination::sealed::tests::keys;
        let tmp = tempfile::tempdir().unwrap();
        let (arch, wal) = (tmp.path().join("arch"), tmp.path().join("wal"));
        std::fs::create_dir(&arch).unwrap();
        std::fs::create_dir(&wal).unwrap();
        let (r, ids) = keys();
        let inner = LocalDirectory::new(&arch, 0o600);
        let view = Compressing::new(&inner, Some(1)).sealing(Sealing::To(std::sync::Arc::new(r)));
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000003",
            "000000010000000000000003.00000028.backup",
            "00000002.history",
        ];
        let backup = backup_text(names[3], 5);
        for n in names {
            let data = match n {
                _ if n.ends_with(".backup") => backup.clone(),
                _ if n.ends_with(".history") => "1\t0/9000000\tr\n".to_string(),
                _ => n.repeat(1000),
            };
            std::fs::write(wal.join(n), data).unwrap();
            archive_file(&view, n, &wal.join(n)).unwrap();
        }
        assert!(arch.join("00000002.history.age").is_file());
        assert!(arch.join("000000010000000000000001.zst.age").is_file());
        let entries = view.entries().unwrap();
        let listed = |d: &LocalDirectory| {
            let mut l = d.list().unwrap();
            l.sort();
            l
        };
        let before = listed(&inner);

        // Without the key: refused, saying how to give it; nothing removed.
        let e = read_facts(&inner, &entries).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Configuration);
        assert!(
            e.message.contains("is encrypted and no identity was given"),
            "{e}"
        );
        assert!(
            e.hint.as_deref().unwrap().contains("--identity-file"),
            "{e:?}"
        );
        assert_eq!(listed(&inner), before);
        // With another key: refused too.
        let (_, other) = keys();
        let e = read_facts_opening(&inner, Some(&other), &entries).unwrap_err();
        assert!(
            e.detail
                .as_deref()
                .unwrap()
                .contains("none of the identities given"),
            "{e:?}"
        );

        // With the key: read as archived, and the plan is carried out on
        // every form.
        let f = read_facts_opening(&inner, Some(&ids), &entries).unwrap();
        assert_eq!(f.backups[names[3]], backup);
        assert_eq!(f.histories[&2], "1\t0/9000000\tr\n");
        let p = plan(
            &entries,
            &f,
            &Rule::KeepBackups(1),
            at(T0),
            BackupCheck::Required,
        )
        .unwrap();
        assert_eq!(removed(&p), &names[..2]);
        assert_eq!(execute(&view, &p, |_| {}).unwrap(), 2);
        assert_eq!(
            listed(&inner),
            [
                "000000010000000000000003.00000028.backup.age",
                "000000010000000000000003.zst.age",
                "00000002.history.age",
            ]
        );
        assert!(!arch
            .join("000000010000000000000001.zst.age.sha256")
            .exists());

        // An encrypted file damaged in the archive: refused, not guessed.
        let h = arch.join("00000002.history.age");
        let mut b = std::fs::read(&h).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        std::fs::write(&h, b).unwrap();
        let entries = view.entries().unwrap();
        let e = read_facts_opening(&inner, Some(&ids), &entries).unwrap_err();
        assert!(
            e.detail.as_deref().unwrap().contains("checksum mismatch"),
            "{e:?}"
        );
    }

    /// Backups taken through the walarch target, in a directory archive.
    pub(crate) mod target_backups {
        use super::*;
        use crate::backup::{
            object_name, BackupInfo, BackupObject, ObjectKind, BACKUP_JSON, STARTED,
        };
        use crate::destination::local_directory::LocalDirectory;
        use crate::wal::checksum::{sha256, to_hex};
        use crate::wal::walname::segment_file_name;

        const SEG: u64 = 16 << 20;

        pub(crate) fn put(d: &dyn Destination, name: &str, data: &[u8]) {
            let mut w = d.create_object(name).unwrap();
            w.write(data).unwrap();
            w.finish().unwrap();
        }

        /// The backup.json of a backup starting at 0x28 into segment `seg`
        /// of timeline 1 and stopping 0x100 later, `stopped` s after T0.
        pub(crate) fn info(label: &str, seg: u64, stopped: u64) -> BackupInfo {
            let start = (seg << 24) + 0x28;
            BackupInfo {
                format: crate::backup::info::FORMAT,
                label: label.into(),
                system_identifier: "7301234567890123456".into(),
                pg_version: 150010,
                wal_segment_size: SEG,
                start_lsn: format!("0/{start:X}"),
                start_timeline: 1,
                start_wal: segment_file_name(1, seg, SEG),
                stop_lsn: format!("0/{:X}", start + 0x100),
                stop_timeline: 1,
                stop_wal: segment_file_name(1, seg, SEG),
                start_time: crate::wal::time::format_utc(at(T0 + stopped - 5)),
                stop_time: crate::wal::time::format_utc(at(T0 + stopped)),
                tablespaces: vec![],
                objects: vec![],
                based_on: None,
                encryption: None,
            }
        }

        /// Stores a backup as the target does (backup.started, the tar,
        /// the manifest, backup.json last) and, with `history`, the
        /// `.backup` file PostgreSQL archives for it too.
        pub(crate) fn take_backup(
            d: &dyn Destination,
            label: &str,
            seg: u64,
            stopped: u64,
            history: bool,
        ) -> BackupInfo {
            let mut i = info(label, seg, stopped);
            put(d, &object_name(label, STARTED), b"");
            for (file, kind) in [
                ("base.tar.zst", ObjectKind::Base),
                ("backup_manifest.zst", ObjectKind::Manifest),
            ] {
                let data = format!("{label}/{file}").repeat(100);
                put(d, &object_name(label, file), data.as_bytes());
                i.objects.push(BackupObject {
                    name: file.into(),
                    kind,
                    tablespace_oid: None,
                    archive_name: file.trim_end_matches(".zst").into(),
                    size: data.len() as u64 * 3,
                    stored_size: data.len() as u64,
                    sha256: to_hex(&sha256(data.as_bytes())),
                    compression: "zstd".into(),
                });
            }
            put(d, &object_name(label, BACKUP_JSON), i.to_json().as_bytes());
            if history {
                let name = format!("{}.00000028.backup", segment_file_name(1, seg, SEG));
                d.store_new_bytes(&name, backup_text(&name, stopped).as_bytes())
                    .unwrap();
            }
            i
        }

        pub(crate) fn archive_wal(d: &dyn Destination, segs: std::ops::RangeInclusive<u64>) {
            for s in segs {
                let n = segment_file_name(1, s, SEG);
                d.store_new_bytes(&n, n.as_bytes()).unwrap();
            }
        }

        fn plan_now(d: &dyn Destination, rule: Rule, now: SystemTime) -> Plan {
            let e = d.entries().unwrap();
            let f = read_facts(d, &e).unwrap();
            plan(&e, &f, &rule, now, BackupCheck::Required).unwrap()
        }

        fn objects(d: &dyn Destination) -> Vec<String> {
            d.objects_under("backups/")
                .unwrap()
                .into_iter()
                .map(|o| o.name)
                .collect()
        }

        pub(crate) fn set_age(dir: &std::path::Path, label: &str, age: Duration) {
            for e in std::fs::read_dir(dir.join("backups").join(label)).unwrap() {
                let f = std::fs::File::options()
                    .write(true)
                    .open(e.unwrap().path())
                    .unwrap();
                f.set_modified(SystemTime::now() - age).unwrap();
            }
        }

        #[test]
        fn two_backups_through_the_target_keep_one() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=5);
            take_backup(&d, "A", 2, 100, true);
            take_backup(&d, "B", 4, 200, true);
            let now = SystemTime::now();

            // Each counts once (backup.json and its .backup file are one
            // backup): keeping 2 keeps both, and only segment 1 goes.
            let p = plan_now(&d, Rule::KeepBackups(2), now);
            assert_eq!(removed(&p), ["000000010000000000000001"]);
            assert!(p.why.contains("2 most recent"), "{}", p.why);
            assert!(p
                .why
                .contains("A (000000010000000000000002.00000028.backup)"));
            // The backups/ folder is neither a WAL file nor reported.
            assert!(p.decisions.iter().all(|d| d.action == Action::Remove));

            let p = plan_now(&d, Rule::KeepBackups(1), now);
            assert_eq!(
                removed(&p),
                [
                    "backups/A/backup.json",
                    "backups/A/backup_manifest.zst",
                    "backups/A/base.tar.zst",
                    "backups/A/backup.started",
                    "000000010000000000000001",
                    "000000010000000000000002",
                    "000000010000000000000002.00000028.backup",
                    "000000010000000000000003",
                ]
            );
            assert!(p.decisions[0]
                .reason
                .contains("base backup A is not among the 1 most recent"));
            assert_eq!(p.cut.as_deref(), Some("000000010000000000000004"));
            assert_eq!(execute(&d, &p, |_| {}).unwrap(), 8);
            assert_eq!(
                objects(&d),
                [
                    "backups/B/backup.json",
                    "backups/B/backup.started",
                    "backups/B/backup_manifest.zst",
                    "backups/B/base.tar.zst",
                ]
            );
            assert!(!tmp.path().join("backups/A").exists());
            let mut left = d.list().unwrap();
            left.sort();
            assert_eq!(
                left,
                [
                    "000000010000000000000004",
                    "000000010000000000000004.00000028.backup",
                    "000000010000000000000005",
                ]
            );
            // B is intact: verify passes.
            let r = crate::maintenance::verify::verify(&d, None, None).unwrap();
            assert!(r.intact(), "{:?}", r.findings);

            // Again: nothing more to do.
            let p = plan_now(&d, Rule::KeepBackups(1), now);
            assert!(removed(&p).is_empty(), "{:?}", removed(&p));
        }

        #[test]
        fn a_backup_without_its_history_file_counts_and_orders_by_its_json() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=6);
            // An older backup taken otherwise, a newer one through the target
            // whose .backup file is not (yet) archived.
            let n = "000000010000000000000002.00000028.backup";
            d.store_new_bytes(n, backup_text(n, 100).as_bytes())
                .unwrap();
            take_backup(&d, "B", 4, 200, false);
            let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
            assert_eq!(
                removed(&p),
                [
                    "000000010000000000000001",
                    "000000010000000000000002",
                    "000000010000000000000002.00000028.backup",
                    "000000010000000000000003",
                ]
            );
            // Keeping the one taken otherwise is not possible alone: the
            // newest (B) always counts first.
            let p = plan_now(&d, Rule::KeepBackups(2), SystemTime::now());
            assert_eq!(removed(&p), ["000000010000000000000001"]);
            // --before also expires a target backup whose start it cuts.
            take_backup(&d, "C", 5, 300, true);
            let p = plan_now(
                &d,
                Rule::Before("000000010000000000000005".into()),
                SystemTime::now(),
            );
            let r = removed(&p);
            assert_eq!(r[0], "backups/B/backup.json", "{r:?}");
            assert!(r.contains(&"000000010000000000000004"));
            assert!(!r.contains(&"000000010000000000000005"));
            assert!(!r.iter().any(|n| n.starts_with("backups/C/")));
        }

        #[test]
        fn backup_json_goes_first_and_a_failure_after_it_leaves_no_listed_backup_damaged() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=5);
            take_backup(&d, "A", 2, 100, true);
            take_backup(&d, "B", 4, 200, true);
            let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
            // A removal that fails after backup.json: the manifest's file
            // replaced by a folder that cannot be unlinked.
            let m = tmp.path().join("backups/A/backup_manifest.zst");
            std::fs::remove_file(&m).unwrap();
            std::fs::create_dir(&m).unwrap();
            std::fs::write(m.join("x"), b"x").unwrap();
            let mut done = vec![];
            let err = execute(&d, &p, |x| done.push(x.walfile.clone())).unwrap_err();
            assert_eq!(done, ["backups/A/backup.json"], "{err}");
            // A is no longer listed complete; no WAL went.
            let c = Catalog::read(&d).unwrap();
            assert_eq!(c.complete.len(), 1);
            assert_eq!(c.complete[0].label, "B");
            assert_eq!(c.incomplete[0].label, "A");
            assert!(tmp.path().join("000000010000000000000001").exists());
            // Verify reports it as incomplete, not as a damaged backup.
            let r = crate::maintenance::verify::verify(&d, None, None).unwrap();
            assert!(r.intact(), "{:?}", r.findings);

            // Repaired, an hour later the next expiry finishes the job.
            std::fs::remove_dir_all(&m).unwrap();
            std::fs::write(&m, b"m").unwrap();
            set_age(tmp.path(), "A", INCOMPLETE_AFTER * 2);
            let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
            execute(&d, &p, |_| {}).unwrap();
            assert!(!tmp.path().join("backups/A").exists());
            assert!(!tmp.path().join("000000010000000000000003").exists());
            assert!(tmp.path().join("000000010000000000000004").exists());
        }

        #[test]
        fn incomplete_backups_go_when_old_and_none_is_in_progress() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=5);
            take_backup(&d, "B", 4, 200, true);
            put(&d, &object_name("X", STARTED), b"");
            put(&d, &object_name("X", "base.tar.zst"), b"partial");
            let now = SystemTime::now();
            // Young: left, and said so.
            let p = plan_now(&d, Rule::KeepBackups(1), now);
            assert!(!removed(&p).iter().any(|n| n.starts_with("backups/")));
            let x = p
                .decisions
                .iter()
                .find(|d| d.walfile == "backups/X/")
                .unwrap();
            assert_eq!(x.action, Action::Leave);
            assert!(x.reason.contains("may be in progress"), "{}", x.reason);

            // Old, but another backup was started a moment ago: left.
            set_age(tmp.path(), "X", INCOMPLETE_AFTER * 2);
            put(&d, &object_name("Y", STARTED), b"");
            let p = plan_now(&d, Rule::KeepBackups(1), now);
            assert!(!removed(&p).iter().any(|n| n.starts_with("backups/")));
            let x = p
                .decisions
                .iter()
                .find(|d| d.walfile == "backups/X/")
                .unwrap();
            assert!(
                x.reason.contains("backups/Y/backup.started"),
                "{}",
                x.reason
            );

            // Nothing in progress: the old one goes, claim last.
            d.remove_object(&object_name("Y", STARTED)).unwrap();
            let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
            let r = removed(&p);
            assert_eq!(
                &r[..2],
                ["backups/X/base.tar.zst", "backups/X/backup.started"]
            );
            assert!(p.decisions[0].reason.contains("incomplete base backup X"));
            execute(&d, &p, |_| {}).unwrap();
            assert_eq!(objects(&d).len(), 4);
            assert!(!tmp.path().join("backups/X").exists());
        }

        /// A backup through the target that failed (or is still running)
        /// after PostgreSQL's stop: `backup.started` with its start, what
        /// `objects` names, the `.backup` file, no `backup.json`.
        fn failed_backup(
            d: &dyn Destination,
            label: &str,
            seg: u64,
            stopped: u64,
            objects: &[&str],
        ) {
            let start = (seg << 24) + 0x28;
            let claim = format!(
                "{{\"label\": \"{label}\", \"start_lsn\": \"0/{start:X}\", \"start_time\": \"2027-01-01T00:00:00Z\"}}\n"
            );
            put(d, &object_name(label, STARTED), claim.as_bytes());
            for o in objects {
                put(d, &object_name(label, o), b"partial");
            }
            let name = format!("{}.00000028.backup", segment_file_name(1, seg, SEG));
            d.store_new_bytes(&name, backup_text(&name, stopped).as_bytes())
                .unwrap();
        }

        #[test]
        fn the_backup_file_of_a_failed_or_running_target_backup_is_not_a_backup() {
            for objects in [&["base.tar.zst", "backup_manifest.zst"][..], &[][..]] {
                let tmp = tempfile::tempdir().unwrap();
                let d = LocalDirectory::new(tmp.path(), 0o600);
                archive_wal(&d, 1..=5);
                take_backup(&d, "A", 2, 100, true);
                // Newer, failed after the stop (or a tombstone: only
                // backup.started left).
                failed_backup(&d, "F", 4, 200, objects);
                let c = Catalog::read(&d).unwrap();
                assert_eq!(c.incomplete[0].start.map(|s| s.lsn), Some((4 << 24) + 0x28));
                // Young: A is still the newest backup; nothing of A goes.
                let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
                assert_eq!(removed(&p), ["000000010000000000000001"], "{objects:?}");
                assert!(p.why.contains("A (000000010000000000000002"), "{}", p.why);
                // --before never goes past A's start either.
                let p = plan_now(
                    &d,
                    Rule::Before("000000010000000000000005".into()),
                    SystemTime::now(),
                );
                assert_eq!(removed(&p), ["000000010000000000000001"]);

                // Abandoned: its .backup file goes first, then its objects,
                // backup.started last; A and its WAL stay.
                set_age(tmp.path(), "F", INCOMPLETE_AFTER * 2);
                let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
                let mut expect = vec!["000000010000000000000004.00000028.backup".to_string()];
                expect.extend(objects.iter().rev().map(|o| format!("backups/F/{o}")));
                expect.push("backups/F/backup.started".into());
                expect.push("000000010000000000000001".into());
                assert_eq!(removed(&p), expect, "{objects:?}");
                assert!(p.decisions[0].reason.contains("incomplete base backup F"));
                // Stopped right after the .backup file: the next run still
                // counts A as the newest and finishes the job.
                d.remove(&expect[0]).unwrap();
                let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
                assert_eq!(removed(&p)[expect.len() - 2], "000000010000000000000001");
                execute(&d, &p, |_| {}).unwrap();
                assert!(!tmp.path().join("backups/F").exists());
                assert!(tmp.path().join("000000010000000000000002").exists());
                assert!(tmp.path().join("backups/A/backup.json").exists());
            }
        }

        #[test]
        fn a_claim_with_another_start_or_timeline_does_not_hide_a_backup() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=5);
            take_backup(&d, "A", 2, 100, true);
            // A .backup file of a backup taken otherwise, and a failed
            // target backup that started elsewhere.
            let n = "000000010000000000000004.00000028.backup";
            d.store_new_bytes(n, backup_text(n, 200).as_bytes())
                .unwrap();
            put(
                &d,
                &object_name("G", STARTED),
                b"{\"label\": \"G\", \"start_lsn\": \"0/4000028\", \"start_timeline\": 2}\n",
            );
            let p = plan_now(&d, Rule::KeepBackups(1), SystemTime::now());
            assert!(p.why.contains(&format!("({n})")), "{}", p.why);
            assert!(removed(&p).contains(&"000000010000000000000002"));
        }

        #[test]
        fn an_unreadable_backup_json_refuses_everything() {
            let tmp = tempfile::tempdir().unwrap();
            let d = LocalDirectory::new(tmp.path(), 0o600);
            archive_wal(&d, 1..=5);
            take_backup(&d, "B", 4, 200, true);
            put(&d, &object_name("Z", BACKUP_JSON), b"{");
            let e = d.entries().unwrap();
            let f = read_facts(&d, &e).unwrap();
            let err = plan(
                &e,
                &f,
                &Rule::KeepBackups(1),
                SystemTime::now(),
                BackupCheck::Required,
            )
            .unwrap_err();
            assert!(err.message.contains("backups/Z/backup.json"), "{err}");
        }

        #[test]
        fn names_under_backups_in_a_listing_are_not_reported() {
            // An object store lists keys at any depth.
            let mut e = entries(&[
                "000000010000000000000001",
                "backups/A/base.tar.zst",
                "backups",
            ]);
            e.push(Entry {
                name: "README".into(),
                stored_at: None,
            });
            let p = plan(
                &e,
                &Facts::default(),
                &Rule::Before("000000010000000000000001".into()),
                at(T0),
                BackupCheck::Skipped,
            )
            .unwrap();
            let left: Vec<_> = p.decisions.iter().map(|d| d.walfile.as_str()).collect();
            assert_eq!(left, ["README"]);
        }
    }
}
