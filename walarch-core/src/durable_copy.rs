//! The archive write: a WAL file counts as archived only once it is durable
//! under its final name.
//!
//! 1. If the final name exists: identical bytes → success (the normal case
//!    after a crash between archiving and `.ready`→`.done`), after making sure
//!    it is durable; different bytes → refuse, and never touch it.
//! 2. Otherwise copy into an exclusively created temporary file in the archive
//!    directory, fsync it, rename it to the final name without ever replacing
//!    an existing file, and fsync the directory.
//! 3. On any failure the temporary file is removed, so nothing partial is left
//!    and nothing appears under the final name.
//! 4. The SHA-256 of the bytes written is computed while copying and recorded
//!    in the sidecar `<walfile>.sha256` (same temp/fsync/rename protocol);
//!    one directory fsync then covers both names. A file counts as archived
//!    only once its checksum record is durable too: if a crash leaves the file
//!    without its sidecar, the next attempt finds an identical file, and
//!    writes the missing record from the bytes it compared.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::checksum::{format_sidecar, read_recorded, sidecar_name, Recorded, Sha256Digest};
use crate::error::{ArchiveError, ErrorKind};
use crate::fsutil::{
    copy_range, copy_range_unsupported, fsync_dir, fsync_file, read_full, rename_noreplace,
    same_contents, start_writeback,
};
use crate::temp_file::temp_path;
use crate::trailing_hash::TrailingHasher;
use crate::walname::is_archivable_name;

#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Permission bits of archived files (PostgreSQL's `pg_file_create_mode`).
    pub file_mode: u32,
    /// Read/write buffer size (default `fsutil::IO_BUFFER`).
    pub buffer_size: usize,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            file_mode: 0o600,
            buffer_size: crate::fsutil::IO_BUFFER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveOutcome {
    /// Copied now; `bytes` were written.
    Archived { bytes: u64, sha256: Sha256Digest },
    /// Already in the archive with identical content.
    AlreadyArchived { bytes: u64, sha256: Sha256Digest },
}

impl ArchiveOutcome {
    pub fn bytes(&self) -> u64 {
        match *self {
            ArchiveOutcome::Archived { bytes, .. }
            | ArchiveOutcome::AlreadyArchived { bytes, .. } => bytes,
        }
    }
    pub fn sha256(&self) -> Sha256Digest {
        match *self {
            ArchiveOutcome::Archived { sha256, .. }
            | ArchiveOutcome::AlreadyArchived { sha256, .. } => sha256,
        }
    }
}

/// Archives `source` as `archive_dir/name`. See the module docs.
pub fn archive_file(
    source: &Path,
    archive_dir: &Path,
    name: &str,
    opts: &CopyOptions,
) -> Result<ArchiveOutcome, ArchiveError> {
    if !is_archivable_name(name) {
        return Err(ArchiveError::new(
            ErrorKind::InvalidName,
            format!("\"{name}\" is not a WAL file name walarch_ext archives"),
        )
        .with_detail("Only WAL segments and .partial, .history and .backup files are archived."));
    }
    let dest = archive_dir.join(name);

    match std::fs::symlink_metadata(&dest) {
        Ok(_) => return existing_copy(source, &dest, archive_dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ArchiveError::io("stat file", &dest, &e)),
    }

    let temp = temp_path(archive_dir, name);
    let (bytes, sha256) = match copy_to_new_file(source, &temp, opts) {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };

    // The checksum record is written (to its own temporary file) before the
    // data is renamed: if that fails, e.g. on a full disk, nothing appears
    // under the final name.
    let side_temp = match prepare_sidecar(archive_dir, name, &sha256, opts) {
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
            // Someone archived the same file since our check: the same rule
            // applies, judged on what we just wrote.
            let r = existing_copy(&temp, &dest, archive_dir);
            discard();
            return r;
        }
        Err(e) => {
            discard();
            return Err(ArchiveError::io("rename file", &temp, &e)
                .with_detail(format!("The target was \"{}\".", dest.display())));
        }
    }
    // The data is ours, new: a sidecar already under its name is a leftover
    // of an attempt that died between the two renames, so it is replaced.
    let side = archive_dir.join(sidecar_name(name));
    if let Err(e) = std::fs::rename(&side_temp, &side) {
        let _ = std::fs::remove_file(&side_temp);
        // The data is in place without its record; the retry finds it
        // identical and records the checksum then.
        return Err(ArchiveError::io("rename file", &side_temp, &e));
    }
    // Until the directory entries are durable the file is not archived; if
    // this fails, the retry finds an identical file and fsyncs again.
    fsync_dir(archive_dir).map_err(|e| ArchiveError::io("fsync directory", archive_dir, &e))?;
    Ok(ArchiveOutcome::Archived { bytes, sha256 })
}

