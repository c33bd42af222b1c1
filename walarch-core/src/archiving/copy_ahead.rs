//! The copy-ahead worker's rounds: which waiting files to copy, copying them
//! several at a time, and what to do with each result.
//!
//! A round claims the `.ready` files nobody holds, in the archiver's order,
//! skipping files whose copy failed less than `RETRY_AFTER` ago (the archiver
//! copies those inline meanwhile, and reports why). A success is left for the
//! archiver to confirm, with what the archiver needs to trust it without
//! asking the store (the destination, the acknowledged SHA-256, which file
//! it was), and the archiver is woken; a failure frees the claim.
//!
//! While the destination is failing (the shared circuit breaker is open) a
//! round copies nothing, except one file when the probe is due; a copy that
//! fails that way stops the round. Claims the round never started on are
//! released, so nothing waits on them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::archiving::archive_protocol::ArchiveOutcome;
use crate::archiving::archive_status::ready_files;
use crate::archiving::breaker::{DestinationId, Gate};
use crate::archiving::host::Host;
use crate::archiving::parallel_copy::{run_parallel, CopyJob};
use crate::archiving::shared_state::{Copied, FileId, SlotState};
use crate::destination::Destination;
use crate::support::error::ArchiveError;

/// How long a file whose copy failed is left to the archiver before the
/// worker tries it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How often the calling thread looks for results while copies run.
const POLL: Duration = Duration::from_millis(50);

/// A copy started: when, which file it read, and from where.
type Running = (i64, Option<FileId>, PathBuf);

#[derive(Debug)]
pub struct CopyAhead {
    pg_wal: PathBuf,
    retry_at: HashMap<String, Instant>,
    /// This round is the breaker's probe: one file, let through.
    probe: bool,
}

impl CopyAhead {
    pub fn new(pg_wal: impl Into<PathBuf>) -> Self {
        CopyAhead {
            pg_wal: pg_wal.into(),
            retry_at: HashMap::new(),
            probe: false,
        }
    }

    /// Claims this round's files for `dest` from `pg_wal/archive_status`;
    /// empty when there is nothing to copy ahead (or the destination is
    /// failing and no probe is due).
    pub fn plan<H: Host>(&mut self, host: &H, dest: DestinationId) -> Vec<String> {
        let Ok(ready) = ready_files(&self.pg_wal) else {
            return Vec::new();
        };
        let now = host.now();
        let ts = host.timestamp();
        self.retry_at.retain(|_, t| *t > now);
        let me = host.pid();
        let retry_at = &self.retry_at;
        let planned = host.with_state(|s| {
            // Claims of dead processes, and confirmations of files the
            // archiver no longer waits for (archived some other way).
            s.release_stale(|p| host.alive(p), |n| ready.iter().any(|r| r == n));
            let candidates: Vec<&String> = ready
                .iter()
                .filter(|n| !retry_at.contains_key(*n) && s.slot_state(n) == SlotState::Free)
                .collect();
            // A probe granted with nothing to try would hold the archiver's
            // back for another back-off. While dropped ranges wait for their
            // markers, the archiver stores those first, before any later
            // file: nothing is copied ahead meanwhile.
            if candidates.is_empty() || s.budget.has_pending() {
                return (Vec::new(), false);
            }
            let (limit, probe) = match s.breaker.gate(dest, ts) {
                Gate::Closed => (usize::MAX, false),
                Gate::Probe => (1, true),
                Gate::Open(_) => (0, false),
            };
            let claimed: Vec<String> = candidates
                .into_iter()
                .filter(|n| s.begin_worker_copy(n, me))
                .take(limit)
                .cloned()
                .collect();
            (claimed, probe)
        });
        let (claimed, probe) = planned.unwrap_or_default();
        self.probe = probe;
        claimed
    }

