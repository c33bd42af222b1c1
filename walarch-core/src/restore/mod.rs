//! The restore side, for `restore_command`: copies an archived file from any
//! destination into place, verifying its SHA-256 while copying, so that PostgreSQL is never
//! handed a corrupt or truncated file. Nothing is left at the destination
//! unless the file verified.
//!
//! PostgreSQL reads any exit status from 1 to 125 as "not in the archive",
//! which ends archive recovery there and opens the server on a new
//! timeline; a status above 125 makes it stop recovery instead (FATAL; see
//! `RestoreArchivedFile` in xlogarchive.c). So only a clean "no such file"
//! may look like one: everything else is retried while it is transient, then
//! reported with `EXIT_STOP_RECOVERY` — except on a standby, where PostgreSQL
//! retries by itself (and may stream meanwhile) and a store outage must not
//! kill the server.

pub mod prefetch;
pub mod reading;
pub mod spool;

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::destination::sealed::Identities;
use crate::destination::Destination;
use crate::restore::reading::{open_stored, read_back, record_of, ReadFailure};
use crate::support::error::ArchiveError;
use crate::support::fsutil::fsync_dir;
use crate::wal::checksum::Sha256Digest;
use crate::wal::walname::{form_name, is_archivable_name, Form};

#[derive(Debug)]
pub enum RestoreError {
    /// Not in the archive: normal for files PostgreSQL probes for.
    NotFound(String),
    /// Refused: the bytes or the record are not trustworthy.
    Integrity(String),
    /// The arguments are wrong.
    Usage(String),
    /// The archive cannot be reached or cannot serve now: worth retrying.
    Unavailable(String),
    Io(String),
}

/// The exit status that makes PostgreSQL stop recovery rather than take the
/// failure for the end of the archive (anything above 125).
pub const EXIT_STOP_RECOVERY: u8 = 255;
/// "Not in the archive".
pub const EXIT_NOT_FOUND: u8 = 1;

/// What the server DEST belongs to is doing, as far as restore can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// `standby.signal`: PostgreSQL retries a file it could not get (and
    /// streams meanwhile), so a failure must not stop the server.
    Standby,
    /// Archive recovery (`recovery.signal`), or not run by PostgreSQL: a
    /// failure must never read as the end of the archive.
    Archive,
}

impl RecoveryMode {
    /// The mode of the data directory `dest` is in (`%p` is relative to it),
    /// or else of the working directory (PostgreSQL runs the command in the
    /// data directory).
    pub fn of(dest: &Path) -> RecoveryMode {
        match data_directory(dest) {
            Some(d) => Self::of_data_directory(&d),
            None => Self::current(),
        }
    }

    /// The mode of the working directory, when it is a data directory.
    pub fn current() -> RecoveryMode {
        Self::of_data_directory(Path::new("."))
    }

    fn of_data_directory(d: &Path) -> RecoveryMode {
        if d.join("PG_VERSION").is_file() && d.join("standby.signal").exists() {
            RecoveryMode::Standby
        } else {
            RecoveryMode::Archive
        }
    }

    /// The exit status for a failure other than "not found".
    pub fn failure_status(self) -> u8 {
        match self {
            RecoveryMode::Standby => EXIT_NOT_FOUND,
            RecoveryMode::Archive => EXIT_STOP_RECOVERY,
        }
    }
}

/// The data directory whose `pg_wal` holds `dest`, when it is in one. The
/// path is not resolved: pg_wal is often a symbolic link to another disk.
pub fn data_directory(dest: &Path) -> Option<PathBuf> {
    let dest = std::path::absolute(dest).ok()?;
    let dir = dest.parent()?;
    if dir.file_name()? != "pg_wal" {
        return None;
    }
    let data = dir.parent()?;
    data.join("PG_VERSION")
        .is_file()
        .then(|| data.to_path_buf())
}

/// How long transient failures are retried, and how the waits grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// No new attempt starts after this long.
    pub retry_for: Duration,
    pub first_wait: Duration,
    pub max_wait: Duration,
}

impl Retry {
    pub const DEFAULT_FOR: Duration = Duration::from_secs(300);

    pub fn new(retry_for: Duration) -> Retry {
        Retry {
            retry_for,
            first_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(15),
        }
    }

    /// No retries.
    pub fn never() -> Retry {
        Retry::new(Duration::ZERO)
    }
}

