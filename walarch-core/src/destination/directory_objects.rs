//! Streamed objects (a base backup's tars) in a directory archive: written
//! to a temporary file in their own folder, fsynced, renamed into place
//! without replacing anything, and made durable with the folders above them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::destination::local_directory::{temp_path, TEMP_PREFIX};
use crate::destination::{ObjectEntry, ObjectWriter};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::support::fsutil::{fsync_dir, rename_noreplace};

/// Writes go to the kernel in pieces this large.
const WRITE_BUFFER: usize = 1 << 20;

/// Checks that an object name stays inside the archive: relative,
/// `/`-separated, no empty, `.` or `..` component, none that looks like one
/// of our temporary files.
pub(crate) fn check_object_name(name: &str) -> Result<(), ArchiveError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.starts_with(TEMP_PREFIX));
    if bad {
        return Err(ArchiveError::new(
            ErrorKind::InvalidName,
            format!("invalid object name \"{name}\""),
        ));
    }
    Ok(())
}

/// Creates the folders of `name` under `root`, fsyncing each parent whose
/// entries changed, so that a durable object is reachable after a crash.
fn make_folders(root: &Path, name: &str, dir_mode: u32) -> Result<PathBuf, ArchiveError> {
    let mut dir = root.to_path_buf();
    let folders: Vec<&str> = name.split('/').collect();
    for part in &folders[..folders.len() - 1] {
        let next = dir.join(part);
        match std::fs::DirBuilder::new().mode(dir_mode).create(&next) {
            Ok(()) => fsync_dir(&dir).map_err(|e| ArchiveError::io("fsync directory", &dir, &e))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(ArchiveError::io("create directory", &next, &e)),
        }
        dir = next;
    }
    Ok(dir)
}

pub(crate) struct DirectoryObject {
    dest: PathBuf,
    temp: PathBuf,
    file: Option<BufWriter<File>>,
    bytes: u64,
}

impl DirectoryObject {
    pub(crate) fn create(
        root: &Path,
        name: &str,
        file_mode: u32,
    ) -> Result<DirectoryObject, ArchiveError> {
        check_object_name(name)?;
        // Folders readable by whoever may read the files (initdb -g: 0750).
        let dir_mode = if file_mode & 0o040 != 0 { 0o750 } else { 0o700 };
        let folder = make_folders(root, name, dir_mode)?;
        let base = name.rsplit('/').next().unwrap_or(name);
        let temp = temp_path(&folder, base);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(|e| ArchiveError::io("create file", &temp, &e))?;
        Ok(DirectoryObject {
            dest: folder.join(base),
            temp,
            file: Some(BufWriter::with_capacity(WRITE_BUFFER, f)),
            bytes: 0,
        })
    }

    fn finish_inner(&mut self) -> Result<u64, ArchiveError> {
        let Some(w) = self.file.take() else {
            return Err(ArchiveError::new(
                ErrorKind::Internal,
                "object already finished or aborted",
            ));
        };
        let f = w
            .into_inner()
            .map_err(|e| ArchiveError::io("write file", &self.temp, e.error()))?;
        f.sync_all()
            .map_err(|e| ArchiveError::io("fsync file", &self.temp, &e))?;
        drop(f);
        match rename_noreplace(&self.temp, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ArchiveError::new(
                    ErrorKind::Conflict,
                    format!(
                        "could not store \"{}\": it already exists",
                        self.dest.display()
                    ),
                ))
            }
            Err(e) => return Err(ArchiveError::io("rename file", &self.temp, &e)),
        }
        let folder = self.dest.parent().unwrap_or(Path::new("/"));
        fsync_dir(folder).map_err(|e| ArchiveError::io("fsync directory", folder, &e))?;
        Ok(self.bytes)
    }
}

