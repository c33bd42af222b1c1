//! Recovery from a bucket with `walarch restore` prefetching: to a restore
//! point and across a timeline switch, through a corrupt object (recovery
//! stops there without opening the server, as without prefetching, and
//! completes once the object is repaired), and with the helper killed
//! mid-recovery (recovery goes on). The helper's last line in the server log
//! says what it did.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walarch_core::wal::checksum::{sha256, to_hex};
use walarch_integration::seaweed::Seaweed;
use walarch_integration::setups::batch;
use walarch_integration::{pg_major, quoted, wait_until, BackupOptions, Cluster};

const T: Duration = Duration::from_secs(120);

/// A cluster recovering from `p`'s backup "base" with `walarch restore
/// OPTIONS`, each call delayed by `delay` seconds when given (recovery
/// slower than the helper, so that it is always ahead). Not started.
fn recovering(
    s3: &Seaweed,
    p: &Cluster,
    name: &str,
    prefix: &str,
    options: &str,
    delay: Option<&str>,
) -> Cluster {
    let r = s3.restoring_cluster(name, p, "base", prefix);
    let command = format!("{} {options}", s3.restore_command(prefix));
    let command = match delay {
        Some(d) => format!("sleep {d} && {command}"),
        None => command,
    };
    r.adjust_conf("restore_command", &quoted(command));
    r
}

/// What the helpers' last lines in `log` add up to: (segments fetched
/// ahead, discarded unused, failed, helpers stopped).
fn helper_totals(log: &str) -> (u64, u64, u64, usize) {
    let mut t = (0, 0, 0, 0);
    for line in log
        .lines()
        .filter(|l| l.contains("walarch prefetch: stopped ("))
    {
        let counts = line.rsplit_once("): ").map(|(_, c)| c).unwrap_or_default();
        let n = |after: &str| -> u64 {
            counts
                .split(", ")
                .find(|part| part.contains(after))
                .and_then(|part| part.split_whitespace().next()?.parse().ok())
                .unwrap_or_else(|| panic!("no \"{after}\" count in {line:?}"))
        };
        t.0 += n("fetched ahead");
        t.1 += n("discarded");
        t.2 += n("failed");
        t.3 += 1;
    }
    t
}

