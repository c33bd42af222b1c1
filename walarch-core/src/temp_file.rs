//! Temporary files in the archive directory: how they are named, and the
//! sweep that removes those a crash left behind.
//!
//! A temporary name is `.walarch-tmp.<walfile>.<pid>.<unique>`: hidden from a
//! plain `ls`, never a valid WAL name (so nothing restores it by mistake), and
//! carrying the creating process's PID so that a sweep can tell a crash
//! leftover (its process is gone) from a copy in progress in a live process.

use std::path::{Path, PathBuf};

use crate::destination::Leftovers;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const TEMP_PREFIX: &str = ".walarch-tmp.";

/// Upper bound of what a temporary name adds to the WAL file name.
pub const MAX_DECORATION_LEN: usize = 64;

/// A leftover whose PID is alive (PID reuse after a crash) is still removed
/// once it is this old: no real copy of one WAL file takes a day.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path for archiving `walfile` into `dir`.
pub fn temp_path(dir: &Path, walfile: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{walfile}.{}.{:x}{:x}",
        std::process::id(),
        nanos as u64,
        n
    ))
}

/// The PID recorded in a temporary file name, if the name is one of ours.
pub fn temp_owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.rsplitn(3, '.');
    let _unique = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let _walfile = parts.next()?;
    Some(pid)
}

/// True when a process with this PID exists (signal 0).
pub fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes temporary files whose creating process is gone (or is this very
/// process, which at start-up has no copy in progress), or that are older
/// than [`STALE_AFTER`]. Makes the removals durable with a directory fsync.
pub fn sweep(dir: &Path) -> std::io::Result<Leftovers> {
    let me = std::process::id() as i32;
    let mut report = Leftovers::default();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = match entry.file_name().into_string() {
            Ok(n) => n,
            Err(_) => continue,
        };
        let Some(pid) = temp_owner_pid(&name) else {
            continue;
        };
        let stale = entry
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if pid == me || !process_alive(pid) || stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => report.removed.push(name),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report.failed.push((name, crate::error::os_message(&e))),
            }
        }
    }
    if !report.removed.is_empty() {
        crate::fsutil::fsync_dir(dir)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_never_wal_names() {
        let d = Path::new("/arch");
        let a = temp_path(d, "000000010000000000000001");
        let b = temp_path(d, "000000010000000000000001");
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(TEMP_PREFIX));
        assert_eq!(temp_owner_pid(name), Some(std::process::id() as i32));
        assert!(!crate::walname::is_archivable_name(name));
        assert!(name.len() - "000000010000000000000001".len() <= MAX_DECORATION_LEN);
        assert_eq!(temp_owner_pid("000000010000000000000001"), None);
        assert_eq!(temp_owner_pid(".walarch-tmp.x.notapid.1"), None);
    }

    #[test]
    fn sweep_removes_leftovers_of_dead_processes_only() {
        let d = tempfile::tempdir().unwrap();
        // A process that has exited: its PID is free (reuse within the test is
        // practically impossible).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_tmp = format!("{TEMP_PREFIX}000000010000000000000001.{dead}.abc");
        let mine = temp_path(d.path(), "000000010000000000000002");
        // PID 1 is always alive: a copy in progress elsewhere must survive.
        let live_tmp = format!("{TEMP_PREFIX}000000010000000000000003.1.abc");
        for n in [
            &dead_tmp,
            &live_tmp,
            "000000010000000000000001",
            "unrelated",
        ] {
            std::fs::write(d.path().join(n), b"x").unwrap();
        }
        std::fs::write(&mine, b"x").unwrap();

        let mut r = sweep(d.path()).unwrap();
        r.removed.sort();
        let mut expect = vec![
            dead_tmp.clone(),
            mine.file_name().unwrap().to_str().unwrap().to_string(),
        ];
        expect.sort();
        assert_eq!(r.removed, expect);
        assert!(d.path().join(&live_tmp).exists());
        assert!(d.path().join("000000010000000000000001").exists());
        assert!(d.path().join("unrelated").exists());
    }
}
