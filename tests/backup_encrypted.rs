//! An encrypted base backup (`walarch.encryption_recipients`), into a
//! directory and a bucket (SeaweedFS): `pg_basebackup --target=walarch` stores every object as an
//! age file while the server cannot read the private key, `backup.json`
//! stays plaintext (`walarch backup list` needs no key and says the backup
//! is encrypted); `walarch backup restore` refuses, changing nothing,
//! without the identity or with the wrong one, restores with it, and writes
//! the identity file into restore_command so that recovery reads the
//! encrypted WAL: the server starts with every row. A recipients file the
//! server cannot use refuses the backup at its start, storing nothing.
//! PostgreSQL 15 and 18 only: the target's version-specific parts are
//! covered by backup_target.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walarch_integration::keys::key_pair;
use walarch_integration::seaweed::Seaweed;
use walarch_integration::setups::{batch, recovery_primary};
use walarch_integration::{
    as_server_user, bindir, quoted, skipped_between_15_and_18, walarch, walarch_bin, Cluster,
    Walarch,
};

const T: Duration = Duration::from_secs(120);

/// Where the archive is, and how to reach it.
enum Store<'a> {
    Directory(PathBuf),
    Bucket { s3: &'a Seaweed, prefix: &'a str },
}

impl Store<'_> {
    fn url(&self) -> String {
        match self {
            Store::Directory(d) => d.display().to_string(),
            Store::Bucket { s3, prefix } => s3.url(prefix),
        }
    }

    /// The stored bytes of `key` (under the archive's root), if any.
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Store::Directory(d) => std::fs::read(d.join(key)).ok(),
            Store::Bucket { s3, prefix } => s3.object(&format!("{prefix}/{key}")),
        }
    }

    /// `walarch ARGS` as the server's user; for a bucket with `--endpoint`
    /// and a credentials file in `root` (none in the environment, so that
    /// restore_command cannot be relying on one).
    fn walarch(&self, root: &Path, args: &[&str]) -> (i32, String, String) {
        match self {
            Store::Directory(_) => walarch(args),
            Store::Bucket { s3, .. } => {
                let creds = root.join("restore-credentials");
                s3.write_credentials(&creds, None);
                let c = creds.display().to_string();
                let mut all: Vec<&str> = args.to_vec();
                all.extend(["--endpoint", &s3.endpoint, "--credentials-file", &c]);
                let out = as_server_user(walarch_bin())
                    .args(&all)
                    .env_remove("AWS_ACCESS_KEY_ID")
                    .env_remove("AWS_SECRET_ACCESS_KEY")
                    .output()
                    .expect("run walarch");
                (
                    out.status.code().unwrap_or(-1),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            }
        }
    }
}