/// `restore_verified`, trying again with growing waits while the archive is
/// unavailable, for at most `retry.retry_for`; each retry is told to `log`
/// (restore_command's stderr reaches the server log). `archive` opens the
/// archive (called once per attempt; it may cache).
pub fn restore_retrying<'a>(
    archive: &dyn Fn() -> Result<&'a dyn Destination, RestoreError>,
    ids: Option<&Identities>,
    walfile: &str,
    dest: &Path,
    retry: &Retry,
    log: &dyn Fn(&str),
) -> Result<Restored, RestoreError> {
    let start = Instant::now();
    let mut wait = retry.first_wait;
    let mut attempt = 1u32;
    loop {
        let attempt_result = archive().and_then(|a| {
            restore_verified(a, ids, walfile, dest).map_err(|e| match e {
                RestoreError::NotFound(m) => confirm_absent(a, walfile, m),
                e => e,
            })
        });
        match attempt_result {
            Err(RestoreError::Unavailable(m)) => {
                let spent = start.elapsed();
                if spent + wait > retry.retry_for {
                    return Err(RestoreError::Unavailable(if attempt > 1 {
                        format!(
                            "{m} (still failing after {attempt} attempts in {})",
                            crate::wal::time::describe(spent)
                        )
                    } else {
                        m
                    }));
                }
                log(&format!(
                    "could not restore \"{walfile}\" (attempt {attempt}): {m}; retrying in {}, for up to {} in all",
                    crate::wal::time::describe(wait),
                    crate::wal::time::describe(retry.retry_for)
                ));
                std::thread::sleep(wait);
                wait = (wait * 2).min(retry.max_wait);
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::NotFound(s)
            | RestoreError::Integrity(s)
            | RestoreError::Usage(s)
            | RestoreError::Unavailable(s)
            | RestoreError::Io(s) => f.write_str(s),
        }
    }
}

/// "Not in the archive" ends archive recovery, so it is only said when the
/// archive can have come to its end there: an archive with nothing in it
/// (a network mount that failed, a wrong prefix) or with the next segment
/// of the same timeline (a hole, not the end) is an error instead. With
/// PostgreSQL's rule of never asking for a segment on a timeline that began
/// after it, the next segment exists only when this one is missing.
fn confirm_absent(archive: &dyn Destination, walfile: &str, not_found: String) -> RestoreError {
    match archive.is_empty() {
        Ok(true) => {
            return RestoreError::Io(format!(
                "\"{walfile}\" is not in the archive, and nothing else is: \"{}\" is empty (a network filesystem not mounted, or the wrong bucket prefix?)",
                archive.describe()
            ))
        }
        Ok(false) => {}
        Err(e) => return store_err(e),
    }
    let later = later_segments(walfile);
    if !later.is_empty() {
        // Inside a range dropped by walarch.max_backlog: recovery must stop
        // there, however long the range (the next segment is missing too).
        match crate::archiving::budget::dropped_range_of(archive, walfile) {
            Ok(Some(m)) => {
                let when = crate::archiving::budget::marker_contents(archive, &m.name)
                    .ok()
                    .flatten()
                    .and_then(|t| {
                        crate::archiving::budget::marker_field(&t, "dropped_from")
                            .map(|w| format!(" at {w}"))
                    })
                    .unwrap_or_default();
                return RestoreError::Integrity(format!(
                    "\"{walfile}\" is not in the archive: it was dropped by walarch.max_backlog{when} (marker \"{}\"): recovery cannot pass this range; recover to a target before it, or restore a base backup taken after it",
                    archive.location(&m.name)
                ));
            }
            Ok(None) => {}
            Err(e) => return store_err(e),
        }
    }
    for next in later {
        // In any form: one lookup.
        let forms: Vec<String> = Form::ALL
            .into_iter()
            .filter_map(|f| form_name(&next, f))
            .collect();
        match archive.sizes_of(&forms) {
            Ok(sizes) => {
                if let Some((form, _)) = forms.iter().zip(sizes).find(|(_, s)| s.is_some()) {
                    return RestoreError::Integrity(format!(
                        "\"{walfile}\" is missing from the archive although \"{form}\", later on the same timeline, is there: a hole in the archive, not its end"
                    ));
                }
            }
            Err(e) => return store_err(e),
        }
    }
    RestoreError::NotFound(not_found)
}

/// Segments that follow `walfile` on its timeline, whatever the segment
/// size (not known here): the next one within the same log number, and
/// the first of the next log number (a name's last 8 digits count segments
/// within a log: 0x100 of them for 16 MB segments, 0x1000 for 1 MB).
/// Nothing for other files.
fn later_segments(walfile: &str) -> Vec<String> {
    use crate::wal::walname::{WalFileKind, WalFileName};
    if WalFileName::parse(walfile).is_none_or(|w| w.kind != WalFileKind::Segment) {
        return vec![];
    }
    let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&walfile[r], 16).ok();
    let (Some(log), Some(seg)) = (hex(8..16), hex(16..24)) else {
        return vec![];
    };
    let tli = &walfile[..8];
    let mut v = vec![];
    if let Some(s) = seg.checked_add(1) {
        v.push(format!("{tli}{log:08X}{s:08X}"));
    }
    if let Some(l) = log.checked_add(1) {
        v.push(format!("{tli}{l:08X}00000000"));
    }
    v
}

fn io_err(action: &str, p: &Path, e: &io::Error) -> RestoreError {
    RestoreError::Io(format!(
        "could not {action} \"{}\": {}",
        p.display(),
        crate::support::error::os_message(e)
    ))
}

