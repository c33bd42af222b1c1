//! Encrypted archives (`walarch.encryption_recipients`) on the archiving
//! side, into a directory and a bucket: new segments are stored as
//! `.zst.age` while the server cannot read the private key, the stored
//! bytes check with `sha256sum -c` and decrypt (with the key, here) to the
//! WAL file; a recipients file the server cannot read stores nothing in
//! any form, counts every failure, says why in a WARNING, and archiving
//! resumes once it is readable. PostgreSQL 15 and 18 only: the archiving
//! path has no version-specific part beyond what the other tests cover.

use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use walarch_integration::keys::{key_pair, KeyPair};
use walarch_integration::seaweed::Seaweed;
use walarch_integration::setups::batch;
use walarch_integration::{
    as_server_user, sh, skipped_between_15_and_18, wait_until, Cluster, InitOptions, Walarch,
};

const T: Duration = Duration::from_secs(120);

/// The stored bytes under a name of the archive, `None` when absent.
type Stored<'a> = &'a dyn Fn(&str) -> Option<Vec<u8>>;

const FORMS: [&str; 4] = ["", ".zst", ".age", ".zst.age"];

/// The forms `walfile` is stored in.
fn forms_of(stored: Stored, walfile: &str) -> Vec<&'static str> {
    FORMS
        .into_iter()
        .filter(|f| stored(&format!("{walfile}{f}")).is_some())
        .collect()
}

/// Decrypts with the private key and decompresses (zstd skips walarch's
/// header frame): the WAL file, as a restore would see it.
fn open_sealed(keys: &KeyPair, sealed: &[u8]) -> Vec<u8> {
    let text = std::fs::read_to_string(&keys.identity).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let id = age::x25519::Identity::from_str(line).unwrap();
    let d = age::Decryptor::new(sealed).unwrap();
    let mut zst = Vec::new();
    d.decrypt(std::iter::once(&id as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut zst)
        .unwrap();
    zstd::stream::decode_all(&zst[..]).unwrap()
}

/// Writes rows and switches WAL without waiting for the archive: the name
/// of the segment switched.
fn switch(c: &Cluster, note: &str) -> String {
    c.query(&format!(
        "INSERT INTO t SELECT g, '{note}' FROM generate_series(1, 100) g"
    ));
    c.query("SELECT pg_walfile_name(pg_switch_wal())")
}

/// The scenario, on a started cluster archiving encrypted and compressed
/// into an archive whose stored objects `stored` reads.
fn archive_encrypted(c: &Cluster, keys: &KeyPair, stored: Stored) {
    let cat = as_server_user("cat").arg(&keys.identity).output().unwrap();
    assert!(!cat.status.success(), "the server's OS user reads the key");
    c.query("CREATE TABLE t(id int, note text)");

    let a = batch(c, 1, 100, "sealed");
    let reference = c.keep_reference_copies(std::slice::from_ref(&a));
    assert_eq!(forms_of(stored, &a), [".zst.age"]);
    let sealed = stored(&format!("{a}.zst.age")).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
    assert!(
        open_sealed(keys, &sealed) == std::fs::read(reference.join(&a)).unwrap(),
        "{a} does not decrypt to the WAL file"
    );
    assert!(c.stat_i64("encrypted_count") >= 1 && c.stat_i64("compressed_count") >= 1);

    // The server can no longer read the recipients: nothing is stored.
    sh(&format!("chmod 000 '{}'", keys.recipients.display()));
    let (failed, from) = (c.failed_count(), c.log_position());
    let b = switch(c, "held back");
    c.wait_for_log("walarch.encryption_recipients cannot be used", from, T);
    wait_until("failures counted", T, || c.failed_count() >= failed + 2);
    let log = c.log_text();
    assert!(log.contains("Permission denied"), "{log}");
    assert!(c.stat("last_error").contains("encryption_recipients"));
    assert_eq!(forms_of(stored, &b), Vec::<&str>::new(), "{b} stored");
    assert!(!c.status_file(&b, "done").exists());

    // Readable again: archived, encrypted, without a restart.
    sh(&format!("chmod 644 '{}'", keys.recipients.display()));
    let _ = switch(c, "after");
    c.wait_done(&b, T);
    assert_eq!(forms_of(stored, &b), [".zst.age"]);
}

fn encryption_conf(keys: &KeyPair) -> [String; 2] {
    [
        "walarch.compression = zstd".into(),
        format!(
            "walarch.encryption_recipients = '{}'",
            keys.recipients.display()
        ),
    ]
}

#[test]
fn a_directory_archive_is_encrypted_to_a_key_the_server_cannot_read() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut c = Cluster::new("enc-dir");
    c.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let keys = key_pair(&c.root, "archive");
    c.append_conf(&encryption_conf(&keys));
    c.append_conf(&["checkpoint_timeout = '1h'", "wal_keep_size = '64MB'"]);
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    let archive = c.archive_dir();
    let stored = |n: &str| std::fs::read(archive.join(n)).ok();
    archive_encrypted(&c, &keys, &stored);

    // The record checks the stored bytes with the standard tool, no key.
    let seg = c.query("SELECT last_archived_wal FROM pg_stat_archiver");
    let out = sh(&format!(
        "cd '{}' && sha256sum -c {seg}.zst.age.sha256",
        archive.display()
    ));
    assert!(out.contains(": OK"), "{out}");
    c.assert_no_temp_files();
}

#[test]
fn a_bucket_archive_is_encrypted_to_a_key_the_server_cannot_read() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::shared();
    let prefix = format!("pg{}/encrypted", walarch_integration::pg_major());
    let dir = tempdir_for_keys("enc-bucket-keys");
    let keys = key_pair(&dir, "archive");
    let conf = encryption_conf(&keys);
    let mut extra: Vec<&str> = conf.iter().map(String::as_str).collect();
    extra.extend(["checkpoint_timeout = '1h'", "wal_keep_size = '64MB'"]);
    let c = s3.archiving_cluster_with(
        "enc-bucket",
        &prefix,
        &InitOptions {
            wal_segsize_mb: Some(1),
            ..Default::default()
        },
        &extra,
    );
    let stored = |n: &str| s3.object(&format!("{prefix}/{n}"));
    archive_encrypted(&c, &keys, &stored);
}

/// A directory for key files that the server's OS user can traverse.
fn tempdir_for_keys(name: &str) -> std::path::PathBuf {
    let root = std::env::var("WALARCH_TEST_ROOT").unwrap_or_else(|_| "/tmp/walarch-it".into());
    let dir = Path::new(&root).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!("chmod 755 '{}'", dir.display()));
    dir
}
