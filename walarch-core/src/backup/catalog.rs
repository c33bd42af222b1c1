//! The base backups stored under `backups/`, as retention and verify see
//! them: complete ones (their `backup.json` read), incomplete ones (objects
//! under a label without `backup.json`: in progress, or abandoned by a
//! crash), and whatever else is there.

use std::collections::BTreeMap;
use std::io::Read;
use std::time::{Duration, SystemTime};

use super::{BackupInfo, BACKUPS_DIR, BACKUP_JSON, STARTED};
use crate::destination::{Destination, ObjectEntry};
use crate::support::error::{os_message, ArchiveError, ErrorKind};

/// An incomplete backup none of whose objects changed for this long is
/// abandoned (a crash, a killed pg_basebackup), and a `backup.started`
/// younger than this means a backup may be in progress. A day: a backup of
/// several TB streams one archive for hours, its early objects untouched
/// meanwhile. The backup target checks every object it stored is still
/// there before it writes `backup.json`, so a removal of a slower backup
/// fails it rather than leaving it with objects missing.
pub const INCOMPLETE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `backup.json` lists a few objects; anything this large is not one.
const MAX_BACKUP_JSON: u64 = 64 << 20;
/// `backup.started` is one line.
const MAX_STARTED: u64 = 64 << 10;

/// A backup whose `backup.json` was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBackup {
    pub label: String,
    pub info: BackupInfo,
    /// Every object under its folder, `backup.json` included.
    pub objects: Vec<ObjectEntry>,
}

/// A label whose `backup.json` is there but cannot be read as one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub label: String,
    pub error: String,
    pub objects: Vec<ObjectEntry>,
}

/// A label with objects but no `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    pub label: String,
    pub objects: Vec<ObjectEntry>,
    /// Where it started, as its `backup.started` records it (`None`: no
    /// `backup.started`, or one without a readable start).
    pub start: Option<ClaimedStart>,
}

/// The start of a backup as `backup.started` records it: the start LSN
/// and, when recorded, the start timeline. PostgreSQL archives a `.backup`
/// history file for the backup at its stop, before `backup.json` is
/// stored: a `.backup` file with this start stands for this (incomplete)
/// backup, not for a backup that can be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedStart {
    pub lsn: u64,
    pub timeline: Option<u32>,
}

impl ClaimedStart {
    /// Parses `backup.started` (`{"label": …, "start_lsn": "X/X", …}`,
    /// optionally with `"start_timeline": N`).
    pub fn parse(bytes: &[u8]) -> Option<ClaimedStart> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        let lsn = crate::backup::restore::parse_lsn(v.get("start_lsn")?.as_str()?)?;
        let timeline = ["start_timeline", "start_tli"]
            .iter()
            .find_map(|k| v.get(*k)?.as_u64())
            .and_then(|t| u32::try_from(t).ok());
        Some(ClaimedStart { lsn, timeline })
    }

    /// Whether a backup starting at `lsn` on `timeline` is this one.
    pub fn matches(&self, lsn: u64, timeline: u32) -> bool {
        self.lsn == lsn && self.timeline.is_none_or(|t| t == timeline)
    }
}

impl Incomplete {
    /// When its `backup.started` was stored (`None`: absent, or its time
    /// unknown — see `claimed`).
    fn started(&self) -> Option<&ObjectEntry> {
        let name = super::object_name(&self.label, STARTED);
        self.objects.iter().find(|o| o.name == name)
    }

    /// Whether a backup may be writing it now: its `backup.started` is
    /// younger than `INCOMPLETE_AFTER` (or of unknown age).
    pub fn in_progress(&self, now: SystemTime) -> bool {
        self.started().is_some_and(|o| recent(o, now))
    }

    /// Whether nothing of it changed for `INCOMPLETE_AFTER`: every object is
    /// older (one of unknown age counts as recent).
    pub fn abandoned(&self, now: SystemTime) -> bool {
        !self.objects.iter().any(|o| recent(o, now))
    }

