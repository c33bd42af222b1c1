//! A store that stops in the middle of recovery. In archive recovery,
//! `walarch restore` retries for `--retry-for`, then makes PostgreSQL stop
//! recovery: the server never opens with WAL missing, and once the store is
//! back, starting it again completes the same recovery (with and without
//! prefetching). A standby keeps running through the outage and catches up
//! when the store returns.
//!
//! PostgreSQL 15 and 18 only: the restore side does not depend on the
//! server version (the exit statuses are read the same way in 15-18), and
//! these are among the slowest tests.

use std::fs;
use std::time::Duration;

use walarch_integration::seaweed::Seaweed;
use walarch_integration::setups::batch;
use walarch_integration::{
    chown_to_server, pg_major, quoted, skipped_between_15_and_18, wait_until, BackupOptions,
    Cluster,
};

const T: Duration = Duration::from_secs(120);

/// `s3.restoring_cluster` with `options` after `walarch restore`, each call
/// delayed by 0.3 s (so that the store can be stopped while it runs).
fn recovering(s3: &Seaweed, p: &Cluster, name: &str, prefix: &str, options: &str) -> Cluster {
    let r = s3.restoring_cluster(name, p, "base", prefix);
    let command = format!("sleep 0.3 && {} {options}", s3.restore_command(prefix));
    r.adjust_conf("restore_command", &quoted(command));
    r.append_conf(&["archive_mode = off"]);
    r
}

#[test]
fn a_store_that_stops_mid_pitr_stops_recovery_and_a_restart_completes_it() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut s3 = Seaweed::start("stop-mid-pitr", None);
    let prefix = format!("pg{}/stop", pg_major());
    let p = s3.recovery_primary("stop-primary", &prefix);
    p.backup("base", &BackupOptions::without_wal());
    let segs: Vec<String> = (0..12)
        .map(|i| batch(&p, i * 100 + 1, i * 100 + 100, "row"))
        .collect();
    p.wait_drained(T);

    for (name, options) in [
        ("stop-direct", "--no-prefetch"),
        ("stop-prefetch", "--prefetch 3 --prefetch-idle 2"),
    ] {
        let options = format!("{options} --retry-for 6s --timeout 2");
        let mut r = recovering(&s3, &p, name, &prefix, &options);
        let log_path = r.log.clone();
        let log = std::thread::scope(|sc| {
            let stopper = sc.spawn(|| {
                // The store goes away after the third segment is restored.
                let log = log_path;
                wait_until("the third segment restored", T, || {
                    fs::read_to_string(&log)
                        .is_ok_and(|l| l.contains(&format!("restored log file \"{}\"", segs[2])))
                });
                s3.signal(libc::SIGKILL);
            });
            let log = r.start_expecting_recovery_to_stop(T);
            stopper.join().unwrap();
            log
        });
        assert!(
            log.contains("retrying in")
                && log.contains("is unreachable")
                && log.contains("so that PostgreSQL stops recovery")
                && log.contains("could not restore file"),
            "{name}:\n{log}"
        );
        // The store back, the same recovery goes on to the end.
        s3.restart();
        r.start_and_wait_promoted(T);
        assert_eq!(
            r.query("SELECT count(*), max(id) FROM t"),
            "1200|1200",
            "{name}"
        );
    }
}

#[test]
fn a_standby_keeps_running_through_a_store_outage_and_catches_up() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut s3 = Seaweed::start("standby-outage", None);
    let prefix = format!("pg{}/standby", pg_major());
    let p = s3.recovery_primary("outage-primary", &prefix);
    p.backup("base", &BackupOptions::without_wal());
    batch(&p, 1, 100, "before");

    // An archive-only standby (no streaming): every segment comes from the
    // store through walarch restore.
    let mut sb = s3.restoring_cluster("outage-standby", &p, "base", &prefix);
    fs::remove_file(sb.data.join("recovery.signal")).unwrap();
    fs::write(sb.data.join("standby.signal"), "").unwrap();
    chown_to_server(&sb.data);
    sb.append_conf(&["archive_mode = off", "wal_retrieve_retry_interval = '1s'"]);
    sb.start();
    wait_until("the standby has batch 1", T, || {
        sb.psql("SELECT count(*) FROM t").as_deref() == Ok("100")
    });

    s3.signal(libc::SIGKILL);
    let from = sb.log_position();
    p.query("INSERT INTO t SELECT g, 'during' FROM generate_series(101, 200) g");
    p.switch_wal();
    // The standby asks for the next segment again and again, each time
    // told it is not there (exit 1), and keeps running.
    let mut pos = sb.wait_for_log("the standby retries the file", from, T);
    pos = sb.wait_for_log("the standby retries the file", pos, T);
    sb.wait_for_log("the standby retries the file", pos, T);
    assert_eq!(sb.query("SELECT pg_is_in_recovery()"), "t");
    assert!(
        !sb.log_text().contains("aborting startup"),
        "{}",
        sb.log_text()
    );

    // The store back: the primary archives what waited, the standby
    // catches up.
    s3.restart();
    p.wait_drained(T);
    wait_until("the standby caught up", T, || {
        sb.psql("SELECT count(*), max(id) FROM t").as_deref() == Ok("200|200")
    });
    assert_eq!(sb.query("SELECT pg_is_in_recovery()"), "t");
}
