//! A directory on a local (or mounted) filesystem as the archive.
//!
//! A file is stored under its WAL name with its SHA-256 in the sidecar
//! `<walfile>.sha256` (`sha256sum -c` format). Both are written to
//! exclusively created temporary files (see `temp_file`), fsynced, and
//! renamed into place; the data with a rename that never replaces an
//! existing file, the sidecar only after it. One directory fsync then makes
//! both names durable. The sidecar is written before the data is renamed, so
//! a failure there (a full disk) leaves nothing under the final name.
//!
//! A temporary name is `.walarch-tmp.<name>.<pid>.<unique>`: hidden from a
//! plain `ls`, never a valid WAL name (so nothing restores it by mistake),
//! and carrying the creating process's PID so that a sweep can tell a crash
//! leftover (its process is gone) from a copy in progress in a live process.
//!
//! A sidecar per file rather than one manifest: each is written with the same
//! temp-file, fsync, rename protocol as its WAL file, by whichever process
//! archived it, with no shared file to lock or append to from parallel
//! copies, and nothing to rewrite when old files are pruned.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::destination::compressed::Original;
use crate::destination::directory_objects::{self, DirectoryObject};
use crate::destination::hashed_copy::copy_to_new_file;
use crate::destination::{
    Destination, Entry, Leftovers, ObjectEntry, ObjectWriter, Recorded, Stored,
};
use crate::support::error::ArchiveError;
use crate::support::fsutil::{fsync_dir, fsync_file, rename_noreplace};
use crate::wal::checksum::{from_hex, sha256, to_hex, Sha256Digest};
use crate::wal::walname::stored_form;

pub const SIDECAR_SUFFIX: &str = ".sha256";

pub fn sidecar_name(walfile: &str) -> String {
    format!("{walfile}{SIDECAR_SUFFIX}")
}

/// The sidecar's text for `walfile`.
#[cfg(test)]
fn format_sidecar(digest: &Sha256Digest, walfile: &str) -> String {
    format_record(digest, walfile, None)
}

/// The digest a sidecar records for `walfile`; `None` if it is malformed or
/// names another file.
fn parse_sidecar(text: &str, walfile: &str) -> Option<Sha256Digest> {
    parse_record(text, walfile).map(|(d, _)| d)
}

/// Marks the record's line of an encrypted form's original: a `#` comment
/// to `sha256sum -c`, which checks the stored bytes by the first line.
const ORIGINAL_LINE: &str = "# original sha256 ";

/// A checksum record's text (`sha256sum -c` format): the stored bytes'
/// SHA-256 and, for an encrypted form, a comment line with the SHA-256 and
/// length of the file before encryption.
pub fn format_record(digest: &Sha256Digest, stored: &str, original: Option<&Original>) -> String {
    let mut t = format!("{}  {stored}\n", to_hex(digest));
    if let Some(o) = original {
        t.push_str(&format!(
            "{ORIGINAL_LINE}{} bytes {}\n",
            to_hex(&o.sha256),
            o.len
        ));
    }
    t
}

/// The digest a record gives for `stored` (`HEX  NAME` or `HEX *NAME`) and
/// the original it records, if any; `None` if it is malformed or names
/// another file.
pub fn parse_record(text: &str, stored: &str) -> Option<(Sha256Digest, Option<Original>)> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let mut lines = text.split('\n');
    let first = lines.next()?;
    let (hex, rest) = first.split_at_checked(64)?;
    let file = rest
        .strip_prefix("  ")
        .or_else(|| rest.strip_prefix(" *"))?;
    (file == stored).then_some(())?;
    let digest = from_hex(hex)?;
    let original = match lines.next() {
        None => None,
        Some(l) => {
            let (hex, len) = l.strip_prefix(ORIGINAL_LINE)?.split_once(" bytes ")?;
            Some(Original {
                sha256: from_hex(hex)?,
                len: len.parse().ok()?,
            })
        }
    };
    lines.next().is_none().then_some((digest, original))
}

pub const TEMP_PREFIX: &str = ".walarch-tmp.";

/// Upper bound of what a temporary name adds to the WAL file name.
pub const MAX_DECORATION_LEN: usize = 64;

