//! The copy-ahead worker against real servers: a backlog drained with its
//! help, the worker killed mid-copy, copy-ahead off, and the worker's process
//! title and prompt exit at shutdown.

use std::time::Duration;

use walarch_integration::setups::copy_ahead_cluster as cluster;
use walarch_integration::{sh, wait_until, Cluster, Walarch};

const T: Duration = Duration::from_secs(90);

fn configure_archive(c: &Cluster) {
    c.query(&format!(
        "ALTER SYSTEM SET walarch.archive_directory = '{}'",
        c.archive_dir().display()
    ));
    c.query("SELECT pg_reload_conf()");
}

fn assert_archive_complete(c: &Cluster, files: &[String]) {
    for f in files {
        c.assert_archived_identical(f);
    }
    let tmp = c.archive_temp_files();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

#[test]
fn backlog_of_64_segments_drains_with_copy_ahead() {
    let c = cluster("backlog", false, &[]);
    let files = c.switch_many(64);
    // Earlier segments may be waiting too (CREATE EXTENSION and the first
    // table can fill a 1 MB segment): compare with archive_status itself.
    let ready = c.ready_files();
    assert!(
        ready.len() >= 64 && files.iter().all(|f| ready.contains(f)),
        "{ready:?}"
    );
    assert_eq!(c.stat_i64("pending_count"), ready.len() as i64);
    assert_eq!(c.stat_i64("pending_bytes"), (ready.len() as i64) << 20);
    assert_eq!(c.stat("oldest_pending_wal"), ready[0]);
    assert!(!c.stat("worker_pid").is_empty(), "worker not running");
    assert_eq!(
        c.query("SHOW walarch.parallel_copies"),
        "3",
        "a walarch.* setting from postgresql.conf was lost"
    );
    assert!(
        !c.log_text().contains("invalid configuration parameter"),
        "{}",
        c.log_text()
    );

    configure_archive(&c);
    c.wait_drained(T);
    for f in &files {
        c.wait_done(f, T);
    }
    assert_archive_complete(&c, &files);
    let ahead = c.stat_i64("copied_ahead_count");
    assert!(ahead > 0, "the worker copied nothing ahead");
    assert!(c.stat_i64("archived_count") >= 64);
    assert!(c.stat_i64("archived_bytes") >= 64 << 20);
    // Stored as they are: every byte archived was written.
    assert_eq!(c.stat_i64("stored_bytes"), c.stat_i64("archived_bytes"));
    assert_eq!(c.stat_i64("pending_count"), 0);
    assert_eq!(c.stat_i64("failed_count"), 0, "{}", c.log_text());
    eprintln!("copied ahead: {ahead} of {}", c.stat_i64("archived_count"));
}

#[test]
fn worker_killed_mid_copy_loses_nothing() {
    let c = cluster("killworker", false, &[]);
    let files = c.switch_many(64);
    // Crash recovery may recycle archived segments: compare with copies.
    let reference = c.keep_reference_copies(&files);
    configure_archive(&c);
    // Kill the worker as soon as it has copied something, three times over.
    // A worker with shared-memory access dying on a signal makes the
    // postmaster restart the whole cluster: the test waits for that too.
    for round in 0..3 {
        wait_until("worker running", T, || {
            c.psql("SELECT worker_pid FROM walarch_stats()")
                .is_ok_and(|p| !p.is_empty())
        });
        let pid: i32 = c.stat("worker_pid").parse().unwrap();
        wait_until("some copy activity", T, || {
            c.archive_listing().len() > round * 5 || c.psql("SELECT 1").is_err()
        });
        c.kill(pid, "KILL");
        std::thread::sleep(Duration::from_millis(300));
        c.wait_ready(T);
    }
    c.wait_drained(Duration::from_secs(180));
    let more = c.switch_wal();
    c.wait_done(&more, T);
    for f in &files {
        c.assert_archived_equals(f, &reference);
    }
    assert_archive_complete(&c, &[more]);
    assert!(
        c.log_text().contains("terminated by signal 9"),
        "the worker was not killed"
    );
}

#[test]
fn copy_ahead_off_still_archives_everything() {
    let c = cluster("aheadoff", false, &["walarch.copy_ahead = off"]);
    let files = c.switch_many(20);
    configure_archive(&c);
    c.wait_drained(T);
    for f in &files {
        c.wait_done(f, T);
    }
    assert_archive_complete(&c, &files);
    assert_eq!(c.stat_i64("copied_ahead_count"), 0);
    assert!(c.stat_i64("archived_count") >= 20);
}

#[test]
fn worker_shows_its_title_and_exits_promptly_at_shutdown_mid_drain() {
    let mut c = cluster("shutdown", false, &[]);
    let pid = c.stat("worker_pid");
    let title = sh(&format!("ps -o cmd= -p {pid}"));
    assert!(title.contains("walarch_ext copy-ahead"), "{title}");
    c.switch_many(64);
    configure_archive(&c);
    // Stop while the worker is copying: pg_ctl waits at most 60 s.
    wait_until("copying started", T, || c.archive_listing().len() >= 2);
    c.stop();
    assert!(
        c.log_text().contains("copy-ahead worker exiting"),
        "{}",
        c.log_text()
    );
    // And it comes back with the server.
    c.start();
    wait_until("worker back", T, || !c.stat("worker_pid").is_empty());
}
