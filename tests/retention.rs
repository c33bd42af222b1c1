//! Retention: `walarch expire` and `walarch_expire()` remove exactly the WAL
//! no kept base backup needs, oldest first, so a kill midway leaves an
//! archive without a hole; `walarch cleanup` keeps a standby's archive
//! bounded as `archive_cleanup_command`.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use walarch_integration::seaweed::{signal, Seaweed, SIGKILL};
use walarch_integration::setups::{batch, recovering_from, recovery_primary};
use walarch_integration::{
    as_server_user, pg_major, verify_ok, wait_until, walarch, walarch_bin, BackupOptions, Cluster,
    Walarch,
};

const T: Duration = Duration::from_secs(120);

/// The `.backup` files in a directory archive, oldest first.
fn backups(archive: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".backup"))
        .collect();
    v.sort();
    v
}

/// WAL segments (either form) in a directory archive, sorted.
fn segments(archive: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.len() == 24 || (n.len() == 28 && n.ends_with(".zst")))
        .map(|n| n[..24].to_string())
        .collect();
    v.sort();
    v
}

/// A base backup without WAL, waiting until its `.backup` file is archived
/// (the `n`th); returns the name of that file.
fn backup(c: &Cluster, name: &str, n: usize) -> String {
    backup_in(c, name, n, &c.archive_dir())
}

/// `backup` for a cluster archiving into `archive` (not its own directory).
fn backup_in(c: &Cluster, name: &str, n: usize, archive: &Path) -> String {
    c.backup(name, &BackupOptions::without_wal());
    let archive = archive.to_path_buf();
    wait_until(&format!("backup {name} archived"), T, || {
        backups(&archive).len() >= n
    });
    backups(&archive).pop().unwrap()
}

/// Three base backups with WAL before, between and after them.
fn three_backups(c: &Cluster) -> Vec<String> {
    let mut v = vec![];
    for (i, name) in ["b1", "b2", "b3"].iter().enumerate() {
        c.switch_many(3);
        v.push(backup(c, name, i + 1));
        batch(c, 100 * i as i32 + 1, 100 * (i as i32 + 1), name);
    }
    v
}

#[test]
fn keep_backups_removes_exactly_what_the_kept_backups_do_not_need() {
    let c = recovery_primary("expire");
    let archive = c.archive_dir();
    let b = three_backups(&c);
    std::fs::write(archive.join("NOTES.txt"), b"operator notes").unwrap();
    let before = segments(&archive);
    let cut = &b[1][..24];
    let dir = archive.to_str().unwrap();

    // A dry run lists, removes nothing.
    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "2", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("would remove {}", before[0])),
        "{out}"
    );
    assert!(out.contains("left NOTES.txt: not a WAL file name"), "{out}");
    assert_eq!(segments(&archive), before);
    // The SQL function agrees with the command.
    let sql = c.query(
        "SELECT count(*) FILTER (WHERE action = 'remove'), count(*) FILTER (WHERE action = 'left') \
         FROM walarch_expire(keep_backups => 2)",
    );
    let want: Vec<&String> = before.iter().filter(|s| s[8..] < cut[8..]).collect();
    assert_eq!(
        sql,
        format!("{}|1", want.len() + 1),
        "{want:?} and {}",
        b[0]
    );

    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let after = segments(&archive);
    let gone: Vec<&String> = before.iter().filter(|s| !after.contains(s)).collect();
    assert_eq!(gone, want, "{out}");
    assert_eq!(after.first().map(String::as_str), Some(cut), "{out}");
    assert_eq!(backups(&archive), &b[1..]);
    assert!(archive.join("NOTES.txt").exists());
    assert!(archive.join(format!("{cut}.sha256")).exists());
    assert!(
        !archive.join(format!("{}.sha256", want[0])).exists(),
        "record left behind"
    );
    verify_ok(&archive);

    // Recovery from the oldest kept backup reaches the end of the archive.
    let mut r = recovering_from(
        "expire-recovered",
        &c,
        "b2",
        &archive,
        &["recovery_target_action = 'promote'"],
        None,
    );
    r.append_conf(&["archive_mode = off"]);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*) FROM t"), "300");
}

