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
