//! walarch_ext: a PostgreSQL archive module that archives WAL durably.
//!
//! This crate is the PostgreSQL glue only: `_PG_init` and the GUCs, the
//! archive-module callbacks for both ABIs (PG15, PG16+), the background
//! worker's process, shared memory, the SQL functions and reporting. Every
//! archiving decision lives in the server-independent `walarch-core` crate.

use pgrx::prelude::*;

mod archive_module;
mod backup_target;
mod guc;
mod shmem;
mod sql;
mod warnings;
mod worker;

::pgrx::pg_module_magic!(name, version);

/// Runs in every process that loads the library: the postmaster (when
/// preloaded), the archiver (as `archive_library`) and backends.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::define();
    guc::define_worker_settings();
    guc::define_cloud_settings();
    guc::reserve_prefix();
    // Shared memory and the worker only from the postmaster's preload: the
    // archiver and backends inherit them.
    // SAFETY: a flag PostgreSQL sets while it preloads, read on the main
    // thread.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        shmem::init_in_postmaster();
        worker::register();
        // pg_basebackup --target=walarch (PostgreSQL 15+).
        backup_target::register();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    fn archive_dir() -> PathBuf {
        let dir = crate::guc::ARCHIVE_DIRECTORY
            .get()
            .expect("set for the tests");
        PathBuf::from(dir.to_str().unwrap())
    }

    /// Writes WAL, switches, and returns the name of the file just completed.
    fn switch_wal() -> String {
        Spi::run("CREATE TEMP TABLE IF NOT EXISTS walarch_t(x int); INSERT INTO walarch_t SELECT generate_series(1, 1000)")
            .unwrap();
        Spi::get_one::<String>("SELECT pg_walfile_name(pg_switch_wal())")
            .unwrap()
            .unwrap()
    }

    fn wait_archived(walfile: &str) -> PathBuf {
        let target = archive_dir().join(walfile);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !target.exists() {
            assert!(
                Instant::now() < deadline,
                "{walfile} was not archived within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
            pgrx::check_for_interrupts!();
        }
        target
    }

    fn stat_i64(col: &str) -> i64 {
        Spi::get_one::<i64>(&format!("SELECT {col} FROM walarch_stats()"))
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn switch_wal_waits_until_archived_and_stats_count_it() {
        let before = stat_i64("archived_count");
        Spi::run(
            "CREATE TEMP TABLE IF NOT EXISTS walarch_t(x int); INSERT INTO walarch_t VALUES (1)",
        )
        .unwrap();
        let (lsn, walfile, archived) = Spi::get_three::<String, String, bool>(
            "SELECT switch_lsn::text, walfile, archived FROM walarch_switch_wal(wait => true, timeout => '60s')",
        )
        .unwrap();
        let (lsn, walfile) = (lsn.unwrap(), walfile.unwrap());
        assert_eq!(archived, Some(true));
        // The same file pg_walfile_name() names for that LSN.
        let expect = Spi::get_one::<String>(&format!("SELECT pg_walfile_name('{lsn}'::pg_lsn)"))
            .unwrap()
            .unwrap();
        assert_eq!(walfile, expect);
        assert!(archive_dir().join(&walfile).exists());
        // Counted once the archiver's call returned: at least this file.
        assert!(stat_i64("archived_count") > before);
        let last = Spi::get_one::<String>("SELECT last_archived_wal FROM walarch_stats()")
            .unwrap()
            .unwrap();
        assert!(last >= walfile, "{last} < {walfile}");
    }

    #[pg_test]
    fn switch_wal_without_new_wal_names_the_previous_file() {
        // A real switch always completes a new, later file; a call with
        // nothing written since names the file the previous switch completed,
        // and returns the start of the current file (a segment boundary).
        // Background processes may write WAL between two calls (then the
        // second really switches), so retry until a pair shows the no-op.
        let seg = Spi::get_one::<i32>(
            "SELECT setting::int FROM pg_settings WHERE name = 'wal_segment_size'",
        )
        .unwrap()
        .unwrap() as i64;
        let q = "SELECT (switch_lsn - '0/0'::pg_lsn)::bigint, walfile, archived FROM walarch_switch_wal()";
        let mut saw_noop = false;
        for _ in 0..10 {
            Spi::run("CREATE TEMP TABLE IF NOT EXISTS walarch_t(x int); INSERT INTO walarch_t VALUES (1)").unwrap();
            let (_, first, _) = Spi::get_three::<i64, String, bool>(q).unwrap();
            let (lsn2, second, _) = Spi::get_three::<i64, String, bool>(q).unwrap();
            if second == first {
                assert_eq!(
                    lsn2.unwrap() % seg,
                    0,
                    "a no-op switch returns a segment boundary"
                );
                saw_noop = true;
                break;
            }
            assert!(
                second > first,
                "a real switch completes a later file: {first:?} then {second:?}"
            );
        }
        assert!(
            saw_noop,
            "never saw a switch with nothing written since the previous one"
        );
    }

    #[pg_test(error = "timeout must not be negative")]
    fn switch_wal_refuses_negative_timeout() {
        Spi::run("SELECT * FROM walarch_switch_wal(true, '-1s')").unwrap();
    }

    #[pg_test]
    fn stats_row_has_pg_stat_archiver_columns_first() {
        let cols = Spi::get_one::<String>(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'walarch_stat_archiver'::regclass AND attnum <= 7",
        )
        .unwrap()
        .unwrap();
        let expect = Spi::get_one::<String>(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'pg_stat_archiver'::regclass AND attnum > 0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(cols, expect);
        let worker = Spi::get_one::<i32>("SELECT worker_pid FROM walarch_stats()").unwrap();
        assert!(worker.is_some(), "the copy-ahead worker is running");
    }

    #[pg_test]
    fn module_is_the_archive_library() {
        let lib = Spi::get_one::<String>("SHOW archive_library")
            .unwrap()
            .unwrap();
        assert_eq!(lib, "walarch_ext");
        let dir = Spi::get_one::<String>("SHOW walarch.archive_directory")
            .unwrap()
            .unwrap();
        assert!(
            std::path::Path::new(&dir).is_dir(),
            "{dir} is not a directory"
        );
        assert_eq!(PathBuf::from(dir), archive_dir());
    }

    #[pg_test]
    fn switched_segment_lands_in_archive_byte_identical() {
        let walfile = switch_wal();
        let archived = wait_archived(&walfile);
        // The archived copy equals the segment PostgreSQL wrote (the backend's
        // working directory is the data directory).
        let source = std::fs::read(format!("pg_wal/{walfile}")).unwrap();
        let copy = std::fs::read(&archived).unwrap();
        assert_eq!(copy.len(), source.len());
        assert!(
            copy == source,
            "archived {walfile} differs from pg_wal/{walfile}"
        );
        // No temporary file of this segment is left behind. Other tests run
        // concurrently and switch WAL too, so a later segment may legitimately
        // be mid-copy: only this file's temporaries must be gone.
        let ours = format!(
            "{}{walfile}.",
            walarch_core::destination::local_directory::TEMP_PREFIX
        );
        let leftovers: Vec<_> = std::fs::read_dir(archive_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(&ours))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[pg_test]
    fn archiver_counts_the_segment_as_archived() {
        let walfile = switch_wal();
        wait_archived(&walfile);
        // The archiver renames .ready to .done and bumps pg_stat_archiver only
        // after our callback returned true.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            let last =
                Spi::get_one::<String>("SELECT last_archived_wal FROM pg_stat_archiver").unwrap();
            let done =
                std::path::Path::new(&format!("pg_wal/archive_status/{walfile}.done")).exists();
            if last.as_deref() >= Some(walfile.as_str()) && done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "archiver did not record {walfile}: last={last:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    use std::sync::Once;

    /// A per-version archive directory, so clusters of different versions
    /// never archive into each other's files.
    pub fn archive_dir() -> String {
        let base = std::env::var("WALARCH_PGTEST_ARCHIVE_BASE").unwrap_or_else(|_| "/tmp".into());
        format!(
            "{base}/walarch-pgtest-archive-{}",
            pgrx::pg_sys::PG_VERSION_NUM / 10000
        )
    }

    static PREPARE: Once = Once::new();

    /// Runs in the test process (as root under `--runas`) before the cluster
    /// starts: the archive directory must exist, empty, and belong to the
    /// server's user, or the GUC check refuses it at start-up.
    pub fn setup(_options: Vec<&str>) {
        PREPARE.call_once(|| {
            let dir = archive_dir();
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create test archive directory");
            if let Ok(user) = std::env::var("CARGO_PGRX_TEST_RUNAS") {
                let ok = std::process::Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(&dir)
                    .status()
                    .expect("run chown");
                assert!(ok.success(), "chown {user} {dir} failed");
            }
        });
    }

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        let dir: &'static str =
            Box::leak(format!("walarch.archive_directory = '{}'", archive_dir()).into_boxed_str());
        vec![
            "shared_preload_libraries = 'walarch_ext'",
            "wal_level = replica",
            "archive_mode = on",
            "archive_library = 'walarch_ext'",
            dir,
        ]
    }
}
