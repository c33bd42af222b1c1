//! The archiver's side of archiving one file: PostgreSQL's archiver calls
//! the module for one file at a time, and the copy-ahead worker may already
//! have archived it, be copying it, or not have touched it.
//!
//! - archived by the worker: confirmed once it is still in the destination
//!   with the WAL file's length, and counted;
//! - being copied by the worker: waited for (two processes never store the
//!   same file at once), up to `WORKER_WAIT_LIMIT`, after which this attempt
//!   fails and the archiver retries;
//! - otherwise (or without shared memory): stored inline, under a claim that
//!   keeps the worker off it.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use crate::archive_protocol::{archive_file, ArchiveOutcome};
use crate::destination::{Destination, Leftovers};
use crate::error::{ArchiveError, ErrorKind};
use crate::host::Host;
use crate::shared_state::ArchiverClaim;

/// How long the archiver waits for the worker to finish a file it is copying
/// before failing this attempt (the archiver retries).
pub const WORKER_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How often it looks again; the worker also wakes it when a copy ends.
const WORKER_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, PartialEq, Eq)]
pub enum Archived {
    /// The worker had archived it; confirmed.
    CopiedAhead { bytes: u64 },
    /// Stored (or found already stored) by this call.
    Inline(ArchiveOutcome),
}

/// Archives `name` (the WAL file at `source`) for the archiver, coordinating
/// with the copy-ahead worker and recording the statistics. The result is
/// what the callback reports; it never panics.
pub fn archive_one<H: Host>(
    host: &H,
    dest: &dyn Destination,
    name: &str,
    source: &Path,
) -> Result<Archived, ArchiveError> {
    let me = host.pid();
    let deadline = host.now() + WORKER_WAIT_LIMIT;
    loop {
        let claim = host.with_state(|s| s.begin_archiver_copy(name, me, |p| host.alive(p)));
        match claim {
            None | Some(ArchiverClaim::CopyInline) => break,
            Some(ArchiverClaim::CopiedAhead {
                bytes,
                stored_bytes,
            }) => {
                if still_stored(dest, name, source, bytes, stored_bytes) {
                    let now = host.timestamp();
                    host.with_state(|s| s.record_archived(name, bytes, stored_bytes, true, now));
                    host.wake_worker();
                    return Ok(Archived::CopiedAhead { bytes });
                }
                // Gone or changed since: the claim is released; take it on
                // the next turn and store the file again.
            }
            Some(ArchiverClaim::WorkerBusy { pid }) => {
                if host.now() >= deadline {
                    let e = worker_stuck(name, pid);
                    let now = host.timestamp();
                    host.with_state(|s| s.record_failed(name, &e.message, now));
                    return Err(e);
                }
                host.wait(WORKER_POLL);
            }
        }
    }
    // Let the worker start on the files after this one meanwhile.
    host.wake_worker();
    let size = std::fs::metadata(source).map_or(0, |m| m.len());
    host.with_state(|s| s.set_in_flight(name, size));
    let start = host.now();
    // A panic here is a bug, but it must not take the archiver down.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| archive_file(dest, name, source)))
        .unwrap_or_else(|_| {
            Err(ArchiveError::new(
                ErrorKind::Internal,
                format!("internal error while archiving \"{name}\""),
            )
            .with_detail("The file was not archived; the archiver will retry it."))
        });
    let now = host.timestamp();
    let micros = host.now().saturating_duration_since(start).as_micros() as i64;
    host.with_state(|s| {
        s.end_archiver_copy(name);
        match &result {
            Ok(o) => {
                s.record_archived(name, o.bytes(), o.stored_bytes(), false, now);
                s.record_transfer(micros);
            }
            Err(e) => s.record_failed(name, &e.message, now),
        }
    });
    result.map(Archived::Inline)
}

