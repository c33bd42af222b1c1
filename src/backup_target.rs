//! The base backup target `walarch`: `pg_basebackup --target=walarch[:LABEL]
//! -X none` streams the backup into the archive (`walarch.archive_destination`).
//!
//! PostgreSQL 15+ (`backup/basebackup_target.h`): a target registered from
//! `_PG_init` of the preloaded library gives the walsender a sink that sits
//! last in its chain (after progress, server compression and throttling).
//! Ours hands every byte to `walarch_core::backup::BackupWriter`, which does
//! all the work, then forwards the call to the next sink (the one that
//! reports progress to the client), like contrib's basebackup_to_shell.
//!
//! The server headers installed do not include `backup/`: `bbsink`,
//! `bbsink_ops` and `bbsink_state` are declared here by hand. Their layout is
//! the same in 15, 16, 17 and 18 (checked against each branch's
//! basebackup_sink.h; sizes asserted below).
//!
//! Cleanup: PostgreSQL calls `cleanup` after `end_backup` and on an ERROR,
//! but not always ours: with `--compress=server-zstd` or `server-lz4` the
//! compressing sink's cleanup does not forward the call (15 to 18). A FATAL
//! (pg_terminate_backend, the client gone) exits the process without any.
//! So a backup still in progress is also aborted by an exit callback and by
//! the next `get_sink` of the same walsender.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use walarch_core::backup::writer::{incremental_refused, AbortReport, WalWait};
use walarch_core::backup::{default_label, validate_label, BackupStart, BackupWriter};
use walarch_core::destination::compressing::Sealing;
use walarch_core::ArchiveError;

use crate::{guc, warnings};

pub const TARGET: &CStr = c"walarch";

#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bbsink_state {
    pub tablespaces: *mut pg_sys::List,
    pub tablespace_num: c_int,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_total_is_valid: bool,
    pub startptr: u64,
    pub starttli: u32,
}

#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bbsink {
    pub bbs_ops: *const bbsink_ops,
    pub bbs_buffer: *mut c_char,
    pub bbs_buffer_length: usize,
    pub bbs_next: *mut bbsink,
    pub bbs_state: *mut bbsink_state,
}

type SinkFn = unsafe extern "C-unwind" fn(*mut bbsink);
type LenFn = unsafe extern "C-unwind" fn(*mut bbsink, usize);

#[repr(C)]
#[allow(non_camel_case_types)]
pub struct bbsink_ops {
    pub begin_backup: SinkFn,
    pub begin_archive: unsafe extern "C-unwind" fn(*mut bbsink, *const c_char),
    pub archive_contents: LenFn,
    pub end_archive: SinkFn,
    pub begin_manifest: SinkFn,
    pub manifest_contents: LenFn,
    pub end_manifest: SinkFn,
    pub end_backup: unsafe extern "C-unwind" fn(*mut bbsink, u64, u32),
    pub cleanup: SinkFn,
}

const _: () = assert!(std::mem::size_of::<bbsink_state>() == 56);
const _: () = assert!(std::mem::offset_of!(bbsink_state, bytes_done) == 16);
const _: () = assert!(std::mem::offset_of!(bbsink_state, startptr) == 40);
const _: () = assert!(std::mem::offset_of!(bbsink_state, starttli) == 48);
const _: () = assert!(std::mem::size_of::<bbsink>() == 40);
const _: () = assert!(std::mem::size_of::<bbsink_ops>() == 72);

type CheckDetail = unsafe extern "C-unwind" fn(*mut c_char, *mut c_char) -> *mut c_void;
type GetSink = unsafe extern "C-unwind" fn(*mut bbsink, *mut c_void) -> *mut bbsink;

// The server's functions, called through `guarded!`: an ERROR they raise
// becomes a Rust panic here (and an ERROR again at our callback's boundary).
unsafe extern "C-unwind" {
    fn BaseBackupAddTarget(name: *mut c_char, check_detail: CheckDetail, get_sink: GetSink);
    fn bbsink_forward_begin_backup(sink: *mut bbsink);
    fn bbsink_forward_begin_archive(sink: *mut bbsink, archive_name: *const c_char);
    fn bbsink_forward_archive_contents(sink: *mut bbsink, len: usize);
    fn bbsink_forward_end_archive(sink: *mut bbsink);
    fn bbsink_forward_begin_manifest(sink: *mut bbsink);
    fn bbsink_forward_manifest_contents(sink: *mut bbsink, len: usize);
    fn bbsink_forward_end_manifest(sink: *mut bbsink);
    fn bbsink_forward_end_backup(sink: *mut bbsink, endptr: u64, endtli: u32);
    fn bbsink_forward_cleanup(sink: *mut bbsink);
}

