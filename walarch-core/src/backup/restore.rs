//! `walarch backup restore`: a base backup from the archive into a new data
//! directory, verified end to end before PostgreSQL may use it.
//!
//! Order, and why: every check that needs nothing written comes first (the
//! backup is complete, its WAL is archived, the targets are empty), so that
//! a refusal changes nothing. Then the objects are downloaded `jobs` at a
//! time, each hashed while streaming and checked against `backup.json`,
//! decompressed and unpacked; the manifest is checked (its own checksum,
//! then every file it lists, as pg_verifybackup does); everything is
//! fsynced. Only then are the recovery settings appended to
//! `postgresql.auto.conf` and `recovery.signal` created: a data directory
//! without them is never started as a recovering server by mistake.
//!
//! On a failure after something was written, what restore created is
//! removed (directories it made; the contents of empty ones it was given),
//! as pg_basebackup does, unless `keep_on_failure` asks otherwise: a
//! half-restored data directory is of no use but to investigate.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::backup::extract::{self, decodings, Decoding, Hashing, TarTarget};
use crate::backup::list::{list_backups, read_info, stored_wal, wal_status, WalStatus};
use crate::backup::manifest;
use crate::backup::{
    object_name, validate_label, BackupInfo, BackupObject, ObjectKind, BACKUPS_DIR,
};
use crate::destination::sealed::{Identities, OpenError};
use crate::destination::Destination;
use crate::wal::time::parse_iso_time;

/// Which backup to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The newest complete backup (before the target LSN, when one is given).
    Latest,
    Label(String),
}

impl Which {
    pub fn parse(s: &str) -> Result<Which, String> {
        if s == "latest" {
            return Ok(Which::Latest);
        }
        validate_label(s)?;
        Ok(Which::Label(s.to_string()))
    }
}

/// Where recovery stops (at most one, as PostgreSQL allows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Time(String),
    Lsn(String),
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetAction {
    Pause,
    Promote,
    Shutdown,
}

