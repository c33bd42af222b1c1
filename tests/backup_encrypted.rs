//! An encrypted base backup (`walarch.encryption_recipients`), into a
//! directory: `pg_basebackup --target=walarch` stores every object as an
//! age file while the server cannot read the private key, `backup.json`
//! stays plaintext (`walarch backup list` needs no key and says the backup
//! is encrypted); `walarch backup restore` refuses, changing nothing,
//! without the identity or with the wrong one, restores with it, and writes
//! the identity file into restore_command so that recovery reads the
//! encrypted WAL: the server starts with every row. A recipients file the
//! server cannot use refuses the backup at its start, storing nothing.
//! PostgreSQL 15 and 18 only: the target's version-specific parts are
//! covered by backup_target.

use std::path::Path;
use std::time::Duration;

use walarch_integration::keys::key_pair;
use walarch_integration::setups::{batch, recovery_primary};
use walarch_integration::{
    as_server_user, bindir, quoted, skipped_between_15_and_18, walarch, walarch_bin, Cluster,
    Walarch,
};

const T: Duration = Duration::from_secs(120);

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
/// directory: exit status and stderr.
fn restore(archive: &Path, label: &str, c: &Cluster, extra: &[&str]) -> (i32, String) {
    let (a, d) = (archive.display().to_string(), c.data.display().to_string());
    let mut args = vec!["backup", "restore", &a, label, &d];
    args.extend(extra);
    let (code, out, err) = walarch(&args);
    (code, format!("{out}{err}"))
}

#[test]
fn encrypted_backup_through_the_target_restored_with_the_identity() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut p = recovery_primary("benc");
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

    let archive = p.archive_dir();
    let folder = archive.join("backups/enc1");
    for o in ["base.tar.zst.age", "backup_manifest.zst.age"] {
        let b = std::fs::read(folder.join(o)).unwrap();
        assert!(b.starts_with(b"age-encryption.org/v1\n"), "{o}");
    }
    assert!(!folder.join("base.tar.zst").exists());
    let json = std::fs::read_to_string(folder.join("backup.json")).unwrap();
    assert!(json.contains("\"recipients\": 1"), "{json}");
    assert!(!json.contains(&keys.public), "{json}");

    // Listed without any key, as encrypted.
    let a = archive.display().to_string();
    let (code, out, err) = walarch(&["backup", "list", &a]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("enc1 ") && out.contains("encrypted (age, 1 recipient(s))"),
        "{out}"
    );
    assert!(out.contains("wal: complete"), "{out}");
    let (_, json, _) = walarch(&["backup", "list", &a, "--json"]);
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
    assert!(!archive.join("backups/enc2").exists());
    p.stop();

    // Without the identity, and with the wrong one: refused, nothing written.
    let c = Cluster::new("benc-restored");
    let (code, out) = restore(&archive, "enc1", &c, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("is encrypted, and no identity was given"),
        "{out}"
    );
    assert!(!c.data.exists(), "{out}");
    wrong.give_identity_to_server();
    let w = wrong.identity.display().to_string();
    let (code, out) = restore(&archive, "enc1", &c, &["--identity-file", &w]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot be decrypted"), "{out}");
    assert!(!c.data.exists(), "{out}");

    // With it (readable by the server's user, as restore_command needs).
    keys.give_identity_to_server();
    let k = keys.identity.display().to_string();
    let (code, out) = restore(&archive, "enc1", &c, &["--identity-file", &k]);
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
