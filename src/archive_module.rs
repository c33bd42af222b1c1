//! The archive-module entry points, for both ABIs:
//!
//! - PG15: `void _PG_archive_module_init(ArchiveModuleCallbacks *cb)` fills in
//!   `check_configured_cb`, `archive_file_cb`, `shutdown_cb` (no state).
//! - PG16–18: `const ArchiveModuleCallbacks *_PG_archive_module_init(void)`
//!   returns a static struct whose callbacks take an `ArchiveModuleState *`.
//!
//! Both call the same version-independent functions below. None of them may
//! raise an ERROR (on PG15/16 that kills the archiver): failures are WARNINGs
//! and a `false` return, so the archiver retries and stays up.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use walarch_core::shared_state::ArchiverClaim;
use walarch_core::temp_file::process_alive;
use walarch_core::time::now_timestamptz;
use walarch_core::{archive_file, temp_file, ArchiveOutcome, CopyOptions};

use crate::{guc, report, shmem, worker};

/// How long the callback waits for the worker to finish a file it is
/// copying before giving up on this attempt (the archiver retries).
const WORKER_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// PostgreSQL's file creation mode (common/file_perm.h): 0600, or 0640 with
/// group access (initdb -g).
pub fn file_create_mode() -> u32 {
    unsafe extern "C" {
        static pg_file_create_mode: std::ffi::c_int;
    }
    // SAFETY: a plain int the server set at start-up.
    unsafe { pg_file_create_mode as u32 }
}

/// The directory this process last swept for crash leftovers: a sweep runs
/// once per process and again whenever the setting points somewhere new.
static SWEPT: Mutex<Option<PathBuf>> = Mutex::new(None);

fn sweep_once(dir: &Path) {
    let mut swept = SWEPT.lock().unwrap_or_else(|p| p.into_inner());
    if swept.as_deref() == Some(dir) {
        return;
    }
    match temp_file::sweep(dir) {
        Ok(r) => {
            for name in &r.removed {
                log!(
                    "walarch_ext: removed leftover temporary file \"{}/{}\"",
                    dir.display(),
                    name
                );
            }
            for (name, err) in &r.failed {
                report::warning(
                    PgSqlErrorCode::ERRCODE_IO_ERROR,
                    &format!(
                        "could not remove leftover temporary file \"{}/{}\": {}",
                        dir.display(),
                        name,
                        err
                    ),
                    None,
                    None,
                );
            }
            *swept = Some(dir.to_path_buf());
        }
        // The directory may be missing right now; archiving reports that, and
        // the sweep is tried again on the next call.
        Err(_) => {}
    }
}

/// Called when the archiver loads the module.
fn startup() {
    if let Some(dir) = guc::archive_directory() {
        sweep_once(&dir);
    }
}

fn check_configured() -> bool {
    if guc::archive_directory().is_some() {
        return true;
    }
    set_check_errdetail();
    false
}

/// PG17+: the archiver prints `arch_module_check_errdetail_string` as the
/// DETAIL of its "archiving is not configured" WARNING. Before 17 there is no
/// such hook, so say it in a WARNING of our own.
#[cfg(any(feature = "pg17", feature = "pg18"))]
fn set_check_errdetail() {
    unsafe extern "C" {
        static mut arch_module_check_errdetail_string: *mut std::ffi::c_char;
    }
    static DETAIL: &CStr = c"walarch.archive_directory is not set.";
    // SAFETY: the archiver reset it to NULL before calling us and only reads
    // it; a static string needs no freeing.
    unsafe { arch_module_check_errdetail_string = DETAIL.as_ptr().cast_mut() };
}

#[cfg(not(any(feature = "pg17", feature = "pg18")))]
fn set_check_errdetail() {
    report::warning(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "walarch.archive_directory is not set",
        None,
        Some(
            "Set walarch.archive_directory to an existing directory and reload the configuration.",
        ),
    );
}