impl TargetAction {
    pub fn parse(s: &str) -> Option<TargetAction> {
        match s {
            "pause" => Some(TargetAction::Pause),
            "promote" => Some(TargetAction::Promote),
            "shutdown" => Some(TargetAction::Shutdown),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub which: Which,
    /// Absolute.
    pub pgdata: PathBuf,
    /// Tablespace location in the backup → where to restore it (absolute).
    pub tablespace_mapping: Vec<(PathBuf, PathBuf)>,
    /// Objects downloaded at a time (and files checked at a time).
    pub jobs: usize,
    pub target: Option<Target>,
    /// With a target: what the server does there (PostgreSQL's default,
    /// pause, when `None`).
    pub target_action: Option<TargetAction>,
    /// `recovery_target_timeline`: `latest`, `current` or a number.
    pub target_timeline: Option<String>,
    /// The `restore_command` to write (see [`restore_command`]).
    pub restore_command: String,
    /// Leave what was written when restore fails.
    pub keep_on_failure: bool,
    /// What decrypts an encrypted backup (`--identity-file`).
    pub identities: Option<Arc<Identities>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The request itself cannot be carried out (a target not empty, a
    /// mapping naming no tablespace): nothing was changed.
    Usage,
    /// No such backup, or it cannot be restored (incomplete, WAL missing,
    /// compressed in a form not read): nothing was changed.
    NotRestorable,
    /// An object or a file failed its check.
    Integrity,
    Io,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Failure {
    fn new(kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    fn detail(mut self, d: impl Into<String>) -> Failure {
        self.detail = Some(d.into());
        self
    }
    fn hint(mut self, h: impl Into<String>) -> Failure {
        self.hint = Some(h.into());
        self
    }
    fn io(action: &str, path: &Path, e: &io::Error) -> Failure {
        Failure::new(
            FailureKind::Io,
            format!("could not {action} \"{}\": {e}", path.display()),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::support::error::write_report(
            f,
            &self.message,
            self.detail.as_deref(),
            self.hint.as_deref(),
            "  ",
        )
    }
}

/// What a successful restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub info: BackupInfo,
    pub objects: usize,
    pub stored_bytes: u64,
    pub files_checked: usize,
    /// The lines appended to `postgresql.auto.conf`.
    pub settings: Vec<String>,
}

/// Quotes `arg` for `sh` when it needs it.
fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// The `restore_command` that runs `walarch` (an absolute path) against
/// `archive` with `options`, each quoted for the shell and with `%` doubled
/// (PostgreSQL replaces `%f`, `%p`, `%r` and `%%` in the command).
pub fn restore_command(walarch: &Path, archive: &str, options: &[String]) -> String {
    let arg = |s: &str| shell_quote(s).replace('%', "%%");
    let mut cmd = format!(
        "{} restore {} %f %p",
        arg(&walarch.to_string_lossy()),
        arg(archive)
    );
    for o in options {
        cmd.push(' ');
        cmd.push_str(&arg(o));
    }
    cmd
}

/// A value quoted for postgresql.conf, as ALTER SYSTEM writes it (the
/// configuration file reads backslash escapes in quoted strings).
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', r"\\").replace('\'', "''"))
}

/// Parses `X/X` (hexadecimal halves) into a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let ok = |p: &str| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_hexdigit());
    if !ok(hi) || !ok(lo) {
        return None;
    }
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The first line of what restore adds to postgresql.auto.conf.
const SETTINGS_MARK: &str = "# Added by walarch backup restore";

/// Checks what can be checked of the recovery settings before anything is
/// done; returns the lines to append.
fn recovery_settings(req: &Request, info: &BackupInfo) -> Result<Vec<String>, Failure> {
    let usage = |m: String| Failure::new(FailureKind::Usage, m);
    let mut lines = vec![
        format!(
            "{SETTINGS_MARK}: recovery from backup \"{}\" through the archive.",
            info.label
        ),
        format!("restore_command = {}", conf_quote(&req.restore_command)),
    ];
    match &req.target {
        None => {
            if let Some(a) = req.target_action {
                return Err(usage(format!(
                    "--target-action {} needs a recovery target",
                    a.as_str()
                ))
                .hint("Give --target-time, --target-lsn or --target-name, or leave out --target-action to recover to the end of the archive."));
            }
        }
        Some(t) => {
            let (name, value) = match t {
                Target::Time(v) => ("recovery_target_time", v),
                Target::Name(v) => ("recovery_target_name", v),
                Target::Lsn(v) => ("recovery_target_lsn", v),
            };
            if value.trim().is_empty() {
                return Err(usage(format!("{name} must not be empty")));
            }
            if let Target::Name(n) = t {
                if n.len() >= 64 {
                    return Err(usage(format!(
                        "restore point name \"{n}\" is too long (at most 63 bytes, as pg_create_restore_point takes)"
                    )));
                }
            }
            if let Target::Lsn(v) = t {
                let Some(lsn) = parse_lsn(v) else {
                    return Err(usage(format!(
                        "invalid LSN \"{v}\" for --target-lsn (expected X/X)"
                    )));
                };
                let stop = parse_lsn(&info.stop_lsn).unwrap_or(0);
                if lsn < stop {
                    return Err(Failure::new(
                        FailureKind::NotRestorable,
                        format!(
                            "recovery target {v} is before the end of backup \"{}\" ({})",
                            info.label, info.stop_lsn
                        ),
                    )
                    .detail("Recovery from a backup cannot stop before the backup is consistent.")
                    .hint("Restore an older backup (see walarch backup list)."));
                }
            }
            // With its zone, a time can be compared with the backup's end
            // (a time without one is read by PostgreSQL in its timezone;
            // a restore point name cannot be checked at all).
            if let Target::Time(v) = t {
                let stop = parse_iso_time(&info.stop_time).ok().flatten();
                if let (Ok(Some(target)), Some(stop)) = (parse_iso_time(v), stop) {
                    if target < stop {
                        return Err(Failure::new(
                            FailureKind::NotRestorable,
                            format!(
                                "recovery target time {v} is before the end of backup \"{}\" ({})",
                                info.label, info.stop_time
                            ),
                        )
                        .detail(
                            "Recovery from a backup cannot stop before the backup is consistent.",
                        )
                        .hint("Restore an older backup (see walarch backup list)."));
                    }
                }
            }
            lines.push(format!("{name} = {}", conf_quote(value)));
            let action = req.target_action.unwrap_or(TargetAction::Pause);
            lines.push(format!("recovery_target_action = '{}'", action.as_str()));
        }
    }
    if let Some(tl) = &req.target_timeline {
        let ok = tl == "latest" || tl == "current" || tl.parse::<u32>().is_ok_and(|n| n > 0);
        if !ok {
            return Err(usage(format!(
                "invalid --target-timeline \"{tl}\": use latest, current or a timeline number"
            )));
        }
        lines.push(format!("recovery_target_timeline = {}", conf_quote(tl)));
    }
    Ok(lines)
}

/// Picks the backup and checks it can be restored.
fn choose(
    dest: &dyn Destination,
    req: &Request,
    log: &dyn Fn(&str),
) -> Result<BackupInfo, Failure> {
    let io = |e: crate::ArchiveError| {
        Failure::new(
            FailureKind::Io,
            format!(
                "could not read the archive {}: {}",
                dest.describe(),
                e.message
            ),
        )
    };
    let info = match &req.which {
        Which::Label(label) => match read_info(dest, label).map_err(io)? {
            Some(Ok(i)) => i,
            Some(Err(e)) => {
                return Err(Failure::new(
                    FailureKind::NotRestorable,
                    format!("backup \"{label}\" cannot be restored: {e}"),
                ))
            }
            None => {
                let prefix = format!("{BACKUPS_DIR}/{label}/");
                let any = !dest.objects_under(&prefix).map_err(io)?.is_empty();
                let f = if any {
                    Failure::new(
                        FailureKind::NotRestorable,
                        format!("backup \"{label}\" is incomplete"),
                    )
                    .detail("It has no backup.json: it was interrupted or is still being taken.")
                } else {
                    Failure::new(
                        FailureKind::NotRestorable,
                        format!("backup \"{label}\" does not exist"),
                    )
                };
                return Err(f.hint("walarch backup list shows the backups that can be restored."));
            }
        },
        Which::Latest => {
            let listing = list_backups(dest).map_err(io)?;
            // Recovery can reach a target only from a backup that ends
            // before it: `latest` is the newest such backup.
            let before_lsn = match &req.target {
                Some(Target::Lsn(l)) => parse_lsn(l),
                _ => None,
            };
            let before_time = match &req.target {
                Some(Target::Time(t)) => match parse_iso_time(t) {
                    Ok(Some(secs)) => Some(secs),
                    Ok(None) => {
                        return Err(Failure::new(
                            FailureKind::Usage,
                            format!("--target-time \"{t}\" has no time zone, so the latest backup before it cannot be chosen"),
                        )
                        .detail("PostgreSQL reads such a time in its own timezone setting, which walarch does not know.")
                        .hint("Give the zone (for example \"2026-12-05 14:45:00+00\"), or name the backup (see walarch backup list)."))
                    }
                    Err(e) => {
                        return Err(Failure::new(FailureKind::Usage, format!("invalid --target-time: {e}"))
                            .hint("With latest, give the time as YYYY-MM-DD HH:MM:SS+ZZ, or name the backup (see walarch backup list)."))
                    }
                },
                _ => None,
            };
            let pick = listing.complete.iter().rev().find(|b| {
                before_lsn.is_none_or(|t| parse_lsn(&b.info.stop_lsn).is_some_and(|s| s <= t))
                    && before_time.is_none_or(|t| {
                        parse_iso_time(&b.info.stop_time).is_ok_and(|s| s.is_some_and(|s| s <= t))
                    })
            });
            match pick {
                Some(b) => {
                    log(&format!("latest backup: \"{}\"", b.info.label));
                    b.info.clone()
                }
                None => {
                    return Err(Failure::new(
                        FailureKind::NotRestorable,
                        if listing.complete.is_empty() {
                            format!("there is no complete backup in {}", dest.describe())
                        } else {
                            "no complete backup ends before the recovery target".to_string()
                        },
                    )
                    .hint("walarch backup list shows the backups that can be restored."))
                }
            }
        }
    };
    let stored = stored_wal(dest).map_err(io)?;
    if let WalStatus::Missing(m) = wal_status(&info, &stored) {
        return Err(Failure::new(
            FailureKind::NotRestorable,
            format!(
                "the WAL that backup \"{}\" needs is not all in the archive",
                info.label
            ),
        )
        .detail(format!("Missing: {}.", m.join(", ")))
        .hint("Recovery could not make this backup consistent. Restore another backup (see walarch backup list)."));
    }
    Ok(info)
}

/// Checks the objects `backup.json` lists: one base tar, one tar per
/// tablespace, one manifest, each in a form this walarch decodes.
fn check_objects(info: &BackupInfo) -> Result<Vec<(BackupObject, Vec<Decoding>)>, Failure> {
    let bad = |m: String| {
        Failure::new(
            FailureKind::NotRestorable,
            format!("backup \"{}\" cannot be restored: {m}", info.label),
        )
    };
    let mut out = Vec::new();
    let (mut bases, mut manifests) = (0, 0);
    let mut oids = HashSet::new();
    for o in &info.objects {
        if o.name.is_empty() || o.name.contains('/') || o.name.starts_with('.') {
            return Err(bad(format!(
                "backup.json names an invalid object \"{}\"",
                o.name
            )));
        }
        crate::wal::checksum::from_hex(&o.sha256).ok_or_else(|| {
            bad(format!(
                "backup.json has no valid SHA-256 for \"{}\"",
                o.name
            ))
        })?;
        match o.kind {
            ObjectKind::Base => bases += 1,
            ObjectKind::Manifest => manifests += 1,
            ObjectKind::Tablespace => {
                let oid = o.tablespace_oid.ok_or_else(|| {
                    bad(format!(
                        "backup.json gives no tablespace OID for \"{}\"",
                        o.name
                    ))
                })?;
                if !info.tablespaces.iter().any(|t| t.oid == oid) || !oids.insert(oid) {
                    return Err(bad(format!(
                        "backup.json's object \"{}\" is for tablespace {oid}, which it does not list once",
                        o.name
                    )));
                }
            }
        }
        let steps = decodings(o).map_err(|m| {
            bad(m).hint("Take backups with --compress=server-zstd, server-gzip, or none (walarch compresses them).")
        })?;
        out.push((o.clone(), steps));
    }
    if bases != 1 || manifests != 1 {
        return Err(bad(format!(
            "backup.json lists {bases} base archive(s) and {manifests} manifest(s), not one of each"
        )));
    }
    if let Some(t) = info.tablespaces.iter().find(|t| !oids.contains(&t.oid)) {
        return Err(bad(format!(
            "backup.json lists no archive for tablespace {}",
            t.oid
        )));
    }
    Ok(out)
}

/// An encrypted backup needs an identity that opens it: tried on the header
/// of its smallest encrypted object before anything is written, so that a
/// missing or wrong key changes nothing.
fn check_identity(dest: &dyn Destination, req: &Request, info: &BackupInfo) -> Result<(), Failure> {
    let Some(o) = info
        .objects
        .iter()
        .filter(|o| o.is_sealed())
        .min_by_key(|o| o.stored_size)
    else {
        return Ok(());
    };
    let label = &info.label;
    let hint = "Give the private key (age identity file) of one of the public keys in walarch.encryption_recipients when the backup was taken: --identity-file FILE (repeatable) or WALARCH_IDENTITY_FILE.";
    let Some(ids) = &req.identities else {
        return Err(Failure::new(
            FailureKind::NotRestorable,
            format!("backup \"{label}\" is encrypted, and no identity was given"),
        )
        .hint(hint));
    };
    let (reader, at) = open_object(dest, label, &o.name)?;
    match ids.open(reader) {
        Ok(_) => Ok(()),
        Err(OpenError::NoMatchingKey) => Err(Failure::new(
            FailureKind::NotRestorable,
            format!("backup \"{label}\" cannot be decrypted with the identities given"),
        )
        .detail(format!(
            "None of the identities in {} is a recipient of \"{at}\".",
            ids.sources
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .hint(hint)),
        Err(e) => Err(Failure::new(
            FailureKind::Integrity,
            format!("object \"{at}\" of backup \"{label}\" is damaged: {e}"),
        )
        .hint("The backup cannot be restored as stored. Restore another backup (see walarch backup list).")),
    }
}

/// The stored bytes as read, decrypted first when the object is encrypted
/// (on the caller's thread: for a tar, the read-ahead one).
fn opened<'r>(
    h: &'r mut Hashing<'_>,
    ids: Option<&Identities>,
    o: &BackupObject,
) -> io::Result<Box<dyn Read + Send + 'r>> {
    if !o.is_sealed() {
        return Ok(Box::new(h));
    }
    let ids = ids.ok_or_else(|| io::Error::other("it is encrypted, and no identity was given"))?;
    let r = ids.open(h).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Box::new(Decrypting(r)))
}

/// Says which layer failed: age reports a chunk that fails authentication
/// as bare "decryption error" (`InvalidData`), which the tar reader would
/// pass on as its own.
struct Decrypting<R>(R);

impl<R: Read> Read for Decrypting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                io::Error::new(
                    e.kind(),
                    format!("the encrypted data is damaged or truncated ({e})"),
                )
            } else {
                e
            }
        })
    }
}

/// A directory restore writes into, and what it was before.
struct OwnDir {
    path: PathBuf,
    /// Made by restore (else it existed, empty).
    created: bool,
}

