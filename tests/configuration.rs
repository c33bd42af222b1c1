//! The settings that say where the archive is: what an operator sees when
//! none is set, that bad values are refused with their reason and change
//! nothing, and that two names for different archives archive nothing.
//!
//! Run by scripts/test.sh once per PostgreSQL version (WALARCH_TEST_PG).

use std::fs;
use std::time::Duration;

use walarch_integration::setups::started_with_walarch;
use walarch_integration::{sh, Cluster, InitOptions, Walarch};

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
    // PG17+: our check_configured fills the archiver's WARNING DETAIL;
    // before, our own WARNING carries it.
    c.wait_for_log("DETAIL:  walarch.archive_destination is not set.", log, T);
    if c.server_version_num() < 170000 {
        c.wait_for_log("WARNING:  walarch_ext: archiving is not configured", log, T);
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

#[test]
fn bad_destination_settings_are_refused_and_conflicting_names_archive_nothing() {
    let c = started_with_walarch("baddest");
    let ca = c.root.join("not-a-ca.pem");
    fs::write(&ca, b"not a certificate").unwrap();
    let creds = c.root.join("creds");
    fs::write(&creds, "aws_access_key_id = k\naws_secret_access_key = s\n").unwrap();
    sh(&format!("chmod 0644 '{}'", creds.display()));
    // Private, but someone else's.
    let foreign = c.root.join("foreign-creds");
    fs::write(
        &foreign,
        "aws_access_key_id = k\naws_secret_access_key = s\n",
    )
    .unwrap();
    sh(&format!(
        "chmod 0600 '{0}' && chown nobody '{0}'",
        foreign.display()
    ));
    let cases = [
        ("walarch.archive_destination", "s3://", "names no bucket"),
        (
            "walarch.archive_destination",
            "s3://Bad_Bucket",
            "not a valid bucket name",
        ),
        (
            "walarch.archive_destination",
            "ftp://bucket",
            "Only local directories",
        ),
        (
            "walarch.archive_destination",
            "relative",
            "must be an absolute path",
        ),
        (
            "walarch.archive_destination",
            "/nonexistent/x",
            "does not exist",
        ),
        (
            "walarch.s3_endpoint",
            "127.0.0.1:8333",
            "must start with http:// or https://",
        ),
        (
            "walarch.s3_ca_file",
            ca.to_str().unwrap(),
            "holds no PEM certificate",
        ),
        (
            "walarch.s3_ca_file",
            "/nonexistent/ca.pem",
            "Could not read",
        ),
        (
            "walarch.s3_credentials_file",
            creds.to_str().unwrap(),
            "has group or other access. The file must be owned by the server's operating system user with permissions u=rw (0600) or less, or by root with permissions u=rw,g=r (0640) or less",
        ),
        (
            "walarch.s3_credentials_file",
            foreign.to_str().unwrap(),
            "must be owned by the server's operating system user or root",
        ),
        ("walarch.s3_uri_style", "sideways", "Use auto, path or host"),
    ];
    for (name, value, detail) in cases {
        let err = c
            .psql(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .expect_err(value);
        assert!(
            err.contains(&format!("invalid value for parameter \"{name}\"")),
            "{name} = {value}: {err}"
        );
        assert!(
            err.contains("DETAIL:  ") && err.contains(detail),
            "{name} = {value}: {err}"
        );
    }
    // The compression settings: PostgreSQL's own checks say what is allowed.
    let err = c
        .psql("ALTER SYSTEM SET walarch.compression = 'lz4'")
        .unwrap_err();
    assert!(err.contains("HINT:  Available values: off, zstd."), "{err}");
    let err = c
        .psql("ALTER SYSTEM SET walarch.compression_level = 30")
        .unwrap_err();
    assert!(err.contains("outside the valid range"), "{err}");
    let auto = fs::read_to_string(c.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto.contains("walarch"),
        "a refused value was written: {auto}"
    );

    // Both names set, to different archives: reported, nothing archived
    // until it is settled.
    let other = c.root.join("other-archive");
    fs::create_dir(&other).unwrap();
    walarch_integration::chown_to_server(&other);
    c.query(&format!(
        "ALTER SYSTEM SET walarch.archive_destination = '{}'",
        other.display()
    ));
    c.query("SELECT pg_reload_conf()");
    let log = c.log_position();
    let seg = c.switch_wal();
    c.wait_for_log(
        &format!(
            "walarch.archive_destination is \"{}\" but walarch.archive_directory (its older name) is \"{}\".",
            other.display(),
            c.archive_dir().display()
        ),
        log,
        T,
    );
    assert!(c.status_file(&seg, "ready").exists());
    assert!(c.archived_wal_files().iter().all(|f| *f != seg));
    // The older name cleared: archived into the destination.
    c.query("ALTER SYSTEM SET walarch.archive_directory = ''");
    c.query("SELECT pg_reload_conf()");
    c.wait_done(&seg, T);
    assert!(other.join(&seg).exists());
}
