//! The server side of a base backup: what the `walarch` backup target does
//! with the archives PostgreSQL hands it, without PostgreSQL.
//!
//! The order is what makes a backup trustworthy: the label is claimed first
//! (`backup.started`, create-only), each archive is streamed into its own
//! create-only object and counts only once the destination acknowledged it,
//! and `backup.json`, naming every object with the SHA-256 of the bytes
//! stored, is written last. On any failure (or when PostgreSQL calls the
//! target's cleanup after an error) `abort` removes what this backup
//! stored, so that nothing under the label looks like a backup.

use std::io::{self, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::backup::info::Encryption;
use crate::backup::{
    object_name, server_compressed, validate_label, BackupInfo, BackupObject, ObjectKind,
    Tablespace, BACKUPS_DIR, BACKUP_JSON, MANIFEST, STARTED,
};
use crate::destination::sealed::{Recipients, SealWriter, SUFFIX as SEALED_SUFFIX};
use crate::destination::{Destination, ObjectWriter};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::{to_hex, Hasher};
use crate::wal::time::format_utc;
use crate::wal::walname::segment_file_name;

/// Bytes collected before they are handed to the destination's writer:
/// PostgreSQL's chunks are at most 32 kB, a write per chunk would be a
/// system call (or a channel send) per chunk.
const FLUSH_AT: usize = 1 << 20;

/// What PostgreSQL says when the backup starts.
#[derive(Debug, Clone)]
pub struct BackupStart {
    pub label: String,
    pub start_lsn: u64,
    pub start_tli: u32,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub wal_segment_size: u64,
    /// The data directory, where `pg_tblspc/OID` links say where each
    /// tablespace is.
    pub data_dir: PathBuf,
    /// zstd level of the archives the server did not compress already.
    pub level: i32,
    /// The label is the default one (a time, to the second): when it is
    /// taken, `LABEL-2`, `LABEL-3`... are tried. An explicit label that is
    /// taken is refused.
    pub numbered: bool,
}

/// Default labels tried after the first (`LABEL-2` to `LABEL-N`).
const MAX_NUMBERED: u32 = 99;

/// How `end_backup` waits for the archiver to store the WAL the backup
/// needs (it may still be storing the last file).
pub struct WalWait<'a> {
    pub timeout: Duration,
    pub poll: Duration,
    /// True when the wait must give up (cancel, terminate): read flags only.
    pub interrupted: &'a dyn Fn() -> bool,
}

impl WalWait<'_> {
    /// One look, no waiting.
    pub fn once() -> WalWait<'static> {
        WalWait {
            timeout: Duration::ZERO,
            poll: Duration::ZERO,
            interrupted: &|| false,
        }
    }
}

/// Looks for `INCREMENTAL.` files in the manifest as it streams by: the
/// manifest of a PostgreSQL 17+ incremental backup lists them.
#[derive(Default)]
struct IncrementalScan {
    tail: Vec<u8>,
    found: bool,
}

const INCREMENTAL_MARKS: [&[u8]; 2] = [b"/INCREMENTAL.", b"\"Path\": \"INCREMENTAL."];

impl IncrementalScan {
    fn feed(&mut self, data: &[u8]) {
        if self.found {
            return;
        }
        // The tail carries a mark cut between two chunks.
        let keep = INCREMENTAL_MARKS.iter().map(|m| m.len()).max().unwrap_or(0) - 1;
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(data);
        self.found = INCREMENTAL_MARKS
            .iter()
            .any(|m| window.windows(m.len()).any(|w| w == *m));
        let from = window.len().saturating_sub(keep);
        self.tail = window.split_off(from);
    }
}

/// `X/X`, as PostgreSQL prints an LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The WAL file holding byte `lsn` on `tli`.
pub fn wal_file_of(lsn: u64, tli: u32, wal_segment_size: u64) -> String {
    segment_file_name(tli, lsn / wal_segment_size, wal_segment_size)
}

/// Bytes on their way into one object: hashed and counted as stored,
/// collected, and written in large pieces.
struct Sink {
    writer: Option<Box<dyn ObjectWriter>>,
    hasher: Hasher,
    stored: u64,
    buf: Vec<u8>,
    /// The destination's error, kept whole while zstd sees an io::Error.
    failed: Option<ArchiveError>,
}

impl Sink {
    fn new(writer: Box<dyn ObjectWriter>) -> Sink {
        Sink {
            writer: Some(writer),
            hasher: Hasher::new(),
            stored: 0,
            buf: Vec::with_capacity(FLUSH_AT),
            failed: None,
        }
    }