/// Taken (create-only) in each directory restore writes into, for as long
/// as it writes: a second restore into the same directory is refused
/// rather than mixed with this one, and cleanup removes only what this one
/// holds.
pub const RESTORE_LOCK: &str = ".walarch-restore.lock";

/// Fails unless `p` is absent or an empty directory (a symbolic link to an
/// empty directory is one, as pg_basebackup takes it); returns whether it
/// exists.
fn check_empty(p: &Path, what: &str) -> Result<bool, Failure> {
    let meta = match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Failure::io("access", p, &e)),
        Ok(m) if m.file_type().is_symlink() => {
            fs::metadata(p).map_err(|e| Failure::io("access", p, &e))?
        }
        Ok(m) => m,
    };
    if !meta.is_dir() {
        return Err(Failure::new(
            FailureKind::Usage,
            format!("{what} \"{}\" exists but is not a directory", p.display()),
        ));
    }
    let mut rd = fs::read_dir(p).map_err(|e| Failure::io("open directory", p, &e))?;
    if rd.next().is_some() {
        return Err(Failure::new(
            FailureKind::Usage,
            format!("{what} \"{}\" exists but is not empty", p.display()),
        )
        .hint("Restore into a new or empty directory; restore never overwrites."));
    }
    Ok(true)
}

/// What restore made, to be removed on a failure: nothing else is.
#[derive(Default)]
struct Made {
    /// Parent directories created on the way, outermost first: removed
    /// only if empty again.
    parents: Vec<PathBuf>,
    /// Target directories whose lock restore holds.
    dirs: Vec<OwnDir>,
}

/// Makes `p` ready to write into: creates what is missing (the directory
/// itself without `recursive`, so that one made meanwhile by someone else
/// is refused, not shared), takes the lock in it and checks it holds
/// nothing else. Records in `made` what is restore's.
fn take_dir(p: &Path, what: &str, existed: bool, made: &mut Made) -> Result<(), Failure> {
    let busy = || {
        Failure::new(
            FailureKind::Usage,
            format!(
                "{what} \"{}\" was created or written to by someone else meanwhile",
                p.display()
            ),
        )
        .hint("Another restore may be writing into it: restore into a new or empty directory.")
    };
    if !existed {
        let mut missing = vec![];
        let mut a = p.parent();
        while let Some(d) = a {
            if fs::symlink_metadata(d).is_ok() {
                break;
            }
            missing.push(d.to_path_buf());
            a = d.parent();
        }
        for d in missing.into_iter().rev() {
            match fs::DirBuilder::new().mode(0o700).create(&d) {
                Ok(()) => made.parents.push(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Failure::io("create directory", &d, &e)),
            }
        }
        match fs::DirBuilder::new().mode(0o700).create(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(busy()),
            Err(e) => return Err(Failure::io("create directory", p, &e)),
        }
    }
    let lock = p.join(RESTORE_LOCK);
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&lock)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(busy()),
        Err(e) => return Err(Failure::io("create file", &lock, &e)),
    }
    let own = OwnDir {
        path: p.to_path_buf(),
        created: !existed,
    };
    let others = fs::read_dir(p)
        .map_err(|e| Failure::io("open directory", p, &e))?
        .filter_map(Result::ok)
        .any(|e| e.file_name() != RESTORE_LOCK);
    if others {
        // Not ours: only the lock goes.
        let _ = fs::remove_file(&lock);
        return Err(busy());
    }
    made.dirs.push(own);
    Ok(())
}

/// Removes the locks restore holds.
fn release(made: &Made) -> Result<(), Failure> {
    for d in &made.dirs {
        let lock = d.path.join(RESTORE_LOCK);
        match fs::remove_file(&lock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::io("remove file", &lock, &e)),
        }
        crate::support::fsutil::fsync_dir(&d.path)
            .map_err(|e| Failure::io("fsync directory", &d.path, &e))?;
    }
    Ok(())
}

/// Restores a base backup from `dest` as `req` says. `log` receives
/// progress lines.
pub fn restore_backup(
    dest: &dyn Destination,
    req: &Request,
    log: &dyn Fn(&str),
) -> Result<Restored, Failure> {
    let usage = |m: String| Failure::new(FailureKind::Usage, m);
    if !req.pgdata.is_absolute() {
        return Err(usage(format!(
            "the data directory \"{}\" must be an absolute path",
            req.pgdata.display()
        )));
    }
    for (old, new) in &req.tablespace_mapping {
        if !old.is_absolute() || !new.is_absolute() {
            return Err(usage(format!(
                "tablespace mapping \"{}={}\" needs absolute directories",
                old.display(),
                new.display()
            )));
        }
    }
    let info = choose(dest, req, log)?;
    let objects = check_objects(&info)?;
    let settings = recovery_settings(req, &info)?;
    check_identity(dest, req, &info)?;

    // Where each tablespace goes.
    let mut links: HashMap<u32, PathBuf> = HashMap::new();
    let mut used = HashSet::new();
    for t in &info.tablespaces {
        let old = Path::new(&t.location);
        let new = req
            .tablespace_mapping
            .iter()
            .find(|(o, _)| o == old)
            .map(|(_, n)| n.clone());
        if new.is_some() {
            used.insert(old.to_path_buf());
        }
        let to = new.unwrap_or_else(|| old.to_path_buf());
        if !to.is_absolute() {
            return Err(usage(format!(
                "tablespace {} is at \"{}\" in the backup, which is not an absolute path",
                t.oid, t.location
            ))
            .hint("Map it with --tablespace-mapping OLD=NEW."));
        }
        links.insert(t.oid, to);
    }
    if let Some((old, _)) = req
        .tablespace_mapping
        .iter()
        .find(|(o, _)| !used.contains(o))
    {
        let known: Vec<&str> = info
            .tablespaces
            .iter()
            .map(|t| t.location.as_str())
            .collect();
        return Err(usage(format!(
            "--tablespace-mapping names \"{}\", which is no tablespace of backup \"{}\"",
            old.display(),
            info.label
        ))
        .detail(if known.is_empty() {
            "The backup has no tablespaces.".to_string()
        } else {
            format!("Its tablespaces are at: {}.", known.join(", "))
        }));
    }
    let mut dirs: Vec<(&Path, &str)> = vec![(&req.pgdata, "data directory")];
    for p in links.values() {
        dirs.push((p, "tablespace directory"));
    }
    for (i, (a, _)) in dirs.iter().enumerate() {
        for (b, _) in &dirs[i + 1..] {
            if a.starts_with(b) || b.starts_with(a) {
                return Err(usage(format!(
                    "directories \"{}\" and \"{}\" overlap",
                    a.display(),
                    b.display()
                ))
                .hint("Give each tablespace its own directory outside the data directory (--tablespace-mapping)."));
            }
        }
    }
    let mut targets = Vec::new();
    for (p, what) in &dirs {
        let exists = check_empty(p, what)?;
        targets.push((p.to_path_buf(), *what, exists));
    }

    log(&format!(
        "restoring backup \"{}\" (taken {} to {}, {} object(s), {} bytes stored{}) into \"{}\"",
        info.label,
        info.start_time,
        info.stop_time,
        objects.len(),
        info.sizes().0,
        if info.objects.iter().any(BackupObject::is_sealed) {
            ", encrypted"
        } else {
            ""
        },
        req.pgdata.display()
    ));
    let mut made = Made::default();
    let result = (|| {
        for (p, what, exists) in &targets {
            take_dir(p, what, *exists, &mut made)?;
            // As initdb and pg_basebackup leave them.
            fs::set_permissions(p, fs::Permissions::from_mode(0o700))
                .map_err(|e| Failure::io("change permissions of", p, &e))?;
        }
        finish_restore(dest, req, &info, &objects, &links, settings, &made, log)
    })();
    match result {
        Ok(r) => Ok(r),
        Err(mut f) => {
            let note = if req.keep_on_failure {
                let _ = release(&made);
                if made.dirs.is_empty() {
                    None
                } else {
                    Some(format!(
                        "What was restored is left in \"{}\" for investigation{}; do not start it.",
                        req.pgdata.display(),
                        // What is on disk, whatever step failed.
                        if req.pgdata.join("recovery.signal").exists() {
                            " (its recovery settings and recovery.signal were written, but may not be durable)"
                        } else if fs::read_to_string(req.pgdata.join("postgresql.auto.conf"))
                            .is_ok_and(|c| c.contains(SETTINGS_MARK))
                        {
                            " (its recovery settings were written, recovery.signal was not)"
                        } else {
                            ", without recovery settings"
                        }
                    ))
                }
            } else if made.dirs.is_empty() && made.parents.is_empty() {
                None
            } else {
                let left = remove_made(&made);
                Some(if left.is_empty() {
                    "What restore had written was removed.".to_string()
                } else {
                    format!(
                        "Restore could not remove what it wrote in {}.",
                        left.join(", ")
                    )
                })
            };
            if let Some(note) = note {
                f.detail = Some(
                    [f.detail.take().unwrap_or_default(), note]
                        .join(" ")
                        .trim()
                        .to_string(),
                );
            }
            Err(f)
        }
    }
}

