//! The state the archiver's callback, the copy-ahead worker and SQL share:
//! the archiver-style statistics and the table of files being (or already)
//! copied ahead. Plain data with no pointers, so it can live in shared memory
//! behind one lock; every rule about who copies what is here, testable
//! without a server.
//!
//! Who copies a file:
//! - the worker claims a `.ready` file nobody holds (`WorkerCopying`), copies
//!   it, and marks it `WorkerArchived`;
//! - the archiver's callback, asked for a file, finds either nothing (claims
//!   it `ArchiverCopying` and copies inline), `WorkerArchived` (confirms it,
//!   frees the slot), or `WorkerCopying` (waits, never copies in parallel),
//!   unless the worker holding it is dead, in which case it takes over.

use std::path::Path;

use crate::archiving::breaker::{Breaker, DestinationId};
use crate::archiving::budget::BudgetState;
use crate::wal::checksum::Sha256Digest;
use crate::wal::time::NO_TIME;
use crate::wal::walname::Form;

/// Strings in shared memory are inline, fixed-capacity (no pointers).
pub type WalName = heapless::String<64>;
pub type ErrorText = heapless::String<512>;

/// `s`, cut at a character boundary if it does not fit.
pub fn bounded<const N: usize>(s: &str) -> heapless::String<N> {
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = heapless::String::new();
    // Cannot fail: `end` is at most the capacity.
    let _ = out.push_str(&s[..end]);
    out
}

/// `None` when empty, as SQL NULL.
pub fn non_empty<const N: usize>(s: &heapless::String<N>) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Slots in the copy-ahead table.
pub const SLOTS: usize = 128;
/// How many of them the worker may hold: how far ahead it may run. The rest
/// stay free so the archiver's own claim is always recorded.
pub const WORKER_SLOTS: usize = SLOTS - 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Free = 0,
    WorkerCopying = 1,
    WorkerArchived = 2,
    ArchiverCopying = 3,
}

/// Which file a WAL file name stood for when it was copied: the same name
/// re-created (with other content) is another inode or modification time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
}

impl FileId {
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// What the worker's copy of a file established: the archiver trusts it
/// without asking the store when `dest` is the destination configured now
/// and `file` is still the file it is asked to archive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    /// What it stored (less than `bytes` when compressed; 0 when it found
    /// the file already archived).
    pub stored_bytes: u64,
    /// The SHA-256 the store acknowledged (or recorded, for a file found
    /// already archived).
    pub sha256: Sha256Digest,
    pub dest: DestinationId,
    pub file: FileId,
    /// The form it was stored in; `None` when it was found already
    /// archived.
    pub stored_as: Option<Form>,
}

#[derive(Clone, Debug)]
pub struct Slot {
    pub state: SlotState,
    pub name: WalName,
    /// The file's length while it is copied (for `bytes_in_flight`).
    pub bytes: u64,
    /// Being stored right now (a claimed file may still wait its turn).
    pub running: bool,
    /// The worker's copy, once `WorkerArchived`.
    pub copied: Copied,
    pub pid: i32,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            state: SlotState::Free,
            name: WalName::default(),
            bytes: 0,
            running: false,
            copied: Copied::default(),
            pid: 0,
        }
    }
}

/// The counters of `walarch_stats()`. The first seven mirror
/// `pg_stat_archiver` and are counted the same way: one per `archive_file`
/// call, success or failure.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub archived_count: i64,
    pub last_archived_wal: WalName,
    pub last_archived_time: i64,
    pub failed_count: i64,
    pub last_failed_wal: WalName,
    pub last_failed_time: i64,
    pub stats_reset: i64,
    pub archived_bytes: i64,
    /// What the archived files take in the destination: less than
    /// `archived_bytes` when compressed; files found already archived add
    /// nothing.
    pub stored_bytes: i64,
    pub copied_ahead_count: i64,
    pub copy_ahead_failures: i64,
    pub last_error: ErrorText,
    /// How long the last successful store took (microseconds), by the
    /// archiver or the worker; and the sum and count behind the mean.
    pub last_transfer_us: i64,
    pub transfer_us_total: i64,
    pub transfers: i64,
    /// Files reported archived without being stored (`walarch.max_backlog`);
    /// counted in neither `archived_count` nor `failed_count`.
    pub dropped_count: i64,
    pub dropped_bytes: i64,
    pub last_dropped_wal: WalName,
    pub last_dropped_time: i64,
    /// Files stored compressed, and stored encrypted (either may be both),
    /// by this server; files found already archived are not counted.
    pub compressed_count: i64,
    pub encrypted_count: i64,
}

