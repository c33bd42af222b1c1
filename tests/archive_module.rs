//! The archive module against real servers: what an operator sees when the
//! archive directory is unset, missing, read-only, full, or already holds a
//! file; that the archiver never dies; that every file lands byte-identical.
//!
//! Run by scripts/test.sh once per PostgreSQL version (WALARCH_TEST_PG).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use walarch_integration::{
    chown_to_server, sh, wait_until, Cluster, InitOptions, TmpfsMount, TEMP_PREFIX,
};

const T: Duration = Duration::from_secs(60);

fn started(name: &str) -> Cluster {
    let mut c = Cluster::init(name, InitOptions::default());
    c.start();
    c
}

fn no_temp_files(c: &Cluster) {
    let tmp = c.archive_temp_files();
    assert!(
        tmp.is_empty(),
        "temporary files left in the archive: {tmp:?}"
    );
}

/// Waits until the archiver has failed at least `n` more times than `base`.
fn wait_failures(c: &Cluster, base: i64, n: i64) {
    wait_until(&format!("{n} archive failures"), T, || {
        c.failed_count() >= base + n
    });
}

#[test]
fn archives_segments_byte_identical() {
    let c = started("basic");
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
    no_temp_files(&c);
}

#[test]
fn unset_directory_warns_then_archives_after_reload() {
    let mut c = Cluster::init(
        "unset",
        InitOptions {
            conf: &["walarch.archive_directory = ''"],
            ..Default::default()
        },
    );
    c.start();
    let seg = c.switch_wal();
    // PG17+ quotes the setting name: "archive_mode" enabled, ...
    c.wait_log("enabled, yet archiving is not configured", T);
    if c.server_version_num() >= 170000 {
        // PG17+: our check_configured fills the archiver's WARNING DETAIL.
        c.wait_log("DETAIL:  walarch.archive_directory is not set.", T);
    } else {
        c.wait_log("WARNING:  walarch.archive_directory is not set", T);
    }
    assert!(
        c.status_file(&seg, "ready").exists(),
        "{seg} should still be waiting"
    );
    assert!(c.archive_listing().is_empty());

    c.query(&format!(
        "ALTER SYSTEM SET walarch.archive_directory = '{}'",
        c.archive_dir().display()
    ));
    c.query("SELECT pg_reload_conf()");
    c.wait_done(&seg, T);
    c.assert_archived_identical(&seg);
}

#[test]
fn bad_directory_settings_are_refused_and_change_nothing() {
    let c = started("badvalues");
    let file = c.root.join("plainfile");
    fs::write(&file, b"x").unwrap();
    let long = format!("/{}", "d".repeat(990));
    let cases = [
        (
            "relative/archive",
            "The archive directory must be an absolute path.",
        ),
        (
            "/nonexistent/walarch/archive",
            "The specified archive directory does not exist.",
        ),
        (
            file.to_str().unwrap(),
            "The specified archive directory is not a directory.",
        ),
        (long.as_str(), "The archive directory path is too long"),
    ];
    let original = c.query("SHOW walarch.archive_directory");
    for (value, detail) in cases {
        let err = c
            .psql(&format!(
                "ALTER SYSTEM SET walarch.archive_directory = '{value}'"
            ))
            .expect_err(value);
        assert!(
            err.contains("invalid value for parameter \"walarch.archive_directory\""),
            "{value}: {err}"
        );
        assert!(
            err.contains(&format!("DETAIL:  {detail}")),
            "{value}: {err}"
        );
    }
    assert_eq!(c.query("SHOW walarch.archive_directory"), original);
    let auto = fs::read_to_string(c.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.contains("walarch"),
        "ALTER SYSTEM wrote a refused value: {auto}"
    );

    // It is a reload-time setting, and the prefix is reserved.
    let err = c
        .psql("SET walarch.archive_directory = '/tmp'")
        .unwrap_err();
    assert!(err.contains("cannot be changed now"), "{err}");
    let err = c.psql("SET walarch.no_such_setting = 1").unwrap_err();
    assert!(
        err.contains("invalid configuration parameter name \"walarch.no_such_setting\""),
        "{err}"
    );
}

