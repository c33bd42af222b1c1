//! One backup object's way back: read from the destination while hashing
//! the stored bytes, decompressed, and unpacked as a tar with nothing
//! allowed outside its directory.

use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::backup::BackupObject;
use crate::wal::checksum::{to_hex, Hasher};

/// How an object's stored bytes become the tar (or manifest) PostgreSQL sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoding {
    /// Stored as sent, not compressed.
    Plain,
    Zstd,
    Gzip,
}

/// The decoders, outermost first, for `o`; an error names what is not
/// supported.
pub fn decodings(o: &BackupObject) -> Result<Vec<Decoding>, String> {
    let mut steps = Vec::new();
    match o.compression.as_str() {
        "zstd" => steps.push(Decoding::Zstd),
        "none" => {}
        other => {
            return Err(format!(
                "object \"{}\" is stored with compression \"{other}\", which this walarch does not read",
                o.name
            ))
        }
    }
    let a = &o.archive_name;
    if a.ends_with(".zst") {
        steps.push(Decoding::Zstd);
    } else if a.ends_with(".gz") {
        steps.push(Decoding::Gzip);
    } else if a.ends_with(".lz4") {
        return Err(format!(
            "object \"{}\" holds \"{a}\", compressed by the server with lz4, which walarch backup restore does not decompress",
            o.name
        ));
    } else if !(a.ends_with(".tar") || a == crate::backup::MANIFEST) {
        return Err(format!(
            "object \"{}\" holds \"{a}\", which is neither a tar nor the manifest",
            o.name
        ));
    }
    Ok(steps)
}

/// The stored bytes, counted and hashed as they pass; stops with an error
/// as soon as `cancel` is set (another object failed).
pub struct Hashing<'a> {
    inner: Box<dyn Read + Send + 'a>,
    hasher: Hasher,
    pub bytes: u64,
    cancel: &'a AtomicBool,
    /// More stored bytes than this is an error (`backup.json`'s
    /// `stored_size`): a damaged or replaced object cannot fill the disk.
    limit: u64,
}

impl<'a> Hashing<'a> {
    pub fn new(inner: Box<dyn Read + Send + 'a>, cancel: &'a AtomicBool, limit: u64) -> Self {
        Hashing {
            inner,
            hasher: Hasher::new(),
            bytes: 0,
            cancel,
            limit,
        }
    }

    /// Reads what is left, so that the digest covers the whole object.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    pub fn finish(self) -> (u64, String) {
        (self.bytes, to_hex(&self.hasher.finish()))
    }
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::other(format!(
                "the object holds more than the {} bytes backup.json records",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// The decoded bytes, refused past `limit` (`backup.json`'s `size`, the
/// size PostgreSQL sent): a decompression bomb stops there.
pub struct Capped<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: Read> Capped<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Capped {
            inner,
            read: 0,
            limit,
        }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(format!(
                "it decompresses to more than the {} bytes backup.json records",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// Decodes on a thread of its own (`make` builds the reader there) while
/// `consume` reads the result through a small queue: decompression and
/// writing the files then overlap instead of taking turns. The reader
/// `consume` gets ends with an error, never a short read, if decoding
/// stopped early.
pub fn read_ahead<R: Read, T>(
    make: impl FnOnce() -> io::Result<R> + Send,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> T {
    const CHUNK: usize = 1 << 20;
    const QUEUED: usize = 8;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(QUEUED);
    // Read buffers come back to be filled again: a fresh 1 MiB for every
    // chunk would be mapped, faulted in and zeroed by the kernel each time,
    // which costs more than the decompression.
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUED + 2);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut r = match make() {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut buf = back_rx.try_recv().unwrap_or_default();
                buf.resize(CHUNK, 0);
                match crate::support::fsutil::read_full(&mut r, &mut buf) {
                    Ok(n) => {
                        buf.truncate(n);
                        // An empty chunk is the end; a failed send, a
                        // consumer that stopped reading.
                        if tx.send(Ok(buf)).is_err() || n == 0 {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        });
        let mut reader = Queued {
            rx,
            back: back_tx,
            buf: Vec::new(),
            pos: 0,
            ended: false,
        };
        // `reader` (the receiving end) is dropped before the scope waits
        // for the decoder, which then stops at its next send.
        consume(&mut reader)
    })
}

struct Queued {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    back: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for Queued {
    /// Fills `out` whole unless the end comes first: a short read at a
    /// chunk's end would make the file writes that follow straddle disk
    /// blocks, which the kernel then zeroes before each write.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < out.len() {
            if self.pos == self.buf.len() {
                if self.ended {
                    break;
                }
                match self.rx.recv() {
                    Ok(Ok(b)) => {
                        self.ended = b.is_empty();
                        let used = std::mem::replace(&mut self.buf, b);
                        if used.capacity() > 0 {
                            let _ = self.back.try_send(used);
                        }
                        self.pos = 0;
                        continue;
                    }
                    // What was read before the error is dropped with it:
                    // the caller fails either way.
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(io::Error::other("the decoder stopped")),
                }
            }
            let n = (out.len() - filled).min(self.buf.len() - self.pos);
            out[filled..filled + n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            filled += n;
        }
        Ok(filled)
    }
}

/// `r` decoded by `steps`, outermost first.
pub fn decoder<'r>(r: impl Read + 'r, steps: &[Decoding]) -> io::Result<Box<dyn Read + 'r>> {
    let mut out: Box<dyn Read + 'r> = Box::new(BufReader::with_capacity(1 << 20, r));
    for s in steps {
        out = match s {
            Decoding::Plain => out,
            Decoding::Zstd => Box::new(zstd::stream::read::Decoder::new(out)?),
            Decoding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(out)),
        };
    }
    Ok(out)
}

/// Where a tar is unpacked, and where the tablespace links of `base.tar`
/// must point.
pub struct TarTarget<'a> {
    pub dir: &'a Path,
    /// For `base.tar`: tablespace OID → its directory (mapped or not).
    pub tablespace_links: Option<&'a HashMap<u32, PathBuf>>,
}

