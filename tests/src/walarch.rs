//! walarch_ext as an opt-in layer over the generic `Cluster`: its settings,
//! what it leaves in the archive directory, its statistics, and the
//! `walarch` command.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{as_server_user, chown_to_server, quoted};
use crate::{Cluster, FromBackupOptions, InitOptions, SIDECAR_SUFFIX, TEMP_PREFIX};

pub trait Walarch {
    /// `init` with wal_level = replica (archiving needs it), then
    /// `enable_walarch`.
    fn init_walarch(&mut self, opts: &InitOptions);

    /// `init_from_backup`, then `enable_walarch`: the node archives into its
    /// own directory, not its root node's.
    fn init_walarch_from_backup(
        &mut self,
        root_node: &Cluster,
        backup_name: &str,
        opts: &FromBackupOptions,
    );

    /// Archives with walarch_ext into `<root>/archive`.
    fn enable_walarch(&mut self);

    fn archive_dir(&self) -> PathBuf;

    /// One column of `walarch_stats()`, as text ("" for NULL). The extension
    /// must exist (`CREATE EXTENSION walarch_ext`).
    fn stat(&self, col: &str) -> String;

    fn stat_i64(&self, col: &str) -> i64;

    /// Names in the archive directory, sorted (temporary files included).
    fn archive_listing(&self) -> Vec<String>;

    /// Temporary files in the archive directory.
    fn archive_temp_files(&self) -> Vec<String>;

    /// WAL files in the archive: neither checksum sidecars nor temporaries.
    fn archived_wal_files(&self) -> Vec<String>;

    fn assert_no_temp_files(&self);

    /// Asserts `archive/walfile` equals `pg_wal/walfile` byte for byte.
    fn assert_archived_identical(&self, walfile: &str);

    /// Asserts `archive/walfile` equals `reference/walfile`.
    fn assert_archived_equals(&self, walfile: &str, reference: &Path);
}

impl Walarch for Cluster {
    fn init_walarch(&mut self, opts: &InitOptions) {
        self.init(&InitOptions {
            allows_streaming: true,
            ..*opts
        });
        self.enable_walarch();
    }

    fn init_walarch_from_backup(
        &mut self,
        root_node: &Cluster,
        backup_name: &str,
        opts: &FromBackupOptions,
    ) {
        self.init_from_backup(root_node, backup_name, opts);
        self.enable_walarch();
    }

    fn enable_walarch(&mut self) {
        let dir = self.archive_dir();
        fs::create_dir_all(&dir).unwrap();
        chown_to_server(&dir);
        self.append_conf(&[
            // Preloaded for its shared memory and copy-ahead worker; as
            // archive_library alone it would live in the archiver only.
            "shared_preload_libraries = 'walarch_ext'".to_string(),
            "archive_mode = on".into(),
            "archive_library = 'walarch_ext'".into(),
            format!(
                "walarch.archive_directory = {}",
                quoted(dir.display().to_string())
            ),
        ]);
    }

    fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    fn stat(&self, col: &str) -> String {
        self.query(&format!("SELECT {col} FROM walarch_stats()"))
    }

    fn stat_i64(&self, col: &str) -> i64 {
        let v = self.stat(col);
        v.parse().unwrap_or_else(|_| panic!("{col} = {v:?}"))
    }

    fn archive_listing(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.archive_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn archive_temp_files(&self) -> Vec<String> {
        self.archive_listing()
            .into_iter()
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    fn archived_wal_files(&self) -> Vec<String> {
        self.archive_listing()
            .into_iter()
            .filter(|n| !n.starts_with(TEMP_PREFIX) && !n.ends_with(SIDECAR_SUFFIX))
            .collect()
    }

    fn assert_no_temp_files(&self) {
        let tmp = self.archive_temp_files();
        assert!(
            tmp.is_empty(),
            "temporary files left in the archive: {tmp:?}"
        );
    }

    fn assert_archived_identical(&self, walfile: &str) {
        let archived = fs::read(self.archive_dir().join(walfile))
            .unwrap_or_else(|e| panic!("{walfile} is not in the archive: {e}"));
        let source = fs::read(self.data.join("pg_wal").join(walfile)).unwrap();
        assert_eq!(archived.len(), source.len(), "{walfile}: size differs");
        assert!(
            archived == source,
            "{walfile}: archived bytes differ from pg_wal"
        );
    }

    fn assert_archived_equals(&self, walfile: &str, reference: &Path) {
        let archived = fs::read(self.archive_dir().join(walfile))
            .unwrap_or_else(|e| panic!("{walfile} is not in the archive: {e}"));
        assert!(
            archived == fs::read(reference.join(walfile)).unwrap(),
            "{walfile}: archived bytes differ"
        );
    }
}

/// The `walarch` binary (scripts/test.sh installs it).
pub fn walarch_bin() -> PathBuf {
    PathBuf::from(std::env::var("WALARCH_BIN").unwrap_or_else(|_| "/usr/local/bin/walarch".into()))
}

/// Runs `walarch` as the server's OS user: (exit code, stdout, stderr).
pub fn walarch(args: &[&str]) -> (i32, String, String) {
    let out = as_server_user(walarch_bin())
        .args(args)
        .output()
        .expect("run walarch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A restore_command that restores from `archive` with `walarch restore`.
pub fn restore_command(archive: &Path) -> String {
    format!(
        "{} restore {} %f %p",
        walarch_bin().display(),
        archive.display()
    )
}

/// Asserts that `walarch verify` finds `archive` intact.
pub fn verify_ok(archive: &Path) {
    let (code, out, err) = walarch(&["verify", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "verify failed:\n{out}{err}");
}