impl Stats {
    pub fn new(now: i64) -> Stats {
        Stats {
            archived_count: 0,
            last_archived_wal: WalName::default(),
            last_archived_time: NO_TIME,
            failed_count: 0,
            last_failed_wal: WalName::default(),
            last_failed_time: NO_TIME,
            stats_reset: now,
            archived_bytes: 0,
            stored_bytes: 0,
            copied_ahead_count: 0,
            copy_ahead_failures: 0,
            last_error: ErrorText::default(),
            last_transfer_us: 0,
            transfer_us_total: 0,
            transfers: 0,
            dropped_count: 0,
            dropped_bytes: 0,
            last_dropped_wal: WalName::default(),
            last_dropped_time: NO_TIME,
            compressed_count: 0,
            encrypted_count: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ArchiveState {
    pub stats: Stats,
    pub slots: [Slot; SLOTS],
    /// The copy-ahead worker's PID, 0 when none runs.
    pub worker_pid: i32,
    /// The worker's latch (`PGPROC.procLatch`, in shared memory, so valid in
    /// every process), as an integer; 0 when none.
    pub worker_latch: usize,
    /// Whether the destination is known to be failing.
    pub breaker: Breaker,
    /// `walarch.max_backlog`: how long the destination has been failing,
    /// and the dropped ranges not yet marked in the archive.
    pub budget: BudgetState,
}

/// What the archiver's callback should do with the file it was asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum ArchiverClaim {
    /// The slot is ours: copy inline, then `end_archiver_copy`.
    CopyInline,
    /// The worker archived it: confirm and count it.
    CopiedAhead(Copied),
    /// The worker (this PID) is copying it right now: wait and ask again.
    WorkerBusy { pid: i32 },
}

impl ArchiveState {
    pub fn new(now: i64) -> ArchiveState {
        ArchiveState {
            stats: Stats::new(now),
            slots: std::array::from_fn(|_| Slot::default()),
            worker_pid: 0,
            worker_latch: 0,
            breaker: Breaker::default(),
            budget: BudgetState::default(),
        }
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.state != SlotState::Free && s.name.as_str() == name)
    }

    fn take_free(&mut self, name: &str, state: SlotState, pid: i32) -> bool {
        match self.slots.iter().position(|s| s.state == SlotState::Free) {
            Some(i) => {
                self.slots[i] = Slot {
                    state,
                    name: bounded(name),
                    pid,
                    ..Slot::default()
                };
                true
            }
            None => false,
        }
    }

    pub fn slot_state(&self, name: &str) -> SlotState {
        self.find(name)
            .map(|i| self.slots[i].state)
            .unwrap_or(SlotState::Free)
    }

    pub fn free_slots(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state == SlotState::Free)
            .count()
    }

    /// The worker wants to copy `name`: true when it now holds it.
    pub fn begin_worker_copy(&mut self, name: &str, pid: i32) -> bool {
        let held = self
            .slots
            .iter()
            .filter(|s| {
                matches!(
                    s.state,
                    SlotState::WorkerCopying | SlotState::WorkerArchived
                )
            })
            .count();
        held < WORKER_SLOTS
            && self.find(name).is_none()
            && self.take_free(name, SlotState::WorkerCopying, pid)
    }

    /// The worker's copy of `name` starts now (`bytes` long).
    pub fn start_worker_copy(&mut self, name: &str, bytes: u64) {
        if let Some(i) = self.find(name) {
            if self.slots[i].state == SlotState::WorkerCopying {
                self.slots[i].bytes = bytes;
                self.slots[i].running = true;
            }
        }
    }

    /// The worker gives up a claim it never started on (told to stop, the
    /// destination changed): no failure, the file is anyone's again.
    pub fn release_worker_claim(&mut self, name: &str) {
        if let Some(i) = self.find(name) {
            if self.slots[i].state == SlotState::WorkerCopying {
                self.slots[i] = Slot::default();
            }
        }
    }