/// Writes the checksum record for `name` to a new temporary file, fsynced;
/// returns its path for the caller to rename into place.
fn prepare_sidecar(
    dir: &Path,
    name: &str,
    sha256: &Sha256Digest,
    opts: &CopyOptions,
) -> Result<PathBuf, ArchiveError> {
    let temp = temp_path(dir, &sidecar_name(name));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(opts.file_mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&temp)
            .map_err(|e| ArchiveError::io("create file", &temp, &e))?;
        f.write_all(format_sidecar(sha256, name).as_bytes())
            .map_err(|e| ArchiveError::io("write file", &temp, &e))?;
        f.sync_all()
            .map_err(|e| ArchiveError::io("fsync file", &temp, &e))
    })();
    match result {
        Ok(()) => Ok(temp),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Writes `<name>.sha256` in place (temporary file, fsync, rename); the
/// caller fsyncs the directory.
fn write_sidecar(
    dir: &Path,
    name: &str,
    sha256: &Sha256Digest,
    opts: &CopyOptions,
) -> Result<(), ArchiveError> {
    let temp = prepare_sidecar(dir, name, sha256, opts)?;
    std::fs::rename(&temp, dir.join(sidecar_name(name))).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        ArchiveError::io("rename file", &temp, &e)
    })
}

/// The final name exists: success only if its content equals `source`'s,
/// judged by the recorded checksum when there is one (hashing the source), by
/// the bytes otherwise (then recording the missing checksum), after making
/// both durable.
fn existing_copy(source: &Path, dest: &Path, dir: &Path) -> Result<ArchiveOutcome, ArchiveError> {
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let recorded = read_recorded(dir, &name)
        .map_err(|e| ArchiveError::io("read file", &dir.join(sidecar_name(&name)), &e))?;
    let (same, sha256, record_missing) = match recorded {
        Recorded::Digest(d) => {
            let (_, src) = crate::checksum::hash_file(source)
                .map_err(|e| ArchiveError::io("read file", source, &e))?;
            let size_ok = std::fs::metadata(source).map(|m| m.len()).ok()
                == std::fs::metadata(dest).map(|m| m.len()).ok();
            (src == d && size_ok, src, false)
        }
        Recorded::Missing | Recorded::Malformed => {
            let (same, d) = same_contents_hashed(source, dest)
                .map_err(|e| ArchiveError::io("compare with existing archive file", dest, &e))?;
            (same, d, true)
        }
    };
    if !same {
        let size = |p: &Path| {
            std::fs::metadata(p)
                .map(|m| m.len().to_string())
                .unwrap_or("?".into())
        };
        return Err(ArchiveError::new(
            ErrorKind::Conflict,
            format!(
                "archive file \"{}\" already exists with different contents",
                dest.display()
            ),
        )
        .with_detail(format!(
            "The archived file has {} bytes, \"{}\" has {} bytes, and their contents differ.",
            size(dest),
            source.display(),
            size(source)
        ))
        .with_hint(
            "The archive may belong to another cluster or hold a damaged copy. \
             Investigate before moving the archived file away; walarch_ext never overwrites it.",
        ));
    }
    fsync_file(dest).map_err(|e| ArchiveError::io("fsync file", dest, &e))?;
    if record_missing {
        write_sidecar(dir, &name, &sha256, &CopyOptions::default())?;
    } else {
        let side = dir.join(sidecar_name(&name));
        fsync_file(&side).map_err(|e| ArchiveError::io("fsync file", &side, &e))?;
    }
    fsync_dir(dir).map_err(|e| ArchiveError::io("fsync directory", dir, &e))?;
    let bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(ArchiveOutcome::AlreadyArchived { bytes, sha256 })
}

