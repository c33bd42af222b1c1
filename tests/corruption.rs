//! Corruption and gaps in the archive: found by `walarch verify` and
//! walarch_verify(), refused by `walarch restore`, and recovery stops at
//! them without opening the server; once the file is repaired, starting the
//! server again completes the same recovery.

use std::fs;
use std::time::Duration;

use walarch_integration::setups::{batch, recovering_from, recovery_primary as primary};
use walarch_integration::{verify_ok, walarch, BackupOptions, Walarch};

const T: Duration = Duration::from_secs(120);

#[test]
fn corruption_is_found_refused_and_stops_recovery() {
    let p = primary("corrupt");
    p.backup("backup", &BackupOptions::without_wal());
    let mut segs = vec![];
    for i in 0..6 {
        segs.push(batch(&p, i * 100 + 1, i * 100 + 100, &format!("b{i}")));
    }
    let archive = p.archive_dir();
    verify_ok(&archive);

    // Flip one byte in the segment holding batch 3.
    let victim = archive.join(&segs[3]);
    let good = fs::read(&victim).unwrap();
    let mut bytes = good.clone();
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
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!dest.exists(), "a refused file was left at the destination");

    // Recovery replays batches 0-2, then stops at the corrupt segment: it
    // neither replays garbage nor takes the refusal for the end of the
    // archive (which would open the server with batches 3-5 gone).
    let mut r = recovering_from("corrupt-recovery", &p, "backup", &archive, &[], None);
    let log = r.start_expecting_recovery_to_stop(T);
    assert!(
        log.contains(&format!("checksum mismatch for \"{}\"", segs[3]))
            && log.contains("so that PostgreSQL stops recovery")
            && log.contains(&format!("could not restore file \"{}\"", segs[3])),
        "{log}"
    );
    // Repaired, the same recovery goes on to the end.
    fs::write(&victim, &good).unwrap();
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*), max(id) FROM t"), "600|600");

    // A deleted segment is a gap.
    fs::remove_file(archive.join(&segs[1])).unwrap();
    let (code, out, _) = walarch(&["verify", archive.to_str().unwrap(), "--json"]);
    assert_eq!(code, 1);
    let v: Vec<&str> = out.split("\"status\":\"missing\"").collect();
    assert_eq!(v.len(), 2, "{out}");
    assert!(out.contains(&format!("{{\"detail\":\"gap in the WAL sequence on timeline 1\",\"status\":\"missing\",\"walfile\":\"{}\"}}", segs[1])), "{out}");
}
