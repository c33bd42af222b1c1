//! Verification of an archive, on any destination: every WAL file against
//! its recorded SHA-256, and the segment sequence for gaps, following timeline history
//! files across switches. The segment size is read from the files (the long
//! page header of a segment), never assumed.
//!
//! Then the base backups taken through the target (`backups/LABEL/`): each
//! complete one's `backup.json` parses, every object it lists is there with
//! the recorded size and SHA-256 (read and hashed), and the WAL from its
//! start file to its stop file is archived. Incomplete backups are reported
//! as such: in progress while young, a problem once abandoned.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::SystemTime;

use crate::backup::catalog::Catalog;
use crate::backup::{object_name, BACKUPS_DIR, BACKUP_JSON, INCOMPLETE_AFTER};

use crate::archiving::archive_protocol::read_error;
use crate::archiving::budget::{marker_field, Marker};
use crate::destination::compressed;
use crate::destination::sealed::Identities;
use crate::destination::Destination;
use crate::restore::reading::{read_back, read_back_small, record_of, Holder, ReadFailure};
use crate::support::error::ArchiveError;
use crate::wal::checksum::{hash_reader, to_hex};
use crate::wal::walname::{
    archive_order, segment_file_name, stored_form, Form, WalFileKind, WalFileName,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The bytes do not match the recorded checksum, or the record is bad.
    Corrupt,
    /// No checksum is recorded for the file.
    MissingChecksum,
    /// A file the sequence needs is not in the archive (a gap), or an
    /// object or WAL file a base backup needs.
    Missing,
    /// A base backup without `backup.json` that changed recently: it may be
    /// being written. Not a problem.
    InProgress,
    /// A base backup without `backup.json`, untouched for long: abandoned
    /// (`walarch expire` removes it).
    Incomplete,
    /// Missing because `walarch.max_backlog` dropped it: a gap explained by
    /// a `DROPPED.` marker (still a gap recovery cannot pass).
    Dropped,
    /// Encrypted, and verified without an identity: its stored bytes match
    /// their record, what they decrypt to was not checked. Not a problem,
    /// but said.
    Unchecked,
    /// Encrypted, and none of the identities given can decrypt it.
    NoKey,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Corrupt => "corrupt",
            Status::MissingChecksum => "missing_checksum",
            Status::Missing => "missing",
            Status::InProgress => "in_progress",
            Status::Incomplete => "incomplete",
            Status::Dropped => "dropped",
            Status::Unchecked => "unchecked",
            Status::NoKey => "no_key",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub walfile: String,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Report {
    /// One entry per file checked, then one per gap.
    pub findings: Vec<Finding>,
    pub segment_size: Option<u64>,
    /// The timelines of the chain that was followed, oldest first.
    pub timelines: Vec<u32>,
    /// Of the files verified intact: how many are stored compressed, the
    /// bytes they hold and the WAL bytes they stand for.
    pub compressed_files: usize,
    pub stored_bytes: u64,
    pub wal_bytes: u64,
    /// Of the files verified intact, how many are stored encrypted (and
    /// were decrypted to check them).
    pub encrypted_files: usize,
    /// Encrypted files whose stored bytes were verified but which were not
    /// decrypted (no identity given): `Status::Unchecked`.
    pub encrypted_unchecked: usize,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems().next().is_none()
    }
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| {
            !matches!(
                f.status,
                Status::Ok | Status::InProgress | Status::Unchecked
            )
        })
    }
}

/// Offsets in XLogLongPageHeaderData (access/xlog_internal.h), the same in
/// PostgreSQL 15 to 18: the 24-byte short header, xlp_sysid (u64), then
/// xlp_seg_size (u32).
const XLP_SEG_SIZE_OFFSET: usize = 32;
const XLP_LONG_HEADER: u16 = 0x0002;

/// The segment size a segment file declares in its first page header.
fn segment_size_of(dest: &dyn Destination, name: &str) -> Result<Option<u64>, ArchiveError> {
    let mut head = [0u8; 40];
    let Some(mut f) = dest.open(name)? else {
        return Ok(None);
    };
    let n = crate::support::fsutil::read_full(&mut f, &mut head)
        .map_err(|e| read_error(dest, name, &e))?;
    if n < head.len() {
        return Ok(None);
    }
    let info = u16::from_le_bytes([head[2], head[3]]);
    if info & XLP_LONG_HEADER == 0 {
        return Ok(None);
    }
    let size = u32::from_le_bytes(
        head[XLP_SEG_SIZE_OFFSET..XLP_SEG_SIZE_OFFSET + 4]
            .try_into()
            .unwrap(),
    ) as u64;
    // PostgreSQL allows powers of two from 1 MB to 1 GB.
    Ok((size.is_power_of_two() && (1 << 20..=1 << 30).contains(&size)).then_some(size))
}

/// The segment size of a compressed segment: its original length, as its
/// header records it.
fn compressed_segment_size(
    dest: &dyn Destination,
    name: &str,
) -> Result<Option<u64>, ArchiveError> {
    let mut head = [0u8; compressed::HEADER_LEN];
    let Some(mut f) = dest.open(name)? else {
        return Ok(None);
    };
    let n = crate::support::fsutil::read_full(&mut f, &mut head)
        .map_err(|e| read_error(dest, name, &e))?;
    let size = compressed::decode_header(&head[..n]).map(|o| o.len);
    Ok(size.filter(|s| s.is_power_of_two() && (1 << 20..=1 << 30).contains(s)))
}

/// A timeline history file's entries: (parent timeline, switch LSN).
pub fn parse_history(text: &str) -> Vec<(u32, u64)> {
    let mut v = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(tli) = tli.parse::<u32>() else {
            continue;
        };
        let Some((hi, lo)) = lsn.split_once('/') else {
            continue;
        };
        let (Ok(hi), Ok(lo)) = (u64::from_str_radix(hi, 16), u64::from_str_radix(lo, 16)) else {
            continue;
        };
        v.push((tli, (hi << 32) | lo));
    }
    v
}

/// Called between files and between reads of a file: an error stops the
/// verification with it. The SQL function checks for query cancel and
/// termination here, on its own thread, so that a long verification (or
/// one large file) can be stopped.
pub type Check<'a> = &'a mut dyn FnMut() -> Result<(), ArchiveError>;

