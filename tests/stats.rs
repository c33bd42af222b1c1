//! walarch_stats() against real servers: equal to pg_stat_archiver after
//! successes and failures, kept across a clean restart but not a crash, and
//! reset.

use std::time::Duration;

use walarch_integration::setups::copy_ahead_cluster as cluster;
use walarch_integration::{sh, wait_until, Cluster, Walarch};

const T: Duration = Duration::from_secs(90);

/// The columns compared with pg_stat_archiver, times aside.
const PG_COLUMNS: &str =
    "SELECT archived_count, last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver";

/// Polls until the first six columns of walarch_stats() equal those of
/// pg_stat_archiver (the archiver updates its own right after our callback
/// returns), then checks the times agree within a second.
fn assert_stats_agree(c: &Cluster) {
    let theirs = PG_COLUMNS;
    let ours = &PG_COLUMNS.replace("pg_stat_archiver", "walarch_stats()");
    let deadline = std::time::Instant::now() + T;
    loop {
        let seen = (c.query(ours), c.query(theirs));
        if seen.0 == seen.1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "walarch_stats() {} != pg_stat_archiver {} after {T:?}",
            seen.0,
            seen.1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let times = c.query(
        "SELECT coalesce(abs(extract(epoch FROM w.last_archived_time - p.last_archived_time)) < 1, w.last_archived_time IS NULL AND p.last_archived_time IS NULL) \
            AND coalesce(abs(extract(epoch FROM w.last_failed_time - p.last_failed_time)) < 1, w.last_failed_time IS NULL AND p.last_failed_time IS NULL) \
         FROM walarch_stats() w, pg_stat_archiver p",
    );
    assert_eq!(
        times,
        "t",
        "times differ: {} vs {}",
        c.query("SELECT last_archived_time, last_failed_time FROM walarch_stats()"),
        c.query("SELECT last_archived_time, last_failed_time FROM pg_stat_archiver")
    );
}

#[test]
fn stats_equal_pg_stat_archiver_after_successes_and_failures() {
    let c = cluster("statsagree", true, &[]);
    let files = c.switch_many(5);
    c.wait_done(files.last().unwrap(), T);
    assert_stats_agree(&c);
    assert_eq!(c.stat_i64("failed_count"), 0);

    // Failures: a read-only archive; every failed attempt counts once.
    sh(&format!("chmod 0555 '{}'", c.archive_dir().display()));
    let stuck = c.switch_wal();
    wait_until("3 failures", T, || c.stat_i64("failed_count") >= 3);
    assert_eq!(c.stat("last_failed_wal"), stuck);
    assert!(
        c.stat("last_error").contains("Permission denied"),
        "{}",
        c.stat("last_error")
    );
    sh(&format!("chmod 0755 '{}'", c.archive_dir().display()));
    let next = c.switch_wal();
    c.wait_done(&next, T);
    c.wait_done(&stuck, T);
    assert_stats_agree(&c);
    assert!(c.stat_i64("failed_count") >= 3);
}

#[test]
fn stats_survive_clean_restart_not_crash_and_reset_works() {
    let mut c = cluster("persist", true, &[]);
    let files = c.switch_many(3);
    c.wait_done(files.last().unwrap(), T);
    assert_stats_agree(&c);
    let reset_time = c.stat("stats_reset");
    let theirs_before = c.query(PG_COLUMNS);

    // A clean shutdown switches to a new segment when the current one holds
    // WAL, and the archiver archives it in a last round after the shutdown
    // checkpoint. Write some WAL so that round always has a file.
    c.query("INSERT INTO walarch_load SELECT generate_series(1, 100)");
    let last = c.current_walfile();
    c.restart();
    assert!(c.log_text().contains("restored archive statistics"));
    assert_eq!(
        c.stat("stats_reset"),
        reset_time,
        "stats_reset changed across a clean restart"
    );
    // Ours counted every file, the shutdown round's included: one archive_file
    // success per WAL file in the archive (no duplicates, no failures here).
    let in_archive = c.archived_wal_files();
    assert!(
        in_archive.contains(&last),
        "{last} not archived at shutdown: {in_archive:?}"
    );
    assert_eq!(
        c.stat_i64("archived_count"),
        in_archive.len() as i64,
        "{in_archive:?}"
    );
    assert_eq!(c.stat("last_archived_wal"), last);
    if walarch_integration::pg_major() >= 18 {
        assert_stats_agree(&c);
    } else {
        // Up to 17 the checkpointer saves PostgreSQL's statistics before the
        // archiver's last round, so pg_stat_archiver keeps that round only
        // when the archiver happened to archive the file earlier.
        let theirs = c.query(PG_COLUMNS);
        let ours = c.query(&PG_COLUMNS.replace("pg_stat_archiver", "walarch_stats()"));
        assert!(theirs == ours || theirs == theirs_before, "pg_stat_archiver {theirs}: neither ours ({ours}) nor as before the shutdown ({theirs_before})");
    }

    // A crash (immediate stop) discards them, as PostgreSQL does its own.
    c.stop_mode("immediate");
    c.start();
    assert_eq!(c.stat_i64("archived_count"), 0);
    assert_ne!(c.stat("stats_reset"), reset_time);

    // Reset.
    let f = c.switch_wal();
    c.wait_done(&f, T);
    wait_until("counted", T, || c.stat_i64("archived_count") > 0);
    let reset_before = c.stat("stats_reset");
    c.query("SELECT walarch_stats_reset()");
    assert_eq!(c.query("SELECT archived_count, failed_count, archived_bytes, stored_bytes, copied_ahead_count FROM walarch_stats()"), "0|0|0|0|0");
    assert_eq!(c.stat("last_archived_wal"), "");
    assert_ne!(c.stat("stats_reset"), reset_before);
}

#[test]
fn transfer_times_and_bytes_in_flight() {
    let c = cluster("transfers", true, &[]);
    // Before anything is stored the times are NULL, not zero. Whatever the
    // start-up left to archive is finished first, so that no store ends
    // after the reset.
    c.wait_drained(T);
    wait_until("nothing in flight", T, || {
        c.stat_i64("bytes_in_flight") == 0
    });
    c.query("SELECT walarch_stats_reset()");
    assert_eq!(c.stat("last_transfer_ms"), "");
    assert_eq!(c.stat("mean_transfer_ms"), "");
    let files = c.switch_many(3);
    c.wait_done(files.last().unwrap(), T);
    c.wait_drained(T);
    let last: f64 = c.stat("last_transfer_ms").parse().unwrap();
    let mean: f64 = c.stat("mean_transfer_ms").parse().unwrap();
    assert!(last > 0.0 && mean > 0.0, "last {last} ms, mean {mean} ms");
    // Nothing is being stored once drained.
    assert_eq!(c.stat_i64("bytes_in_flight"), 0);
    // A backlog on a read-only archive: the worker and the archiver keep
    // trying, and what they hold is in flight meanwhile or not at all,
    // never negative or stale once it drains.
    sh(&format!("chmod 0555 '{}'", c.archive_dir().display()));
    let stuck = c.switch_wal();
    wait_until("a failure", T, || c.stat_i64("failed_count") >= 1);
    assert!(c.stat_i64("bytes_in_flight") >= 0);
    sh(&format!("chmod 0755 '{}'", c.archive_dir().display()));
    c.wait_done(&stuck, T);
    c.wait_drained(T);
    wait_until("nothing in flight", T, || {
        c.stat_i64("bytes_in_flight") == 0
    });
}
