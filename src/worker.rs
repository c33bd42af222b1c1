//! The copy-ahead background worker: copies `.ready` WAL files into the
//! archive before the archiver asks for them, several at a time, so that the
//! archiver's call finds the work done. The archiver's callback stays the
//! authority: it confirms what the worker copied, waits for a copy in
//! progress, and copies inline whatever the worker did not.
//!
//! Copies run on plain threads (walarch-core only); this process's main
//! thread alone calls into PostgreSQL: shared memory, latches, logging.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use walarch_core::parallel_copy::{run_parallel, CopyJob};
use walarch_core::pending::ready_files;
use walarch_core::temp_file::process_alive;
use walarch_core::{temp_file, CopyOptions};

use crate::{archive_module, guc, shmem};

pub const WORKER_NAME: &str = "walarch_ext copy-ahead";

/// How long a file whose copy failed is left to the archiver before the
/// worker tries it again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
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
    guc::COPY_AHEAD.get() && guc::archive_directory().is_some() && archiving_through_us()
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
    let me = unsafe { pg_sys::MyProcPid };
    shmem::with(|s| {
        s.worker_pid = me;
        s.worker_latch = unsafe { pg_sys::MyLatch } as usize;
        // Claims of a predecessor killed mid-copy.
        s.release_stale(process_alive, |_| true);
    });
    log!("walarch_ext: copy-ahead worker started");
    let mut swept_dir = None;
    let mut retry_at: HashMap<String, Instant> = HashMap::new();

    loop {
        // wait_latch() reads (and clears) the SIGTERM flag itself.
        if !BackgroundWorker::wait_latch(Some(NAP)) || stopping() {
            break;
        }
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !active() {
            continue;
        }
        let Some(dir) = guc::archive_directory() else {
            continue;
        };
        if swept_dir.as_ref() != Some(&dir) {
            if let Ok(r) = temp_file::sweep(&dir) {
                for n in r.removed {
                    log!(
                        "walarch_ext: removed leftover temporary file \"{}/{}\"",
                        dir.display(),
                        n
                    );
                }
                swept_dir = Some(dir.clone());
            }
        }
        // Copy rounds until nothing is left to copy ahead or we must stop.
        while !stopping() && copy_round(&dir, me, &mut retry_at) {}
    }

    shmem::with(|s| {
        s.worker_pid = 0;
        s.worker_latch = 0;
    });
    log!("walarch_ext: copy-ahead worker exiting");
}

/// One round: claims the waiting files nobody holds, copies them in
/// parallel, records the results. False when there was nothing to do.
fn copy_round(dir: &Path, me: i32, retry_at: &mut HashMap<String, Instant>) -> bool {
    let Ok(ready) = ready_files(Path::new("pg_wal")) else {
        return false;
    };
    let now = Instant::now();
    retry_at.retain(|_, t| *t > now);
    let jobs: Vec<CopyJob> = shmem::with(|s| {
        // Forget confirmations for files the archiver no longer waits on.
        s.release_stale(process_alive, |n| ready.iter().any(|r| r == n));
        ready
            .iter()
            .filter(|n| !retry_at.contains_key(*n))
            .filter(|n| s.begin_worker_copy(n, me))
            .map(|n| CopyJob {
                name: n.clone(),
                source: Path::new("pg_wal").join(n),
            })
            .collect()
    })
    .unwrap_or_default();
    if jobs.is_empty() {
        return false;
    }
    let n = jobs.len();
    set_title(&format!("copying {n} file(s) ahead"));
    let opts = CopyOptions {
        file_mode: archive_module::file_create_mode(),
        ..CopyOptions::default()
    };
    let parallel = guc::PARALLEL_COPIES.get().max(1) as usize;
    run_parallel(
        jobs,
        dir,
        &opts,
        parallel,
        Duration::from_millis(50),
        |r| {
            let result = r
                .result
                .as_ref()
                .map(|o| o.bytes())
                .map_err(|e| e.message.as_str());
            shmem::with(|s| s.finish_worker_copy(&r.name, result));
            match &r.result {
                // The archiver can come and confirm it now.
                Ok(_) => unsafe { pg_sys::PgArchWakeup() },
                Err(e) => {
                    log!(
                        "walarch_ext: copy-ahead of \"{}\" failed, left to the archiver: {}",
                        r.name,
                        e.message
                    );
                    retry_at.insert(r.name.clone(), Instant::now() + RETRY_AFTER);
                }
            }
        },
        stopping,
    );
    set_title("idle");
    true
}

fn set_title(s: &str) {
    if let Ok(c) = std::ffi::CString::new(s) {
        unsafe { pg_sys::set_ps_display(c.as_ptr()) };
    }
}

/// Wakes the worker (from the archiver's callback) if one runs.
pub fn wake() {
    if let Some(latch) = shmem::read(|s| s.worker_latch).filter(|l| *l != 0) {
        // SAFETY: the latch lives in shared memory (PGPROC); SetLatch on a
        // latch whose owner has gone is a no-op.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}
