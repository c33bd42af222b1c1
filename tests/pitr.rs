//! Point-in-time recovery through `walarch restore`: to a named target, to
//! the end of the archive, and across a timeline switch.

use std::time::Duration;

use walarch_integration::setups::{batch, recovering_from, recovery_primary as primary};
use walarch_integration::{verify_ok, walarch, BackupOptions, Walarch};

const T: Duration = Duration::from_secs(120);

#[test]
fn pitr_to_named_target_to_end_and_across_timeline_switch() {
    let p = primary("pitr");
    p.backup("backup", &BackupOptions::without_wal());
    batch(&p, 1, 100, "before");
    p.query("SELECT pg_create_restore_point('walarch_target')");
    batch(&p, 101, 200, "after");
    let archive = p.archive_dir();
    verify_ok(&archive);
    // The SQL verifier agrees.
    assert_eq!(
        p.query("SELECT count(*) FILTER (WHERE status <> 'ok') FROM walarch_verify()"),
        "0"
    );

    // 1. To the named target: exactly the rows before it. This cluster
    //    promotes onto timeline 2 and keeps archiving into the same archive.
    let mut r1 = recovering_from(
        "pitr-target",
        &p,
        "backup",
        &archive,
        &[
            "recovery_target_name = 'walarch_target'",
            "recovery_target_action = 'promote'",
        ],
        Some(&archive),
    );
    r1.start_and_wait_promoted(T);
    assert_eq!(r1.query("SELECT count(*), max(id) FROM t"), "100|100");
    assert_eq!(r1.query("SELECT count(*) FROM t WHERE note = 'after'"), "0");
    assert!(
        r1.log_text()
            .contains("recovery stopping at restore point \"walarch_target\""),
        "{}",
        r1.log_text()
    );

    // 2. To the end of the archive (on timeline 1's branch it must not
    //    follow: recovery_target_timeline = current).
    let mut r2 = recovering_from(
        "pitr-end",
        &p,
        "backup",
        &archive,
        &["recovery_target_timeline = 'current'"],
        None,
    );
    r2.start_and_wait_promoted(T);
    assert_eq!(r2.query("SELECT count(*), max(id) FROM t"), "200|200");
    drop(r2);

    // 3. New timeline: rows written after the promotion, archived on TLI 2.
    r1.query("INSERT INTO t SELECT g, 'timeline2' FROM generate_series(1001, 1050) g");
    let out = r1.query("SELECT walfile, archived FROM walarch_switch_wal(true, '60s')");
    assert!(out.starts_with("00000002") && out.ends_with("|t"), "{out}");
    assert!(archive.join("00000002.history").exists());
    assert!(archive.join("00000002.history.sha256").exists());
    verify_ok(&archive);
    let (_, json, _) = walarch(&["verify", archive.to_str().unwrap(), "--json"]);
    assert!(json.contains("\"timelines\":[1,2]"), "{json}");

    //    Recovering with the latest timeline follows the switch: the rows
    //    before the target and those of timeline 2, not timeline 1's later
    //    ones.
    let mut r3 = recovering_from(
        "pitr-latest",
        &p,
        "backup",
        &archive,
        &["recovery_target_timeline = 'latest'"],
        None,
    );
    r3.start_and_wait_promoted(T);
    assert_eq!(
        r3.query("SELECT note, count(*) FROM t GROUP BY note ORDER BY note"),
        "before|100\ntimeline2|50"
    );
}

