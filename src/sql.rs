//! The SQL API: `walarch_stats()` (and the `walarch_stat_archiver` view),
//! `walarch_stats_reset()`, `walarch_switch_wal()`, `walarch_verify()`,
//! `walarch_expire()`.

use std::path::Path;
use std::time::{Duration, Instant};

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use walarch_core::archiving::archive_status;
use walarch_core::archiving::host::Host;
use walarch_core::archiving::shared_state::non_empty;
use walarch_core::wal::time::{now_timestamptz, to_option};
use walarch_core::wal::walname::{segment_file_name, WalFileKind, WalFileName};

use crate::guc;
use crate::shmem::{self, PgHost};

fn require_shared_memory() {
    if !shmem::attached() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "walarch_ext is not loaded through shared_preload_libraries",
            "Add walarch_ext to shared_preload_libraries and restart the server."
        );
    }
}

fn ts(t: i64) -> Option<TimestampWithTimeZone> {
    to_option(t).and_then(|t| TimestampWithTimeZone::try_from(t).ok())
}

/// One row: the columns of `pg_stat_archiver`, then what it lacks.
// pgrx takes the column names from this signature: no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_safe)]
fn walarch_stats() -> TableIterator<
    'static,
    (
        name!(archived_count, i64),
        name!(last_archived_wal, Option<String>),
        name!(last_archived_time, Option<TimestampWithTimeZone>),
        name!(failed_count, i64),
        name!(last_failed_wal, Option<String>),
        name!(last_failed_time, Option<TimestampWithTimeZone>),
        name!(stats_reset, Option<TimestampWithTimeZone>),
        name!(pending_count, i64),
        name!(pending_bytes, i64),
        name!(oldest_pending_wal, Option<String>),
        name!(archived_bytes, i64),
        name!(copied_ahead_count, i64),
        name!(copy_ahead_failures, i64),
        name!(last_error, Option<String>),
        name!(worker_pid, Option<i32>),
        name!(last_transfer_ms, Option<f64>),
        name!(mean_transfer_ms, Option<f64>),
        name!(bytes_in_flight, i64),
        name!(stored_bytes, i64),
        name!(dropped_count, i64),
        name!(dropped_bytes, i64),
        name!(last_dropped_wal, Option<String>),
        name!(last_dropped_time, Option<TimestampWithTimeZone>),
        name!(compressed_count, i64),
        name!(encrypted_count, i64),
    ),
> {
    require_shared_memory();
    let (stats, worker_pid, in_flight) =
        shmem::read(|s| (s.stats.clone(), s.worker_pid, s.bytes_in_flight())).unwrap();
    // NULL until something was stored.
    let ms = |us: i64| (stats.transfers > 0).then_some(us as f64 / 1000.0);
    // Read from pg_wal/archive_status (the backend's working directory is
    // the data directory): the archiver's to-do list, not a counter.
    let p = archive_status::summary(Path::new("pg_wal")).unwrap_or_default();
    TableIterator::once((
        stats.archived_count,
        non_empty(&stats.last_archived_wal),
        ts(stats.last_archived_time),
        stats.failed_count,
        non_empty(&stats.last_failed_wal),
        ts(stats.last_failed_time),
        ts(stats.stats_reset),
        p.count,
        p.bytes,
        p.oldest,
        stats.archived_bytes,
        stats.copied_ahead_count,
        stats.copy_ahead_failures,
        non_empty(&stats.last_error),
        (worker_pid != 0).then_some(worker_pid),
        ms(stats.last_transfer_us),
        ms(stats.transfer_us_total / stats.transfers.max(1)),
        in_flight as i64,
        stats.stored_bytes,
        stats.dropped_count,
        stats.dropped_bytes,
        non_empty(&stats.last_dropped_wal),
        ts(stats.last_dropped_time),
        stats.compressed_count,
        stats.encrypted_count,
    ))
}

/// Zeroes the counters and sets `stats_reset`, like
/// `pg_stat_reset_shared('archiver')`.
#[pg_extern(volatile, parallel_unsafe)]
fn walarch_stats_reset() {
    require_shared_memory();
    shmem::with(|s| s.reset_stats(now_timestamptz()));
}

fn is_archived(walfile: &str) -> bool {
    archive_status::is_archived(Path::new("pg_wal"), walfile)
}

fn interval_to_duration(i: &Interval) -> Option<Duration> {
    // As PostgreSQL's interval arithmetic does for "now() + interval": a
    // month counts 30 days.
    let micros = i.micros() as i128
        + i.days() as i128 * 86_400_000_000
        + i.months() as i128 * 30 * 86_400_000_000;
    (micros >= 0).then(|| Duration::from_micros(micros.min(u64::MAX as i128) as u64))
}

