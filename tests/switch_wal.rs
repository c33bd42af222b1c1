//! walarch_switch_wal() against real servers: it waits for the archive or
//! times out with a WARNING, statement_timeout cancels it, and it fails
//! clearly during recovery.

use walarch_integration::setups::{copy_ahead_cluster as cluster, standby_of};
use walarch_integration::{sh, PsqlOutput, Walarch};

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
    let PsqlOutput { stdout, stderr, .. } =
        c.psql_output("SELECT walfile, archived FROM walarch_switch_wal(true, '2s')");
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
    let mut standby = standby_of(&primary, "recovery-standby");
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
