//! The test environment: which PostgreSQL build, which OS user runs it, and
//! small process and polling helpers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const SERVER_USER: &str = "postgres";

/// The PostgreSQL major version under test (`WALARCH_TEST_PG`, default 15).
pub fn pg_major() -> u32 {
    std::env::var("WALARCH_TEST_PG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// Whether a slow test whose PostgreSQL side is the same on every version
/// is skipped on this one. It runs on 15 and 18: what differs between
/// versions here is the archive-module ABI (15's, and 16's onwards), and
/// the fast tests cover 16 and 17.
pub fn skipped_between_15_and_18() -> bool {
    let skip = !matches!(pg_major(), 15 | 18);
    if skip {
        eprintln!(
            "skipped on PostgreSQL {}: run on 15 and 18 only",
            pg_major()
        );
    }
    skip
}

/// The server binaries: Debian's build for 15, the cached relocatable builds
/// (scripts/setup.sh) otherwise.
pub fn bindir() -> PathBuf {
    if let Ok(b) = std::env::var("WALARCH_TEST_PG_BINDIR") {
        return PathBuf::from(b);
    }
    match pg_major() {
        15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
        v => {
            let cache =
                std::env::var("WALARCH_CACHE").unwrap_or_else(|_| "/var/cache/walarch".into());
            PathBuf::from(format!("{cache}/pg{v}/bin"))
        }
    }
}

/// Where clusters live (`WALARCH_TEST_ROOT`, default `/tmp/walarch-it`).
pub fn test_root() -> String {
    std::env::var("WALARCH_TEST_ROOT").unwrap_or_else(|_| "/tmp/walarch-it".into())
}

pub fn is_root() -> bool {
    // SAFETY: trivial libc call.
    unsafe { libc::geteuid() == 0 }
}

/// A command run as the server's OS user.
pub fn as_server_user(program: impl AsRef<Path>) -> Command {
    let program = program.as_ref();
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs a command as root (the tests' own user), panicking on failure.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("spawn sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, panicking with its output when it fails.
pub(crate) fn run_ok(c: &mut Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Hands a path (recursively) to the server's OS user.
pub fn chown_to_server(path: &Path) {
    if is_root() {
        sh(&format!("chown -R {SERVER_USER}: '{}'", path.display()));
    }
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `s` as a postgresql.conf string value.
pub fn quoted(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', "''"))
}

/// A tmpfs mounted (as root) for the lifetime of the value.
pub struct TmpfsMount {
    pub path: PathBuf,
}

impl TmpfsMount {
    pub fn new(path: &Path, size: &str) -> TmpfsMount {
        assert!(is_root(), "mounting a tmpfs needs root");
        sh(&format!(
            "mount -t tmpfs -o size={size},mode=0700 walarch-test '{}'",
            path.display()
        ));
        chown_to_server(path);
        TmpfsMount {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
