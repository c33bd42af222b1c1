//! The copy-ahead worker's rounds: which waiting files to copy, copying them
//! several at a time, and what to do with each result.
//!
//! A round claims the `.ready` files nobody holds, in the archiver's order,
//! skipping files whose copy failed less than `RETRY_AFTER` ago (the archiver
//! copies those inline meanwhile, and reports why). A success is left for the
//! archiver to confirm, and the archiver is woken; a failure frees the claim.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::archive_protocol::ArchiveOutcome;
use crate::archive_status::ready_files;
use crate::destination::Destination;
use crate::error::ArchiveError;
use crate::host::Host;
use crate::parallel_copy::{run_parallel, CopyJob};

/// How long a file whose copy failed is left to the archiver before the
/// worker tries it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How often the calling thread checks for a stop while copies run.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct CopyAhead {
    pg_wal: PathBuf,
    retry_at: HashMap<String, Instant>,
}

impl CopyAhead {
    pub fn new(pg_wal: impl Into<PathBuf>) -> Self {
        CopyAhead {
            pg_wal: pg_wal.into(),
            retry_at: HashMap::new(),
        }
    }

    /// Claims this round's files from `pg_wal/archive_status`; empty when
    /// there is nothing to copy ahead.
    pub fn plan<H: Host>(&mut self, host: &H) -> Vec<String> {
        let Ok(ready) = ready_files(&self.pg_wal) else {
            return Vec::new();
        };
        let now = host.now();
        self.retry_at.retain(|_, t| *t > now);
        let me = host.pid();
        host.with_state(|s| {
            // Claims of dead processes, and confirmations of files the
            // archiver no longer waits for (archived some other way).
            s.release_stale(|p| host.alive(p), |n| ready.iter().any(|r| r == n));
            let claimed: Vec<String> = ready
                .iter()
                .filter(|n| !self.retry_at.contains_key(*n))
                .filter(|n| s.begin_worker_copy(n, me))
                .cloned()
                .collect();
            for n in &claimed {
                let size = std::fs::metadata(self.pg_wal.join(n)).map_or(0, |m| m.len());
                s.set_in_flight(n, size);
            }
            claimed
        })
        .unwrap_or_default()
    }

    /// Copies the claimed `files` into `dest`, `parallel` at a time, and
    /// records each result as it ends. `on_result` and `should_stop` run on
    /// the calling thread; once `should_stop` says so no further copy starts.
    pub fn copy<H: Host>(
        &mut self,
        host: &H,
        dest: &dyn Destination,
        files: Vec<String>,
        parallel: usize,
        mut on_result: impl FnMut(&str, &Result<ArchiveOutcome, ArchiveError>),
        should_stop: impl FnMut() -> bool,
    ) {
        let jobs = files
            .into_iter()
            .map(|name| CopyJob {
                source: self.pg_wal.join(&name),
                name,
            })
            .collect();
        run_parallel(
            jobs,
            dest,
            parallel,
            POLL,
            |r| {
                let result = r
                    .result
                    .as_ref()
                    .map(|o| (o.bytes(), o.stored_bytes()))
                    .map_err(|e| e.message.as_str());
                let micros = r.elapsed.as_micros() as i64;
                host.with_state(|s| {
                    s.finish_worker_copy(&r.name, result);
                    if result.is_ok() {
                        s.record_transfer(micros);
                    }
                });
                match &r.result {
                    // The archiver can come and confirm it now.
                    Ok(_) => host.wake_archiver(),
                    Err(_) => {
                        self.retry_at
                            .insert(r.name.clone(), host.now() + RETRY_AFTER);
                    }
                }
                on_result(&r.name, &r.result);
            },
            should_stop,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiver::{archive_one, Archived};
    use crate::shared_state::SlotState;
    use crate::testing::{pattern, FakeHost, MemoryDestination};

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
        let files = ca.plan(host);
        let mut results = vec![];
        ca.copy(
            host,
            dest,
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
        assert_eq!(ca.plan(&host), vec![H2, F2, F3]);
        // Their sizes are in flight (pattern(1000 + i): 1000..1003 bytes).
        assert_eq!(host.state().bytes_in_flight(), 1003 + 1000 + 1002);
        // Claimed now: a second plan finds nothing new.
        assert!(ca.plan(&host).is_empty());
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
        assert_eq!(host.state().bytes_in_flight(), 0);
        assert_eq!(host.state().slot_state(F1), SlotState::WorkerArchived);
        let archiver = host.as_pid(20);
        let got = archive_one(&archiver, &dest, F1, &wal.path().join(F1)).unwrap();
        assert_eq!(got, Archived::CopiedAhead { bytes: 1000 });
        assert_eq!(host.state().stats.copied_ahead_count, 1);
    }

    #[test]
    fn compressed_copies_are_confirmed_by_what_was_stored() {
        let wal = pg_wal(&[F1]);
        let host = FakeHost::default();
        let inner = MemoryDestination::default();
        let dest = crate::compressing::Compressing::new(&inner, Some(1));
        let mut ca = CopyAhead::new(wal.path());
        assert_eq!(copy_all(&mut ca, &host, &dest), vec![(F1.into(), true)]);
        let stored = inner.size(&format!("{F1}.zst")).unwrap().unwrap();
        let got = archive_one(&host.as_pid(20), &dest, F1, &wal.path().join(F1)).unwrap();
        assert_eq!(got, Archived::CopiedAhead { bytes: 1000 });
        let stats = host.state().stats;
        assert_eq!(
            (stats.archived_bytes, stats.stored_bytes),
            (1000, stored as i64)
        );

        // Replaced behind the worker's back by something of another length:
        // not confirmed, stored again by the archiver (and found different).
        let wal2 = pg_wal(&[F1]);
        let mut ca = CopyAhead::new(wal2.path());
        let host = FakeHost::default();
        let inner = MemoryDestination::default();
        let dest = crate::compressing::Compressing::new(&inner, Some(1));
        copy_all(&mut ca, &host, &dest);
        inner.remove(&format!("{F1}.zst")).unwrap();
        inner.store_new_bytes(&format!("{F1}.zst"), b"x").unwrap();
        assert!(archive_one(&host.as_pid(20), &dest, F1, &wal2.path().join(F1)).is_err());
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
        // Not tried again until RETRY_AFTER has passed.
        std::fs::write(wal.path().join(F1), b"back").unwrap();
        assert!(ca.plan(&host).is_empty());
        host.advance(RETRY_AFTER - Duration::from_millis(1));
        assert!(ca.plan(&host).is_empty());
        host.advance(Duration::from_millis(2));
        assert_eq!(ca.plan(&host), vec![F1]);
    }

    #[test]
    fn a_dead_predecessors_claims_and_stale_confirmations_are_released() {
        let wal = pg_wal(&[F1, F2]);
        let host = FakeHost::default();
        host.with_state(|s| {
            s.begin_worker_copy(F1, 7);
            s.begin_worker_copy(F3, 10);
            s.finish_worker_copy(F3, Ok((1, 1)));
        });
        host.kill(7);
        let mut ca = CopyAhead::new(wal.path());
        // F1 was held by a dead worker; F3 is no longer waiting.
        assert_eq!(ca.plan(&host), vec![F1, F2]);
        assert_eq!(host.state().slot_state(F3), SlotState::Free);
    }
}