/// Point-in-time recovery from an archive encrypted to a key the server
/// never holds (`walarch.encryption_recipients`): without the identity,
/// restore stops recovery (never "the end of the archive"), verify checks
/// the stored bytes and says what it could not, expire refuses; with it,
/// recovery reaches its target through the prefetch helper, and verify
/// checks every file to its original. PostgreSQL 15 and 18.
#[test]
fn pitr_from_an_encrypted_archive_needs_the_identity_and_only_it() {
    use walarch_integration::keys::key_pair;
    use walarch_integration::{
        as_server_user, quoted, skipped_between_15_and_18, Cluster, FromBackupOptions, InitOptions,
    };
    if skipped_between_15_and_18() {
        return;
    }
    let mut p = Cluster::new("pitr-enc");
    p.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let keys = key_pair(&p.root, "archive");
    p.append_conf(&[
        "checkpoint_timeout = '1h'".to_string(),
        "walarch.compression = zstd".to_string(),
        format!(
            "walarch.encryption_recipients = {}",
            quoted(keys.recipients.display().to_string())
        ),
    ]);
    p.start();
    p.query("CREATE EXTENSION walarch_ext");
    p.query("CREATE TABLE t(id int, note text)");
    let cat = as_server_user("cat").arg(&keys.identity).output().unwrap();
    assert!(!cat.status.success(), "the server's OS user reads the key");

    p.backup("backup", &BackupOptions::without_wal());
    let first = batch(&p, 1, 100, "before");
    p.query("SELECT pg_create_restore_point('walarch_target')");
    batch(&p, 101, 200, "after");
    let archive = p.archive_dir();
    assert!(archive.join(format!("{first}.zst.age")).is_file());
    assert!(!archive.join(&first).exists());
    let dir = archive.to_str().unwrap();
    let key = keys.identity.to_str().unwrap();

    // Without the key (as the server, which cannot read it): the stored
    // bytes are verified, and what was not checked is said.
    let (code, out, err) = walarch(&["verify", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{first}.zst.age: unchecked: encrypted"))
            && out.contains("NOT decrypted"),
        "{out}"
    );
    assert_eq!(
        p.query(
            "SELECT count(*) FILTER (WHERE status = 'unchecked') > 0, \
             count(*) FILTER (WHERE status NOT IN ('ok', 'unchecked')) FROM walarch_verify()"
        ),
        "t|0"
    );
    // Expire reads the backup history file, encrypted: refused, from the
    // command line and from SQL, naming the option that would read it.
    let (code, _, err) = walarch(&["expire", dir, "--keep-backups", "1", "--dry-run"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("is encrypted") && err.contains("--identity-file"),
        "{err}"
    );
    let e = p
        .psql("SELECT * FROM walarch_expire(keep_backups => 1)")
        .unwrap_err();
    assert!(
        e.contains("is encrypted") && e.contains("--identity-file"),
        "{e}"
    );

    // Restore without the key stops recovery rather than end it.
    let mut r = Cluster::new("pitr-enc-restore");
    r.init_walarch_from_backup(
        &p,
        "backup",
        &FromBackupOptions {
            restore_command: Some(&walarch_integration::restore_command(&archive)),
            ..Default::default()
        },
    );
    r.append_conf(&[
        "recovery_target_name = 'walarch_target'",
        "recovery_target_action = 'promote'",
    ]);
    let log = r.start_expecting_recovery_to_stop(T);
    assert!(
        log.contains("is encrypted and no identity was given")
            && log.contains("so that PostgreSQL stops recovery"),
        "{log}"
    );

    // The key handed to the restoring host's server user: recovery
    // reaches its target (prefetching, by default, with the same key).
    keys.give_identity_to_server();
    r.adjust_conf(
        "restore_command",
        &quoted(format!(
            "{} --identity-file {key}",
            walarch_integration::restore_command(&archive)
        )),
    );
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*), max(id) FROM t"), "100|100");
    assert_eq!(r.query("SELECT count(*) FROM t WHERE note = 'after'"), "0");
    assert!(
        r.log_text()
            .contains("recovery stopping at restore point \"walarch_target\""),
        "{}",
        r.log_text()
    );

    // With the key, verify decrypts every file and expire reads them.
    let (code, json, err) = walarch(&["verify", dir, "--json", "--identity-file", key]);
    assert_eq!(code, 0, "{json}{err}");
    assert!(
        json.contains("\"encrypted_unchecked\":0") && !json.contains("\"encrypted_files\":0"),
        "{json}"
    );
    let (code, out, err) = walarch(&[
        "expire",
        dir,
        "--keep-backups",
        "1",
        "--dry-run",
        "--identity-file",
        key,
    ]);
    assert_eq!(code, 0, "{out}{err}");
}
