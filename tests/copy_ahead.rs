//! The copy-ahead worker, the shared-memory statistics and the SQL API
//! against real servers: a backlog drained with the worker's help, the worker
//! killed mid-copy, copy-ahead off, statistics equal to pg_stat_archiver,
//! persistence across restarts, reset, walarch_switch_wal() and privileges.

use std::time::Duration;

use walarch_integration::{sh, wait_until, Cluster, InitOptions};

const T: Duration = Duration::from_secs(90);

/// A cluster with 1 MB segments (so backlogs are quick to build), the
/// extension created, archiving not yet configured unless `configured`.
fn cluster(name: &str, configured: bool, extra: &[&str]) -> Cluster {
    let mut conf: Vec<&str> = vec!["checkpoint_timeout = '1h'", "walarch.parallel_copies = 3"];
    if !configured {
        conf.push("walarch.archive_directory = ''");
    }
    conf.extend_from_slice(extra);
    let mut c = Cluster::init(
        name,
        InitOptions {
            wal_segsize_mb: Some(1),
            conf: &conf,
        },
    );
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    c
}

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
    let mut stop =
        walarch_integration::as_server_user(walarch_integration::bindir().join("pg_ctl"));
    stop.arg("-D")
        .arg(&c.data)
        .args(["-m", "immediate", "-w", "stop"]);
    assert!(stop.status().unwrap().success());
    c.start();
    assert_eq!(c.stat_i64("archived_count"), 0);
    assert_ne!(c.stat("stats_reset"), reset_time);

    // Reset.
    let f = c.switch_wal();
    c.wait_done(&f, T);
    wait_until("counted", T, || c.stat_i64("archived_count") > 0);
    let reset_before = c.stat("stats_reset");
    c.query("SELECT walarch_stats_reset()");
    assert_eq!(c.query("SELECT archived_count, failed_count, archived_bytes, copied_ahead_count FROM walarch_stats()"), "0|0|0|0");
    assert_eq!(c.stat("last_archived_wal"), "");
    assert_ne!(c.stat("stats_reset"), reset_before);
}

#[test]
fn switch_wal_waits_or_times_out() {
    let c = cluster("switchwait", true, &[]);
    c.query("CREATE TABLE t(x int)");
    c.query("INSERT INTO t VALUES (1)");
    let out =
        c.query("SELECT walfile, archived FROM walarch_switch_wal(wait => true, timeout => '60s')");
    let (walfile, archived) = out.split_once('|').unwrap();
    assert_eq!(archived, "t");
    c.assert_archived_identical(walfile);

    // Archive blocked: the wait ends at the timeout with a WARNING.
    sh(&format!("chmod 0555 '{}'", c.archive_dir().display()));
    c.query("INSERT INTO t VALUES (2)");
    let mut psql = walarch_integration::as_server_user(walarch_integration::bindir().join("psql"));
    psql.args(["-X", "-A", "-t", "-h"]).arg(&c.sockdir).args([
        "-p",
        &c.port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-c",
        "SELECT walfile, archived FROM walarch_switch_wal(true, '2s')",
    ]);
    let out = psql.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.trim().ends_with("|f"), "{stdout}");
    assert!(
        stderr.contains("WARNING:  timed out waiting for WAL file"),
        "{stderr}"
    );

    // statement_timeout cancels the wait.
    let err = c
        .psql("SET statement_timeout = '500ms'; SELECT * FROM walarch_switch_wal(true, '60s')")
        .unwrap_err();
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    sh(&format!("chmod 0755 '{}'", c.archive_dir().display()));
}

#[test]
fn switch_wal_fails_clearly_in_recovery() {
    let primary = cluster("recovery-primary", true, &[]);
    let mut standby = Cluster::standby_of(&primary, "recovery-standby");
    standby.start();
    let err = standby
        .psql("SELECT * FROM walarch_switch_wal()")
        .unwrap_err();
    assert!(err.contains("ERROR:  recovery is in progress"), "{err}");
    assert!(
        err.contains("HINT:  WAL control functions cannot be executed during recovery."),
        "{err}"
    );
}

#[test]
fn privileges_monitor_reads_only_superuser_acts() {
    let c = cluster("privs", true, &[]);
    c.query("CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher; CREATE ROLE nobody LOGIN");
    let as_role = |role: &str, sql: &str| c.psql(&format!("SET ROLE {role}; {sql}"));

    assert!(as_role("watcher", "SELECT * FROM walarch_stats()").is_ok());
    assert!(as_role("watcher", "SELECT * FROM walarch_stat_archiver").is_ok());
    for sql in [
        "SELECT walarch_stats_reset()",
        "SELECT * FROM walarch_switch_wal()",
    ] {
        let err = as_role("watcher", sql).unwrap_err();
        assert!(
            err.contains("permission denied for function"),
            "{sql}: {err}"
        );
    }
    for sql in [
        "SELECT * FROM walarch_stats()",
        "SELECT * FROM walarch_stat_archiver",
    ] {
        let err = as_role("nobody", sql).unwrap_err();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    // Granting works as with pg_switch_wal().
    c.query("GRANT EXECUTE ON FUNCTION walarch_switch_wal(boolean, interval) TO nobody");
    assert!(as_role("nobody", "SELECT * FROM walarch_switch_wal()").is_ok());
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
