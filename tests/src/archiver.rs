//! WAL switches and PostgreSQL's own archiver state (archive_status,
//! pg_stat_archiver), whichever archive library is in use.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use crate::util::wait_until;
use crate::Cluster;

impl Cluster {
    /// Writes some WAL and switches; returns the name of the completed file.
    pub fn switch_wal(&self) -> String {
        self.query(
            "CREATE TABLE IF NOT EXISTS walarch_load(x int); \
             INSERT INTO walarch_load SELECT generate_series(1, 100)",
        );
        self.query("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Writes some WAL and switches `n` times without waiting; returns the
    /// completed files in order.
    pub fn switch_many(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.switch_wal()).collect()
    }

    /// The WAL file currently being written (the next one a switch completes).
    pub fn current_walfile(&self) -> String {
        self.query("SELECT pg_walfile_name(pg_current_wal_lsn())")
    }

    pub fn archiver_pid(&self) -> Option<i32> {
        self.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
            .parse()
            .ok()
    }

    pub fn failed_count(&self) -> i64 {
        self.query("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap()
    }

    pub fn archived_count(&self) -> i64 {
        self.query("SELECT archived_count FROM pg_stat_archiver")
            .parse()
            .unwrap()
    }

    /// Waits until the archiver has failed at least `n` more times than `base`.
    pub fn wait_failures(&self, base: i64, n: i64, timeout: Duration) {
        wait_until(&format!("{n} archive failures"), timeout, || {
            self.failed_count() >= base + n
        });
    }

    pub fn status_file(&self, walfile: &str, suffix: &str) -> PathBuf {
        self.data
            .join(format!("pg_wal/archive_status/{walfile}.{suffix}"))
    }

    /// Waits until the archiver has marked `walfile` done (the archive
    /// library returned true for it).
    pub fn wait_done(&self, walfile: &str, timeout: Duration) {
        let done = self.status_file(walfile, "done");
        wait_until(&format!("{walfile}.done"), timeout, || done.exists());
    }

    /// WAL files with a `.ready` status file, sorted by name: what the
    /// archiver still has to archive, read straight from archive_status.
    pub fn ready_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.data.join("pg_wal/archive_status"))
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .into_string()
                    .unwrap()
                    .strip_suffix(".ready")
                    .map(str::to_owned)
            })
            .collect();
        v.sort();
        v
    }

    /// Waits until nothing is left to archive.
    ///
    /// After a crash restart the postmaster refuses to restart the archiver
    /// within 10 s of its previous start (PgArchCanRestart) and retries only
    /// on its next server-loop pass, up to 60 s later unless something wakes
    /// it. A connection about once a second wakes it, as client traffic does
    /// on a live server, so the wait is bounded by the 10 s rule.
    pub fn wait_drained(&self, timeout: Duration) {
        let status = self.data.join("pg_wal/archive_status");
        let mut polls = 0u32;
        wait_until("no .ready file left", timeout, || {
            polls += 1;
            if polls.is_multiple_of(10) {
                let _ = self.psql("SELECT 1");
            }
            fs::read_dir(&status)
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".ready"))
        });
    }

    /// Copies completed WAL files out of pg_wal, for comparisons after the
    /// originals may have been recycled (crash recovery, checkpoints).
    pub fn keep_reference_copies(&self, files: &[String]) -> PathBuf {
        let dir = self.root.join("reference");
        fs::create_dir_all(&dir).unwrap();
        for f in files {
            fs::copy(self.data.join("pg_wal").join(f), dir.join(f)).unwrap();
        }
        dir
    }
}
