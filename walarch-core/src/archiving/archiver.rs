//! The archiver's side of archiving one file: PostgreSQL's archiver calls
//! the module for one file at a time, and the copy-ahead worker may already
//! have archived it, be copying it, or not have touched it.
//!
//! - archived by the worker: trusted without asking the store when the
//!   worker stored it into the destination configured now and the WAL file
//!   is the very file it read (same inode, length and modification time);
//!   otherwise judged again like any file (the store's record decides);
//! - being copied by the worker: waited for (two processes never store the
//!   same file at once), up to `worker_wait` (longer than an upload may
//!   take), after which this attempt fails and the archiver retries;
//! - otherwise (or without shared memory): stored inline, under a claim that
//!   keeps the worker off it, unless the destination is known to be failing
//!   (the circuit breaker is open): then the attempt fails at once.
//!
//! Why the worker's SHA-256 is not compared with the WAL file's: hashing the
//! file again is a full read on the archiver's path, the cost copying ahead
//! takes off it. The worker hashed the file at this path while storing it;
//! PostgreSQL never rewrites a completed WAL file in place, and only removes
//! or recycles it after the archiver has confirmed it. A file of the same
//! name with other content (removed and re-created, a `.partial` of a later
//! promotion) is another inode or modification time, and is then judged
//! against the store's record, which hashes it.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use crate::archiving::archive_protocol::{archive_file, ArchiveOutcome};
use crate::archiving::breaker::{unavailable, DestinationId, Gate};
use crate::archiving::host::Host;
use crate::archiving::shared_state::{ArchiverClaim, Copied, FileId};
use crate::destination::{Destination, Leftovers};
use crate::support::error::{ArchiveError, ErrorKind};

/// The least the archiver waits for the worker to finish a file it is
/// copying before failing this attempt (the archiver retries).
pub const WORKER_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// How often it looks again; the worker also wakes it when a copy ends.
const WORKER_POLL: Duration = Duration::from_millis(10);

/// The destination configured now.
pub struct Target<'a> {
    pub dest: &'a dyn Destination,
    pub id: DestinationId,
    /// The longest one request to it may take, when it has such a limit
    /// (`walarch.s3_request_timeout` for a bucket).
    pub request_timeout: Option<Duration>,
}

/// How long the archiver waits for a worker's copy in progress: a slow but
/// healthy upload (a look-up and the store itself, each up to the request
/// timeout) is not a failure.
pub fn worker_wait(request_timeout: Option<Duration>) -> Duration {
    match request_timeout {
        Some(t) => WORKER_WAIT_LIMIT.max(t * 2 + Duration::from_secs(5)),
        None => WORKER_WAIT_LIMIT,
    }
}

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
    target: &Target<'_>,
    name: &str,
    source: &Path,
) -> Result<Archived, ArchiveError> {
    let dest = target.dest;
    let me = host.pid();
    let wait_limit = worker_wait(target.request_timeout);
    let deadline = host.now() + wait_limit;
    loop {
        let claim = host.with_state(|s| s.begin_archiver_copy(name, me, |p| host.alive(p)));
        match claim {
            None | Some(ArchiverClaim::CopyInline) => break,
            Some(ArchiverClaim::CopiedAhead(copied)) => {
                if trusted(&copied, target.id, source) {
                    let now = host.timestamp();
                    host.with_state(|s| {
                        s.record_archived(name, copied.bytes, copied.stored_bytes, true, now)
                    });
                    host.wake_worker();
                    return Ok(Archived::CopiedAhead {
                        bytes: copied.bytes,
                    });
                }
                // Another destination, or another file: the claim is
                // released; take it on the next turn and judge it again.
            }
            Some(ArchiverClaim::WorkerBusy { pid }) => {
                let e = if host.shutdown_requested() {
                    Some(worker_busy_at_shutdown(name, pid))
                } else if host.now() >= deadline {
                    Some(worker_stuck(name, pid, wait_limit))
                } else {
                    None
                };
                if let Some(e) = e {
                    let now = host.timestamp();
                    host.with_state(|s| s.record_failed(name, &e.message, now));
                    return Err(e);
                }
                host.wait(WORKER_POLL);
            }
        }
    }
    let started = host.timestamp();
    let shutting_down = host.shutdown_requested();
    let gate = host.with_state(|s| {
        if shutting_down {
            s.breaker.gate_at_shutdown(target.id)
        } else {
            s.breaker.gate(target.id, started)
        }
    });
    if let Some(Gate::Open(outage)) = gate {
        let e = unavailable(&dest.describe(), &outage, started);
        host.with_state(|s| {
            s.end_archiver_copy(name);
            s.record_failed(name, &e.message, started);
        });
        return Err(e);
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
                s.breaker.succeeded(target.id, started);
            }
            Err(e) => {
                s.record_failed(name, &e.message, now);
                s.breaker.failed(target.id, started, now, e);
            }
        }
    });
    result.map(Archived::Inline)
}