/// A reader that runs the check before every read; the check's error is
/// kept for the caller, the read fails.
struct Checked<'c, 'd, R> {
    inner: R,
    check: &'c mut (dyn FnMut() -> Result<(), ArchiveError> + 'd),
    stopped: Option<ArchiveError>,
}

impl<R: Read> Read for Checked<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Err(e) = (self.check)() {
            self.stopped = Some(e);
            // Not Interrupted: readers retry that.
            return Err(std::io::Error::other("verification stopped"));
        }
        self.inner.read(buf)
    }
}

/// Verifies the archive in `dest`. `from`/`to` are segment names bounding
/// the range checked (by segment number, inclusive); history files are
/// always checked.
pub fn verify(
    dest: &dyn Destination,
    from: Option<&WalFileName>,
    to: Option<&WalFileName>,
) -> Result<Report, ArchiveError> {
    verify_with(dest, from, to, &mut || Ok(()))
}

/// `verify`, running `check` between files and between reads. Encrypted
/// files are checked as far as their stored bytes (`Status::Unchecked`):
/// the server, which runs this, holds no identity.
pub fn verify_with(
    dest: &dyn Destination,
    from: Option<&WalFileName>,
    to: Option<&WalFileName>,
    check: Check<'_>,
) -> Result<Report, ArchiveError> {
    verify_opening(dest, None, from, to, check)
}

/// `verify_with`, decrypting encrypted files with `ids` to check what they
/// restore to, as restore would.
pub fn verify_opening(
    dest: &dyn Destination,
    ids: Option<&Identities>,
    from: Option<&WalFileName>,
    to: Option<&WalFileName>,
    check: Check<'_>,
) -> Result<Report, ArchiveError> {
    let mut report = verify_wal(dest, ids, from, to, &mut *check)?;
    verify_backups(dest, SystemTime::now(), check, &mut report)?;
    Ok(report)
}

/// The detail of an encrypted file verified without an identity.
pub const NOT_DECRYPTED: &str =
    "encrypted: stored bytes verified against their record; not decrypted (no --identity-file given)";

/// The WAL files: checksums, then gaps.
fn verify_wal(
    dest: &dyn Destination,
    ids: Option<&Identities>,
    from: Option<&WalFileName>,
    to: Option<&WalFileName>,
    check: Check<'_>,
) -> Result<Report, ArchiveError> {
    let mut names = dest.list()?;
    names.sort_by(|a, b| archive_order(a, b));

    let mut report = Report::default();
    // Segment size from the first readable full segment.
    for n in &names {
        let Some((wal, form)) = stored_form(n) else {
            continue;
        };
        if WalFileName::parse(wal).is_some_and(|w| w.kind == WalFileKind::Segment) {
            check()?;
            let size = if form.encrypted {
                // The original's length, as the record keeps it (the
                // record is checked with the file below).
                dest.recorded_original(n)?
                    .map(|o| o.len)
                    .filter(|s| s.is_power_of_two() && (1 << 20..=1 << 30).contains(s))
            } else if form.compressed {
                compressed_segment_size(dest, n)?
            } else {
                segment_size_of(dest, n)?
            };
            if let Some(s) = size {
                report.segment_size = Some(s);
                break;
            }
        }
    }
    let seg_size = report.segment_size;
    let segno = |w: &WalFileName| seg_size.map(|s| w.segno(s));
    let in_range = |w: &WalFileName| -> bool {
        if w.kind == WalFileKind::History {
            return true;
        }
        let (Some(s), Some(size)) = (segno(w), seg_size) else {
            return true;
        };
        from.is_none_or(|f| s >= f.segno(size)) && to.is_none_or(|t| s <= t.segno(size))
    };

    // 1. Checksums.
    for n in &names {
        let (wal, form) = stored_form(n).unwrap();
        let w = WalFileName::parse(wal).unwrap();
        if !in_range(&w) {
            continue;
        }
        check()?;
        let Some(finding) = check_file(dest, ids, n, form, &mut *check, &mut report)? else {
            // Removed since it was listed (an expiry running).
            continue;
        };
        report.findings.push(finding);
    }

    // 2. Gaps, along the newest timeline's history.
    let Some(size) = seg_size else {
        return Ok(report);
    };
    let wal_names: Vec<WalFileName> = names
        .iter()
        .filter_map(|n| WalFileName::parse(stored_form(n)?.0))
        .collect();
    let segments: BTreeSet<(u32, u64)> = wal_names
        .iter()
        .filter(|w| w.kind == WalFileKind::Segment)
        .map(|w| (w.timeline, w.segno(size)))
        .collect();
    let histories: BTreeSet<u32> = wal_names
        .iter()
        .filter(|w| w.kind == WalFileKind::History)
        .map(|w| w.timeline)
        .collect();
    let newest = segments
        .iter()
        .map(|(t, _)| *t)
        .chain(histories.iter().copied())
        .max();
    let Some(newest) = newest else {
        return Ok(report);
    };

    // Timeline -> first segment number on it.
    let mut begins: BTreeMap<u32, u64> = BTreeMap::new();
    begins.insert(newest, 0);
    if newest > 1 {
        // When it cannot be read, `history_text` says so in the report.
        if let Some(text) = history_text(dest, ids, &names, newest, &mut report)? {
            let entries = parse_history(&text);
            let mut begin = 0;
            for (tli, switch_lsn) in &entries {
                begins.insert(*tli, begin);
                begin = switch_lsn / size;
            }
            begins.insert(newest, begin);
        }
    }
    report.timelines = begins.keys().copied().collect();
    // The timeline a segment number is read from during recovery: the newest
    // whose range has begun (the switch segment comes from the new timeline).
    let timeline_of = |s: u64| {
        begins
            .iter()
            .rev()
            .find(|(_, b)| **b <= s)
            .map(|(t, _)| *t)
            .unwrap_or(newest)
    };
    let chain: Vec<u64> = segments
        .iter()
        .filter(|(t, s)| timeline_of(*s) == *t)
        .map(|(_, s)| *s)
        .collect();
    let (Some(&first), Some(&last)) = (chain.first(), chain.last()) else {
        return Ok(report);
    };
    let start = from.map(|f| f.segno(size)).unwrap_or(first);
    let end = to.map(|t| t.segno(size)).unwrap_or(last);
    // Markers of ranges dropped by walarch.max_backlog, read once a gap
    // is found.
    let mut markers: Option<Vec<(Marker, String)>> = None;
    let marker_of = |markers: &mut Option<Vec<(Marker, String)>>, s: u64| {
        let name = segment_file_name(timeline_of(s), s, size);
        let found = load_markers(dest, markers)?;
        Ok::<_, ArchiveError>(found.iter().position(|(m, _)| m.covers(&name)))
    };
    let mut s = start;
    while s <= end {
        let t = timeline_of(s);
        if segments.contains(&(t, s)) {
            s += 1;
            continue;
        }
        // Collapse a run of missing segments into one finding (a run
        // explained by one marker, or one not explained).
        let run_start = s;
        let marker = marker_of(&mut markers, s)?;
        while s <= end
            && !segments.contains(&(timeline_of(s), s))
            && marker_of(&mut markers, s)? == marker
        {
            s += 1;
        }
        if let Some(i) = marker {
            let (m, when) = &markers.as_ref().unwrap()[i];
            report.findings.push(Finding {
                walfile: segment_file_name(t, run_start, size),
                status: Status::Dropped,
                detail: format!(
                    "dropped by walarch.max_backlog at {when}: {} files missing, {} through {} (marker \"{}\"); point-in-time recovery cannot pass them",
                    s - run_start,
                    segment_file_name(t, run_start, size),
                    segment_file_name(timeline_of(s - 1), s - 1, size),
                    m.name
                ),
            });
            continue;
        }
        let first_missing = segment_file_name(t, run_start, size);
        let detail = if s - run_start == 1 {
            format!("gap in the WAL sequence on timeline {t}")
        } else {
            format!(
                "gap in the WAL sequence: {} files missing, {} through {}",
                s - run_start,
                first_missing,
                segment_file_name(timeline_of(s - 1), s - 1, size)
            )
        };
        report.findings.push(Finding {
            walfile: first_missing,
            status: Status::Missing,
            detail,
        });
    }
    Ok(report)
}

