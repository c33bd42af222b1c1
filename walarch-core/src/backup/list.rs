//! `walarch backup list`: the backups in an archive, and whether the WAL each
//! needs to become consistent is there.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::archiving::budget::{markers, Marker};
use crate::backup::{object_name, BackupInfo, BACKUPS_DIR, BACKUP_JSON};
use crate::destination::Destination;
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::walname::{segment_file_name, stored_form, WalFileKind, WalFileName};

/// `backup.json` is small; anything much larger is not one.
const MAX_INFO_BYTES: u64 = 16 << 20;

/// Whether the WAL from a backup's start to its stop is in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalStatus {
    Complete,
    /// The segments missing, in order.
    Missing(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct ListedBackup {
    pub info: BackupInfo,
    pub wal: WalStatus,
    /// Ranges `walarch.max_backlog` dropped after this backup's stop (on its
    /// stop timeline, or a later one): PITR from it cannot pass them, so it
    /// cannot reach the present.
    pub dropped_after: Vec<Marker>,
}

/// A label with objects but no (readable) `backup.json`: never restorable.
#[derive(Debug, Clone)]
pub struct IncompleteBackup {
    pub label: String,
    pub objects: usize,
    pub stored_bytes: u64,
    /// Why it is not complete: no `backup.json`, or why it cannot be read.
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Oldest first.
    pub complete: Vec<ListedBackup>,
    /// By label.
    pub incomplete: Vec<IncompleteBackup>,
}

impl Listing {
    /// The newest complete backup.
    pub fn latest(&self) -> Option<&ListedBackup> {
        self.complete.last()
    }
}

/// Reads `backups/LABEL/backup.json`: `None` when there is none, an inner
/// error when it cannot be taken for this backup's record.
pub fn read_info(
    dest: &dyn Destination,
    label: &str,
) -> Result<Option<Result<BackupInfo, String>>, ArchiveError> {
    let name = object_name(label, BACKUP_JSON);
    let Some(r) = dest.open_object(&name)? else {
        return Ok(None);
    };
    let mut text = Vec::new();
    r.take(MAX_INFO_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| {
            ArchiveError::new(
                ErrorKind::Io,
                format!("could not read \"{}\": {e}", dest.location(&name)),
            )
        })?;
    let info = match BackupInfo::from_json(&text) {
        Ok(i) => i,
        Err(e) => return Ok(Some(Err(e))),
    };
    if info.label != label {
        return Ok(Some(Err(format!(
            "backup.json describes backup \"{}\", not \"{label}\"",
            info.label
        ))));
    }
    Ok(Some(Ok(info)))
}

/// Every backup under `backups/`: the complete ones oldest first, with the
/// state of their WAL; the others as incomplete.
pub fn list_backups(dest: &dyn Destination) -> Result<Listing, ArchiveError> {
    let mut labels: BTreeMap<String, (usize, u64, bool)> = BTreeMap::new();
    for o in dest.objects_under(&format!("{BACKUPS_DIR}/"))? {
        let rest = &o.name[BACKUPS_DIR.len() + 1..];
        let Some((label, file)) = rest.split_once('/') else {
            continue;
        };
        let e = labels.entry(label.to_string()).or_default();
        e.0 += 1;
        e.1 += o.size;
        e.2 |= file == BACKUP_JSON;
    }
    let mut listing = Listing::default();
    let mut wal: Option<HashSet<String>> = None;
    let mut dropped: Option<Vec<Marker>> = None;
    for (label, (objects, stored_bytes, has_info)) in labels {
        let incomplete = |reason: String| IncompleteBackup {
            label: label.clone(),
            objects,
            stored_bytes,
            reason,
        };
        if !has_info {
            listing
                .incomplete
                .push(incomplete(format!("no {BACKUP_JSON}")));
            continue;
        }
        let info = match read_info(dest, &label)? {
            Some(Ok(i)) => i,
            None => {
                listing
                    .incomplete
                    .push(incomplete(format!("no {BACKUP_JSON}")));
                continue;
            }
            // One unreadable record must not hide the other backups.
            Some(Err(e)) => {
                listing.incomplete.push(incomplete(e));
                continue;
            }
        };
        if wal.is_none() {
            wal = Some(stored_wal(dest)?);
        }
        if dropped.is_none() {
            dropped = Some(markers(dest)?);
        }
        let status = wal_status(&info, wal.as_ref().expect("set above"));
        let dropped_after = dropped_after(&info, dropped.as_deref().unwrap_or_default());
        listing.complete.push(ListedBackup {
            info,
            wal: status,
            dropped_after,
        });
    }
    listing.complete.sort_by(|a, b| {
        (&a.info.start_time, &a.info.stop_time, &a.info.label).cmp(&(
            &b.info.start_time,
            &b.info.stop_time,
            &b.info.label,
        ))
    });
    Ok(listing)
}

/// The dropped ranges after `info`'s stop: on its stop timeline past its
/// stop file, or on a later timeline.
pub fn dropped_after(info: &BackupInfo, markers: &[Marker]) -> Vec<Marker> {
    markers
        .iter()
        .filter(|m| {
            m.timeline > info.stop_timeline
                || (m.timeline == info.stop_timeline && m.first.as_str() > info.stop_wal.as_str())
        })
        .cloned()
        .collect()
}

/// The WAL files stored, by their plain names (whatever their form:
/// compressed, encrypted or both).
pub fn stored_wal<T: Destination + ?Sized>(dest: &T) -> Result<HashSet<String>, ArchiveError> {
    Ok(dest
        .list()?
        .iter()
        .filter_map(|n| stored_form(n).map(|(w, _)| w.to_string()))
        .collect())
}

/// The segments a backup needs to become consistent, start to stop. A
/// segment between the two on any timeline from the start's to the stop's
/// will do (a backup taken on a standby can cross a promotion).
pub fn needed_segments(info: &BackupInfo) -> Result<Vec<Vec<String>>, String> {
    let seg = |w: &str| {
        WalFileName::parse(w)
            .filter(|n| n.kind == WalFileKind::Segment)
            .ok_or_else(|| format!("backup.json names \"{w}\", which is not a WAL segment"))
    };
    let size = info.wal_segment_size;
    if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
        return Err(format!(
            "backup.json has an invalid WAL segment size {size}"
        ));
    }
    let (start, stop) = (seg(&info.start_wal)?, seg(&info.stop_wal)?);
    let (a, b) = (start.segno(size), stop.segno(size));
    if b < a || stop.timeline < start.timeline || b - a > 1 << 20 {
        return Err(format!(
            "backup.json's WAL range {} to {} is not valid",
            info.start_wal, info.stop_wal
        ));
    }
    Ok((a..=b)
        .map(|s| {
            (start.timeline..=stop.timeline)
                .rev()
                .map(|tli| segment_file_name(tli, s, size))
                .collect()
        })
        .collect())
}