/// Calls a server function so that its ERROR unwinds Rust frames properly.
macro_rules! guarded {
    ($call:expr) => {
        // SAFETY: on the main thread (a callback of the walsender or
        // _PG_init); the caller vouches for the call itself.
        unsafe { pg_sys::ffi::pg_guard_ffi_boundary(|| $call) }
    };
}

/// Registers the target. Only from the postmaster's preload: the walsender
/// inherits the registry by fork, and nowhere else could use it.
pub fn register() {
    // SAFETY: called from _PG_init with static callbacks and name.
    guarded!(BaseBackupAddTarget(
        TARGET.as_ptr().cast_mut(),
        check_detail,
        get_sink
    ));
}

/// The backup in progress in this walsender (one at a time).
struct Active {
    /// As asked (the writer's may be numbered).
    label: String,
    /// The default label: numbered when taken.
    numbered: bool,
    describe: String,
    writer: BackupWriter<guc::SharedDestination>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Active>> = const { RefCell::new(None) };
}

/// Set while aborting and while storing `backup.json`: those waits must
/// not give up because a cancel or terminate is pending (an abort is why,
/// and an unclear `backup.json` is worse than a late error); the request
/// timeout still bounds them.
static SHIELDED: AtomicBool = AtomicBool::new(false);
static EXIT_HOOKED: AtomicBool = AtomicBool::new(false);

/// How long `end_backup` waits for the archiver to store the backup's last
/// WAL file.
const WAL_WAIT: Duration = Duration::from_secs(60);

/// What check_detail returns before a default label: `get_sink` numbers it
/// when taken. Not a label character.
const DEFAULT_MARK: char = '*';

/// Read from any thread: only flags, no PostgreSQL call.
fn walsender_interrupted() -> bool {
    if SHIELDED.load(Ordering::SeqCst) {
        return false;
    }
    // SAFETY: reads of sig_atomic_t flags set by this process's signal
    // handlers, and of a pid set at start-up.
    unsafe {
        pg_sys::QueryCancelPending != 0
            || pg_sys::ProcDiePending != 0
            || pg_sys::ClientConnectionLost != 0
            || libc::getppid() != pg_sys::PostmasterPid
    }
}

fn raise(e: &ArchiveError, label: &str, describe: &str) -> ! {
    // A wait given up for a cancel or terminate: PostgreSQL's own error
    // says what happened.
    pgrx::check_for_interrupts!();
    warnings::error(
        e,
        &format!("While storing base backup \"{label}\" into \"{describe}\"."),
    )
}

/// Runs `f` on the backup in progress; an error becomes an ERROR (after the
/// borrow is released: cleanup will need it).
fn with_active<R>(
    f: impl FnOnce(&mut BackupWriter<guc::SharedDestination>) -> Result<R, ArchiveError>,
) -> R {
    let r = ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        let a = a.as_mut()?;
        let label = a.writer.label().unwrap_or(&a.label).to_string();
        Some((f(&mut a.writer), label, a.describe.clone()))
    });
    match r {
        Some((Ok(v), _, _)) => v,
        Some((Err(e), label, describe)) => raise(&e, &label, &describe),
        None => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "no walarch base backup is in progress",
                function_name!(),
            )
            .report(PgLogLevel::ERROR);
            unreachable!()
        }
    }
}

/// Aborts the backup in progress, if any and not complete, and says what
/// it left.
fn abort_active(why: &str) {
    let Some(mut a) = ACTIVE.with(|a| a.borrow_mut().take()) else {
        return;
    };
    if a.writer.is_complete() {
        return;
    }
    if let Some(label) = a.writer.label() {
        log!("walarch_ext: aborting base backup \"{label}\" ({why})");
    }
    // A SQL function of this walsender (replication=database) may have
    // installed its own check since.
    walarch_s3::runtime::set_interrupt_check(walsender_interrupted);
    SHIELDED.store(true, Ordering::SeqCst);
    let r = a.writer.abort();
    SHIELDED.store(false, Ordering::SeqCst);
    report_abort(&a, &r);
}