/// The worker's copy is trusted if it is still there, whole: what it stored
/// (one lookup, whatever the form), or, when it found the file already
/// archived (`stored_bytes` 0), the file at its full length.
fn still_stored(
    dest: &dyn Destination,
    name: &str,
    source: &Path,
    bytes: u64,
    stored_bytes: u64,
) -> bool {
    let wal = std::fs::metadata(source).map(|m| m.len()).ok();
    let there = if stored_bytes > 0 {
        dest.stored_size(name).ok().flatten() == Some(stored_bytes)
    } else {
        dest.size(name).ok().flatten() == Some(bytes)
    };
    wal == Some(bytes) && there
}

fn worker_stuck(name: &str, pid: i32) -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Busy,
        format!("WAL file \"{name}\" is still being copied by the copy-ahead worker"),
    )
    .with_detail(format!(
        "Worker PID {pid} has held it for {} s.",
        WORKER_WAIT_LIMIT.as_secs()
    ))
    .with_hint("The archiver retries it; check the archive device if this repeats.")
}

/// Crash leftovers are cleaned once per process and destination: on first
/// use, and again whenever the setting names another destination. A failed
/// attempt (the directory missing right now) is tried again next time.
#[derive(Debug, Default)]
pub struct LeftoverSweep {
    done_for: Option<String>,
}

impl LeftoverSweep {
    pub const fn new() -> Self {
        LeftoverSweep { done_for: None }
    }