/// Compares two files byte for byte, hashing the first; the digest is only
/// meaningful when they are the same.
fn same_contents_hashed(a: &Path, b: &Path) -> std::io::Result<(bool, Sha256Digest)> {
    if !same_contents(a, b)? {
        return Ok((false, [0; 32]));
    }
    let (_, d) = crate::checksum::hash_file(a)?;
    Ok((true, d))
}

/// How much is written before its writeback is started (PostgreSQL's
/// FLUSH_DISTANCE in copydir.c).
const FLUSH_DISTANCE: u64 = 1 << 20;

/// Copies `source` into the new file `temp` (created exclusively), hashing
/// the bytes written, and fsyncs it. The caller removes `temp` on error.
fn copy_to_new_file(
    source: &Path,
    temp: &Path,
    opts: &CopyOptions,
) -> Result<(u64, Sha256Digest), ArchiveError> {
    let src = File::open(source).map_err(|e| ArchiveError::io("open file", source, &e))?;
    // Readable too: the hashing thread reads the written bytes back.
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(opts.file_mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(temp)
        .map_err(|e| ArchiveError::io("create file", temp, &e))?;
    let (total, digest) = std::thread::scope(|scope| {
        let hasher = TrailingHasher::start(scope, &dst);
        let total = copy_contents(&src, &dst, source, temp, opts.buffer_size, |n| {
            hasher.written(n)
        })?;
        let digest = hasher
            .finish(total)
            .map_err(|e| ArchiveError::io("read back file", temp, &e))?;
        Ok::<_, ArchiveError>((total, digest))
    })?;
    dst.sync_all()
        .map_err(|e| ArchiveError::io("fsync file", temp, &e))?;
    Ok((total, digest))
}

/// Copies all of `src` into `dst`, both at their start: in the kernel where
/// it can (`copy_file_range`), else through a user-space buffer. Starts the
/// writeback of every megabyte as it goes and reports the length written so
/// far to `progress`. Returns the length copied.
fn copy_contents(
    src: &File,
    dst: &File,
    source: &Path,
    temp: &Path,
    buffer_size: usize,
    mut progress: impl FnMut(u64),
) -> Result<u64, ArchiveError> {
    let write_err = |e: &io::Error| {
        ArchiveError::io("write file", temp, e)
            .with_detail(format!("Copying from \"{}\".", source.display()))
    };
    let mut total = 0u64;
    let mut flushed = 0u64;
    let mut kernel_copy = true;
    let mut buf = Vec::new();
    loop {
        let n = if kernel_copy {
            match copy_range(src, dst, FLUSH_DISTANCE as usize) {
                Ok(n) => n,
                Err(e) if total == 0 && copy_range_unsupported(&e) => {
                    kernel_copy = false;
                    continue;
                }
                Err(e) => return Err(write_err(&e)),
            }
        } else {
            buf.resize(buffer_size.max(8192), 0);
            let n = read_full(&mut &*src, &mut buf)
                .map_err(|e| ArchiveError::io("read file", source, &e))?;
            (&*dst).write_all(&buf[..n]).map_err(|e| write_err(&e))?;
            n
        };
        if n == 0 {
            break;
        }
        total += n as u64;
        // Writing back as we go overlaps the disk with the copy; without it
        // the fsync waits for the whole file, as `dd conv=fsync` does, and a
        // single stream drained at ~235 MiB/s instead of ~275 (64 x 16 MiB,
        // same machine, before the other changes of that commit).
        if total - flushed >= FLUSH_DISTANCE {
            start_writeback(dst, flushed, total - flushed);
            flushed = total;
        }
        progress(total);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::to_hex;
    use crate::temp_file::TEMP_PREFIX;

    const SEG: &str = "000000010000000000000001";

    fn setup(content: &[u8]) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
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

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn copies_byte_identical_with_no_leftovers() {
        let data = pattern(3 * (1 << 20) + 123);
        let (_d, src, arch) = setup(&data);
        let out = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap();
        assert_eq!(out.bytes(), data.len() as u64);
        assert!(matches!(out, ArchiveOutcome::Archived { .. }));
        assert_eq!(std::fs::read(arch.join(SEG)).unwrap(), data);
        assert_eq!(
            listing(&arch),
            vec![SEG.to_string(), format!("{SEG}.sha256")]
        );
        // The sidecar records the SHA-256 of exactly the bytes archived.
        let (_, d) = crate::checksum::hash_file(&arch.join(SEG)).unwrap();
        assert_eq!(out.sha256(), d);
        assert_eq!(
            std::fs::read_to_string(arch.join(format!("{SEG}.sha256"))).unwrap(),
            format!("{}  {SEG}\n", to_hex(&d))
        );
    }

    #[test]
    fn identical_duplicate_is_success() {
        let data = pattern(100_000);
        let (_d, src, arch) = setup(&data);
        std::fs::write(arch.join(SEG), &data).unwrap();
        let out = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap();
        assert!(matches!(
            out,
            ArchiveOutcome::AlreadyArchived { bytes: 100_000, .. }
        ));
        // A file without its checksum record gets one (a crash between the
        // data rename and the sidecar's).
        assert_eq!(
            listing(&arch),
            vec![SEG.to_string(), format!("{SEG}.sha256")]
        );
        assert_eq!(
            crate::checksum::read_recorded(&arch, SEG)
                .map(|r| matches!(r, Recorded::Digest(d) if d == out.sha256()))
                .unwrap(),
            true
        );
    }

    #[test]
    fn duplicate_rule_uses_the_recorded_checksum() {
        let data = pattern(100_000);
        let (_d, src, arch) = setup(&data);
        archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap();
        // Same bytes again: accepted on the checksum.
        let out = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap();
        assert!(matches!(out, ArchiveOutcome::AlreadyArchived { .. }));
        // The source now differs from what the record says: refused, and
        // neither the archived file nor its record is touched.
        let before = std::fs::read(arch.join(format!("{SEG}.sha256"))).unwrap();
        let mut other = data.clone();
        other[10] ^= 0xff;
        std::fs::write(src.join(SEG), &other).unwrap();
        let err = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert_eq!(std::fs::read(arch.join(SEG)).unwrap(), data);
        assert_eq!(
            std::fs::read(arch.join(format!("{SEG}.sha256"))).unwrap(),
            before
        );
    }

    #[test]
    fn leftover_sidecar_without_data_is_replaced() {
        let data = pattern(5000);
        let (_d, src, arch) = setup(&data);
        std::fs::write(arch.join(format!("{SEG}.sha256")), "0000  stale\n").unwrap();
        let out = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap();
        assert!(matches!(out, ArchiveOutcome::Archived { .. }));
        assert!(
            matches!(crate::checksum::read_recorded(&arch, SEG).unwrap(), Recorded::Digest(d) if d == out.sha256())
        );
    }

    #[test]
    fn different_duplicate_is_refused_and_untouched() {
        let (_d, src, arch) = setup(&pattern(100_000));
        let mut other = pattern(100_000);
        other[5000] ^= 1;
        std::fs::write(arch.join(SEG), &other).unwrap();
        let err = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(
            err.message
                .contains("already exists with different contents"),
            "{err}"
        );
        assert_eq!(std::fs::read(arch.join(SEG)).unwrap(), other);
        assert_eq!(
            listing(&arch),
            vec![SEG.to_string()],
            "a refused file gets no checksum record"
        );
        // A shorter file under the final name (a torn copy by another tool)
        // is a conflict too, never "completed".
        std::fs::write(arch.join(SEG), &pattern(10)).unwrap();
        let err = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
    }

    #[test]
    fn missing_archive_directory_fails_cleanly() {
        let (_d, src, arch) = setup(b"abc");
        let gone = arch.join("gone");
        let err = archive_file(&src.join(SEG), &gone, SEG, &CopyOptions::default()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Io);
        assert_eq!(err.os_error, Some(libc::ENOENT));
        assert!(err.message.starts_with("could not create file"), "{err}");
    }

    #[test]
    fn missing_source_leaves_nothing() {
        let (_d, src, arch) = setup(b"abc");
        let err = archive_file(&src.join("nope"), &arch, SEG, &CopyOptions::default()).unwrap_err();
        assert!(err.message.starts_with("could not open file"), "{err}");
        assert!(listing(&arch).is_empty());
    }

    #[test]
    fn rejects_names_that_are_not_wal_files() {
        let (_d, src, arch) = setup(b"abc");
        for bad in ["../x", "postgresql.conf", "", "000000010000000000000001/.."] {
            let err =
                archive_file(&src.join(SEG), &arch, bad, &CopyOptions::default()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidName);
        }
        assert!(listing(&arch).is_empty());
    }

    #[test]
    fn other_wal_file_kinds_are_archived() {
        let (_d, src, arch) = setup(b"x");
        for name in [
            "00000002.history",
            "000000010000000000000001.partial",
            "000000010000000000000001.00000028.backup",
        ] {
            std::fs::write(src.join(name), name.as_bytes()).unwrap();
            archive_file(&src.join(name), &arch, name, &CopyOptions::default()).unwrap();
            assert_eq!(std::fs::read(arch.join(name)).unwrap(), name.as_bytes());
            assert!(arch.join(format!("{name}.sha256")).exists());
        }
    }

    #[test]
    fn temp_files_are_hidden_and_removed_on_failure() {
        // Read-only archive directory (root bypasses permissions, so only
        // assert the no-leftover part there).
        let (_d, src, arch) = setup(&pattern(1000));
        let mut perms = std::fs::metadata(&arch).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o500);
        std::fs::set_permissions(&arch, perms).unwrap();
        let r = archive_file(&src.join(SEG), &arch, SEG, &CopyOptions::default());
        if unsafe { libc::geteuid() } != 0 {
            let err = r.unwrap_err();
            assert_eq!(err.os_error, Some(libc::EACCES));
        }
        assert!(listing(&arch).iter().all(|n| !n.starts_with(TEMP_PREFIX)));
    }

    /// Where the kernel cannot copy (here a pipe as the source: EINVAL), the
    /// copy goes through user space, with the same bytes and digest.
    #[test]
    fn copies_through_user_space_where_the_kernel_cannot() {
        use std::os::fd::FromRawFd;
        let data = pattern(700_001);
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        assert!(crate::fsutil::copy_range_unsupported(
            &copy_range(&rd, &tempfile::tempfile().unwrap(), 10).unwrap_err()
        ));
        let feeder = {
            let data = data.clone();
            std::thread::spawn(move || wr.write_all(&data).unwrap())
        };
        let d = tempfile::tempdir().unwrap();
        let temp = d.path().join("t");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)
            .unwrap();
        let mut reported = vec![];
        let n = copy_contents(&rd, &dst, Path::new("pipe"), &temp, 4096, |n| {
            reported.push(n)
        })
        .unwrap();
        feeder.join().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(reported.last(), Some(&n));
        assert!(reported.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(std::fs::read(&temp).unwrap(), data);
    }
}