fn report_abort(a: &Active, r: &AbortReport) {
    let Some(label) = a.writer.label() else {
        return; // never begun: nothing was stored
    };
    log!(
        "walarch_ext: base backup \"{label}\" aborted; removed {} object(s) from \"{}\"",
        r.removed.len(),
        a.describe
    );
    if let Some(err) = &r.record_left {
        warnings::warning(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            &format!("could not remove backup.json of aborted base backup \"{label}\"; none of its objects were removed"),
            Some(err),
            Some("Its backup.json may be stored: then the backup is listed, and its objects are kept so that it names none missing. Check it with walarch verify, or remove the whole folder."),
        );
        return;
    }
    for (name, err) in &r.left {
        warnings::warning(
            PgSqlErrorCode::ERRCODE_IO_ERROR,
            &format!("could not remove \"{name}\" of aborted base backup \"{label}\""),
            Some(err),
            Some("An incomplete backup (one without backup.json) is never restored; remove it later."),
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: c_int, _arg: pg_sys::Datum) {
    abort_active("the process exited");
}

fn check_role() {
    let role = guc::backup_role();
    // SAFETY: catalog look-ups inside a transaction of their own, as
    // PostgreSQL's own "server" target does in the walsender. Committing
    // leaves TopMemoryContext current (15 to 17): the BASE_BACKUP command's
    // context is restored, where check_detail's result must be allocated.
    let (allowed, exists) = unsafe {
        let cx = pg_sys::CurrentMemoryContext;
        pg_sys::StartTransactionCommand();
        let r = match &role {
            None => (pg_sys::superuser(), true),
            Some(r) => {
                let name = CString::new(r.as_str()).unwrap_or_default();
                let oid = pg_sys::get_role_oid(name.as_ptr(), true);
                let exists = oid != pg_sys::InvalidOid;
                (
                    exists && pg_sys::has_privs_of_role(pg_sys::GetUserId(), oid),
                    exists,
                )
            }
        };
        pg_sys::CommitTransactionCommand();
        pg_sys::CurrentMemoryContext = cx;
        r
    };
    if !allowed {
        let detail = match &role {
            None => "Only superusers may use it while walarch.backup_role is not set.".to_string(),
            Some(r) if !exists => {
                format!("Role \"{r}\" named by walarch.backup_role does not exist.")
            }
            Some(r) => format!(
                "Only roles with privileges of role \"{r}\" (walarch.backup_role) may use it."
            ),
        };
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to use basebackup target \"walarch\"",
            function_name!(),
        )
        .set_detail(detail)
        .report(PgLogLevel::ERROR);
    }
}

/// `--target=walarch[:LABEL]`: who may, and which label. Returns the label
/// (palloc'd) for `get_sink`.
#[pg_guard]
unsafe extern "C-unwind" fn check_detail(_target: *mut c_char, detail: *mut c_char) -> *mut c_void {
    check_role();
    check_archiving();
    let numbered = detail.is_null();
    let label = if numbered {
        default_label(SystemTime::now())
    } else {
        // SAFETY: PostgreSQL passes the TARGET_DETAIL option as a C string.
        unsafe { CStr::from_ptr(detail) }
            .to_string_lossy()
            .into_owned()
    };
    if let Err(msg) = validate_label(&label) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            msg,
            function_name!(),
        )
        .set_hint("The label names the backup's folder in the archive: pg_basebackup --target=walarch:LABEL.")
        .report(PgLogLevel::ERROR);
    }
    let label = if numbered {
        format!("{DEFAULT_MARK}{label}")
    } else {
        label
    };
    let c = CString::new(label).unwrap_or_default();
    // SAFETY: copied into the current memory context, which lives as long
    // as the BASE_BACKUP command.
    unsafe { pg_sys::pstrdup(c.as_ptr()).cast() }
}