/// pg_basebackup through the walarch target, as the server's user: its
/// exit status and stderr.
fn backup_through_target(p: &Cluster, label: &str) -> (bool, String) {
    let out = as_server_user(bindir().join("pg_basebackup"))
        .args(["-h"])
        .arg(&p.sockdir)
        .args(["-p", &p.port.to_string(), "-U", "postgres"])
        .arg(format!("--target=walarch:{label}"))
        .args(["-X", "none", "-c", "fast"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `walarch backup restore ARCHIVE LABEL DATA EXTRA...` into `c`'s data
/// directory: exit status and output.
fn restore(store: &Store, label: &str, c: &Cluster, extra: &[&str]) -> (i32, String) {
    let (a, d) = (store.url(), c.data.display().to_string());
    let mut args = vec!["backup", "restore", &a, label, &d];
    args.extend(extra);
    let (code, out, err) = store.walarch(&c.root, &args);
    (code, format!("{out}{err}"))
}

#[test]
fn directory_encrypted_backup_restored_with_the_identity() {
    if skipped_between_15_and_18() {
        return;
    }
    let p = recovery_primary("benc-dir");
    let store = Store::Directory(p.archive_dir());
    encrypted_backup(&store, p, "benc-dir");
}

#[test]
fn bucket_encrypted_backup_restored_with_the_identity() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("benc", None);
    let p = s3.recovery_primary("benc-s3", "benc");
    let store = Store::Bucket {
        s3: &s3,
        prefix: "benc",
    };
    encrypted_backup(&store, p, "benc-s3");
}

fn encrypted_backup(store: &Store, mut p: Cluster, tag: &str) {
    // The private key stays root's (0600): the server never needs it.
    let keys = key_pair(&p.root, "backup");
    let wrong = key_pair(&p.root, "wrong");
    p.append_conf(&[format!(
        "walarch.encryption_recipients = {}",
        quoted(keys.recipients.display().to_string())
    )]);
    p.restart();
    batch(&p, 1, 100, "before-backup");
    let (ok, err) = backup_through_target(&p, "enc1");
    assert!(ok, "pg_basebackup failed: {err}\n{}", p.log_text());
    batch(&p, 101, 200, "after-backup");

    for o in ["base.tar.zst.age", "backup_manifest.zst.age"] {
        let b = store.get(&format!("backups/enc1/{o}")).unwrap();
        assert!(b.starts_with(b"age-encryption.org/v1\n"), "{o}");
    }
    assert!(store.get("backups/enc1/base.tar.zst").is_none());
    let json = String::from_utf8(store.get("backups/enc1/backup.json").unwrap()).unwrap();
    assert!(json.contains("\"recipients\": 1"), "{json}");
    assert!(!json.contains(&keys.public), "{json}");

    // Listed without any key, as encrypted.
    let a = store.url();
    let (code, out, err) = store.walarch(&p.root, &["backup", "list", &a]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("enc1 ") && out.contains("encrypted (age, 1 recipient(s))"),
        "{out}"
    );
    assert!(out.contains("wal: complete"), "{out}");
    let (_, json, _) = store.walarch(&p.root, &["backup", "list", &a, "--json"]);
    assert!(json.contains("\"encrypted\":true"), "{json}");

    // A recipients file the server cannot use: refused at the start,
    // nothing stored (never a plaintext backup).
    p.query("ALTER SYSTEM SET walarch.encryption_recipients = '/nonexistent/recipients'");
    p.query("SELECT pg_reload_conf()");
    walarch_integration::wait_until("the setting reloaded", T, || {
        p.query("SHOW walarch.encryption_recipients") == "/nonexistent/recipients"
    });
    let (ok, err) = backup_through_target(&p, "enc2");
    assert!(!ok, "a backup was taken with unusable recipients");
    assert!(
        err.contains("base backup cannot be encrypted") && err.contains("/nonexistent/recipients"),
        "{err}"
    );
    assert!(store.get("backups/enc2/backup.started").is_none());
    p.stop();

    // Without the identity, and with the wrong one: refused, nothing written.
    let c = Cluster::new(&format!("{tag}-restored"));
    let (code, out) = restore(store, "enc1", &c, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is encrypted, and no identity was given"),
        "{out}"
    );
    assert!(!c.data.exists(), "{out}");
    wrong.give_identity_to_server();
    let w = wrong.identity.display().to_string();
    let (code, out) = restore(store, "enc1", &c, &["--identity-file", &w]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be decrypted"), "{out}");
    assert!(!c.data.exists(), "{out}");

    // With it (readable by the server's user, as restore_command needs).
    keys.give_identity_to_server();
    let k = keys.identity.display().to_string();
    let (code, out) = restore(store, "enc1", &c, &["--identity-file", &k]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("readable by it"), "{out}");
    let auto = std::fs::read_to_string(c.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!(
            "restore_command = '{} restore ",
            walarch_bin().display()
        )) && auto.contains(&format!("--identity-file {k}")),
        "{auto}"
    );
    let mut c = c;
    c.append_conf(&[
        "listen_addresses = ''".to_string(),
        format!("port = {}", c.port),
        format!(
            "unix_socket_directories = {}",
            quoted(c.sockdir.display().to_string())
        ),
        "archive_mode = off".into(),
    ]);
    c.start_and_wait_promoted(T);
    // The rows after the backup came from the encrypted WAL.
    assert_eq!(c.query("SELECT count(*), max(id) FROM t"), "200|200");
}