/// Removes what restore made (the directories it created, the contents of
/// the empty ones it was given and locked, the parents it created if they
/// are empty again); returns what could not be removed.
fn remove_made(made: &Made) -> Vec<String> {
    let mut left = Vec::new();
    for t in &made.dirs {
        let r = if t.created {
            fs::remove_dir_all(&t.path)
        } else {
            empty_dir(&t.path)
        };
        if let Err(e) = r {
            left.push(format!("\"{}\" ({e})", t.path.display()));
        }
    }
    // Parents only if empty: another restore may use them.
    for p in made.parents.iter().rev() {
        let _ = fs::remove_dir(p);
    }
    left
}

fn empty_dir(p: &Path) -> io::Result<()> {
    for e in fs::read_dir(p)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            fs::remove_dir_all(e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn finish_restore(
    dest: &dyn Destination,
    req: &Request,
    info: &BackupInfo,
    objects: &[(BackupObject, Vec<Decoding>)],
    links: &HashMap<u32, PathBuf>,
    settings: Vec<String>,
    made: &Made,
    log: &dyn Fn(&str),
) -> Result<Restored, Failure> {
    let manifest_text = fetch_all(dest, req, info, objects, links, log)?;

    let manifest = manifest::parse(&manifest_text).map_err(|m| {
        Failure::new(
            FailureKind::Integrity,
            format!("backup \"{}\": {m}", info.label),
        )
    })?;
    if let Some(id) = manifest.system_identifier {
        if id.to_string() != info.system_identifier {
            return Err(Failure::new(
                FailureKind::Integrity,
                format!(
                    "backup \"{}\": the manifest is of system {id}, backup.json of system {}",
                    info.label, info.system_identifier
                ),
            ));
        }
    }
    let parse_lsn_or_0 = |s: &str| parse_lsn(s).unwrap_or(0);
    manifest
        .check_wal_ranges(
            (info.start_timeline, parse_lsn_or_0(&info.start_lsn)),
            (info.stop_timeline, parse_lsn_or_0(&info.stop_lsn)),
        )
        .map_err(|m| {
            Failure::new(
                FailureKind::Integrity,
                format!("backup \"{}\": {m}", info.label),
            )
        })?;
    // What restore writes itself, and what would make the server a standby
    // rather than recover from the archive, may not come from the tar:
    // pg_verifybackup does not look at them. (A standby.signal the
    // manifest lists, of a backup taken from a standby, is removed after
    // the check.)
    let listed = |n: &str| manifest.files.iter().any(|f| f.path == Path::new(n));
    for name in [crate::backup::MANIFEST, "recovery.signal", "standby.signal"] {
        let in_tar = fs::symlink_metadata(req.pgdata.join(name)).is_ok();
        if in_tar && !(name == "standby.signal" && listed(name)) {
            return Err(Failure::new(
                FailureKind::Integrity,
                format!(
                    "backup \"{}\" holds \"{name}\", which its manifest does not list",
                    info.label
                ),
            )
            .detail("A base backup as PostgreSQL sends it does not; restore writes its own."));
        }
    }
    let manifest_path = req.pgdata.join(crate::backup::MANIFEST);
    write_new(&manifest_path, &manifest_text, 0o600)?;

    // Tablespace files are checked through the links.
    make_tablespace_links(&req.pgdata, links)?;
    let mut problems = manifest::verify_files(&req.pgdata, &manifest, req.jobs);
    let mut locks = vec![PathBuf::from(RESTORE_LOCK)];
    locks.extend(links.keys().map(|oid| {
        Path::new("pg_tblspc")
            .join(oid.to_string())
            .join(RESTORE_LOCK)
    }));
    problems.extend(manifest::unlisted_files(&req.pgdata, &manifest, &locks));
    if !problems.is_empty() {
        let shown: Vec<&str> = problems.iter().take(10).map(String::as_str).collect();
        let more = if problems.len() > 10 {
            format!(" (and {} more)", problems.len() - 10)
        } else {
            String::new()
        };
        return Err(Failure::new(
            FailureKind::Integrity,
            format!(
                "backup \"{}\" does not match its manifest: {} problem(s)",
                info.label,
                problems.len()
            ),
        )
        .detail(format!("{}{more}.", shown.join("; "))));
    }
    log(&format!(
        "verified {} file(s) against the backup manifest",
        manifest.files.len()
    ));

    rewrite_tablespace_map(&req.pgdata, links)?;
    let standby = req.pgdata.join("standby.signal");
    if standby.exists() {
        fs::remove_file(&standby).map_err(|e| Failure::io("remove file", &standby, &e))?;
        log("removed standby.signal (a backup taken from a standby): the server recovers from the archive");
    }

    // initdb -g: the backup's global/ is group-readable; the data
    // directory must then be too (PostgreSQL reads its mode for its umask).
    if let Ok(m) = fs::metadata(req.pgdata.join("global")) {
        if m.permissions().mode() & 0o070 == 0o050 {
            let _ = fs::set_permissions(&req.pgdata, fs::Permissions::from_mode(0o750));
        }
    }
    let mut roots = vec![req.pgdata.clone()];
    roots.extend(links.values().cloned());
    sync_trees(&roots, req.jobs)?;
    // Nothing more is unpacked: the directories can be left to others.
    release(made)?;

    // Last: the settings that make the server recover. Those the backup
    // carries (a cluster that was itself restored) are commented out: a
    // second recovery target is a FATAL error, an old one a silent stop.
    let conf = req.pgdata.join("postgresql.auto.conf");
    let existing = match fs::read(&conf) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Failure::io("read file", &conf, &e)),
    };
    let (mut text, removed) = without_recovery_settings(&String::from_utf8_lossy(&existing));
    for r in &removed {
        log(&format!(
            "postgresql.auto.conf: commented out the earlier recovery setting \"{r}\""
        ));
    }
    for l in &settings {
        text.push_str(l);
        text.push('\n');
    }
    let tmp = req.pgdata.join("postgresql.auto.conf.walarch-tmp");
    write_new(&tmp, text.as_bytes(), 0o600)?;
    fs::rename(&tmp, &conf).map_err(|e| Failure::io("rename file", &tmp, &e))?;
    crate::support::fsutil::fsync_dir(&req.pgdata)
        .map_err(|e| Failure::io("fsync directory", &req.pgdata, &e))?;
    write_new(&req.pgdata.join("recovery.signal"), b"", 0o600)?;
    crate::support::fsutil::fsync_dir(&req.pgdata)
        .map_err(|e| Failure::io("fsync directory", &req.pgdata, &e))?;

    let (stored, _) = info.sizes();
    Ok(Restored {
        info: info.clone(),
        objects: objects.len(),
        stored_bytes: stored,
        files_checked: manifest.files.len(),
        settings,
    })
}

/// PostgreSQL's "Archive Recovery" and "Recovery Target" settings: what
/// restore writes, and what must not be left from an earlier recovery.
/// (`archive_cleanup_command` too: one left from a standby would remove
/// WAL from an archive during this recovery.)
const RECOVERY_SETTINGS: [&str; 11] = [
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
];

