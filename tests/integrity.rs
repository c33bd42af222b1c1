//! Integrity end to end: point-in-time recovery through `walarch restore`
//! (to a named target, to the end of the archive, across a timeline switch),
//! corruption and gaps found by `walarch verify` and refused by restore, and
//! a crash loop that SIGKILLs the archiver, the worker and the postmaster.

use std::fs;
use std::path::Path;
use std::time::Duration;

use walarch_integration::{as_server_user, bindir, sh, wait_until, walarch, Cluster, InitOptions};

const T: Duration = Duration::from_secs(120);

fn primary(name: &str) -> Cluster {
    let mut c = Cluster::init(
        name,
        InitOptions {
            wal_segsize_mb: Some(1),
            conf: &["checkpoint_timeout = '1h'"],
        },
    );
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    c.query("CREATE TABLE t(id int, note text)");
    c
}

/// Inserts rows `from..=to` and switches WAL, waiting until archived.
fn batch(c: &Cluster, from: i32, to: i32, note: &str) -> String {
    c.query(&format!(
        "INSERT INTO t SELECT g, '{note}' FROM generate_series({from}, {to}) g"
    ));
    let out =
        c.query("SELECT walfile, archived FROM walarch_switch_wal(wait => true, timeout => '60s')");
    let (walfile, archived) = out.split_once('|').unwrap();
    assert_eq!(archived, "t", "{walfile} not archived: {}", c.log_text());
    walfile.to_string()
}