    /// The worker's copy of `name` ended: on success the file waits for the
    /// archiver's confirmation; on failure the slot is freed (the archiver
    /// will copy it inline) and the failure counted.
    pub fn finish_worker_copy(&mut self, name: &str, result: Result<Copied, &str>) {
        let Some(i) = self.find(name) else { return };
        if self.slots[i].state != SlotState::WorkerCopying {
            return;
        }
        match result {
            Ok(copied) => {
                self.slots[i].state = SlotState::WorkerArchived;
                self.slots[i].running = false;
                self.slots[i].copied = copied;
            }
            Err(e) => {
                self.slots[i] = Slot::default();
                self.stats.copy_ahead_failures += 1;
                self.stats.last_error = bounded(e);
            }
        }
    }

    /// The archiver asks for `name`. `alive` tells whether a PID still runs.
    pub fn begin_archiver_copy(
        &mut self,
        name: &str,
        pid: i32,
        alive: impl Fn(i32) -> bool,
    ) -> ArchiverClaim {
        if let Some(i) = self.find(name) {
            let slot = self.slots[i].clone();
            match slot.state {
                SlotState::WorkerArchived => {
                    self.slots[i] = Slot::default();
                    return ArchiverClaim::CopiedAhead(slot.copied);
                }
                SlotState::WorkerCopying if alive(slot.pid) => {
                    return ArchiverClaim::WorkerBusy { pid: slot.pid };
                }
                // A dead worker's claim, or our own left over from an earlier
                // archiver that died mid-copy: take it over.
                _ => {
                    self.slots[i] = Slot {
                        state: SlotState::ArchiverCopying,
                        name: slot.name,
                        pid,
                        ..Slot::default()
                    };
                    return ArchiverClaim::CopyInline;
                }
            }
        }
        // There is always room: the worker never holds more than WORKER_SLOTS.
        let claimed = self.take_free(name, SlotState::ArchiverCopying, pid);
        debug_assert!(claimed);
        ArchiverClaim::CopyInline
    }

    pub fn end_archiver_copy(&mut self, name: &str) {
        if let Some(i) = self.find(name) {
            if self.slots[i].state == SlotState::ArchiverCopying {
                self.slots[i] = Slot::default();
            }
        }
    }

    /// Frees the claims of processes that are gone (a worker killed mid-copy),
    /// and the worker's confirmed copies of files no longer waiting (the
    /// archiver archived them some other way). Returns how many were freed.
    pub fn release_stale(
        &mut self,
        alive: impl Fn(i32) -> bool,
        still_ready: impl Fn(&str) -> bool,
    ) -> usize {
        let mut n = 0;
        for s in self.slots.iter_mut() {
            let stale = match s.state {
                SlotState::Free => false,
                SlotState::WorkerCopying | SlotState::ArchiverCopying => !alive(s.pid),
                SlotState::WorkerArchived => !still_ready(s.name.as_str()),
            };
            if stale {
                *s = Slot::default();
                n += 1;
            }
        }
        n
    }

    /// The archiver's inline copy of `name` (`bytes` long) starts now.
    pub fn set_in_flight(&mut self, name: &str, bytes: u64) {
        if let Some(i) = self.find(name) {
            if self.slots[i].state == SlotState::ArchiverCopying {
                self.slots[i].bytes = bytes;
                self.slots[i].running = true;
            }
        }
    }

