//! `walarch.max_backlog`: with the archive down (a directory made
//! unwritable, a store stopped), the server keeps running and `pg_wal` stays
//! within the budget (plus what checkpoints keep): the oldest waiting
//! segments are dropped, each one counted and logged. When the destination
//! returns, archiving resumes after the dropped range, a `DROPPED.` marker
//! is stored, `walarch verify` names the range, a point-in-time recovery
//! from a backup taken before it stops there without opening, and one from
//! a backup taken after it recovers to the end. With the destination
//! healthy nothing is dropped, however large the backlog.
//!
//! PostgreSQL 15 and 18: what differs per version is the archive-module ABI.

use std::path::PathBuf;
use std::time::Duration;

use walarch_integration::seaweed::Seaweed;
use walarch_integration::{
    pg_major, restore_command, sh, skipped_between_15_and_18, walarch, BackupOptions, Cluster,
    FromBackupOptions, InitOptions, Walarch,
};

const T: Duration = Duration::from_secs(120);
const MB: u64 = 1 << 20;
const BUDGET_MB: u64 = 128;
const MAX_WAL_MB: u64 = 96;
const SEG: u64 = 16 * MB;

/// Settings of the primary: the budget, and checkpoints often enough that
/// segments reported archived are recycled soon.
fn budget_conf() -> Vec<String> {
    vec![
        format!("walarch.max_backlog = '{BUDGET_MB}MB'"),
        format!("max_wal_size = '{MAX_WAL_MB}MB'"),
        "min_wal_size = '32MB'".into(),
    ]
}