/// A leftover whose PID is alive (PID reuse after a crash) is still removed
/// once it is this old: no real copy of one WAL file takes a day.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);
/// A checksum record without its file for this long is an orphan (a
/// removal interrupted between the two), never a store in progress.
const ORPHAN_AFTER: Duration = Duration::from_secs(3600);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path for archiving `walfile` into `dir`.
pub(crate) fn temp_path(dir: &Path, walfile: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{walfile}.{}.{:x}{:x}",
        std::process::id(),
        nanos as u64,
        n
    ))
}

/// The PID recorded in a temporary file name, if the name is one of ours.
fn temp_owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '.');
    let _unique = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let _walfile = parts.next()?;
    Some(pid)
}

/// Removes temporary files whose creating process is gone (or is this very
/// process, which at start-up has no copy in progress), or that are older
/// than [`STALE_AFTER`]. Makes the removals durable with a directory fsync.
fn sweep(dir: &Path) -> std::io::Result<Leftovers> {
    let me = std::process::id() as i32;
    let mut report = Leftovers::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = match entry.file_name().into_string() {
            Ok(n) => n,
            Err(_) => continue,
        };
        let Some(pid) = temp_owner_pid(&name) else {
            continue;
        };
        let stale = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if pid == me || !crate::archiving::host::process_alive(pid) || stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => report.removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report
                    .failed
                    .push((name, crate::support::error::os_message(&e))),
            }
        }
    }
    sweep_orphan_records(dir, &mut report)?;
    if !report.removed.is_empty() {
        crate::support::fsutil::fsync_dir(dir)?;
    }
    Ok(report)
}

