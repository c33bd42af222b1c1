//! No thread that the S3 client starts can receive a signal: after real
//! requests (with a DNS look-up, which tokio runs on its blocking pool),
//! made from the test thread and from a plain worker thread, every thread
//! of the process but the main one and the callers blocks SIGTERM.

mod common;

use std::time::Duration;

use common::{settings, Seaweed};
use walarch_core::destination::Destination;
use walarch_s3::runtime::THREAD_NAME;
use walarch_s3::S3Destination;

fn sigterm_blocked_here() -> bool {
    // SAFETY: reads the calling thread's mask into a local sigset_t.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur);
        libc::sigismember(&cur, libc::SIGTERM) == 1
    }
}

fn gettid() -> i64 {
    // SAFETY: no arguments, no memory.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// (tid, name, SigBlk) of every thread.
fn threads() -> Vec<(i64, String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let tid: i64 = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .to_string()
        };
        out.push((
            tid,
            field("Name:"),
            u64::from_str_radix(&field("SigBlk:"), 16).unwrap(),
        ));
    }
    out
}

#[test]
fn only_callers_receive_signals() {
    let sw = Seaweed::start("signals", None);
    let mut s = settings(&sw, "sig");
    // "localhost": a real getaddrinfo on tokio's blocking pool.
    s.endpoint = Some(sw.endpoint.replace("127.0.0.1", "localhost"));
    s.timeout = Duration::from_secs(10);
    let dest = S3Destination::new(s).unwrap();
    assert!(!sigterm_blocked_here());
    let me = gettid();
    dest.list().unwrap();
    let worker_tid = std::thread::scope(|sc| {
        sc.spawn(|| {
            for _ in 0..3 {
                dest.list().unwrap();
                assert!(dest.size("000000010000000000000001").unwrap().is_none());
            }
            assert!(!sigterm_blocked_here(), "caller's mask changed");
            gettid()
        })
        .join()
        .unwrap()
    });
    assert!(!sigterm_blocked_here(), "caller's mask changed");
    let pid = std::process::id() as i64;
    let term = 1u64 << (libc::SIGTERM - 1);
    let all = threads();
    eprintln!("threads (tid, name, SigBlk):");
    for t in &all {
        eprintln!("  {t:?}");
    }
    let ours = all.iter().filter(|t| t.1.starts_with(THREAD_NAME)).count();
    assert!(
        ours >= 3,
        "runtime workers and a blocking-pool thread expected"
    );
    for (tid, name, blk) in &all {
        if *tid == pid || *tid == me || *tid == worker_tid {
            continue;
        }
        assert_ne!(blk & term, 0, "thread {tid} {name} can receive SIGTERM");
    }
    drop(sw);
}