    fn push(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.hasher.update(data);
        self.stored += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= FLUSH_AT {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<(), ArchiveError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| internal("writer gone"))?;
        w.write(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    /// Makes the object durable; returns bytes stored and their SHA-256.
    fn finish(mut self) -> Result<(u64, String), ArchiveError> {
        if let Err(e) = self.flush_buf() {
            self.abort();
            return Err(e);
        }
        let w = self.writer.take().ok_or_else(|| internal("writer gone"))?;
        let n = w.finish()?;
        if n != self.stored {
            return Err(internal(&format!(
                "the destination stored {n} bytes of {}",
                self.stored
            )));
        }
        Ok((self.stored, to_hex(&self.hasher.finish())))
    }

    fn abort(&mut self) {
        if let Some(w) = self.writer.take() {
            w.abort();
        }
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.push(data) {
            Ok(()) => Ok(data.len()),
            Err(e) => {
                self.failed = Some(e);
                Err(io::Error::other("the destination failed"))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The end of an encrypting chain: the sink, shared with `Open`, which must
/// reach it through age's writer (to abort it, to get the destination's
/// error back whole).
struct SharedSink(Arc<Mutex<Sink>>);

fn lock(s: &Mutex<Sink>) -> MutexGuard<'_, Sink> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Write for SharedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        lock(&self.0).write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// age alone, or zstd then age, into a `SharedSink`.
trait SealedChain: Write + Send {
    /// Ends the stream: zstd's frame, then age's last chunk (without it the
    /// object does not decrypt).
    fn end(self: Box<Self>) -> io::Result<()>;
}

impl SealedChain for SealWriter<SharedSink> {
    fn end(self: Box<Self>) -> io::Result<()> {
        self.finish().map(drop)
    }
}

impl SealedChain for zstd::stream::write::Encoder<'static, SealWriter<SharedSink>> {
    fn end(self: Box<Self>) -> io::Result<()> {
        (*self).finish()?.finish().map(drop)
    }
}

enum Output {
    Plain(Sink),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
    /// Compressed (or not) as above, then encrypted.
    Sealed {
        chain: Box<dyn SealedChain>,
        sink: Arc<Mutex<Sink>>,
    },
}

/// The object being written.
struct Open {
    entry: BackupObject,
    out: Output,
    /// For the manifest.
    scan: Option<IncrementalScan>,
}

impl Open {
    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.entry.size += data.len() as u64;
        if let Some(scan) = &mut self.scan {
            scan.feed(data);
        }
        match &mut self.out {
            Output::Plain(s) => s.push(data),
            Output::Zstd(z) => z.write_all(data).map_err(|e| {
                z.get_mut()
                    .failed
                    .take()
                    .unwrap_or_else(|| compress_error(&e))
            }),
            Output::Sealed { chain, sink } => chain
                .write_all(data)
                .map_err(|e| lock(sink).failed.take().unwrap_or_else(|| seal_error(&e))),
        }
    }

    fn finish(self) -> Result<BackupObject, ArchiveError> {
        let mut entry = self.entry;
        let sink = match self.out {
            Output::Plain(s) => s,
            Output::Zstd(z) => match z.try_finish() {
                Ok(s) => s,
                Err((mut z, e)) => {
                    let s = z.get_mut();
                    let err = s.failed.take().unwrap_or_else(|| compress_error(&e));
                    s.abort();
                    return Err(err);
                }
            },
            Output::Sealed { chain, sink } => {
                if let Err(e) = chain.end() {
                    let mut s = lock(&sink);
                    let err = s.failed.take().unwrap_or_else(|| seal_error(&e));
                    s.abort();
                    return Err(err);
                }
                // The chain, and its handle on the sink, is gone.
                match Arc::try_unwrap(sink) {
                    Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                    Err(sink) => {
                        lock(&sink).abort();
                        return Err(internal("the object's writer is still in use"));
                    }
                }
            }
        };
        let (stored, sha) = sink.finish()?;
        entry.stored_size = stored;
        entry.sha256 = sha;
        Ok(entry)
    }

    fn abort(self) {
        match self.out {
            Output::Plain(mut s) => s.abort(),
            Output::Zstd(mut z) => z.get_mut().abort(),
            Output::Sealed { sink, .. } => lock(&sink).abort(),
        }
    }
}

fn compress_error(e: &io::Error) -> ArchiveError {
    ArchiveError::new(ErrorKind::Internal, format!("could not compress: {e}"))
}

fn seal_error(e: &io::Error) -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Internal,
        format!("could not compress and encrypt: {e}"),
    )
}

fn internal(msg: &str) -> ArchiveError {
    ArchiveError::new(ErrorKind::Internal, msg.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    New,
    Started,
    /// backup.json is stored: nothing may be removed any more.
    Complete,
    Aborted,
}

/// What `abort` removed and could not remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AbortReport {
    pub removed: Vec<String>,
    /// Names left, with why.
    pub left: Vec<(String, String)>,
    /// `backup.json` may be stored and could not be removed (why): then
    /// nothing else was removed, so that it names no missing object.
    pub record_left: Option<String>,
}

/// One base backup on its way into the archive. `D` is whatever holds the
/// destination (`&dyn Destination`, an `Arc`).
pub struct BackupWriter<D>
where
    D: Deref,
    D::Target: Destination,
{
    dest: D,
    phase: Phase,
    start: Option<BackupStart>,
    start_time: String,
    /// Names stored by this backup, `backup.started` first.
    written: Vec<String>,
    open: Option<Open>,
    objects: Vec<BackupObject>,
    tablespaces: Vec<Tablespace>,
    /// The manifest lists `INCREMENTAL.` files.
    incremental: bool,
    /// base.tar, always the last tar, has ended: PostgreSQL stops the backup
    /// next and archives its `.backup` history file.
    base_ended: bool,
    /// Objects are encrypted to these (after compression).
    sealing: Option<Arc<Recipients>>,
}

impl<D> BackupWriter<D>
where
    D: Deref,
    D::Target: Destination,
{
    pub fn new(dest: D) -> Self {
        BackupWriter {
            dest,
            phase: Phase::New,
            start: None,
            start_time: String::new(),
            written: Vec::new(),
            open: None,
            objects: Vec::new(),
            tablespaces: Vec::new(),
            incremental: false,
            base_ended: false,
            sealing: None,
        }
    }

    /// Encrypts every object to `recipients` (`None`: stored as is).
    /// `backup.json` and `backup.started` stay plaintext: listing, retention
    /// and verifying the stored bytes need no key.
    pub fn sealed_to(mut self, recipients: Option<Arc<Recipients>>) -> Self {
        self.sealing = recipients;
        self
    }

    /// Whether the manifest received says this is an incremental backup.
    pub fn is_incremental(&self) -> bool {
        self.incremental
    }

    pub fn label(&self) -> Option<&str> {
        self.start.as_ref().map(|s| s.label.as_str())
    }

    /// Whether `backup.json` is stored.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Complete
    }

    fn dest(&self) -> &D::Target {
        &self.dest
    }

    fn started(&self) -> Result<&BackupStart, ArchiveError> {
        match (self.phase, &self.start) {
            (Phase::Started, Some(s)) => Ok(s),
            _ => Err(internal("the backup is not in progress")),
        }
    }

    /// Claims the label: refused when anything is stored under it already
    /// (a complete backup, or what an interrupted one left).
    pub fn begin(&mut self, start: BackupStart) -> Result<(), ArchiveError> {
        if self.phase != Phase::New {
            return Err(internal("the backup was already begun"));
        }
        validate_label(&start.label).map_err(|m| ArchiveError::new(ErrorKind::Configuration, m))?;
        if start.wal_segment_size == 0 {
            return Err(internal("the WAL segment size is 0"));
        }
        let mut start = start;
        let first = start.label.clone();
        let taken = || {
            ArchiveError::new(
                ErrorKind::Conflict,
                format!("backup label \"{first}\" is already used in the archive"),
            )
            .with_hint("Choose another label: pg_basebackup --target=walarch:LABEL.")
        };
        let last = if start.numbered { MAX_NUMBERED } else { 1 };
        for n in 1..=last {
            let label = if n == 1 {
                first.clone()
            } else {
                format!("{first}-{n}")
            };
            match self.claim(&label, &start) {
                Ok(true) => {
                    start.label = label;
                    self.start = Some(start);
                    self.phase = Phase::Started;
                    return Ok(());
                }
                Ok(false) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(taken())
    }

    /// Stores `backup.started` under `label`: false when the label is taken.
    fn claim(&mut self, label: &str, start: &BackupStart) -> Result<bool, ArchiveError> {
        validate_label(label).map_err(|m| ArchiveError::new(ErrorKind::Configuration, m))?;
        let prefix = format!("{BACKUPS_DIR}/{label}/");
        if !self.dest().objects_under(&prefix)?.is_empty() {
            return Ok(false);
        }
        let now = SystemTime::now();
        self.start_time = format_utc(now);
        let claim = format!(
            "{{\"label\": \"{label}\", \"start_lsn\": \"{}\", \"start_timeline\": {}, \"start_time\": \"{}\"}}\n",
            format_lsn(start.start_lsn),
            start.start_tli,
            self.start_time
        );
        let name = object_name(label, STARTED);
        let mut w = self.dest().create_object(&name)?;
        if let Err(e) = w.write(claim.as_bytes()) {
            w.abort();
            return Err(e);
        }
        match w.finish() {
            Ok(_) => {}
            // Another backup claimed it since the look above.
            Err(e) if e.kind == ErrorKind::Conflict => return Ok(false),
            // Whether the claim was stored is unknown: it cannot be told
            // from another backup's, so it is left (retention removes an
            // abandoned claim).
            Err(e) => return Err(e),
        }
        self.written.push(name);
        Ok(true)
    }

    /// Starts the object of one archive: `base.tar`, `OID.tar`, possibly
    /// with the suffix of the server's compression.
    pub fn begin_archive(&mut self, archive_name: &str) -> Result<(), ArchiveError> {
        let start = self.started()?;
        if self.open.is_some() {
            return Err(internal("an archive is already open"));
        }
        let (kind, oid) = archive_kind(archive_name).ok_or_else(|| {
            ArchiveError::new(
                ErrorKind::InvalidName,
                format!("unexpected archive name \"{archive_name}\" in base backup"),
            )
        })?;
        if self.objects.iter().any(|o| o.archive_name == archive_name) {
            return Err(ArchiveError::new(
                ErrorKind::InvalidName,
                format!("archive \"{archive_name}\" was sent twice"),
            ));
        }
        if let Some(oid) = oid {
            let location = tablespace_location(&start.data_dir, oid)?;
            self.tablespaces.push(Tablespace { oid, location });
        }
        self.open_object(archive_name.to_string(), kind, oid)
    }

    /// Appends bytes to the open archive or manifest.
    pub fn contents(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.started()?;
        let open = self
            .open
            .as_mut()
            .ok_or_else(|| internal("no archive is open"))?;
        open.write(data)
    }

    /// `contents`, as PostgreSQL's `archive_contents` callback.
    pub fn archive_contents(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.contents(data)
    }

    /// Makes the open archive's object durable.
    pub fn end_archive(&mut self) -> Result<(), ArchiveError> {
        self.started()?;
        let open = self
            .open
            .take()
            .ok_or_else(|| internal("no archive is open"))?;
        let name = object_name(self.label().unwrap_or_default(), &open.entry.name);
        if let Some(scan) = &open.scan {
            self.incremental |= scan.found;
        }
        // Recorded before it is finished: a completion whose reply was lost
        // may have stored it, and abort must remove it then too (removing
        // an absent object succeeds).
        self.written.push(name);
        let entry = open.finish()?;
        self.base_ended |= entry.kind == ObjectKind::Base;
        self.objects.push(entry);
        Ok(())
    }

    /// The manifest, stored as `backup_manifest.zst`.
    pub fn begin_manifest(&mut self) -> Result<(), ArchiveError> {
        self.started()?;
        if self.open.is_some() {
            return Err(internal("an archive is already open"));
        }
        self.open_object(MANIFEST.to_string(), ObjectKind::Manifest, None)
    }

    pub fn manifest_contents(&mut self, data: &[u8]) -> Result<(), ArchiveError> {
        self.contents(data)
    }

    pub fn end_manifest(&mut self) -> Result<(), ArchiveError> {
        self.end_archive()
    }

    fn open_object(
        &mut self,
        archive_name: String,
        kind: ObjectKind,
        oid: Option<u32>,
    ) -> Result<(), ArchiveError> {
        let level = self.started()?.level;
        let compress = !server_compressed(&archive_name);
        let mut file = if compress {
            format!("{archive_name}.zst")
        } else {
            archive_name.clone()
        };
        if self.sealing.is_some() {
            file.push_str(SEALED_SUFFIX);
        }
        let name = object_name(self.label().unwrap_or_default(), &file);
        let sink = Sink::new(self.dest().create_object(&name)?);
        let out = if let Some(r) = &self.sealing {
            let sink = Arc::new(Mutex::new(sink));
            // Nothing is written yet on an error: the writer is dropped
            // unfinished with the chain (nothing visible).
            let sealed = r
                .seal_stream(SharedSink(Arc::clone(&sink)))
                .map_err(|e| seal_error(&e))?;
            let chain: Box<dyn SealedChain> = if compress {
                Box::new(
                    zstd::stream::write::Encoder::new(sealed, level)
                        .map_err(|e| compress_error(&e))?,
                )
            } else {
                Box::new(sealed)
            };
            Output::Sealed { chain, sink }
        } else if compress {
            match zstd::stream::write::Encoder::new(sink, level) {
                Ok(z) => Output::Zstd(z),
                // The sink is gone with the encoder: nothing was written
                // yet, the writer is dropped unfinished (nothing visible).
                Err(e) => return Err(compress_error(&e)),
            }
        } else {
            Output::Plain(sink)
        };
        self.open = Some(Open {
            entry: BackupObject {
                name: file,
                kind,
                tablespace_oid: oid,
                archive_name,
                size: 0,
                stored_size: 0,
                sha256: String::new(),
                compression: if compress { "zstd" } else { "none" }.into(),
            },
            out,
            scan: (kind == ObjectKind::Manifest).then(IncrementalScan::default),
        });
        Ok(())
    }

    /// Checks what the backup needs, then stores `backup.json`, last: from
    /// then on the backup is complete.
    pub fn end_backup(
        &mut self,
        stop_lsn: u64,
        stop_tli: u32,
        wal: &WalWait,
    ) -> Result<BackupInfo, ArchiveError> {
        let info = self.check_end(stop_lsn, stop_tli, wal)?;
        self.store_record(&info)?;
        Ok(info)
    }

    /// Everything before `backup.json`: the record it will be, once the WAL
    /// from start to stop is in the archive and every object is still
    /// there as stored.
    pub fn check_end(
        &mut self,
        stop_lsn: u64,
        stop_tli: u32,
        wal: &WalWait,
    ) -> Result<BackupInfo, ArchiveError> {
        let start = self.started()?;
        if self.open.is_some() {
            return Err(internal("an archive is still open"));
        }
        if !self.objects.iter().any(|o| o.kind == ObjectKind::Base) {
            return Err(internal("the backup has no base.tar"));
        }
        if stop_lsn < start.start_lsn || stop_lsn == 0 {
            return Err(internal("the backup ends before it starts"));
        }
        if self.incremental {
            return Err(incremental_refused());
        }
        let seg = start.wal_segment_size;
        let info = BackupInfo {
            format: crate::backup::info::FORMAT,
            label: start.label.clone(),
            system_identifier: start.system_identifier.to_string(),
            pg_version: start.pg_version,
            wal_segment_size: seg,
            start_lsn: format_lsn(start.start_lsn),
            start_timeline: start.start_tli,
            start_wal: wal_file_of(start.start_lsn, start.start_tli, seg),
            stop_lsn: format_lsn(stop_lsn),
            stop_timeline: stop_tli,
            // The last byte the backup needs is just before stop_lsn.
            stop_wal: wal_file_of(stop_lsn - 1, stop_tli, seg),
            start_time: self.start_time.clone(),
            stop_time: format_utc(SystemTime::now()),
            tablespaces: self.tablespaces.clone(),
            objects: self.objects.clone(),
            based_on: None,
            encryption: self.sealing.as_ref().map(|r| Encryption {
                method: "age".into(),
                recipients: r.len(),
            }),
        };
        self.wait_for_wal(&info, wal)?;
        self.check_objects(&info.label)?;
        Ok(info)
    }

    /// PostgreSQL waits for the archiving of the backup's WAL only when
    /// archiving is on and the client asked to wait: the archive is what
    /// says. The archiver may still be storing the last file: wait a while.
    fn wait_for_wal(&self, info: &BackupInfo, wal: &WalWait) -> Result<(), ArchiveError> {
        let mut pending = crate::backup::list::needed_segments(info).map_err(|m| internal(&m))?;
        let began = Instant::now();
        loop {
            pending = crate::backup::list::unstored_segments(self.dest(), pending)?;
            let Some(first) = pending.first().and_then(|any| any.first()) else {
                return Ok(());
            };
            if began.elapsed() >= wal.timeout {
                return Err(ArchiveError::new(
                    ErrorKind::Configuration,
                    format!(
                        "WAL file \"{first}\" needed by base backup \"{}\" is not in the archive",
                        info.label
                    ),
                )
                .with_detail(format!(
                    "{} of the WAL files from {} to {} are missing after {} s.",
                    pending.len(),
                    info.start_wal,
                    info.stop_wal,
                    wal.timeout.as_secs()
                ))
                .with_hint(
                    "Backups through target \"walarch\" need the server to archive its WAL through walarch_ext (archive_mode = on or always, archive_library = 'walarch_ext') and archiving to keep up: see pg_stat_archiver.",
                ));
            }
            let until = Instant::now() + wal.poll;
            loop {
                if (wal.interrupted)() {
                    return Err(ArchiveError::new(
                        ErrorKind::Unavailable,
                        format!(
                            "could not wait for WAL file \"{first}\" of base backup \"{}\": interrupted",
                            info.label
                        ),
                    ));
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(Duration::from_millis(100)));
            }
        }
    }

    /// Every object this backup stored is still there, as stored: retention
    /// removes an incomplete backup none of whose objects changed for
    /// `INCOMPLETE_AFTER`, and a backup can stream for longer than that.
    fn check_objects(&self, label: &str) -> Result<(), ArchiveError> {
        let prefix = format!("{BACKUPS_DIR}/{label}/");
        let listed: std::collections::HashMap<String, u64> = self
            .dest()
            .objects_under(&prefix)?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        let gone = |name: &str, detail: String| {
            ArchiveError::new(
                ErrorKind::Io,
                format!("object \"{name}\" of base backup \"{label}\" is not in the archive as stored"),
            )
            .with_detail(detail)
            .with_hint("Was it removed while the backup was streaming (walarch retention removes incomplete backups unchanged for 24 hours)? Take the backup again.")
        };
        for name in &self.written {
            if !listed.contains_key(name) {
                return Err(gone(name, "It is missing.".into()));
            }
        }
        for o in &self.objects {
            let name = object_name(label, &o.name);
            match listed.get(&name) {
                Some(&n) if n == o.stored_size => {}
                Some(&n) => {
                    return Err(gone(
                        &name,
                        format!("It has {n} bytes; {} were stored.", o.stored_size),
                    ))
                }
                None => return Err(gone(&name, "It is missing.".into())),
            }
        }
        Ok(())
    }

    /// Stores `backup.json` (what `check_end` returned): the backup is
    /// complete once the destination acknowledged it.
    pub fn store_record(&mut self, info: &BackupInfo) -> Result<(), ArchiveError> {
        let start = self.started()?;
        let name = object_name(&start.label, BACKUP_JSON);
        let mut w = self.dest().create_object(&name)?;
        if let Err(e) = w.write(info.to_json().as_bytes()) {
            w.abort();
            return Err(e);
        }
        // Recorded first: a reply lost after the store took it leaves it
        // there, and abort must remove it before anything it names.
        self.written.push(name);
        w.finish()?;
        self.phase = Phase::Complete;
        Ok(())
    }

    /// Discards this backup: the open object, `backup.json` if it may be
    /// stored (when that cannot be removed, nothing else is: it would name
    /// missing objects), then every object stored, `backup.started` last
    /// (the label stays claimed until the rest is gone) — or kept, once
    /// base.tar has ended (see below). Best effort; does
    /// nothing once the backup is complete. After the first failure that
    /// says the store is unreachable it stops trying (each attempt would
    /// wait a full timeout): retention removes the rest.
    pub fn abort(&mut self) -> AbortReport {
        let mut report = AbortReport::default();
        if matches!(self.phase, Phase::Complete | Phase::Aborted) {
            return report;
        }
        self.phase = Phase::Aborted;
        if let Some(open) = self.open.take() {
            open.abort();
        }
        let mut written = std::mem::take(&mut self.written);
        let record = self
            .start
            .as_ref()
            .map(|s| object_name(&s.label, BACKUP_JSON));
        if let Some(pos) = record.and_then(|r| written.iter().position(|n| *n == r)) {
            let name = written.remove(pos);
            match self.dest.remove_object(&name) {
                Ok(()) => report.removed.push(name),
                Err(e) => {
                    report.record_left = Some(e.message.clone());
                    report.left.push((name, e.message));
                    for n in written.into_iter().rev() {
                        report
                            .left
                            .push((n, "kept: backup.json could not be removed".into()));
                    }
                    return report;
                }
            }
        }
        // Once PostgreSQL may have archived the backup's `.backup` history
        // file, the claim stays as the record that this start is a failed
        // backup: retention would otherwise count that file as a backup
        // (it removes both once the claim is abandoned).
        if self.base_ended {
            let claim = self.start.as_ref().map(|s| object_name(&s.label, STARTED));
            if let Some(pos) = claim.and_then(|c| written.iter().position(|n| *n == c)) {
                let name = written.remove(pos);
                report.left.push((
                    name,
                    "kept: it marks the backup's .backup history file as a failed backup's".into(),
                ));
            }
        }
        let mut unreachable: Option<String> = None;
        for name in written.into_iter().rev() {
            if let Some(why) = &unreachable {
                report.left.push((name, why.clone()));
                continue;
            }
            match self.dest.remove_object(&name) {
                Ok(()) => report.removed.push(name),
                Err(e) => {
                    if e.kind == ErrorKind::Unavailable {
                        unreachable = Some(e.message.clone());
                    }
                    report.left.push((name, e.message));
                }
            }
        }
        report
    }
}

/// What an incremental backup (PostgreSQL 17+ `--incremental`) gets: it
/// would be recorded as full and could not be restored.
pub fn incremental_refused() -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Configuration,
        "incremental backups are not supported by basebackup target \"walarch\"",
    )
    .with_hint("Take a full backup: pg_basebackup without --incremental.")
}

/// `base.tar[.gz|.lz4|.zst]` or `OID.tar[...]`.
fn archive_kind(archive_name: &str) -> Option<(ObjectKind, Option<u32>)> {
    let stem = [".gz", ".lz4", ".zst"]
        .iter()
        .find_map(|s| archive_name.strip_suffix(s))
        .unwrap_or(archive_name);
    let base = stem.strip_suffix(".tar")?;
    if base == "base" {
        return Some((ObjectKind::Base, None));
    }
    if base.is_empty() || !base.bytes().all(|b| b.is_ascii_digit()) || base.starts_with('0') {
        return None;
    }
    let oid: u32 = base.parse().ok()?;
    Some((ObjectKind::Tablespace, Some(oid)))
}

/// Where tablespace `oid` is: the target of `pg_tblspc/OID` (an in-place
/// tablespace is a directory there: its path relative to the data
/// directory).
fn tablespace_location(data_dir: &Path, oid: u32) -> Result<String, ArchiveError> {
    let link = data_dir.join("pg_tblspc").join(oid.to_string());
    match std::fs::read_link(&link) {
        Ok(target) => Ok(target.to_string_lossy().into_owned()),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput && link.is_dir() => {
            Ok(format!("pg_tblspc/{oid}"))
        }
        Err(e) => Err(ArchiveError::io("read symbolic link", &link, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::info::BackupInfo;
    use crate::support::testing::{pattern, MemoryDestination};
    use crate::wal::checksum::sha256;
    use std::io::Read;

    const SEG: u64 = 16 << 20;

    fn start(label: &str, data_dir: &Path) -> BackupStart {
        BackupStart {
            label: label.into(),
            start_lsn: 0x2_0000_0028,
            start_tli: 1,
            system_identifier: 7_301_234_567_890_123_456,
            pg_version: 150_010,
            wal_segment_size: SEG,
            data_dir: data_dir.to_path_buf(),
            level: 1,
            numbered: false,
        }
    }

    /// The WAL of every backup here (2/28 to at most 3/0) in the archive.
    fn with_wal(dest: &dyn Destination) {
        for seg in 0x200..=0x2FF {
            let name = segment_file_name(1, seg, SEG);
            dest.store_new_bytes(&name, b"wal").unwrap();
        }
    }

    fn data_dir_with_tablespace(oid: u32) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink("/srv/ts1", d.path().join(format!("pg_tblspc/{oid}"))).unwrap();
        d
    }

    /// Sends `data` the way PostgreSQL does: chunks of at most 32 kB.
    fn send(w: &mut BackupWriter<&dyn Destination>, data: &[u8]) {
        for c in data.chunks(32 << 10) {
            w.archive_contents(c).unwrap();
        }
    }

    fn full_backup(w: &mut BackupWriter<&dyn Destination>, dir: &Path, base: &[u8]) -> BackupInfo {
        w.begin(start("L1", dir)).unwrap();
        w.begin_archive("16385.tar").unwrap();
        send(w, &pattern(100_000));
        w.end_archive().unwrap();
        w.begin_archive("base.tar").unwrap();
        send(w, base);
        w.end_archive().unwrap();
        w.begin_manifest().unwrap();
        w.manifest_contents(b"{\"PostgreSQL-Backup-Manifest-Version\": 1}")
            .unwrap();
        w.end_manifest().unwrap();
        with_wal(w.dest());
        w.end_backup(0x3_0000_0000, 1, &WalWait::once()).unwrap()
    }

    fn read(dest: &dyn Destination, name: &str) -> Vec<u8> {
        let mut v = Vec::new();
        dest.open_object(name)
            .unwrap()
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    }

    #[test]
    fn a_backup_is_stored_compressed_and_recorded_last() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let base = pattern(3 << 20);
        let mut w = BackupWriter::new(dest);
        let info = full_backup(&mut w, dir.path(), &base);
        assert!(w.is_complete());

        let names: Vec<String> = mem.objects().keys().cloned().collect();
        assert_eq!(
            names,
            [
                "backups/L1/16385.tar.zst",
                "backups/L1/backup.json",
                "backups/L1/backup.started",
                "backups/L1/backup_manifest.zst",
                "backups/L1/base.tar.zst",
            ]
        );
        let stored = BackupInfo::from_json(&read(dest, "backups/L1/backup.json")).unwrap();
        assert_eq!(stored, info);
        assert_eq!(info.start_lsn, "2/28");
        assert_eq!(info.start_wal, "000000010000000200000000");
        // 3/0 ends a segment: the last byte needed is in the one before.
        assert_eq!(info.stop_lsn, "3/0");
        assert_eq!(info.stop_wal, "0000000100000002000000FF");
        assert_eq!(info.system_identifier, "7301234567890123456");
        assert_eq!(
            info.tablespaces,
            [Tablespace {
                oid: 16385,
                location: "/srv/ts1".into()
            }]
        );
        let kinds: Vec<_> = info
            .objects
            .iter()
            .map(|o| (o.kind, o.tablespace_oid))
            .collect();
        assert_eq!(
            kinds,
            [
                (ObjectKind::Tablespace, Some(16385)),
                (ObjectKind::Base, None),
                (ObjectKind::Manifest, None)
            ]
        );
        for o in &info.objects {
            let bytes = read(dest, &format!("backups/L1/{}", o.name));
            assert_eq!(bytes.len() as u64, o.stored_size, "{}", o.name);
            assert_eq!(to_hex(&sha256(&bytes)), o.sha256, "{}", o.name);
            assert_eq!(o.compression, "zstd");
            let plain = zstd::decode_all(&bytes[..]).unwrap();
            assert_eq!(plain.len() as u64, o.size);
            if o.kind == ObjectKind::Base {
                assert_eq!(plain, base);
                assert!(o.stored_size < o.size);
            }
        }
        // After success, PostgreSQL's cleanup callback removes nothing.
        assert_eq!(w.abort(), AbortReport::default());
        assert_eq!(mem.objects().len(), 5);
    }

    #[test]
    fn an_encrypted_backup_stores_age_objects_and_a_plaintext_record() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let (recipients, ids) = crate::destination::sealed::tests::keys();
        let base = pattern(3 << 20);
        let mut w = BackupWriter::new(dest).sealed_to(Some(Arc::new(recipients)));
        let info = full_backup(&mut w, dir.path(), &base);
        let names: Vec<String> = mem.objects().keys().cloned().collect();
        assert_eq!(
            names,
            [
                "backups/L1/16385.tar.zst.age",
                "backups/L1/backup.json",
                "backups/L1/backup.started",
                "backups/L1/backup_manifest.zst.age",
                "backups/L1/base.tar.zst.age",
            ]
        );
        // backup.json is plaintext, says so, and names no key.
        let json = read(dest, "backups/L1/backup.json");
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(!text.contains("age1"), "{text}");
        let stored = BackupInfo::from_json(&json).unwrap();
        assert_eq!(stored, info);
        assert_eq!(
            info.encryption,
            Some(Encryption {
                method: "age".into(),
                recipients: 1
            })
        );
        assert!(read(dest, "backups/L1/backup.started").starts_with(b"{"));
        for o in &info.objects {
            assert!(o.is_sealed(), "{}", o.name);
            assert_eq!(o.compression, "zstd");
            let bytes = read(dest, &format!("backups/L1/{}", o.name));
            assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "{}", o.name);
            // The record is of the stored (encrypted) bytes: checked
            // without a key.
            assert_eq!(bytes.len() as u64, o.stored_size, "{}", o.name);
            assert_eq!(to_hex(&sha256(&bytes)), o.sha256, "{}", o.name);
            let plain = zstd::decode_all(&ids.open_bytes(&bytes).unwrap()[..]).unwrap();
            assert_eq!(plain.len() as u64, o.size, "{}", o.name);
            if o.kind == ObjectKind::Base {
                assert_eq!(plain, base);
                // Compressed before it was encrypted.
                assert!(o.stored_size < o.size);
            }
        }
        // An unencrypted backup's record has no such field.
        let plain = full_backup(
            &mut BackupWriter::new(&MemoryDestination::default() as &dyn Destination),
            dir.path(),
            b"x",
        );
        assert_eq!(plain.encryption, None);
        assert!(!plain.to_json().contains("encryption"));
    }

