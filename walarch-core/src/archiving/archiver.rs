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
use crate::archiving::archive_status::ready_with_sizes;
use crate::archiving::breaker::{unavailable, DestinationId, Gate};
use crate::archiving::budget::{self, Budget, Decision, DroppedRange};
use crate::archiving::host::{Host, Note};
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
    /// `walarch.max_backlog`, when set.
    pub budget: Option<Budget>,
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
    /// Reported archived without being stored: the backlog exceeded
    /// `walarch.max_backlog` while the destination was failing.
    Dropped(Box<Dropped>),
}

/// A drop, for the WARNING that names it.
#[derive(Debug, PartialEq, Eq)]
pub struct Dropped {
    pub bytes: u64,
    /// The WAL waiting before the drop, this file included.
    pub backlog: u64,
    pub max_backlog: u64,
    /// The range the file is now part of.
    pub range: DroppedRange,
    /// Since when the destination has been failing.
    pub failing_since: i64,
    /// Why the destination fails: this attempt's error, or the failure
    /// behind the circuit breaker's refusal.
    pub cause: String,
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
                        s.record_archived(
                            name,
                            copied.bytes,
                            copied.stored_bytes,
                            copied.stored_as,
                            true,
                            now,
                        )
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
    // Why the destination fails, for a drop's record: behind a refusal by
    // the breaker, the failure that opened it.
    let mut cause = None;
    let (result, attempted) = match gate {
        Some(Gate::Open(outage)) => {
            let e = unavailable(&dest.describe(), &outage, started);
            cause = Some(format!(
                "{}; last failure: {}",
                e.message, outage.last_error
            ));
            (Err(e), false)
        }
        _ => {
            // Let the worker start on the files after this one meanwhile.
            host.wake_worker();
            let size = std::fs::metadata(source).map_or(0, |m| m.len());
            host.with_state(|s| s.set_in_flight(name, size));
            let start = host.now();
            // The markers of dropped ranges go in before any later file.
            let result = mark_dropped_ranges(host, dest).and_then(|()| {
                // A panic here is a bug, but it must not take the archiver down.
                std::panic::catch_unwind(AssertUnwindSafe(|| archive_file(dest, name, source)))
                    .unwrap_or_else(|_| {
                        Err(ArchiveError::new(
                            ErrorKind::Internal,
                            format!("internal error while archiving \"{name}\""),
                        )
                        .with_detail("The file was not archived; the archiver will retry it."))
                    })
            });
            let micros = host.now().saturating_duration_since(start).as_micros() as i64;
            if result.is_ok() {
                host.with_state(|s| s.record_transfer(micros));
            }
            (result, true)
        }
    };
    let now = host.timestamp();
    match &result {
        Ok(o) => {
            host.with_state(|s| {
                s.end_archiver_copy(name);
                let stored_as = matches!(o, ArchiveOutcome::Archived { .. })
                    .then(|| target.dest.new_form(name));
                s.record_archived(name, o.bytes(), o.stored_bytes(), stored_as, false, now);
                s.breaker.succeeded(target.id, started);
                s.budget.streak.succeeded(target.id);
            });
        }
        Err(e) => {
            let dest_failed = budget::destination_error(e, source);
            host.with_state(|s| {
                if attempted {
                    s.breaker.failed(target.id, started, now, e);
                }
                if dest_failed {
                    s.budget.streak.failed(target.id, now);
                }
            });
            if dest_failed {
                let cause = cause.unwrap_or_else(|| e.message.clone());
                if let Some(d) = try_drop(host, target, name, source, &cause, now) {
                    return Ok(Archived::Dropped(Box::new(d)));
                }
            }
            host.with_state(|s| {
                s.end_archiver_copy(name);
                s.record_failed(name, &e.message, now);
            });
        }
    }
    result.map(Archived::Inline)
}

/// Stores the marker of every dropped range not yet in the archive; an
/// error when one could not be stored (the destination still fails).
fn mark_dropped_ranges<H: Host>(host: &H, dest: &dyn Destination) -> Result<(), ArchiveError> {
    let pending: Vec<DroppedRange> = host
        .with_state(|s| s.budget.pending.to_vec())
        .unwrap_or_default();
    if pending.is_empty() {
        return Ok(());
    }
    let (done, err) = budget::store_markers(dest, &pending);
    if !done.is_empty() {
        let left = host
            .with_state(|s| {
                s.budget.marked(&done);
                s.budget.pending.to_vec()
            })
            .unwrap_or_default();
        for r in &done {
            host.log(
                Note::Log,
                &format!(
                    "walarch_ext: stored \"{}\": WAL {} was dropped by walarch.max_backlog",
                    dest.location(&r.marker_name()),
                    r.describe()
                ),
            );
        }
        // Harmless: a marker listed again is found stored at the next start.
        if let Err(e) = host.save_dropped(&left) {
            host.log(
                Note::Warning,
                &format!("walarch_ext: could not update the list of dropped WAL ranges: {e}"),
            );
        }
    }
    err.map_or(Ok(()), Err)
}

