//! The shared state (`walarch_core::archiving::shared_state::ArchiveState`) in
//! PostgreSQL shared memory, behind one LWLock, and its persistence: written
//! by the archiver when it exits, read once by the postmaster at start-up if
//! the cluster was shut down cleanly, discarded after a crash (as PostgreSQL
//! does with its own statistics). `PgHost` is what the core's coordination
//! runs on: this state, this process's latch, and the latches of the worker
//! and the archiver.

use std::path::Path;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};
use walarch_core::archiving::budget::{self, DroppedRange};
use walarch_core::archiving::host::{process_alive, Host, Note};
use walarch_core::archiving::shared_state::ArchiveState;
use walarch_core::archiving::stats_file::{self, Taken};
use walarch_core::wal::time::now_timestamptz;

pub struct Shared(pub ArchiveState);

impl Default for Shared {
    fn default() -> Self {
        Shared(ArchiveState::new(now_timestamptz()))
    }
}

// SAFETY: plain data, no pointers (the latch is stored as an integer).
unsafe impl PGRXSharedMemory for Shared {}

// SAFETY: the name is unique to this extension and the lock is initialised
// by pg_shmem_init! in the postmaster before any process uses it.
static STATE: PgLwLock<Shared> = unsafe { PgLwLock::new(c"walarch_ext") };

/// Set in the postmaster while preloading; forked children inherit it. False
/// in a process that loaded the library any other way (no shared memory).
static mut ATTACHED: bool = false;

/// Relative to the data directory, beside PostgreSQL's own statistics.
const STATS_FILE: &str = "pg_stat/walarch_ext.stat";
/// The ranges dropped by walarch.max_backlog whose marker is not yet in the
/// archive. Unlike the statistics, kept across a crash: no drop may go
/// unrecorded.
const DROPPED_FILE: &str = "pg_stat/walarch_ext.dropped";

static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

/// Requests the shared memory; only in the postmaster while it preloads.
// pgrx's macro tests the pg13/pg14 features, which this crate does not have
// (archive modules need PostgreSQL 15).
#[allow(unexpected_cfgs)]
pub fn init_in_postmaster() {
    pg_shmem_init!(STATE);
    // SAFETY: single-threaded postmaster start-up; chaining the hook that
    // pg_shmem_init! just installed, so the state exists when ours runs.
    unsafe {
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(restore_stats);
        ATTACHED = true;
    }
}

pub fn attached() -> bool {
    // SAFETY: written once before any child process exists.
    unsafe { ATTACHED }
}

/// Runs `f` on the state under the exclusive lock; `None` without shared
/// memory.
pub fn with<R>(f: impl FnOnce(&mut ArchiveState) -> R) -> Option<R> {
    if !attached() {
        return None;
    }
    let mut g = STATE.exclusive();
    Some(f(&mut g.0))
}

/// Runs `f` on the state under the shared lock.
pub fn read<R>(f: impl FnOnce(&ArchiveState) -> R) -> Option<R> {
    if !attached() {
        return None;
    }
    let g = STATE.share();
    Some(f(&g.0))
}

#[pg_guard]
unsafe extern "C-unwind" fn restore_stats() {
    // SAFETY: chaining the hook that was installed before ours, in the
    // postmaster's single-threaded start-up.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
    }
    // The postmaster's working directory is the data directory.
    match budget::load(Path::new(DROPPED_FILE)) {
        Ok(pending) if !pending.is_empty() => {
            let n = pending.len();
            let mut g = STATE.exclusive();
            for r in pending.into_iter().take(budget::MAX_PENDING) {
                let _ = g.0.budget.pending.push(r);
            }
            log!("walarch_ext: {n} range(s) of WAL dropped by walarch.max_backlog wait to be recorded in the archive");
        }
        Ok(_) => {}
        // Left in place for the next start and for whoever investigates.
        Err(e) => warning!(
            "walarch_ext: could not read \"{DROPPED_FILE}\": {e}; the WAL ranges it lists as dropped will not be marked in the archive"
        ),
    }
    let file = Path::new(STATS_FILE);
    match stats_file::shut_down_cleanly(Path::new(".")) {
        Ok(true) => match stats_file::take(file) {
            Ok(Taken::Stats(stats)) => {
                STATE.exclusive().0.stats = *stats;
                log!("walarch_ext: restored archive statistics from \"{STATS_FILE}\"");
            }
            Ok(Taken::Absent) => {}
            // An older or foreign format is never half-read.
            Ok(Taken::Unusable(why)) => {
                log!("walarch_ext: discarded statistics file \"{STATS_FILE}\": {why}")
            }
            Err(e) => warning!("walarch_ext: could not read \"{STATS_FILE}\": {e}"),
        },
        // After a crash the saved counts are stale: start from zero.
        _ => {
            let _ = stats_file::discard(file);
        }
    }
}

/// Saves the statistics for the next start. Called when the archiver exits:
/// at a clean shutdown it is the last process that counts anything.
pub fn save_stats() {
    let Some(stats) = read(|s| s.stats.clone()) else {
        return;
    };
    if let Err(e) = stats_file::write(Path::new(STATS_FILE), &stats) {
        warning!("walarch_ext: could not write \"{STATS_FILE}\": {e}");
    }
}

pub struct PgHost;

impl Host for PgHost {
    fn with_state<R>(&self, f: impl FnOnce(&mut ArchiveState) -> R) -> Option<R> {
        with(f)
    }

    fn wait(&self, timeout: Duration) {
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as std::ffi::c_long;
        // SAFETY: main thread; MyLatch is this process's own latch.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                ms,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }

    fn wake_worker(&self) {
        if let Some(latch) = read(|s| s.worker_latch).filter(|l| *l != 0) {
            // SAFETY: the latch lives in shared memory (PGPROC); SetLatch on
            // a latch whose owner has gone is a no-op.
            unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
        }
    }

    fn wake_archiver(&self) {
        // SAFETY: reads the archiver's PGPROC from shared memory and sets
        // its latch; safe from any process attached to shared memory.
        unsafe { pg_sys::PgArchWakeup() };
    }

    fn pid(&self) -> i32 {
        // SAFETY: set once at process start.
        unsafe { pg_sys::MyProcPid }
    }

    fn alive(&self, pid: i32) -> bool {
        process_alive(pid)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn timestamp(&self) -> i64 {
        now_timestamptz()
    }

    fn shutdown_requested(&self) -> bool {
        // SAFETY: a sig_atomic_t flag set by the SIGTERM handler.
        let sigterm = unsafe { pg_sys::ShutdownRequestPending != 0 };
        sigterm || crate::archive_module::final_round()
    }

    fn save_dropped(&self, pending: &[DroppedRange]) -> std::io::Result<()> {
        budget::save(Path::new(DROPPED_FILE), pending)
    }

    fn log(&self, level: Note, message: &str) {
        match level {
            Note::Log => log!("{message}"),
            Note::Warning => warning!("{message}"),
        }
    }
}
