//! Archiving into Azure Blob Storage (a real Azurite, every request signed
//! with the account key), then verify, point-in-time recovery with
//! `walarch restore az://…` as restore_command, a base backup into the
//! container and `walarch expire`. PG15 and PG18 only (slow).

use std::time::Duration;

use walarch_integration::azurite::Azurite;
use walarch_integration::setups::batch;
use walarch_integration::{
    as_server_user, bindir, pg_major, BackupOptions, Cluster, FromBackupOptions, Walarch,
};

const T: Duration = Duration::from_secs(90);

#[test]
fn archives_into_azure_verifies_recovers_and_expires() {
    if ![15, 18].contains(&pg_major()) {
        eprintln!("skipped on PG{}", pg_major());
        return;
    }
    let az = Azurite::start("pg-azure");
    let prefix = format!("pg{}/main", pg_major());
    let url = az.url(&prefix);
    let (c, key) = az.archiving_cluster("az-archive", &prefix);
    c.query("CREATE TABLE t(id int, note text)");
    batch(&c, 1, 100, "before backup");
    let files = c.switch_many(3);
    c.wait_drained(T);
    assert_eq!(c.failed_count(), 0, "{}", c.stat("last_error"));

    // What was archived reads back identical through `walarch restore`.
    let fetched = c.root.join("fetched");
    walarch_integration::chown_to_server(&c.root);
    let restore_first = || {
        let to = fetched.to_str().unwrap();
        az.walarch(&["restore", &url, &files[0], to, "--no-prefetch"], &key)
    };
    let (code, _, err) = restore_first();
    assert_eq!(code, 0, "restore: {err}");
    assert!(
        std::fs::read(&fetched).unwrap()
            == std::fs::read(c.data.join("pg_wal").join(&files[0])).unwrap(),
        "the container's bytes differ from pg_wal's"
    );

    // PITR to a restore point from a base backup without WAL.
    c.backup("base", &BackupOptions::without_wal());
    batch(&c, 101, 200, "wanted");
    c.query("SELECT pg_create_restore_point('walarch_az')");
    batch(&c, 201, 300, "after the target");
    c.switch_wal();
    c.wait_drained(T);
    let (code, out, err) = az.walarch(&["verify", &url], &key);
    assert_eq!(code, 0, "verify: {out}{err}");
    assert!(out.contains("archive intact"), "{out}");

    let mut r = Cluster::new("az-recovered");
    let restore_command = az.restore_command(&prefix, &key);
    r.init_from_backup(
        &c,
        "base",
        &FromBackupOptions {
            restore_command: Some(&restore_command),
            ..Default::default()
        },
    );
    r.append_conf(&[
        "recovery_target_name = 'walarch_az'",
        "recovery_target_action = 'promote'",
        "archive_mode = off",
    ]);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*), max(id) FROM t"), "200|200");
    r.stop();

    // A base backup into the container (its tar in blocks when large),
    // then expire keeping it: the WAL before it goes, the archive still
    // verifies.
    let out = as_server_user(bindir().join("pg_basebackup"))
        .args(["--target=walarch:azb", "-X", "none", "-c", "fast", "-h"])
        .arg(&c.sockdir)
        .args(["-p", &c.port.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = az.walarch(&["backup", "list", &url], &key);
    assert_eq!(code, 0, "backup list: {out}{err}");
    assert!(out.contains("azb"), "{out}");
    c.switch_wal();
    c.wait_drained(T);
    let (code, out, err) = az.walarch(&["expire", &url, "--keep-backups", "1"], &key);
    assert_eq!(code, 0, "expire: {out}{err}");
    assert!(out.contains(&format!("removed {}", files[0])), "{out}");
    let (code, out, err) = az.walarch(&["verify", &url], &key);
    assert_eq!(code, 0, "verify after expire: {out}{err}");
    let (code, _, err) = restore_first();
    assert_eq!(code, 1, "an expired file is not in the archive: {err}");
    assert!(!c.log_text().contains(walarch_integration::azurite::KEY));
}