    /// What was cleaned, when a sweep ran now.
    pub fn run_once(&mut self, dest: &dyn Destination) -> Option<Leftovers> {
        let key = dest.describe();
        if self.done_for.as_deref() == Some(key.as_str()) {
            return None;
        }
        let r = dest.clean_leftovers().ok()?;
        self.done_for = Some(key);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared_state::SlotState;
    use crate::testing::{pattern, FakeHost, MemoryDestination};

    const A: &str = "000000010000000000000001";
    const WORKER: i32 = 10;

    fn wal(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(A);
        std::fs::write(&p, data).unwrap();
        (d, p)
    }

    #[test]
    fn without_shared_state_it_stores_inline() {
        let (_d, src) = wal(&pattern(1000));
        let host = FakeHost::detached();
        let dest = MemoryDestination::default();
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert!(matches!(
            r,
            Archived::Inline(ArchiveOutcome::Archived { bytes: 1000, .. })
        ));
        assert_eq!(dest.size(A).unwrap(), Some(1000));
    }

    #[test]
    fn an_inline_store_is_timed_and_in_flight_meanwhile() {
        let (_d, src) = wal(&pattern(700));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        archive_one(&host, &dest, A, &src).unwrap();
        let st = host.state();
        assert_eq!(st.stats.transfers, 1);
        assert_eq!(st.bytes_in_flight(), 0);
    }

    #[test]
    fn confirms_what_the_worker_archived_and_counts_it() {
        let (_d, src) = wal(&pattern(1000));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        archive_file(&dest, A, &src).unwrap();
        host.with_state(|s| s.finish_worker_copy(A, Ok((1000, 1000))));
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert_eq!(r, Archived::CopiedAhead { bytes: 1000 });
        let st = host.state();
        assert_eq!(
            (st.stats.archived_count, st.stats.copied_ahead_count),
            (1, 1)
        );
        assert_eq!(st.stats.archived_bytes, 1000);
        assert_eq!(st.slot_state(A), SlotState::Free);
        assert_eq!(host.waits(), 0);
        assert!(host.worker_wakes() >= 1);
    }

    #[test]
    fn waits_for_a_copy_in_progress_then_confirms_it() {
        let (_d, src) = wal(&pattern(2000));
        let dest = MemoryDestination::default();
        let host = FakeHost::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        // The worker finishes during the archiver's third wait.
        let copy = |s: &mut crate::shared_state::ArchiveState, n: u32| {
            if n == 3 {
                archive_file(&dest, A, &src).unwrap();
                s.finish_worker_copy(A, Ok((2000, 2000)));
            }
        };
        host.on_wait(copy);
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert_eq!(r, Archived::CopiedAhead { bytes: 2000 });
        assert_eq!(host.waits(), 3);
        assert_eq!(host.state().stats.failed_count, 0);
    }

    #[test]
    fn a_worker_holding_a_file_too_long_fails_the_attempt_without_copying() {
        let (_d, src) = wal(&pattern(100));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        let e = archive_one(&host, &dest, A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert!(
            e.detail.as_deref().unwrap().contains("Worker PID 10"),
            "{e}"
        );
        assert!(host.elapsed() >= WORKER_WAIT_LIMIT);
        assert!(host.elapsed() < WORKER_WAIT_LIMIT + Duration::from_secs(1));
        assert_eq!(
            dest.size(A).unwrap(),
            None,
            "copied in parallel with the worker"
        );
        let st = host.state();
        assert_eq!(st.stats.failed_count, 1);
        assert_eq!(st.stats.last_failed_wal.as_str(), A);
        assert_eq!(
            st.slot_state(A),
            SlotState::WorkerCopying,
            "the worker's claim stays"
        );
    }

    #[test]
    fn a_worker_copy_that_vanished_is_stored_again() {
        let (_d, src) = wal(&pattern(500));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        host.with_state(|s| {
            s.begin_worker_copy(A, WORKER);
            s.finish_worker_copy(A, Ok((500, 500)));
        });
        // Nothing in the destination (removed by hand since).
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert!(matches!(
            r,
            Archived::Inline(ArchiveOutcome::Archived { .. })
        ));
        assert_eq!(dest.size(A).unwrap(), Some(500));
        let st = host.state();
        assert_eq!(
            (st.stats.archived_count, st.stats.copied_ahead_count),
            (1, 0)
        );
    }

    #[test]
    fn a_wrong_length_is_not_trusted() {
        let (_d, src) = wal(&pattern(500));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        archive_file(&dest, A, &src).unwrap();
        host.with_state(|s| {
            s.begin_worker_copy(A, WORKER);
            s.finish_worker_copy(A, Ok((499, 499)));
        });
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert!(matches!(
            r,
            Archived::Inline(ArchiveOutcome::AlreadyArchived { .. })
        ));
    }

    #[test]
    fn a_dead_workers_claim_is_taken_over_at_once() {
        let (_d, src) = wal(&pattern(300));
        let host = FakeHost::default();
        host.kill(WORKER);
        let dest = MemoryDestination::default();
        host.with_state(|s| s.begin_worker_copy(A, WORKER));
        let r = archive_one(&host, &dest, A, &src).unwrap();
        assert!(matches!(r, Archived::Inline(_)));
        assert_eq!(host.waits(), 0);
        assert_eq!(host.state().slot_state(A), SlotState::Free);
    }

    #[test]
    fn an_inline_failure_is_counted_and_releases_the_claim() {
        let (d, _src) = wal(b"x");
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let e = archive_one(&host, &dest, A, &d.path().join("missing")).unwrap_err();
        assert!(e.message.starts_with("could not open file"), "{e}");
        let st = host.state();
        assert_eq!((st.stats.archived_count, st.stats.failed_count), (0, 1));
        assert_eq!(st.stats.last_error.as_str(), e.message);
        assert_eq!(st.slot_state(A), SlotState::Free);
    }

    #[test]
    fn leftovers_are_swept_once_per_destination() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let mut sweep = LeftoverSweep::default();
        let one = crate::local_directory::LocalDirectory::new(d1.path(), 0o600);
        let two = crate::local_directory::LocalDirectory::new(d2.path(), 0o600);
        assert!(sweep.run_once(&one).is_some());
        assert!(sweep.run_once(&one).is_none());
        assert!(sweep.run_once(&two).is_some());
        let gone = crate::local_directory::LocalDirectory::new(d1.path().join("x"), 0o600);
        assert!(sweep.run_once(&gone).is_none());
        assert!(
            sweep.run_once(&one).is_some(),
            "a new destination is swept again"
        );
    }
}