/// Above this many segments, one listing of the archive is cheaper than a
/// lookup per segment.
const LOOKUPS_AT_MOST: usize = 32;

/// The segments of `needed` (each: the names that would do, one per
/// timeline, as `needed_segments` gives them) of which no name is stored, in any form: a
/// lookup per name, or one listing for a long range.
pub fn unstored_segments<T: Destination + ?Sized>(
    dest: &T,
    needed: Vec<Vec<String>>,
) -> Result<Vec<Vec<String>>, ArchiveError> {
    if needed.len() > LOOKUPS_AT_MOST {
        let stored = stored_wal(dest)?;
        return Ok(needed
            .into_iter()
            .filter(|any| !any.iter().any(|w| stored.contains(w)))
            .collect());
    }
    let mut out = Vec::new();
    for any in needed {
        let mut found = false;
        for w in &any {
            // In any form (compressed, encrypted): one lookup.
            let forms: Vec<String> = crate::wal::walname::Form::ALL
                .into_iter()
                .filter_map(|f| crate::wal::walname::form_name(w, f))
                .collect();
            if dest.sizes_of(&forms)?.iter().any(Option::is_some) {
                found = true;
                break;
            }
        }
        if !found {
            out.push(any);
        }
    }
    Ok(out)
}

/// Whether every segment `info` needs is among `stored` (plain names).
pub fn wal_status(info: &BackupInfo, stored: &HashSet<String>) -> WalStatus {
    match needed_segments(info) {
        Ok(needed) => {
            let missing: Vec<String> = needed
                .into_iter()
                .filter(|any| !any.iter().any(|w| stored.contains(w)))
                .map(|mut any| any.pop().expect("one timeline at least"))
                .collect();
            if missing.is_empty() {
                WalStatus::Complete
            } else {
                WalStatus::Missing(missing)
            }
        }
        Err(e) => WalStatus::Missing(vec![e]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::fixture::sample;
    use crate::destination::local_directory::LocalDirectory;

    fn put(d: &LocalDirectory, name: &str, data: &[u8]) {
        let mut w = d.create_object(name).unwrap();
        w.write(data).unwrap();
        w.finish().unwrap();
    }

    fn info(label: &str, start: &str, start_wal: &str, stop_wal: &str) -> BackupInfo {
        let mut i = sample();
        i.label = label.into();
        i.start_time = start.into();
        i.stop_time = start.into();
        i.start_wal = start_wal.into();
        i.stop_wal = stop_wal.into();
        i
    }

    #[test]
    fn backups_before_a_dropped_range_cannot_reach_the_present() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let before = info(
            "before",
            "2026-12-05T10:00:00Z",
            "000000010000000000000002",
            "000000010000000000000002",
        );
        let after = info(
            "after",
            "2026-12-06T10:00:00Z",
            "000000010000000000000009",
            "000000010000000000000009",
        );
        for i in [&before, &after] {
            put(
                &d,
                &object_name(&i.label, BACKUP_JSON),
                i.to_json().as_bytes(),
            );
            d.store_new_bytes(&i.stop_wal, b"w").unwrap();
        }
        d.store_new_bytes(
            "DROPPED.000000010000000000000005-000000010000000000000007",
            b"m",
        )
        .unwrap();
        let l = list_backups(&d).unwrap();
        let by = |label: &str| l.complete.iter().find(|b| b.info.label == label).unwrap();
        assert_eq!(by("before").dropped_after.len(), 1);
        assert_eq!(
            by("before").dropped_after[0].first,
            "000000010000000000000005"
        );
        assert!(by("after").dropped_after.is_empty());
        // A later timeline's range blocks every backup of an earlier one.
        let m = Marker::parse("DROPPED.00000002000000000000000A-00000002000000000000000B").unwrap();
        assert_eq!(
            dropped_after(&after.clone(), std::slice::from_ref(&m)).len(),
            1
        );
    }

    #[test]
    fn lists_complete_oldest_first_with_wal_state_and_incomplete_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let newer = info(
            "b-newer",
            "2026-12-06T10:00:00Z",
            "000000010000000000000005",
            "000000010000000000000007",
        );
        let older = info(
            "z-older",
            "2026-12-05T10:00:00Z",
            "000000010000000000000002",
            "000000010000000000000003",
        );
        for i in [&newer, &older] {
            put(&d, &object_name(&i.label, "base.tar.zst"), b"x");
            put(
                &d,
                &object_name(&i.label, BACKUP_JSON),
                i.to_json().as_bytes(),
            );
        }
        put(&d, "backups/half/base.tar.zst", b"xyz");
        put(&d, &object_name("broken", BACKUP_JSON), b"{");
        // WAL: 2 and 3 plain / compressed, 5 and 7 but not 6.
        for w in [
            "000000010000000000000002",
            "000000010000000000000003.zst",
            "000000010000000000000005",
            "000000010000000000000007.zst",
        ] {
            std::fs::write(tmp.path().join(w), b"w").unwrap();
        }
        let l = list_backups(&d).unwrap();
        let labels: Vec<_> = l.complete.iter().map(|b| b.info.label.as_str()).collect();
        assert_eq!(labels, ["z-older", "b-newer"]);
        assert_eq!(l.complete[0].wal, WalStatus::Complete);
        assert_eq!(
            l.complete[1].wal,
            WalStatus::Missing(vec!["000000010000000000000006".into()])
        );
        assert_eq!(l.latest().unwrap().info.label, "b-newer");
        let inc: Vec<_> = l
            .incomplete
            .iter()
            .map(|b| (b.label.as_str(), b.objects, b.stored_bytes))
            .collect();
        assert_eq!(inc, [("broken", 1, 1), ("half", 1, 3)]);
        assert!(l.incomplete[0].reason.contains("not valid"), "{:?}", l);
    }

    #[test]
    fn segments_across_a_timeline_switch() {
        let mut i = info(
            "x",
            "t",
            "00000001000000000000000A",
            "00000002000000000000000B",
        );
        let n = needed_segments(&i).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[0],
            ["00000002000000000000000A", "00000001000000000000000A"]
        );
        let stored: HashSet<String> = ["00000001000000000000000A", "00000002000000000000000B"]
            .map(String::from)
            .into();
        assert_eq!(wal_status(&i, &stored), WalStatus::Complete);
        i.stop_wal = "000000010000000000000009".into();
        assert!(needed_segments(&i).is_err());
    }

    /// The WAL a backup needs counts as stored in any form: compressed,
    /// encrypted or both (by lookups for a short range, by the listing for
    /// a long one).
    #[test]
    fn wal_in_any_form_counts_as_stored() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let names: Vec<String> = (1..=40u64)
            .map(|s| segment_file_name(1, s, 16 << 20))
            .collect();
        // Segment n (1-based) in form n % 5: plain, .zst, .age, .zst.age,
        // or (0) missing.
        let suffixes = ["", "", ".zst", ".age", ".zst.age"];
        for (i, n) in names.iter().enumerate() {
            let k = (i + 1) % 5;
            if k == 0 {
                continue;
            }
            d.store_new_bytes(&format!("{n}{}", suffixes[k]), b"x")
                .unwrap();
        }
        let missing: Vec<String> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % 5 == 0)
            .map(|(_, n)| n.clone())
            .collect();
        for range in [5usize, 40] {
            let needed: Vec<Vec<String>> = names[..range].iter().map(|n| vec![n.clone()]).collect();
            let unstored: Vec<String> = unstored_segments(&d, needed)
                .unwrap()
                .into_iter()
                .flatten()
                .collect();
            let expect: Vec<String> = missing
                .iter()
                .filter(|m| names[..range].contains(m))
                .cloned()
                .collect();
            assert_eq!(unstored, expect, "{range} segments");
        }
        let stored = stored_wal(&d).unwrap();
        assert_eq!(stored.len(), 32);
        assert!(stored.contains(&names[3]), "the .zst.age form counts");
    }
}
