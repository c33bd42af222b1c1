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

/// walarch_verify() stops for statement_timeout and pg_terminate_backend()
/// in the middle of hashing one file. The file is a FIFO fed by this test:
/// its end never comes while the test writes, so verify can end only by
/// being interrupted (without the checks it would run until the writer
/// gives up after 8 GiB, and the assertions below fail).
#[test]
fn verify_stops_for_statement_timeout_and_terminate_while_hashing() {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use walarch_integration::setups::started_with_walarch;
    use walarch_integration::{pg_major, wait_until};

    if ![15, 18].contains(&pg_major()) {
        return; // nothing version-specific
    }
    let c = started_with_walarch("verify-cancel");
    c.query("CREATE EXTENSION walarch_ext");
    let seg = c.switch_wal();
    c.wait_done(&seg, T);
    let archive = c.archive_dir();
    // A segment far past the real ones (the archiver never meets it); the
    // range verified holds only it.
    let fifo_name = "0000000100000000000000F0";
    let fifo = archive.join(fifo_name);
    walarch_integration::sh(&format!(
        "mkfifo -m 0644 '{0}' && printf '%064d  {1}\\n' 0 > '{0}.sha256'",
        fifo.display(),
        fifo_name
    ));
    let verify = format!("SELECT count(*) FROM walarch_verify(from_wal => '{fifo_name}')");

    // Opens the FIFO once verify has, then writes 64 KiB chunks until told
    // to stop (or 8 GiB); says whether it opened and whether verify had
    // let go of the file by then (a write fails with EPIPE).
    let feed = |opened: &AtomicBool, stop: &AtomicBool| {
        let mut w = loop {
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
            {
                Ok(w) => break w,
                Err(_) if stop.load(Ordering::Relaxed) => return (false, false),
                // ENXIO: no reader yet.
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        // Blocking writes from here.
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::fcntl(w.as_raw_fd(), libc::F_SETFL, 0);
        }
        opened.store(true, Ordering::Relaxed);
        let chunk = vec![0x5au8; 64 << 10];
        let mut sent = 0u64;
        while sent < 8 << 30 && !stop.load(Ordering::Relaxed) {
            if w.write_all(&chunk).is_err() {
                return (true, true);
            }
            sent += chunk.len() as u64;
        }
        (true, w.write_all(&chunk).is_err())
    };

    let (opened, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let writer = s.spawn(|| feed(&opened, &stop));
        let out = c.psql_output(&format!("SET statement_timeout = '200ms'; {verify}"));
        stop.store(true, Ordering::Relaxed);
        let (opened, reader_left) = writer.join().unwrap();
        assert!(!out.success, "verify finished: {}", out.stdout);
        assert!(
            out.stderr
                .contains("canceling statement due to statement timeout"),
            "{}",
            out.stderr
        );
        assert!(opened, "canceled before it read the file");
        assert!(reader_left, "verify did not let go of the file");
    });

    // pg_terminate_backend() of a verify busy hashing ends its session.
    let (opened, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let writer = s.spawn(|| feed(&opened, &stop));
        let session = s.spawn(|| c.psql_output(&format!("{verify} /* to terminate */")));
        let pid = || {
            c.query(
                "SELECT pid FROM pg_stat_activity \
                 WHERE query LIKE '%/* to terminate */' AND pid <> pg_backend_pid()",
            )
        };
        wait_until("verify reading the FIFO", T, || {
            opened.load(Ordering::Relaxed) || session.is_finished()
        });
        let p = pid();
        assert!(!p.is_empty(), "verify is not running");
        assert_eq!(c.query(&format!("SELECT pg_terminate_backend({p})")), "t");
        let out = session.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let (_, reader_left) = writer.join().unwrap();
        assert!(!out.success, "verify finished: {}", out.stdout);
        assert!(
            out.stderr
                .contains("terminating connection due to administrator command"),
            "{}",
            out.stderr
        );
        assert!(reader_left, "verify did not let go of the file");
    });

    // The server is fine and the real archive still verifies.
    fs::remove_file(&fifo).unwrap();
    fs::remove_file(archive.join(format!("{fifo_name}.sha256"))).unwrap();
    assert_eq!(
        c.query("SELECT count(*) FROM walarch_verify() WHERE status = 'corrupt'"),
        "0"
    );
}