/// `text` (postgresql.auto.conf) with every recovery setting commented out,
/// ending with a newline when not empty; and the names commented out.
/// Parameter names are case-insensitive, as PostgreSQL reads them.
fn without_recovery_settings(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut removed = Vec::new();
    for line in text.lines() {
        let t = line.trim_start();
        let name: String = t
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect::<String>()
            .to_ascii_lowercase();
        let rest = t[name.len()..].trim_start();
        // `name = value`, or `name value`.
        let is_setting = !name.is_empty() && !rest.is_empty();
        if is_setting && RECOVERY_SETTINGS.contains(&name.as_str()) {
            out.push_str("# Removed by walarch backup restore (an earlier recovery's setting): ");
            removed.push(name);
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, removed)
}

/// A tar backup carries `tablespace_map` instead of `pg_tblspc` links
/// (PostgreSQL makes the links from it when it starts): it is rewritten
/// with the mapped directories, after verification since it is in the
/// manifest.
fn rewrite_tablespace_map(pgdata: &Path, links: &HashMap<u32, PathBuf>) -> Result<(), Failure> {
    let map = pgdata.join("tablespace_map");
    match fs::read(&map) {
        Ok(text) => {
            let mut out = String::new();
            for line in tablespace_map_lines(&text) {
                let line = String::from_utf8_lossy(&line);
                let oid = line
                    .split_once(' ')
                    .and_then(|(o, _)| o.parse::<u32>().ok())
                    .filter(|o| links.contains_key(o))
                    .ok_or_else(|| {
                        Failure::new(
                            FailureKind::Integrity,
                            format!("tablespace_map names a tablespace backup.json does not list: \"{line}\""),
                        )
                    })?;
                // Escaped as basebackup.c writes it.
                let mut path = String::new();
                for c in links[&oid].to_string_lossy().chars() {
                    if matches!(c, '\n' | '\r' | '\\') {
                        path.push('\\');
                    }
                    path.push(c);
                }
                out.push_str(&format!("{oid} {path}\n"));
            }
            let tmp = pgdata.join("tablespace_map.walarch-tmp");
            write_new(&tmp, out.as_bytes(), 0o600)?;
            fs::rename(&tmp, &map).map_err(|e| Failure::io("rename file", &tmp, &e))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Failure::io("read file", &map, &e)),
    }
    Ok(())
}

/// The lines of `tablespace_map`, unescaped, as PostgreSQL reads them
/// (`read_tablespace_map`): a backslash before a newline, a carriage return
/// or a backslash makes it part of the path (basebackup escapes them so);
/// an unescaped newline or carriage return ends the line; empty lines are
/// skipped.
fn tablespace_map_lines(text: &[u8]) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    let mut line = Vec::new();
    let mut escaped = false;
    for &c in text {
        if escaped {
            if !matches!(c, b'\n' | b'\r' | b'\\') {
                line.push(b'\\');
            }
            line.push(c);
            escaped = false;
        } else if c == b'\\' {
            escaped = true;
        } else if c == b'\n' || c == b'\r' {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
        } else {
            line.push(c);
        }
    }
    if escaped {
        line.push(b'\\');
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Makes the `pg_tblspc` links a tar backup lacks, as pg_basebackup -Fp
/// leaves them (those of base.tar were made while unpacking).
fn make_tablespace_links(pgdata: &Path, links: &HashMap<u32, PathBuf>) -> Result<(), Failure> {
    let dir = pgdata.join("pg_tblspc");
    for (oid, to) in links {
        let link = dir.join(oid.to_string());
        match fs::read_link(&link) {
            Ok(t) if &t == to => continue,
            Ok(_) => {
                return Err(Failure::new(
                    FailureKind::Integrity,
                    format!(
                        "\"{}\" does not point to \"{}\"",
                        link.display(),
                        to.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::io("read symbolic link", &link, &e)),
        }
        fs::create_dir_all(&dir).map_err(|e| Failure::io("create directory", &dir, &e))?;
        std::os::unix::fs::symlink(to, &link)
            .map_err(|e| Failure::io("create symbolic link", &link, &e))?;
    }
    Ok(())
}

/// Creates `path` with `data`, durably.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), Failure> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| Failure::io("create file", path, &e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Failure::io("write file", path, &e))
}

/// fsyncs every file and directory under `roots` (not following links), as
/// pg_basebackup does before it reports success; files `jobs` at a time,
/// so that the disk sees several requests at once.
fn sync_trees(roots: &[PathBuf], jobs: usize) -> Result<(), Failure> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut stack = roots.to_vec();
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(|e| Failure::io("open directory", &dir, &e))? {
            let e = e.map_err(|e| Failure::io("read directory", &dir, &e))?;
            let t = e
                .file_type()
                .map_err(|err| Failure::io("stat", &e.path(), &err))?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files.push(e.path());
            }
        }
        dirs.push(dir);
    }
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<Failure>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            s.spawn(|| {
                while let Some(p) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(err) = crate::support::fsutil::fsync_file(p) {
                        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        slot.get_or_insert(Failure::io("fsync file", p, &err));
                        return;
                    }
                }
            });
        }
    });
    if let Some(f) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(f);
    }
    // Children before parents: each entry is durable before its name is.
    for d in dirs.iter().rev() {
        crate::support::fsutil::fsync_dir(d).map_err(|e| Failure::io("fsync directory", d, &e))?;
    }
    Ok(())
}