/// Called when the archiver exits (at a clean shutdown, after its last
/// round): save the statistics for the next start.
fn shutdown() {
    shmem::save_stats();
}

/// What to do about `file` given the copy-ahead worker's claims.
enum Coordination {
    /// Not coordinated (no shared memory) or ours to copy inline.
    CopyInline,
    /// The worker archived it; it is in the archive with the right size.
    CopiedAhead(u64),
    /// The worker has held it for too long: fail this attempt.
    WorkerStuck(i32),
}

/// The archiver asks for `file`: consult the worker's claims, waiting while
/// the worker copies it (two processes never copy the same file at once).
fn coordinate(file: &str, source: &Path, dir: &Path) -> Coordination {
    let me = unsafe { pg_sys::MyProcPid };
    let deadline = Instant::now() + WORKER_WAIT_LIMIT;
    loop {
        let Some(claim) = shmem::with(|s| s.begin_archiver_copy(file, me, process_alive)) else {
            return Coordination::CopyInline;
        };
        match claim {
            ArchiverClaim::CopyInline => return Coordination::CopyInline,
            ArchiverClaim::CopiedAhead { bytes } => {
                // Trust, but check the file is still there, whole.
                let archived = std::fs::metadata(dir.join(file)).map(|m| m.len()).ok();
                let wal = std::fs::metadata(source).map(|m| m.len()).ok();
                if archived == Some(bytes) && wal == Some(bytes) {
                    return Coordination::CopiedAhead(bytes);
                }
                // Gone or changed: the slot is free now; claim it next turn.
            }
            ArchiverClaim::WorkerBusy { pid } => {
                if Instant::now() >= deadline {
                    return Coordination::WorkerStuck(pid);
                }
                // The worker wakes us (PgArchWakeup) when a copy ends.
                unsafe {
                    pg_sys::WaitLatch(
                        pg_sys::MyLatch,
                        (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH)
                            as i32,
                        10,
                        pg_sys::PG_WAIT_EXTENSION,
                    );
                    pg_sys::ResetLatch(pg_sys::MyLatch);
                }
            }
        }
    }
}

/// Archives one file. `file` is the bare name, `path` its path relative to
/// the data directory (the archiver's working directory).
fn archive(file: &CStr, path: &CStr) -> bool {
    let (Ok(file), Ok(path)) = (file.to_str(), path.to_str()) else {
        report::warning(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            "WAL file name is not valid UTF-8",
            None,
            None,
        );
        return false;
    };
    let Some(dir) = guc::archive_directory() else {
        // check_configured already said so; the archiver will try again.
        return false;
    };
    let opts = CopyOptions {
        file_mode: file_create_mode(),
        ..CopyOptions::default()
    };
    match coordinate(file, Path::new(path), &dir) {
        Coordination::CopyInline => {}
        Coordination::CopiedAhead(bytes) => {
            debug1!("walarch_ext: \"{file}\" was copied ahead by the worker");
            shmem::with(|s| s.record_archived(file, bytes, true, now_timestamptz()));
            worker::wake();
            return true;
        }
        Coordination::WorkerStuck(pid) => {
            let msg = format!("WAL file \"{file}\" is still being copied by the copy-ahead worker");
            report::warning(
                PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
                &msg,
                Some(&format!(
                    "Worker PID {pid} has held it for {} s.",
                    WORKER_WAIT_LIMIT.as_secs()
                )),
                Some("The archiver retries it; check the archive device if this repeats."),
            );
            shmem::with(|s| s.record_failed(file, &msg, now_timestamptz()));
            return false;
        }
    }
    // Let the worker start on the files after this one.
    worker::wake();

    // No PostgreSQL call happens inside: a panic here is a bug, but it must
    // still not take the archiver down.
    let result = std::panic::catch_unwind(|| {
        sweep_once(&dir);
        archive_file(Path::new(path), &dir, file, &opts)
    });
    let now = now_timestamptz();
    shmem::with(|s| {
        s.end_archiver_copy(file);
        match &result {
            Ok(Ok(o)) => s.record_archived(file, o.bytes(), false, now),
            Ok(Err(e)) => s.record_failed(file, &e.message, now),
            Err(_) => s.record_failed(file, "internal error", now),
        }
    });
    match result {
        Ok(Ok(outcome)) => {
            match outcome {
                ArchiveOutcome::Archived { bytes, .. } => {
                    debug1!("walarch_ext: archived \"{file}\" ({bytes} bytes)")
                }
                ArchiveOutcome::AlreadyArchived { .. } => {
                    debug1!("walarch_ext: \"{file}\" was already archived with identical contents")
                }
            }
            true
        }
        Ok(Err(e)) => {
            report::warn(
                &e,
                &format!("While archiving \"{file}\" into \"{}\".", dir.display()),
            );
            false
        }
        Err(_) => {
            report::warning(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                &format!("internal error while archiving \"{file}\""),
                Some("The file was not archived; the archiver will retry it."),
                None,
            );
            false
        }
    }
}