    /// Copies the claimed `files` into `dest` (whose identity is `dest_id`),
    /// `parallel` at a time, and records each result as it ends.
    /// `on_result` and `should_stop` run on the calling thread; once
    /// `should_stop` says so no further copy starts, and the claims not
    /// started on are released.
    #[allow(clippy::too_many_arguments)]
    pub fn copy<H: Host>(
        &mut self,
        host: &H,
        dest: &dyn Destination,
        dest_id: DestinationId,
        files: Vec<String>,
        parallel: usize,
        mut on_result: impl FnMut(&str, &Result<ArchiveOutcome, ArchiveError>),
        mut should_stop: impl FnMut() -> bool,
    ) {
        let jobs = files
            .into_iter()
            .map(|name| CopyJob {
                source: self.pg_wal.join(&name),
                name,
            })
            .collect();
        let probe = self.probe;
        let running: RefCell<HashMap<String, Running>> = RefCell::default();
        let retry_at = &mut self.retry_at;
        let left = run_parallel(
            jobs,
            dest,
            parallel,
            POLL,
            |job| {
                let file = FileId::of(&job.source);
                let size = file.map_or(0, |f| f.size);
                host.with_state(|s| s.start_worker_copy(&job.name, size));
                running.borrow_mut().insert(
                    job.name.clone(),
                    (host.timestamp(), file, job.source.clone()),
                );
            },
            |r| {
                let (started, file, source) = running.borrow_mut().remove(&r.name).unwrap_or((
                    host.timestamp(),
                    None,
                    PathBuf::new(),
                ));
                // Trusted later only if the file read is the one still there.
                let file = file.filter(|f| FileId::of(&source) == Some(*f));
                let result = r
                    .result
                    .as_ref()
                    .map(|o| {
                        let sha256 = match o {
                            ArchiveOutcome::Archived { sha256, .. }
                            | ArchiveOutcome::AlreadyArchived { sha256, .. } => *sha256,
                        };
                        Copied {
                            bytes: o.bytes(),
                            stored_bytes: o.stored_bytes(),
                            sha256,
                            dest: dest_id,
                            file: file.unwrap_or_default(),
                            stored_as: matches!(o, ArchiveOutcome::Archived { .. })
                                .then(|| dest.new_form(&r.name)),
                        }
                    })
                    .map_err(|e| e.message.as_str());
                let micros = r.elapsed.as_micros() as i64;
                let now = host.timestamp();
                host.with_state(|s| {
                    s.finish_worker_copy(&r.name, result);
                    match &r.result {
                        Ok(_) => {
                            s.record_transfer(micros);
                            s.breaker.succeeded(dest_id, started);
                            s.budget.streak.succeeded(dest_id);
                        }
                        Err(e) => s.breaker.failed(dest_id, started, now, e),
                    }
                });
                match &r.result {
                    // The archiver can come and confirm it now.
                    Ok(_) => host.wake_archiver(),
                    Err(_) => {
                        retry_at.insert(r.name.clone(), host.now() + RETRY_AFTER);
                    }
                }
                on_result(&r.name, &r.result);
            },
            || {
                should_stop()
                    || (!probe
                        && host
                            .with_state(|s| s.breaker.is_open(dest_id))
                            .unwrap_or(false))
            },
        );
        host.with_state(|s| {
            for job in &left {
                s.release_worker_claim(&job.name);
            }
        });
        self.probe = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archiver::{archive_one, Archived};
    use crate::support::error::ErrorKind;
    use crate::support::testing::{
        down, here, pattern, target, FakeHost, MemoryDestination, Unreachable,
    };

    fn pg_wal(files: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("archive_status")).unwrap();
        for (i, f) in files.iter().enumerate() {
            std::fs::write(d.path().join(f), pattern(1000 + i)).unwrap();
            std::fs::write(d.path().join(format!("archive_status/{f}.ready")), b"").unwrap();
        }
        d
    }

    const F1: &str = "000000010000000000000001";
    const F2: &str = "000000010000000000000002";
    const F3: &str = "000000010000000000000003";
    const H2: &str = "00000002.history";

    fn copy_all(
        ca: &mut CopyAhead,
        host: &FakeHost,
        dest: &dyn Destination,
    ) -> Vec<(String, bool)> {
        let files = ca.plan(host, here());
        let mut results = vec![];
        ca.copy(
            host,
            dest,
            here(),
            files,
            2,
            |n, r| results.push((n.to_string(), r.is_ok())),
            || false,
        );
        results.sort();
        results
    }

    #[test]
    fn claims_waiting_files_in_archiver_order_except_the_archivers_own() {
        let wal = pg_wal(&[F2, F1, F3, H2]);
        let host = FakeHost::default();
        host.with_state(|s| s.begin_archiver_copy(F1, 99, |_| true));
        let mut ca = CopyAhead::new(wal.path());
        assert_eq!(ca.plan(&host, here()), vec![H2, F2, F3]);
        // Claimed, not yet copying: nothing in flight.
        assert_eq!(host.state().bytes_in_flight_where(|_| true), 0);
        // Claimed now: a second plan finds nothing new.
        assert!(ca.plan(&host, here()).is_empty());
    }