    #[test]
    fn server_compressed_archives_are_encrypted_as_sent() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = tempfile::tempdir().unwrap();
        let (recipients, ids) = crate::destination::sealed::tests::keys();
        let mut w = BackupWriter::new(dest).sealed_to(Some(Arc::new(recipients)));
        w.begin(start("z", dir.path())).unwrap();
        w.begin_archive("base.tar.zst").unwrap();
        let sent = zstd::encode_all(&pattern(50_000)[..], 3).unwrap();
        send(&mut w, &sent);
        w.end_archive().unwrap();
        w.begin_manifest().unwrap();
        w.manifest_contents(b"{}").unwrap();
        w.end_manifest().unwrap();
        with_wal(dest);
        let info = w.end_backup(0x2_0000_0100, 1, &WalWait::once()).unwrap();
        let o = &info.objects[0];
        assert_eq!(
            (o.name.as_str(), o.compression.as_str()),
            ("base.tar.zst.age", "none")
        );
        let stored = read(dest, "backups/z/base.tar.zst.age");
        assert_eq!(ids.open_bytes(&stored).unwrap(), sent);
        assert_eq!(o.stored_size, stored.len() as u64);
    }

    #[test]
    fn an_encrypted_archive_s_store_failure_reaches_the_caller_and_abort_cleans_up() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let (recipients, _) = crate::destination::sealed::tests::keys();
        let mut w = BackupWriter::new(dest).sealed_to(Some(Arc::new(recipients)));
        w.begin(start("F", dir.path())).unwrap();
        w.begin_archive("16385.tar").unwrap();
        send(&mut w, &pattern(10_000));
        w.end_archive().unwrap();
        *mem.fail_objects_after.lock().unwrap() = Some(2 << 20);
        w.begin_archive("base.tar").unwrap();
        let mut x = 1u64;
        let data: Vec<u8> = (0..(8 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let err = data
            .chunks(32 << 10)
            .find_map(|c| w.archive_contents(c).err())
            .expect("the store's failure reaches the caller");
        // The destination's own error, not the encryptor's.
        assert_eq!(err.kind, ErrorKind::Unavailable);
        let r = w.abort();
        assert_eq!(
            r.removed,
            ["backups/F/16385.tar.zst.age", "backups/F/backup.started"]
        );
        assert!(mem.objects().is_empty());
        assert_eq!(mem.open_writers(), 0);

        // Aborted with an encrypted object open: its writer is discarded.
        let (recipients, _) = crate::destination::sealed::tests::keys();
        let mut w = BackupWriter::new(dest).sealed_to(Some(Arc::new(recipients)));
        w.begin(start("G", dir.path())).unwrap();
        w.begin_archive("base.tar").unwrap();
        send(&mut w, &pattern(100_000));
        assert_eq!(mem.open_writers(), 1);
        w.abort();
        assert_eq!(mem.open_writers(), 0);
        assert!(mem.objects().is_empty());
    }

    #[test]
    fn server_compressed_archives_are_stored_as_sent() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = tempfile::tempdir().unwrap();
        let mut w = BackupWriter::new(dest);
        w.begin(start("z", dir.path())).unwrap();
        w.begin_archive("base.tar.zst").unwrap();
        let sent = zstd::encode_all(&pattern(50_000)[..], 3).unwrap();
        send(&mut w, &sent);
        w.end_archive().unwrap();
        w.begin_manifest().unwrap();
        w.manifest_contents(b"{}").unwrap();
        w.end_manifest().unwrap();
        with_wal(dest);
        let info = w.end_backup(0x2_0000_0100, 1, &WalWait::once()).unwrap();
        let o = &info.objects[0];
        assert_eq!(
            (
                o.name.as_str(),
                o.archive_name.as_str(),
                o.compression.as_str()
            ),
            ("base.tar.zst", "base.tar.zst", "none")
        );
        assert_eq!(o.size, o.stored_size);
        assert_eq!(read(dest, "backups/z/base.tar.zst"), sent);
        assert_eq!(info.stop_wal, "000000010000000200000000");
    }

    #[test]
    fn a_used_label_is_refused_and_left_alone() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        full_backup(&mut BackupWriter::new(dest), dir.path(), b"x");
        let before = mem.objects();
        let mut w = BackupWriter::new(dest);
        let e = w.begin(start("L1", dir.path())).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert_eq!(
            e.message,
            "backup label \"L1\" is already used in the archive"
        );
        // Its cleanup must not touch the other backup's objects.
        w.abort();
        assert_eq!(mem.objects(), before);

        // A claim taken between the look and the create (a concurrent
        // backup) is refused the same way.
        dest.create_object("backups/L2/backup.started")
            .and_then(|w| w.finish())
            .unwrap();
        let e = BackupWriter::new(dest)
            .begin(start("L2", dir.path()))
            .unwrap_err();
        assert!(e.message.contains("already used"), "{}", e.message);
    }

    #[test]
    fn bad_labels_and_archive_names_are_refused() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = tempfile::tempdir().unwrap();
        let e = BackupWriter::new(dest)
            .begin(start("../x", dir.path()))
            .unwrap_err();
        assert!(e.message.contains("invalid backup label"), "{}", e.message);
        assert!(mem.objects().is_empty());
        for bad in ["pg_wal.tar", "../base.tar", "0.tar", "base", "12a.tar"] {
            assert!(archive_kind(bad).is_none(), "{bad}");
        }
        assert_eq!(
            archive_kind("16385.tar.lz4"),
            Some((ObjectKind::Tablespace, Some(16385)))
        );
        let mut w = BackupWriter::new(dest);
        w.begin(start("ok", dir.path())).unwrap();
        assert!(w.begin_archive("x/../../etc.tar").is_err());
        // A tablespace whose link is missing cannot be recorded.
        let e = w.begin_archive("16400.tar").unwrap_err();
        assert!(e.message.contains("pg_tblspc/16400"), "{}", e.message);
    }

    #[test]
    fn abort_after_base_tar_keeps_the_claim_as_the_failed_backups_record() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let mut w = BackupWriter::new(dest);
        w.begin(start("L", dir.path())).unwrap();
        w.begin_archive("base.tar").unwrap();
        send(&mut w, &pattern(10_000));
        w.end_archive().unwrap();
        // PostgreSQL stopped the backup (its .backup file may be archived);
        // then the manifest fails.
        w.begin_manifest().unwrap();
        let r = w.abort();
        assert_eq!(r.removed, ["backups/L/base.tar.zst"]);
        assert_eq!(r.left.len(), 1, "{:?}", r.left);
        assert_eq!(r.left[0].0, "backups/L/backup.started");
        let names: Vec<_> = mem.objects().into_keys().collect();
        assert_eq!(names, ["backups/L/backup.started"]);
        let claim = String::from_utf8(mem.objects()["backups/L/backup.started"].clone()).unwrap();
        assert!(claim.contains("\"start_timeline\": 1"), "{claim}");
        // Retention reads it as this backup's start.
        let c = crate::backup::catalog::ClaimedStart::parse(claim.as_bytes()).unwrap();
        assert!(c.matches(0x2_0000_0028, 1));
        assert!(!c.matches(0x2_0000_0028, 2));
    }

    #[test]
    fn abort_removes_everything_of_the_label_and_the_open_object() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        // Someone else's backup stays.
        dest.create_object("backups/other/backup.json")
            .and_then(|w| w.finish())
            .unwrap();
        let dir = data_dir_with_tablespace(16385);
        let mut w = BackupWriter::new(dest);
        w.begin(start("L", dir.path())).unwrap();
        w.begin_archive("16385.tar").unwrap();
        send(&mut w, &pattern(10_000));
        w.end_archive().unwrap();
        w.begin_archive("base.tar").unwrap();
        send(&mut w, &pattern(10_000));
        assert_eq!(mem.open_writers(), 1);
        let r = w.abort();
        assert_eq!(
            r.removed,
            ["backups/L/16385.tar.zst", "backups/L/backup.started"]
        );
        assert!(r.left.is_empty());
        assert_eq!(mem.open_writers(), 0);
        let names: Vec<_> = mem.objects().into_keys().collect();
        assert_eq!(names, ["backups/other/backup.json"]);
        // The label is free again.
        full_backup(&mut BackupWriter::new(dest), dir.path(), b"y");
        // A writer used after abort refuses.
        assert!(w.archive_contents(b"x").is_err());
        assert!(w.end_backup(0x3_0000_0000, 1, &WalWait::once()).is_err());
    }

    #[test]
    fn a_failing_store_fails_the_archive_and_abort_cleans_up() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = tempfile::tempdir().unwrap();
        let mut w = BackupWriter::new(dest);
        w.begin(start("F", dir.path())).unwrap();
        *mem.fail_objects_after.lock().unwrap() = Some(2 << 20);
        w.begin_archive("base.tar").unwrap();
        // Random-ish bytes compress poorly, so the stored size grows.
        let mut x = 1u64;
        let data: Vec<u8> = (0..(8 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let err = data
            .chunks(32 << 10)
            .find_map(|c| w.archive_contents(c).err())
            .expect("the store's failure reaches the caller");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        let r = w.abort();
        assert_eq!(r.removed, ["backups/F/backup.started"]);
        assert!(mem.objects().is_empty());
        assert_eq!(mem.open_writers(), 0);
    }

    #[test]
    fn end_backup_needs_a_base_archive() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = tempfile::tempdir().unwrap();
        let mut w = BackupWriter::new(dest);
        w.begin(start("n", dir.path())).unwrap();
        assert!(w.end_backup(0x3_0000_0000, 1, &WalWait::once()).is_err());
        assert!(!mem.objects().contains_key("backups/n/backup.json"));
    }

    #[test]
    fn into_a_directory_and_aborted_in_a_directory() {
        use crate::destination::local_directory::LocalDirectory;
        let archive = tempfile::tempdir().unwrap();
        let local = LocalDirectory::new(archive.path().to_path_buf(), 0o600);
        let dest: &dyn Destination = &local;
        let dir = data_dir_with_tablespace(16385);
        let base = pattern(2 << 20);
        let info = full_backup(&mut BackupWriter::new(dest), dir.path(), &base);
        let folder = archive.path().join("backups/L1");
        for o in &info.objects {
            let bytes = std::fs::read(folder.join(&o.name)).unwrap();
            assert_eq!(to_hex(&sha256(&bytes)), o.sha256, "{}", o.name);
        }
        let json = std::fs::read(folder.join(BACKUP_JSON)).unwrap();
        assert_eq!(BackupInfo::from_json(&json).unwrap(), info);
        let e = BackupWriter::new(dest)
            .begin(start("L1", dir.path()))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);

        let mut w = BackupWriter::new(dest);
        w.begin(start("L2", dir.path())).unwrap();
        w.begin_archive("16385.tar").unwrap();
        send(&mut w, &pattern(10_000));
        w.end_archive().unwrap();
        w.begin_archive("base.tar").unwrap();
        send(&mut w, &base);
        let r = w.abort();
        assert_eq!(r.removed.len(), 2, "{r:?}");
        assert!(dest.objects_under("backups/L2/").unwrap().is_empty());
        // No temporary file of the open object is left either.
        let left: Vec<_> = walk(archive.path())
            .into_iter()
            .filter(|p| !p.starts_with(&folder))
            .filter(|p| p.is_file())
            // The WAL the backups needed.
            .filter(|p| {
                !p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("00000001")
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![p.to_path_buf()];
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap() {
                out.extend(walk(&e.unwrap().path()));
            }
        }
        out
    }

    /// A backup up to its manifest (base.tar and a tablespace stored).
    fn up_to_manifest(w: &mut BackupWriter<&dyn Destination>, dir: &Path, label: &str) {
        w.begin(start(label, dir)).unwrap();
        w.begin_archive("16385.tar").unwrap();
        send(w, &pattern(10_000));
        w.end_archive().unwrap();
        w.begin_archive("base.tar").unwrap();
        send(w, &pattern(10_000));
        w.end_archive().unwrap();
    }

    fn manifest(w: &mut BackupWriter<&dyn Destination>, text: &[u8]) {
        w.begin_manifest().unwrap();
        // Small chunks: a mark may be cut between two.
        for c in text.chunks(7) {
            w.manifest_contents(c).unwrap();
        }
        w.end_manifest().unwrap();
    }

    #[test]
    fn an_archive_stored_whose_reply_was_lost_is_removed_by_abort() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let mut w = BackupWriter::new(dest);
        w.begin(start("R", dir.path())).unwrap();
        *mem.lose_reply_of.lock().unwrap() = Some("base.tar.zst".into());
        w.begin_archive("base.tar").unwrap();
        send(&mut w, &pattern(10_000));
        assert!(w.end_archive().is_err());
        assert!(mem.objects().contains_key("backups/R/base.tar.zst"));
        let r = w.abort();
        assert_eq!(
            r.removed,
            ["backups/R/base.tar.zst", "backups/R/backup.started"]
        );
        assert!(mem.objects().is_empty());
    }

    #[test]
    fn a_backup_json_whose_reply_was_lost_is_removed_first() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        with_wal(dest);
        let mut w = BackupWriter::new(dest);
        up_to_manifest(&mut w, dir.path(), "J");
        manifest(&mut w, b"{}");
        *mem.lose_reply_of.lock().unwrap() = Some(BACKUP_JSON.into());
        assert!(w.end_backup(0x3_0000_0000, 1, &WalWait::once()).is_err());
        assert!(!w.is_complete());
        assert!(mem.objects().contains_key("backups/J/backup.json"));
        let r = w.abort();
        assert_eq!(r.removed[0], "backups/J/backup.json");
        assert_eq!(r.removed.len(), 4, "{r:?}");
        // The claim is kept: the backup had stopped.
        let names: Vec<_> = mem.objects().into_keys().collect();
        assert_eq!(names, ["backups/J/backup.started"]);
    }

    #[test]
    fn when_backup_json_cannot_be_removed_nothing_else_is() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        with_wal(dest);
        let mut w = BackupWriter::new(dest);
        up_to_manifest(&mut w, dir.path(), "K");
        manifest(&mut w, b"{}");
        *mem.lose_reply_of.lock().unwrap() = Some(BACKUP_JSON.into());
        assert!(w.end_backup(0x3_0000_0000, 1, &WalWait::once()).is_err());
        let before = mem.objects();
        *mem.fail_removes.lock().unwrap() = true;
        let r = w.abort();
        assert!(r.record_left.is_some());
        assert!(r.removed.is_empty());
        assert_eq!(r.left.len(), 5, "{r:?}");
        assert_eq!(r.left[0].0, "backups/K/backup.json");
        // What backup.json names is all still there.
        assert_eq!(mem.objects(), before);
    }

    #[test]
    fn an_incremental_backup_is_refused() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        with_wal(dest);
        for (label, text) in [
            (
                "I1",
                &b"{ \"Path\": \"base/5/INCREMENTAL.16384\", \"Size\": 8 }"[..],
            ),
            ("I2", &b"{ \"Path\": \"INCREMENTAL.x\" }"[..]),
        ] {
            let mut w = BackupWriter::new(dest);
            up_to_manifest(&mut w, dir.path(), label);
            manifest(&mut w, text);
            assert!(w.is_incremental());
            let e = w
                .end_backup(0x3_0000_0000, 1, &WalWait::once())
                .unwrap_err();
            assert_eq!(
                e.message,
                "incremental backups are not supported by basebackup target \"walarch\""
            );
            w.abort();
            // Only the claim, kept as the failed backup's record.
            let left = dest.objects_under(&format!("backups/{label}/")).unwrap();
            assert_eq!(left.len(), 1, "{left:?}");
            assert!(left[0].name.ends_with("/backup.started"));
        }
        let mut w = BackupWriter::new(dest);
        up_to_manifest(&mut w, dir.path(), "F");
        manifest(&mut w, b"{ \"Path\": \"base/5/16384\", \"Size\": 8 }");
        assert!(!w.is_incremental());
        w.end_backup(0x3_0000_0000, 1, &WalWait::once()).unwrap();
    }

    #[test]
    fn missing_wal_is_waited_for_then_fails_the_backup() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        let mut w = BackupWriter::new(dest);
        up_to_manifest(&mut w, dir.path(), "W");
        manifest(&mut w, b"{}");
        // 2/28 to 2/3000100: segments 2/00 to 2/03; 2/01 is stored
        // compressed, 2/02 compressed and encrypted, 2/03 is missing.
        dest.store_new_bytes("000000010000000200000000", b"w")
            .unwrap();
        dest.store_new_bytes("000000010000000200000001.zst", b"w")
            .unwrap();
        dest.store_new_bytes("000000010000000200000002.zst.age", b"w")
            .unwrap();
        let stop = 0x2_0300_0100;
        let wait = WalWait {
            timeout: Duration::from_millis(300),
            poll: Duration::from_millis(50),
            interrupted: &|| false,
        };
        let t = Instant::now();
        let e = w.end_backup(stop, 1, &wait).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            e.message,
            "WAL file \"000000010000000200000003\" needed by base backup \"W\" is not in the archive"
        );
        assert!(e.hint.unwrap().contains("archive_library"));
        assert!(!mem.objects().contains_key("backups/W/backup.json"));

        // An interrupt ends the wait at once.
        let stop_now = || true;
        let wait = WalWait {
            timeout: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            interrupted: &stop_now,
        };
        let t = Instant::now();
        let e = w.end_backup(stop, 1, &wait).unwrap_err();
        assert!(e.message.contains("interrupted"), "{}", e.message);
        assert!(t.elapsed() < Duration::from_secs(2));

        // The archiver stores it during the wait: the backup completes.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                dest.store_new_bytes("000000010000000200000003", b"w")
                    .unwrap();
            });
            let wait = WalWait {
                timeout: Duration::from_secs(10),
                poll: Duration::from_millis(50),
                interrupted: &|| false,
            };
            w.end_backup(stop, 1, &wait).unwrap();
        });
        assert!(w.is_complete());
    }

    #[test]
    fn an_object_removed_while_streaming_fails_the_backup() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        with_wal(dest);
        let mut w = BackupWriter::new(dest);
        up_to_manifest(&mut w, dir.path(), "G");
        // Retention took the oldest objects of what looked abandoned.
        dest.remove_object("backups/G/16385.tar.zst").unwrap();
        manifest(&mut w, b"{}");
        let e = w
            .end_backup(0x3_0000_0000, 1, &WalWait::once())
            .unwrap_err();
        assert!(
            e.message.contains("backups/G/16385.tar.zst"),
            "{}",
            e.message
        );
        assert!(!mem.objects().contains_key("backups/G/backup.json"));
    }

    #[test]
    fn a_taken_default_label_gets_a_number_an_explicit_one_is_refused() {
        let mem = MemoryDestination::default();
        let dest: &dyn Destination = &mem;
        let dir = data_dir_with_tablespace(16385);
        full_backup(&mut BackupWriter::new(dest), dir.path(), b"x");
        let mut numbered = start("L1", dir.path());
        numbered.numbered = true;
        let mut w = BackupWriter::new(dest);
        w.begin(numbered.clone()).unwrap();
        assert_eq!(w.label(), Some("L1-2"));
        let mut w3 = BackupWriter::new(dest);
        w3.begin(numbered).unwrap();
        assert_eq!(w3.label(), Some("L1-3"));
        let e = BackupWriter::new(dest)
            .begin(start("L1", dir.path()))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
    }

    #[test]
    fn lsn_and_wal_names() {
        assert_eq!(format_lsn(0x1_6B37_4D48), "1/6B374D48");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(
            wal_file_of(0x1_6B37_4D48, 2, SEG),
            "00000002000000010000006B"
        );
        assert_eq!(
            wal_file_of(0x1_6B37_4D48, 1, 1 << 30),
            "000000010000000100000001"
        );
    }
}
