//! The archive protocol: the rules every destination follows, once.
//!
//! - Only names PostgreSQL archives are accepted (they become paths or keys).
//! - The file is stored create-only; it counts as archived only when the
//!   destination says it and its checksum record are durable (or
//!   acknowledged with the checksum verified).
//! - If the name is taken, the file there is judged against the WAL file:
//!   identical → success (the normal case after a crash between archiving and
//!   `.ready`→`.done`), after making it durable; different → refused, and
//!   never touched.
//! - "Identical" is decided by the recorded SHA-256 when it agrees with the
//!   WAL file; when the record is missing or disagrees, by the archived bytes
//!   themselves. A damaged record over good bytes is rewritten (and reported)
//!   rather than blocking archiving forever; a missing one is added (a crash
//!   between storing the file and its record).

use std::io;
use std::path::Path;

use crate::destination::{Destination, Recorded, Stored};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::{hash_file, hash_reader, to_hex, Sha256Digest};
use crate::wal::walname::is_archivable_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveOutcome {
    /// Stored now; `stored_bytes` is what the destination holds for it.
    Archived {
        bytes: u64,
        sha256: Sha256Digest,
        stored_bytes: u64,
    },
    /// Already in the archive with identical content. `repaired_record` is
    /// the warning to give when its checksum record was wrong and has been
    /// rewritten.
    AlreadyArchived {
        bytes: u64,
        sha256: Sha256Digest,
        repaired_record: Option<Box<ArchiveError>>,
    },
}

impl ArchiveOutcome {
    pub fn bytes(&self) -> u64 {
        match *self {
            ArchiveOutcome::Archived { bytes, .. }
            | ArchiveOutcome::AlreadyArchived { bytes, .. } => bytes,
        }
    }

    /// Bytes written to the destination: none for a file already there.
    pub fn stored_bytes(&self) -> u64 {
        match *self {
            ArchiveOutcome::Archived { stored_bytes, .. } => stored_bytes,
            ArchiveOutcome::AlreadyArchived { .. } => 0,
        }
    }
}

/// Archives the WAL file at `source` as `name` into `dest`.
pub fn archive_file(
    dest: &dyn Destination,
    name: &str,
    source: &Path,
) -> Result<ArchiveOutcome, ArchiveError> {
    if !is_archivable_name(name) {
        return Err(ArchiveError::new(
            ErrorKind::InvalidName,
            format!("\"{name}\" is not a WAL file name walarch_ext archives"),
        )
        .with_detail("Only WAL segments and .partial, .history and .backup files are archived."));
    }
    // A file that vanishes while it is judged (removed by hand) is stored
    // again, once.
    for _ in 0..2 {
        match dest.store_new(name, source)? {
            Stored::Created {
                bytes,
                sha256,
                stored_bytes,
            } => {
                return Ok(ArchiveOutcome::Archived {
                    bytes,
                    sha256,
                    stored_bytes,
                })
            }
            Stored::Exists => {
                if let Some(outcome) = judge_existing(dest, name, source)? {
                    return Ok(outcome);
                }
            }
        }
    }
    Err(ArchiveError::new(
        ErrorKind::Io,
        format!(
            "archive file \"{}\" appeared and vanished while being archived",
            dest.location(name)
        ),
    )
    .with_hint("Something else is writing to the archive; the archiver will retry."))
}

