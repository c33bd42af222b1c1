//! The prefetch spool: a directory where the prefetch helper leaves verified
//! WAL files for the next `restore_command` calls, and through which the
//! two talk. Inside it:
//!
//! - `lock`: held (flock) by the live helper, and only by it;
//! - `owner`: the data directory and archive the live helper serves;
//! - `request`: the segment recovery asked for last (written by restore);
//! - `NNNNNNNN.history`: timeline histories recovery restored;
//! - `WALFILE.SHA256`: a fetched file, verified and fsynced, named with the
//!   SHA-256 it must still have when taken;
//! - `.inflight.WALFILE`: queued or being fetched (a marker, for restore to
//!   wait on);
//!   `.walarch-restore.WALFILE.PID`, `.fetched.WALFILE`: its bytes so far.
//!
//! A file is taken by renaming it out of the spool first (so that the helper
//! cannot discard it meanwhile), then checked against the SHA-256 in its
//! name before it is renamed to where PostgreSQL wants it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::fsutil::{fsync_dir, read_full, IO_BUFFER};
use crate::wal::checksum::{from_hex, hash_file, to_hex, Hasher, Sha256Digest};
use crate::wal::timeline_history::Timelines;
use crate::wal::walname::{WalFileKind, WalFileName};

/// The spool's name inside `pg_wal` by default: a directory, which
/// PostgreSQL never takes for WAL (it only looks at WAL file names there)
/// and which base backups skip (they copy nothing under pg_wal).
pub const DEFAULT_NAME: &str = "walarch_prefetch";

const LOCK: &str = "lock";
const OWNER: &str = "owner";
const REQUEST: &str = "request";
/// Prefix of the file the helper restores into before naming it ready.
pub const FETCHING: &str = ".fetched.";
/// Prefix of the small files being written (request, histories): left
/// alone by `clear`, which may run while restore writes them.
const WRITING: &str = ".writing.";
/// Prefix of the marker of a file being fetched.
const IN_FLIGHT: &str = ".inflight.";

/// The default spool for a restore into `dest` when PostgreSQL runs the
/// command: `dest` is in `pg_wal` of a data directory. Returns the spool
/// and the data directory.
pub fn default_for(dest: &Path) -> Option<(PathBuf, PathBuf)> {
    let data = crate::restore::data_directory(dest)?;
    Some((data.join("pg_wal").join(DEFAULT_NAME), data))
}

/// Identity of a file or directory, to notice it was removed or replaced.
pub fn identity(p: &Path) -> Option<(u64, u64)> {
    fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// What the foreground asked for last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub walfile: String,
    pub segment_size: u64,
    /// Changes with every request, even of the same file.
    pub stamp: String,
}

/// What `take` found.
#[derive(Debug)]
pub enum Taken {
    /// Placed at the destination: its length.
    Placed(u64),
    /// Not in the spool.
    Absent,
    /// In the spool but not as recorded (removed): the reason.
    Refused(String),
}

/// Whom a spool's live helper serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// No helper runs.
    Nobody,
    /// A helper has just taken the lock.
    Starting,
    Us,
    Other,
}

pub struct Spool {
    pub dir: PathBuf,
}

fn ready_name(walfile: &str, sha256: &Sha256Digest) -> String {
    format!("{walfile}.{}", to_hex(sha256))
}

/// The WAL file and digest of a ready file's name.
fn parse_ready(name: &str) -> Option<(&str, Sha256Digest)> {
    let (walfile, hex) = name.split_once('.')?;
    let w = WalFileName::parse(walfile)?;
    (w.kind == WalFileKind::Segment)
        .then_some(())
        .and(from_hex(hex).map(|d| (walfile, d)))
}

