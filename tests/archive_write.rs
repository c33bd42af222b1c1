//! What the archive module writes: every file lands byte-identical under its
//! own name, a file already under that name is kept or refused by its
//! contents, crash leftovers are swept, and backup history, timeline history
//! and `.partial` files are archived too.
//!
//! Run by scripts/test.sh once per PostgreSQL version (WALARCH_TEST_PG).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use walarch_integration::setups::{standby_of, started_with_walarch};
use walarch_integration::{
    chown_to_server, sh, wait_until, Cluster, InitOptions, Walarch, TEMP_PREFIX,
};

const T: Duration = Duration::from_secs(60);

#[test]
fn archives_segments_byte_identical() {
    let c = started_with_walarch("basic");
    let before = c.archived_count();
    let mut files = vec![];
    for _ in 0..3 {
        files.push(c.switch_wal());
    }
    for f in &files {
        c.wait_done(f, T);
        c.assert_archived_identical(f);
    }
    assert!(c.archived_count() >= before + 3);
    assert_eq!(c.failed_count(), 0, "{}", c.log_text());
    c.assert_no_temp_files();
}

#[test]
fn different_file_under_final_name_is_refused_and_untouched() {
    let c = started_with_walarch("conflict");
    let next = c.current_walfile();
    let foreign = c.archive_dir().join(&next);
    fs::write(&foreign, b"not the WAL you are looking for").unwrap();
    chown_to_server(&foreign);
    let failed = c.failed_count();

    let log = c.log_position();
    let seg = c.switch_wal();
    assert_eq!(seg, next);
    c.wait_failures(failed, 1, T);
    c.wait_for_log(
        &format!(
            "archive file \"{}\" already exists with different contents",
            foreign.display()
        ),
        log,
        T,
    );
    assert_eq!(
        fs::read(&foreign).unwrap(),
        b"not the WAL you are looking for"
    );
    assert!(c.status_file(&seg, "ready").exists());
    c.assert_no_temp_files();

    // The operator moves the foreign file away: archiving resumes.
    fs::remove_file(&foreign).unwrap();
    c.switch_wal();
    c.wait_done(&seg, T);
    c.assert_archived_identical(&seg);
}

#[test]
fn identical_file_under_final_name_is_accepted_as_is() {
    let c = started_with_walarch("identical");
    // Hold archiving back while the segment completes, then put an identical
    // copy in place, as a crash between archiving and .done would leave it.
    sh(&format!("chmod 0555 '{}'", c.archive_dir().display()));
    let failed = c.failed_count();
    let seg = c.switch_wal();
    c.wait_failures(failed, 1, T);
    let copy = c.archive_dir().join(&seg);
    fs::copy(c.data.join("pg_wal").join(&seg), &copy).unwrap();
    chown_to_server(&copy);
    let inode = fs::metadata(&copy).unwrap().ino();
    sh(&format!("chmod 0755 '{}'", c.archive_dir().display()));

    c.switch_wal();
    c.wait_done(&seg, T);
    assert_eq!(
        fs::metadata(&copy).unwrap().ino(),
        inode,
        "the existing file was replaced"
    );
    c.assert_archived_identical(&seg);
    assert!(!c.log_text().contains("different contents"));
}

#[test]
fn crash_leftover_temp_files_are_swept_at_start() {
    let mut c = Cluster::new("sweep");
    c.init_walarch(&InitOptions::default());
    // A leftover of a process that no longer exists, and a temporary file of
    // a live process (PID 1), which must be left alone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let leftover = c
        .archive_dir()
        .join(format!("{TEMP_PREFIX}000000010000000000000001.{dead}.1f"));
    let live = c
        .archive_dir()
        .join(format!("{TEMP_PREFIX}000000010000000000000002.1.2f"));
    fs::write(&leftover, vec![0u8; 8192]).unwrap();
    fs::write(&live, vec![0u8; 8192]).unwrap();
    chown_to_server(&c.archive_dir());

    let log = c.log_position();
    c.start();
    wait_until("leftover removed", T, || !leftover.exists());
    c.wait_for_log("removed leftover temporary file", log, T);
    assert!(live.exists(), "a live process's temporary file was removed");
    let seg = c.switch_wal();
    c.wait_done(&seg, T);
    c.assert_archived_identical(&seg);
}

#[test]
fn backup_history_file_is_archived() {
    let c = started_with_walarch("backup");
    let out = c.query(
        "SELECT pg_backup_start('walarch test', true); SELECT lsn FROM pg_backup_stop(true)",
    );
    assert!(!out.is_empty());
    let listing = c.archive_listing();
    let backup = listing
        .iter()
        .find(|n| n.ends_with(".backup"))
        .unwrap_or_else(|| panic!("{listing:?}"));
    let text = fs::read_to_string(c.archive_dir().join(backup)).unwrap();
    assert!(text.contains("LABEL: walarch test"), "{text}");
}

#[test]
fn promotion_archives_history_and_partial_files() {
    let primary = started_with_walarch("tl-primary");
    primary.switch_wal();
    let mut standby = standby_of(&primary, "tl-standby");
    standby.start();
    primary.query("CREATE TABLE before_promote AS SELECT generate_series(1, 1000) x");
    wait_until("standby replay", T, || {
        standby
            .psql("SELECT count(*) FROM before_promote")
            .as_deref()
            == Ok("1000")
    });
    // Promote mid-segment (the primary keeps running): the old timeline's last
    // segment becomes a .partial.
    standby.promote();

    wait_until("00000002.history archived", T, || {
        standby
            .archive_listing()
            .iter()
            .any(|n| n == "00000002.history")
    });
    wait_until(".partial archived", T, || {
        standby
            .archive_listing()
            .iter()
            .any(|n| n.ends_with(".partial"))
    });
    standby.assert_archived_identical("00000002.history");
    let partial = standby
        .archive_listing()
        .into_iter()
        .find(|n| n.ends_with(".partial"))
        .unwrap();
    standby.wait_done(&partial, T);
    // The .partial may already be recycled from pg_wal; when it is still
    // there it must match.
    if standby.data.join("pg_wal").join(&partial).exists() {
        standby.assert_archived_identical(&partial);
    }
    // And the new timeline archives too.
    let seg = standby.switch_wal();
    assert!(seg.starts_with("00000002"), "{seg}");
    standby.wait_done(&seg, T);
    standby.assert_archived_identical(&seg);
}