    #[test]
    fn nothing_is_copied_ahead_while_dropped_ranges_wait_for_their_markers() {
        let wal = pg_wal(&[F2, F3]);
        let host = FakeHost::default();
        host.with_state(|s| s.budget.record_drop(F1, 16 << 20, 1000, 0, "down").unwrap());
        let mut ca = CopyAhead::new(wal.path());
        assert!(ca.plan(&host, here()).is_empty(), "the marker goes first");
        host.with_state(|s| {
            let p = s.budget.pending.to_vec();
            s.budget.marked(&p)
        });
        assert_eq!(ca.plan(&host, here()), vec![F2, F3]);
    }

    #[test]
    fn copies_are_left_for_the_archiver_to_confirm() {
        let wal = pg_wal(&[F1, F2]);
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let mut ca = CopyAhead::new(wal.path());
        let r = copy_all(&mut ca, &host, &dest);
        assert_eq!(r, vec![(F1.into(), true), (F2.into(), true)]);
        assert_eq!(host.archiver_wakes(), 2);
        assert_eq!(host.state().stats.transfers, 2);
        assert_eq!(host.state().bytes_in_flight_where(|_| true), 0);
        assert_eq!(host.state().slot_state(F1), SlotState::WorkerArchived);
        let archiver = host.as_pid(20);
        let got = archive_one(&archiver, &target(&dest), F1, &wal.path().join(F1)).unwrap();
        assert_eq!(got, Archived::CopiedAhead { bytes: 1000 });
        assert_eq!(host.state().stats.copied_ahead_count, 1);
    }

    #[test]
    fn the_claim_records_the_destination_checksum_and_file() {
        let wal = pg_wal(&[F1]);
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let mut ca = CopyAhead::new(wal.path());
        copy_all(&mut ca, &host, &dest);
        let slot = host
            .state()
            .slots
            .iter()
            .find(|s| s.name.as_str() == F1)
            .cloned()
            .unwrap();
        let src = wal.path().join(F1);
        assert_eq!(slot.copied.dest, here());
        assert_eq!(
            slot.copied.sha256,
            crate::wal::checksum::hash_file(&src).unwrap().1
        );
        assert_eq!(Some(slot.copied.file), FileId::of(&src));
        assert_eq!(slot.copied.bytes, 1000);
    }

    #[test]
    fn compressed_copies_are_confirmed_as_stored() {
        let wal = pg_wal(&[F1]);
        let host = FakeHost::default();
        let inner = MemoryDestination::default();
        let dest = crate::destination::compressing::Compressing::new(&inner, Some(1));
        let mut ca = CopyAhead::new(wal.path());
        assert_eq!(copy_all(&mut ca, &host, &dest), vec![(F1.into(), true)]);
        let stored = inner.size(&format!("{F1}.zst")).unwrap().unwrap();
        let got = archive_one(&host.as_pid(20), &target(&dest), F1, &wal.path().join(F1)).unwrap();
        assert_eq!(got, Archived::CopiedAhead { bytes: 1000 });
        let stats = host.state().stats;
        assert_eq!(
            (stats.archived_bytes, stats.stored_bytes),
            (1000, stored as i64)
        );
    }

    #[test]
    fn a_failed_file_is_left_to_the_archiver_for_a_while() {
        let wal = pg_wal(&[F1, F2]);
        std::fs::remove_file(wal.path().join(F1)).unwrap();
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let mut ca = CopyAhead::new(wal.path());
        let r = copy_all(&mut ca, &host, &dest);
        assert_eq!(r, vec![(F1.into(), false), (F2.into(), true)]);
        let st = host.state();
        assert_eq!(st.stats.copy_ahead_failures, 1);
        assert_eq!(st.slot_state(F1), SlotState::Free);
        assert!(!st.breaker.is_open(here()), "a local failure");
        // Not tried again until RETRY_AFTER has passed.
        std::fs::write(wal.path().join(F1), b"back").unwrap();
        assert!(ca.plan(&host, here()).is_empty());
        host.advance(RETRY_AFTER - Duration::from_millis(1));
        assert!(ca.plan(&host, here()).is_empty());
        host.advance(Duration::from_millis(2));
        assert_eq!(ca.plan(&host, here()), vec![F1]);
    }

