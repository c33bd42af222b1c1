//! The pieces of a crash loop: a backlog of segments kept as reference
//! copies, and a SIGKILL of the archiver, the copy-ahead worker or the
//! postmaster followed by the wait for the server to be back and drained.

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::{sh, wait_until, Cluster};

pub const VICTIMS: [&str; 3] = ["archiver", "copy-ahead worker", "postmaster"];

/// Inserts 4 × 50 rows into `t`, switching after each batch; every
/// completed segment is copied into `reference` and appended to `all`.
/// `rows` is the highest id so far.
pub fn backlog(p: &Cluster, round: usize, rows: &mut i32, reference: &Path, all: &mut Vec<String>) {
    for _ in 0..4 {
        *rows += 50;
        p.query(&format!(
            "INSERT INTO t SELECT g, 'r{round}' FROM generate_series({}, {rows}) g",
            *rows - 49
        ));
        let f = p.query("SELECT pg_walfile_name(pg_switch_wal())");
        fs::copy(p.data.join("pg_wal").join(&f), reference.join(&f)).unwrap();
        all.push(f);
    }
}

/// SIGKILLs victim `round % 3` (see `VICTIMS`); after a postmaster kill,
/// waits for its children to go and starts the server again (crash
/// recovery). Then waits until it accepts queries and nothing is left to
/// archive. The PID killed, `None` when the process was not running.
pub fn kill_and_recover(p: &mut Cluster, round: usize, timeout: Duration) -> Option<i32> {
    let victim = round % 3;
    let pid = match victim {
        0 => p.archiver_pid(),
        1 => p
            .psql("SELECT worker_pid FROM walarch_stats()")
            .ok()
            .and_then(|s| s.parse().ok()),
        _ => Some(p.postmaster_pid()),
    }?;
    p.kill(pid, "KILL");
    if victim == 2 {
        // The postmaster is gone: its children notice and exit; then a
        // normal start runs crash recovery.
        wait_until("old server processes gone", timeout, || {
            sh(&format!("ps -o pid= --ppid {pid} || true"))
                .trim()
                .is_empty()
        });
        wait_until("restart after postmaster kill", timeout, || p.try_start(30));
    }
    let t0 = std::time::Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    p.wait_ready(timeout);
    let ready = t0.elapsed();
    p.wait_drained(timeout);
    eprintln!(
        "round {round}: killed {} (pid {pid}); accepting queries after {ready:?}, drained after {:?}",
        VICTIMS[victim],
        t0.elapsed()
    );
    Some(pid)
}