/// Checks the base backups under `backups/` (whatever `from`/`to` say),
/// adding one finding per object and per problem to `report`.
fn verify_backups(
    dest: &dyn Destination,
    now: SystemTime,
    check: Check<'_>,
    report: &mut Report,
) -> Result<(), ArchiveError> {
    let catalog = Catalog::read(dest)?;
    if catalog.complete.is_empty() && catalog.unreadable.is_empty() && catalog.incomplete.is_empty()
    {
        return Ok(());
    }
    let wal: BTreeSet<String> = dest
        .list()?
        .iter()
        .filter_map(|n| stored_form(n).map(|(w, _)| w.to_string()))
        .collect();
    let mut push = |walfile: String, status: Status, detail: String| {
        report.findings.push(Finding {
            walfile,
            status,
            detail,
        })
    };
    for u in &catalog.unreadable {
        push(
            object_name(&u.label, BACKUP_JSON),
            Status::Corrupt,
            format!("base backup {} cannot be read: {}", u.label, u.error),
        );
    }
    for b in &catalog.complete {
        check()?;
        let label = &b.label;
        push(object_name(label, BACKUP_JSON), Status::Ok, String::new());
        for o in &b.info.objects {
            let name = object_name(label, &o.name);
            let listed = b.objects.iter().find(|x| x.name == name);
            let (status, detail) = match listed {
                _ if o.name.contains('/') || o.name.is_empty() => (
                    Status::Corrupt,
                    format!("backup.json of base backup {label} names an object outside its folder"),
                ),
                None => (
                    Status::Missing,
                    format!("object of base backup {label} is not in the archive"),
                ),
                Some(x) if x.size != o.stored_size => (
                    Status::Corrupt,
                    format!(
                        "size mismatch in base backup {label}: backup.json records {} bytes, found {}",
                        o.stored_size, x.size
                    ),
                ),
                Some(_) => match hash_object(dest, &name, &mut *check)? {
                    None => (
                        Status::Missing,
                        format!("object of base backup {label} is not in the archive"),
                    ),
                    Some((len, actual)) if to_hex(&actual).eq_ignore_ascii_case(&o.sha256) && len == o.stored_size => {
                        (Status::Ok, String::new())
                    }
                    Some((len, actual)) => (
                        Status::Corrupt,
                        format!(
                            "SHA-256 mismatch in base backup {label} ({len} bytes): recorded {}, found {}",
                            o.sha256,
                            to_hex(&actual)
                        ),
                    ),
                },
            };
            push(name, status, detail);
        }
        // The WAL from its start file to its stop file.
        let i = &b.info;
        let size = i.wal_segment_size;
        let (start, stop) = match (
            WalFileName::parse(&i.start_wal),
            WalFileName::parse(&i.stop_wal),
        ) {
            (Some(a), Some(z))
                if size.is_power_of_two()
                    && (1 << 20..=1 << 30).contains(&size)
                    && a.kind == WalFileKind::Segment
                    && z.kind == WalFileKind::Segment
                    && a.segno(size) <= z.segno(size) =>
            {
                (a, z)
            }
            _ => {
                push(
                    object_name(label, BACKUP_JSON),
                    Status::Corrupt,
                    format!(
                        "base backup {label}: backup.json's start and stop WAL files (\"{}\", \"{}\") or segment size ({size}) are not valid",
                        i.start_wal, i.stop_wal
                    ),
                );
                continue;
            }
        };
        let (first, last) = (start.segno(size), stop.segno(size));
        for segno in first..=last {
            let on = |t: u32| segment_file_name(t, segno, size);
            if wal.contains(&on(start.timeline)) || wal.contains(&on(stop.timeline)) {
                continue;
            }
            let t = if segno == last {
                stop.timeline
            } else {
                start.timeline
            };
            push(
                on(t),
                Status::Missing,
                format!(
                    "WAL file needed by base backup {label} ({} to {}) is not in the archive",
                    i.start_wal, i.stop_wal
                ),
            );
        }
    }
    let age = crate::wal::time::describe(INCOMPLETE_AFTER);
    for i in &catalog.incomplete {
        let n = i.objects.len();
        let last = i
            .newest()
            .map(|t| format!(", last stored {}", crate::wal::time::format_utc(t)))
            .unwrap_or_default();
        let (status, detail) = if i.abandoned(now) {
            (
                Status::Incomplete,
                format!("incomplete base backup {} (no backup.json, {n} object(s){last}), untouched for more than {age}: abandoned; walarch expire removes it", i.label),
            )
        } else {
            (
                Status::InProgress,
                format!("incomplete base backup {} (no backup.json, {n} object(s){last}): it may be in progress", i.label),
            )
        };
        push(format!("{BACKUPS_DIR}/{}/", i.label), status, detail);
    }
    Ok(())
}

