//! Copying a file into a new file durably, with the SHA-256 of what was
//! written.
//!
//! The data moves inside the kernel (`copy_file_range`, falling back to a
//! user-space buffer across filesystem types) and the writeback of every
//! megabyte is started as it is written, as PostgreSQL's own `copy_file`
//! does, so the final fsync has little left to wait for. A second thread
//! trails the copy: it reads each written megabyte back from the new file
//! (the page cache, as the kernel will persist it) and hashes it while the
//! copy goes on, so the checksum is of the bytes actually in the new file
//! and costs the copy no time when a second core is free. That thread starts
//! with every signal blocked and never touches PostgreSQL; if it cannot be
//! started, the file is hashed in line at the end.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::thread::{Scope, ScopedJoinHandle};

use crate::support::error::ArchiveError;
use crate::support::fsutil::{
    copy_range, copy_range_unsupported, read_full, start_writeback, IO_BUFFER,
};
use crate::wal::checksum::{Hasher, Sha256Digest};

/// How much is written before its writeback is started (PostgreSQL's
/// FLUSH_DISTANCE in copydir.c).
const FLUSH_DISTANCE: u64 = 1 << 20;

/// Copies `source` into the new file `temp` (created exclusively), hashing
/// the bytes written, and fsyncs it. The caller removes `temp` on error.
pub(crate) fn copy_to_new_file(
    source: &Path,
    temp: &Path,
    file_mode: u32,
) -> Result<(u64, Sha256Digest), ArchiveError> {
    let src = File::open(source).map_err(|e| ArchiveError::io("open file", source, &e))?;
    // Readable too: the hashing thread reads the written bytes back.
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(file_mode)
        .custom_flags(libc::O_CLOEXEC)
        .open(temp)
        .map_err(|e| ArchiveError::io("create file", temp, &e))?;
    let (total, digest) = std::thread::scope(|scope| {
        let hasher = TrailingHasher::start(scope, &dst);
        let total = copy_contents(&src, &dst, source, temp, |n| hasher.written(n))?;
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
            buf.resize(IO_BUFFER, 0);
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
        // the fsync waits for the whole file, as `dd conv=fsync` does.
        if total - flushed >= FLUSH_DISTANCE {
            start_writeback(dst, flushed, total - flushed);
            flushed = total;
        }
        progress(total);
    }
    Ok(total)
}

struct TrailingHasher<'scope> {
    file: &'scope File,
    tx: Sender<u64>,
    handle: Option<ScopedJoinHandle<'scope, io::Result<(u64, Sha256Digest)>>>,
}

impl<'scope> TrailingHasher<'scope> {
    /// Starts hashing `file` from its first byte, as `written` reports it.
    fn start<'env>(scope: &'scope Scope<'scope, 'env>, file: &'scope File) -> Self {
        let (tx, rx) = mpsc::channel::<u64>();
        let spawned = crate::support::blocked_signals::with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("walarch-hash".into())
                .spawn_scoped(scope, move || hash_as_written(file, rx))
        });
        let handle = match spawned {
            Ok(Ok(h)) => Some(h),
            _ => None,
        };
        TrailingHasher { file, tx, handle }
    }

    /// Whether hashing runs on its own thread.
    #[cfg(test)]
    fn is_pipelined(&self) -> bool {
        self.handle.is_some()
    }

    /// The first `upto` bytes of the file are written.
    fn written(&self, upto: u64) {
        if self.handle.is_some() {
            // Fails only if the thread already ended on an error, which
            // finish() reports.
            let _ = self.tx.send(upto);
        }
    }

    /// The digest of the first `total` bytes, once all are hashed. An error
    /// if they could not all be read back: no wrong checksum is recorded.
    fn finish(self, total: u64) -> io::Result<Sha256Digest> {
        let TrailingHasher { file, tx, handle } = self;
        let (hashed, digest) = match handle {
            Some(h) => {
                drop(tx);
                h.join()
                    .map_err(|_| io::Error::other("the hashing thread panicked"))??
            }
            None => hash_as_written(file, [total])?,
        };
        if hashed != total {
            return Err(io::Error::other(format!(
                "hashed {hashed} bytes of {total}"
            )));
        }
        Ok(digest)
    }
}

/// Hashes `file` from offset 0 up to each reported length (from the copy's
/// channel, or just the final length when hashing in line); returns the
/// length hashed and the digest.
fn hash_as_written(
    file: &File,
    written: impl IntoIterator<Item = u64>,
) -> io::Result<(u64, Sha256Digest)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; IO_BUFFER];
    let mut off = 0u64;
    for upto in written {
        while off < upto {
            let want = ((upto - off) as usize).min(buf.len());
            let n = match file.read_at(&mut buf[..want], off) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shorter than written",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            h.update(&buf[..n]);
            off += n as u64;
        }
    }
    Ok((off, h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::testing::pattern;

    fn write_and_hash(chunks: &[Vec<u8>]) -> (io::Result<Sha256Digest>, bool) {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        let reader = File::open(&path).unwrap();
        let reader = &reader;
        std::thread::scope(|s| {
            let h = TrailingHasher::start(s, reader);
            let piped = h.is_pipelined();
            let mut total = 0u64;
            for c in chunks {
                f.write_all(c).unwrap();
                total += c.len() as u64;
                h.written(total);
            }
            (h.finish(total), piped)
        })
    }

    #[test]
    fn equals_the_plain_digest_of_what_was_written() {
        let chunks: Vec<Vec<u8>> = (0..40u32)
            .map(|i| (0..(70_000 + i * 37)).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let mut plain = Hasher::new();
        chunks.iter().for_each(|c| plain.update(c));
        let (d, piped) = write_and_hash(&chunks);
        assert!(piped, "the hashing thread did not start");
        assert_eq!(d.unwrap(), plain.finish());
    }

    #[test]
    fn empty_file_is_the_empty_digest() {
        assert_eq!(write_and_hash(&[]).0.unwrap(), Hasher::new().finish());
    }

    #[test]
    fn claiming_more_than_the_file_holds_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("f");
        std::fs::write(&path, b"short").unwrap();
        let f = File::open(&path).unwrap();
        let r = std::thread::scope(|s| {
            let h = TrailingHasher::start(s, &f);
            h.written(100);
            h.finish(100)
        });
        assert!(r.is_err());
    }

    /// Where the kernel cannot copy (here a pipe as the source: EINVAL), the
    /// copy goes through user space, with the same bytes and digest.
    #[test]
    fn copies_through_user_space_where_the_kernel_cannot() {
        use std::os::fd::FromRawFd;
        let data = pattern(700_001);
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe() writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: two fresh descriptors, each owned by one File only.
        let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        assert!(copy_range_unsupported(
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
        let n = copy_contents(&rd, &dst, Path::new("pipe"), &temp, |n| reported.push(n)).unwrap();
        feeder.join().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(reported.last(), Some(&n));
        assert!(reported.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(std::fs::read(&temp).unwrap(), data);
    }
}