fn verify_ok(archive: &Path) {
    let (code, out, err) = walarch(&["verify", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "verify failed:\n{out}{err}");
}

#[test]
fn pitr_to_named_target_to_end_and_across_timeline_switch() {
    let p = primary("pitr");
    let backup = p.base_backup("backup");
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
    let mut r1 = Cluster::from_backup(
        "pitr-target",
        &backup,
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
    let mut r2 = Cluster::from_backup(
        "pitr-end",
        &backup,
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
    let mut r3 = Cluster::from_backup(
        "pitr-latest",
        &backup,
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

#[test]
fn corruption_is_found_refused_and_stops_recovery() {
    let p = primary("corrupt");
    let backup = p.base_backup("backup");
    let mut segs = vec![];
    for i in 0..6 {
        segs.push(batch(&p, i * 100 + 1, i * 100 + 100, &format!("b{i}")));
    }
    let archive = p.archive_dir();
    verify_ok(&archive);

    // Flip one byte in the segment holding batch 3.
    let victim = archive.join(&segs[3]);
    let mut bytes = fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&victim, bytes).unwrap();

    let (code, out, _) = walarch(&["verify", archive.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        out.contains(&format!("{}: corrupt: SHA-256 mismatch", segs[3])),
        "{out}"
    );
    let sql = p.query(&format!(
        "SELECT status FROM walarch_verify() WHERE walfile = '{}'",
        segs[3]
    ));
    assert_eq!(sql, "corrupt");

    let dest = p.root.join("restored");
    let (code, _, err) = walarch(&[
        "restore",
        archive.to_str().unwrap(),
        &segs[3],
        dest.to_str().unwrap(),
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!dest.exists(), "a refused file was left at the destination");

    // Recovery replays batches 0-2 and stops before the corrupt segment
    // instead of replaying garbage.
    let mut r = Cluster::from_backup("corrupt-recovery", &backup, &archive, &[], None);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*), max(id) FROM t"), "300|300");
    assert!(
        r.log_text().contains("checksum mismatch"),
        "{}",
        r.log_text()
    );

    // A deleted segment is a gap.
    fs::remove_file(archive.join(&segs[1])).unwrap();
    let (code, out, _) = walarch(&["verify", archive.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let v: Vec<&str> = out.split("\"status\":\"missing\"").collect();
    assert_eq!(v.len(), 2, "{out}");
    assert!(out.contains(&format!("{{\"detail\":\"gap in the WAL sequence on timeline 1\",\"status\":\"missing\",\"walfile\":\"{}\"}}", segs[1])), "{out}");
}

/// A tiny deterministic generator, seeded from the clock and printed, so a
/// failing sequence of kills can be replayed with WALARCH_CRASH_SEED.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn crash_loop_loses_nothing_and_pitr_still_works() {
    let mut p = primary("crashloop");
    let backup = p.base_backup("backup");
    let archive = p.archive_dir();
    let reference = p.root.join("reference");
    fs::create_dir_all(&reference).unwrap();
    let seed = std::env::var("WALARCH_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash loop seed: {seed} (WALARCH_CRASH_SEED to replay)");
    let mut rng = Lcg(seed);
    let mut rows = 0;
    let mut all = vec![];
    let mut kills = 0;

    let rounds: usize = std::env::var("WALARCH_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    for round in 0..rounds {
        // A backlog of a few segments, each kept as a reference copy as soon
        // as it is complete.
        for _ in 0..4 {
            rows += 50;
            p.query(&format!(
                "INSERT INTO t SELECT g, 'r{round}' FROM generate_series({}, {rows}) g",
                rows - 49
            ));
            let f = p.query("SELECT pg_walfile_name(pg_switch_wal())");
            fs::copy(p.data.join("pg_wal").join(&f), reference.join(&f)).unwrap();
            all.push(f);
        }
        std::thread::sleep(Duration::from_millis(rng.next(150)));
        let victim = round % 3;
        let pid = match victim {
            0 => p.archiver_pid(),
            1 => p
                .psql("SELECT worker_pid FROM walarch_stats()")
                .ok()
                .and_then(|s| s.parse().ok()),
            _ => Some(p.postmaster_pid()),
        };
        let Some(pid) = pid else { continue };
        p.kill(pid, "KILL");
        kills += 1;
        if victim == 2 {
            // The postmaster is gone: its children notice and exit; then a
            // normal start runs crash recovery.
            wait_until("old server processes gone", T, || {
                !sh(&format!("ps -o pid= --ppid {pid} || true"))
                    .trim()
                    .is_empty()
                    == false
            });
            wait_until("restart after postmaster kill", T, || {
                let mut c = as_server_user(bindir().join("pg_ctl"));
                c.arg("-D")
                    .arg(&p.data)
                    .arg("-l")
                    .arg(&p.log)
                    .args(["-w", "-t", "30", "start"]);
                c.output().map(|o| o.status.success()).unwrap_or(false)
            });
        }
        let t0 = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        p.wait_ready(T);
        let ready = t0.elapsed();
        p.wait_drained(T);
        eprintln!(
            "round {round}: killed {} (pid {pid}); accepting queries after {ready:?}, drained after {:?}",
            ["archiver", "copy-ahead worker", "postmaster"][victim as usize],
            t0.elapsed()
        );
        verify_ok(&archive);
        let tmp: Vec<String> = p
            .archive_listing()
            .into_iter()
            .filter(|n| n.starts_with(walarch_integration::TEMP_PREFIX))
            .collect();
        assert!(
            tmp.is_empty(),
            "round {round}: temporary files left: {tmp:?}"
        );
    }
    assert!(kills >= rounds.min(20), "only {kills} kills");

    // Every archived segment is the WAL PostgreSQL produced.
    for f in &all {
        let a = fs::read(archive.join(f))
            .unwrap_or_else(|e| panic!("{f} missing from the archive: {e}"));
        assert!(
            a == fs::read(reference.join(f)).unwrap(),
            "{f} differs from the WAL produced"
        );
    }
    // And a final PITR to the end of the archive has every committed row.
    p.stop();
    let mut r = Cluster::from_backup("crashloop-pitr", &backup, &archive, &[], None);
    r.start_and_wait_promoted(T);
    assert_eq!(
        r.query("SELECT count(*), max(id) FROM t"),
        format!("{rows}|{rows}")
    );
}
