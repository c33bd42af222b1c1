//! The copy-ahead background worker: copies `.ready` WAL files into the
//! archive before the archiver asks for them, several at a time, so that the
//! archiver's call finds the work done. The archiver's callback stays the
//! authority: it confirms what the worker copied, waits for a copy in
//! progress, and copies inline whatever the worker did not.
//!
//! Copies run on plain threads (walarch-core only); this process's main
//! thread alone calls into PostgreSQL: shared memory, latches, logging.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use walarch_core::archiving::archive_protocol::ArchiveOutcome;
use walarch_core::archiving::archiver::LeftoverSweep;
use walarch_core::archiving::copy_ahead::CopyAhead;
use walarch_core::archiving::host::process_alive;

use crate::shmem::{self, PgHost};
use crate::{archive_module, guc, warnings};

pub const WORKER_NAME: &str = "walarch_ext copy-ahead";

/// The fallback timer; the archiver's callback sets our latch.
const NAP: Duration = Duration::from_millis(500);

/// Set once SIGTERM arrived. pgrx's `sigterm_received()` clears its flag
/// when read, so every check goes through `stopping()`, which remembers.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn stopping() -> bool {
    if BackgroundWorker::sigterm_received() {
        STOPPING.store(true, Ordering::SeqCst);
    }
    STOPPING.load(Ordering::SeqCst)
}

pub fn register() {
    BackgroundWorkerBuilder::new(WORKER_NAME)
        .set_type(WORKER_NAME)
        .set_library("walarch_ext")
        .set_function("walarch_copy_ahead_main")
        .enable_shmem_access(None)
        .set_restart_time(Some(Duration::from_secs(1)))
        .load();
}

/// Whether copying ahead makes sense now: enabled, configured, archiving
/// through this module, not in recovery.
fn active() -> bool {
    guc::COPY_AHEAD.get() && archiving_through_us()
}

fn archiving_through_us() -> bool {
    // SAFETY: reading settings in the main thread.
    unsafe {
        if pg_sys::XLogArchiveMode == pg_sys::ArchiveMode::ARCHIVE_MODE_OFF as i32
            || pg_sys::RecoveryInProgress()
        {
            return false;
        }
        let lib = pg_sys::GetConfigOption(c"archive_library".as_ptr(), true, false);
        !lib.is_null() && std::ffi::CStr::from_ptr(lib).to_bytes() == b"walarch_ext"
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn walarch_copy_ahead_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: main thread; this process's own PID and latch.
    let (me, latch) = unsafe { (pg_sys::MyProcPid, pg_sys::MyLatch as usize) };
    shmem::with(|s| s.worker_started(me, latch, process_alive));
    // Uploads in flight give up when the worker must stop.
    walarch_s3::runtime::set_interrupt_check(|| {
        // SAFETY: reads of flags and of a pid set at start-up, from any thread.
        STOPPING.load(Ordering::SeqCst) || unsafe { libc::getppid() != pg_sys::PostmasterPid }
    });
    log!("walarch_ext: copy-ahead worker started");
    let mut sweep = LeftoverSweep::new();
    let mut copy_ahead = CopyAhead::new("pg_wal");

    loop {
        // wait_latch() reads (and clears) the SIGTERM flag itself.
        if !BackgroundWorker::wait_latch(Some(NAP)) || stopping() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            // SAFETY: main thread, outside any transaction, as the GUC
            // machinery expects on SIGHUP.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !active() {
            continue;
        }
        let Ok(configured) = guc::configured() else {
            continue;
        };
        let (dest, id) = (&*configured.dest, configured.id);
        // Cleaning needs the store: not while it is known to be failing.
        if !shmem::read(|s| s.breaker.is_open(id)).unwrap_or(false) {
            if let Some(r) = sweep.run_once(dest) {
                warnings::leftovers_removed(dest, &r);
            }
        }
        let view = guc::archive_view(dest);
        let form = guc::stored_form_settings();
        let dest = &view;
        // A reload between files that turns copying ahead off or names
        // another destination ends the round: no upload starts to the old
        // one. So does a change of the form new files take (compression,
        // the recipients file's keys, which are read between files as the
        // archiver reads them at each call): the next round stores files as
        // the settings now say. Remembered, so the rounds end too.
        let mut moved = false;
        let mut should_stop = || {
            if !moved && BackgroundWorker::sighup_received() {
                // SAFETY: main thread, outside any transaction.
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
                moved = !active() || guc::configured().map(|c| c.id) != Ok(id);
            }
            if !moved && guc::stored_form_settings() != form {
                moved = true;
            }
            // SAFETY: reads this process's parent and a pid set at start-up.
            let orphaned = unsafe { libc::getppid() != pg_sys::PostmasterPid };
            if orphaned {
                STOPPING.store(true, Ordering::SeqCst);
            }
            moved || stopping()
        };
        // Rounds until nothing is left to copy ahead or we must stop.
        while !should_stop() {
            let files = copy_ahead.plan(&PgHost, id);
            if files.is_empty() {
                break;
            }
            set_title(&format!("copying {} file(s) ahead", files.len()));
            let parallel = guc::PARALLEL_COPIES.get().max(1) as usize;
            copy_ahead.copy(
                &PgHost,
                dest,
                id,
                files,
                parallel,
                |name, result| match result {
                    Err(e) => log!(
                        "walarch_ext: copy-ahead of \"{name}\" failed, left to the archiver: {}",
                        e.message
                    ),
                    Ok(ArchiveOutcome::AlreadyArchived {
                        repaired_record: Some(w),
                        ..
                    }) => warnings::warn(w, &archive_module::archiving(name, dest)),
                    Ok(_) => {}
                },
                &mut should_stop,
            );
            set_title("idle");
        }
    }

    shmem::with(|s| s.worker_stopped());
    log!("walarch_ext: copy-ahead worker exiting");
}

fn set_title(s: &str) {
    if let Ok(c) = std::ffi::CString::new(s) {
        // SAFETY: main thread; PostgreSQL copies the string.
        unsafe { pg_sys::set_ps_display(c.as_ptr()) };
    }
}