/// Switches to a new WAL file and names the one completed; with `wait`,
/// blocks until it is archived or `timeout` passes.
///
/// `switch_lsn` is what `pg_switch_wal()` returns and `walfile` what
/// `pg_walfile_name()` makes of it. When nothing was written since the last
/// switch, PostgreSQL does not switch: `switch_lsn` is then the start of the
/// current file, and `walfile` names the file the previous switch completed
/// (so `wait` waits for that one, usually already archived).
/// Declared in `sql/walarch_switch_wal.sql`: pgrx has no `pg_lsn` type.
#[pg_extern(sql = false)]
fn walarch_switch_wal(
    wait: bool,
    timeout: Interval,
) -> TableIterator<
    'static,
    (
        name!(switch_lsn, i64),
        name!(walfile, String),
        name!(archived, bool),
    ),
> {
    // Every check before the switch: bad input changes nothing.
    let Some(limit) = interval_to_duration(&timeout) else {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must not be negative"
        );
    };
    // SAFETY: a setting fixed at server start, read on the main thread.
    let archiving =
        unsafe { pg_sys::XLogArchiveMode } != pg_sys::ArchiveMode::ARCHIVE_MODE_OFF as i32;
    if wait && !archiving {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot wait for archiving: WAL archiving is not enabled",
            function_name!(),
        )
        .set_hint("Set archive_mode and archive_library, then restart the server.")
        .report(PgLogLevel::ERROR);
    }
    // SAFETY: reads shared state under PostgreSQL's own locking.
    if unsafe { pg_sys::RecoveryInProgress() } {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "recovery is in progress",
            function_name!(),
        )
        .set_hint("WAL control functions cannot be executed during recovery.")
        .report(PgLogLevel::ERROR);
    }

    // What pg_switch_wal() does, without its privilege check: EXECUTE on
    // this function is the privilege.
    // SAFETY: what pg_switch_wal() calls, in a backend, not in recovery
    // (checked above); the segment size and timeline are plain reads.
    let (lsn, seg_size, tli) = unsafe {
        (
            pg_sys::RequestXLogSwitch(false),
            pg_sys::wal_segment_size as u64,
            pg_sys::GetWALInsertionTimeLine(),
        )
    };
    // XLByteToPrevSeg: the file that ends at (or contains) the LSN.
    let walfile = segment_file_name(tli, (lsn.saturating_sub(1)) / seg_size, seg_size);

    let mut archived = archiving && is_archived(&walfile);
    if wait && !archived {
        PgHost.wake_worker();
        let deadline = Instant::now() + limit;
        loop {
            archived = is_archived(&walfile);
            if archived || Instant::now() >= deadline {
                break;
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            PgHost.wait(left);
            // Query cancel and statement_timeout end the wait here.
            pgrx::check_for_interrupts!();
        }
        if !archived {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("timed out waiting for WAL file \"{walfile}\" to be archived"),
                function_name!(),
            )
            .set_detail(format!("Waited {} ms.", limit.as_millis()))
            .set_hint("Check walarch_stats() and the server log for archiving failures.")
            .report(PgLogLevel::WARNING);
        }
    }
    TableIterator::once((lsn as i64, walfile, archived))
}

/// Verifies the configured archive from inside the server, as `walarch
/// verify` does: one row per file checked (`ok`, `corrupt`,
/// `missing_checksum`) and one per gap (`missing`, or `dropped` when
/// `walarch.max_backlog` dropped it); then, for the base backups taken
/// through the target, one per object (`ok`, `corrupt`, `missing`), one per
/// WAL file a backup needs that is missing, and one per incomplete backup
/// (`in_progress`, or `incomplete` once abandoned).
#[pg_extern(volatile, parallel_unsafe)]
fn walarch_verify(
    from_wal: default!(Option<String>, "NULL"),
    to_wal: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(walfile, String),
        name!(status, String),
        name!(detail, Option<String>),
    ),
> {
    let parse = |arg: &str, v: Option<String>| {
        v.map(|v| match WalFileName::parse(&v) {
            Some(w) if w.kind == WalFileKind::Segment => w,
            _ => {
                ErrorReport::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("invalid WAL file name for {arg}: \"{v}\""),
                    function_name!(),
                )
                .set_hint("Give a WAL segment name of 24 hexadecimal digits, such as 000000010000000000000001.")
                .report(PgLogLevel::ERROR);
                unreachable!()
            }
        })
    };
    let from = parse("from_wal", from_wal);
    let to = parse("to_wal", to_wal);
    let dest = configured_destination();
    // Query cancel, statement_timeout and pg_terminate_backend() end it
    // between files and between reads of one, here on the main thread.
    let report = walarch_core::maintenance::verify::verify_with(
        &*dest,
        from.as_ref(),
        to.as_ref(),
        &mut || {
            pgrx::check_for_interrupts!();
            Ok(())
        },
    )
    .unwrap_or_else(|e| {
        // A wait the interrupt ended: the cancel's own error, not an I/O one.
        pgrx::check_for_interrupts!();
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            format!(
                "could not verify archive \"{}\": {}",
                dest.describe(),
                e.message
            )
        );
    });
    TableIterator::new(report.findings.into_iter().map(|f| {
        let detail = (!f.detail.is_empty()).then_some(f.detail);
        (f.walfile, f.status.as_str().to_string(), detail)
    }))
}

