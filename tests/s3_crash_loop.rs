//! A crash loop over uploads to a bucket: the archiver, the copy-ahead
//! worker and the postmaster SIGKILLed at random moments while a backlog is
//! being uploaded. After each round the bucket verifies (an interrupted
//! upload is never visible: every object there matches its checksum); at
//! the end every segment is the WAL produced and PITR from the bucket has
//! every committed row.

use std::fs;
use std::time::Duration;

use walarch_integration::crash::{backlog, kill_and_recover, VICTIMS};
use walarch_integration::seaweed::Seaweed;
use walarch_integration::{
    pg_major, skipped_between_15_and_18, BackupOptions, Cluster, InitOptions, Walarch,
};

const T: Duration = Duration::from_secs(120);

#[test]
fn crash_loop_over_uploads_loses_nothing() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("pg-crash", None);
    let prefix = format!("pg{}/crash", pg_major());
    let mut p = Cluster::new("s3-crash");
    p.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    let credentials = p.root.join("s3-credentials");
    s3.write_credentials(&credentials, None);
    p.append_conf(&s3.archive_conf(&prefix, &credentials));
    p.start();
    p.query("CREATE EXTENSION walarch_ext");
    p.query("CREATE TABLE t(id int, note text)");
    p.backup("backup", &BackupOptions::without_wal());
    let reference = p.root.join("reference");
    fs::create_dir_all(&reference).unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("s3 crash loop seed: {seed}");
    let mut x = seed | 1;
    let mut rows = 0;
    let mut all = vec![];
    let rounds = 12;
    for round in 0..rounds {
        backlog(&p, round, &mut rows, &reference, &mut all);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(x % 100));
        let pid = kill_and_recover(&mut p, round, T);
        assert!(
            pid.is_some(),
            "round {round}: no {} to kill",
            VICTIMS[round % 3]
        );
        let (code, out, err) = s3.walarch(&["verify", &s3.url(&prefix)]);
        assert_eq!(code, 0, "round {round}: verify: {out}{err}");
    }

    // Every segment in the bucket is the WAL produced.
    for f in &all {
        s3.assert_holds(&p, &prefix, f, &reference.join(f));
    }
    // PITR from the bucket to its end has every committed row.
    p.stop();
    let mut r = s3.restoring_cluster("s3-crash-pitr", &p, "backup", &prefix);
    r.append_conf(&["archive_mode = off", "recovery_target_action = 'promote'"]);
    r.start_and_wait_promoted(T);
    assert_eq!(
        r.query("SELECT count(*), max(id) FROM t"),
        format!("{rows}|{rows}")
    );
}