/// Reads and hashes a stored object, streaming; `None` when it is gone.
fn hash_object(
    dest: &dyn Destination,
    name: &str,
    check: Check<'_>,
) -> Result<Option<(u64, crate::wal::checksum::Sha256Digest)>, ArchiveError> {
    let Some(r) = dest.open_object(name)? else {
        return Ok(None);
    };
    let mut r = Checked {
        inner: r,
        check,
        stopped: None,
    };
    let read = hash_reader(&mut r);
    if let Some(stopped) = r.stopped.take() {
        return Err(stopped);
    }
    read.map(Some).map_err(|e| read_error(dest, name, &e))
}

/// The markers of dropped ranges with when each was dropped, read on first
/// use.
fn load_markers<'m>(
    dest: &dyn Destination,
    cache: &'m mut Option<Vec<(Marker, String)>>,
) -> Result<&'m [(Marker, String)], ArchiveError> {
    if cache.is_none() {
        let mut v = vec![];
        for m in crate::archiving::budget::markers(dest)? {
            let when = crate::archiving::budget::marker_contents(dest, &m.name)?
                .and_then(|t| marker_field(&t, "dropped_from").map(str::to_string))
                .unwrap_or_else(|| "an unknown time".into());
            v.push((m, when));
        }
        *cache = Some(v);
    }
    Ok(cache.as_deref().unwrap_or_default())
}

/// Checks one stored file `n` (of `form`) against its record and, when
/// it can, what it restores to; counts it in `report`. `None` when it is
/// gone since it was listed.
fn check_file(
    dest: &dyn Destination,
    ids: Option<&Identities>,
    n: &str,
    form: Form,
    check: Check<'_>,
    report: &mut Report,
) -> Result<Option<Finding>, ArchiveError> {
    let finding = |status, detail: String| {
        Some(Finding {
            walfile: n.to_string(),
            status,
            detail,
        })
    };
    let h = Holder {
        stored: n.to_string(),
        form,
    };
    let record = match record_of(dest, &h) {
        Ok(r) => r,
        Err(ReadFailure::Store(e)) => return Err(e),
        Err(ReadFailure::NoRecord) => {
            return Ok(finding(
                Status::MissingChecksum,
                "no checksum recorded in the archive".to_string(),
            ))
        }
        Err(ReadFailure::BadRecord(why)) if why == "is malformed" => {
            return Ok(finding(
                Status::Corrupt,
                "the checksum record is not one for this file".to_string(),
            ))
        }
        Err(e) => return Ok(finding(Status::Corrupt, e.describe(n, ids))),
    };
    let Some(r) = dest.open(n)? else {
        return Ok(None);
    };
    let mut r = Checked {
        inner: r,
        check,
        stopped: None,
    };
    // The plain form, and an encrypted one without identities: the stored
    // bytes, streamed.
    if form == Form::PLAIN || (form.encrypted && ids.is_none()) {
        let read = hash_reader(&mut r);
        if let Some(stopped) = r.stopped.take() {
            return Err(stopped);
        }
        let (len, actual) = read.map_err(|e| read_error(dest, n, &e))?;
        if actual != record.digest {
            return Ok(finding(
                Status::Corrupt,
                format!(
                    "SHA-256 mismatch ({len} bytes): recorded {}, found {}",
                    to_hex(&record.digest),
                    to_hex(&actual)
                ),
            ));
        }
        report.stored_bytes += len;
        return Ok(if form == Form::PLAIN {
            report.wal_bytes += len;
            finding(Status::Ok, String::new())
        } else {
            report.encrypted_unchecked += 1;
            report.compressed_files += usize::from(form.compressed);
            report.wal_bytes += record.original.map_or(0, |o| o.len);
            finding(Status::Unchecked, NOT_DECRYPTED.to_string())
        });
    }
    // Compressed or encrypted: read whole (about a segment at most), then
    // restored as restore would, into nothing.
    let mut data = Vec::new();
    let read = r.read_to_end(&mut data);
    if let Some(stopped) = r.stopped.take() {
        return Err(stopped);
    }
    read.map_err(|e| read_error(dest, n, &e))?;
    Ok(
        match read_back(dest, ids, &h, &record, &data[..], &mut std::io::sink()) {
            Ok(back) => {
                report.compressed_files += usize::from(form.compressed);
                report.encrypted_files += usize::from(form.encrypted);
                report.stored_bytes += back.stored_len;
                report.wal_bytes += back.original.len;
                finding(Status::Ok, String::new())
            }
            Err(ReadFailure::Store(e)) => return Err(e),
            Err(ReadFailure::Mismatch {
                len,
                recorded,
                actual,
            }) => finding(
                Status::Corrupt,
                format!(
                    "SHA-256 mismatch ({len} bytes): recorded {}, found {}",
                    to_hex(&recorded),
                    to_hex(&actual)
                ),
            ),
            Err(ReadFailure::Undecodable(why)) => finding(
                Status::Corrupt,
                format!("matches its checksum record but {why}"),
            ),
            Err(e @ ReadFailure::NoMatchingKey) => finding(
                Status::NoKey,
                format!("stored bytes verified; {}", e.describe(n, ids)),
            ),
            Err(e) => finding(Status::Corrupt, e.describe(n, ids)),
        },
    )
}

