//! Shared by the live tests: the store's settings for a prefix, test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

#[allow(unused_imports)]
pub use walarch_integration::seaweed::{dead_port, Seaweed, SIGCONT, SIGSTOP};
use walarch_s3::S3Settings;

/// A file of `len` bytes of a pattern that differs with `seed`.
pub fn make_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// A scratch directory, removed on drop (also when a test panics).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("s3proto-files-{}-{}", std::process::id(), tag));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Peak RSS (VmHWM) of this process, in KiB.
pub fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets VmHWM to the current RSS (Linux >= 4.0).
pub fn reset_vm_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The bytes stored under `name`, which must exist.
pub fn read_all(dest: &dyn walarch_core::destination::Destination, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut r = dest.open(name).unwrap().expect("object exists");
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Prints an error's parts, for reading the messages in the test output.
pub fn show(case: &str, e: &walarch_core::support::error::ArchiveError) {
    eprintln!(
        "=== {case}\n  kind: {:?}\n  message: {}\n  detail: {}\n  hint: {}",
        e.kind,
        e.message,
        e.detail.as_deref().unwrap_or("-"),
        e.hint.as_deref().unwrap_or("-")
    );
}

/// Settings of the store for keys under `prefix`.
pub fn settings(s3: &Seaweed, prefix: &str) -> S3Settings {
    let mut s = S3Settings::new(s3.bucket.clone());
    s.endpoint = Some(s3.endpoint.clone());
    s.prefix = prefix.to_string();
    s.access_key_id = Some(s3.access_key.clone());
    s.secret_access_key = Some(s3.secret_key.clone());
    s.timeout = Duration::from_secs(30);
    s.connect_timeout = Duration::from_secs(2);
    s
}
