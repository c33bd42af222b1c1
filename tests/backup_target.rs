//! `pg_basebackup --target=walarch[:LABEL] -X none`: the backup streamed by
//! the server into the archive (a directory, a SeaweedFS bucket), with a
//! tablespace; backup.json names every object with the SHA-256 of what is
//! stored, and the WAL the backup needs is archived. Faults (client killed,
//! walsender terminated, store stopped) leave nothing under the label and
//! the server archiving; privileges and labels are checked.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walarch_core::backup::{BackupInfo, ObjectKind};
use walarch_core::wal::checksum::{sha256, to_hex};
use walarch_integration::seaweed::{Seaweed, SIGCONT, SIGSTOP};
use walarch_integration::setups::started_with_walarch;
use walarch_integration::{
    as_server_user, bindir, chown_to_server, pg_major, skipped_between_15_and_18, wait_until,
    Cluster, Walarch,
};

const T: Duration = Duration::from_secs(120);

fn basebackup_cmd(c: &Cluster, user: &str, args: &[&str]) -> Command {
    let mut bb = as_server_user(bindir().join("pg_basebackup"));
    bb.args(args)
        .args(["-X", "none", "-c", "fast", "-U", user, "-h"])
        .arg(&c.sockdir)
        .args(["-p", &c.port.to_string()]);
    bb
}

