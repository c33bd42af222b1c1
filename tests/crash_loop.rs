//! A crash loop that SIGKILLs the archiver, the copy-ahead worker and the
//! postmaster at random moments over a growing backlog: nothing is lost and
//! point-in-time recovery still has every committed row.

use std::fs;
use std::time::Duration;

use walarch_integration::crash::{backlog, kill_and_recover};
use walarch_integration::setups::{recovering_from, recovery_primary as primary};
use walarch_integration::{skipped_between_15_and_18, verify_ok, BackupOptions, Walarch};

const T: Duration = Duration::from_secs(120);

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
    if skipped_between_15_and_18() {
        return;
    }
    let mut p = primary("crashloop");
    p.backup("backup", &BackupOptions::without_wal());
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
        backlog(&p, round, &mut rows, &reference, &mut all);
        std::thread::sleep(Duration::from_millis(rng.next(150)));
        if kill_and_recover(&mut p, round, T).is_none() {
            continue;
        }
        kills += 1;
        verify_ok(&archive);
        let tmp = p.archive_temp_files();
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
    let mut r = recovering_from("crashloop-pitr", &p, "backup", &archive, &[], None);
    r.start_and_wait_promoted(T);
    assert_eq!(
        r.query("SELECT count(*), max(id) FROM t"),
        format!("{rows}|{rows}")
    );
}