/// A setting's value as SHOW gives it (`None`: unknown).
fn setting(name: &CStr) -> Option<String> {
    // SAFETY: main thread; GetConfigOption with missing_ok returns NULL or
    // a string valid until the setting changes, copied at once.
    unsafe {
        let v = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!v.is_null()).then(|| CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

/// The backup's WAL reaches the archive only when this server archives
/// through walarch_ext: refused before anything is stored otherwise
/// (end_backup checks the WAL is there in any case).
fn check_archiving() {
    let mode = setting(c"archive_mode").unwrap_or_default();
    let library = setting(c"archive_library").unwrap_or_default();
    let mode_ok = mode == "on" || mode == "always";
    if mode_ok && library == "walarch_ext" {
        return;
    }
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "basebackup target \"walarch\" needs WAL archiving through walarch_ext",
        function_name!(),
    )
    .set_detail(format!(
        "archive_mode is \"{mode}\" and archive_library is \"{library}\": the WAL the backup needs would not be in the archive."
    ))
    .set_hint("Set archive_mode = on and archive_library = 'walarch_ext', then restart the server.")
    .report(PgLogLevel::ERROR);
}

static OPS: bbsink_ops = bbsink_ops {
    begin_backup: sink_begin_backup,
    begin_archive: sink_begin_archive,
    archive_contents: sink_archive_contents,
    end_archive: sink_end_archive,
    begin_manifest: sink_begin_manifest,
    manifest_contents: sink_manifest_contents,
    end_manifest: sink_end_manifest,
    end_backup: sink_end_backup,
    cleanup: sink_cleanup,
};

#[pg_guard]
unsafe extern "C-unwind" fn get_sink(next: *mut bbsink, detail: *mut c_void) -> *mut bbsink {
    // SAFETY: what check_detail returned.
    let label = unsafe { CStr::from_ptr(detail.cast()) }
        .to_string_lossy()
        .into_owned();
    let (label, numbered) = match label.strip_prefix(DEFAULT_MARK) {
        Some(l) => (l.to_string(), true),
        None => (label, false),
    };
    // A wait on the object store gives up on cancel or terminate (then the
    // error path aborts the backup). Replaces a SQL function's check.
    walarch_s3::runtime::set_interrupt_check(walsender_interrupted);
    let dest = guc::destination().unwrap_or_else(|detail| {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "archiving is not configured",
            function_name!(),
        )
        .set_detail(detail)
        .set_hint("The walarch backup target stores backups in walarch.archive_destination.")
        .report(PgLogLevel::ERROR);
        unreachable!()
    });
    // Never a plaintext backup while encryption is configured: refused
    // before anything is stored (and before the checkpoint).
    let recipients = match guc::sealing() {
        Sealing::Off => None,
        Sealing::To(r) => Some(r),
        Sealing::Broken(why) => {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "base backup cannot be encrypted: walarch.encryption_recipients cannot be used",
                function_name!(),
            )
            .set_detail(why)
            .set_hint("Make walarch.encryption_recipients name a readable file of age public keys (age1…), then reload; nothing was stored.")
            .report(PgLogLevel::ERROR);
            unreachable!()
        }
    };
    if !EXIT_HOOKED.swap(true, Ordering::SeqCst) {
        // SAFETY: registers a guarded callback with no argument.
        unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0usize)) };
    }
    // A previous backup of this walsender ended in an ERROR whose cleanup
    // did not reach us (server-side zstd or lz4): abort it now.
    abort_active("superseded: its cleanup was not called");
    let describe = dest.describe();
    ACTIVE.with(|a| {
        *a.borrow_mut() = Some(Active {
            label,
            numbered,
            describe,
            writer: BackupWriter::new(dest).sealed_to(recipients),
        })
    });
    // SAFETY: a zeroed bbsink in the current memory context, filled as
    // basebackup_to_shell does.
    unsafe {
        let sink: *mut bbsink = pg_sys::palloc0(std::mem::size_of::<bbsink>()).cast();
        (*sink).bbs_ops = &OPS;
        (*sink).bbs_next = next;
        sink
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_begin_backup(sink: *mut bbsink) {
    // SAFETY: PostgreSQL set bbs_state before calling begin_backup; DataDir
    // is the absolute data directory.
    let (startptr, starttli, data_dir, sysid) = unsafe {
        let st = &*(*sink).bbs_state;
        (
            st.startptr,
            st.starttli,
            CStr::from_ptr(pg_sys::DataDir)
                .to_string_lossy()
                .into_owned(),
            pg_sys::GetSystemIdentifier(),
        )
    };
    let (label, numbered) = ACTIVE.with(|a| {
        a.borrow()
            .as_ref()
            .map(|a| (a.label.clone(), a.numbered))
            .unwrap_or_default()
    });
    let start = BackupStart {
        label,
        numbered,
        start_lsn: startptr,
        start_tli: starttli,
        system_identifier: sysid,
        pg_version: pg_sys::PG_VERSION_NUM,
        // SAFETY: a plain int set at start-up.
        wal_segment_size: unsafe { pg_sys::wal_segment_size } as u64,
        data_dir: data_dir.into(),
        level: guc::COMPRESSION_LEVEL.get(),
    };
    with_active(|w| w.begin(start));
    // SAFETY: our sink, as PostgreSQL passed it.
    guarded!(bbsink_forward_begin_backup(sink));
}

/// The bytes PostgreSQL put in the (shared) buffer.
///
/// # Safety
/// `sink` is ours, after begin_backup; `len` at most its buffer's length.
unsafe fn buffer<'a>(sink: *mut bbsink, len: usize) -> &'a [u8] {
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts((*sink).bbs_buffer.cast::<u8>(), len) }
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_begin_archive(sink: *mut bbsink, name: *const c_char) {
    // SAFETY: PostgreSQL passes the archive's name as a C string.
    let n = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    with_active(|w| w.begin_archive(&n));
    // SAFETY: our sink and PostgreSQL's name, passed on.
    guarded!(bbsink_forward_begin_archive(sink, name));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_archive_contents(sink: *mut bbsink, len: usize) {
    // SAFETY: PostgreSQL filled len bytes of the buffer.
    with_active(|w| w.archive_contents(unsafe { buffer(sink, len) }));
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_archive_contents(sink, len));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_end_archive(sink: *mut bbsink) {
    with_active(|w| w.end_archive());
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_end_archive(sink));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_begin_manifest(sink: *mut bbsink) {
    with_active(|w| w.begin_manifest());
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_begin_manifest(sink));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_manifest_contents(sink: *mut bbsink, len: usize) {
    // SAFETY: PostgreSQL filled len bytes of the buffer.
    with_active(|w| w.manifest_contents(unsafe { buffer(sink, len) }));
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_manifest_contents(sink, len));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_end_manifest(sink: *mut bbsink) {
    with_active(|w| w.end_manifest());
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_end_manifest(sink));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_end_backup(sink: *mut bbsink, endptr: u64, endtli: u32) {
    if with_active(|w| Ok(w.is_incremental())) {
        // Recorded as full it could not be restored (backup.json's
        // based_on is reserved for the chain).
        let e = incremental_refused();
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            e.message,
            function_name!(),
        )
        .set_hint(e.hint.unwrap_or_default())
        .report(PgLogLevel::ERROR);
    }
    // The WAL the backup needs and its objects, checked; then backup.json,
    // so the client hears of success only once it is stored.
    let info = with_active(|w| {
        let interrupted = walsender_interrupted;
        let wait = WalWait {
            timeout: WAL_WAIT,
            poll: Duration::from_secs(1),
            interrupted: &interrupted,
        };
        w.check_end(endptr, endtli, &wait)
    });
    with_active(|w| {
        SHIELDED.store(true, Ordering::SeqCst);
        let r = w.store_record(&info);
        SHIELDED.store(false, Ordering::SeqCst);
        r
    });
    let (stored, sent) = info.sizes();
    let describe = ACTIVE.with(|a| a.borrow().as_ref().map(|a| a.describe.clone()));
    let encrypted = info
        .encryption
        .as_ref()
        .map(|e| format!(", encrypted to {} recipient(s)", e.recipients))
        .unwrap_or_default();
    notice!(
        "base backup \"{}\" stored in \"{}\" ({} objects, {sent} bytes, {stored} stored{encrypted})",
        info.label,
        describe.unwrap_or_default(),
        info.objects.len()
    );
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_end_backup(sink, endptr, endtli));
}

#[pg_guard]
unsafe extern "C-unwind" fn sink_cleanup(sink: *mut bbsink) {
    // After end_backup this finds the backup complete and removes nothing.
    abort_active("the backup failed");
    // SAFETY: our sink, passed on.
    guarded!(bbsink_forward_cleanup(sink));
}
