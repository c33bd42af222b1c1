//! The way back for base backups: a backup taken through the walarch
//! target (`pg_basebackup --target=walarch:LABEL -X none`), the primary's
//! data directory and tablespace then lost, and `walarch backup restore`
//! into a new directory (tablespace mapped elsewhere): to a target time
//! (exactly the rows committed before it), and with `latest` to the end of
//! the archive. In a directory and in a bucket (SeaweedFS, restore_command
//! carrying the credentials file's name, never the secret). A corrupt
//! backup object is refused before any recovery setting is written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walarch_integration::seaweed::Seaweed;
use walarch_integration::setups::{batch, recovery_primary};
use walarch_integration::{
    as_server_user, bindir, chown_to_server, quoted, sh, walarch, walarch_bin, Cluster, Walarch,
};

const T: Duration = Duration::from_secs(120);

/// Where the archive is, and how to run `walarch` against it.
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

    /// `walarch ARGS`, as the server's user; for a bucket with
    /// `--endpoint` and a credentials file in `root` (no secret in the
    /// environment, so that restore_command cannot be relying on one).
    fn walarch(&self, root: &Path, args: &[&str]) -> (i32, String, String) {
        match self {
            Store::Directory(_) => walarch(args),
            Store::Bucket { s3, .. } => {
                let creds = root.join("restore-credentials");
                s3.write_credentials(&creds, None);
                let mut all: Vec<&str> = args.to_vec();
                let c = creds.display().to_string();
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

    /// Flips a byte in the middle of `key` (under the archive's root).
    fn corrupt(&self, key: &str) {
        match self {
            Store::Directory(d) => {
                let p = d.join(key);
                let mut b = std::fs::read(&p).unwrap();
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                std::fs::write(&p, b).unwrap();
            }
            Store::Bucket { s3, prefix } => {
                let full = format!("{prefix}/{key}");
                let mut b = s3.get_object(&full);
                let mid = b.len() / 2;
                b[mid] ^= 0x55;
                s3.overwrite_object(&full, &b, &[]);
            }
        }
    }
}

/// pg_basebackup through the walarch target, as the server's user.
fn backup_through_target(p: &Cluster, label: &str) {
    let out = as_server_user(bindir().join("pg_basebackup"))
        .args(["-h"])
        .arg(&p.sockdir)
        .args(["-p", &p.port.to_string(), "-U", "postgres"])
        .arg(format!("--target=walarch:{label}"))
        .args(["-X", "none", "-c", "fast"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup --target=walarch failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        p.log_text()
    );
}

/// The primary's tablespace, and a table in it beside `t`.
fn add_tablespace(p: &Cluster) -> PathBuf {
    let ts = p.root.join("ts");
    std::fs::create_dir_all(&ts).unwrap();
    chown_to_server(&ts);
    p.query(&format!(
        "CREATE TABLESPACE ts LOCATION {}",
        quoted(ts.display().to_string())
    ));
    p.query("CREATE TABLE u(id int, note text) TABLESPACE ts");
    ts
}

/// Rows into `t` and `u`, switched and archived.
fn rows(p: &Cluster, from: i32, to: i32, note: &str) {
    p.query(&format!(
        "INSERT INTO u SELECT g, '{note}' FROM generate_series({from}, {to}) g"
    ));
    batch(p, from, to, note);
}

/// A new cluster restored by `walarch backup restore ARGS` into its data
/// directory (tablespace mapped into its root), with its own port and no
/// archiving of its own. Not started.
fn restored(store: &Store, name: &str, old_ts: &Path, which: &str, extra: &[&str]) -> Cluster {
    let c = Cluster::new(name);
    let new_ts = c.root.join("ts-restored");
    let mapping = format!("{}={}", old_ts.display(), new_ts.display());
    let (url, data) = (store.url(), c.data.display().to_string());
    let mut args = vec!["backup", "restore", &url, which, &data, "-T", &mapping];
    args.extend(extra);
    let (code, out, err) = store.walarch(&c.root, &args);
    assert_eq!(code, 0, "backup restore failed:\n{out}{err}");
    assert!(err.contains("against backup_manifest"), "{err}");
    assert!(c.data.join("recovery.signal").is_file());
    let links: Vec<PathBuf> = std::fs::read_dir(c.data.join("pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(links, [new_ts]);
    let auto = std::fs::read_to_string(c.data.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains(&format!(
            "restore_command = '{} restore ",
            walarch_bin().display()
        )),
        "{auto}"
    );
    if let Store::Bucket { s3, .. } = store {
        assert!(!auto.contains(&s3.secret_key), "secret written: {auto}");
        assert!(auto.contains("--credentials-file"), "{auto}");
    }
    c.append_conf(&[
        "listen_addresses = ''".to_string(),
        format!("port = {}", c.port),
        format!(
            "unix_socket_directories = {}",
            quoted(c.sockdir.display().to_string())
        ),
        // The lost primary's archive stays as it was for the next restore.
        "archive_mode = off".into(),
    ]);
    c
}

/// The whole story against one store.
fn lose_and_restore(store: &Store, p: Cluster, tag: &str) {
    let old_ts = add_tablespace(&p);
    rows(&p, 1, 100, "before-backup");
    backup_through_target(&p, "base1");

    let (code, out, err) = store.walarch(&p.root, &["backup", "list", &store.url()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("base1 ") && out.contains("wal: complete"),
        "{out}"
    );
    let (_, json, _) = store.walarch(&p.root, &["backup", "list", &store.url(), "--json"]);
    assert!(json.contains("\"restorable\":true"), "{json}");

    rows(&p, 101, 200, "before-target");
    p.query("SELECT pg_create_restore_point('walarch_target')");
    std::thread::sleep(Duration::from_millis(1100));
    let target = p.query("SELECT clock_timestamp()");
    std::thread::sleep(Duration::from_millis(1100));
    rows(&p, 201, 300, "after-target");

    // The primary is lost: data directory and tablespace (its archive stays).
    let mut p = p;
    p.stop();
    sh(&format!(
        "rm -rf '{}' '{}'",
        p.data.display(),
        old_ts.display()
    ));

    // 1. To the target time: exactly the rows committed before it.
    let mut r1 = restored(
        store,
        &format!("{tag}-time"),
        &old_ts,
        "base1",
        &["--target-time", &target, "--target-action", "promote"],
    );
    r1.start_and_wait_promoted(T);
    assert_eq!(r1.query("SELECT count(*), max(id) FROM t"), "200|200");
    assert_eq!(r1.query("SELECT count(*), max(id) FROM u"), "200|200");
    assert!(
        r1.log_text().contains("recovery stopping before commit"),
        "{}",
        r1.log_text()
    );
    drop(r1);

    // 2. latest, to the end of the archive.
    let mut r2 = restored(store, &format!("{tag}-end"), &old_ts, "latest", &[]);
    r2.start_and_wait_promoted(T);
    assert_eq!(r2.query("SELECT count(*), max(id) FROM t"), "300|300");
    assert_eq!(r2.query("SELECT count(*), max(id) FROM u"), "300|300");
    drop(r2);

    // 3. A damaged object: refused before any recovery setting, nothing left.
    store.corrupt("backups/base1/base.tar.zst");
    let c = Cluster::new(&format!("{tag}-corrupt"));
    let mapping = format!(
        "{}={}",
        old_ts.display(),
        c.root.join("ts-restored").display()
    );
    let (url, data) = (store.url(), c.data.display().to_string());
    let (code, out, err) = store.walarch(
        &c.root,
        &["backup", "restore", &url, "latest", &data, "-T", &mapping],
    );
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("is damaged"), "{err}");
    assert!(!c.data.exists(), "{err}");
    assert!(!c.root.join("ts-restored").exists(), "{err}");
}

#[test]
fn directory_backup_lost_primary_restored_to_time_and_to_end() {
    let p = recovery_primary("brestore-dir");
    let store = Store::Directory(p.archive_dir());
    lose_and_restore(&store, p, "brestore-dir");
}

#[test]
fn bucket_backup_lost_primary_restored_to_time_and_to_end() {
    let s3 = Seaweed::start("brestore", None);
    let p = s3.recovery_primary("brestore-s3", "brestore");
    let store = Store::Bucket {
        s3: &s3,
        prefix: "brestore",
    };
    lose_and_restore(&store, p, "brestore-s3");
}
