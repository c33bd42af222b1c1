//! Extension upgrades: the schema of 0.1.0 (as that release generated it,
//! kept in tests/fixtures), updated with `ALTER EXTENSION ... UPDATE`, must
//! equal a fresh install of the current version: functions, the view, and
//! privileges; and privileges an administrator changed survive it.

use std::path::PathBuf;
use std::process::Command;

use walarch_integration::setups::started_with_walarch;
use walarch_integration::{bindir, sh};

/// Every object of the extension, one line each, with what matters to a
/// user: signature, result, volatility, parallel safety, strictness, the C
/// symbol, the view's definition, and the privileges.
const CATALOG: &str = r#"
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT format('function %s returns %s [%s%s strict=%s] symbol=%s acl=%s',
                p.oid::regprocedure, pg_get_function_result(p.oid),
                p.provolatile, p.proparallel, p.proisstrict, p.prosrc,
                coalesce(p.proacl::text, 'default'))
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'walarch_ext'
  UNION ALL
  SELECT format('function %s defaults %s', p.oid::regprocedure, pg_get_function_arguments(p.oid))
  FROM pg_proc p
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'walarch_ext'
  UNION ALL
  SELECT format('initial privileges of %s: %s', p.oid::regprocedure, i.initprivs)
  FROM pg_proc p
  JOIN pg_init_privs i ON i.classoid = 'pg_proc'::regclass AND i.objoid = p.oid AND i.objsubid = 0
  JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'walarch_ext'
  UNION ALL
  SELECT format('initial privileges of %s: %s', c.relname, i.initprivs)
  FROM pg_class c
  JOIN pg_init_privs i ON i.classoid = 'pg_class'::regclass AND i.objoid = c.oid AND i.objsubid = 0
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'walarch_ext'
  UNION ALL
  SELECT format('relation %s kind=%s def=%s acl=%s', c.relname, c.relkind,
                pg_get_viewdef(c.oid), coalesce(c.relacl::text, 'default'))
  FROM pg_class c
  JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'walarch_ext'
) objects(x)
"#;

fn extension_dir() -> PathBuf {
    let out = Command::new(bindir().join("pg_config"))
        .arg("--sharedir")
        .output()
        .expect("run pg_config");
    assert!(out.status.success());
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()).join("extension")
}

#[test]
fn update_from_0_1_0_equals_a_fresh_install() {
    // The base script of 0.1.0 is not installed by the current build.
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/walarch_ext--0.1.0.sql");
    sh(&format!(
        "install -m 0644 '{}' '{}'",
        fixture.display(),
        extension_dir().display()
    ));
    let c = started_with_walarch("upgrade");
    let current =
        c.query("SELECT default_version FROM pg_available_extensions WHERE name = 'walarch_ext'");
    assert_ne!(current, "0.1.0");
    assert_eq!(
        c.query(&format!(
            "SELECT path FROM pg_extension_update_paths('walarch_ext') \
             WHERE source = '0.1.0' AND target = '{current}'"
        )),
        format!("0.1.0--{current}"),
        "a direct upgrade script from 0.1.0"
    );

    c.query("CREATE EXTENSION walarch_ext VERSION '0.1.0'");
    let old = c.query(CATALOG);
    // What an administrator changed on the objects the update recreates:
    // a grant (one with grant option), and a default revoked.
    let admin = "CREATE ROLE \"Wal Reader\"; \
         GRANT EXECUTE ON FUNCTION walarch_stats() TO \"Wal Reader\"; \
         GRANT SELECT ON walarch_stat_archiver TO \"Wal Reader\" WITH GRANT OPTION; \
         REVOKE SELECT ON walarch_stat_archiver FROM pg_monitor";
    c.query(admin);
    let privileges = "SELECT has_function_privilege('Wal Reader', 'walarch_stats()', 'EXECUTE'), \
         has_table_privilege('Wal Reader', 'walarch_stat_archiver', 'SELECT WITH GRANT OPTION'), \
         has_table_privilege('pg_monitor', 'walarch_stat_archiver', 'SELECT'), \
         has_function_privilege('pg_monitor', 'walarch_stats()', 'EXECUTE'), \
         has_function_privilege('public', 'walarch_stats()', 'EXECUTE')";
    assert_eq!(c.query(privileges), "t|t|f|t|f");
    c.query("ALTER EXTENSION walarch_ext UPDATE");
    assert_eq!(
        c.query("SELECT extversion FROM pg_extension WHERE extname = 'walarch_ext'"),
        current
    );
    assert_eq!(
        c.query(privileges),
        "t|t|f|t|f",
        "the update lost or changed granted privileges"
    );
    // The role's privileges are recorded as such: it cannot be dropped
    // while they exist.
    assert!(c.psql("DROP ROLE \"Wal Reader\"").is_err());
    // They are the administrator's, not the extension's initial ones: what
    // pg_dump dumps is the difference.
    assert_eq!(
        c.query(
            "SELECT count(*) FROM pg_init_privs \
             WHERE initprivs::text LIKE '%Wal Reader%' \
                OR (objoid = 'walarch_stat_archiver'::regclass AND initprivs::text NOT LIKE '%pg_monitor=r/%')"
        ),
        "0"
    );
    // Undone, for the comparison with a fresh install below (the role can
    // be dropped once its privileges are revoked).
    c.query(
        "REVOKE ALL ON FUNCTION walarch_stats() FROM \"Wal Reader\"; \
         REVOKE ALL ON walarch_stat_archiver FROM \"Wal Reader\" CASCADE; \
         GRANT SELECT ON walarch_stat_archiver TO pg_monitor; \
         DROP ROLE \"Wal Reader\"",
    );
    let upgraded = c.query(CATALOG);
    // The upgraded objects work against the new library.
    c.query("SELECT archived_count FROM walarch_stats()");
    c.query("SELECT count(*) FROM walarch_stat_archiver");

    c.query("DROP EXTENSION walarch_ext");
    c.query("CREATE EXTENSION walarch_ext");
    let fresh = c.query(CATALOG);

    assert_eq!(
        upgraded, fresh,
        "0.1.0 updated to {current} differs from a fresh {current}"
    );
    // Not vacuous: the functions, the view and its privileges are there.
    for needle in [
        "function walarch_stats()",
        "function walarch_stats_reset()",
        "function walarch_switch_wal(boolean,interval) returns TABLE(switch_lsn pg_lsn",
        "function walarch_verify(text,text)",
        "function walarch_expire(integer,text,interval,boolean)",
        "relation walarch_stat_archiver kind=v",
        "bytes_in_flight bigint",
        "stored_bytes bigint",
        "last_dropped_time timestamp with time zone",
        "encrypted_count bigint",
        "pg_monitor=X/postgres",
        "pg_monitor=r/postgres",
    ] {
        assert!(fresh.contains(needle), "{needle:?} not in:\n{fresh}");
    }
    let count = |kind: &str| fresh.lines().filter(|l| l.starts_with(kind)).count();
    assert_eq!((count("function "), count("relation ")), (10, 1), "{fresh}");
    eprintln!("0.1.0 catalog:\n{old}");
}
