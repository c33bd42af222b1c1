//! Who may use the SQL API: pg_monitor reads the statistics, only a
//! superuser (or a role granted EXECUTE) resets them or switches WAL.

use walarch_integration::setups::copy_ahead_cluster as cluster;

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
