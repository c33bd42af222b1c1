//! What the coordination between the archiver's callback and the copy-ahead
//! worker needs from the process it runs in. The extension implements it
//! with PostgreSQL shared memory, latches and `MyProcPid`; the unit tests
//! with a fake that runs a virtual clock.

use std::time::{Duration, Instant};

use crate::archiving::budget::DroppedRange;
use crate::archiving::shared_state::ArchiveState;

pub trait Host {
    /// Runs `f` on the shared state under its lock; `None` when this process
    /// has none (the library was not preloaded): nothing to coordinate with.
    fn with_state<R>(&self, f: impl FnOnce(&mut ArchiveState) -> R) -> Option<R>;
    /// Sleeps until woken or `timeout` passes. Keep `timeout` short: the
    /// host ends the process on postmaster death, but a pending shutdown is
    /// noticed only between waits.
    fn wait(&self, timeout: Duration);
    /// Tells the copy-ahead worker there may be work.
    fn wake_worker(&self);
    /// Tells the archiver a file it may ask for is ready.
    fn wake_archiver(&self);
    /// This process's PID, as recorded in claims.
    fn pid(&self) -> i32;
    /// Whether the process with this PID still runs.
    fn alive(&self, pid: i32) -> bool;
    fn now(&self) -> Instant;
    /// Now as a PostgreSQL `TimestampTz`, for the statistics and the
    /// circuit breaker (shared between processes).
    fn timestamp(&self) -> i64;
    /// Whether this process was asked to stop: a wait must then end at once.
    fn shutdown_requested(&self) -> bool;
    /// Persists the dropped ranges whose marker is not yet in the archive
    /// (`walarch.max_backlog`), durably: a drop is reported only after this
    /// succeeded. Only the archiver calls it.
    fn save_dropped(&self, pending: &[DroppedRange]) -> std::io::Result<()>;
    /// A line for the server log.
    fn log(&self, level: Note, message: &str);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    Log,
    Warning,
}

/// True when a process with this PID exists (signal 0).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