#[cfg(feature = "pg15")]
mod abi {
    //! PG15: `postmaster/pgarch.h`, callbacks without state.
    use super::*;
    use pgrx::pg_sys;
    use std::ffi::c_char;

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured_cb() -> bool {
        check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file_cb(file: *const c_char, path: *const c_char) -> bool {
        archive(CStr::from_ptr(file), CStr::from_ptr(path))
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn shutdown_cb() {
        shutdown();
    }

    #[pg_guard]
    #[unsafe(no_mangle)]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init(
        cb: *mut pg_sys::ArchiveModuleCallbacks,
    ) {
        (*cb).check_configured_cb = Some(check_configured_cb);
        (*cb).archive_file_cb = Some(archive_file_cb);
        (*cb).shutdown_cb = Some(shutdown_cb);
        startup();
    }
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
mod abi {
    //! PG16–18: `archive/archive_module.h`, identical in 16, 17 and 18 (pgrx's
    //! bindings do not include it, so it is declared here).
    use super::*;
    use std::ffi::{c_char, c_void};

    #[repr(C)]
    pub struct ArchiveModuleState {
        pub private_data: *mut c_void,
    }

    #[repr(C)]
    pub struct ArchiveModuleCallbacks {
        pub startup_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
        pub check_configured_cb:
            Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState) -> bool>,
        pub archive_file_cb: Option<
            unsafe extern "C-unwind" fn(
                *mut ArchiveModuleState,
                *const c_char,
                *const c_char,
            ) -> bool,
        >,
        pub shutdown_cb: Option<unsafe extern "C-unwind" fn(*mut ArchiveModuleState)>,
    }

    const _: () = assert!(std::mem::size_of::<ArchiveModuleState>() == 8);
    const _: () = assert!(std::mem::size_of::<ArchiveModuleCallbacks>() == 32);

    #[pg_guard]
    unsafe extern "C-unwind" fn startup_cb(_state: *mut ArchiveModuleState) {
        startup();
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn check_configured_cb(_state: *mut ArchiveModuleState) -> bool {
        check_configured()
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn archive_file_cb(
        _state: *mut ArchiveModuleState,
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        archive(CStr::from_ptr(file), CStr::from_ptr(path))
    }

    #[pg_guard]
    unsafe extern "C-unwind" fn shutdown_cb(_state: *mut ArchiveModuleState) {
        shutdown();
    }

    static CALLBACKS: ArchiveModuleCallbacks = ArchiveModuleCallbacks {
        startup_cb: Some(startup_cb),
        check_configured_cb: Some(check_configured_cb),
        archive_file_cb: Some(archive_file_cb),
        shutdown_cb: Some(shutdown_cb),
    };

    #[pg_guard]
    #[unsafe(no_mangle)]
    pub extern "C-unwind" fn _PG_archive_module_init() -> *const ArchiveModuleCallbacks {
        &CALLBACKS
    }
}