/// The text of timeline `tli`'s history file, to follow its ancestry;
/// `None` when it cannot be read, which is said in `report` (missing, or
/// encrypted and not decrypted: then only the newest timeline's gaps are
/// looked for).
fn history_text(
    dest: &dyn Destination,
    ids: Option<&Identities>,
    names: &[String],
    tli: u32,
    report: &mut Report,
) -> Result<Option<String>, ArchiveError> {
    let hist_name = format!("{tli:08X}.history");
    let stored = names
        .iter()
        .find(|n| stored_form(n).is_some_and(|(w, _)| w == hist_name));
    let missing = |report: &mut Report| {
        report.findings.push(Finding {
            walfile: hist_name.clone(),
            status: Status::Missing,
            detail: format!(
                "timeline {tli} has no history file in the archive: its ancestry cannot be followed"
            ),
        })
    };
    let Some(stored) = stored else {
        missing(report);
        return Ok(None);
    };
    let (_, form) = stored_form(stored).expect("found by it");
    if !form.encrypted {
        let text = read_text(dest, stored)?;
        if text.is_none() {
            missing(report);
        }
        return Ok(text);
    }
    let text = match ids {
        None => None,
        Some(ids) => match dest.open(stored)? {
            None => None,
            Some(src) => {
                let h = Holder {
                    stored: stored.clone(),
                    form,
                };
                match read_back_small(dest, Some(ids), &h, src, MAX_HISTORY) {
                    Ok(b) => String::from_utf8(b).ok(),
                    Err(ReadFailure::Store(e)) => return Err(e),
                    // Its own finding says what is wrong with it.
                    Err(_) => None,
                }
            }
        },
    };
    if text.is_none() {
        let note = format!(
            "timeline {tli}'s ancestry was not followed: gaps were looked for on timeline {tli} only"
        );
        match report.findings.iter_mut().find(|f| f.walfile == *stored) {
            Some(f) if f.detail.is_empty() => f.detail = note,
            Some(f) => f.detail = format!("{}; {note}", f.detail),
            None => report.findings.push(Finding {
                walfile: stored.clone(),
                status: Status::Unchecked,
                detail: format!("encrypted: {note}"),
            }),
        }
    }
    Ok(text)
}

/// History files are a few hundred bytes; anything much larger is not one.
const MAX_HISTORY: u64 = 1 << 20;