impl ObjectWriter for DirectoryObject {
    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        let Some(w) = self.file.as_mut() else {
            return Err(ArchiveError::new(
                ErrorKind::Internal,
                "object already finished",
            ));
        };
        w.write_all(data)
            .map_err(|e| ArchiveError::io("write file", &self.temp, &e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, ArchiveError> {
        self.finish_inner()
    }

    fn abort(self: Box<Self>) {}
}

impl Drop for DirectoryObject {
    /// Whatever did not finish leaves no temporary file behind.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.temp);
    }
}

/// Every file under `root` whose relative name starts with `prefix`.
pub(crate) fn objects_under(root: &Path, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
    let start = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let mut out = Vec::new();
    let mut stack = vec![start.to_string()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ArchiveError::io("read directory", &dir, &e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| ArchiveError::io("read directory", &dir, &e))?;
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            if file.starts_with(TEMP_PREFIX) {
                continue;
            }
            let name = if rel.is_empty() {
                file
            } else {
                format!("{rel}/{file}")
            };
            let meta = entry
                .metadata()
                .map_err(|e| ArchiveError::io("stat file", &entry.path(), &e))?;
            if meta.is_dir() {
                // Descend only where names under the prefix can be.
                if prefix.starts_with(&format!("{name}/")) || name.starts_with(prefix) {
                    stack.push(name);
                }
            } else if meta.is_file() && name.starts_with(prefix) {
                out.push(ObjectEntry {
                    name,
                    size: meta.len(),
                    stored_at: meta.modified().ok(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes object `name`, then each folder above it left empty (never
/// `root` itself), making each change durable.
pub(crate) fn remove_object(root: &Path, name: &str) -> Result<(), ArchiveError> {
    check_object_name(name)?;
    let path = root.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io("remove file", &path, &e)),
    }
    let mut dir = path.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) {
            fsync_dir(&d).map_err(|e| ArchiveError::io("fsync directory", &d, &e))?;
            break;
        }
        match std::fs::remove_dir(&d) {
            Ok(()) => dir = d.parent().map(Path::to_path_buf),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                dir = d.parent().map(Path::to_path_buf)
            }
            Err(_) => {
                // Not empty (or not ours to remove): its entry changed.
                fsync_dir(&d).map_err(|e| ArchiveError::io("fsync directory", &d, &e))?;
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::destination::local_directory::LocalDirectory;
    use crate::destination::Destination;
    use std::io::Read;

    fn names(d: &LocalDirectory, prefix: &str) -> Vec<String> {
        d.objects_under(prefix)
            .unwrap()
            .into_iter()
            .map(|o| o.name)
            .collect()
    }

    fn read(d: &LocalDirectory, name: &str) -> String {
        let mut s = String::new();
        d.open_object(name)
            .unwrap()
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    }

    #[test]
    fn streamed_object_appears_only_when_finished_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let mut w = d.create_object("backups/L/base.tar.zst").unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        assert!(names(&d, "backups/").is_empty(), "visible before finish");
        assert_eq!(w.finish().unwrap(), 11);
        assert_eq!(names(&d, "backups/"), ["backups/L/base.tar.zst"]);
        assert_eq!(read(&d, "backups/L/base.tar.zst"), "hello world");

        let mut again = d.create_object("backups/L/base.tar.zst").unwrap();
        again.write(b"other").unwrap();
        let e = again.finish().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
        assert_eq!(
            read(&d, "backups/L/base.tar.zst"),
            "hello world",
            "replaced"
        );
        // No temporary left anywhere.
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("backups/L"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn aborted_or_dropped_objects_leave_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        let mut w = d.create_object("backups/L/a").unwrap();
        w.write(b"x").unwrap();
        w.abort();
        let w = d.create_object("backups/L/b").unwrap();
        drop(w);
        let left: Vec<_> = std::fs::read_dir(tmp.path().join("backups/L"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn listing_by_prefix_and_removal_prunes_empty_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        for n in ["backups/A/x", "backups/A/y", "backups/B/x", "backupsX/z"] {
            d.create_object(n).unwrap().finish().unwrap();
        }
        std::fs::write(tmp.path().join("000000010000000000000001"), b"w").unwrap();
        assert_eq!(
            names(&d, "backups/"),
            ["backups/A/x", "backups/A/y", "backups/B/x"]
        );
        assert_eq!(names(&d, "backups/A/"), ["backups/A/x", "backups/A/y"]);
        assert!(names(&d, "nothing/").is_empty());
        d.remove_object("backups/B/x").unwrap();
        assert!(!tmp.path().join("backups/B").exists());
        assert!(tmp.path().join("backups/A").exists());
        d.remove_object("backups/B/x").unwrap();
        d.remove_object("backups/A/x").unwrap();
        d.remove_object("backups/A/y").unwrap();
        assert!(!tmp.path().join("backups").exists());
        assert!(tmp.path().join("000000010000000000000001").exists());
    }

    #[test]
    fn names_leaving_the_archive_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let d = LocalDirectory::new(tmp.path(), 0o600);
        for bad in ["", "/etc/x", "a/../../x", "a//b", "./a", ".walarch-tmp.x"] {
            assert!(d.create_object(bad).is_err(), "{bad}");
            assert!(d.remove_object(bad).is_err(), "{bad}");
        }
    }
}