/// Downloads, checks and unpacks every object, `jobs` at a time, largest
/// first; returns the manifest's text. The first failure stops the rest.
fn fetch_all(
    dest: &dyn Destination,
    req: &Request,
    info: &BackupInfo,
    objects: &[(BackupObject, Vec<Decoding>)],
    links: &HashMap<u32, PathBuf>,
    log: &dyn Fn(&str),
) -> Result<Vec<u8>, Failure> {
    let mut order: Vec<&(BackupObject, Vec<Decoding>)> = objects.iter().collect();
    order.sort_by_key(|(o, _)| std::cmp::Reverse(o.stored_size));
    let next = AtomicUsize::new(0);
    let cancel = AtomicBool::new(false);
    let first_error: Mutex<Option<Failure>> = Mutex::new(None);
    let manifest: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..req.jobs.clamp(1, order.len().max(1)) {
            s.spawn(|| loop {
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((o, steps)) = order.get(i) else {
                    break;
                };
                match fetch_one(dest, req, info, o, steps, links, &cancel) {
                    Ok(text) => {
                        if let Some(t) = text {
                            *manifest.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                        }
                        done.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("{} ({} bytes) verified", o.name, o.stored_size));
                    }
                    Err(f) => {
                        let mut slot = first_error.lock().unwrap_or_else(|e| e.into_inner());
                        // The first real failure, not another job's cancellation.
                        if slot.is_none() {
                            *slot = Some(f);
                        }
                        cancel.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if let Some(f) = first_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(f);
    }
    for d in done.into_inner().unwrap_or_else(|e| e.into_inner()) {
        log(&d);
    }
    manifest
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| Failure::new(FailureKind::Integrity, "the backup manifest was not read"))
}

/// One object: returns the manifest's text for the manifest, else `None`.
/// A backup object for reading, and where it is (for messages); a missing
/// one is an integrity failure.
fn open_object<'d>(
    dest: &'d dyn Destination,
    label: &str,
    object: &str,
) -> Result<(Box<dyn Read + Send + 'd>, String), Failure> {
    let name = object_name(label, object);
    let at = dest.location(&name);
    let reader = dest
        .open_object(&name)
        .map_err(|e| {
            Failure::new(
                FailureKind::Io,
                format!("could not read \"{at}\": {}", e.message),
            )
        })?
        .ok_or_else(|| {
            Failure::new(
                FailureKind::Integrity,
                format!("object \"{at}\" of backup \"{label}\" is missing"),
            )
        })?;
    Ok((reader, at))
}

fn fetch_one(
    dest: &dyn Destination,
    req: &Request,
    info: &BackupInfo,
    o: &BackupObject,
    steps: &[Decoding],
    links: &HashMap<u32, PathBuf>,
    cancel: &AtomicBool,
) -> Result<Option<Vec<u8>>, Failure> {
    let (reader, at) = open_object(dest, &info.label, &o.name)?;
    let mut hashing = Hashing::new(reader, cancel, o.stored_size);
    let ids = req.identities.as_deref();
    let outcome = (|| -> Result<Option<Vec<u8>>, String> {
        match o.kind {
            ObjectKind::Manifest => {
                let mut t = Vec::new();
                opened(&mut hashing, ids, o)
                    .and_then(|r| extract::decoder(r, steps))
                    .and_then(|r| extract::Capped::new(r, o.size).read_to_end(&mut t))
                    .map_err(|e| e.to_string())?;
                Ok(Some(t))
            }
            ObjectKind::Base | ObjectKind::Tablespace => {
                let (dir, tl) = match o.kind {
                    ObjectKind::Base => (req.pgdata.as_path(), Some(links)),
                    _ => (
                        links
                            .get(&o.tablespace_oid.unwrap_or_default())
                            .map(PathBuf::as_path)
                            .ok_or("no directory for its tablespace")?,
                        None,
                    ),
                };
                let target = TarTarget {
                    dir,
                    tablespace_links: tl,
                };
                extract::read_ahead(
                    || {
                        Ok(extract::Capped::new(
                            extract::decoder(opened(&mut hashing, ids, o)?, steps)?,
                            o.size,
                        ))
                    },
                    |r| {
                        extract::unpack(&mut *r, &target)?;
                        // The tar's padding, and the end of the compressed frames.
                        io::copy(r, &mut io::sink()).map_err(|e| e.to_string())?;
                        Ok(None)
                    },
                )
            }
        }
    })();
    if cancel.load(Ordering::Relaxed) && outcome.is_err() {
        return Err(Failure::new(FailureKind::Io, "cancelled"));
    }
    // Whatever happened, judge the stored bytes first: a damaged object is
    // the cause, whatever the decoder or tar then said.
    let drained = hashing.drain();
    let (bytes, sha) = hashing.finish();
    let damaged = |what: String| {
        let f = Failure::new(
            FailureKind::Integrity,
            format!("object \"{at}\" of backup \"{}\" is damaged: {what}", info.label),
        )
        .hint("The backup cannot be restored as stored. Restore another backup (see walarch backup list).");
        match &outcome {
            Err(e) => f.detail(format!("Reading it failed: {e}.")),
            Ok(_) => f,
        }
    };
    if bytes > o.stored_size {
        return Err(damaged(format!(
            "more than the {} bytes backup.json records",
            o.stored_size
        )));
    }
    if drained.is_ok() {
        if sha != o.sha256.to_ascii_lowercase() {
            return Err(damaged(format!(
                "SHA-256 {sha}, but backup.json records {}",
                o.sha256
            )));
        }
        if bytes != o.stored_size {
            return Err(damaged(format!(
                "{bytes} bytes, but backup.json records {}",
                o.stored_size
            )));
        }
    }
    match (outcome, drained) {
        (Err(e), _) => Err(Failure::new(
            FailureKind::Integrity,
            format!(
                "could not restore object \"{at}\" of backup \"{}\": {e}",
                info.label
            ),
        )),
        (Ok(_), Err(e)) => Err(Failure::new(
            FailureKind::Io,
            format!("could not read \"{at}\": {e}"),
        )),
        (Ok(t), Ok(())) => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::fixture::{store_backup, Options, TS_FILE};
    use crate::destination::local_directory::LocalDirectory;

    struct Env {
        tmp: tempfile::TempDir,
        d: LocalDirectory,
    }

    impl Env {
        fn new() -> Env {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::create_dir(tmp.path().join("archive")).unwrap();
            let d = LocalDirectory::new(tmp.path().join("archive"), 0o600);
            Env { tmp, d }
        }
        fn archive(&self) -> PathBuf {
            self.tmp.path().join("archive")
        }
        fn p(&self, s: &str) -> PathBuf {
            self.tmp.path().join(s)
        }
        fn store(&self, label: &str, opts: Options) -> BackupInfo {
            store_backup(&self.d, &self.archive(), label, &self.p("ts-old"), opts)
        }
        fn request(&self, which: &str) -> Request {
            Request {
                which: Which::parse(which).unwrap(),
                pgdata: self.p("data"),
                tablespace_mapping: vec![(self.p("ts-old"), self.p("ts-new"))],
                jobs: 3,
                target: None,
                target_action: None,
                target_timeline: None,
                restore_command: restore_command(
                    Path::new("/usr/bin/walarch"),
                    &self.archive().to_string_lossy(),
                    &[],
                ),
                keep_on_failure: false,
                identities: None,
            }
        }
        fn restore(&self, req: &Request) -> Result<Restored, Failure> {
            restore_backup(&self.d, req, &|_| {})
        }
        fn corrupt(&self, label: &str, object: &str) {
            let p = self.archive().join(object_name(label, object));
            let mut b = std::fs::read(&p).unwrap();
            let mid = b.len() / 2;
            b[mid] ^= 0x55;
            std::fs::write(&p, b).unwrap();
        }
    }

    fn conf(pgdata: &Path) -> String {
        std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap()
    }

    #[test]
    fn restores_verified_backup_with_mapped_tablespace_then_writes_recovery_settings() {
        let e = Env::new();
        e.store("b1", Options::default());
        let mut req = e.request("b1");
        req.target = Some(Target::Time("2026-12-05 15:00:00+00".into()));
        let r = e.restore(&req).unwrap();
        assert_eq!((r.objects, r.files_checked), (3, 5));
        let data = e.p("data");
        assert_eq!(
            std::fs::read(data.join("base/1/1259")).unwrap(),
            b"pg_class"
        );
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc/16385")).unwrap(),
            e.p("ts-new")
        );
        assert_eq!(
            std::fs::read(e.p("ts-new").join(TS_FILE)).unwrap(),
            b"tablespace table"
        );
        assert!(!e.p("ts-old").exists());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("global/pg_control")), 0o600);
        assert!(data.join("backup_manifest").is_file());
        assert!(data.join("recovery.signal").is_file());
        let c = conf(&data);
        assert!(
            c.starts_with(
                "# Do not edit this file manually!\nwork_mem = '8MB'\n# Added by walarch"
            ),
            "{c}"
        );
        let archive = e.archive();
        assert!(
            c.contains(&format!(
                "restore_command = '/usr/bin/walarch restore {} %f %p'\n",
                archive.display()
            )),
            "{c}"
        );
        assert!(c.contains("recovery_target_time = '2026-12-05 15:00:00+00'\nrecovery_target_action = 'pause'\n"), "{c}");
    }

    #[test]
    fn recovery_settings_of_an_earlier_recovery_are_commented_out() {
        let e = Env::new();
        let old = "# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'cp /old/%f %p'\n  Recovery_Target_Time='2026-01-01 00:00:00+00'\nrecovery_target_timeline 2\nrecovery_target_action = 'promote'\narchive_cleanup_command = 'pg_archivecleanup /old %r'\nprimary_conninfo = 'host=x'\n# recovery_target_lsn = '0/1'\nrecovery_target_inclusive = off";
        e.store(
            "b1",
            Options {
                auto_conf: Some(old.as_bytes()),
                ..Default::default()
            },
        );
        let mut req = e.request("b1");
        req.target = Some(Target::Lsn("0/3000000".into()));
        e.restore(&req).unwrap();
        let c = conf(&e.p("data"));
        let live: Vec<&str> = c
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert_eq!(live.len(), 5, "{c}");
        assert_eq!(live[0], "work_mem = '8MB'");
        assert_eq!(live[1], "primary_conninfo = 'host=x'");
        assert!(
            live[2].starts_with("restore_command = '/usr/bin/walarch"),
            "{c}"
        );
        assert_eq!(
            live[3..],
            [
                "recovery_target_lsn = '0/3000000'",
                "recovery_target_action = 'pause'"
            ]
        );
        assert!(c.contains("# Removed by walarch backup restore (an earlier recovery's setting): restore_command = 'cp /old/%f %p'\n"), "{c}");
        assert!(c.contains("setting):   Recovery_Target_Time="), "{c}");
        assert!(
            c.contains("setting): recovery_target_inclusive = off\n"),
            "{c}"
        );
        assert!(!e.p("data/postgresql.auto.conf.walarch-tmp").exists());
    }

    #[test]
    fn a_tar_backup_s_tablespace_map_is_rewritten_to_the_mapping() {
        let e = Env::new();
        e.store(
            "b1",
            Options {
                tablespace_map: true,
                ..Default::default()
            },
        );
        e.restore(&e.request("b1")).unwrap();
        let data = e.p("data");
        assert_eq!(
            std::fs::read_to_string(data.join("tablespace_map")).unwrap(),
            format!("16385 {}\n", e.p("ts-new").display())
        );
        assert_eq!(
            std::fs::read_link(data.join("pg_tblspc/16385")).unwrap(),
            e.p("ts-new")
        );
        assert!(e.p("ts-new").join(TS_FILE).is_file());
    }

    #[test]
    fn latest_with_a_target_time_is_the_newest_backup_ending_before_it() {
        let e = Env::new();
        for (label, t) in [
            ("old", "2026-12-01T00:00:00Z"),
            ("new", "2026-12-02T00:00:00Z"),
        ] {
            e.store(
                label,
                Options {
                    start_time: Some(t),
                    ..Default::default()
                },
            );
        }
        let with_time = |t: &str, dir: &str| Request {
            pgdata: e.p(dir),
            tablespace_mapping: vec![(e.p("ts-old"), e.p(&format!("ts-{dir}")))],
            target: Some(Target::Time(t.into())),
            ..e.request("latest")
        };
        let r = e
            .restore(&with_time("2026-12-01 12:00:00+00", "a"))
            .unwrap();
        assert_eq!(r.info.label, "old");
        let r = e
            .restore(&with_time("2026-12-03 00:00:00+01", "b"))
            .unwrap();
        assert_eq!(r.info.label, "new");
        let err = e
            .restore(&with_time("2026-11-30 00:00:00Z", "c"))
            .unwrap_err();
        assert!(
            err.message.contains("no complete backup ends before"),
            "{err}"
        );
        // Without a zone the choice cannot be made: refused, nothing made.
        let err = e
            .restore(&with_time("2026-12-03 00:00:00", "d"))
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::Usage);
        assert!(err.message.contains("no time zone"), "{err}");
        assert!(!e.p("d").exists());
        // A named backup refuses a time with a zone before its end...
        let err = e
            .restore(&Request {
                pgdata: e.p("f"),
                target: Some(Target::Time("2026-12-01 23:59:59+00".into())),
                ..e.request("new")
            })
            .unwrap_err();
        assert_eq!(err.kind, FailureKind::NotRestorable);
        assert!(
            err.message.contains("before the end of backup \"new\""),
            "{err}"
        );
        assert!(!e.p("f").exists());
        // ...and takes a time without one as given (PostgreSQL reads it).
        let e2 = Env::new();
        e2.store("new", Options::default());
        let r = e2
            .restore(&Request {
                target: Some(Target::Time("2026-12-03 00:00:00".into())),
                ..e2.request("new")
            })
            .unwrap();
        assert_eq!(r.info.label, "new");
    }

    #[test]
    fn latest_is_the_newest_complete_backup_and_server_gzip_is_read() {
        let e = Env::new();
        e.store(
            "old",
            Options {
                start_time: Some("2026-12-01T00:00:00Z"),
                ..Default::default()
            },
        );
        e.store(
            "new",
            Options {
                start_time: Some("2026-12-02T00:00:00Z"),
                server_gzip: true,
                ..Default::default()
            },
        );
        // Incomplete, and newer: never chosen.
        let mut w = e.d.create_object("backups/newest/base.tar.zst").unwrap();
        w.write(b"x").unwrap();
        w.finish().unwrap();
        let mut req = e.request("latest");
        req.target = Some(Target::Name("before".into()));
        req.target_action = Some(TargetAction::Promote);
        req.target_timeline = Some("current".into());
        let r = e.restore(&req).unwrap();
        assert_eq!(r.info.label, "new");
        let c = conf(&e.p("data"));
        assert!(c.contains("recovery_target_name = 'before'\nrecovery_target_action = 'promote'\nrecovery_target_timeline = 'current'\n"), "{c}");

        let e2 = Env::new();
        let err = e2.restore(&e2.request("latest")).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotRestorable);
        let err = e
            .restore(&Request {
                pgdata: e.p("data2"),
                ..e.request("newest")
            })
            .unwrap_err();
        assert!(err.message.contains("incomplete"), "{err}");
        let err = e
            .restore(&Request {
                pgdata: e.p("data2"),
                ..e.request("nope")
            })
            .unwrap_err();
        assert!(err.message.contains("does not exist"), "{err}");
        assert!(!e.p("data2").exists());
    }

    /// Nothing of a failed restore may be started: no recovery.signal, no
    /// settings; by default nothing is left at all.
    fn assert_refused_cleanly(e: &Env, err: &Failure, kind: FailureKind, text: &str) {
        assert_eq!(err.kind, kind, "{err}");
        assert!(err.to_string().contains(text), "{err}");
        assert!(!e.p("data").exists(), "{err}");
        assert!(!e.p("ts-new").exists(), "{err}");
    }

    fn sealed(r: &crate::destination::sealed::Recipients) -> Options<'_> {
        Options {
            sealed_to: Some(r),
            ..Default::default()
        }
    }

    #[test]
    fn an_encrypted_backup_is_restored_with_its_identity() {
        let e = Env::new();
        let (old_r, old_i) = crate::destination::sealed::tests::key_pair();
        let old_r = crate::destination::sealed::Recipients::parse(&old_r, "r").unwrap();
        let info = e.store("b1", sealed(&old_r));
        assert!(info.objects.iter().all(BackupObject::is_sealed));
        // An identity file with several keys, the backup's among them (key
        // rotation).
        let (_, other_i) = crate::destination::sealed::tests::key_pair();
        let both = format!("{other_i}{old_i}");
        let mut req = e.request("b1");
        req.identities = Some(Arc::new(Identities::parse(&both, "keys.txt").unwrap()));
        let lines = std::cell::RefCell::new(vec![]);
        let r = restore_backup(&e.d, &req, &|l| lines.borrow_mut().push(l.to_string())).unwrap();
        assert_eq!((r.objects, r.files_checked), (3, 5));
        assert!(
            lines.borrow()[0].contains("encrypted"),
            "{:?}",
            lines.borrow()
        );
        let data = e.p("data");
        for (file, content) in [
            ("PG_VERSION", &b"15\n"[..]),
            ("global/pg_control", b"control file"),
            ("base/1/1259", b"pg_class"),
        ] {
            assert_eq!(std::fs::read(data.join(file)).unwrap(), content, "{file}");
        }
        assert_eq!(
            std::fs::read(e.p("ts-new").join(TS_FILE)).unwrap(),
            b"tablespace table"
        );
        assert!(data.join("recovery.signal").exists());
    }

    #[test]
    fn an_encrypted_backup_without_its_identity_is_refused_and_nothing_written() {
        let e = Env::new();
        let (r, _) = crate::destination::sealed::tests::keys();
        e.store("b1", sealed(&r));
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotRestorable, "{err}");
        assert!(
            err.message
                .contains("is encrypted, and no identity was given"),
            "{err}"
        );
        assert!(err.to_string().contains("--identity-file"), "{err}");
        assert!(!e.p("data").exists() && !e.p("ts-new").exists());

        let (_, wrong) = crate::destination::sealed::tests::keys();
        let mut req = e.request("b1");
        req.identities = Some(Arc::new(wrong));
        let err = e.restore(&req).unwrap_err();
        assert_eq!(err.kind, FailureKind::NotRestorable, "{err}");
        assert!(
            err.message
                .contains("cannot be decrypted with the identities given"),
            "{err}"
        );
        // The file's name, never its content.
        assert!(err.to_string().contains("\"i\""), "{err}");
        assert!(!err.to_string().contains("AGE-SECRET-KEY"), "{err}");
        assert!(!e.p("data").exists() && !e.p("ts-new").exists());
    }

    #[test]
    fn a_damaged_encrypted_object_is_refused() {
        let e = Env::new();
        let (r, i) = crate::destination::sealed::tests::keys();
        let i = Arc::new(i);
        e.store("b1", sealed(&r));
        e.corrupt("b1", "base.tar.zst.age");
        let mut req = e.request("b1");
        req.identities = Some(Arc::clone(&i));
        let err = e.restore(&req).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "is damaged: SHA-256");

        // Damaged, with backup.json made to match: age's authentication
        // refuses it while it is read, and what was written is removed.
        let e = Env::new();
        let info = e.store("b2", sealed(&r));
        e.corrupt("b2", "base.tar.zst.age");
        let stored =
            std::fs::read(e.archive().join(object_name("b2", "base.tar.zst.age"))).unwrap();
        let mut forged = info.clone();
        for o in &mut forged.objects {
            if o.kind == ObjectKind::Base {
                o.sha256 = crate::wal::checksum::to_hex(&crate::wal::checksum::sha256(&stored));
            }
        }
        std::fs::write(
            e.archive()
                .join(object_name("b2", crate::backup::BACKUP_JSON)),
            forged.to_json(),
        )
        .unwrap();
        let mut req = e.request("b2");
        req.identities = Some(i);
        let err = e.restore(&req).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "could not restore object");
        assert!(err.to_string().contains("damaged or truncated"), "{err}");
    }

    #[test]
    fn corrupt_object_is_refused_before_any_recovery_setting() {
        let e = Env::new();
        e.store("b1", Options::default());
        e.corrupt("b1", "16385.tar.zst");
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "is damaged: SHA-256");
        assert!(
            err.to_string()
                .contains("What restore had written was removed"),
            "{err}"
        );

        // Kept for investigation when asked, but never with recovery settings.
        let mut req = e.request("b1");
        req.keep_on_failure = true;
        let err = e.restore(&req).unwrap_err();
        assert!(err.to_string().contains("do not start it"), "{err}");
        assert!(e.p("data").exists());
        assert!(!e.p("data/recovery.signal").exists());
        // (base.tar may not have been unpacked: the failure stops the rest.)
        let auto = std::fs::read_to_string(e.p("data/postgresql.auto.conf")).unwrap_or_default();
        assert!(!auto.contains("restore_command"), "{auto}");
    }

    #[test]
    fn truncated_object_is_refused() {
        let e = Env::new();
        e.store("b1", Options::default());
        let p = e.archive().join(object_name("b1", "base.tar.zst"));
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 10]).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "is damaged");
    }

    #[test]
    fn an_object_larger_than_recorded_is_refused_while_reading() {
        let e = Env::new();
        let mut info = e.store("b1", Options::default());
        // Decoded size: the tar decompresses to more than recorded.
        info.objects[0].size = 1024;
        let json = e
            .archive()
            .join(object_name("b1", crate::backup::BACKUP_JSON));
        std::fs::write(&json, info.to_json()).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(
            &e,
            &err,
            FailureKind::Integrity,
            "decompresses to more than the 1024 bytes",
        );
        // Stored size: more bytes stored than recorded.
        info.objects[0].size *= 1000;
        info.objects[0].stored_size = 100;
        std::fs::write(&json, info.to_json()).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(
            &e,
            &err,
            FailureKind::Integrity,
            "more than the 100 bytes backup.json records",
        );
    }

    #[test]
    fn file_not_matching_the_manifest_is_refused() {
        let e = Env::new();
        e.store(
            "b1",
            Options {
                manifest_1259: Some(b"pg_clasS"),
                ..Default::default()
            },
        );
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(
            &e,
            &err,
            FailureKind::Integrity,
            "checksum mismatch for file \"base/1/1259\"",
        );
    }

    #[test]
    fn files_the_manifest_does_not_list_are_refused() {
        for (name, text) in [
            ("standby.signal", "holds \"standby.signal\""),
            ("recovery.signal", "holds \"recovery.signal\""),
            ("backup_manifest", "holds \"backup_manifest\""),
            (
                "base/1/9999",
                "\"base/1/9999\" is present on disk but not in the manifest",
            ),
        ] {
            let e = Env::new();
            e.store(
                "b1",
                Options {
                    extra_base: vec![(name, tar::EntryType::Regular, b"", None)],
                    ..Default::default()
                },
            );
            let err = e.restore(&e.request("b1")).unwrap_err();
            assert_refused_cleanly(&e, &err, FailureKind::Integrity, text);
        }
        // pg_wal's contents are not in the manifest, and need not be.
        let e = Env::new();
        e.store(
            "b1",
            Options {
                extra_base: vec![(
                    "pg_wal/000000010000000000000002",
                    tar::EntryType::Regular,
                    b"wal",
                    None,
                )],
                ..Default::default()
            },
        );
        e.restore(&e.request("b1")).unwrap();
    }

    #[test]
    fn wal_ranges_must_match_backup_json() {
        let e = Env::new();
        let mut info = e.store("b1", Options::default());
        info.stop_lsn = "0/2000200".into();
        let json = e
            .archive()
            .join(object_name("b1", crate::backup::BACKUP_JSON));
        std::fs::write(&json, info.to_json()).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "WAL ranges");
    }

    #[test]
    fn path_traversal_in_a_tar_is_refused() {
        let e = Env::new();
        e.store(
            "b1",
            Options {
                extra_base: vec![("../escaped", tar::EntryType::Regular, b"x", None)],
                ..Default::default()
            },
        );
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_refused_cleanly(&e, &err, FailureKind::Integrity, "outside");
        assert!(!e.p("escaped").exists());
    }

    #[test]
    fn non_empty_targets_are_refused_and_left_untouched() {
        let e = Env::new();
        e.store("b1", Options::default());
        std::fs::create_dir(e.p("data")).unwrap();
        std::fs::write(e.p("data/PG_VERSION"), b"17\n").unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_eq!(err.kind, FailureKind::Usage);
        assert!(err.message.contains("exists but is not empty"), "{err}");
        let left: Vec<_> = std::fs::read_dir(e.p("data")).unwrap().collect();
        assert_eq!(left.len(), 1);
        assert!(!e.p("ts-new").exists());

        // An empty data directory is used (and emptied again on failure);
        // a non-empty tablespace target is refused.
        std::fs::remove_file(e.p("data/PG_VERSION")).unwrap();
        std::fs::create_dir(e.p("ts-new")).unwrap();
        std::fs::write(e.p("ts-new/x"), b"").unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert!(err.message.contains("tablespace directory"), "{err}");
        std::fs::remove_file(e.p("ts-new/x")).unwrap();
        e.restore(&e.request("b1")).unwrap();
        assert!(e.p("data/recovery.signal").exists());
    }

    #[test]
    fn requests_that_cannot_be_carried_out_change_nothing() {
        let e = Env::new();
        e.store(
            "b1",
            Options {
                wal: Some("000000010000000000000009"),
                ..Default::default()
            },
        );
        let mut req = e.request("b1");
        req.tablespace_mapping = vec![(e.p("elsewhere"), e.p("ts-new"))];
        let err = e.restore(&req).unwrap_err();
        assert!(err.message.contains("no tablespace of backup"), "{err}");
        let mut req = e.request("b1");
        req.target_action = Some(TargetAction::Shutdown);
        assert!(e
            .restore(&req)
            .unwrap_err()
            .message
            .contains("needs a recovery target"));
        let mut req = e.request("b1");
        req.target = Some(Target::Lsn("0/1000000".into()));
        assert_eq!(
            e.restore(&req).unwrap_err().kind,
            FailureKind::NotRestorable
        );
        let mut req = e.request("b1");
        req.tablespace_mapping = vec![(e.p("ts-old"), e.p("data/ts"))];
        assert!(e.restore(&req).unwrap_err().message.contains("overlap"));
        std::fs::remove_file(e.archive().join("000000010000000000000009")).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert!(
            err.to_string()
                .contains("Missing: 000000010000000000000009"),
            "{err}"
        );
        assert!(!e.p("data").exists());
    }

    #[test]
    fn a_directory_made_or_locked_by_someone_else_is_refused_and_never_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |s: &str| tmp.path().join(s);
        // Absent when checked, created by another restore before ours.
        std::fs::create_dir(p("data")).unwrap();
        std::fs::write(p("data/PG_VERSION"), b"15\n").unwrap();
        let mut made = Made::default();
        let err = take_dir(&p("data"), "data directory", false, &mut made).unwrap_err();
        assert!(err.message.contains("meanwhile"), "{err}");
        assert!(made.dirs.is_empty());
        assert!(remove_made(&made).is_empty());
        assert!(p("data/PG_VERSION").exists());
        // Empty when checked, locked by another restore: its lock stays.
        std::fs::create_dir(p("empty")).unwrap();
        std::fs::write(p("empty").join(RESTORE_LOCK), b"").unwrap();
        let err = take_dir(&p("empty"), "data directory", true, &mut made).unwrap_err();
        assert!(err.message.contains("meanwhile"), "{err}");
        assert!(made.dirs.is_empty());
        assert!(p("empty").join(RESTORE_LOCK).exists());
        // Empty and not locked: taken.
        std::fs::create_dir(p("e2")).unwrap();
        take_dir(&p("e2"), "data directory", true, &mut made).unwrap();
        assert_eq!(made.dirs.len(), 1);
        // A second restore cannot take it now.
        let mut other = Made::default();
        assert!(take_dir(&p("e2"), "data directory", true, &mut other).is_err());
        assert!(p("e2").join(RESTORE_LOCK).exists());

        // Parents made on the way are recorded, and removed only if empty.
        let mut made = Made::default();
        take_dir(&p("a/b/data"), "data directory", false, &mut made).unwrap();
        assert_eq!(made.parents, [p("a"), p("a/b")]);
        assert!(made.dirs[0].created);
        std::fs::write(p("a/b/data/x"), b"").unwrap();
        std::fs::create_dir(p("a/someone-else")).unwrap();
        assert!(remove_made(&made).is_empty());
        assert!(!p("a/b").exists());
        assert!(p("a/someone-else").exists());
    }

    #[test]
    fn a_symlinked_empty_data_directory_is_used_and_kept_on_failure() {
        let e = Env::new();
        e.store("b1", Options::default());
        std::fs::create_dir(e.p("real")).unwrap();
        std::os::unix::fs::symlink(e.p("real"), e.p("data")).unwrap();
        e.corrupt("b1", "base.tar.zst");
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert_eq!(err.kind, FailureKind::Integrity);
        assert!(std::fs::symlink_metadata(e.p("data"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_dir(e.p("real")).unwrap().count(), 0);
        assert!(!e.p("ts-new").exists());

        let e = Env::new();
        e.store("b1", Options::default());
        std::fs::create_dir(e.p("real")).unwrap();
        std::os::unix::fs::symlink(e.p("real"), e.p("data")).unwrap();
        e.restore(&e.request("b1")).unwrap();
        assert!(e.p("real/recovery.signal").exists());
        assert!(!e.p("real").join(RESTORE_LOCK).exists());
        assert!(!e.p("ts-new").join(RESTORE_LOCK).exists());
        // A link to something else is still refused.
        let e = Env::new();
        e.store("b1", Options::default());
        std::fs::write(e.p("file"), b"").unwrap();
        std::os::unix::fs::symlink(e.p("file"), e.p("data")).unwrap();
        let err = e.restore(&e.request("b1")).unwrap_err();
        assert!(err.message.contains("not a directory"), "{err}");
    }

    #[test]
    fn tablespace_map_paths_with_escaped_newlines_are_one_line() {
        assert_eq!(
            tablespace_map_lines(b"16385 /a\\\nb\\\\c\r\n\n16386 /d\\e"),
            [b"16385 /a\nb\\c".to_vec(), b"16386 /d\\e".to_vec()]
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("tablespace_map"),
            b"16385 /srv/old\\\nline\n",
        )
        .unwrap();
        let links: HashMap<u32, PathBuf> = [(16385, PathBuf::from("/srv/new\npath"))].into();
        rewrite_tablespace_map(tmp.path(), &links).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("tablespace_map")).unwrap(),
            b"16385 /srv/new\\\npath\n"
        );
    }

    #[test]
    fn restore_command_quoting() {
        let c = restore_command(
            Path::new("/opt/wal arch/walarch"),
            "/srv/it's 100%",
            &["--endpoint".into(), "http://127.0.0.1:9000".into()],
        );
        assert_eq!(
            c,
            r"'/opt/wal arch/walarch' restore '/srv/it'\''s 100%%' %f %p --endpoint http://127.0.0.1:9000"
        );
        assert_eq!(
            conf_quote(&c),
            r"'''/opt/wal arch/walarch'' restore ''/srv/it''\\''''s 100%%'' %f %p --endpoint http://127.0.0.1:9000'"
        );
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("16/"), None);
    }
}