/// Why a spool directory cannot be trusted: files in it are restored into
/// the data directory, so nobody but the user running restore may be able
/// to place or replace them.
pub fn spool_problem(dir: &Path, meta: &fs::Metadata, euid: u32) -> Option<String> {
    let d = dir.display();
    if meta.file_type().is_symlink() {
        return Some(format!("\"{d}\" is a symbolic link"));
    }
    if !meta.is_dir() {
        return Some(format!("\"{d}\" is not a directory"));
    }
    if meta.uid() != euid {
        return Some(format!(
            "\"{d}\" is owned by user ID {}, not by the user running walarch (user ID {euid})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    (mode != 0o700).then(|| format!("\"{d}\" has permissions {mode:04o}: it must be 0700"))
}

impl Spool {
    /// The spool at `dir`, created (mode 0700) if needed. An existing one
    /// is used only when it is a directory (not a symbolic link) owned by
    /// this process's user with mode 0700.
    pub fn create(dir: &Path) -> io::Result<Spool> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let meta = fs::symlink_metadata(dir)?;
        // SAFETY: geteuid() cannot fail.
        let euid = unsafe { libc::geteuid() };
        if let Some(problem) = spool_problem(dir, &meta, euid) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, problem));
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn names(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The ready files: WAL file name, spool file name.
    pub fn ready(&self) -> Vec<(String, String)> {
        self.names()
            .into_iter()
            .filter_map(|n| parse_ready(&n).map(|(w, _)| (w.to_string(), n.clone())))
            .collect()
    }

    /// Names a restored file ready under its SHA-256.
    pub fn publish(&self, fetched: &Path, walfile: &str, sha256: &Sha256Digest) -> io::Result<()> {
        fs::rename(fetched, self.path(&ready_name(walfile, sha256)))
    }

    /// Marks `walfile` as coming: queued or being fetched (until
    /// `unmark_in_flight`).
    pub fn mark_in_flight(&self, walfile: &str) -> io::Result<()> {
        File::create(self.path(&format!("{IN_FLIGHT}{walfile}"))).map(|_| ())
    }

    pub fn unmark_in_flight(&self, walfile: &str) {
        let _ = fs::remove_file(self.path(&format!("{IN_FLIGHT}{walfile}")));
    }

    /// Whether `walfile` is being fetched into the spool.
    pub fn in_flight(&self, walfile: &str) -> bool {
        self.path(&format!("{IN_FLIGHT}{walfile}")).exists()
    }

    /// Removes everything but the lock and the last request (and the
    /// histories, if asked): what a helper does when it starts (a crashed
    /// helper's files are not trusted) and when it stops.
    pub fn clear(&self, keep_histories: bool) {
        for n in self.names() {
            let history = n.ends_with(".history");
            if n == LOCK || n == REQUEST || n.starts_with(WRITING) || (history && keep_histories) {
                continue;
            }
            let _ = fs::remove_file(self.path(&n));
        }
    }

    /// Takes the spooled `walfile` to `dest`: checked against the SHA-256
    /// in its name, then renamed into place; the directory is fsynced. While
    /// the helper is still fetching it, waits for it up to `wait`.
    pub fn take(&self, walfile: &str, dest: &Path, wait: Duration) -> io::Result<Taken> {
        let deadline = Instant::now() + wait;
        let ready = || {
            self.names()
                .into_iter()
                .find(|n| parse_ready(n).is_some_and(|(w, _)| w == walfile))
        };
        let found = loop {
            if let Some(n) = ready() {
                break Some(n);
            }
            if !self.in_flight(walfile) {
                // It may have become ready since the first look.
                break ready();
            }
            if Instant::now() >= deadline || !self.helper_running() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let Some(name) = found else {
            return Ok(Taken::Absent);
        };
        let (_, expected) = parse_ready(&name).expect("a ready name");
        let dir = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let claimed = dir.join(format!(".walarch-take.{walfile}.{}", std::process::id()));
        let src = self.path(&name);
        let actual = match fs::rename(&src, &claimed) {
            Ok(()) => hash_file(&claimed).map(|(_, d)| d),
            // Not the same filesystem: copy, hashing.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let r = copy_hashed(&src, &claimed);
                let _ = fs::remove_file(&src);
                r
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Taken::Absent),
            Err(e) => return Err(e),
        };
        let actual = match actual {
            Ok(d) => d,
            Err(e) => {
                let _ = fs::remove_file(&claimed);
                return Err(e);
            }
        };
        if actual != expected {
            let _ = fs::remove_file(&claimed);
            return Ok(Taken::Refused(format!(
                "the prefetched copy of \"{walfile}\" has SHA-256 {}, not {} as fetched; discarded",
                to_hex(&actual),
                to_hex(&expected)
            )));
        }
        let len = fs::metadata(&claimed)?.len();
        if let Err(e) = fs::rename(&claimed, dest) {
            let _ = fs::remove_file(&claimed);
            return Err(e);
        }
        fsync_dir(dir)?;
        Ok(Taken::Placed(len))
    }

    /// Tells the helper which segment recovery asked for.
    pub fn write_request(&self, walfile: &str, segment_size: u64) -> io::Result<()> {
        let stamp = format!(
            "{}.{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        self.write_atomically(REQUEST, &format!("{walfile} {segment_size} {stamp}\n"))
    }

    pub fn read_request(&self) -> Option<Request> {
        let text = fs::read_to_string(self.path(REQUEST)).ok()?;
        let mut f = text.split_whitespace();
        let walfile = f.next()?.to_string();
        let segment_size = f.next()?.parse().ok()?;
        let stamp = f.next()?.to_string();
        Some(Request {
            walfile,
            segment_size,
            stamp,
        })
    }

    /// Keeps a copy of a timeline history file recovery restored.
    pub fn note_history(&self, walfile: &str, restored: &Path) -> io::Result<()> {
        let text = fs::read_to_string(restored)?;
        self.write_atomically(walfile, &text)
    }

    /// The history to follow from segments of timeline `tli`: the newest
    /// restored history that contains it.
    pub fn timelines_for(&self, tli: u32) -> Timelines {
        let mut best: Option<Timelines> = None;
        for n in self.names() {
            let Some(w) = WalFileName::parse(&n).filter(|w| w.kind == WalFileKind::History) else {
                continue;
            };
            if best.as_ref().is_some_and(|b| b.target() >= w.timeline) {
                continue;
            }
            if let Some(t) = fs::read_to_string(self.path(&n))
                .ok()
                .and_then(|text| Timelines::parse(w.timeline, &text))
                .filter(|t| t.contains(tli))
            {
                best = Some(t);
            }
        }
        best.unwrap_or_else(|| Timelines::single(tli))
    }

    fn write_atomically(&self, name: &str, text: &str) -> io::Result<()> {
        let temp = self.path(&format!("{WRITING}{name}.{}", std::process::id()));
        let r = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            f.write_all(text.as_bytes())?;
            fs::rename(&temp, self.path(name))
        })();
        if r.is_err() {
            let _ = fs::remove_file(&temp);
        }
        r
    }

    fn lock_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.path(LOCK))
    }

    fn try_flock(f: &File, op: libc::c_int) -> io::Result<bool> {
        // SAFETY: a valid open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }

    /// Takes the helper's lock; `None` when another helper holds it. The
    /// lock lasts as long as the returned file is open. Retried briefly:
    /// restore's probes (`helper_running`) hold it for an instant.
    pub fn lock(&self) -> io::Result<Option<File>> {
        let f = self.lock_file()?;
        for _ in 0..100 {
            if Self::try_flock(&f, libc::LOCK_EX)? {
                return Ok(Some(f));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(None)
    }

    /// Whether a helper holds the lock now.
    pub fn helper_running(&self) -> bool {
        // A shared lock is refused only while the helper holds its own.
        match self.lock_file() {
            Ok(f) => matches!(Self::try_flock(&f, libc::LOCK_SH), Ok(false)),
            Err(_) => false,
        }
    }

    pub fn write_owner(&self, owner: &str) -> io::Result<()> {
        self.write_atomically(OWNER, owner)
    }

    /// Who the live helper serves, if one runs: one probe of the lock and
    /// one read of the owner.
    pub fn serving(&self, owner: &str) -> Serving {
        if !self.helper_running() {
            return Serving::Nobody;
        }
        match fs::read_to_string(self.path(OWNER)) {
            Ok(o) if o == owner => Serving::Us,
            Ok(_) => Serving::Other,
            // Starting: it has the lock, not yet written whom it serves.
            Err(_) => Serving::Starting,
        }
    }

    /// Whether the live helper serves `owner` (a data directory and an
    /// archive): only then is what the spool holds usable.
    pub fn served_by_helper_of(&self, owner: &str) -> bool {
        self.serving(owner) == Serving::Us
    }

    /// Whether the last helper served someone else (its histories are not
    /// this recovery's).
    pub fn left_by_other(&self, owner: &str) -> bool {
        fs::read_to_string(self.path(OWNER)).is_ok_and(|o| o != owner)
    }

    /// Whether a live helper serves someone else: the spool is not ours to
    /// use or to clear.
    pub fn taken_by_other(&self, owner: &str) -> bool {
        self.serving(owner) == Serving::Other
    }
}

/// Copies `src` to a new `dest`, fsynced, returning the SHA-256 of the copy.
fn copy_hashed(src: &Path, dest: &Path) -> io::Result<Sha256Digest> {
    let mut from = File::open(src)?;
    let mut to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = read_full(&mut from, &mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    to.sync_all()?;
    Ok(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::checksum::sha256;

    const W: &str = "000000010000000000000005";

    fn spool() -> (tempfile::TempDir, Spool) {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::create(&d.path().join("pg_wal").join(DEFAULT_NAME)).unwrap();
        (d, s)
    }

    fn put_ready(s: &Spool, walfile: &str, bytes: &[u8]) {
        let f = s.path(&format!("{FETCHING}{walfile}"));
        fs::write(&f, bytes).unwrap();
        s.publish(&f, walfile, &sha256(bytes)).unwrap();
    }

    #[test]
    fn takes_a_verified_file_and_refuses_a_changed_one() {
        let (d, s) = spool();
        let dest = d.path().join("pg_wal/RECOVERYXLOG");
        put_ready(&s, W, b"segment bytes");
        assert_eq!(
            s.ready(),
            vec![(
                W.to_string(),
                format!("{W}.{}", to_hex(&sha256(b"segment bytes")))
            )]
        );
        assert!(matches!(
            s.take(W, &dest, Duration::ZERO).unwrap(),
            Taken::Placed(13)
        ));
        assert_eq!(fs::read(&dest).unwrap(), b"segment bytes");
        assert!(s.ready().is_empty(), "taken files leave the spool");
        assert!(matches!(
            s.take(W, &dest, Duration::ZERO).unwrap(),
            Taken::Absent
        ));

        // Changed in the spool after it was fetched: refused, removed, and
        // the destination is left alone.
        fs::remove_file(&dest).unwrap();
        put_ready(&s, W, b"segment bytes");
        let (_, name) = s.ready().pop().unwrap();
        fs::write(s.path(&name), b"segment bytez").unwrap();
        assert!(
            matches!(s.take(W, &dest, Duration::ZERO).unwrap(), Taken::Refused(m) if m.contains("discarded"))
        );
        assert!(!dest.exists());
        assert!(s.ready().is_empty());
        let left: Vec<_> = fs::read_dir(d.path().join("pg_wal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            vec![std::ffi::OsString::from(DEFAULT_NAME)],
            "nothing left behind"
        );
    }

    #[test]
    fn requests_histories_and_the_lock() {
        let (d, s) = spool();
        s.write_request(W, 16 << 20).unwrap();
        let r1 = s.read_request().unwrap();
        assert_eq!((r1.walfile.as_str(), r1.segment_size), (W, 16 << 20));
        std::thread::sleep(Duration::from_millis(2));
        s.write_request(W, 16 << 20).unwrap();
        assert_ne!(
            s.read_request().unwrap().stamp,
            r1.stamp,
            "a repeated request is a new one"
        );

        let h = d.path().join("h");
        fs::write(&h, "1\t0/5000120\tr\n").unwrap();
        s.note_history("00000002.history", &h).unwrap();
        fs::write(&h, "7\t0/5000120\tr\n").unwrap();
        s.note_history("00000008.history", &h).unwrap();
        assert_eq!(
            s.timelines_for(1).target(),
            2,
            "the newest history containing timeline 1"
        );
        assert_eq!(s.timelines_for(7).target(), 8);
        assert_eq!(s.timelines_for(4).target(), 4);

        assert!(!s.helper_running());
        let held = s.lock().unwrap().expect("free");
        assert!(s.helper_running());
        assert!(s.lock().unwrap().is_none());
        s.write_owner("me").unwrap();
        assert!(s.served_by_helper_of("me") && !s.taken_by_other("me"));
        assert!(s.taken_by_other("someone else"));
        drop(held);
        assert!(!s.helper_running() && !s.served_by_helper_of("me"));

        s.clear(true);
        let mut left: Vec<_> = s.names();
        left.sort();
        assert_eq!(
            left,
            vec!["00000002.history", "00000008.history", LOCK, REQUEST]
        );
    }

    #[test]
    fn only_a_private_directory_of_ours_is_a_spool() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        // Created 0700 whatever the umask lets through, parents too.
        let dir = d.path().join("a/spool");
        Spool::create(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        // Again: the same directory is fine.
        Spool::create(&dir).unwrap();

        let refused = |p: &Path| {
            let e = Spool::create(p).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            e.to_string()
        };
        for m in [0o755, 0o750, 0o701, 0o1700, 0o500] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(m)).unwrap();
            let e = refused(&dir);
            assert!(
                e.contains(&format!("has permissions {m:04o}: it must be 0700")),
                "{e}"
            );
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(refused(&link).contains("is a symbolic link"));
        let file = d.path().join("file");
        fs::write(&file, "").unwrap();
        let e = Spool::create(&file).err().unwrap();
        assert!(e.kind() != io::ErrorKind::NotFound, "{e}");

        // Someone else's (as root, which can give it away).
        // SAFETY: geteuid() cannot fail.
        let euid = unsafe { libc::geteuid() };
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!(spool_problem(&dir, &meta, euid), None);
        let e = spool_problem(&dir, &meta, euid + 1).unwrap();
        assert!(e.contains("is owned by user ID"), "{e}");
        if euid == 0 {
            let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
            assert!(refused(&dir).contains("is owned by user ID 65534"));
        }
    }

    #[test]
    fn default_spool_only_inside_a_data_directory() {
        let d = tempfile::tempdir().unwrap();
        let pg_wal = d.path().join("pg_wal");
        fs::create_dir(&pg_wal).unwrap();
        assert_eq!(default_for(&pg_wal.join("RECOVERYXLOG")), None);
        fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        let data = fs::canonicalize(d.path()).unwrap();
        assert_eq!(
            default_for(&pg_wal.join("RECOVERYXLOG")),
            Some((data.join("pg_wal").join(DEFAULT_NAME), data.clone()))
        );
        assert_eq!(default_for(&d.path().join("elsewhere")), None);
    }
}
