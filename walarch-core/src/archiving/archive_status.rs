//! PostgreSQL's own record of archiving, `pg_wal/archive_status`: one
//! place that answers "what is pending?", "is it archived?" and "what
//! next?" for the copy-ahead worker, `walarch_stats()` and
//! `walarch_switch_wal()`.
//!
//! A completed WAL file gets `<file>.ready`; the archiver renames it to
//! `<file>.done` once the archive module reported it archived. A file with
//! neither and gone from `pg_wal` was archived and then recycled or removed.

use std::io;
use std::path::Path;

use crate::wal::walname::{archive_order, is_archivable_name};

/// Names (without `.ready`) of the files waiting to be archived, `.history`
/// first, then by name, as the archiver takes them.
pub fn ready_files(pg_wal: &Path) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(pg_wal.join("archive_status"))? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some(wal) = name.strip_suffix(".ready") {
            if is_archivable_name(wal) {
                v.push(wal.to_string());
            }
        }
    }
    v.sort_by(|a, b| archive_order(a, b));
    Ok(v)
}

/// True once the archiver is done with `walfile`: no `.ready` left, and a
/// `.done` (or the file already recycled, which needs it archived).
pub fn is_archived(pg_wal: &Path, walfile: &str) -> bool {
    let status = pg_wal.join("archive_status");
    !status.join(format!("{walfile}.ready")).exists()
        && (status.join(format!("{walfile}.done")).exists() || !pg_wal.join(walfile).exists())
}

/// `ready_files` with each file's size in `pg_wal` (0 when it is gone).
pub fn ready_with_sizes(pg_wal: &Path) -> io::Result<Vec<(String, u64)>> {
    Ok(ready_files(pg_wal)?
        .into_iter()
        .map(|f| {
            let size = std::fs::metadata(pg_wal.join(&f)).map_or(0, |m| m.len());
            (f, size)
        })
        .collect())
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingSummary {
    pub count: i64,
    /// Sum of the sizes of the waiting files in pg_wal.
    pub bytes: i64,
    /// The first file the archiver will take.
    pub oldest: Option<String>,
}

pub fn summary(pg_wal: &Path) -> io::Result<PendingSummary> {
    let files = ready_with_sizes(pg_wal)?;
    Ok(PendingSummary {
        count: files.len() as i64,
        bytes: files.iter().map(|(_, s)| *s as i64).sum(),
        oldest: files.first().map(|(f, _)| f.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_ready_files_in_archiver_order() {
        let d = tempfile::tempdir().unwrap();
        let st = d.path().join("archive_status");
        std::fs::create_dir(&st).unwrap();
        for (n, size) in [
            ("000000010000000000000003", 30),
            ("000000010000000000000002", 20),
            ("00000002.history", 5),
        ] {
            std::fs::write(d.path().join(n), vec![0u8; size]).unwrap();
            std::fs::write(st.join(format!("{n}.ready")), b"").unwrap();
        }
        std::fs::write(st.join("000000010000000000000001.done"), b"").unwrap();
        std::fs::write(st.join("garbage.ready"), b"").unwrap();
        assert_eq!(
            ready_files(d.path()).unwrap(),
            vec![
                "00000002.history",
                "000000010000000000000002",
                "000000010000000000000003"
            ]
        );
        assert!(!is_archived(d.path(), "000000010000000000000002"));
        assert!(is_archived(d.path(), "000000010000000000000001"));
        // No status and no file: archived, then recycled.
        assert!(is_archived(d.path(), "000000010000000000000009"));
        // No status but the file is there: not (yet) archived.
        std::fs::write(d.path().join("000000010000000000000004"), b"").unwrap();
        assert!(!is_archived(d.path(), "000000010000000000000004"));
        let s = summary(d.path()).unwrap();
        assert_eq!(
            s,
            PendingSummary {
                count: 3,
                bytes: 55,
                oldest: Some("00000002.history".into())
            }
        );
    }
}