/// Runs pg_basebackup: (success, stdout and stderr).
fn basebackup(c: &Cluster, user: &str, args: &[&str]) -> (bool, String) {
    let out = basebackup_cmd(c, user, args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn spawn_basebackup(c: &Cluster, label: &str, rate: &str) -> Child {
    basebackup_cmd(
        c,
        "postgres",
        &[
            &format!("--target=walarch:{label}"),
            &format!("--max-rate={rate}"),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap()
}

fn wait_exit(child: &mut Child) -> bool {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.success();
        }
        assert!(Instant::now() < deadline, "pg_basebackup did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tablespace with a table in it, and ~30 MB in the default one (so
/// that a throttled backup takes a while).
fn add_data(c: &Cluster) -> String {
    let ts = c.root.join("ts1");
    std::fs::create_dir_all(&ts).unwrap();
    chown_to_server(&ts);
    c.query(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts.display()
    ));
    c.query("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g FROM generate_series(1, 10000) g");
    c.query("CREATE TABLE big AS SELECT g, md5(g::text) AS m FROM generate_series(1, 400000) g");
    ts.display().to_string()
}

/// Checks backup.json against the objects (`read` gives an object's
/// bytes) and the archived WAL (`has_wal`).
fn check_backup(
    info: &BackupInfo,
    ts_location: &str,
    read: impl Fn(&str) -> Vec<u8>,
    has_wal: impl Fn(&str) -> bool,
    server_compressed: bool,
) {
    let ts_oid = info.tablespaces[0].oid;
    assert_eq!(info.tablespaces[0].location, ts_location);
    let mut names: Vec<_> = info
        .objects
        .iter()
        .map(|o| (o.name.clone(), o.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![
        ("backup_manifest.zst".to_string(), ObjectKind::Manifest),
        ("base.tar.zst".to_string(), ObjectKind::Base),
        (format!("{ts_oid}.tar.zst"), ObjectKind::Tablespace),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(names, want);
    for o in &info.objects {
        let bytes = read(&o.name);
        assert_eq!(bytes.len() as u64, o.stored_size, "{}", o.name);
        assert_eq!(to_hex(&sha256(&bytes)), o.sha256, "{}", o.name);
        let by_us = !server_compressed || o.kind == ObjectKind::Manifest;
        assert_eq!(
            o.compression,
            if by_us { "zstd" } else { "none" },
            "{}",
            o.name
        );
        // Every stored object is a zstd stream either way.
        let plain = zstd::decode_all(&bytes[..]).unwrap();
        if by_us {
            assert_eq!(plain.len() as u64, o.size);
        }
        if o.kind == ObjectKind::Manifest {
            assert!(String::from_utf8_lossy(&plain).contains("PostgreSQL-Backup-Manifest"));
        }
    }
    assert!(has_wal(&info.start_wal), "{} not archived", info.start_wal);
    assert!(has_wal(&info.stop_wal), "{} not archived", info.stop_wal);
    assert!(info.start_wal <= info.stop_wal);
}

fn still_archiving(c: &Cluster, has: impl Fn(&str) -> bool) {
    c.query("CREATE TABLE IF NOT EXISTS after(x int); INSERT INTO after VALUES (1)");
    let w = c.query("SELECT pg_walfile_name(pg_switch_wal())");
    wait_until(&format!("{w} archived"), T, || has(&w));
}

#[test]
fn into_a_directory_with_a_tablespace_faults_privileges_labels() {
    if skipped_between_15_and_18() {
        return;
    }
    let c = started_with_walarch("bt-dir");
    let ts = add_data(&c);
    let archive = c.archive_dir();
    let folder = |l: &str| archive.join("backups").join(l);
    let read_in = |l: &str| {
        let f = folder(l);
        move |n: &str| std::fs::read(f.join(n)).unwrap()
    };
    let has_wal = |w: &str| archive.join(w).exists();

    // 1. A backup with a tablespace.
    let t = Instant::now();
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch:full1"]);
    eprintln!("backup into a directory: {:?}", t.elapsed());
    assert!(ok, "{out}");
    assert!(out.contains("base backup \"full1\" stored in"), "{out}");
    let info = BackupInfo::from_json(&std::fs::read(folder("full1").join("backup.json")).unwrap())
        .unwrap();
    assert_eq!(info.label, "full1");
    check_backup(&info, &ts, read_in("full1"), has_wal, false);

    // 2. Server-side compression composes: the server's .zst is stored as
    //    sent.
    let (ok, out) = basebackup(
        &c,
        "postgres",
        &["--target=walarch:srvzstd", "--compress=server-zstd"],
    );
    assert!(ok, "{out}");
    let info =
        BackupInfo::from_json(&std::fs::read(folder("srvzstd").join("backup.json")).unwrap())
            .unwrap();
    let base = info
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Base)
        .unwrap();
    assert_eq!(
        (base.archive_name.as_str(), base.compression.as_str()),
        ("base.tar.zst", "none")
    );
    check_backup(&info, &ts, read_in("srvzstd"), has_wal, true);

    // 3. Labels: a used one and a bad one are refused, nothing changes.
    let before = std::fs::read(folder("full1").join("backup.json")).unwrap();
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch:full1"]);
    assert!(!ok);
    assert!(
        out.contains("backup label \"full1\" is already used in the archive"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(folder("full1").join("backup.json")).unwrap(),
        before
    );
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch:../x"]);
    assert!(!ok);
    assert!(out.contains("invalid backup label \"../x\""), "{out}");
    // No label: a UTC timestamp.
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch"]);
    assert!(ok, "{out}");
    assert!(
        std::fs::read_dir(archive.join("backups"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with('Z')),
        "no timestamp label"
    );

    // 4. Privileges: a replication role that is not superuser is refused
    //    until walarch.backup_role names it.
    c.query("CREATE ROLE rep REPLICATION LOGIN");
    let (ok, out) = basebackup(&c, "rep", &["--target=walarch:byrep"]);
    assert!(!ok);
    assert!(
        out.contains("permission denied to use basebackup target \"walarch\""),
        "{out}"
    );
    assert!(out.contains("walarch.backup_role"), "{out}");
    assert!(!folder("byrep").exists());
    c.query("ALTER SYSTEM SET walarch.backup_role = 'rep'");
    c.query("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = basebackup(&c, "rep", &["--target=walarch:byrep"]);
    assert!(ok, "{out}");
    assert!(folder("byrep").join("backup.json").exists());

    // 4b. Archiving not through walarch_ext: refused before anything is
    //     stored (the backup's WAL would not be in the archive).
    c.query("ALTER SYSTEM SET archive_library = ''");
    c.query("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch:noarch"]);
    assert!(!ok);
    assert!(
        out.contains("basebackup target \"walarch\" needs WAL archiving through walarch_ext"),
        "{out}"
    );
    assert!(out.contains("archive_library"), "{out}");
    assert!(!folder("noarch").exists());
    c.query("ALTER SYSTEM RESET archive_library");
    c.query("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_secs(1));

    // 5. Faults: the walsender terminated, the client killed.
    let gone = |l: &str| {
        let f = folder(l);
        !f.exists() || std::fs::read_dir(&f).unwrap().next().is_none()
    };
    let mut bb = spawn_basebackup(&c, "term", "1M");
    wait_until("the backup started", T, || {
        folder("term").join("backup.started").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    c.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'",
    );
    assert!(!wait_exit(&mut bb), "pg_basebackup succeeded");
    wait_until("the terminated backup removed", T, || gone("term"));

    let mut bb = spawn_basebackup(&c, "kill", "1M");
    wait_until("the backup started", T, || {
        folder("kill").join("backup.started").exists()
    });
    std::thread::sleep(Duration::from_secs(2));
    // pg_basebackup runs under runuser: kill it, by its parent's pid.
    walarch_integration::sh(&format!("pkill -KILL -P {}", bb.id()));
    let _ = wait_exit(&mut bb);
    wait_until("the killed client's backup removed", T, || gone("kill"));
    wait_until("its walsender gone", T, || {
        c.query("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'") == "0"
    });
    assert!(!folder("term").join("backup.json").exists());
    assert!(!folder("kill").join("backup.json").exists());
    let log = c.log_text();
    assert!(log.contains("base backup \"term\" aborted"), "{log}");
    assert!(log.contains("base backup \"kill\" aborted"), "{log}");
    // No temporary file anywhere in the archive.
    let temp = walarch_integration::sh(&format!(
        "find '{}' -name '{}*' | head",
        archive.display(),
        walarch_integration::TEMP_PREFIX
    ));
    assert!(temp.trim().is_empty(), "{temp}");
    still_archiving(&c, has_wal);
    assert_eq!(c.query("SELECT 1"), "1");
}

/// Keys (and sizes) under `prefix` of the bucket: completed objects only.
fn list(s3: &Seaweed, prefix: &str) -> Vec<(String, u64)> {
    let url = format!(
        "{}/{}?list-type=2&prefix={}",
        s3.endpoint,
        s3.bucket,
        prefix.replace('/', "%2F")
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--aws-sigv4", "aws:amz:us-east-1:s3", "-u"])
        .arg(format!("{}:{}", s3.access_key, s3.secret_key))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let xml = String::from_utf8_lossy(&out.stdout).to_string();
    xml.split("<Contents>")
        .skip(1)
        .map(|c| {
            let field = |t: &str| {
                c.split(&format!("<{t}>"))
                    .nth(1)
                    .and_then(|r| r.split(&format!("</{t}>")).next())
                    .unwrap_or_default()
                    .to_string()
            };
            (field("Key"), field("Size").parse().unwrap_or(0))
        })
        .collect()
}

#[test]
fn into_a_bucket_with_a_tablespace_and_a_store_that_stops() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("backup-target", None);
    let prefix = "bt";
    let c = s3.archiving_cluster("bt-s3", prefix, &[]);
    let ts = add_data(&c);
    let key = |l: &str, n: &str| format!("{prefix}/backups/{l}/{n}");
    let has_wal = |w: &str| {
        list(&s3, &format!("{prefix}/{w}"))
            .iter()
            .any(|(k, _)| k.ends_with(w))
    };

    let t = Instant::now();
    let (ok, out) = basebackup(&c, "postgres", &["--target=walarch:s3full"]);
    eprintln!("backup into a bucket: {:?}", t.elapsed());
    assert!(ok, "{out}");
    assert!(!out.contains(&s3.secret_key));
    let info = BackupInfo::from_json(&s3.get_object(&key("s3full", "backup.json"))).unwrap();
    check_backup(
        &info,
        &ts,
        |n| s3.get_object(&key("s3full", n)),
        has_wal,
        false,
    );
    let listed = list(&s3, &format!("{prefix}/backups/s3full/"));
    assert_eq!(listed.len(), 5, "{listed:?}"); // 3 objects, backup.started, backup.json

    // The store stops answering mid-backup, then resumes: the backup fails
    // (within the request timeout), its objects are removed, and the
    // server archives again.
    let from = c.log_position();
    let mut bb = spawn_basebackup(&c, "stopped", "4M");
    wait_until("the backup started", T, || {
        !list(&s3, &format!("{prefix}/backups/stopped/")).is_empty()
    });
    s3.signal(SIGSTOP);
    // The next upload fails after the request timeout (5 s); the abort's
    // requests then wait for the store, which comes back.
    c.wait_for_log("aborting base backup \"stopped\"", from, T);
    s3.signal(SIGCONT);
    assert!(!wait_exit(&mut bb), "pg_basebackup succeeded");
    wait_until("the failed backup removed", T, || {
        list(&s3, &format!("{prefix}/backups/stopped/")).is_empty()
    });
    still_archiving(&c, has_wal);
    let log = c.log_text();
    assert!(
        !log.contains(&s3.secret_key),
        "the secret is in the server log"
    );
    assert!(log.contains("base backup \"stopped\" aborted"), "{log}");
}

/// PostgreSQL 17+: an incremental backup would be recorded as full and be
/// unrestorable: refused, nothing left under its label.
#[test]
fn an_incremental_backup_is_refused() {
    if pg_major() < 17 || skipped_between_15_and_18() {
        return;
    }
    let c = started_with_walarch("bt-incr");
    c.query("ALTER SYSTEM SET summarize_wal = on");
    c.query("SELECT pg_reload_conf()");
    c.query("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    // The full backup it is based on, plain, next to the cluster.
    let full = c.root.join("full");
    chown_to_server(&c.root);
    let (ok, out) = basebackup(&c, "postgres", &["-Fp", "-D", &full.display().to_string()]);
    assert!(ok, "{out}");
    c.query("INSERT INTO t SELECT g FROM generate_series(1, 1000) g");
    let manifest = full.join("backup_manifest").display().to_string();
    let (ok, out) = basebackup(
        &c,
        "postgres",
        &[
            "--target=walarch:incr",
            &format!("--incremental={manifest}"),
        ],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("incremental backups are not supported by basebackup target \"walarch\""),
        "{out}"
    );
    // Refused after the stop: only the claim stays, the record that the
    // .backup history file PostgreSQL archived is a failed backup's.
    let folder = c.archive_dir().join("backups").join("incr");
    wait_until("the refused backup removed but its claim", T, || {
        let left: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left == ["backup.started"]
    });
}