/// Bytes of WAL segment files in `pg_wal`.
fn pg_wal_bytes(c: &Cluster) -> u64 {
    std::fs::read_dir(c.data.join("pg_wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().len() == 24)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Where the archive is, and how to break and mend it.
enum Archive {
    Dir(PathBuf),
    Bucket(Box<Seaweed>, String),
}

impl Archive {
    fn url(&self) -> String {
        match self {
            Archive::Dir(d) => d.display().to_string(),
            Archive::Bucket(s3, prefix) => s3.url(prefix),
        }
    }

    fn walarch(&self, args: &[&str]) -> (i32, String, String) {
        match self {
            Archive::Dir(_) => walarch(args),
            Archive::Bucket(s3, _) => s3.walarch(args),
        }
    }

    fn restore_command(&self) -> String {
        match self {
            Archive::Dir(d) => restore_command(d),
            Archive::Bucket(s3, prefix) => s3.restore_command(prefix),
        }
    }

    fn break_it(&mut self) {
        match self {
            Archive::Dir(d) => {
                sh(&format!("chmod 0500 '{}'", d.display()));
            }
            Archive::Bucket(s3, _) => s3.signal(libc::SIGKILL),
        }
    }

    fn mend(&mut self) {
        match self {
            Archive::Dir(d) => {
                sh(&format!("chmod 0700 '{}'", d.display()));
            }
            Archive::Bucket(s3, _) => s3.restart(),
        }
    }

    fn has_marker(&self) -> Option<String> {
        match self {
            Archive::Dir(d) => std::fs::read_dir(d)
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .find(|n| n.starts_with("DROPPED.") && !n.ends_with(".sha256")),
            Archive::Bucket(..) => {
                // verify names the marker of every dropped range.
                let (_, out, _) = self.walarch(&["verify", &self.url()]);
                out.split('"')
                    .find(|w| w.starts_with("DROPPED."))
                    .map(str::to_string)
            }
        }
    }
}

fn primary(name: &str, archive: &Archive) -> Cluster {
    let c = match archive {
        Archive::Dir(_) => {
            let mut c = Cluster::new(name);
            c.init_walarch(&InitOptions::default());
            c.append_conf(&budget_conf());
            c.start();
            c.query("CREATE EXTENSION walarch_ext");
            c
        }
        Archive::Bucket(s3, prefix) => {
            let conf = budget_conf();
            let conf: Vec<&str> = conf.iter().map(String::as_str).collect();
            s3.archiving_cluster(name, prefix, &conf)
        }
    };
    c.query("CREATE TABLE t(id int, note text)");
    c
}

fn insert(c: &Cluster, from: i32, to: i32, note: &str) {
    c.query(&format!(
        "INSERT INTO t SELECT g, '{note}' FROM generate_series({from}, {to}) g"
    ));
}

/// Switches and waits until the file is archived.
fn switch_archived(c: &Cluster) -> String {
    let out =
        c.query("SELECT walfile, archived FROM walarch_switch_wal(wait => true, timeout => '90s')");
    let (walfile, archived) = out.split_once('|').unwrap();
    assert_eq!(archived, "t", "{walfile} not archived: {}", c.log_text());
    walfile.to_string()
}

fn outage_and_recovery(tag: &str, mut archive: Archive) {
    let mut p = primary(&format!("{tag}-primary"), &archive);
    if let Archive::Dir(d) = &mut archive {
        *d = p.archive_dir();
    }
    insert(&p, 1, 100, "before");
    p.backup("before", &BackupOptions::without_wal());
    switch_archived(&p);

    archive.break_it();
    let log = p.log_position();
    // WAL well past the budget, a segment a second (the first drops come
    // once the destination has failed for 10 s).
    let (mut max_pending, mut max_pg_wal) = (0u64, 0u64);
    for i in 0..40 {
        insert(&p, 1000 + i * 10, 1009 + i * 10, "during");
        p.query("SELECT pg_switch_wal()");
        std::thread::sleep(Duration::from_secs(1));
        max_pending = max_pending.max(p.stat_i64("pending_bytes") as u64);
        max_pg_wal = max_pg_wal.max(pg_wal_bytes(&p));
    }
    eprintln!(
        "{tag}: during the outage, at most {} MB waiting and {} MB of segments in pg_wal (budget {BUDGET_MB} MB, max_wal_size {MAX_WAL_MB} MB; {} MB written)",
        max_pending / MB,
        max_pg_wal / MB,
        40 * SEG / MB
    );
    assert!(
        max_pending <= BUDGET_MB * MB + 4 * SEG,
        "{} MB waiting",
        max_pending / MB
    );
    assert!(
        max_pg_wal <= (BUDGET_MB + MAX_WAL_MB) * MB + 6 * SEG,
        "{} MB in pg_wal",
        max_pg_wal / MB
    );
    // Alive, and every drop counted and logged.
    assert_eq!(p.query("SELECT 1"), "1");
    let dropped = p.stat_i64("dropped_count");
    assert!(dropped >= 10, "{dropped} dropped");
    assert_eq!(p.stat_i64("dropped_bytes") as u64, dropped as u64 * SEG);
    assert_eq!(p.stat("last_dropped_wal").len(), 24);
    assert!(!p.stat("last_dropped_time").is_empty());
    p.wait_for_log("dropped WAL file", log, T);
    let text = p.log_text();
    assert!(
        text.contains("the archive backlog exceeds walarch.max_backlog")
            && text.contains("Take a new base backup"),
        "{text}"
    );
    assert!(archive.has_marker().is_none(), "stored while down?");

    // The destination returns: the marker first, then what waited.
    archive.mend();
    insert(&p, 5000, 5099, "after");
    switch_archived(&p);
    p.wait_drained(T);
    // Drops may go on until the destination is back.
    let dropped = p.stat_i64("dropped_count");
    let last_dropped = p.stat("last_dropped_wal");
    let marker = archive.has_marker().expect("no DROPPED marker stored");
    assert!(
        marker.ends_with(&format!("-{last_dropped}")),
        "{marker} vs {last_dropped}"
    );
    let first_dropped = marker
        .strip_prefix("DROPPED.")
        .unwrap()
        .split('-')
        .next()
        .unwrap()
        .to_string();
    let (code, out, err) = archive.walarch(&["verify", &archive.url()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(&format!(
            "{first_dropped}: dropped: dropped by walarch.max_backlog at"
        )),
        "{out}{err}"
    );
    assert!(!out.contains(": missing:"), "an unexplained gap:\n{out}");

    // A backup taken after the gap, and more WAL.
    p.backup("after", &BackupOptions::without_wal());
    insert(&p, 6000, 6099, "end");
    switch_archived(&p);
    let rows = p.query("SELECT count(*) FROM t");
    assert_eq!(p.stat_i64("dropped_count"), dropped, "no drop once back");

    // From before the gap: recovery stops at it, loudly, never opens.
    let mut r = Cluster::new(&format!("{tag}-pitr-before"));
    r.init_from_backup(
        &p,
        "before",
        &FromBackupOptions {
            restore_command: Some(&archive.restore_command()),
            ..Default::default()
        },
    );
    r.append_conf(&["archive_mode = off"]);
    let log = r.start_expecting_recovery_to_stop(T);
    assert!(
        log.contains(&format!(
            "\"{first_dropped}\" is not in the archive: it was dropped by walarch.max_backlog at"
        )) && log.contains(&marker),
        "{log}"
    );

    // From after it: to the end.
    let mut r = Cluster::new(&format!("{tag}-pitr-after"));
    r.init_from_backup(
        &p,
        "after",
        &FromBackupOptions {
            restore_command: Some(&archive.restore_command()),
            ..Default::default()
        },
    );
    r.append_conf(&["archive_mode = off"]);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*) FROM t"), rows);
    assert_eq!(r.query("SELECT count(*) FROM t WHERE note = 'end'"), "100");
    p.stop();
}

#[test]
fn an_unwritable_directory_costs_the_oldest_wal_not_the_server() {
    if skipped_between_15_and_18() {
        return;
    }
    // The directory is set once the primary exists (it is the primary's).
    outage_and_recovery("budget-dir", Archive::Dir(PathBuf::new()));
}

#[test]
fn a_stopped_store_costs_the_oldest_wal_not_the_server() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("budget-s3", None);
    let prefix = format!("pg{}/budget", pg_major());
    outage_and_recovery("budget-s3", Archive::Bucket(Box::new(s3), prefix));
}

#[test]
fn a_healthy_destination_drops_nothing_however_large_the_backlog() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut c = Cluster::new("budget-healthy");
    c.init_walarch(&InitOptions::default());
    // A budget far below the burst below.
    c.append_conf(&["walarch.max_backlog = '1MB'", "walarch.copy_ahead = off"]);
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    let mut max_pending = 0;
    let files: Vec<String> = (0..20)
        .map(|_| {
            let f = c.switch_wal();
            max_pending = max_pending.max(c.stat_i64("pending_bytes"));
            f
        })
        .collect();
    c.wait_drained(T);
    eprintln!(
        "healthy: up to {} MB waited (budget 1 MB)",
        max_pending as u64 / MB
    );
    assert!(
        max_pending as u64 > MB,
        "the backlog never exceeded the budget"
    );
    assert_eq!(c.stat_i64("dropped_count"), 0);
    for f in &files {
        assert!(c.archive_dir().join(f).exists(), "{f} not archived");
    }
    walarch_integration::verify_ok(&c.archive_dir());
}