/// Breaks the archive directory, checks that archiving fails with `expect` in
/// the WARNING while the archiver stays up, repairs it, and checks that
/// archiving resumes with nothing lost.
fn fails_then_resumes(
    name: &str,
    break_it: impl Fn(&Cluster),
    fix_it: impl Fn(&Cluster),
    expect: &str,
) {
    let c = started(name);
    let first = c.switch_wal();
    c.wait_done(&first, T);
    let pid = c.archiver_pid().expect("archiver running");
    let failed = c.failed_count();

    break_it(&c);
    let stuck = c.switch_wal();
    // The archiver tries three times in a row before waiting.
    wait_failures(&c, failed, 3);
    c.wait_log(expect, T);
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
    no_temp_files(&c);
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
fn different_file_under_final_name_is_refused_and_untouched() {
    let c = started("conflict");
    let next = c.current_walfile();
    let foreign = c.archive_dir().join(&next);
    fs::write(&foreign, b"not the WAL you are looking for").unwrap();
    chown_to_server(&foreign);
    let failed = c.failed_count();

    let seg = c.switch_wal();
    assert_eq!(seg, next);
    wait_failures(&c, failed, 1);
    c.wait_log(
        &format!(
            "archive file \"{}\" already exists with different contents",
            foreign.display()
        ),
        T,
    );
    assert_eq!(
        fs::read(&foreign).unwrap(),
        b"not the WAL you are looking for"
    );
    assert!(c.status_file(&seg, "ready").exists());
    no_temp_files(&c);

    // The operator moves the foreign file away: archiving resumes.
    fs::remove_file(&foreign).unwrap();
    c.switch_wal();
    c.wait_done(&seg, T);
    c.assert_archived_identical(&seg);
}

#[test]
fn identical_file_under_final_name_is_accepted_as_is() {
    let c = started("identical");
    // Hold archiving back while the segment completes, then put an identical
    // copy in place, as a crash between archiving and .done would leave it.
    sh(&format!("chmod 0555 '{}'", c.archive_dir().display()));
    let failed = c.failed_count();
    let seg = c.switch_wal();
    wait_failures(&c, failed, 1);
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
fn disk_full_leaves_no_partial_file_and_resumes_by_itself() {
    // 1 MB segments (any wal_segment_size works) on a 2.5 MB tmpfs: two fit.
    let mut c = Cluster::init(
        "enospc",
        InitOptions {
            wal_segsize_mb: Some(1),
            ..Default::default()
        },
    );
    let _mount = TmpfsMount::new(&c.archive_dir(), "2560k");
    c.start();
    let failed = c.failed_count();
    let mut archived = vec![];
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
    c.wait_log("No space left on device", T);
    c.wait_log("The archive device is full", T);
    assert!(
        !c.archive_dir().join(&full).exists(),
        "{full} appeared under its final name"
    );
    no_temp_files(&c);
    for f in &archived {
        c.assert_archived_identical(f);
    }

    // Space comes back (the operator moved old files off): the archiver
    // picks the file up again on its own, without any new WAL.
    fs::remove_file(c.archive_dir().join(&archived[0])).unwrap();
    c.wait_done(&full, Duration::from_secs(120));
    c.assert_archived_identical(&full);
    no_temp_files(&c);
}

#[test]
fn crash_leftover_temp_files_are_swept_at_start() {
    let mut c = Cluster::init("sweep", InitOptions::default());
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

    c.start();
    wait_until("leftover removed", T, || !leftover.exists());
    c.wait_log("removed leftover temporary file", T);
    assert!(live.exists(), "a live process's temporary file was removed");
    let seg = c.switch_wal();
    c.wait_done(&seg, T);
    c.assert_archived_identical(&seg);
}

#[test]
fn backup_history_file_is_archived() {
    let c = started("backup");
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
    let primary = started("tl-primary");
    primary.switch_wal();
    let mut standby = Cluster::standby_of(&primary, "tl-standby");
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