/// `name` is taken: success only if what is stored there is the WAL file;
/// `None` if it vanished meanwhile.
fn judge_existing(
    dest: &dyn Destination,
    name: &str,
    source: &Path,
) -> Result<Option<ArchiveOutcome>, ArchiveError> {
    let (len, sha256) = hash_file(source).map_err(|e| ArchiveError::io("read file", source, &e))?;
    let recorded = dest.recorded(name)?;
    let stored_len = dest.size(name)?;
    // The record is trusted only together with the length; anything else is
    // settled by the bytes.
    let trusted = recorded == Recorded::Digest(sha256) && stored_len == Some(len);
    let mut repaired_record = None;
    if !trusted {
        let stored = match dest.vouched(name)? {
            Some(v) => v,
            None => match stored_digest(dest, name)? {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        if stored != (len, sha256) {
            return Err(conflict(dest, name, source, stored_len, len));
        }
        dest.write_record(name, &sha256)?;
        if let Recorded::Digest(_) | Recorded::Malformed = recorded {
            repaired_record = Some(Box::new(record_repaired(dest, name, recorded, &sha256)));
        }
    }
    dest.make_durable(name)?;
    Ok(Some(ArchiveOutcome::AlreadyArchived {
        bytes: len,
        sha256,
        repaired_record,
    }))
}

/// Length and SHA-256 of what is stored under `name`; `None` if it vanished.
fn stored_digest(
    dest: &dyn Destination,
    name: &str,
) -> Result<Option<(u64, Sha256Digest)>, ArchiveError> {
    let Some(mut r) = dest.open(name)? else {
        return Ok(None);
    };
    hash_reader(&mut r)
        .map(Some)
        .map_err(|e| ArchiveError::io("read archive file", Path::new(&dest.location(name)), &e))
}

fn conflict(
    dest: &dyn Destination,
    name: &str,
    source: &Path,
    stored_len: Option<u64>,
    len: u64,
) -> ArchiveError {
    let stored_len = stored_len.map_or("?".to_string(), |l| l.to_string());
    ArchiveError::new(
        ErrorKind::Conflict,
        format!(
            "archive file \"{}\" already exists with different contents",
            dest.location(name)
        ),
    )
    .with_detail(format!(
        "The archived file has {stored_len} bytes, \"{}\" has {len} bytes, and their contents differ.",
        source.display()
    ))
    .with_hint(
        "The archive may belong to another cluster or hold a damaged copy. \
         Investigate before moving the archived file away; walarch_ext never overwrites it.",
    )
}

fn record_repaired(
    dest: &dyn Destination,
    name: &str,
    was: Recorded,
    sha256: &Sha256Digest,
) -> ArchiveError {
    let was = match was {
        Recorded::Digest(d) => format!("recorded {}", to_hex(&d)),
        _ => "was not a valid record".to_string(),
    };
    ArchiveError::new(
        ErrorKind::DamagedRecord,
        format!(
            "checksum record of archive file \"{}\" was wrong and has been rewritten",
            dest.location(name)
        ),
    )
    .with_detail(format!(
        "The record {was}; the archived file and the WAL file are identical, SHA-256 {}.",
        to_hex(sha256)
    ))
    .with_hint("Check the archive device: records do not change by themselves.")
}

/// The error for a read failure of a stored file, for callers that stream it.
pub fn read_error(dest: &dyn Destination, name: &str, e: &io::Error) -> ArchiveError {
    ArchiveError::io("read archive file", Path::new(&dest.location(name)), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::local_directory::LocalDirectory;
    use crate::support::testing::{pattern, DamageRecord, MemoryDestination};

    const SEG: &str = "000000010000000000000001";

    /// The same rules against every destination: (destination, WAL file).
    fn each_destination(data: &[u8], check: impl Fn(&dyn DamageRecord, &Path)) {
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join(SEG);
        std::fs::write(&wal, data).unwrap();
        let arch = d.path().join("archive");
        std::fs::create_dir(&arch).unwrap();
        check(&LocalDirectory::new(&arch, 0o600), &wal);
        check(&MemoryDestination::default(), &wal);
    }

    fn read_all(dest: &dyn Destination, name: &str) -> Vec<u8> {
        let mut v = vec![];
        io::Read::read_to_end(&mut dest.open(name).unwrap().unwrap(), &mut v).unwrap();
        v
    }

    #[test]
    fn stores_with_its_checksum_then_accepts_an_identical_duplicate() {
        let data = pattern(300_001);
        each_destination(&data, |dest, wal| {
            let out = archive_file(dest, SEG, wal).unwrap();
            let (_, sha) = hash_file(wal).unwrap();
            assert_eq!(
                out,
                ArchiveOutcome::Archived {
                    bytes: data.len() as u64,
                    sha256: sha,
                    stored_bytes: data.len() as u64,
                }
            );
            assert_eq!(read_all(dest, SEG), data);
            assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(sha));
            let again = archive_file(dest, SEG, wal).unwrap();
            assert_eq!(
                again,
                ArchiveOutcome::AlreadyArchived {
                    bytes: data.len() as u64,
                    sha256: sha,
                    repaired_record: None
                }
            );
            assert_eq!(dest.list().unwrap(), vec![SEG.to_string()]);
        });
    }

    #[test]
    fn different_duplicate_is_refused_and_untouched() {
        each_destination(&pattern(100_000), |dest, wal| {
            archive_file(dest, SEG, wal).unwrap();
            let record = dest.recorded(SEG).unwrap();
            let before = read_all(dest, SEG);
            let mut other = before.clone();
            other[10] ^= 0xff;
            let changed = wal.with_extension("other");
            std::fs::write(&changed, &other).unwrap();
            let err = archive_file(dest, SEG, &changed).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conflict);
            assert!(
                err.message
                    .contains("already exists with different contents"),
                "{err}"
            );
            assert!(err.message.contains(&dest.location(SEG)), "{err}");
            assert_eq!(read_all(dest, SEG), before);
            assert_eq!(dest.recorded(SEG).unwrap(), record);
            // Shorter (a torn copy by another tool) is a conflict too.
            std::fs::write(&changed, &before[..10]).unwrap();
            let err = archive_file(dest, SEG, &changed).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conflict);
        });
    }

    #[test]
    fn missing_record_is_added_from_the_bytes_without_a_warning() {
        each_destination(&pattern(5000), |dest, wal| {
            archive_file(dest, SEG, wal).unwrap();
            dest.drop_record(SEG);
            assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
            let out = archive_file(dest, SEG, wal).unwrap();
            assert!(matches!(
                out,
                ArchiveOutcome::AlreadyArchived {
                    repaired_record: None,
                    ..
                }
            ));
            let (_, sha) = hash_file(wal).unwrap();
            assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(sha));
        });
    }

    #[test]
    fn damaged_record_over_identical_bytes_is_rewritten_with_a_warning() {
        each_destination(&pattern(70_000), |dest, wal| {
            archive_file(dest, SEG, wal).unwrap();
            let (_, sha) = hash_file(wal).unwrap();
            for wrong in [[7u8; 32], [0u8; 32]] {
                dest.write_record(SEG, &wrong).unwrap();
                let out = archive_file(dest, SEG, wal).unwrap();
                let ArchiveOutcome::AlreadyArchived {
                    repaired_record: Some(w),
                    ..
                } = out
                else {
                    panic!("no warning: {out:?}");
                };
                assert_eq!(w.kind, ErrorKind::DamagedRecord);
                assert!(w.message.contains("was wrong"), "{w}");
                assert!(w.detail.unwrap().contains(&to_hex(&wrong)));
                assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(sha));
            }
        });
    }

    #[test]
    fn damaged_record_over_different_bytes_is_still_refused() {
        each_destination(&pattern(70_000), |dest, wal| {
            archive_file(dest, SEG, wal).unwrap();
            dest.write_record(SEG, &[9u8; 32]).unwrap();
            let changed = wal.with_extension("other");
            std::fs::write(&changed, pattern(69_999)).unwrap();
            let err = archive_file(dest, SEG, &changed).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conflict);
            assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest([9u8; 32]));
        });
    }

    #[test]
    fn other_wal_file_kinds_are_archived_and_bad_names_refused() {
        each_destination(b"x", |dest, wal| {
            for name in [
                "00000002.history",
                "000000010000000000000001.partial",
                "000000010000000000000001.00000028.backup",
            ] {
                archive_file(dest, name, wal).unwrap();
                assert_eq!(read_all(dest, name), b"x");
            }
            for bad in ["../x", "postgresql.conf", "", "000000010000000000000001/.."] {
                let err = archive_file(dest, bad, wal).unwrap_err();
                assert_eq!(err.kind, ErrorKind::InvalidName);
            }
            assert_eq!(dest.list().unwrap().len(), 3);
        });
    }

    #[test]
    fn a_failed_store_leaves_nothing() {
        each_destination(b"abc", |dest, wal| {
            let err = archive_file(dest, SEG, &wal.with_extension("missing")).unwrap_err();
            assert!(err.message.starts_with("could not open file"), "{err}");
            assert_eq!(dest.size(SEG).unwrap(), None);
            assert!(dest.list().unwrap().is_empty());
        });
    }
}
