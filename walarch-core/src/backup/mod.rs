//! Base backups kept in the archive, next to the WAL they need.
//!
//! Layout, under the destination's root (directory or bucket prefix):
//!
//! ```text
//! backups/LABEL/backup.started      claimed first, create-only: the label is ours
//! backups/LABEL/base.tar.zst        one object per tar PostgreSQL sends
//! backups/LABEL/16385.tar.zst       (a tablespace, by OID)
//! backups/LABEL/backup_manifest.zst the server's manifest
//! backups/LABEL/backup.json         written last: a backup is complete only with it
//! ```
//!
//! An object is stored zstd-compressed (`.zst` added) unless PostgreSQL
//! already compressed it (`--compress=server-…`: the name ends in `.gz`,
//! `.lz4` or `.zst`), then, when the server encrypts (`walarch.encryption_recipients`),
//! encrypted with age (`.age` added: `base.tar.zst.age`). `backup.json`
//! and `backup.started` are never encrypted: listing, retention and checking
//! the stored bytes need no key. `backup.json` ([`BackupInfo`]) names every object with
//! its sizes and the SHA-256 of the stored bytes: it is the record restore
//! and verify check against. Anything under a label without `backup.json` is
//! an incomplete backup: never listed as restorable, removed by whoever
//! aborts it or by retention.

pub mod catalog;
pub mod extract;
#[cfg(test)]
mod fixture;
pub mod info;
pub mod list;
pub mod manifest;
pub mod restore;
pub mod writer;

pub use catalog::{Catalog, Incomplete, StoredBackup, INCOMPLETE_AFTER};
pub use info::{BackupInfo, BackupObject, ObjectKind, Tablespace};
pub use writer::{BackupStart, BackupWriter};

/// The folder (key prefix) of every backup.
pub const BACKUPS_DIR: &str = "backups";
/// Written last; its presence makes the backup complete.
pub const BACKUP_JSON: &str = "backup.json";
/// Written first, create-only, to claim the label.
pub const STARTED: &str = "backup.started";
/// The manifest PostgreSQL sends, as restore writes it into the data directory.
pub const MANIFEST: &str = "backup_manifest";

/// The destination name of `file` in backup `label`.
pub fn object_name(label: &str, file: &str) -> String {
    format!("{BACKUPS_DIR}/{label}/{file}")
}

/// The longest label accepted.
pub const MAX_LABEL_LEN: usize = 64;

/// Checks a label given to `--target=walarch:LABEL` or to restore: letters,
/// digits, `.`, `_`, `-`; not starting with `.` or `-`; at most 64 bytes.
/// It becomes a folder or key prefix, so nothing else is safe.
pub fn validate_label(label: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if label.is_empty() {
        return Err("a backup label must not be empty".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "backup label \"{label}\" is longer than {MAX_LABEL_LEN} bytes"
        ));
    }
    if !label.chars().all(ok_char) || label.starts_with(['.', '-']) || label == "latest" {
        return Err(format!(
            "invalid backup label \"{label}\": use letters, digits, \".\", \"_\" and \"-\", not starting with \".\" or \"-\", and not \"latest\""
        ));
    }
    Ok(())
}

/// The label of a backup started at `t` when none is given: a UTC timestamp
/// that sorts in time order (`20261205T144500Z`).
pub fn default_label(t: std::time::SystemTime) -> String {
    let s = crate::wal::time::format_utc(t);
    // 2026-12-05T14:45:00Z -> 20261205T144500Z
    s.chars().filter(|c| *c != '-' && *c != ':').collect()
}

/// Whether a stored archive name is already compressed by the server.
pub fn server_compressed(archive_name: &str) -> bool {
    [".gz", ".lz4", ".zst"]
        .iter()
        .any(|s| archive_name.ends_with(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn labels() {
        for good in ["20261205T144500Z", "nightly-1", "a.b_c", "X"] {
            assert!(validate_label(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "..",
            "a b",
            "latest",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_labels_sort_in_time_order() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_481_900);
        let a = default_label(t);
        assert_eq!(a, "20261205T144500Z");
        assert!(validate_label(&a).is_ok());
        assert!(default_label(t + Duration::from_secs(1)) > a);
    }

    #[test]
    fn names() {
        assert_eq!(object_name("L", BACKUP_JSON), "backups/L/backup.json");
        assert!(server_compressed("base.tar.zst"));
        assert!(!server_compressed("base.tar"));
    }
}