/// The worker's copy is trusted as it is when it went to the destination
/// configured now and the WAL file is still the file it read.
fn trusted(copied: &Copied, dest: DestinationId, source: &Path) -> bool {
    copied.dest == dest
        && copied.file.size == copied.bytes
        && FileId::of(source) == Some(copied.file)
}

fn worker_stuck(name: &str, pid: i32, waited: Duration) -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Busy,
        format!("WAL file \"{name}\" is still being copied by the copy-ahead worker"),
    )
    .with_detail(format!(
        "Worker PID {pid} has held it for {} s.",
        waited.as_secs()
    ))
    .with_hint("The archiver retries it; check the archive device if this repeats.")
}

fn worker_busy_at_shutdown(name: &str, pid: i32) -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Busy,
        format!("WAL file \"{name}\" is still being copied by the copy-ahead worker"),
    )
    .with_detail(format!(
        "Worker PID {pid} holds it and the server is shutting down: it stays ready for archiving at the next start."
    ))
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
    use crate::archiving::shared_state::SlotState;
    use crate::support::testing::{
        down, here, pattern, target, FakeHost, MemoryDestination, Unreachable,
    };

    const A: &str = "000000010000000000000001";
    const WORKER: i32 = 10;

    fn wal(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(A);
        std::fs::write(&p, data).unwrap();
        (d, p)
    }

    /// The worker's copy of `src` into `dest` (identified as `id`), done.
    fn worker_copied(host: &FakeHost, dest: &dyn Destination, id: DestinationId, src: &Path) {
        let file = FileId::of(src).unwrap();
        host.with_state(|s| {
            assert!(s.begin_worker_copy(A, WORKER));
            s.start_worker_copy(A, file.size);
        });
        let o = archive_file(dest, A, src).unwrap();
        let ArchiveOutcome::Archived { sha256, .. } = o else {
            panic!("{o:?}")
        };
        let copied = Copied {
            bytes: o.bytes(),
            stored_bytes: o.stored_bytes(),
            sha256,
            dest: id,
            file,
        };
        host.with_state(|s| s.finish_worker_copy(A, Ok(copied)));
    }

    #[test]
    fn without_shared_state_it_stores_inline() {
        let (_d, src) = wal(&pattern(1000));
        let host = FakeHost::detached();
        let dest = MemoryDestination::default();
        let r = archive_one(&host, &target(&dest), A, &src).unwrap();
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
        archive_one(&host, &target(&dest), A, &src).unwrap();
        let st = host.state();
        assert_eq!(st.stats.transfers, 1);
        assert_eq!(st.bytes_in_flight_where(|_| true), 0);
    }

    #[test]
    fn trusts_what_the_worker_stored_here_without_asking_the_store() {
        let (_d, src) = wal(&pattern(1000));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        worker_copied(&host, &dest, here(), &src);
        // Gone from the store since: not looked up, so not noticed (the
        // store acknowledged it with its checksum; verify finds a loss).
        dest.remove(A).unwrap();
        let r = archive_one(&host, &target(&dest), A, &src).unwrap();
        assert_eq!(r, Archived::CopiedAhead { bytes: 1000 });
        assert_eq!(dest.size(A).unwrap(), None, "no request was made");
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
    fn a_copy_into_another_destination_is_judged_again() {
        let (_d, src) = wal(&pattern(500));
        let host = FakeHost::default();
        // The worker stored it before a reload named another destination.
        let old = MemoryDestination::default();
        worker_copied(&host, &old, DestinationId::of(&["memory", "old"]), &src);
        let now = MemoryDestination::default();
        let r = archive_one(&host, &target(&now), A, &src).unwrap();
        assert!(matches!(
            r,
            Archived::Inline(ArchiveOutcome::Archived { bytes: 500, .. })
        ));
        assert_eq!(now.size(A).unwrap(), Some(500), "stored where configured");
        let st = host.state();
        assert_eq!(
            (st.stats.archived_count, st.stats.copied_ahead_count),
            (1, 0)
        );
    }

    #[test]
    fn a_copy_of_another_file_of_that_name_is_judged_again() {
        let (_d, src) = wal(&pattern(500));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        worker_copied(&host, &dest, here(), &src);
        // Removed and re-created with other content, same length.
        std::fs::remove_file(&src).unwrap();
        let mut other = pattern(500);
        other[7] ^= 1;
        std::fs::write(&src, &other).unwrap();
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        assert_eq!(host.state().stats.copied_ahead_count, 0);
    }

    #[test]
    fn waits_for_a_copy_in_progress_then_confirms_it() {
        let (_d, src) = wal(&pattern(2000));
        let dest = MemoryDestination::default();
        let file = FileId::of(&src).unwrap();
        let host = FakeHost::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        // The worker finishes during the archiver's third wait.
        let copy = |s: &mut crate::archiving::shared_state::ArchiveState, n: u32| {
            if n == 3 {
                archive_file(&dest, A, &src).unwrap();
                let copied = Copied {
                    bytes: 2000,
                    stored_bytes: 2000,
                    dest: here(),
                    file,
                    ..Copied::default()
                };
                s.finish_worker_copy(A, Ok(copied));
            }
        };
        host.on_wait(copy);
        let r = archive_one(&host, &target(&dest), A, &src).unwrap();
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
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
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
    fn a_slow_upload_is_waited_for_longer_than_the_request_timeout() {
        let timeout = Duration::from_secs(60);
        assert!(worker_wait(Some(timeout)) > timeout * 2);
        assert_eq!(worker_wait(None), WORKER_WAIT_LIMIT);
        assert_eq!(worker_wait(Some(Duration::from_secs(1))), WORKER_WAIT_LIMIT);
        let (_d, src) = wal(&pattern(100));
        let dest = MemoryDestination::default();
        let file = FileId::of(&src).unwrap();
        // The worker's upload ends just before twice the request timeout.
        let finish_at = timeout * 2 - Duration::from_secs(1);
        let host = FakeHost::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        let copy = |s: &mut crate::archiving::shared_state::ArchiveState, n: u32| {
            if WORKER_POLL * n >= finish_at {
                let copied = Copied {
                    bytes: 100,
                    stored_bytes: 100,
                    dest: here(),
                    file,
                    ..Copied::default()
                };
                s.finish_worker_copy(A, Ok(copied));
            }
        };
        host.on_wait(copy);
        let t = Target {
            request_timeout: Some(timeout),
            ..target(&dest)
        };
        let r = archive_one(&host, &t, A, &src).unwrap();
        assert_eq!(r, Archived::CopiedAhead { bytes: 100 });
        assert_eq!(host.state().stats.failed_count, 0);
    }

    #[test]
    fn a_shutdown_ends_the_wait_for_the_worker_at_once() {
        let (_d, src) = wal(&pattern(100));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        host.with_state(|s| assert!(s.begin_worker_copy(A, WORKER)));
        host.request_shutdown();
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy);
        assert!(e.detail.unwrap().contains("shutting down"));
        assert_eq!(host.waits(), 0);
        assert_eq!(dest.size(A).unwrap(), None);
    }

    #[test]
    fn a_dead_workers_claim_is_taken_over_at_once() {
        let (_d, src) = wal(&pattern(300));
        let host = FakeHost::default();
        host.kill(WORKER);
        let dest = MemoryDestination::default();
        host.with_state(|s| s.begin_worker_copy(A, WORKER));
        let r = archive_one(&host, &target(&dest), A, &src).unwrap();
        assert!(matches!(r, Archived::Inline(_)));
        assert_eq!(host.waits(), 0);
        assert_eq!(host.state().slot_state(A), SlotState::Free);
    }

    #[test]
    fn an_inline_failure_is_counted_and_releases_the_claim() {
        let (d, _src) = wal(b"x");
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let e = archive_one(&host, &target(&dest), A, &d.path().join("missing")).unwrap_err();
        assert!(e.message.starts_with("could not open file"), "{e}");
        let st = host.state();
        assert_eq!((st.stats.archived_count, st.stats.failed_count), (0, 1));
        assert_eq!(st.stats.last_error.as_str(), e.message);
        assert_eq!(st.slot_state(A), SlotState::Free);
        assert!(!st.breaker.is_open(here()), "not the store's failure");
    }

    #[test]
    fn while_the_destination_fails_attempts_fail_at_once_until_the_probe() {
        let (_d, src) = wal(&pattern(300));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        // The worker's upload timed out just now.
        host.with_state(|s| s.breaker.failed(here(), 0, 0, &down()));
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(
            e.message
                .starts_with("archive destination \"memory\" is unavailable since 2000-01-01"),
            "{e}"
        );
        assert!(
            e.detail.as_deref().unwrap().contains("nothing is lost"),
            "{e}"
        );
        assert_eq!(dest.size(A).unwrap(), None, "no request was made");
        let st = host.state();
        assert_eq!(st.stats.failed_count, 1);
        assert_eq!(st.slot_state(A), SlotState::Free, "the claim is released");
        // The archiver's three tries, a second apart: all fail at once.
        for _ in 0..2 {
            host.advance(Duration::from_secs(1));
            assert!(archive_one(&host, &target(&dest), A, &src).is_err());
        }
        assert_eq!(dest.size(A).unwrap(), None);
        // The back-off has passed: this attempt is the probe; it succeeds
        // and closes the breaker.
        host.advance(crate::archiving::breaker::FIRST_BACKOFF);
        let r = archive_one(&host, &target(&dest), A, &src).unwrap();
        assert!(matches!(r, Archived::Inline(_)));
        assert!(!host.state().breaker.is_open(here()));
    }

    #[test]
    fn at_shutdown_the_archiver_never_takes_the_probe() {
        let (_d, src) = wal(&pattern(300));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        host.with_state(|s| s.breaker.failed(here(), 0, 0, &down()));
        host.advance(crate::archiving::breaker::FIRST_BACKOFF * 2);
        // The probe is due, but the server is shutting down (the archiver's
        // last round): refused at once, no request made.
        host.request_shutdown();
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert_eq!(dest.size(A).unwrap(), None, "no request was made");
        assert!(host.state().breaker.is_open(here()));
    }

    #[test]
    fn an_unavailable_store_opens_the_breaker_a_refusal_does_not() {
        let (_d, src) = wal(&pattern(300));
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        // A different file is already archived under the name: a conflict.
        dest.store_new_bytes(A, b"other").unwrap();
        let e = archive_one(&host, &target(&dest), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(!host.state().breaker.is_open(here()));
        // A destination that times out.
        let failing = Unreachable;
        let e = archive_one(&host, &target(&failing), A, &src).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(host.state().breaker.is_open(here()));
        // Another destination configured: not held back by this one's outage.
        let elsewhere = Target {
            id: DestinationId::of(&["memory", "elsewhere"]),
            ..target(&dest)
        };
        std::fs::write(&src, b"x").unwrap();
        let fresh = MemoryDestination::default();
        let elsewhere = Target {
            dest: &fresh,
            ..elsewhere
        };
        assert!(archive_one(&host, &elsewhere, A, &src).is_ok());
    }

    #[test]
    fn leftovers_are_swept_once_per_destination() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let mut sweep = LeftoverSweep::default();
        let one = crate::destination::local_directory::LocalDirectory::new(d1.path(), 0o600);
        let two = crate::destination::local_directory::LocalDirectory::new(d2.path(), 0o600);
        assert!(sweep.run_once(&one).is_some());
        assert!(sweep.run_once(&one).is_none());
        assert!(sweep.run_once(&two).is_some());
        let gone =
            crate::destination::local_directory::LocalDirectory::new(d1.path().join("x"), 0o600);
        assert!(sweep.run_once(&gone).is_none());
        assert!(
            sweep.run_once(&one).is_some(),
            "a new destination is swept again"
        );
    }
}
