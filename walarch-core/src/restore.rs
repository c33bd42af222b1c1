//! The restore side, for `restore_command`: copies an archived file from any
//! destination into place, verifying its SHA-256 while copying, so that PostgreSQL is never
//! handed a corrupt or truncated file. Nothing is left at the destination
//! unless the file verified.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::archive_protocol::read_error;
use crate::checksum::{to_hex, Hasher};
use crate::destination::{Destination, Recorded};
use crate::error::ArchiveError;
use crate::fsutil::{fsync_dir, read_full};
use crate::walname::is_archivable_name;

#[derive(Debug)]
pub enum RestoreError {
    /// Not in the archive: normal for files PostgreSQL probes for.
    NotFound(String),
    /// Refused: the bytes or the record are not trustworthy.
    Integrity(String),
    /// The arguments are wrong.
    Usage(String),
    Io(String),
}

impl std::fmt::Display for RestoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreError::NotFound(s)
            | RestoreError::Integrity(s)
            | RestoreError::Usage(s)
            | RestoreError::Io(s) => f.write_str(s),
        }
    }
}

fn io_err(action: &str, p: &Path, e: &io::Error) -> RestoreError {
    RestoreError::Io(format!(
        "could not {action} \"{}\": {}",
        p.display(),
        crate::error::os_message(e)
    ))
}

fn store_err(e: ArchiveError) -> RestoreError {
    RestoreError::Io(e.message)
}

/// Restores `walfile` from `archive` to `dest`; returns the bytes copied.
pub fn restore(archive: &dyn Destination, walfile: &str, dest: &Path) -> Result<u64, RestoreError> {
    if !is_archivable_name(walfile) {
        return Err(RestoreError::Usage(format!(
            "\"{walfile}\" is not a WAL file name"
        )));
    }
    let Some(mut src) = archive.open(walfile).map_err(store_err)? else {
        return Err(RestoreError::NotFound(format!(
            "\"{walfile}\" is not in the archive"
        )));
    };
    let expected = match archive.recorded(walfile).map_err(store_err)? {
        Recorded::Digest(d) => d,
        Recorded::Missing => {
            return Err(RestoreError::Integrity(format!(
                "no checksum recorded for \"{walfile}\": refusing to restore an unverifiable file"
            )))
        }
        Recorded::Malformed => {
            return Err(RestoreError::Integrity(format!(
                "the checksum record of \"{walfile}\" is malformed"
            )))
        }
    };

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
        let mut h = Hasher::new();
        let mut buf = vec![0u8; crate::fsutil::IO_BUFFER];
        let mut total = 0u64;
        loop {
            let n = read_full(&mut src, &mut buf)
                .map_err(|e| store_err(read_error(archive, walfile, &e)))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| io_err("write file", &temp, &e))?;
            total += n as u64;
        }
        let actual = h.finish();
        if actual != expected {
            return Err(RestoreError::Integrity(format!(
                "checksum mismatch for \"{walfile}\": recorded {}, archived file ({total} bytes) has {}; refusing to restore it",
                to_hex(&expected),
                to_hex(&actual)
            )));
        }
        out.sync_all()
            .map_err(|e| io_err("fsync file", &temp, &e))?;
        Ok(total)
    })();
    let total = match result {
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
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive_protocol::archive_file;
    use crate::local_directory::LocalDirectory;

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
        assert!(matches!(
            restore(&LocalDirectory::new(&arch, 0o600), SEG, &dest),
            Err(RestoreError::Integrity(_))
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
}
