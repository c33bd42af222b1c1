//! The host the core's coordination runs on (`walarch_core::host::Host`):
//! PostgreSQL shared memory behind one LWLock, this process's latch, and
//! the latches of the worker and the archiver.

use std::time::{Duration, Instant};

use pgrx::pg_sys;
use walarch_core::host::Host;
use walarch_core::shared_state::ArchiveState;
use walarch_core::temp_file::process_alive;
use walarch_core::time::now_timestamptz;

use crate::shmem;

pub struct PgHost;

impl Host for PgHost {
    fn with_state<R>(&self, f: impl FnOnce(&mut ArchiveState) -> R) -> Option<R> {
        shmem::with(f)
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
        if let Some(latch) = shmem::read(|s| s.worker_latch).filter(|l| *l != 0) {
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
}