/// Read from any thread: only flags, no PostgreSQL call.
fn backend_interrupted() -> bool {
    // SAFETY: reads of sig_atomic_t flags set by this backend's signal
    // handlers (cancel, statement_timeout, terminate) and of a pid set at
    // start-up.
    unsafe {
        pg_sys::QueryCancelPending != 0
            || pg_sys::ProcDiePending != 0
            || libc::getppid() != pg_sys::PostmasterPid
    }
}

/// The configured archive, or an ERROR saying why there is none.
fn configured_destination() -> guc::SharedDestination {
    // A wait on the object store gives up on cancel, statement_timeout or
    // pg_terminate_backend (then CHECK_FOR_INTERRUPTS raises the error):
    // a hung store must not hold a backend for a request timeout.
    walarch_s3::runtime::set_interrupt_check(backend_interrupted);
    guc::destination().unwrap_or_else(|detail| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "archiving is not configured",
            function_name!(),
        )
        .set_detail(detail)
        .report(PgLogLevel::ERROR);
        unreachable!()
    })
}

fn raise(code: PgSqlErrorCode, e: &walarch_core::ArchiveError) -> ! {
    let mut r = ErrorReport::new(code, e.message.clone(), function_name!());
    if let Some(d) = &e.detail {
        r = r.set_detail(d.clone());
    }
    if let Some(h) = &e.hint {
        r = r.set_hint(h.clone());
    }
    r.report(PgLogLevel::ERROR);
    unreachable!()
}

/// Removes from the configured archive what a retention rule no longer
/// needs, as `walarch expire` does: exactly one rule; with `dry_run` (the
/// default) it only says what would go. One row per file: `remove` (dry
/// run), `removed`, or `left` (not a WAL file name, never touched); the
/// objects of the base backups it expires (`backups/LABEL/…`) come first.
#[pg_extern(volatile, parallel_unsafe)]
fn walarch_expire(
    keep_backups: default!(Option<i32>, "NULL"),
    before_wal: default!(Option<String>, "NULL"),
    older_than: default!(Option<Interval>, "NULL"),
    dry_run: default!(bool, "true"),
) -> TableIterator<
    'static,
    (
        name!(walfile, String),
        name!(action, String),
        name!(reason, String),
    ),
> {
    use walarch_core::destination::Destination;
    use walarch_core::maintenance::retention::{execute, plan, read_facts, BackupCheck, Rule};
    let bad = |msg: &'static str, hint: &'static str| -> ! {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg,
            function_name!(),
        )
        .set_hint(hint)
        .report(PgLogLevel::ERROR);
        unreachable!()
    };
    let mut rules = vec![];
    if let Some(n) = keep_backups {
        if n < 1 {
            bad(
                "keep_backups must be at least 1",
                "Keeping no base backup would leave nothing to recover from.",
            );
        }
        rules.push(Rule::KeepBackups(n as u32));
    }
    if let Some(w) = before_wal {
        rules.push(Rule::Before(w));
    }
    if let Some(i) = older_than {
        match interval_to_duration(&i) {
            Some(d) => rules.push(Rule::OlderThan(d)),
            None => bad(
                "older_than must not be negative",
                "Give an interval such as '7 days'.",
            ),
        }
    }
    if rules.len() != 1 {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "exactly one retention rule must be given",
            function_name!(),
        )
        .set_detail(format!(
            "The rules are keep_backups, before_wal and older_than; {} given.",
            rules.len()
        ))
        .set_hint("For example: SELECT * FROM walarch_expire(keep_backups => 2);")
        .report(PgLogLevel::ERROR);
    }
    let inner = configured_destination();
    let dest = walarch_core::destination::compressing::Compressing::new(&*inner, None);
    let entries = dest
        .entries()
        .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_IO_ERROR, &e));
    // The server holds no private key: an encrypted history or backup file
    // is refused (with a hint to run walarch expire where the key is kept).
    let facts = read_facts(&*inner, &entries).unwrap_or_else(|e| {
        let code = match e.kind {
            walarch_core::ErrorKind::Configuration => {
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            _ => PgSqlErrorCode::ERRCODE_IO_ERROR,
        };
        raise(code, &e)
    });
    // No way to skip the backup check here: an archive whose backups are
    // kept elsewhere is expired with `walarch expire --no-backup-check`.
    let p = plan(
        &entries,
        &facts,
        &rules[0],
        std::time::SystemTime::now(),
        BackupCheck::Required,
    )
    .unwrap_or_else(|e| {
        let code = match e.kind {
            walarch_core::ErrorKind::InvalidName => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            _ => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        };
        raise(code, &e)
    });
    if !dry_run {
        let total = p.removals().count();
        let mut done = 0;
        if let Err(e) = execute(&dest, &p, |_| {
            done += 1;
            check_for_interrupts!();
        }) {
            raise(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                &e.with_detail(format!(
                    "{done} of {total} file(s) were removed, oldest first: what remains has no hole."
                )),
            );
        }
    }
    TableIterator::new(
        p.decisions
            .into_iter()
            .map(move |d| (d.walfile, d.action.as_str(dry_run).to_string(), d.reason)),
    )
}

extension_sql_file!("../sql/walarch_switch_wal.sql", name = "walarch_switch_wal");
extension_sql_file!("../sql/privileges.sql", finalize);