/// Removes checksum records whose file is gone: `remove` takes the file
/// first, so a crash in between leaves one. Harmless to `verify`, but a
/// record that outlives its file would be read as the record of a new file
/// stored under the name later if that store died before writing its own.
/// Only a record untouched for `ORPHAN_AFTER` is one: a store in progress
/// writes its record fresh. It is first moved aside (a temporary name, swept
/// like any), and put back if its file has appeared meanwhile, unless that
/// store has already put its own record in place.
fn sweep_orphan_records(dir: &Path, report: &mut Leftovers) -> std::io::Result<()> {
    let mut put_back = false;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(walfile) = name.strip_suffix(SIDECAR_SUFFIX) else {
            continue;
        };
        if stored_form(walfile).is_none() || dir.join(walfile).symlink_metadata().is_ok() {
            continue;
        }
        let old = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > ORPHAN_AFTER);
        if !old {
            continue;
        }
        let side = dir.join(&name);
        let aside = temp_path(dir, &name);
        match std::fs::rename(&side, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                report
                    .failed
                    .push((name, crate::support::error::os_message(&e)));
                continue;
            }
        }
        let restored = if dir.join(walfile).symlink_metadata().is_ok() {
            match rename_noreplace(&aside, &side) {
                Ok(()) => {
                    put_back = true;
                    true
                }
                // The store that made the file has written its record.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => {
                    report
                        .failed
                        .push((name, crate::support::error::os_message(&e)));
                    continue;
                }
            }
        } else {
            false
        };
        if !restored {
            match std::fs::remove_file(&aside) {
                Ok(()) => report.removed.push(name),
                Err(e) => report
                    .failed
                    .push((name, crate::support::error::os_message(&e))),
            }
        }
    }
    if put_back {
        crate::support::fsutil::fsync_dir(dir)?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct LocalDirectory {
    dir: PathBuf,
    /// Permission bits of every file written (PostgreSQL's
    /// `pg_file_create_mode`: 0600, or 0640 on `initdb -g` clusters).
    file_mode: u32,
}

impl LocalDirectory {
    pub fn new(dir: impl Into<PathBuf>, file_mode: u32) -> Self {
        LocalDirectory {
            dir: dir.into(),
            file_mode,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn io(&self, action: &str, path: &Path, e: &io::Error) -> ArchiveError {
        ArchiveError::io(action, path, e)
    }

    /// Writes the sidecar of `name` to a new temporary file, fsynced; returns
    /// its path for the caller to rename into place.
    fn prepare_sidecar(
        &self,
        name: &str,
        sha256: &Sha256Digest,
        original: Option<&Original>,
    ) -> Result<PathBuf, ArchiveError> {
        let temp = temp_path(&self.dir, &sidecar_name(name));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(&temp)
                .map_err(|e| self.io("create file", &temp, &e))?;
            f.write_all(format_record(sha256, name, original).as_bytes())
                .map_err(|e| self.io("write file", &temp, &e))?;
            f.sync_all().map_err(|e| self.io("fsync file", &temp, &e))
        })();
        match result {
            Ok(()) => Ok(temp),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Stores `name` create-only from a new temporary file that `write`
    /// fills (fsynced, its length and SHA-256 returned), with its sidecar.
    fn store_with(
        &self,
        name: &str,
        original: Option<&Original>,
        write: impl FnOnce(&Path) -> Result<(u64, Sha256Digest), ArchiveError>,
    ) -> Result<Stored, ArchiveError> {
        let dest = self.dir.join(name);
        // Cheap check first: the copy is wasted work when the name is taken.
        // The rename below is what guarantees nothing is replaced.
        match std::fs::symlink_metadata(&dest) {
            Ok(_) => return Ok(Stored::Exists),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("stat file", &dest, &e)),
        }
        let temp = temp_path(&self.dir, name);
        let (bytes, sha256) = match write(&temp) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let side_temp = match self.prepare_sidecar(name, &sha256, original) {
            Ok(t) => t,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let discard = || {
            let _ = std::fs::remove_file(&temp);
            let _ = std::fs::remove_file(&side_temp);
        };
        match rename_noreplace(&temp, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                discard();
                return Ok(Stored::Exists);
            }
            Err(e) => {
                discard();
                return Err(self
                    .io("rename file", &temp, &e)
                    .with_detail(format!("The target was \"{}\".", dest.display())));
            }
        }
        // The data is ours, new: a sidecar already under its name is a
        // leftover of an attempt that died between the two renames.
        let side = self.dir.join(sidecar_name(name));
        if let Err(e) = std::fs::rename(&side_temp, &side) {
            let _ = std::fs::remove_file(&side_temp);
            // The data is in place without its record; the retry finds it
            // identical and records the checksum then.
            return Err(self.io("rename file", &side_temp, &e));
        }
        // Not archived until the directory entries are durable; if this
        // fails, the retry finds an identical file and fsyncs again.
        self.fsync_dir()?;
        Ok(Stored::Created {
            bytes,
            sha256,
            stored_bytes: bytes,
        })
    }

    /// Stores `data` as `name`, its record keeping `original` when given.
    fn store_bytes(
        &self,
        name: &str,
        data: &[u8],
        original: Option<&Original>,
    ) -> Result<Stored, ArchiveError> {
        self.store_with(name, original, |temp| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(temp)
                .map_err(|e| self.io("create file", temp, &e))?;
            f.write_all(data)
                .map_err(|e| self.io("write file", temp, &e))?;
            f.sync_all().map_err(|e| self.io("fsync file", temp, &e))?;
            Ok((data.len() as u64, sha256(data)))
        })
    }

    fn fsync_dir(&self) -> Result<(), ArchiveError> {
        fsync_dir(&self.dir).map_err(|e| self.io("fsync directory", &self.dir, &e))
    }
}

impl Destination for LocalDirectory {
    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        self.store_with(name, None, |temp| {
            copy_to_new_file(source, temp, self.file_mode)
        })
    }

    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError> {
        self.store_bytes(name, data, None)
    }

    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &Original,
    ) -> Result<Stored, ArchiveError> {
        self.store_bytes(name, data, Some(original))
    }

    fn recorded_original(&self, name: &str) -> Result<Option<Original>, ArchiveError> {
        let path = self.dir.join(sidecar_name(name));
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(parse_record(&t, name).and_then(|(_, o)| o)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(None),
            Err(e) => Err(self.io("read file", &path, &e)),
        }
    }

    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        let path = self.dir.join(sidecar_name(name));
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(parse_sidecar(&t, name)
                .map(Recorded::Digest)
                .unwrap_or(Recorded::Malformed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Recorded::Missing),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Recorded::Malformed),
            Err(e) => Err(self.io("read file", &path, &e)),
        }
    }

    fn write_record(&self, name: &str, sha256: &Sha256Digest) -> Result<(), ArchiveError> {
        let temp = self.prepare_sidecar(name, sha256, None)?;
        std::fs::rename(&temp, self.dir.join(sidecar_name(name))).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            self.io("rename file", &temp, &e)
        })?;
        self.fsync_dir()
    }

    fn make_durable(&self, name: &str) -> Result<(), ArchiveError> {
        for path in [self.dir.join(name), self.dir.join(sidecar_name(name))] {
            fsync_file(&path).map_err(|e| self.io("fsync file", &path, &e))?;
        }
        self.fsync_dir()
    }

    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        let path = self.dir.join(name);
        match std::fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("stat file", &path, &e)),
        }
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        let path = self.dir.join(name);
        match File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("open file", &path, &e)),
        }
    }

    fn is_empty(&self) -> Result<bool, ArchiveError> {
        let mut rd =
            std::fs::read_dir(&self.dir).map_err(|e| self.io("read directory", &self.dir, &e))?;
        Ok(rd.next().is_none())
    }

    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        let read_err = |e: &io::Error| self.io("read directory", &self.dir, e);
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| read_err(&e))? {
            let entry = entry.map_err(|e| read_err(&e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) || name.ends_with(SIDECAR_SUFFIX) {
                continue;
            }
            let meta = entry.metadata().ok();
            if meta.as_ref().is_some_and(|m| !m.is_file()) {
                continue;
            }
            entries.push(Entry {
                name,
                stored_at: meta.and_then(|m| m.modified().ok()),
            });
        }
        Ok(entries)
    }

    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let read_err = |e: &io::Error| self.io("read directory", &self.dir, e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| read_err(&e))? {
            let entry = entry.map_err(|e| read_err(&e))?;
            if let Ok(n) = entry.file_name().into_string() {
                if stored_form(&n).is_some() {
                    names.push(n);
                }
            }
        }
        Ok(names)
    }

    fn remove(&self, name: &str) -> Result<(), ArchiveError> {
        for path in [self.dir.join(name), self.dir.join(sidecar_name(name))] {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(self.io("remove file", &path, &e))
                }
                _ => {}
            }
        }
        self.fsync_dir()
    }

    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        Ok(Box::new(DirectoryObject::create(
            &self.dir,
            name,
            self.file_mode,
        )?))
    }

    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        directory_objects::objects_under(&self.dir, prefix)
    }

    fn open_object(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        directory_objects::check_object_name(name)?;
        self.open(name)
    }

    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        directory_objects::remove_object(&self.dir, name)
    }

    fn clean_leftovers(&self) -> Result<Leftovers, ArchiveError> {
        sweep(&self.dir).map_err(|e| self.io("clean directory", &self.dir, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archive_protocol::archive_file;
    use crate::support::error::ErrorKind;
    use crate::support::testing::pattern;
    use crate::wal::checksum::{hash_file, to_hex};
    use std::os::unix::fs::PermissionsExt;

    const SEG: &str = "000000010000000000000001";

    fn setup(content: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("pg_wal");
        let arch = d.path().join("archive");
        std::fs::create_dir(&src).unwrap();
        std::fs::create_dir(&arch).unwrap();
        std::fs::write(src.join(SEG), content).unwrap();
        (d, src, arch)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn stores_byte_identical_with_a_sha256sum_sidecar_and_no_leftovers() {
        let data = pattern(3 * (1 << 20) + 123);
        let (_d, src, arch) = setup(&data);
        let dest = LocalDirectory::new(&arch, 0o640);
        let out = dest.store_new(SEG, &src.join(SEG)).unwrap();
        let (_, sha) = hash_file(&arch.join(SEG)).unwrap();
        assert_eq!(
            out,
            Stored::Created {
                bytes: data.len() as u64,
                sha256: sha,
                stored_bytes: data.len() as u64,
            }
        );
        assert_eq!(std::fs::read(arch.join(SEG)).unwrap(), data);
        assert_eq!(
            listing(&arch),
            vec![SEG.to_string(), format!("{SEG}.sha256")]
        );
        assert_eq!(
            std::fs::read_to_string(arch.join(format!("{SEG}.sha256"))).unwrap(),
            format!("{}  {SEG}\n", to_hex(&sha))
        );
        assert_eq!(mode(&arch.join(SEG)), 0o640);
        assert_eq!(mode(&arch.join(format!("{SEG}.sha256"))), 0o640);
        assert_eq!(dest.store_new(SEG, &src.join(SEG)).unwrap(), Stored::Exists);
    }

    /// A record written for a file that is already archived gets the
    /// directory's file mode too, not a default.
    #[test]
    fn records_added_later_use_the_file_mode() {
        let data = pattern(10_000);
        let (_d, src, arch) = setup(&data);
        let dest = LocalDirectory::new(&arch, 0o640);
        std::fs::write(arch.join(SEG), &data).unwrap();
        std::fs::set_permissions(arch.join(SEG), std::fs::Permissions::from_mode(0o640)).unwrap();
        archive_file(&dest, SEG, &src.join(SEG)).unwrap();
        assert_eq!(mode(&arch.join(format!("{SEG}.sha256"))), 0o640);
        dest.write_record(SEG, &[1; 32]).unwrap();
        archive_file(&dest, SEG, &src.join(SEG)).unwrap();
        assert_eq!(mode(&arch.join(format!("{SEG}.sha256"))), 0o640);
    }

    #[test]
    fn leftover_sidecar_without_data_is_replaced() {
        let data = pattern(5000);
        let (_d, src, arch) = setup(&data);
        std::fs::write(arch.join(format!("{SEG}.sha256")), "0000  stale\n").unwrap();
        let dest = LocalDirectory::new(&arch, 0o600);
        let Stored::Created { sha256, .. } = dest.store_new(SEG, &src.join(SEG)).unwrap() else {
            panic!("not stored");
        };
        assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(sha256));
    }

    #[test]
    fn missing_archive_directory_fails_cleanly() {
        let (_d, src, arch) = setup(b"abc");
        let dest = LocalDirectory::new(arch.join("gone"), 0o600);
        let err = dest.store_new(SEG, &src.join(SEG)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert_eq!(err.os_error, Some(libc::ENOENT));
        assert!(err.message.starts_with("could not create file"), "{err}");
    }

    #[test]
    fn temp_files_are_removed_on_failure() {
        // Read-only archive directory (root bypasses permissions, so only
        // assert the no-leftover part there).
        let (_d, src, arch) = setup(&pattern(1000));
        std::fs::set_permissions(&arch, std::fs::Permissions::from_mode(0o500)).unwrap();
        let r = LocalDirectory::new(&arch, 0o600).store_new(SEG, &src.join(SEG));
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert_eq!(r.unwrap_err().os_error, Some(libc::EACCES));
        }
        assert!(listing(&arch).iter().all(|n| !n.starts_with(TEMP_PREFIX)));
    }

    #[test]
    fn lists_wal_files_only_and_removes_data_then_record() {
        let (_d, src, arch) = setup(b"abc");
        let dest = LocalDirectory::new(&arch, 0o600);
        dest.store_new(SEG, &src.join(SEG)).unwrap();
        std::fs::write(arch.join(format!("{TEMP_PREFIX}{SEG}.1.1")), b"x").unwrap();
        std::fs::write(arch.join("unrelated"), b"x").unwrap();
        assert_eq!(dest.list().unwrap(), vec![SEG.to_string()]);
        dest.remove(SEG).unwrap();
        assert!(dest.list().unwrap().is_empty());
        assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
        assert!(dest.open(SEG).unwrap().is_none());
    }

    #[test]
    fn sidecar_round_trip_and_sha256sum_format() {
        let (_, d) = crate::wal::checksum::hash_reader(&mut &b"abc"[..]).unwrap();
        let text = format_sidecar(&d, "000000010000000000000001");
        assert_eq!(text, format!("{}  000000010000000000000001\n", to_hex(&d)));
        assert_eq!(parse_sidecar(&text, "000000010000000000000001"), Some(d));
        assert_eq!(parse_sidecar(&text, "000000010000000000000002"), None);
        assert_eq!(
            parse_sidecar(
                "xyz  000000010000000000000001\n",
                "000000010000000000000001"
            ),
            None
        );
    }

    #[test]
    fn sha256sum_accepts_the_sidecar() {
        if std::process::Command::new("sha256sum")
            .arg("--version")
            .output()
            .is_err()
        {
            return; // coreutils missing: nothing to compare with
        }
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000001";
        std::fs::write(dir.path().join(name), vec![5u8; 100_000]).unwrap();
        let (len, d) = hash_file(&dir.path().join(name)).unwrap();
        assert_eq!(len, 100_000);
        std::fs::write(
            dir.path().join(sidecar_name(name)),
            format_sidecar(&d, name),
        )
        .unwrap();
        let ok = std::process::Command::new("sha256sum")
            .args(["-c", &sidecar_name(name)])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stdout)
        );
        std::fs::write(dir.path().join(name), vec![6u8; 100_000]).unwrap();
        let bad = std::process::Command::new("sha256sum")
            .args(["-c", &sidecar_name(name)])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!bad.status.success());
    }

    #[test]
    fn temp_names_are_recognised_and_never_wal_names() {
        let d = Path::new("/arch");
        let a = temp_path(d, "000000010000000000000001");
        let b = temp_path(d, "000000010000000000000001");
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(TEMP_PREFIX));
        assert_eq!(temp_owner_pid(name), Some(std::process::id() as i32));
        assert!(!crate::wal::walname::is_archivable_name(name));
        assert!(name.len() - "000000010000000000000001".len() <= MAX_DECORATION_LEN);
        assert_eq!(temp_owner_pid("000000010000000000000001"), None);
        assert_eq!(temp_owner_pid(".walarch-tmp.x.notapid.1"), None);
    }

    #[test]
    fn sweep_removes_records_whose_file_is_gone() {
        let (_d, src, arch) = setup(b"abc");
        let dest = LocalDirectory::new(&arch, 0o600);
        let other = "000000010000000000000002";
        std::fs::copy(src.join(SEG), src.join(other)).unwrap();
        dest.store_new(SEG, &src.join(SEG)).unwrap();
        dest.store_new(other, &src.join(other)).unwrap();
        // A removal that died between the file and its record.
        std::fs::remove_file(arch.join(other)).unwrap();
        // Records that are not walarch's are none of its business.
        std::fs::write(arch.join("notes.txt.sha256"), b"x").unwrap();
        // A fresh record may be a store's in progress: left alone.
        assert!(dest.clean_leftovers().unwrap().removed.is_empty());
        let record = std::fs::File::options()
            .write(true)
            .open(arch.join(format!("{other}.sha256")))
            .unwrap();
        record
            .set_modified(std::time::SystemTime::now() - ORPHAN_AFTER * 2)
            .unwrap();
        let r = dest.clean_leftovers().unwrap();
        assert_eq!(r.removed, [format!("{other}.sha256")]);
        assert!(r.failed.is_empty());
        let mut left = listing(&arch);
        left.sort();
        assert_eq!(
            left,
            [
                SEG.to_string(),
                format!("{SEG}.sha256"),
                "notes.txt.sha256".to_string()
            ]
        );
        assert!(matches!(dest.recorded(SEG).unwrap(), Recorded::Digest(_)));
        // Nothing more the second time.
        assert!(dest.clean_leftovers().unwrap().removed.is_empty());
        // A new file under the name gets its own record.
        dest.store_new(other, &src.join(other)).unwrap();
        assert!(matches!(dest.recorded(other).unwrap(), Recorded::Digest(_)));
    }

    #[test]
    fn sweep_removes_leftovers_of_dead_processes_only() {
        let d = tempfile::tempdir().unwrap();
        // A process that has exited: its PID is free (reuse within the test is
        // practically impossible).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_tmp = format!("{TEMP_PREFIX}000000010000000000000001.{dead}.abc");
        let mine = temp_path(d.path(), "000000010000000000000002");
        // PID 1 is always alive: a copy in progress elsewhere must survive.
        let live_tmp = format!("{TEMP_PREFIX}000000010000000000000003.1.abc");
        for n in [
            &dead_tmp,
            &live_tmp,
            "000000010000000000000001",
            "unrelated",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::write(&mine, b"x").unwrap();

        let mut r = sweep(d.path()).unwrap();
        r.removed.sort();
        let mut expect = vec![
            dead_tmp.clone(),
            mine.file_name().unwrap().to_str().unwrap().to_string(),
        ];
        expect.sort();
        assert_eq!(r.removed, expect);
        assert!(d.path().join(&live_tmp).exists());
        assert!(d.path().join("000000010000000000000001").exists());
        assert!(d.path().join("unrelated").exists());
    }
}
