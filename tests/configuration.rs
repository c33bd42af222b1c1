//! The archive directory setting: what an operator sees when it is unset, and
//! that bad values are refused with their reason and change nothing.
//!
//! Run by scripts/test.sh once per PostgreSQL version (WALARCH_TEST_PG).

use std::fs;
use std::time::Duration;

use walarch_integration::setups::started_with_walarch;
use walarch_integration::{Cluster, InitOptions, Walarch};

const T: Duration = Duration::from_secs(60);

#[test]
fn unset_directory_warns_then_archives_after_reload() {
    let mut c = Cluster::new("unset");
    c.init_walarch(&InitOptions::default());
    c.adjust_conf("walarch.archive_directory", "''");
    c.start();
    let log = c.log_position();
    let seg = c.switch_wal();
    // PG17+ quotes the setting name: "archive_mode" enabled, ...
    c.wait_for_log("enabled, yet archiving is not configured", log, T);
    if c.server_version_num() >= 170000 {
        // PG17+: our check_configured fills the archiver's WARNING DETAIL.
        c.wait_for_log("DETAIL:  walarch.archive_directory is not set.", log, T);
    } else {
        c.wait_for_log("WARNING:  walarch.archive_directory is not set", log, T);
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
    let c = started_with_walarch("badvalues");
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
