//! Cluster setups shared by several test files.

use std::path::Path;

use crate::util::quoted;
use crate::walarch::restore_command;
use crate::{BackupOptions, Cluster, FromBackupOptions, InitOptions, Walarch};

/// A started cluster archiving with walarch_ext, defaults otherwise.
pub fn started_with_walarch(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_walarch(&InitOptions::default());
    c.start();
    c
}

/// A streaming standby of `primary`, archiving into its own directory with
/// walarch_ext. A slot keeps the primary's WAL until the standby has it.
/// Not started.
pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
    let slot = "walarch_standby";
    primary.backup(
        name,
        &BackupOptions {
            create_slot: Some(slot),
            ..Default::default()
        },
    );
    let mut c = Cluster::new(name);
    c.init_walarch_from_backup(
        primary,
        name,
        &FromBackupOptions {
            has_streaming: true,
            primary_slot_name: Some(slot),
            ..Default::default()
        },
    );
    c
}

/// A cluster recovering from `root_node`'s backup `backup_name` with
/// `walarch restore` from `archive`, plus `recovery` settings. It archives
/// (on its new timeline) into `archive_into`, its own directory by default.
/// Not started.
pub fn recovering_from(
    name: &str,
    root_node: &Cluster,
    backup_name: &str,
    archive: &Path,
    recovery: &[&str],
    archive_into: Option<&Path>,
) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_walarch_from_backup(
        root_node,
        backup_name,
        &FromBackupOptions {
            restore_command: Some(&restore_command(archive)),
            ..Default::default()
        },
    );
    if let Some(dir) = archive_into {
        c.adjust_conf(
            "walarch.archive_directory",
            &quoted(dir.display().to_string()),
        );
    }
    c.append_conf(recovery);
    c
}

/// A started cluster with 1 MB segments (so backlogs are quick to build),
/// three parallel copies and the extension created; the archive directory is
/// unset unless `configured`. `extra`: more postgresql.conf lines.
pub fn copy_ahead_cluster(name: &str, configured: bool, extra: &[&str]) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.append_conf(&["checkpoint_timeout = '1h'", "walarch.parallel_copies = 3"]);
    if !configured {
        c.adjust_conf("walarch.archive_directory", "''");
    }
    c.append_conf(extra);
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    c
}

/// The recovery tests' primary: 1 MB segments, the extension, and a table
/// `t(id int, note text)` for `batch`. Started.
pub fn recovery_primary(name: &str) -> Cluster {
    let mut c = Cluster::new(name);
    c.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    c.append_conf(&["checkpoint_timeout = '1h'"]);
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    c.query("CREATE TABLE t(id int, note text)");
    c
}

/// Inserts rows `from..=to` into `t` and switches WAL, waiting until
/// archived; returns the switched file.
pub fn batch(c: &Cluster, from: i32, to: i32, note: &str) -> String {
    c.query(&format!(
        "INSERT INTO t SELECT g, '{note}' FROM generate_series({from}, {to}) g"
    ));
    let out =
        c.query("SELECT walfile, archived FROM walarch_switch_wal(wait => true, timeout => '60s')");
    let (walfile, archived) = out.split_once('|').unwrap();
    assert_eq!(archived, "t", "{walfile} not archived: {}", c.log_text());
    walfile.to_string()
}