/// A small stored file as text; `None` when absent or not text.
fn read_text(dest: &dyn Destination, name: &str) -> Result<Option<String>, ArchiveError> {
    let Some(mut r) = dest.open(name)? else {
        return Ok(None);
    };
    let mut text = String::new();
    match r.read_to_string(&mut text) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(read_error(dest, name, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archive_protocol::archive_file;
    use crate::destination::local_directory::LocalDirectory;
    use crate::wal::checksum::sha256;

    const MB: u64 = 1 << 20;

    /// A fake segment: a long page header declaring `size`, then filler.
    fn segment(tli: u32, size: u64, fill: u8) -> Vec<u8> {
        let mut v = vec![fill; 64 * 1024];
        v[0..2].copy_from_slice(&0xD113u16.to_le_bytes());
        v[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        v[4..8].copy_from_slice(&tli.to_le_bytes());
        v[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        v
    }

    /// Archives the given (timeline, segno) segments and history files.
    fn archive(
        segs: &[(u32, u64)],
        histories: &[(u32, &str)],
        size: u64,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal");
        let arch = d.path().join("arch");
        std::fs::create_dir(&wal).unwrap();
        std::fs::create_dir(&arch).unwrap();
        for (t, s) in segs {
            let name = segment_file_name(*t, *s, size);
            std::fs::write(wal.join(&name), segment(*t, size, *s as u8)).unwrap();
            archive_file(&LocalDirectory::new(&arch, 0o600), &name, &wal.join(&name)).unwrap();
        }
        for (t, text) in histories {
            let name = format!("{t:08X}.history");
            std::fs::write(wal.join(&name), text).unwrap();
            archive_file(&LocalDirectory::new(&arch, 0o600), &name, &wal.join(&name)).unwrap();
        }
        (d, arch)
    }

    fn problems(r: &Report) -> Vec<(String, Status)> {
        r.problems()
            .map(|f| (f.walfile.clone(), f.status))
            .collect()
    }

    #[test]
    fn complete_archive_is_intact_and_segment_size_is_read_from_files() {
        for size in [MB, 16 * MB, 64 * MB] {
            let (_d, arch) = archive(&[(1, 1), (1, 2), (1, 3)], &[], size);
            let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
            assert!(r.intact(), "{:?}", r.findings);
            assert_eq!(r.segment_size, Some(size));
            assert_eq!(r.findings.len(), 3);
        }
    }

    /// Stores segment (t, s) of `size` in its compressed form only.
    fn archive_compressed(arch: &std::path::Path, t: u32, s: u64, size: u64) -> Vec<u8> {
        let mut data = segment(t, size, s as u8);
        data.resize(size as usize, 0);
        let name = format!("{}.zst", segment_file_name(t, s, size));
        let z = arch.parent().unwrap().join("z");
        std::fs::write(&z, compressed::compress(&data, 1).unwrap()).unwrap();
        LocalDirectory::new(arch, 0o600)
            .store_new(&name, &z)
            .unwrap();
        data
    }

    #[test]
    fn mixed_archives_verify_and_gaps_span_both_forms() {
        let (_d, arch) = archive(&[(1, 1), (1, 3)], &[], MB);
        archive_compressed(&arch, 1, 2, MB);
        archive_compressed(&arch, 1, 4, MB);
        let dest = LocalDirectory::new(&arch, 0o600);
        let r = verify(&dest, None, None).unwrap();
        assert!(r.intact(), "{:?}", r.findings);
        assert_eq!(r.findings.len(), 4);
        assert_eq!(r.segment_size, Some(MB));
        let plain: u64 = [1, 3]
            .map(|s| {
                std::fs::metadata(arch.join(segment_file_name(1, s, MB)))
                    .unwrap()
                    .len()
            })
            .iter()
            .sum();
        assert_eq!((r.compressed_files, r.wal_bytes), (2, 2 * MB + plain));
        assert!(r.stored_bytes < plain + MB / 10, "{}", r.stored_bytes);

        // A gap where the plain segment 3 was.
        std::fs::remove_file(arch.join(segment_file_name(1, 3, MB))).unwrap();
        let r = verify(&dest, None, None).unwrap();
        let gaps: Vec<_> = r
            .problems()
            .map(|f| (f.walfile.clone(), f.status))
            .collect();
        assert_eq!(gaps, vec![(segment_file_name(1, 3, MB), Status::Missing)]);

        // Compressed bytes damaged before their record was made: the record
        // agrees, the decompression does not.
        let name = format!("{}.zst", segment_file_name(1, 2, MB));
        let mut z = std::fs::read(arch.join(&name)).unwrap();
        let last = z.len() - 2;
        z[last] ^= 1;
        std::fs::write(arch.join(&name), &z).unwrap();
        dest.write_record(&name, &sha256(&z)).unwrap();
        let r = verify(&dest, None, None).unwrap();
        let bad: Vec<_> = r
            .problems()
            .filter(|f| f.status == Status::Corrupt)
            .collect();
        assert_eq!(bad.len(), 1, "{:?}", r.findings);
        assert_eq!(bad[0].walfile, name);
        assert!(
            bad[0].detail.contains("does not decompress"),
            "{}",
            bad[0].detail
        );
    }

    #[test]
    fn a_compressed_only_archive_gives_its_segment_size() {
        let (_d, arch) = archive(&[], &[], MB);
        for s in 5..8 {
            archive_compressed(&arch, 1, s, 2 * MB);
        }
        let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
        assert_eq!(r.segment_size, Some(2 * MB));
        assert!(r.intact(), "{:?}", r.findings);
        assert_eq!(r.findings.len(), 3);
    }

    #[test]
    fn finds_corruption_missing_checksums_and_gaps() {
        let (_d, arch) = archive(
            &[(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (1, 9)],
            &[],
            MB,
        );
        let f2 = arch.join(segment_file_name(1, 2, MB));
        let mut bytes = std::fs::read(&f2).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&f2, bytes).unwrap();
        std::fs::remove_file(arch.join(format!("{}.sha256", segment_file_name(1, 3, MB)))).unwrap();
        std::fs::remove_file(arch.join(segment_file_name(1, 5, MB))).unwrap();
        let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
        assert_eq!(
            problems(&r),
            vec![
                (segment_file_name(1, 2, MB), Status::Corrupt),
                (segment_file_name(1, 3, MB), Status::MissingChecksum),
                (segment_file_name(1, 5, MB), Status::Missing),
                (segment_file_name(1, 7, MB), Status::Missing),
            ]
        );
        assert!(r
            .findings
            .iter()
            .any(|f| f.detail.contains("2 files missing")));
        // A range that avoids the damage is intact.
        let from = WalFileName::parse(&segment_file_name(1, 4, MB)).unwrap();
        let to = WalFileName::parse(&segment_file_name(1, 4, MB)).unwrap();
        assert!(
            verify(&LocalDirectory::new(&arch, 0o600), Some(&from), Some(&to))
                .unwrap()
                .intact()
        );
    }

    #[test]
    fn follows_timeline_switches() {
        // Timeline 2 branched from 1 inside segment 3 (LSN 0/350000 with 1 MB
        // segments): segments 1-2 on TLI 1, 3-5 on TLI 2; TLI 1's own
        // segment 3 and later are not part of the chain.
        let hist = "1\t0/350000\tno recovery target specified\n";
        let (_d, arch) = archive(
            &[(1, 1), (1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (2, 5)],
            &[(2, hist)],
            MB,
        );
        let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
        assert!(r.intact(), "{:?}", problems(&r));
        assert_eq!(r.timelines, vec![1, 2]);
        std::fs::remove_file(arch.join(segment_file_name(2, 4, MB))).unwrap();
        let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
        assert_eq!(
            problems(&r),
            vec![(segment_file_name(2, 4, MB), Status::Missing)]
        );
        // Without the history file the chain cannot be followed: reported.
        std::fs::remove_file(arch.join("00000002.history")).unwrap();
        let r = verify(&LocalDirectory::new(&arch, 0o600), None, None).unwrap();
        assert!(problems(&r).contains(&("00000002.history".to_string(), Status::Missing)));
    }

    #[test]
    fn the_check_runs_between_files_and_while_hashing_one_and_stops_it() {
        let (_d, arch) = archive(&[(1, 1), (1, 2)], &[], MB);
        // One large file: 4 MB (64 KiB reads).
        let big = segment_file_name(1, 3, 4 * MB);
        let mut data = segment(1, 4 * MB, 3);
        data.resize(4 * MB as usize, 7);
        std::fs::write(arch.join(&big), &data).unwrap();
        let dest = LocalDirectory::new(&arch, 0o600);
        dest.write_record(&big, &sha256(&data)).unwrap();

        let mut calls = 0;
        let r = verify_with(&dest, None, None, &mut || {
            calls += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(r.findings.len(), 3);
        // At least one per file and one per 64 KiB of the large one.
        assert!(calls > 64, "{calls}");

        // Stopped in the middle of the large file (the last in order): its
        // error is returned as it is, and nothing more is read.
        let stop_at = calls - 10;
        let mut n = 0;
        let e = verify_with(&dest, None, None, &mut || {
            n += 1;
            if n == stop_at {
                Err(ArchiveError::new(
                    crate::support::error::ErrorKind::Internal,
                    "canceling statement",
                ))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(e.message, "canceling statement");
        assert_eq!(n, stop_at);
        // Stopped before any file.
        let e = verify_with(&dest, None, None, &mut || {
            Err(ArchiveError::new(
                crate::support::error::ErrorKind::Internal,
                "stop",
            ))
        })
        .unwrap_err();
        assert_eq!(e.message, "stop");
    }

    #[test]
    fn parses_history_files() {
        let h = "1\t0/3000000\tno recovery target specified\n\n2\t1/A0000028\tbefore 2020\n";
        assert_eq!(parse_history(h), vec![(1, 0x3000000), (2, 0x1_A000_0028)]);
    }

    #[test]
    fn checks_base_backups_objects_and_wal() {
        use crate::backup::object_name;
        use crate::destination::Destination;
        use crate::maintenance::retention::tests::target_backups::{
            archive_wal, put, set_age, take_backup,
        };
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        archive_wal(&d, 1..=5);
        take_backup(&d, "A", 2, 100, true);
        take_backup(&d, "B", 4, 200, true);
        let r = verify(&d, None, None).unwrap();
        assert!(r.intact(), "{:?}", r.findings);
        let ok: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.walfile.starts_with("backups/"))
            .map(|f| (f.walfile.as_str(), f.status))
            .collect();
        assert_eq!(ok.len(), 6, "{ok:?}");
        assert!(ok.contains(&("backups/A/base.tar.zst", Status::Ok)));
        assert!(ok.contains(&("backups/B/backup.json", Status::Ok)));

        // An incomplete backup just started: reported, not a problem.
        put(&d, &object_name("X", crate::backup::STARTED), b"");
        let r = verify(&d, None, None).unwrap();
        assert!(r.intact(), "{:?}", r.findings);
        let x = r
            .findings
            .iter()
            .find(|f| f.walfile == "backups/X/")
            .unwrap();
        assert_eq!(x.status, Status::InProgress);
        assert!(x.detail.contains("may be in progress"), "{}", x.detail);
        // Abandoned: a problem.
        set_age(tmp.path(), "X", crate::backup::INCOMPLETE_AFTER * 2);
        let r = verify(&d, None, None).unwrap();
        assert_eq!(
            problems(&r),
            [("backups/X/".to_string(), Status::Incomplete)]
        );
        d.remove_object(&object_name("X", crate::backup::STARTED))
            .unwrap();

        // A flipped byte, same size.
        let tar = tmp.path().join("backups/A/base.tar.zst");
        let mut bytes = std::fs::read(&tar).unwrap();
        bytes[7] ^= 1;
        std::fs::write(&tar, &bytes).unwrap();
        // A missing object; a grown one.
        std::fs::remove_file(tmp.path().join("backups/B/backup_manifest.zst")).unwrap();
        let man = tmp.path().join("backups/A/backup_manifest.zst");
        let mut bytes = std::fs::read(&man).unwrap();
        bytes.push(b'!');
        std::fs::write(&man, &bytes).unwrap();
        // WAL missing in B's range (and a gap the WAL check sees too).
        d.remove("000000010000000000000004").unwrap();
        let r = verify(&d, None, None).unwrap();
        assert!(!r.intact());
        let p = problems(&r);
        assert!(
            p.contains(&("backups/A/base.tar.zst".into(), Status::Corrupt)),
            "{p:?}"
        );
        assert!(
            p.contains(&("backups/A/backup_manifest.zst".into(), Status::Corrupt)),
            "{p:?}"
        );
        assert!(
            p.contains(&("backups/B/backup_manifest.zst".into(), Status::Missing)),
            "{p:?}"
        );
        let wal = r
            .problems()
            .find(|f| f.detail.contains("needed by base backup B"))
            .unwrap();
        assert_eq!(wal.walfile, "000000010000000000000004");
        assert_eq!(wal.status, Status::Missing);
        let flipped = r
            .findings
            .iter()
            .find(|f| f.walfile == "backups/A/base.tar.zst")
            .unwrap();
        assert!(
            flipped.detail.contains("SHA-256 mismatch"),
            "{}",
            flipped.detail
        );
        assert_eq!(p.len(), 4, "{p:?}");

        // A backup.json that does not parse.
        std::fs::write(tmp.path().join("backups/B/backup.json"), b"{").unwrap();
        let r = verify(&d, None, None).unwrap();
        let p = problems(&r);
        assert!(
            p.contains(&("backups/B/backup.json".into(), Status::Corrupt)),
            "{p:?}"
        );
    }

    #[test]
    fn a_gap_with_a_dropped_marker_is_reported_as_dropped_not_unexplained() {
        let (_d, arch) = archive(&[(1, 1), (1, 2), (1, 6), (1, 9)], &[], MB);
        let dest = LocalDirectory::new(&arch, 0o600);
        let mut b = crate::archiving::budget::BudgetState::default();
        for n in 3..=5 {
            b.record_drop(&segment_file_name(1, n, MB), MB, MB, 0, "down")
                .unwrap();
        }
        crate::archiving::budget::store_markers(&dest, &b.pending);
        let r = verify(&dest, None, None).unwrap();
        assert!(!r.intact(), "a dropped range is still a gap");
        let dropped: Vec<_> = r
            .problems()
            .map(|f| (f.walfile.clone(), f.status))
            .collect();
        assert_eq!(
            dropped,
            vec![
                (segment_file_name(1, 3, MB), Status::Dropped),
                (segment_file_name(1, 7, MB), Status::Missing),
            ]
        );
        let f = r.problems().next().unwrap();
        assert!(
            f.detail.starts_with(
                "dropped by walarch.max_backlog at 2000-01-01 00:00:00 UTC: 3 files missing"
            ),
            "{}",
            f.detail
        );
        assert_eq!(f.status.as_str(), "dropped");
    }

    mod encrypted {
        use super::*;
        use crate::destination::compressing::{Compressing, Sealing};
        use crate::destination::local_directory::format_record;
        use crate::destination::sealed::tests::keys;
        use crate::destination::sealed::Recipients;
        use std::path::Path;
        use std::sync::Arc;

        /// Archives `name` with `data` through the archive view, in the form
        /// `form` asks for (encrypted to `r`), as the archiver does.
        fn store(arch: &Path, r: &Recipients, name: &str, data: &[u8], form: Form) {
            let wal = arch.parent().unwrap().join("wal");
            std::fs::create_dir_all(&wal).unwrap();
            std::fs::write(wal.join(name), data).unwrap();
            let inner = LocalDirectory::new(arch, 0o600);
            let sealing = if form.encrypted {
                Sealing::To(Arc::new(r.clone()))
            } else {
                Sealing::Off
            };
            let view = Compressing::new(&inner, form.compressed.then_some(1)).sealing(sealing);
            archive_file(&view, name, &wal.join(name)).unwrap();
        }

        fn full_segment(t: u32, s: u64, size: u64) -> Vec<u8> {
            let mut data = segment(t, size, s as u8);
            data.resize(size as usize, 0);
            data
        }

        fn store_segment(
            arch: &Path,
            r: &Recipients,
            t: u32,
            s: u64,
            size: u64,
            form: Form,
        ) -> String {
            let name = segment_file_name(t, s, size);
            store(arch, r, &name, &full_segment(t, s, size), form);
            crate::wal::walname::form_name(&name, form).unwrap()
        }

        fn new_archive() -> (tempfile::TempDir, std::path::PathBuf) {
            let d = tempfile::tempdir().unwrap();
            let arch = d.path().join("arch");
            std::fs::create_dir(&arch).unwrap();
            (d, arch)
        }

        fn statuses(r: &Report) -> Vec<(String, Status)> {
            r.findings
                .iter()
                .map(|f| (f.walfile.clone(), f.status))
                .collect()
        }

        #[test]
        fn a_mixed_archive_verifies_with_and_without_identity() {
            let (_d, arch) = new_archive();
            let (r, ids) = keys();
            let stored: Vec<String> = Form::ALL
                .into_iter()
                .zip(1..)
                .map(|(form, s)| store_segment(&arch, &r, 1, s, MB, form))
                .collect();
            let dest = LocalDirectory::new(&arch, 0o600);

            // Without identity (as the server runs it): intact, and the
            // encrypted files are said to be checked as stored bytes only.
            let rep = verify(&dest, None, None).unwrap();
            assert!(rep.intact(), "{:?}", rep.findings);
            assert_eq!(rep.segment_size, Some(MB));
            assert_eq!(
                statuses(&rep),
                vec![
                    (stored[0].clone(), Status::Ok),
                    (stored[1].clone(), Status::Ok),
                    (stored[2].clone(), Status::Unchecked),
                    (stored[3].clone(), Status::Unchecked),
                ]
            );
            for f in rep
                .findings
                .iter()
                .filter(|f| f.status == Status::Unchecked)
            {
                assert_eq!(f.detail, NOT_DECRYPTED);
            }
            assert_eq!((rep.encrypted_unchecked, rep.encrypted_files), (2, 0));
            assert_eq!(Status::Unchecked.as_str(), "unchecked");

            // With it: every file restored as restore would.
            let rep = verify_opening(&dest, Some(&ids), None, None, &mut || Ok(())).unwrap();
            assert!(rep.intact(), "{:?}", rep.findings);
            assert!(rep.findings.iter().all(|f| f.status == Status::Ok));
            assert_eq!((rep.encrypted_unchecked, rep.encrypted_files), (0, 2));
            assert_eq!((rep.compressed_files, rep.wal_bytes), (2, 4 * MB));

            // With another key: the encrypted files cannot be restored.
            let (_, other) = keys();
            let rep = verify_opening(&dest, Some(&other), None, None, &mut || Ok(())).unwrap();
            assert_eq!(
                problems(&rep),
                vec![
                    (stored[2].clone(), Status::NoKey),
                    (stored[3].clone(), Status::NoKey),
                ]
            );
            assert!(rep
                .problems()
                .all(|f| f.detail.contains("none of the identities given")));

            // A gap where an encrypted segment was.
            dest.remove(&stored[2]).unwrap();
            let rep = verify(&dest, None, None).unwrap();
            assert_eq!(
                problems(&rep),
                vec![(segment_file_name(1, 3, MB), Status::Missing)]
            );
        }

        #[test]
        fn an_encrypted_only_archive_gives_its_segment_size() {
            let (_d, arch) = new_archive();
            let (r, ids) = keys();
            for s in 5..9 {
                let form = if s % 2 == 0 { Form::AGE } else { Form::ZST_AGE };
                store_segment(&arch, &r, 1, s, 2 * MB, form);
            }
            let dest = LocalDirectory::new(&arch, 0o600);
            let rep = verify(&dest, None, None).unwrap();
            assert_eq!(rep.segment_size, Some(2 * MB));
            assert!(rep.intact(), "{:?}", rep.findings);
            assert_eq!(rep.encrypted_unchecked, 4);
            let rep = verify_opening(&dest, Some(&ids), None, None, &mut || Ok(())).unwrap();
            assert_eq!(rep.segment_size, Some(2 * MB));
            assert_eq!(rep.encrypted_files, 4);
            assert!(rep.intact(), "{:?}", rep.findings);
        }

        #[test]
        fn damage_to_an_encrypted_file_is_found_as_far_as_the_key_allows() {
            let (_d, arch) = new_archive();
            let (r, ids) = keys();
            let name = store_segment(&arch, &r, 1, 1, MB, Form::ZST_AGE);
            let dest = LocalDirectory::new(&arch, 0o600);
            let original = dest.recorded_original(&name).unwrap().unwrap();
            let mut bytes = std::fs::read(arch.join(&name)).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x20;
            std::fs::write(arch.join(&name), &bytes).unwrap();
            // Damaged after archiving: the stored bytes' record catches it,
            // key or no key.
            for ids in [None, Some(&ids)] {
                let rep = verify_opening(&dest, ids, None, None, &mut || Ok(())).unwrap();
                assert_eq!(problems(&rep), vec![(name.clone(), Status::Corrupt)]);
                assert!(rep.findings[0].detail.contains("SHA-256 mismatch"));
            }
            // Damaged before the record was made: only the key can tell.
            std::fs::write(
                arch.join(format!("{name}.sha256")),
                format_record(&sha256(&bytes), &name, Some(&original)),
            )
            .unwrap();
            let rep = verify(&dest, None, None).unwrap();
            assert!(rep.intact());
            assert_eq!(statuses(&rep), vec![(name.clone(), Status::Unchecked)]);
            let rep = verify_opening(&dest, Some(&ids), None, None, &mut || Ok(())).unwrap();
            assert_eq!(problems(&rep), vec![(name.clone(), Status::Corrupt)]);
            assert!(
                rep.findings[0]
                    .detail
                    .contains("matches its checksum record but"),
                "{}",
                rep.findings[0].detail
            );
        }

        #[test]
        fn an_encrypted_history_is_followed_with_the_key_and_said_without() {
            // Timeline 2 branched from 1 inside segment 3 (1 MB segments).
            let (_d, arch) = new_archive();
            let (r, ids) = keys();
            for (t, s) in [(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)] {
                store_segment(&arch, &r, t, s, MB, Form::ZST_AGE);
            }
            store(
                &arch,
                &r,
                "00000002.history",
                b"1\t0/350000\tno recovery target specified\n",
                Form::AGE,
            );
            assert!(arch.join("00000002.history.age").is_file());
            let dest = LocalDirectory::new(&arch, 0o600);
            let rep = verify_opening(&dest, Some(&ids), None, None, &mut || Ok(())).unwrap();
            assert!(rep.intact(), "{:?}", rep.findings);
            assert_eq!(rep.timelines, vec![1, 2]);
            // A hole on timeline 1 is seen through the history.
            dest.remove(&format!("{}.zst.age", segment_file_name(1, 2, MB)))
                .unwrap();
            let rep = verify_opening(&dest, Some(&ids), None, None, &mut || Ok(())).unwrap();
            assert_eq!(
                problems(&rep),
                vec![(segment_file_name(1, 2, MB), Status::Missing)]
            );

            // Without the key the ancestry is not followed, and that is said
            // on the history file's finding.
            let rep = verify(&dest, None, None).unwrap();
            assert_eq!(rep.timelines, vec![2]);
            let h = rep
                .findings
                .iter()
                .find(|f| f.walfile == "00000002.history.age")
                .unwrap();
            assert_eq!(h.status, Status::Unchecked);
            assert!(h.detail.starts_with(NOT_DECRYPTED), "{}", h.detail);
            assert!(
                h.detail.contains("ancestry was not followed"),
                "{}",
                h.detail
            );
            assert!(rep.intact(), "{:?}", rep.findings);
        }
    }
}