fn store_err(e: ArchiveError) -> RestoreError {
    let mut text = match &e.detail {
        Some(d) => format!("{}: {d}", e.message),
        None => e.message,
    };
    // On the same line: restore_command's stderr goes to the server log.
    if let Some(h) = &e.hint {
        text = format!("{text} HINT: {h}");
    }
    if e.kind == crate::support::error::ErrorKind::Unavailable {
        RestoreError::Unavailable(text)
    } else {
        RestoreError::Io(text)
    }
}

/// A file restored: its length and the SHA-256 of the bytes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub len: u64,
    pub sha256: Sha256Digest,
}

/// Restores `walfile` from `archive` to `dest`, from whichever form holds
/// it (an encrypted one needs `restore_verified` with identities); returns
/// the bytes written (the WAL file's length).
pub fn restore(archive: &dyn Destination, walfile: &str, dest: &Path) -> Result<u64, RestoreError> {
    restore_verified(archive, None, walfile, dest).map(|r| r.len)
}

/// `restore`, decrypting encrypted forms with `ids`, and returning the
/// SHA-256 of what was written (checked against the record, and for a
/// compressed or encrypted form against the original's). Nothing reaches
/// `dest` unless every check passed. An encrypted form without identities,
/// or none that can decrypt it, is a failure that stops recovery, never
/// "not in the archive".
pub fn restore_verified(
    archive: &dyn Destination,
    ids: Option<&Identities>,
    walfile: &str,
    dest: &Path,
) -> Result<Restored, RestoreError> {
    if !is_archivable_name(walfile) {
        return Err(RestoreError::Usage(format!(
            "\"{walfile}\" is not a WAL file name"
        )));
    }
    let Some((holder, src)) = open_stored(archive, walfile).map_err(store_err)? else {
        return Err(RestoreError::NotFound(format!(
            "\"{walfile}\" is not in the archive"
        )));
    };
    // Without identities an encrypted form is refused before anything is
    // written.
    if holder.form.encrypted && ids.is_none() {
        return Err(refused(&holder.stored, ids, ReadFailure::NoIdentity));
    }
    let record = record_of(archive, &holder).map_err(|e| refused(&holder.stored, ids, e))?;

    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = dir.join(format!(".walarch-restore.{walfile}.{}", std::process::id()));
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(|e| io_err("create file", &temp, &e))?;
        let mut buffered =
            io::BufWriter::with_capacity(crate::support::fsutil::IO_BUFFER, &mut out);
        let back =
            read_back(archive, ids, &holder, &record, src, &mut buffered).map_err(|e| match e {
                ReadFailure::Write(e) => io_err("write file", &temp, &e),
                e => refused(&holder.stored, ids, e),
            })?;
        buffered
            .flush()
            .map_err(|e| io_err("write file", &temp, &e))?;
        drop(buffered);
        out.sync_all()
            .map_err(|e| io_err("fsync file", &temp, &e))?;
        Ok(Restored {
            len: back.original.len,
            sha256: back.original.sha256,
        })
    })();
    let restored = match result {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&temp, dest) {
        let _ = std::fs::remove_file(&temp);
        return Err(io_err("rename file", &temp, &e));
    }
    fsync_dir(dir).map_err(|e| io_err("fsync directory", dir, &e))?;
    Ok(restored)
}