#[test]
fn bad_rules_are_refused_and_remove_nothing() {
    let c = recovery_primary("expire-bad");
    let archive = c.archive_dir();
    c.switch_many(3);
    c.wait_drained(T);
    let before = segments(&archive);
    let dir = archive.to_str().unwrap();

    // No base backup: --keep-backups refuses and says why.
    let (code, _, err) = walarch(&["expire", dir, "--keep-backups", "1"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no base backup is recorded in the archive"),
        "{err}"
    );
    for args in [
        vec!["expire", dir],
        vec!["expire", dir, "--keep-backups", "1", "--before", &before[1]],
        vec!["expire", dir, "--keep-backups", "0"],
        vec!["expire", dir, "--older-than", "a week"],
        vec!["expire", dir, "--before", "00000002.history"],
    ] {
        let (code, _, err) = walarch(&args);
        assert!(code == 2 || code == 3, "{args:?}: {code} {err}");
        assert!(err.starts_with("walarch: "), "{args:?}: {err}");
    }
    for (sql, msg) in [
        (
            "walarch_expire()",
            "exactly one retention rule must be given",
        ),
        (
            "walarch_expire(keep_backups => 1, older_than => '1 day')",
            "exactly one retention rule must be given",
        ),
        (
            "walarch_expire(keep_backups => 0)",
            "keep_backups must be at least 1",
        ),
        (
            "walarch_expire(keep_backups => 1, dry_run => false)",
            "no base backup is recorded in the archive",
        ),
        (
            "walarch_expire(before_wal => 'nonsense', dry_run => false)",
            "is not a WAL segment file name",
        ),
    ] {
        let err = c.psql(&format!("SELECT * FROM {sql}")).unwrap_err();
        assert!(err.contains(msg), "{sql}: {err}");
    }
    // Only superusers, unless granted.
    c.query("CREATE ROLE plain LOGIN");
    let err = c
        .psql("SET ROLE plain; SELECT * FROM walarch_expire(before_wal => '000000010000000000000002')")
        .unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(segments(&archive), before);

    // Without a base backup, --older-than and --before remove nothing, even
    // when every file is older: an archive whose backups are elsewhere (or
    // whose archiving was broken for longer) must not be emptied by cron.
    for (rule, value) in [("--older-than", "0s"), ("--before", before[1].as_str())] {
        let (code, out, err) = walarch(&["expire", dir, rule, value]);
        assert_eq!(code, 3, "{rule}: {out}{err}");
        assert!(
            err.contains("no base backup is recorded in the archive") && err.contains(rule),
            "{rule}: {err}"
        );
        assert!(err.contains("--no-backup-check"), "{err}");
        assert_eq!(segments(&archive), before);
    }
    let err = c
        .psql("SELECT * FROM walarch_expire(older_than => '0', dry_run => false)")
        .unwrap_err();
    assert!(
        err.contains("no base backup is recorded in the archive")
            && err.contains("--no-backup-check"),
        "{err}"
    );
    assert_eq!(segments(&archive), before);

    // Told the backups are kept elsewhere: by archive time (everything here
    // was archived moments ago), then --before, which keeps the named file.
    let (code, out, err) = walarch(&["expire", dir, "--older-than", "1h", "--no-backup-check"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("0 file(s) removed, archived more than 1h ago"),
        "{out}"
    );
    assert_eq!(segments(&archive), before);
    let (code, _, err) = walarch(&["expire", dir, "--before", &before[1], "--no-backup-check"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(segments(&archive), &before[1..]);
    verify_ok(&archive);
}

/// A point-in-time recovery forks timeline 2 back in position, before a
/// timeline-1 backup, and timeline 2 gets a backup: that one is the newest.
/// Keeping one backup keeps its WAL (not the higher-positioned timeline-1
/// one's), and a recovery from it gets every row.
#[test]
fn keep_backups_follows_the_history_after_a_fork_back_in_position() {
    if !matches!(pg_major(), 15 | 18) {
        return;
    }
    let mut c = recovery_primary("expire-fork");
    let archive = c.archive_dir();
    let dir = archive.to_str().unwrap();
    batch(&c, 1, 100, "before b1");
    backup(&c, "b1", 1);
    batch(&c, 101, 200, "before the mistake");
    c.query("SELECT pg_create_restore_point('before_mistake')");
    batch(&c, 201, 300, "the mistake");
    c.switch_many(10);
    let b2 = backup(&c, "b2", 2);
    batch(&c, 301, 400, "after b2");
    c.stop();

    // Back to before the mistake, on timeline 2, archiving into the same
    // archive, with a backup there.
    let mut r = recovering_from(
        "expire-fork-tl2",
        &c,
        "b1",
        &archive,
        &[
            "recovery_target_name = 'before_mistake'",
            "recovery_target_action = 'promote'",
        ],
        Some(&archive),
    );
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*) FROM t"), "200");
    batch(&r, 1001, 1100, "timeline 2");
    let b3 = backup_in(&r, "b3", 3, &archive);
    batch(&r, 1101, 1200, "after b3");
    r.stop();
    assert!(b3.starts_with("00000002"), "{b3}");
    assert!(b3[8..24] < b2[8..24], "the fork must go back: {b3} {b2}");

    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(backups(&archive), std::slice::from_ref(&b3), "{out}");
    assert!(archive.join("00000002.history").exists());
    assert!(archive.join(&b3[..24]).exists(), "{out}");
    // Timeline 1's WAL after the fork is another branch: gone.
    assert!(
        !segments(&archive)
            .iter()
            .any(|s| s.starts_with("00000001") && s[8..] >= b2[8..24]),
        "{out}"
    );
    verify_ok(&archive);

    let mut restored = recovering_from(
        "expire-fork-restored",
        &r,
        "b3",
        &archive,
        // The backup copied timeline 2's own recovery target: none now.
        &[
            "recovery_target_name = ''",
            "recovery_target_action = 'promote'",
        ],
        None,
    );
    restored.append_conf(&["archive_mode = off"]);
    restored.start_and_wait_promoted(T);
    assert_eq!(
        restored.query("SELECT count(*), count(*) FILTER (WHERE id > 1000) FROM t"),
        "400|200"
    );
}

/// `walarch expire` killed midway: whatever it removed is a prefix, so the
/// archive is shorter but has no hole; a second run finishes the job.
#[test]
fn killed_midway_leaves_an_archive_without_a_hole() {
    let c = recovery_primary("expire-kill");
    let archive = c.archive_dir();
    c.switch_many(160);
    let b = backup(&c, "last", 1);
    c.wait_drained(T);
    let before = segments(&archive);
    let removable = before.iter().filter(|s| s[8..] < b[8..24]).count();
    assert!(removable >= 150, "{removable}");

    // Its progress goes to a pipe nobody reads, shrunk to one page: the
    // command blocks on it after about 120 lines, mid-expiry, and is killed
    // there.
    let mut child = as_server_user(walarch_bin())
        .args(["expire", archive.to_str().unwrap(), "--keep-backups", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    // SAFETY: a valid pipe descriptor we own.
    let page = unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        page >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    let mut last = before.len();
    wait_until("expire blocked mid-way", T, || {
        std::thread::sleep(Duration::from_millis(300));
        let now = segments(&archive).len();
        let stalled = now == last && now < before.len();
        last = now;
        stalled
    });
    signal(child.id() as i32, SIGKILL);
    child.wait().unwrap();
    drop(out);

    let mid = segments(&archive);
    assert!(
        mid.len() < before.len() && mid.len() > before.len() - removable,
        "killed after {} of {removable}",
        before.len() - mid.len()
    );
    assert_eq!(mid, &before[before.len() - mid.len()..], "not a suffix");
    verify_ok(&archive);

    let (code, _, err) = walarch(&["expire", archive.to_str().unwrap(), "--keep-backups", "1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(segments(&archive).len(), before.len() - removable);
    verify_ok(&archive);
}

/// A standby restoring from the archive with `archive_cleanup_command`:
/// each restartpoint removes what it no longer needs.
#[test]
fn standby_cleanup_keeps_the_archive_bounded() {
    let p = recovery_primary("cleanup-primary");
    let archive = p.archive_dir();
    p.backup("base", &BackupOptions::without_wal());
    let mut s = recovering_from("cleanup-standby", &p, "base", &archive, &[], None);
    s.append_conf(&[
        format!(
            "archive_cleanup_command = '{} cleanup {} %r'",
            walarch_bin().display(),
            archive.display()
        ),
        "archive_mode = off".to_string(),
    ]);
    std::fs::write(s.data.join("standby.signal"), b"").unwrap();
    s.start();

    let mut sizes = vec![];
    for round in 0..3 {
        p.switch_many(20);
        p.query("CHECKPOINT");
        p.query("INSERT INTO t VALUES (0, 'round')");
        let end = p.query("SELECT pg_switch_wal()");
        let last = p.query(&format!("SELECT pg_walfile_name('{end}')"));
        p.wait_done(&last, T);
        wait_until("the standby replayed the archive", T, || {
            s.query(&format!("SELECT pg_last_wal_replay_lsn() >= '{end}'")) == "t"
        });
        // A restartpoint runs archive_cleanup_command with its %r.
        s.query("CHECKPOINT");
        let redo = s.query("SELECT redo_wal_file FROM pg_control_checkpoint()");
        wait_until("the archive cleaned up to the restartpoint", T, || {
            segments(&archive)
                .first()
                .is_some_and(|f| f[8..] >= redo[8..])
        });
        let now = segments(&archive);
        assert!(
            now.iter().all(|f| f[8..] >= redo[8..]),
            "round {round}: {now:?}"
        );
        sizes.push(now.len());
        verify_ok(&archive);
    }
    // Bounded: each round archives 21 segments; what stays is the few
    // from the restartpoint on.
    assert!(sizes.iter().all(|&n| n <= 5), "{sizes:?}");
}

/// The same rule on a bucket, through the command and the SQL function.
#[test]
fn keep_backups_on_a_bucket_and_recovery_from_the_oldest_kept() {
    let s3 = Seaweed::start("pg-expire", None);
    let prefix = format!("pg{}/expire", pg_major());
    let c = s3.archiving_cluster("s3-expire", &prefix, &[]);
    c.query("CREATE TABLE t(id int, note text)");
    let mut starts = vec![];
    for (i, name) in ["b1", "b2", "b3"].iter().enumerate() {
        c.switch_many(2);
        c.backup(name, &BackupOptions::without_wal());
        c.switch_wal();
        c.wait_drained(T);
        starts.push(c.query("SELECT pg_walfile_name(checkpoint_lsn) FROM pg_control_checkpoint()"));
        batch(&c, 100 * i as i32 + 1, 100 * (i as i32 + 1), name);
    }
    // All three kept: only the WAL before the first goes.
    let listed = c.query("SELECT walfile FROM walarch_expire(keep_backups => 3)");
    assert!(!listed.is_empty());
    assert!(
        listed.lines().all(|w| w[8..24] < starts[0][8..]),
        "{listed} vs {starts:?}"
    );
    // The bucket's listing gives the archive times: nothing is an hour old.
    let (code, out, err) = s3.walarch(&["expire", &s3.url(&prefix), "--older-than", "1h"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 file(s) removed"), "{out}");
    let (code, out, err) = s3.walarch(&["expire", &s3.url(&prefix), "--keep-backups", "2"]);
    assert_eq!(code, 0, "{out}{err}");
    let removed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("removed "))
        .collect();
    assert!(!removed.is_empty(), "{out}");
    assert!(
        removed.iter().all(|r| r[8..24] < starts[1][8..]),
        "{removed:?} vs {starts:?}"
    );
    assert!(
        removed.iter().any(|r| r.ends_with(".backup")),
        "{removed:?}"
    );
    let (code, out, err) = s3.walarch(&["verify", &s3.url(&prefix)]);
    assert_eq!(code, 0, "verify: {out}{err}");
    // Nothing left for the same rule.
    assert_eq!(
        c.query("SELECT count(*) FROM walarch_expire(keep_backups => 2, dry_run => false)"),
        "0"
    );

    let mut r = s3.restoring_cluster("s3-expire-recovered", &c, "b2", &prefix);
    r.append_conf(&["recovery_target_action = 'promote'", "archive_mode = off"]);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*) FROM t"), "300");
}

/// `pg_basebackup --target=walarch:LABEL -X none`: the backup goes into the
/// archive (`backups/LABEL/`), and PostgreSQL archives its `.backup` file
/// too (the `n`th); returns that file's name.
fn target_backup(c: &Cluster, label: &str, n: usize) -> String {
    let archive = c.archive_dir();
    let out = as_server_user(walarch_integration::bindir().join("pg_basebackup"))
        .args([
            &format!("--target=walarch:{label}"),
            "-X",
            "none",
            "-c",
            "fast",
        ])
        .args(["-U", "postgres", "-h"])
        .arg(&c.sockdir)
        .args(["-p", &c.port.to_string()])
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup --target=walarch:{label}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = archive.join("backups").join(label).join("backup.json");
    wait_until(&format!("backup {label} complete and archived"), T, || {
        json.exists() && backups(&archive).len() >= n
    });
    backups(&archive).pop().unwrap()
}

/// The objects of backup `label` in a directory archive, sorted.
fn target_objects(archive: &Path, label: &str) -> Vec<String> {
    let dir = archive.join("backups").join(label);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn expire_with_two_backups_taken_through_the_target_keeps_exactly_what_the_newest_n_need() {
    // The target exists on 15+; run on the oldest and the newest supported.
    if ![15, 18].contains(&pg_major()) {
        return;
    }
    let c = recovery_primary("expire-target");
    let archive = c.archive_dir();
    let dir = archive.to_str().unwrap();
    c.switch_many(3);
    let b1 = target_backup(&c, "t1", 1);
    batch(&c, 1, 100, "t1");
    c.switch_many(2);
    let b2 = target_backup(&c, "t2", 2);
    batch(&c, 101, 200, "t2");
    let t1 = target_objects(&archive, "t1");
    let t2 = target_objects(&archive, "t2");
    assert!(t1.contains(&"backup.json".to_string()), "{t1:?}");
    assert!(t2.contains(&"backup.json".to_string()), "{t2:?}");
    let before = segments(&archive);
    verify_ok(&archive);

    // Each backup counts once (its backup.json and its .backup file):
    // keeping two keeps both, and only the WAL before the first goes.
    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "2", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("backups/"), "{out}");
    assert!(
        out.contains(&format!("would remove {}", before[0])),
        "{out}"
    );

    // Keeping one: t1's objects first, backup.json first of them, then the
    // WAL before t2's start.
    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "1", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "would remove backups/t1/backup.json", "{out}");
    let objects_listed = lines
        .iter()
        .take_while(|l| l.starts_with("would remove backups/t1/"))
        .count();
    assert_eq!(objects_listed, t1.len(), "{out}");
    assert!(!out.contains("backups/t2"), "{out}");
    assert_eq!(target_objects(&archive, "t1"), t1, "a dry run removed");
    // The SQL function agrees.
    let sql = c.query(
        "SELECT count(*) FILTER (WHERE walfile LIKE 'backups/t1/%'), \
                count(*) FILTER (WHERE walfile LIKE 'backups/t2/%') \
         FROM walarch_expire(keep_backups => 1) WHERE action = 'remove'",
    );
    assert_eq!(sql, format!("{}|0", t1.len()));

    let (code, out, err) = walarch(&["expire", dir, "--keep-backups", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!archive.join("backups/t1").exists(), "{out}");
    assert_eq!(target_objects(&archive, "t2"), t2, "{out}");
    let after = segments(&archive);
    assert_eq!(after.first().map(String::as_str), Some(&b2[..24]), "{out}");
    let want: Vec<&String> = before.iter().filter(|s| s[8..] < b2[8..24]).collect();
    let gone: Vec<&String> = before.iter().filter(|s| !after.contains(s)).collect();
    assert_eq!(gone, want, "{out}");
    assert_eq!(
        backups(&archive),
        std::slice::from_ref(&b2),
        "{b1} kept: {out}"
    );
    // t2 is whole: its objects match backup.json, its WAL is archived.
    verify_ok(&archive);
    let (code, out, err) = walarch(&["verify", dir, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backups/t2/base.tar"), "{out}");
}
