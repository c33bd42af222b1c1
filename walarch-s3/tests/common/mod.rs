//! SeaweedFS instances for the tests, started through ../scripts/seaweed.sh.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use walarch_s3::S3Settings;

pub const PORTS_PER_INSTANCE: u16 = 13;

pub struct Seaweed {
    pub dir: PathBuf,
    pub endpoint: String,
    pub https_endpoint: Option<String>,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub pid: i32,
    pub base_port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/seaweed.sh")
}

fn pseudo_random() -> u64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let mut x = t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32);
    // xorshift
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

fn ports_free(base: u16) -> bool {
    (base..base + PORTS_PER_INSTANCE).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// A base port whose 13 ports are free now, in 20000..50000 (below the
/// ephemeral range 32768.. would be nicer, but that is only 12k ports:
/// collisions are retried by `start`).
fn free_base() -> u16 {
    loop {
        let base = 20000 + (pseudo_random() % 2300) as u16 * PORTS_PER_INSTANCE;
        if ports_free(base) {
            return base;
        }
    }
}

/// A port with nothing listening on it (bound once, then released).
pub fn dead_port() -> u16 {
    let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Seaweed {
    /// Starts an instance of its own; stopped and purged on drop (and by
    /// seaweed.sh's watchdog if this process dies).
    pub fn start(tag: &str, tls: Option<(&Path, &Path)>) -> Seaweed {
        let mut last = String::new();
        for _attempt in 0..5 {
            let base = free_base();
            let dir = std::env::temp_dir().join(format!(
                "s3proto-{}-{}-{}",
                tag,
                std::process::id(),
                base
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let secret = format!("{:016x}{:016x}", pseudo_random(), pseudo_random());
            let mut cmd = Command::new("bash");
            cmd.arg(script())
                .arg("start")
                .arg(&dir)
                .arg(base.to_string())
                .env("S3_ACCESS_KEY", format!("walarch-{tag}"))
                .env("S3_SECRET_KEY", &secret)
                .env("S3_BUCKET", "wal")
                .env("SEAWEED_PARENT_PID", std::process::id().to_string());
            if let Some((cert, key)) = tls {
                cmd.env("S3_TLS_CERT", cert).env("S3_TLS_KEY", key);
            }
            let out = cmd.output().expect("run seaweed.sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                last = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
                let _ = Command::new("bash")
                    .arg(script())
                    .args(["stop"])
                    .arg(&dir)
                    .arg("--purge")
                    .status();
                continue;
            }
            eprintln!("[{tag}] {}", stdout.trim());
            let env = parse_env(&std::fs::read_to_string(dir.join("env")).unwrap());
            return Seaweed {
                endpoint: env["S3_ENDPOINT"].clone(),
                https_endpoint: env
                    .get("S3_HTTPS_ENDPOINT")
                    .filter(|v| !v.is_empty())
                    .cloned(),
                bucket: env["S3_BUCKET"].clone(),
                access_key: env["S3_ACCESS_KEY"].clone(),
                secret_key: env["S3_SECRET_KEY"].clone(),
                pid: env["WEED_PID"].parse().unwrap(),
                base_port: base,
                dir,
            };
        }
        panic!("could not start seaweedfs: {last}");
    }

    /// The instance shared by the tests of one test binary.
    pub fn shared() -> &'static Seaweed {
        static SHARED: OnceLock<Seaweed> = OnceLock::new();
        SHARED.get_or_init(|| Seaweed::start("shared", None))
    }

    pub fn settings(&self, prefix: &str) -> S3Settings {
        let mut s = S3Settings::new(self.bucket.clone());
        s.endpoint = Some(self.endpoint.clone());
        s.prefix = prefix.to_string();
        s.access_key_id = Some(self.access_key.clone());
        s.secret_access_key = Some(self.secret_key.clone());
        s.timeout = Duration::from_secs(30);
        s.connect_timeout = Duration::from_secs(2);
        s
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of the weed process this test started.
        let rc = unsafe { libc::kill(self.pid, sig) };
        assert_eq!(rc, 0, "kill {} {}", sig, self.pid);
    }
}

pub const SIGSTOP: i32 = libc::SIGSTOP;
pub const SIGCONT: i32 = libc::SIGCONT;

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .arg("--purge")
            .status();
    }
}

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