/// Unpacks the tar read from `r` into `t.dir`. Refuses an entry whose path
/// is absolute or has `..`, any entry that is not a file or a directory
/// (but `pg_tblspc/OID` links in `base.tar`, for a tablespace `backup.json`
/// lists, in a real `pg_tblspc` directory), writing through a link, and
/// anything already there.
/// Modes are kept (less set-id bits), ownership is the caller's. In
/// `base.tar`, `pg_tblspc/OID` links are made to the tablespace's directory
/// (its mapping), whatever the tar says.
pub fn unpack(r: impl Read, t: &TarTarget) -> Result<u64, String> {
    // The disk writes each file while the next ones are unpacked, and the
    // final fsync has little left to wait for. On a thread of its own:
    // starting writeback blocks while the disk's queue is full.
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    std::thread::scope(|s| {
        s.spawn(move || {
            for p in rx {
                if let Ok(f) = std::fs::File::open(&p) {
                    crate::support::fsutil::start_writeback(&f, 0, 0);
                }
            }
        });
        unpack_entries(r, t, tx)
    })
}

fn unpack_entries(
    r: impl Read,
    t: &TarTarget,
    written: std::sync::mpsc::Sender<PathBuf>,
) -> Result<u64, String> {
    let mut ar = tar::Archive::new(r);
    ar.set_overwrite(false);
    ar.set_preserve_mtime(true);
    let mut files = 0u64;
    for entry in ar
        .entries()
        .map_err(|e| format!("could not read tar: {e}"))?
    {
        let mut e = entry.map_err(|e| format!("could not read tar: {e}"))?;
        let path = e
            .path()
            .map_err(|err| format!("could not read tar entry name: {err}"))?
            .into_owned();
        let shown = path.display().to_string();
        let normal = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            && path.components().any(|c| matches!(c, Component::Normal(_)));
        if !normal {
            return Err(format!(
                "tar entry \"{shown}\" would be written outside \"{}\"",
                t.dir.display()
            ));
        }
        let kind = e.header().entry_type();
        if kind.is_symlink() {
            // A base backup holds no symbolic link but pg_tblspc/OID in
            // base.tar (pg_wal is sent as a directory): any other could
            // send a later entry, or a tablespace, outside the directory.
            let mut c = path.components();
            let (links, oid) = match (t.tablespace_links, c.next(), c.next(), c.next()) {
                (Some(l), Some(Component::Normal(a)), Some(Component::Normal(oid)), None)
                    if a == "pg_tblspc" =>
                {
                    (l, oid.to_str().and_then(|s| s.parse::<u32>().ok()))
                }
                _ => {
                    return Err(format!(
                        "tar entry \"{shown}\" is a symbolic link, which a base backup holds only as pg_tblspc/OID in base.tar"
                    ))
                }
            };
            let Some(dest) = oid.and_then(|o| links.get(&o)) else {
                return Err(format!(
                    "tar entry \"{shown}\" links to a tablespace that backup.json does not list"
                ));
            };
            let dir = t.dir.join("pg_tblspc");
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => {
                    return Err(format!(
                        "\"{}\" is not a directory, so tar entry \"{shown}\" is refused",
                        dir.display()
                    ))
                }
                Err(err) => {
                    return Err(format!(
                        "could not stat \"{}\" for tar entry \"{shown}\": {err}",
                        dir.display()
                    ))
                }
            }
            let link = t.dir.join(&path);
            std::os::unix::fs::symlink(dest, &link).map_err(|err| {
                format!(
                    "could not create symbolic link \"{}\": {err}",
                    link.display()
                )
            })?;
            continue;
        } else if !(kind.is_file() || kind.is_dir()) {
            return Err(format!(
                "tar entry \"{shown}\" is of a type a base backup does not hold ({kind:?})"
            ));
        }
        unpack_entry(&mut e, t.dir, &shown)?;
        if kind.is_file() {
            files += 1;
            let _ = written.send(t.dir.join(&path));
        }
    }
    Ok(files)
}

