//! Archiving into a directory that is missing, read-only or full: each
//! attempt fails with the OS error in a WARNING, the archiver never dies, no
//! partial file is left, and archiving resumes once the directory is fixed.
//!
//! Run by scripts/test.sh once per PostgreSQL version (WALARCH_TEST_PG).

use std::fs;
use std::time::Duration;

use walarch_integration::setups::started_with_walarch;
use walarch_integration::{sh, wait_until, Cluster, InitOptions, TmpfsMount, Walarch};

const T: Duration = Duration::from_secs(60);

/// Breaks the archive directory, checks that archiving fails with `expect` in
/// the WARNING while the archiver stays up, repairs it, and checks that
/// archiving resumes with nothing lost.
fn fails_then_resumes(
    name: &str,
    break_it: impl Fn(&Cluster),
    fix_it: impl Fn(&Cluster),
    expect: &str,
) {
    let c = started_with_walarch(name);
    let first = c.switch_wal();
    c.wait_done(&first, T);
    let pid = c.archiver_pid().expect("archiver running");
    let failed = c.failed_count();

    let log = c.log_position();
    break_it(&c);
    let stuck = c.switch_wal();
    // The archiver tries three times in a row before waiting.
    c.wait_failures(failed, 3, T);
    c.wait_for_log(expect, log, T);
    assert!(c.status_file(&stuck, "ready").exists());
    assert_eq!(
        c.archiver_pid(),
        Some(pid),
        "the archiver restarted: an ERROR escaped the callback"
    );
    assert!(!c.log_text().contains("FATAL"), "{}", c.log_text());

    fix_it(&c);
    // New WAL wakes the archiver, which retries the stuck file first.
    let next = c.switch_wal();
    for f in [&first, &stuck, &next] {
        c.wait_done(f, T);
        c.assert_archived_identical(f);
    }
    assert_eq!(c.archiver_pid(), Some(pid));
    c.assert_no_temp_files();
}

#[test]
fn missing_directory_fails_without_killing_archiver_then_resumes() {
    fails_then_resumes(
        "missing",
        |c| fs::rename(c.archive_dir(), c.root.join("archive.moved")).unwrap(),
        |c| fs::rename(c.root.join("archive.moved"), c.archive_dir()).unwrap(),
        "No such file or directory",
    );
}

#[test]
fn read_only_directory_fails_without_killing_archiver_then_resumes() {
    fails_then_resumes(
        "readonly",
        |c| sh(&format!("chmod 0555 '{}'", c.archive_dir().display())).truncate(0),
        |c| sh(&format!("chmod 0755 '{}'", c.archive_dir().display())).truncate(0),
        "Permission denied",
    );
}

#[test]
fn disk_full_leaves_no_partial_file_and_resumes_by_itself() {
    // 1 MB segments (any wal_segment_size works) on a 2.5 MB tmpfs: two fit.
    let mut c = Cluster::new("enospc");
    c.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let _mount = TmpfsMount::new(&c.archive_dir(), "2560k");
    c.start();
    let failed = c.failed_count();
    let mut archived = vec![];
    let log = c.log_position();
    let full = loop {
        let seg = c.switch_wal();
        wait_until(&format!("{seg} archived or failed"), T, || {
            c.status_file(&seg, "done").exists() || c.failed_count() > failed
        });
        if c.failed_count() > failed {
            break seg;
        }
        archived.push(seg);
        assert!(archived.len() <= 3, "the tmpfs never filled up");
    };
    c.wait_for_log("No space left on device", log, T);
    c.wait_for_log("The archive device is full", log, T);
    assert!(
        !c.archive_dir().join(&full).exists(),
        "{full} appeared under its final name"
    );
    c.assert_no_temp_files();
    for f in &archived {
        c.assert_archived_identical(f);
    }

    // Space comes back (the operator moved old files off): the archiver
    // picks the file up again on its own, without any new WAL.
    fs::remove_file(c.archive_dir().join(&archived[0])).unwrap();
    c.wait_done(&full, Duration::from_secs(120));
    c.assert_archived_identical(&full);
    c.assert_no_temp_files();
}
