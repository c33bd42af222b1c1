//! Reports from the archive path as PostgreSQL WARNINGs and LOG lines.
//!
//! Inside `archive_file_cb` an ERROR would kill the archiver on PG15/16, so
//! every failure is reported at WARNING level and the callback returns false.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use walarch_core::archiving::archiver::Dropped;
use walarch_core::archiving::breaker::format_timestamp;
use walarch_core::destination::{Destination, Leftovers};
use walarch_core::{ArchiveError, ErrorKind};

fn sqlstate(e: &ArchiveError) -> PgSqlErrorCode {
    match e.kind {
        ErrorKind::Configuration => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::InvalidName => PgSqlErrorCode::ERRCODE_INVALID_NAME,
        ErrorKind::Conflict => PgSqlErrorCode::ERRCODE_DUPLICATE_FILE,
        ErrorKind::DiskFull => PgSqlErrorCode::ERRCODE_DISK_FULL,
        ErrorKind::Busy => PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        ErrorKind::DamagedRecord => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
        ErrorKind::Internal => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        ErrorKind::Unavailable => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        ErrorKind::Io => match e.os_error {
            Some(libc::ENOENT) => PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            _ => PgSqlErrorCode::ERRCODE_IO_ERROR,
        },
    }
}

/// `e` as a report, with `context` (which file was being archived, which
/// backup) prepended to the detail.
fn report(e: &ArchiveError, context: &str) -> ErrorReport {
    let detail = match &e.detail {
        Some(d) => format!("{context} {d}"),
        None => context.to_string(),
    };
    let mut r =
        ErrorReport::new(sqlstate(e), e.message.clone(), function_name!()).set_detail(detail);
    if let Some(h) = &e.hint {
        r = r.set_hint(h.clone());
    }
    r
}

/// Reports `e` as a WARNING, with `context` prepended to the detail.
pub fn warn(e: &ArchiveError, context: &str) {
    report(e, context).report(PgLogLevel::WARNING);
}

/// Raises `e` as an ERROR, with `context` prepended to the detail.
pub fn error(e: &ArchiveError, context: &str) -> ! {
    report(e, context).report(PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// A WARNING with a message, an optional detail and hint.
pub fn warning(code: PgSqlErrorCode, message: &str, detail: Option<&str>, hint: Option<&str>) {
    let mut r = ErrorReport::new(code, message.to_string(), function_name!());
    if let Some(d) = detail {
        r = r.set_detail(d.to_string());
    }
    if let Some(h) = hint {
        r = r.set_hint(h.to_string());
    }
    r.report(PgLogLevel::WARNING);
}

/// What cleaning up crash leftovers did: a LOG line per file removed, a
/// WARNING per file that could not be.
pub fn leftovers_removed(dest: &dyn Destination, r: &Leftovers) {
    for name in &r.removed {
        log!(
            "walarch_ext: removed leftover temporary file \"{}\"",
            dest.location(name)
        );
    }
    for (name, err) in &r.failed {
        warning(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            &format!(
                "could not remove leftover temporary file \"{}\": {err}",
                dest.location(name)
            ),
            None,
            None,
        );
    }
}

/// `bytes` as PostgreSQL's sizes read: MB above a megabyte.
fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{} MB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

/// The WARNING for a WAL file dropped by `walarch.max_backlog`.
pub fn dropped(file: &str, dest: &dyn Destination, d: &Dropped) {
    warning(
        PgSqlErrorCode::ERRCODE_WARNING,
        &format!(
            "dropped WAL file \"{file}\" without archiving it: the archive backlog exceeds walarch.max_backlog"
        ),
        Some(&format!(
            "{} of WAL waited to be archived, more than walarch.max_backlog ({}), and archive destination \"{}\" has been failing since {}: {}. Dropped so far in this range: {}. Point-in-time recovery cannot pass this range; marker \"{}\" is stored in the archive once it takes files again.",
            size(d.backlog),
            size(d.max_backlog),
            dest.describe(),
            format_timestamp(d.failing_since),
            d.cause,
            d.range.describe(),
            d.range.marker_name(),
        )),
        Some(
            "Take a new base backup once archiving works again: earlier base backups cannot recover past this range. Set walarch.max_backlog higher, or to 0, to keep more WAL waiting instead.",
        ),
    );
}