fn unpack_entry<R: Read>(e: &mut tar::Entry<R>, dir: &Path, shown: &str) -> Result<(), String> {
    // unpack_in also refuses a parent that resolves outside `dir` (a link
    // unpacked earlier).
    match e.unpack_in(dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "tar entry \"{shown}\" would be written outside \"{}\"",
            dir.display()
        )),
        Err(err) => Err(format!("could not unpack tar entry \"{shown}\": {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if kind.is_dir() { 0o700 } else { 0o600 });
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // set_path refuses "..": write the raw name.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn stored_and_decoded_sizes_are_capped() {
        let cancel = AtomicBool::new(false);
        let data = vec![0u8; 1 << 20];
        let mut h = Hashing::new(Box::new(&data[..]), &cancel, 1000);
        let err = h.drain().unwrap_err();
        assert!(
            err.to_string().contains("more than the 1000 bytes"),
            "{err}"
        );
        assert!(h.bytes < 1 << 20 || h.bytes > 1000);
        let mut h = Hashing::new(Box::new(&data[..]), &cancel, 1 << 20);
        h.drain().unwrap();
        // A bomb: 1 MB of zeros from a few hundred bytes.
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let d = decoder(&z[..], &[Decoding::Zstd]).unwrap();
        let err = io::copy(&mut Capped::new(d, 4096), &mut io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("decompresses to more than"),
            "{err}"
        );
        let d = decoder(&z[..], &[Decoding::Zstd]).unwrap();
        assert_eq!(
            io::copy(&mut Capped::new(d, 1 << 20), &mut io::sink()).unwrap(),
            1 << 20
        );
    }

    #[test]
    fn read_ahead_passes_everything_and_every_error_and_stops_with_its_reader() {
        let data: Vec<u8> = (0..5 << 20).map(|i| (i % 251) as u8).collect();
        let got = read_ahead(
            || Ok(&data[..]),
            |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v).map(|_| v)
            },
        )
        .unwrap();
        assert_eq!(got, data);
        // A decoder error reaches the reader as an error, after what came
        // before it, never as a short read.
        let z = zstd::encode_all(&data[..], 1).unwrap();
        let cut = &z[..z.len() / 2];
        read_ahead(
            || decoder(cut, &[Decoding::Zstd]),
            |r| io::copy(r, &mut io::sink()),
        )
        .unwrap_err();
        let err = read_ahead(
            || Err::<&[u8], _>(io::Error::other("no such decoder")),
            |r| io::copy(r, &mut io::sink()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no such decoder"), "{err}");
        // A consumer that stops early does not leave the decoder blocked
        // on a full queue (the test would hang).
        let endless = io::repeat(7);
        let mut first = [0u8; 10];
        read_ahead(|| Ok(endless), |r| r.read_exact(&mut first)).unwrap();
        assert_eq!(first, [7; 10]);
    }

    #[test]
    fn refuses_escapes_and_odd_entries() {
        use tar::EntryType as K;
        let tmp = tempfile::tempdir().unwrap();
        let t = TarTarget {
            dir: tmp.path(),
            tablespace_links: None,
        };
        for bad in [
            tar_with(&[("../evil", K::Regular, b"x", None)]),
            tar_with(&[("a/../../evil", K::Regular, b"x", None)]),
            tar_with(&[("/abs", K::Regular, b"x", None)]),
            tar_with(&[("fifo", K::Fifo, b"", None)]),
            tar_with(&[("hard", K::Link, b"", Some("/etc/passwd"))]),
            tar_with(&[
                ("l", K::Symlink, b"", Some("/tmp")),
                ("l/evil", K::Regular, b"x", None),
            ]),
        ] {
            let err = unpack(&bad[..], &t).unwrap_err();
            assert!(!err.is_empty());
        }
        assert!(!tmp.path().parent().unwrap().join("evil").exists());
        assert!(!Path::new("/tmp/evil").exists());
    }

    #[test]
    fn pg_tblspc_must_be_a_real_directory() {
        use tar::EntryType as K;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let links: HashMap<u32, PathBuf> = [(16385, tmp.path().join("ts"))].into();
        let t = TarTarget {
            dir: &data,
            tablespace_links: Some(&links),
        };
        // pg_tblspc made a link by the tar itself: refused at once.
        let bad = tar_with(&[
            (
                "pg_tblspc",
                K::Symlink,
                b"",
                Some(outside.to_str().unwrap()),
            ),
            ("pg_tblspc/16385", K::Symlink, b"", Some("/x")),
        ]);
        assert!(unpack(&bad[..], &t).unwrap_err().contains("symbolic link"));
        // pg_tblspc a link however it came there: the tablespace link is
        // not written through it.
        std::os::unix::fs::symlink(&outside, data.join("pg_tblspc")).unwrap();
        let bad = tar_with(&[("pg_tblspc/16385", K::Symlink, b"", Some("/x"))]);
        let err = unpack(&bad[..], &t).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn tablespace_links_point_where_told_and_modes_are_kept() {
        use std::os::unix::fs::PermissionsExt;
        use tar::EntryType as K;
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("d");
        std::fs::create_dir(&data).unwrap();
        let links: HashMap<u32, PathBuf> = [(16385, tmp.path().join("ts"))].into();
        let t = TarTarget {
            dir: &data,
            tablespace_links: Some(&links),
        };
        let ok = tar_with(&[
            ("global/", K::Directory, b"", None),
            ("global/pg_control", K::Regular, b"ctl", None),
            ("pg_tblspc/", K::Directory, b"", None),
            ("pg_tblspc/16385", K::Symlink, b"", Some("/srv/old")),
        ]);
        assert_eq!(unpack(&ok[..], &t).unwrap(), 1);
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc/16385")).unwrap(),
            tmp.path().join("ts")
        );
        let mode = |p: &str| {
            std::fs::metadata(data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!((mode("global"), mode("global/pg_control")), (0o700, 0o600));
        // Any other link is refused, in base.tar and in a tablespace's tar.
        for bad in [
            tar_with(&[("pg_wal", K::Symlink, b"", Some("/tmp"))]),
            tar_with(&[("base/1/x", K::Symlink, b"", Some("../global"))]),
            tar_with(&[("pg_tblspc/16385/x", K::Symlink, b"", Some("/tmp"))]),
        ] {
            let err = unpack(&bad[..], &t).unwrap_err();
            assert!(err.contains("symbolic link"), "{err}");
        }
        let ts_target = TarTarget {
            dir: &data,
            tablespace_links: None,
        };
        let link = tar_with(&[("PG_15/x", K::Symlink, b"", Some("/tmp"))]);
        assert!(unpack(&link[..], &ts_target)
            .unwrap_err()
            .contains("symbolic link"));
        // An unknown tablespace, and a second copy of a file, are refused.
        let unknown = tar_with(&[("pg_tblspc/99", K::Symlink, b"", Some("/x"))]);
        assert!(unpack(&unknown[..], &t)
            .unwrap_err()
            .contains("does not list"));
        let again = tar_with(&[("global/pg_control", K::Regular, b"new", None)]);
        assert!(unpack(&again[..], &t).is_err());
        assert_eq!(
            std::fs::read(data.join("global/pg_control")).unwrap(),
            b"ctl"
        );
    }
}