/// The failed attempt on `name` is turned into a drop when the budget's
/// rule says so (see `budget`), recorded durably first.
fn try_drop<H: Host>(
    host: &H,
    target: &Target<'_>,
    name: &str,
    source: &Path,
    cause: &str,
    now: i64,
) -> Option<Dropped> {
    let b = target.budget.filter(|b| b.max_backlog > 0)?;
    if !budget::droppable(name) {
        return None;
    }
    let failing_since = host
        .with_state(|s| {
            let st = &s.budget.streak;
            st.confirmed(target.id, now)
                .then(|| st.since(target.id))
                .flatten()
        })
        .flatten()?;
    let ready = ready_with_sizes(source.parent()?).ok()?;
    let Decision::Drop { backlog } = budget::decide(&b, name, &ready, true) else {
        return None;
    };
    let bytes = ready.iter().find(|(n, _)| n == name).map_or(0, |(_, s)| *s);
    let recorded = host.with_state(|s| {
        let before = s.budget.pending.clone();
        let range = s
            .budget
            .record_drop(name, b.segment_size, bytes, now, cause);
        (before, range, s.budget.pending.to_vec())
    })?;
    let (before, range, pending) = recorded;
    let range = match range {
        Ok(r) => r,
        Err(budget::TooManyRanges) => {
            host.log(
                Note::Warning,
                &format!(
                    "walarch_ext: not dropping \"{name}\" although the backlog exceeds walarch.max_backlog: {} dropped ranges already wait to be recorded in the archive",
                    budget::MAX_PENDING
                ),
            );
            return None;
        }
    };
    // Never a drop that is not recorded.
    if let Err(io) = host.save_dropped(&pending) {
        host.with_state(|s| s.budget.pending = before);
        host.log(
            Note::Warning,
            &format!("walarch_ext: not dropping \"{name}\": could not record the drop: {io}"),
        );
        return None;
    }
    host.with_state(|s| {
        s.end_archiver_copy(name);
        s.record_dropped(name, bytes, now);
    });
    Some(Dropped {
        bytes,
        backlog,
        max_backlog: b.max_backlog,
        range,
        failing_since,
        cause: cause.to_string(),
    })
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
            stored_as: Some(dest.new_form(A)),
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

    mod budget {
        use super::*;
        use crate::archiving::budget::{Budget, CONFIRM_FAILING};

        const SEG_SIZE: u64 = 16 << 20;

        fn seg(n: u64) -> String {
            crate::wal::walname::segment_file_name(1, n, SEG_SIZE)
        }

        /// A pg_wal with segments 1..=n waiting, 1000 bytes each (and a
        /// history file first when asked).
        fn pg_wal(n: u64, history: bool) -> tempfile::TempDir {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir(d.path().join("archive_status")).unwrap();
            let mut names: Vec<String> = (1..=n).map(seg).collect();
            if history {
                names.push("00000002.history".into());
            }
            for f in names {
                std::fs::write(d.path().join(&f), pattern(1000)).unwrap();
                std::fs::write(d.path().join(format!("archive_status/{f}.ready")), b"").unwrap();
            }
            d
        }

        /// What PostgreSQL's archiver does after a success: `.ready` -> `.done`.
        fn done(wal: &Path, name: &str) {
            let st = wal.join("archive_status");
            std::fs::rename(
                st.join(format!("{name}.ready")),
                st.join(format!("{name}.done")),
            )
            .unwrap();
        }

        fn with_budget<'a>(dest: &'a dyn Destination, bytes: u64) -> Target<'a> {
            Target {
                budget: Some(Budget {
                    max_backlog: bytes,
                    segment_size: SEG_SIZE,
                }),
                ..target(dest)
            }
        }

        /// The archiver's turn on `name`: archived (dropped or stored) or not.
        fn call(
            host: &FakeHost,
            t: &Target<'_>,
            wal: &Path,
            name: &str,
        ) -> Result<Archived, ArchiveError> {
            let r = archive_one(host, t, name, &wal.join(name));
            if r.is_ok() {
                done(wal, name);
            }
            r
        }

        #[test]
        fn over_budget_while_failing_the_oldest_are_dropped_until_under_it_then_marked() {
            let wal = pg_wal(10, false);
            let w = wal.path();
            let host = FakeHost::default();
            let down = Unreachable;
            // 10 000 bytes waiting, a budget of 5 000.
            let t = with_budget(&down, 5000);
            // The first failure is a one-off: nothing dropped.
            assert!(call(&host, &t, w, &seg(1)).is_err());
            host.advance(CONFIRM_FAILING / 2);
            assert!(call(&host, &t, w, &seg(1)).is_err(), "not yet confirmed");
            host.advance(CONFIRM_FAILING / 2);
            // Failing for CONFIRM_FAILING with no success: the oldest go.
            let mut dropped = vec![];
            for n in 1..=10 {
                match call(&host, &t, w, &seg(n)) {
                    Ok(Archived::Dropped(d)) => dropped.push(*d),
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::Unavailable);
                        break;
                    }
                }
            }
            assert_eq!(dropped.len(), 5, "down to the budget, not below");
            let last = dropped.last().unwrap();
            assert_eq!(last.backlog, 6000);
            assert_eq!(last.max_backlog, 5000);
            assert_eq!(last.failing_since, 0);
            assert_eq!(
                (last.range.first.as_str(), last.range.last.as_str()),
                (&*seg(1), &*seg(5))
            );
            assert_eq!((last.range.files, last.range.bytes), (5, 5000));
            assert!(
                last.range.reason.contains("timed out"),
                "{:?}",
                last.range.reason
            );
            // Recorded before being reported: persisted, counted apart.
            assert_eq!(host.saved_dropped().unwrap(), vec![last.range.clone()]);
            let st = host.state();
            assert_eq!(
                (
                    st.stats.dropped_count,
                    st.stats.dropped_bytes,
                    st.stats.archived_count
                ),
                (5, 5000, 0)
            );
            assert_eq!(st.stats.last_dropped_wal.as_str(), seg(5));
            assert_eq!(st.stats.failed_count, 3, "the failures before and after");
            assert_eq!(st.slot_state(&seg(5)), SlotState::Free);
            // More WAL arrives: over budget again, the oldest goes.
            std::fs::write(w.join(seg(11)), pattern(1000)).unwrap();
            std::fs::write(w.join(format!("archive_status/{}.ready", seg(11))), b"").unwrap();
            host.advance(Duration::from_secs(1));
            let r = call(&host, &t, w, &seg(6)).unwrap();
            let Archived::Dropped(d) = r else {
                panic!("{r:?}")
            };
            assert_eq!(d.range.files, 6, "the same range, extended");

            // The store is back: the marker goes in first, then the file.
            let back = MemoryDestination::default();
            let t = with_budget(&back, 5000);
            host.advance(Duration::from_secs(120));
            let r = call(&host, &t, w, &seg(7)).unwrap();
            assert!(
                matches!(r, Archived::Inline(ArchiveOutcome::Archived { .. })),
                "{r:?}"
            );
            let marker = format!("DROPPED.{}-{}", seg(1), seg(6));
            assert!(back.size(&marker).unwrap().is_some(), "{:?}", back.list());
            assert!(back.size(&seg(6)).unwrap().is_none());
            assert_eq!(host.saved_dropped().unwrap(), vec![]);
            assert!(
                host.logged().iter().any(|l| l.contains(&marker)),
                "{:?}",
                host.logged()
            );
            let st = host.state();
            assert!(!st.budget.has_pending());
            assert_eq!(st.stats.archived_count, 1);
            // Over budget still, but the destination takes files: kept.
            assert!(matches!(
                call(&host, &t, w, &seg(8)).unwrap(),
                Archived::Inline(_)
            ));
            assert_eq!(host.state().stats.dropped_count, 6);
        }

        #[test]
        fn a_healthy_destination_never_drops_however_large_the_backlog() {
            let wal = pg_wal(10, false);
            let w = wal.path();
            let host = FakeHost::default();
            let dest = MemoryDestination::default();
            let t = with_budget(&dest, 1);
            for n in 1..=10 {
                host.advance(CONFIRM_FAILING);
                assert!(matches!(
                    call(&host, &t, w, &seg(n)).unwrap(),
                    Archived::Inline(_)
                ));
            }
            assert_eq!(dest.list().unwrap().len(), 10);
            assert_eq!(host.state().stats.dropped_count, 0);
            assert_eq!(host.saved_dropped(), None);
        }

        #[test]
        fn a_success_between_failures_restarts_the_count() {
            let wal = pg_wal(10, false);
            let w = wal.path();
            let host = FakeHost::default();
            let down = Unreachable;
            let up = MemoryDestination::default();
            assert!(call(&host, &t_(&down), w, &seg(1)).is_err());
            host.advance(CONFIRM_FAILING - Duration::from_secs(1));
            // The worker stored a file meanwhile: the destination takes files.
            host.with_state(|s| s.budget.streak.succeeded(here()));
            host.advance(Duration::from_secs(2));
            let e = call(&host, &t_(&down), w, &seg(1)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unavailable);
            let _ = up;
            assert_eq!(host.state().stats.dropped_count, 0);

            fn t_(d: &dyn Destination) -> Target<'_> {
                with_budget(d, 1)
            }
        }

        #[test]
        fn off_by_default_and_never_for_history_or_a_later_file() {
            let wal = pg_wal(4, true);
            let w = wal.path();
            let host = FakeHost::default();
            let down = Unreachable;
            assert!(call(&host, &target(&down), w, &seg(1)).is_err());
            host.advance(CONFIRM_FAILING * 2);
            // No budget: the file stays, however long the outage.
            assert!(call(&host, &target(&down), w, &seg(1)).is_err());
            let t = with_budget(&down, 1);
            assert!(call(&host, &t, w, "00000002.history").is_err());
            assert!(call(&host, &t, w, &seg(2)).is_err(), "not the oldest");
            assert!(matches!(
                call(&host, &t, w, &seg(1)).unwrap(),
                Archived::Dropped(_)
            ));
            assert_eq!(host.state().stats.dropped_count, 1);
        }

        #[test]
        fn an_unwritable_directory_is_a_failing_destination_an_unreadable_wal_file_is_not() {
            let wal = pg_wal(3, false);
            let w = wal.path();
            let host = FakeHost::default();
            let gone = crate::destination::local_directory::LocalDirectory::new(
                w.join("no-such-archive"),
                0o600,
            );
            let t = with_budget(&gone, 1);
            let e = call(&host, &t, w, &seg(1)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Io, "{e}");
            host.advance(CONFIRM_FAILING);
            // The WAL file itself unreadable: the destination is not to blame.
            let missing = w.join("elsewhere").join(seg(1));
            assert!(archive_one(&host, &t, &seg(1), &missing).is_err());
            assert_eq!(host.state().stats.dropped_count, 0);
            let r = call(&host, &t, w, &seg(1)).unwrap();
            assert!(matches!(r, Archived::Dropped(_)), "{r:?}");
        }

        #[test]
        fn a_drop_that_cannot_be_recorded_does_not_happen() {
            let wal = pg_wal(3, false);
            let w = wal.path();
            let host = FakeHost::default();
            let down = Unreachable;
            let t = with_budget(&down, 1);
            assert!(call(&host, &t, w, &seg(1)).is_err());
            host.advance(CONFIRM_FAILING);
            host.fail_saves(true);
            let e = call(&host, &t, w, &seg(1)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unavailable);
            let st = host.state();
            assert_eq!(st.stats.dropped_count, 0);
            assert!(!st.budget.has_pending(), "rolled back");
            assert!(host
                .logged()
                .iter()
                .any(|l| l.contains("could not record the drop")));
            assert!(w.join(format!("archive_status/{}.ready", seg(1))).exists());
            host.fail_saves(false);
            assert!(matches!(
                call(&host, &t, w, &seg(1)).unwrap(),
                Archived::Dropped(_)
            ));
        }

        #[test]
        fn a_marker_that_cannot_be_stored_fails_the_attempt_and_stays_pending() {
            let wal = pg_wal(3, false);
            let w = wal.path();
            let host = FakeHost::default();
            host.with_state(|s| {
                s.budget
                    .record_drop(&seg(1), SEG_SIZE, 1000, 0, "x")
                    .unwrap();
            });
            done(w, &seg(1));
            // A store that takes nothing under that name (a directory there).
            let d = tempfile::tempdir().unwrap();
            let dir = crate::destination::local_directory::LocalDirectory::new(d.path(), 0o600);
            let marker = format!("DROPPED.{}-{}", seg(1), seg(1));
            std::fs::create_dir(d.path().join(format!("{marker}.sha256"))).unwrap();
            let e = call(&host, &target(&dir), w, &seg(2)).unwrap_err();
            assert!(e.message.contains("DROPPED"), "{e}");
            assert!(dir.size(&seg(2)).unwrap().is_none(), "no later file first");
            assert!(host.state().budget.has_pending());
            std::fs::remove_dir(d.path().join(format!("{marker}.sha256"))).unwrap();
            assert!(call(&host, &target(&dir), w, &seg(2)).is_ok());
            assert!(dir.size(&marker).unwrap().is_some());
            assert!(!host.state().budget.has_pending());
        }
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