    /// Bytes of the files being stored right now by processes that run.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight_where(crate::archiving::host::process_alive)
    }

    /// `bytes_in_flight`, with `alive` telling whether a PID still runs:
    /// a claim waiting its turn is not in flight, nor is the claim of a
    /// process that died mid-copy (until it is taken over).
    pub fn bytes_in_flight_where(&self, alive: impl Fn(i32) -> bool) -> u64 {
        self.slots
            .iter()
            .filter(|s| {
                s.running
                    && matches!(
                        s.state,
                        SlotState::WorkerCopying | SlotState::ArchiverCopying
                    )
                    && alive(s.pid)
            })
            .map(|s| s.bytes)
            .sum()
    }

    /// A store succeeded after `micros`.
    pub fn record_transfer(&mut self, micros: i64) {
        let s = &mut self.stats;
        s.last_transfer_us = micros;
        s.transfer_us_total = s.transfer_us_total.saturating_add(micros);
        s.transfers += 1;
    }

    /// A copy-ahead worker starts: it is the one to wake from now on, and
    /// the claims of a predecessor killed mid-copy are released.
    pub fn worker_started(&mut self, pid: i32, latch: usize, alive: impl Fn(i32) -> bool) {
        self.worker_pid = pid;
        self.worker_latch = latch;
        self.release_stale(alive, |_| true);
    }

    pub fn worker_stopped(&mut self) {
        self.worker_pid = 0;
        self.worker_latch = 0;
    }

    /// An `archive_file` call succeeded.
    pub fn record_archived(
        &mut self,
        name: &str,
        bytes: u64,
        stored_bytes: u64,
        stored_as: Option<Form>,
        copied_ahead: bool,
        now: i64,
    ) {
        let s = &mut self.stats;
        if let Some(form) = stored_as {
            s.compressed_count += i64::from(form.compressed);
            s.encrypted_count += i64::from(form.encrypted);
        }
        s.archived_count += 1;
        s.last_archived_wal = bounded(name);
        s.last_archived_time = now;
        s.archived_bytes += bytes as i64;
        s.stored_bytes += stored_bytes as i64;
        if copied_ahead {
            s.copied_ahead_count += 1;
        }
    }

    /// An `archive_file` call reported `name` archived without storing it.
    pub fn record_dropped(&mut self, name: &str, bytes: u64, now: i64) {
        let s = &mut self.stats;
        s.dropped_count += 1;
        s.dropped_bytes += bytes as i64;
        s.last_dropped_wal = bounded(name);
        s.last_dropped_time = now;
    }

    /// An `archive_file` call failed.
    pub fn record_failed(&mut self, name: &str, error: &str, now: i64) {
        let s = &mut self.stats;
        s.failed_count += 1;
        s.last_failed_wal = bounded(name);
        s.last_failed_time = now;
        s.last_error = bounded(error);
    }

    pub fn reset_stats(&mut self, now: i64) {
        self.stats = Stats::new(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000000010000000000000001";
    const B: &str = "000000010000000000000002";

    fn alive(_: i32) -> bool {
        true
    }

    fn copied(bytes: u64, stored_bytes: u64) -> Copied {
        Copied {
            bytes,
            stored_bytes,
            ..Copied::default()
        }
    }

    #[test]
    fn stored_forms_are_counted_once_each() {
        let mut s = ArchiveState::new(0);
        s.record_archived(A, 16, 3, Some(Form::ZST_AGE), false, 5);
        s.record_archived(B, 16, 17, Some(Form::AGE), true, 6);
        s.record_archived(B, 16, 16, Some(Form::PLAIN), false, 7);
        // Found already archived: stored nothing now.
        s.record_archived(B, 16, 0, None, false, 8);
        assert_eq!(
            (
                s.stats.archived_count,
                s.stats.compressed_count,
                s.stats.encrypted_count
            ),
            (4, 1, 2)
        );
    }

    #[test]
    fn worker_copy_is_confirmed_by_archiver() {
        let mut s = ArchiveState::new(0);
        assert!(s.begin_worker_copy(A, 10));
        assert!(!s.begin_worker_copy(A, 10), "claimed twice");
        assert_eq!(
            s.begin_archiver_copy(A, 20, alive),
            ArchiverClaim::WorkerBusy { pid: 10 }
        );
        s.finish_worker_copy(A, Ok(copied(16, 3)));
        assert_eq!(
            s.begin_archiver_copy(A, 20, alive),
            ArchiverClaim::CopiedAhead(copied(16, 3))
        );
        assert_eq!(s.slot_state(A), SlotState::Free);
        s.record_archived(A, 16, 3, Some(Form::ZST), true, 5);
        assert_eq!(
            (
                s.stats.archived_count,
                s.stats.copied_ahead_count,
                s.stats.archived_bytes,
                s.stats.stored_bytes
            ),
            (1, 1, 16, 3)
        );
        assert_eq!(s.stats.last_archived_wal.as_str(), A);
    }

    #[test]
    fn archiver_copy_blocks_the_worker() {
        let mut s = ArchiveState::new(0);
        assert_eq!(
            s.begin_archiver_copy(B, 20, alive),
            ArchiverClaim::CopyInline
        );
        assert!(!s.begin_worker_copy(B, 10));
        s.end_archiver_copy(B);
        assert!(s.begin_worker_copy(B, 10));
    }

    #[test]
    fn failed_worker_copy_falls_back_to_archiver() {
        let mut s = ArchiveState::new(0);
        assert!(s.begin_worker_copy(A, 10));
        s.finish_worker_copy(A, Err("could not write: disk full"));
        assert_eq!(s.stats.copy_ahead_failures, 1);
        assert_eq!(s.stats.last_error.as_str(), "could not write: disk full");
        assert_eq!(
            s.stats.failed_count, 0,
            "worker failures are not archiver failures"
        );
        assert_eq!(
            s.begin_archiver_copy(A, 20, alive),
            ArchiverClaim::CopyInline
        );
    }

    #[test]
    fn dead_workers_claims_are_taken_over() {
        let mut s = ArchiveState::new(0);
        assert!(s.begin_worker_copy(A, 10));
        assert!(s.begin_worker_copy(B, 10));
        assert_eq!(
            s.begin_archiver_copy(A, 20, |p| p != 10),
            ArchiverClaim::CopyInline
        );
        assert_eq!(s.slot_state(A), SlotState::ArchiverCopying);
        assert_eq!(s.release_stale(|p| p != 10, |_| true), 1);
        assert_eq!(s.slot_state(B), SlotState::Free);
        assert_eq!(s.slot_state(A), SlotState::ArchiverCopying);
    }

    #[test]
    fn confirmed_copies_of_files_no_longer_ready_are_released() {
        let mut s = ArchiveState::new(0);
        s.begin_worker_copy(A, 10);
        s.finish_worker_copy(A, Ok(copied(1, 1)));
        assert_eq!(s.release_stale(alive, |n| n != A), 1);
        assert_eq!(s.free_slots(), SLOTS);
    }

    #[test]
    fn full_table_stops_the_worker_not_the_archiver() {
        let mut s = ArchiveState::new(0);
        for i in 0..WORKER_SLOTS {
            assert!(s.begin_worker_copy(&format!("{:024X}", i + 100), 10));
        }
        assert!(!s.begin_worker_copy(A, 10));
        assert_eq!(
            s.begin_archiver_copy(A, 20, alive),
            ArchiverClaim::CopyInline
        );
        assert_eq!(s.slot_state(A), SlotState::ArchiverCopying);
        assert!(!s.begin_worker_copy(A, 10));
    }

    #[test]
    fn bytes_in_flight_counts_only_copies_running_now() {
        const C: &str = "000000010000000000000003";
        let mut s = ArchiveState::new(0);
        let in_flight = |s: &ArchiveState| s.bytes_in_flight_where(|p| p != 66);
        assert!(s.begin_worker_copy(A, 10));
        assert!(s.begin_worker_copy(C, 10));
        assert_eq!(in_flight(&s), 0, "claimed, waiting its turn");
        s.start_worker_copy(A, 100);
        s.begin_archiver_copy(B, 20, alive);
        s.set_in_flight(B, 7);
        assert_eq!(in_flight(&s), 107);
        s.finish_worker_copy(A, Ok(copied(100, 100)));
        assert_eq!(in_flight(&s), 7, "a finished copy is not in flight");
        s.start_worker_copy(C, 50);
        s.finish_worker_copy(C, Err("timed out"));
        assert_eq!(in_flight(&s), 7, "nor a failed one");
        s.end_archiver_copy(B);
        assert_eq!(in_flight(&s), 0);
        // A claim never started is released without counting a failure.
        assert!(s.begin_worker_copy(C, 10));
        s.release_worker_claim(C);
        assert_eq!(s.slot_state(C), SlotState::Free);
        assert_eq!(s.stats.copy_ahead_failures, 1);
        // A worker killed mid-copy: not in flight, though its claim stays
        // until someone takes it over.
        assert!(s.begin_worker_copy(C, 66));
        s.start_worker_copy(C, 9);
        assert_eq!(in_flight(&s), 0);
        assert_eq!(s.bytes_in_flight_where(alive), 9);
        s.worker_started(67, 0, |p| p != 66);
        assert_eq!(s.slot_state(C), SlotState::Free);
        s.record_transfer(3000);
        s.record_transfer(1000);
        assert_eq!(
            (
                s.stats.last_transfer_us,
                s.stats.transfer_us_total,
                s.stats.transfers
            ),
            (1000, 4000, 2)
        );
    }

    #[test]
    fn failures_and_reset() {
        let mut s = ArchiveState::new(1);
        s.record_failed(A, "boom", 7);
        s.record_failed(A, "boom again", 8);
        assert_eq!(s.stats.failed_count, 2);
        assert_eq!(s.stats.last_failed_time, 8);
        assert_eq!(s.stats.last_error.as_str(), "boom again");
        s.reset_stats(9);
        assert_eq!(s.stats, Stats::new(9));
    }
}
