//! Archiving into a SeaweedFS cluster (a master with replication 001, three
//! volume servers, a filer and the S3 gateway, each its own process) while
//! one volume server is SIGKILLed mid-backlog: archiving carries on or
//! retries, and every segment ends up in the bucket, intact.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walarch_integration::crash::backlog;
use walarch_integration::seaweed::{signal, Seaweed, SIGKILL};
use walarch_integration::{pg_major, sh, wait_until, Walarch};

const T: Duration = Duration::from_secs(180);

/// Bytes under a volume server's directory.
fn du(dir: &Path) -> u64 {
    sh(&format!("du -sb '{}' | cut -f1", dir.display()))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_volume_server_killed_mid_backlog_loses_nothing() {
    let s3 = Seaweed::start_cluster("pg-cluster");
    assert_eq!(s3.volume_pids.len(), 3);
    let prefix = format!("pg{}/cluster", pg_major());
    let mut c = s3.archiving_cluster("s3-cluster", &prefix, &["walarch.parallel_copies = 4"]);
    c.query("CREATE TABLE t(id int, note text)");
    let archiver = c.archiver_pid().expect("archiver running");
    let reference = c.root.join("reference");
    fs::create_dir_all(&reference).unwrap();
    let (mut rows, mut all) = (0, vec![]);

    // A backlog built while archiving is paused (no destination), then
    // released: the uploads are under way when the volume server dies.
    c.adjust_conf("walarch.archive_destination", "''");
    c.query("SELECT pg_reload_conf()");
    for round in 0..4 {
        backlog(&c, round, &mut rows, &reference, &mut all);
    }
    let before = c.archived_count();
    c.adjust_conf(
        "walarch.archive_destination",
        &format!("'{}'", s3.url(&prefix)),
    );
    c.query("SELECT pg_reload_conf()");
    wait_until("the first uploads", T, || c.archived_count() >= before + 2);

    // The volume server holding the most data: replicas of most of what
    // was written, and a write target of many open volumes.
    let victim = (0..3)
        .max_by_key(|i| du(&s3.dir.join(format!("volume{}", i + 1))))
        .unwrap();
    signal(s3.volume_pids[victim], SIGKILL);
    let left = c.ready_files().len();
    eprintln!(
        "killed volume{} with {left} of {} segments still to upload",
        victim + 1,
        all.len()
    );
    // More WAL after the loss.
    for round in 4..6 {
        backlog(&c, round, &mut rows, &reference, &mut all);
    }
    c.wait_drained(T);
    eprintln!(
        "drained: {} failures counted, last_error {:?}",
        c.failed_count() + c.stat_i64("copy_ahead_failures"),
        c.stat("last_error")
    );

    assert_eq!(
        c.archiver_pid(),
        Some(archiver),
        "the archiver was restarted"
    );
    for f in &all {
        s3.assert_holds(&c, &prefix, f, &reference.join(f));
    }
    let (code, out, err) = s3.walarch(&["verify", &s3.url(&prefix)]);
    assert_eq!(code, 0, "verify: {out}{err}");
    c.stop();
}
