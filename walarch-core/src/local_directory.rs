//! A directory on a local (or mounted) filesystem as the archive.
//!
//! A file is stored under its WAL name with its SHA-256 in the sidecar
//! `<walfile>.sha256` (`sha256sum -c` format). Both are written to
//! exclusively created temporary files (see `temp_file`), fsynced, and
//! renamed into place; the data with a rename that never replaces an
//! existing file, the sidecar only after it. One directory fsync then makes
//! both names durable. The sidecar is written before the data is renamed, so
//! a failure there (a full disk) leaves nothing under the final name.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::checksum::{format_sidecar, parse_sidecar, sidecar_name, Sha256Digest};
use crate::destination::{Destination, Leftovers, Recorded, Stored};
use crate::error::ArchiveError;
use crate::fsutil::{fsync_dir, fsync_file, rename_noreplace};
use crate::hashed_copy::copy_to_new_file;
use crate::temp_file::temp_path;
use crate::walname::WalFileName;

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
    fn prepare_sidecar(&self, name: &str, sha256: &Sha256Digest) -> Result<PathBuf, ArchiveError> {
        let temp = temp_path(&self.dir, &sidecar_name(name));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(self.file_mode)
                .custom_flags(libc::O_CLOEXEC)
                .open(&temp)
                .map_err(|e| self.io("create file", &temp, &e))?;
            f.write_all(format_sidecar(sha256, name).as_bytes())
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
        let dest = self.dir.join(name);
        // Cheap check first: the copy is wasted work when the name is taken.
        // The rename below is what guarantees nothing is replaced.
        match std::fs::symlink_metadata(&dest) {
            Ok(_) => return Ok(Stored::Exists),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("stat file", &dest, &e)),
        }
        let temp = temp_path(&self.dir, name);
        let (bytes, sha256) = match copy_to_new_file(source, &temp, self.file_mode) {
            Ok(b) => b,
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                return Err(e);
            }
        };
        let side_temp = match self.prepare_sidecar(name, &sha256) {
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
        Ok(Stored::Created { bytes, sha256 })
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
        let temp = self.prepare_sidecar(name, sha256)?;
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

    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let read_err = |e: &io::Error| self.io("read directory", &self.dir, e);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| read_err(&e))? {
            let entry = entry.map_err(|e| read_err(&e))?;
            if let Ok(n) = entry.file_name().into_string() {
                if WalFileName::parse(&n).is_some() {
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

    fn clean_leftovers(&self) -> Result<Leftovers, ArchiveError> {
        crate::temp_file::sweep(&self.dir).map_err(|e| self.io("clean directory", &self.dir, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive_protocol::archive_file;
    use crate::checksum::{hash_file, to_hex};
    use crate::error::ErrorKind;
    use crate::temp_file::TEMP_PREFIX;
    use crate::testing::pattern;
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
                sha256: sha
            }
        );
        assert_eq!(std::fs::read(arch.join(SEG)).unwrap(), data);
        assert_eq!(listing(&arch), vec![SEG.to_string(), format!("{SEG}.sha256")]);
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
}