/// The fetched files a spool holds (`WALFILE.SHA256` names).
fn spooled(data: &Path) -> Vec<String> {
    std::fs::read_dir(data.join("pg_wal/walarch_prefetch"))
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 24 + 1 + 64)
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of the helpers serving `data`'s spool.
fn helper_pids(data: &Path) -> Vec<i32> {
    let spool = data.join("pg_wal/walarch_prefetch");
    let out = Command::new("pgrep")
        .args([
            "-f",
            "--",
            &format!("prefetch-helper .* --spool {}", spool.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn pitr_from_a_bucket_with_prefetch_to_a_restore_point_and_across_a_timeline_switch() {
    let s3 = Seaweed::start("prefetch-pitr", None);
    let prefix = format!("pg{}/prefetch", pg_major());
    let p = s3.recovery_primary("pf-primary", &prefix);
    p.backup("base", &BackupOptions::without_wal());
    for i in 0..8 {
        batch(&p, i * 100 + 1, i * 100 + 100, "before");
    }
    p.query("SELECT pg_create_restore_point('walarch_rp')");
    for i in 8..12 {
        batch(&p, i * 100 + 1, i * 100 + 100, "after");
    }
    p.switch_wal();
    p.wait_drained(T);

    // To the restore point, 4 segments ahead.
    let mut r1 = recovering(
        &s3,
        &p,
        "pf-to-rp",
        &prefix,
        "--prefetch 4 --prefetch-idle 2",
        None,
    );
    r1.append_conf(&[
        "recovery_target_name = 'walarch_rp'",
        "recovery_target_action = 'promote'",
    ]);
    r1.start_and_wait_promoted(T);
    assert_eq!(r1.query("SELECT count(*), max(id) FROM t"), "800|800");
    r1.wait_for_log("walarch prefetch: stopped (nothing was asked for", 0, T);
    let (fetched, _, failed, _) = helper_totals(&r1.log_text());
    assert!(
        fetched >= 4,
        "only {fetched} segments prefetched:\n{}",
        r1.log_text()
    );
    assert_eq!(failed, 0);
    assert!(spooled(&r1.data).is_empty(), "the helper left files behind");

    // Timeline 2, archived into the same bucket.
    batch(&r1, 5001, 5100, "timeline 2");
    r1.switch_wal();
    r1.wait_drained(T);

    // From the same backup to the end of the archive: timeline 1 up to the
    // fork, then timeline 2, never timeline 1's segments after the fork.
    let mut r2 = recovering(
        &s3,
        &p,
        "pf-latest",
        &prefix,
        "--prefetch 4 --prefetch-idle 2",
        Some("0.3"),
    );
    r2.append_conf(&["archive_mode = off", "recovery_target_timeline = 'latest'"]);
    r2.start_and_wait_promoted(T);
    assert_eq!(
        r2.query("SELECT count(*), max(id), count(*) FILTER (WHERE note = 'after') FROM t"),
        "900|5100|0"
    );
    r2.wait_for_log("walarch prefetch: stopped (nothing was asked for", 0, T);
    let log = r2.log_text();
    let (fetched, discarded, failed, _) = helper_totals(&log);
    assert!(fetched >= 8, "only {fetched} segments prefetched:\n{log}");
    // Following timeline 1 past the fork would fetch (then discard) its
    // "after" segments; at most one may be lost to the helper's start.
    assert!(
        discarded <= 1,
        "{discarded} prefetched segments discarded:\n{log}"
    );
    assert_eq!(failed, 0);
}

#[test]
fn a_corrupt_object_stops_recovery_and_once_repaired_a_restart_completes_it() {
    let s3 = Seaweed::start("prefetch-corrupt", None);
    let prefix = format!("pg{}/corrupt", pg_major());
    let p = s3.recovery_primary("pf-corrupt", &prefix);
    p.backup("base", &BackupOptions::without_wal());
    let segs: Vec<String> = (0..6)
        .map(|i| batch(&p, i * 100 + 1, i * 100 + 100, &format!("b{i}")))
        .collect();
    p.wait_drained(T);

    // One bit flipped in the object holding batch 3, its recorded SHA-256
    // (object metadata) kept: rot in the store.
    let key = format!("{prefix}/{}", segs[3]);
    let good = s3.get_object(&key);
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    s3.overwrite_object(
        &key,
        &bad,
        &[format!("x-amz-meta-sha256: {}", to_hex(&sha256(&good)))],
    );
    let (code, out, _) = s3.walarch(&["verify", &s3.url(&prefix)]);
    assert_eq!(code, 1, "{out}");

    for (name, options) in [
        ("pf-corrupt-prefetch", "--prefetch 8 --prefetch-idle 2"),
        ("pf-corrupt-direct", "--no-prefetch"),
    ] {
        s3.overwrite_object(
            &key,
            &bad,
            &[format!("x-amz-meta-sha256: {}", to_hex(&sha256(&good)))],
        );
        let mut r = recovering(&s3, &p, name, &prefix, options, None);
        r.append_conf(&["archive_mode = off"]);
        let log = r.start_expecting_recovery_to_stop(T);
        assert!(
            log.contains(&format!("checksum mismatch for \"{}\"", segs[3]))
                && log.contains("so that PostgreSQL stops recovery"),
            "{name}:\n{log}"
        );
        if options.starts_with("--prefetch") {
            r.wait_for_log("walarch prefetch: stopped (nothing was asked for", 0, T);
            let log = r.log_text();
            assert!(
                log.contains(&format!(
                    "walarch prefetch: could not prefetch \"{}\"",
                    segs[3]
                )),
                "{log}"
            );
            let (fetched, _, failed, _) = helper_totals(&log);
            assert!(fetched >= 2, "{log}");
            assert_eq!(failed, 1, "{log}");
            assert!(spooled(&r.data).is_empty());
        } else {
            assert!(!log.contains("walarch prefetch"), "{log}");
        }
        // The object repaired, starting again completes the recovery.
        s3.overwrite_object(
            &key,
            &good,
            &[format!("x-amz-meta-sha256: {}", to_hex(&sha256(&good)))],
        );
        r.start_and_wait_promoted(T);
        assert_eq!(
            r.query("SELECT count(*), max(id) FROM t"),
            "600|600",
            "{name}"
        );
    }
}

#[test]
fn a_killed_helper_does_not_stop_recovery_and_none_outlives_the_data_directory() {
    let s3 = Seaweed::start("prefetch-kill", None);
    let prefix = format!("pg{}/kill", pg_major());
    let p = s3.recovery_primary("pf-kill", &prefix);
    p.backup("base", &BackupOptions::without_wal());
    for i in 0..20 {
        batch(&p, i * 100 + 1, i * 100 + 100, "row");
    }
    p.wait_drained(T);

    // About 0.3 s per segment: the helper is killed while recovery runs.
    let mut r = recovering(
        &s3,
        &p,
        "pf-kill-r",
        &prefix,
        "--prefetch 4 --prefetch-idle 30",
        Some("0.3"),
    );
    r.append_conf(&["archive_mode = off"]);
    let data = r.data.clone();
    let (first, second) = std::thread::scope(|sc| {
        let killer = sc.spawn(|| {
            let mut first = vec![];
            wait_until("a prefetch helper", T, || {
                first = helper_pids(&data);
                !first.is_empty()
            });
            wait_until("prefetched segments", T, || spooled(&data).len() >= 2);
            for pid in &first {
                // SAFETY: a plain kill(2) of a process found by its command line.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            // The next restore_command starts another.
            let mut second = vec![];
            wait_until("another prefetch helper", T, || {
                second = helper_pids(&data);
                second.iter().any(|p| !first.contains(p))
            });
            (first, second)
        });
        r.start_and_wait_promoted(T);
        killer.join().unwrap()
    });
    assert_eq!(r.query("SELECT count(*), max(id) FROM t"), "2000|2000");
    assert!(first.iter().all(|p| !second.contains(p)));
    let log = r.log_text();
    assert!(!log.contains("could not restore"), "{log}");

    // The helper (idle timeout 30 s) stops when the data directory goes.
    r.stop();
    std::fs::remove_dir_all(&r.data).unwrap();
    wait_until("no helper left", Duration::from_secs(10), || {
        helper_pids(&data).is_empty()
    });
    let (fetched, _, failed, stops) = helper_totals(&r.log_text());
    assert_eq!(stops, 1, "{}", r.log_text());
    assert!(fetched >= 2 && failed == 0, "{}", r.log_text());
    assert!(r.log_text().contains("\" was removed)"), "{}", r.log_text());
}