    /// The newest time among its objects, for messages.
    pub fn newest(&self) -> Option<SystemTime> {
        self.objects.iter().filter_map(|o| o.stored_at).max()
    }
}

fn recent(o: &ObjectEntry, now: SystemTime) -> bool {
    o.stored_at.is_none_or(|t| {
        now.duration_since(t)
            .map_or(true, |age| age <= INCOMPLETE_AFTER)
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// By label.
    pub complete: Vec<StoredBackup>,
    pub unreadable: Vec<Unreadable>,
    pub incomplete: Vec<Incomplete>,
    /// Objects under `backups/` outside any label's folder: left alone.
    pub stray: Vec<ObjectEntry>,
}

impl Catalog {
    /// Lists `backups/` in `dest` and reads each `backup.json`. A
    /// `backup.json` that vanished meanwhile (an expiry running) makes its
    /// label incomplete; one that cannot be read is an error.
    pub fn read(dest: &dyn Destination) -> Result<Catalog, ArchiveError> {
        let prefix = format!("{BACKUPS_DIR}/");
        let mut labels: BTreeMap<String, Vec<ObjectEntry>> = BTreeMap::new();
        let mut catalog = Catalog::default();
        for o in dest.objects_under(&prefix)? {
            let rest = &o.name[prefix.len().min(o.name.len())..];
            match rest.split_once('/') {
                Some((label, _)) if !label.is_empty() => {
                    labels.entry(label.to_string()).or_default().push(o)
                }
                _ => catalog.stray.push(o),
            }
        }
        for (label, objects) in labels {
            let json = super::object_name(&label, BACKUP_JSON);
            // No backup.json (listed, or still there when opened): incomplete.
            let opened = if objects.iter().any(|o| o.name == json) {
                dest.open_object(&json)?
            } else {
                None
            };
            let Some(r) = opened else {
                let start = read_start(dest, &label, &objects)?;
                catalog.incomplete.push(Incomplete {
                    label,
                    objects,
                    start,
                });
                continue;
            };
            let mut bytes = vec![];
            r.take(MAX_BACKUP_JSON)
                .read_to_end(&mut bytes)
                .map_err(|e| {
                    ArchiveError::new(
                        ErrorKind::Io,
                        format!(
                            "could not read \"{}\": {}",
                            dest.location(&json),
                            os_message(&e)
                        ),
                    )
                })?;
            match BackupInfo::from_json(&bytes) {
                Ok(info) if info.label != label => catalog.unreadable.push(Unreadable {
                    error: format!(
                        "backup.json is of backup \"{}\", not of \"{label}\"",
                        info.label
                    ),
                    label,
                    objects,
                }),
                Ok(info) => catalog.complete.push(StoredBackup {
                    label,
                    info,
                    objects,
                }),
                Err(error) => catalog.unreadable.push(Unreadable {
                    label,
                    error,
                    objects,
                }),
            }
        }
        Ok(catalog)
    }

    /// The first incomplete backup that may be in progress.
    pub fn in_progress(&self, now: SystemTime) -> Option<&Incomplete> {
        self.incomplete.iter().find(|i| i.in_progress(now))
    }
}

/// The start recorded in `label`'s `backup.started`, if it has one that
/// can be read (one that vanished meanwhile: `None`).
fn read_start(
    dest: &dyn Destination,
    label: &str,
    objects: &[ObjectEntry],
) -> Result<Option<ClaimedStart>, ArchiveError> {
    let name = super::object_name(label, STARTED);
    if !objects.iter().any(|o| o.name == name) {
        return Ok(None);
    }
    let Some(r) = dest.open_object(&name)? else {
        return Ok(None);
    };
    let mut bytes = vec![];
    r.take(MAX_STARTED).read_to_end(&mut bytes).map_err(|e| {
        ArchiveError::new(
            ErrorKind::Io,
            format!(
                "could not read \"{}\": {}",
                dest.location(&name),
                os_message(&e)
            ),
        )
    })?;
    Ok(ClaimedStart::parse(&bytes))
}

/// The order to remove a backup's objects in: `backup.json` first (from
/// then on it is no longer listed complete, so a crash midway never leaves
/// a listed backup with objects missing), `backup.started` last (the label
/// stays claimed until its folder is empty), the rest by name between.
pub fn removal_order(label: &str, objects: &[ObjectEntry]) -> Vec<String> {
    let json = super::object_name(label, BACKUP_JSON);
    let started = super::object_name(label, STARTED);
    let rank = |n: &str| {
        if n == json {
            0
        } else if n == started {
            2
        } else {
            1
        }
    };
    let mut names: Vec<String> = objects.iter().map(|o| o.name.clone()).collect();
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::object_name;
    use crate::destination::local_directory::LocalDirectory;

    fn put(d: &dyn Destination, name: &str, data: &[u8]) {
        let mut w = d.create_object(name).unwrap();
        w.write(data).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn reads_complete_incomplete_unreadable_and_stray() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let mut info = crate::backup::info::tests::sample();
        info.label = "A".into();
        put(&d, &object_name("A", STARTED), b"");
        put(&d, &object_name("A", "base.tar.zst"), b"x");
        put(
            &d,
            &object_name("A", BACKUP_JSON),
            info.to_json().as_bytes(),
        );
        put(&d, &object_name("B", STARTED), b"");
        put(&d, &object_name("C", BACKUP_JSON), b"{not json");
        put(
            &d,
            &object_name("D", BACKUP_JSON),
            info.to_json().as_bytes(),
        );
        put(&d, "backups/loose", b"?");
        let c = Catalog::read(&d).unwrap();
        assert_eq!(c.complete.len(), 1);
        assert_eq!(c.complete[0].label, "A");
        assert_eq!(c.complete[0].objects.len(), 3);
        assert!(c.complete[0].objects.iter().all(|o| o.stored_at.is_some()));
        assert_eq!(c.incomplete.len(), 1);
        assert_eq!(c.incomplete[0].label, "B");
        let bad: Vec<_> = c.unreadable.iter().map(|u| u.label.as_str()).collect();
        assert_eq!(bad, ["C", "D"]);
        assert!(c.unreadable[1].error.contains("not of \"D\""));
        assert_eq!(c.stray.len(), 1);
        // Just started: in progress, not abandoned.
        let now = SystemTime::now();
        assert!(c.in_progress(now).is_some());
        assert!(!c.incomplete[0].abandoned(now));
        let later = now + INCOMPLETE_AFTER * 2;
        assert!(c.in_progress(later).is_none());
        assert!(c.incomplete[0].abandoned(later));

        let order = removal_order("A", &c.complete[0].objects);
        assert_eq!(
            order,
            [
                "backups/A/backup.json",
                "backups/A/base.tar.zst",
                "backups/A/backup.started"
            ]
        );
    }

    #[test]
    fn an_encrypted_backup_is_read_without_a_key_and_removed_whole() {
        use crate::backup::fixture::{store_backup, Options};
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let (r, _) = crate::destination::sealed::tests::keys();
        let opts = Options {
            sealed_to: Some(&r),
            ..Default::default()
        };
        store_backup(&d, tmp.path(), "E", &tmp.path().join("ts"), opts);
        let c = Catalog::read(&d).unwrap();
        assert_eq!(c.complete.len(), 1);
        assert_eq!(
            c.complete[0].info.encryption.as_ref().unwrap().recipients,
            1
        );
        // What retention removes: every object listed, the .age ones too,
        // backup.json first.
        let order = removal_order("E", &c.complete[0].objects);
        assert_eq!(
            order,
            [
                "backups/E/backup.json",
                "backups/E/16385.tar.zst.age",
                "backups/E/backup_manifest.zst.age",
                "backups/E/base.tar.zst.age",
            ]
        );
        for n in &order {
            d.remove_object(n).unwrap();
        }
        assert!(d.objects_under("backups/E/").unwrap().is_empty());
    }
}