/// The restore error for a stored file that was not read back.
fn refused(stored: &str, ids: Option<&Identities>, e: ReadFailure) -> RestoreError {
    let text = e.describe(stored, ids);
    match e {
        ReadFailure::Store(e) => store_err(e),
        // A directory archive renames the file into place before its record:
        // a record missing may be one on its way (retried), and if it stays
        // missing the file is refused as unverifiable.
        ReadFailure::NoRecord => {
            RestoreError::Unavailable(format!("{text}: refusing to restore an unverifiable file"))
        }
        ReadFailure::Write(_) => RestoreError::Io(text),
        ReadFailure::BadRecord(_)
        | ReadFailure::Mismatch { .. }
        | ReadFailure::NoIdentity
        | ReadFailure::NoMatchingKey
        | ReadFailure::Undecodable(_) => {
            RestoreError::Integrity(format!("{text}; refusing to restore it"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archive_protocol::archive_file;
    use crate::destination::local_directory::LocalDirectory;
    use crate::destination::{compressed, Recorded};
    use crate::wal::checksum::sha256;
    use std::io::Read;

    const SEG: &str = "000000010000000000000007";

    fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let (wal, arch) = (d.path().join("wal"), d.path().join("arch"));
        std::fs::create_dir(&wal).unwrap();
        std::fs::create_dir(&arch).unwrap();
        std::fs::write(
            wal.join(SEG),
            (0..300_000u32).map(|i| i as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        archive_file(&LocalDirectory::new(&arch, 0o600), SEG, &wal.join(SEG)).unwrap();
        (d, wal, arch)
    }

    #[test]
    fn restores_verified_bytes() {
        let (d, wal, arch) = setup();
        let dest = d.path().join("RECOVERYXLOG");
        assert_eq!(
            restore(&LocalDirectory::new(&arch, 0o600), SEG, &dest).unwrap(),
            300_000
        );
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(wal.join(SEG)).unwrap()
        );
    }

    #[test]
    fn absent_file_is_not_found() {
        let (d, _wal, arch) = setup();
        let dest = d.path().join("RECOVERYXLOG");
        assert!(matches!(
            restore(
                &LocalDirectory::new(&arch, 0o600),
                "00000005.history",
                &dest
            ),
            Err(RestoreError::NotFound(_))
        ));
        assert!(!dest.exists());
    }

    #[test]
    fn corrupt_truncated_or_unverifiable_files_are_refused_and_leave_nothing() {
        let (d, _wal, arch) = setup();
        let dest = d.path().join("RECOVERYXLOG");
        let f = arch.join(SEG);
        let good = std::fs::read(&f).unwrap();
        let mut flipped = good.clone();
        flipped[12345] ^= 0x40;
        for bad in [flipped, good[..good.len() - 1].to_vec()] {
            std::fs::write(&f, &bad).unwrap();
            let e = restore(&LocalDirectory::new(&arch, 0o600), SEG, &dest).unwrap_err();
            assert!(
                matches!(e, RestoreError::Integrity(ref m) if m.contains("checksum mismatch")),
                "{e}"
            );
            assert!(!dest.exists());
        }
        std::fs::write(&f, &good).unwrap();
        std::fs::remove_file(arch.join(format!("{SEG}.sha256"))).unwrap();
        // Unverifiable: refused (retried first: it may be on its way).
        assert!(matches!(
            restore(&LocalDirectory::new(&arch, 0o600), SEG, &dest),
            Err(RestoreError::Unavailable(ref m)) if m.contains("no checksum recorded")
        ));
        assert!(!dest.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            leftovers
                .iter()
                .all(|n| !n.to_string_lossy().starts_with(".walarch-restore")),
            "{leftovers:?}"
        );
        assert!(matches!(
            restore(&LocalDirectory::new(&arch, 0o600), "../etc/passwd", &dest),
            Err(RestoreError::Usage(_))
        ));
    }

    /// A directory archive that is unavailable for its first `failures`
    /// reads, as a store that comes back.
    struct Flaky {
        inner: LocalDirectory,
        failures: std::sync::atomic::AtomicU32,
    }

    impl Destination for Flaky {
        fn describe(&self) -> String {
            self.inner.describe()
        }
        fn location(&self, name: &str) -> String {
            self.inner.location(name)
        }
        fn store_new(
            &self,
            name: &str,
            source: &Path,
        ) -> Result<crate::destination::Stored, ArchiveError> {
            self.inner.store_new(name, source)
        }
        fn store_new_bytes(
            &self,
            name: &str,
            data: &[u8],
        ) -> Result<crate::destination::Stored, ArchiveError> {
            self.inner.store_new_bytes(name, data)
        }
        fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
            self.inner.recorded(name)
        }
        fn write_record(&self, name: &str, d: &Sha256Digest) -> Result<(), ArchiveError> {
            self.inner.write_record(name, d)
        }
        fn make_durable(&self, name: &str) -> Result<(), ArchiveError> {
            self.inner.make_durable(name)
        }
        fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
            self.inner.size(name)
        }
        fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
            use std::sync::atomic::Ordering;
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                return Err(ArchiveError::io(
                    "read file",
                    Path::new(name),
                    &io::Error::from_raw_os_error(libc::ETIMEDOUT),
                ));
            }
            self.inner.open(name)
        }
        fn entries(&self) -> Result<Vec<crate::destination::Entry>, ArchiveError> {
            self.inner.entries()
        }
        fn list(&self) -> Result<Vec<String>, ArchiveError> {
            self.inner.list()
        }
        fn remove(&self, name: &str) -> Result<(), ArchiveError> {
            self.inner.remove(name)
        }
    }

    fn quick(retry_for_ms: u64) -> Retry {
        Retry {
            retry_for: Duration::from_millis(retry_for_ms),
            first_wait: Duration::from_millis(10),
            max_wait: Duration::from_millis(40),
        }
    }

    #[test]
    fn an_unavailable_archive_is_retried_until_it_answers_and_each_retry_is_logged() {
        let (d, wal, arch) = setup();
        let dest = d.path().join("RECOVERYXLOG");
        let flaky = Flaky {
            inner: LocalDirectory::new(&arch, 0o600),
            failures: 3.into(),
        };
        let logged = std::cell::RefCell::new(vec![]);
        let r = restore_retrying(&|| Ok(&flaky), None, SEG, &dest, &quick(5_000), &|m| {
            logged.borrow_mut().push(m.to_string())
        })
        .unwrap();
        assert_eq!(r.len, 300_000);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            std::fs::read(wal.join(SEG)).unwrap()
        );
        let logged = logged.into_inner();
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert!(
            logged[0].contains(SEG) && logged[0].contains("retrying in"),
            "{}",
            logged[0]
        );
    }

    #[test]
    fn an_archive_unavailable_for_longer_than_the_retries_is_an_error_never_not_found() {
        let (d, _wal, arch) = setup();
        let dest = d.path().join("RECOVERYXLOG");
        let flaky = Flaky {
            inner: LocalDirectory::new(&arch, 0o600),
            failures: 1_000.into(),
        };
        let e =
            restore_retrying(&|| Ok(&flaky), None, SEG, &dest, &quick(100), &|_| {}).unwrap_err();
        assert!(
            matches!(e, RestoreError::Unavailable(ref m) if m.contains("attempts")),
            "{e}"
        );
        assert!(!dest.exists());
        // Without retries: one attempt, the same answer.
        let e = restore_retrying(&|| Ok(&flaky), None, SEG, &dest, &Retry::never(), &|_| {
            panic!("no retry")
        })
        .unwrap_err();
        assert!(matches!(e, RestoreError::Unavailable(_)), "{e}");
        // Integrity failures and "not found" are never retried.
        let missing = "000000010000000000000099";
        let flaky = Flaky {
            inner: LocalDirectory::new(&arch, 0o600),
            failures: 0.into(),
        };
        let e = restore_retrying(&|| Ok(&flaky), None, missing, &dest, &quick(5_000), &|_| {
            panic!("no retry")
        })
        .unwrap_err();
        assert!(matches!(e, RestoreError::NotFound(_)), "{e}");
        let mut b = std::fs::read(arch.join(SEG)).unwrap();
        b[7] ^= 1;
        std::fs::write(arch.join(SEG), b).unwrap();
        let e = restore_retrying(&|| Ok(&flaky), None, SEG, &dest, &quick(5_000), &|_| {
            panic!("no retry")
        })
        .unwrap_err();
        assert!(matches!(e, RestoreError::Integrity(_)), "{e}");
    }

    #[test]
    fn a_standby_is_told_apart_from_archive_recovery_through_a_linked_pg_wal() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        let wal_disk = d.path().join("waldisk");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&wal_disk).unwrap();
        std::os::unix::fs::symlink(&wal_disk, data.join("pg_wal")).unwrap();
        let dest = data.join("pg_wal/RECOVERYXLOG");
        // Not a data directory (yet): by hand, failures stop.
        assert_eq!(data_directory(&dest), None);
        assert_eq!(RecoveryMode::of(&dest), RecoveryMode::Archive);
        std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        assert_eq!(data_directory(&dest), Some(data.clone()));
        assert_eq!(RecoveryMode::of(&dest), RecoveryMode::Archive);
        assert_eq!(RecoveryMode::Archive.failure_status(), EXIT_STOP_RECOVERY);
        std::fs::write(data.join("standby.signal"), "").unwrap();
        assert_eq!(RecoveryMode::of(&dest), RecoveryMode::Standby);
        assert_eq!(RecoveryMode::Standby.failure_status(), EXIT_NOT_FOUND);
        const { assert!(EXIT_STOP_RECOVERY > 125 && EXIT_NOT_FOUND <= 125) };
    }

    #[test]
    fn not_found_only_at_the_end_of_a_non_empty_archive() {
        let (d, wal, arch) = setup();
        let a = LocalDirectory::new(&arch, 0o600);
        let dest = d.path().join("RECOVERYXLOG");
        let next = "000000010000000000000008";
        let after = "000000010000000000000009";
        let r = |w: &str| restore_retrying(&|| Ok(&a), None, w, &dest, &Retry::never(), &|_| {});
        // The end of the archive: not found.
        assert!(matches!(r(next), Err(RestoreError::NotFound(_))));
        // A later segment on the same timeline: a hole, never the end.
        std::fs::write(wal.join(after), b"x").unwrap();
        archive_file(&a, after, &wal.join(after)).unwrap();
        let e = r(next).unwrap_err();
        assert!(
            matches!(e, RestoreError::Integrity(ref m) if m.contains("a hole")),
            "{e}"
        );
        // Another timeline's segment, or a history probe, is no hole.
        assert!(matches!(
            r("000000020000000000000008"),
            Err(RestoreError::NotFound(_))
        ));
        assert!(matches!(
            r("00000002.history"),
            Err(RestoreError::NotFound(_))
        ));
        // The next log number counts too (16 MB segments: ...FF then the
        // next log's 00).
        assert_eq!(
            later_segments("0000000100000003000000FF"),
            ["000000010000000300000100", "000000010000000400000000"]
        );
        assert!(later_segments("00000001.history").is_empty());
        // A range dropped by walarch.max_backlog: a hole however long, and
        // the message names its marker.
        let mut b = crate::archiving::budget::BudgetState::default();
        for n in ["00000001000000000000000A", "00000001000000000000000B"] {
            b.record_drop(n, 16 << 20, 16 << 20, 0, "down").unwrap();
        }
        let (done, _) = crate::archiving::budget::store_markers(&a, &b.pending);
        assert_eq!(done.len(), 1);
        for w in ["00000001000000000000000A", "00000001000000000000000B"] {
            let e = r(w).unwrap_err();
            assert!(
                matches!(e, RestoreError::Integrity(ref m)
                    if m.contains("dropped by walarch.max_backlog at 2000-01-01 00:00:00 UTC")
                        && m.contains("DROPPED.00000001000000000000000A-00000001000000000000000B")),
                "{e}"
            );
        }
        assert!(matches!(
            r("00000001000000000000000C"),
            Err(RestoreError::NotFound(_))
        ));
        // An empty archive (a mount that failed) never says "not found".
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = LocalDirectory::new(&empty, 0o600);
        let err =
            restore_retrying(&|| Ok(&e), None, next, &dest, &Retry::never(), &|_| {}).unwrap_err();
        assert!(
            matches!(err, RestoreError::Io(ref m) if m.contains("is empty")),
            "{err}"
        );
    }

    #[test]
    fn a_record_not_yet_there_is_waited_for() {
        let (d, _wal, arch) = setup();
        let a = LocalDirectory::new(&arch, 0o600);
        let dest = d.path().join("RECOVERYXLOG");
        let record = arch.join(format!("{SEG}.sha256"));
        let saved = std::fs::read(&record).unwrap();
        std::fs::remove_file(&record).unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(&record, &saved).unwrap();
            });
            restore_retrying(&|| Ok(&a), None, SEG, &dest, &quick(5_000), &|_| {}).unwrap();
        });
        assert!(dest.exists());
    }

    const ZSEG: &str = "000000010000000000000009";

    /// An archive holding ZSEG in its compressed form only; the original bytes.
    fn compressed_setup() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let d = tempfile::tempdir().unwrap();
        let arch = d.path().join("arch");
        std::fs::create_dir(&arch).unwrap();
        let mut original = vec![0u8; 1 << 20];
        for (i, b) in original.iter_mut().take(100_000).enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let z = d.path().join("z");
        std::fs::write(&z, compressed::compress(&original, 3).unwrap()).unwrap();
        LocalDirectory::new(&arch, 0o600)
            .store_new(&format!("{ZSEG}.zst"), &z)
            .unwrap();
        (d, arch, original)
    }

    #[test]
    fn restores_the_original_from_the_compressed_form() {
        let (d, arch, original) = compressed_setup();
        let dest = d.path().join("RECOVERYXLOG");
        let n = restore(&LocalDirectory::new(&arch, 0o600), ZSEG, &dest).unwrap();
        assert_eq!(n, original.len() as u64);
        assert!(std::fs::read(&dest).unwrap() == original);
    }

    #[test]
    fn a_bad_compressed_form_is_refused_and_leaves_nothing() {
        let (d, arch, _) = compressed_setup();
        let dest = d.path().join("RECOVERYXLOG");
        let a = LocalDirectory::new(&arch, 0o600);
        let stored = arch.join(format!("{ZSEG}.zst"));
        let good = std::fs::read(&stored).unwrap();
        // Damaged after archiving: the record catches it.
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x10;
        std::fs::write(&stored, &bad).unwrap();
        let e = restore(&a, ZSEG, &dest).unwrap_err();
        assert!(
            matches!(e, RestoreError::Integrity(ref m) if m.contains("checksum mismatch")),
            "{e}"
        );
        // Damaged before its record was made (the record agrees): the
        // decompression or the original's SHA-256 catches it.
        a.write_record(&format!("{ZSEG}.zst"), &sha256(&bad))
            .unwrap();
        let e = restore(&a, ZSEG, &dest).unwrap_err();
        assert!(
            matches!(e, RestoreError::Integrity(ref m) if m.contains("does not decompress")),
            "{e}"
        );
        // Truncated the same way.
        let cut = &good[..good.len() - 3];
        std::fs::write(&stored, cut).unwrap();
        a.write_record(&format!("{ZSEG}.zst"), &sha256(cut))
            .unwrap();
        assert!(matches!(
            restore(&a, ZSEG, &dest),
            Err(RestoreError::Integrity(_))
        ));
        assert!(!dest.exists());
    }

    mod encrypted {
        use super::*;
        use crate::destination::compressing::{Compressing, Sealing};
        use crate::destination::local_directory::format_record;
        use crate::destination::sealed::tests::{key_pair, keys};
        use crate::destination::sealed::Recipients;
        use crate::wal::checksum::sha256;
        use std::sync::Arc;

        /// A 1 MB WAL-like segment: records, then zeros.
        fn segment() -> Vec<u8> {
            let mut v = vec![0u8; 1 << 20];
            for (i, b) in v.iter_mut().take(150_000).enumerate() {
                *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
            }
            v
        }

        struct Archive {
            d: tempfile::TempDir,
            arch: PathBuf,
            original: Vec<u8>,
            ids: Identities,
            recipients: Recipients,
            /// The identity file's text.
            identity: String,
        }

        impl Archive {
            fn dir(&self) -> LocalDirectory {
                LocalDirectory::new(&self.arch, 0o600)
            }
            fn dest(&self) -> PathBuf {
                self.d.path().join("RECOVERYXLOG")
            }
            fn stored(&self, form: Form) -> PathBuf {
                self.arch.join(form_name(SEG, form).unwrap())
            }
        }

        /// An archive holding SEG in `form`, stored as the archiver stores
        /// it (through the archive view, encrypted to a fresh key).
        fn archive_in(form: Form) -> Archive {
            let d = tempfile::tempdir().unwrap();
            let (wal, arch) = (d.path().join("wal"), d.path().join("arch"));
            std::fs::create_dir(&wal).unwrap();
            std::fs::create_dir(&arch).unwrap();
            let original = segment();
            std::fs::write(wal.join(SEG), &original).unwrap();
            let (r, identity) = key_pair();
            let recipients = Recipients::parse(&r, "r").unwrap();
            let ids = Identities::parse(&identity, "i").unwrap();
            let inner = LocalDirectory::new(&arch, 0o600);
            let sealing = if form.encrypted {
                Sealing::To(Arc::new(recipients.clone()))
            } else {
                Sealing::Off
            };
            let level = form.compressed.then_some(3);
            let view = Compressing::new(&inner, level).sealing(sealing);
            archive_file(&view, SEG, &wal.join(SEG)).unwrap();
            let a = Archive {
                d,
                arch,
                original,
                ids,
                recipients,
                identity,
            };
            assert!(a.stored(form).is_file(), "{form:?}");
            a
        }

        fn encrypted_forms() -> [Form; 2] {
            [Form::AGE, Form::ZST_AGE]
        }

        /// Rewrites the record of an encrypted form so that it agrees with
        /// the stored bytes as they are now (damage before the record was
        /// made), keeping what it says of the original.
        fn record_agreeing(a: &Archive, form: Form, original: &compressed::Original) {
            let name = form_name(SEG, form).unwrap();
            let bytes = std::fs::read(a.arch.join(&name)).unwrap();
            std::fs::write(
                a.arch.join(format!("{name}.sha256")),
                format_record(&sha256(&bytes), &name, Some(original)),
            )
            .unwrap();
        }

        fn no_leftovers(a: &Archive) {
            assert!(!a.dest().exists());
            let left: Vec<_> = std::fs::read_dir(a.d.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".walarch-restore"))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }

        #[test]
        fn every_form_restores_the_original() {
            for form in Form::ALL {
                let a = archive_in(form);
                // Only the one form is stored.
                for other in Form::ALL.into_iter().filter(|f| *f != form) {
                    assert!(!a.stored(other).exists(), "{form:?} and {other:?}");
                }
                let r = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap();
                assert_eq!(r.len, a.original.len() as u64, "{form:?}");
                assert_eq!(r.sha256, sha256(&a.original), "{form:?}");
                assert!(std::fs::read(a.dest()).unwrap() == a.original, "{form:?}");
                std::fs::remove_file(a.dest()).unwrap();
                // The forms that are not encrypted need no identity.
                let without = restore_verified(&a.dir(), None, SEG, &a.dest());
                if form.encrypted {
                    assert!(
                        matches!(without, Err(RestoreError::Integrity(ref m))
                            if m.contains("is encrypted and no identity was given")
                                && m.contains("--identity-file")),
                        "{form:?}: {without:?}"
                    );
                    no_leftovers(&a);
                } else {
                    assert_eq!(without.unwrap().len, a.original.len() as u64);
                }
            }
        }

        #[test]
        fn without_identity_or_with_the_wrong_one_recovery_stops_it_is_never_not_found() {
            for form in encrypted_forms() {
                let a = archive_in(form);
                let dir = a.dir();
                let retry = Retry::never();
                let e = restore_retrying(&|| Ok(&dir), None, SEG, &a.dest(), &retry, &|_| {
                    panic!("no retry")
                })
                .unwrap_err();
                assert!(matches!(e, RestoreError::Integrity(_)), "{form:?}: {e}");
                no_leftovers(&a);
                let (_, other) = keys();
                let e =
                    restore_retrying(&|| Ok(&dir), Some(&other), SEG, &a.dest(), &retry, &|_| {
                        panic!("no retry")
                    })
                    .unwrap_err();
                assert!(
                    matches!(e, RestoreError::Integrity(ref m)
                        if m.contains("none of the identities given") && m.contains("refusing")),
                    "{form:?}: {e}"
                );
                no_leftovers(&a);
                // Several identity files (a key rotation): the one that
                // matches is used, whichever comes first.
                let (_, old) = key_pair();
                let files: Vec<String> = [("old", old), ("new", a.identity.clone())]
                    .into_iter()
                    .map(|(n, text)| {
                        let p = a.d.path().join(n);
                        std::fs::write(&p, text).unwrap();
                        std::fs::set_permissions(
                            &p,
                            std::os::unix::fs::PermissionsExt::from_mode(0o600),
                        )
                        .unwrap();
                        p.to_string_lossy().into_owned()
                    })
                    .collect();
                let both = Identities::read_files(&files).unwrap();
                let r =
                    restore_retrying(&|| Ok(&dir), Some(&both), SEG, &a.dest(), &retry, &|_| {})
                        .unwrap();
                assert_eq!(r.sha256, sha256(&a.original));
            }
        }

        #[test]
        fn a_flipped_byte_anywhere_is_refused_and_leaves_nothing() {
            for form in encrypted_forms() {
                let a = archive_in(form);
                let path = a.stored(form);
                let good = std::fs::read(&path).unwrap();
                let original = a
                    .dir()
                    .recorded_original(&form_name(SEG, form).unwrap())
                    .unwrap()
                    .unwrap();
                let step = (good.len() / 37).max(1);
                for pos in (0..good.len()).step_by(step).chain([good.len() - 1]) {
                    let mut bad = good.clone();
                    bad[pos] ^= 0x08;
                    std::fs::write(&path, &bad).unwrap();
                    // Damaged after archiving: the record of the stored
                    // bytes catches it.
                    let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                    assert!(
                        matches!(e, RestoreError::Integrity(ref m) if m.contains("checksum mismatch")),
                        "{form:?} at {pos}: {e}"
                    );
                    no_leftovers(&a);
                    // Damaged before its record was made (the record
                    // agrees): the decryption catches it.
                    record_agreeing(&a, form, &original);
                    let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                    assert!(
                        matches!(e, RestoreError::Integrity(ref m) if m.contains("matches its checksum record but")),
                        "{form:?} at {pos}: {e}"
                    );
                    no_leftovers(&a);
                    std::fs::write(&path, &good).unwrap();
                    record_agreeing(&a, form, &original);
                }
                restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap();
            }
        }

        #[test]
        fn a_truncated_file_is_refused() {
            for form in encrypted_forms() {
                let a = archive_in(form);
                let path = a.stored(form);
                let good = std::fs::read(&path).unwrap();
                let original = a
                    .dir()
                    .recorded_original(&form_name(SEG, form).unwrap())
                    .unwrap()
                    .unwrap();
                for cut in [0, 20, good.len() / 2, good.len() - 17, good.len() - 1] {
                    std::fs::write(&path, &good[..cut]).unwrap();
                    let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                    assert!(
                        matches!(e, RestoreError::Integrity(ref m) if m.contains("checksum mismatch")),
                        "{form:?} cut at {cut}: {e}"
                    );
                    record_agreeing(&a, form, &original);
                    let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                    assert!(
                        matches!(e, RestoreError::Integrity(_)),
                        "{form:?} cut at {cut}: {e}"
                    );
                    no_leftovers(&a);
                }
            }
        }

        /// Anyone with the public key can make a valid encrypted file: the
        /// original the record keeps decides, not the decryption.
        #[test]
        fn a_valid_encryption_of_other_bytes_is_refused_by_the_record_of_the_original() {
            for form in encrypted_forms() {
                let a = archive_in(form);
                let name = form_name(SEG, form).unwrap();
                let original = a.dir().recorded_original(&name).unwrap().unwrap();
                // Another WAL file, encrypted to the same key, the record of
                // its stored bytes made to agree.
                let mut other = a.original.clone();
                other[100] ^= 1;
                let packed = if form.compressed {
                    compressed::compress(&other, 1).unwrap()
                } else {
                    other.clone()
                };
                let sealed = a.recipients.seal(&packed).unwrap();
                std::fs::write(a.arch.join(&name), &sealed).unwrap();
                record_agreeing(&a, form, &original);
                let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                assert!(
                    matches!(e, RestoreError::Integrity(ref m) if m.contains("not to the original its record keeps")),
                    "{form:?}: {e}"
                );
                no_leftovers(&a);
                // A record without the original's digest: refused, not
                // restored unverified.
                let bytes = std::fs::read(a.arch.join(&name)).unwrap();
                std::fs::write(
                    a.arch.join(format!("{name}.sha256")),
                    format_record(&sha256(&bytes), &name, None),
                )
                .unwrap();
                let e = restore_verified(&a.dir(), Some(&a.ids), SEG, &a.dest()).unwrap_err();
                assert!(
                    matches!(e, RestoreError::Integrity(ref m) if m.contains("keeps no SHA-256 of the original")),
                    "{form:?}: {e}"
                );
                no_leftovers(&a);
            }
        }

        #[test]
        fn a_hole_is_seen_whatever_form_the_next_segment_is_in() {
            for form in encrypted_forms() {
                let a = archive_in(form);
                let dir = a.dir();
                // SEG is there, encrypted: the one before it is a hole.
                let before = "000000010000000000000006";
                let e = restore_retrying(
                    &|| Ok(&dir),
                    Some(&a.ids),
                    before,
                    &a.dest(),
                    &Retry::never(),
                    &|_| {},
                )
                .unwrap_err();
                assert!(
                    matches!(e, RestoreError::Integrity(ref m) if m.contains("a hole")),
                    "{form:?}: {e}"
                );
                // The one after it: the end of the archive.
                let after = "000000010000000000000008";
                let e = restore_retrying(
                    &|| Ok(&dir),
                    Some(&a.ids),
                    after,
                    &a.dest(),
                    &Retry::never(),
                    &|_| {},
                )
                .unwrap_err();
                assert!(matches!(e, RestoreError::NotFound(_)), "{form:?}: {e}");
            }
        }
    }
}