    #[test]
    fn a_dead_predecessors_claims_and_stale_confirmations_are_released() {
        let wal = pg_wal(&[F1, F2]);
        let host = FakeHost::default();
        host.with_state(|s| {
            s.begin_worker_copy(F1, 7);
            s.begin_worker_copy(F3, 10);
            s.finish_worker_copy(F3, Ok(Copied::default()));
        });
        host.kill(7);
        let mut ca = CopyAhead::new(wal.path());
        // F1 was held by a dead worker; F3 is no longer waiting.
        assert_eq!(ca.plan(&host, here()), vec![F1, F2]);
        assert_eq!(host.state().slot_state(F3), SlotState::Free);
    }

    #[test]
    fn while_the_destination_fails_only_one_probe_is_copied() {
        let wal = pg_wal(&[F1, F2, F3]);
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        // The archiver's last attempt timed out.
        host.with_state(|s| s.breaker.failed(here(), 0, 0, &down()));
        let mut ca = CopyAhead::new(wal.path());
        assert!(ca.plan(&host, here()).is_empty());
        assert_eq!(
            host.state().free_slots(),
            crate::archiving::shared_state::SLOTS
        );
        // Another destination configured is not held back.
        let other = DestinationId::of(&["memory", "other"]);
        assert_eq!(ca.plan(&host, other).len(), 3);
        host.with_state(|s| {
            for f in [F1, F2, F3] {
                s.release_worker_claim(f);
            }
            s.breaker.failed(here(), 0, 0, &down());
        });
        host.advance(crate::archiving::breaker::FIRST_BACKOFF);
        // The probe is due, but every file is held (by the archiver): the
        // worker does not take the probe with nothing to try.
        host.with_state(|s| {
            for f in [F1, F2, F3] {
                s.begin_archiver_copy(f, 99, |_| true);
            }
        });
        assert!(ca.plan(&host, here()).is_empty());
        host.with_state(|s| {
            for f in [F1, F2, F3] {
                s.end_archiver_copy(f);
            }
        });
        // The probe: one file, which succeeds and closes the breaker.
        assert_eq!(copy_all(&mut ca, &host, &dest), vec![(F1.into(), true)]);
        assert!(!host.state().breaker.is_open(here()));
        assert_eq!(copy_all(&mut ca, &host, &dest).len(), 2);
    }

    #[test]
    fn a_copy_failing_as_unavailable_opens_the_breaker_and_ends_the_round() {
        let names: Vec<String> = (1..=6).map(|i| format!("{i:024X}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let wal = pg_wal(&refs);
        let host = FakeHost::default();
        let mut ca = CopyAhead::new(wal.path());
        let files = ca.plan(&host, here());
        assert_eq!(files.len(), 6);
        let mut results = 0;
        ca.copy(
            &host,
            &Unreachable,
            here(),
            files,
            1,
            |_, r| {
                assert_eq!(r.as_ref().unwrap_err().kind, ErrorKind::Unavailable);
                results += 1;
            },
            || false,
        );
        assert_eq!(results, 1, "no copy started once the breaker opened");
        let st = host.state();
        assert!(st.breaker.is_open(here()));
        assert_eq!(
            st.free_slots(),
            crate::archiving::shared_state::SLOTS,
            "claims released"
        );
        assert_eq!(st.stats.copy_ahead_failures, 1);
        assert_eq!(st.bytes_in_flight_where(|_| true), 0);
    }

    #[test]
    fn a_stop_between_files_releases_the_claims_not_started() {
        let wal = pg_wal(&[F1, F2, F3]);
        let host = FakeHost::default();
        let dest = MemoryDestination::default();
        let mut ca = CopyAhead::new(wal.path());
        let files = ca.plan(&host, here());
        let done = RefCell::new(vec![]);
        // A reload names another destination after the first file.
        ca.copy(
            &host,
            &dest,
            here(),
            files,
            1,
            |n, _| done.borrow_mut().push(n.to_string()),
            || !done.borrow().is_empty(),
        );
        assert_eq!(done.into_inner(), vec![F1]);
        assert_eq!(dest.list().unwrap(), vec![F1.to_string()]);
        let st = host.state();
        assert_eq!(st.slot_state(F2), SlotState::Free);
        assert_eq!(st.slot_state(F3), SlotState::Free);
        assert_eq!(st.stats.copy_ahead_failures, 0, "not failures");
    }
}
