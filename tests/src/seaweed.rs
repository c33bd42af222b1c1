//! A throwaway SeaweedFS S3 store (scripts/seaweed.sh): `weed mini`, or a
//! cluster of master, three volume servers, filer and S3 gateway, on 13
//! ports of its own, with one identity that every request must be signed
//! with, stopped and removed on drop (and by the script's watchdog if the
//! test process dies).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Cluster, InitOptions, Walarch};

pub const PORTS_PER_INSTANCE: u16 = 13;

pub struct Seaweed {
    pub dir: PathBuf,
    pub endpoint: String,
    pub https_endpoint: Option<String>,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    /// The process serving S3 (`weed mini`, or a cluster's gateway).
    pub pid: i32,
    /// A cluster's volume servers (empty for `weed mini`).
    pub volume_pids: Vec<i32>,
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

/// A base port whose 13 ports are free now and reserved for this process,
/// in 20000..25980: below the kernel's ephemeral ports (32768 up, which a
/// client connection may take while a stopped store's ports are free, so
/// that `restart` could not have them back) and the PostgreSQL test
/// clusters' (26000..26800). The reservation (a file naming this process)
/// keeps other tests off the ports while a store is stopped; `release_base`
/// ends it, and one left by a dead process is taken over.
fn free_base() -> u16 {
    let dir = Path::new("/tmp/walarch-seaweed-ports");
    let _ = std::fs::create_dir_all(dir);
    loop {
        let base = 20000 + (pseudo_random() % 460) as u16 * PORTS_PER_INSTANCE;
        let claim = dir.join(base.to_string());
        let taken = match std::fs::File::create_new(&claim) {
            Ok(_) => false,
            Err(_) => std::fs::read_to_string(&claim)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                // SAFETY: kill(2) with signal 0 only checks for a process.
                .is_none_or(|pid| unsafe { libc::kill(pid, 0) } == 0),
        };
        if taken {
            continue;
        }
        let _ = std::fs::write(&claim, std::process::id().to_string());
        if ports_free(base) {
            return base;
        }
        release_base(base);
    }
}

fn release_base(base: u16) {
    let _ = std::fs::remove_file(Path::new("/tmp/walarch-seaweed-ports").join(base.to_string()));
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

fn volume_pids(env: &HashMap<String, String>) -> Vec<i32> {
    env["VOLUME_PIDS"]
        .trim_matches('"')
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

impl Seaweed {
    /// Starts a `weed mini` of its own; stopped and purged on drop (and by
    /// seaweed.sh's watchdog if this process dies).
    pub fn start(tag: &str, tls: Option<(&Path, &Path)>) -> Seaweed {
        Self::start_topology(tag, tls, "mini", "")
    }

    /// `start`, with more identities besides the store's own: JSON
    /// objects of SeaweedFS's `-s3.config` (`{"name": ..., "credentials":
    /// [...], "actions": [...]}`), comma-separated.
    pub fn start_with_identities(tag: &str, identities: &str) -> Seaweed {
        Self::start_topology(tag, None, "mini", identities)
    }

    /// Starts a cluster of its own (replication 001 over three volume
    /// servers), like `start`.
    pub fn start_cluster(tag: &str) -> Seaweed {
        Self::start_topology(tag, None, "cluster", "")
    }

    fn start_topology(
        tag: &str,
        tls: Option<(&Path, &Path)>,
        topology: &str,
        identities: &str,
    ) -> Seaweed {
        let mut last = String::new();
        for _attempt in 0..5 {
            let base = free_base();
            let dir = std::env::temp_dir().join(format!(
                "walarch-s3-{}-{}-{}",
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
                .arg(topology)
                .env("S3_ACCESS_KEY", format!("walarch-{tag}"))
                .env("S3_SECRET_KEY", &secret)
                .env("S3_BUCKET", "wal")
                .env("S3_EXTRA_IDENTITIES", identities)
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
                release_base(base);
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
                volume_pids: volume_pids(&env),
                base_port: base,
                dir,
            };
        }
        panic!("could not start seaweedfs: {last}");
    }

    /// Starts this instance again, after a test killed it, on its data,
    /// ports and identity: what was stored before is there again.
    pub fn restart(&mut self) {
        assert!(self.https_endpoint.is_none(), "restart: not with TLS");
        let topology = if self.volume_pids.is_empty() {
            "mini"
        } else {
            "cluster"
        };
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&self.dir)
            .arg(self.base_port.to_string())
            .arg(topology)
            .env("S3_ACCESS_KEY", &self.access_key)
            .env("S3_SECRET_KEY", &self.secret_key)
            .env("S3_BUCKET", &self.bucket)
            .env("SEAWEED_PARENT_PID", std::process::id().to_string())
            .output()
            .expect("run seaweed.sh");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "restart: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("[restart] {}", stdout.trim());
        let env = parse_env(&std::fs::read_to_string(self.dir.join("env")).unwrap());
        self.pid = env["WEED_PID"].parse().unwrap();
        self.volume_pids = volume_pids(&env);
    }

    /// The instance shared by the tests of one test binary.
    pub fn shared() -> &'static Seaweed {
        static SHARED: OnceLock<Seaweed> = OnceLock::new();
        SHARED.get_or_init(|| Seaweed::start("shared", None))
    }

    /// Sends `sig` to the process serving S3.
    pub fn signal(&self, sig: i32) {
        signal(self.pid, sig);
    }
}

/// Sends `sig` to a weed process this test started.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill {sig} {pid}");
}

pub const SIGSTOP: i32 = libc::SIGSTOP;
pub const SIGCONT: i32 = libc::SIGCONT;
pub const SIGKILL: i32 = libc::SIGKILL;

impl Drop for Seaweed {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .arg("--purge")
            .status();
        release_base(self.base_port);
    }
}

impl Seaweed {
    /// postgresql.conf lines that archive with walarch_ext into `prefix`
    /// of this store (and not into a directory), with the credentials in
    /// `credentials` (see `write_credentials`).
    pub fn archive_conf(&self, prefix: &str, credentials: &Path) -> Vec<String> {
        vec![
            "walarch.archive_directory = ''".into(),
            format!("walarch.archive_destination = '{}'", self.url(prefix)),
            format!("walarch.s3_endpoint = '{}'", self.endpoint),
            format!("walarch.s3_credentials_file = '{}'", credentials.display()),
            "walarch.s3_request_timeout = '5s'".into(),
        ]
    }

    /// Writes an AWS shared-credentials file for the server's OS user, with
    /// `secret` (this store's own unless given).
    pub fn write_credentials(&self, path: &Path, secret: Option<&str>) {
        let text = format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            self.access_key,
            secret.unwrap_or(&self.secret_key)
        );
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        crate::sh(&format!("chmod 600 '{}'", tmp.display()));
        crate::chown_to_server(&tmp);
        std::fs::rename(&tmp, path).unwrap();
    }

    /// A started cluster archiving into `prefix` of this store, with the
    /// extension created.
    pub fn archiving_cluster(&self, name: &str, prefix: &str, extra: &[&str]) -> Cluster {
        self.archiving_cluster_with(name, prefix, &InitOptions::default(), extra)
    }

    /// `archiving_cluster`, initialised with `init`.
    pub fn archiving_cluster_with(
        &self,
        name: &str,
        prefix: &str,
        init: &InitOptions,
        extra: &[&str],
    ) -> Cluster {
        let mut c = Cluster::new(name);
        c.init_walarch(init);
        let credentials = c.root.join("s3-credentials");
        self.write_credentials(&credentials, None);
        c.append_conf(&self.archive_conf(prefix, &credentials));
        c.append_conf(extra);
        c.start();
        c.query("CREATE EXTENSION walarch_ext");
        c
    }

    /// The bucket recovery tests' primary: 1 MB segments archiving into
    /// `prefix`, with table `t(id int, note text)` for `setups::batch`.
    pub fn recovery_primary(&self, name: &str, prefix: &str) -> Cluster {
        let c = self.archiving_cluster_with(
            name,
            prefix,
            &InitOptions {
                wal_segsize_mb: Some(1),
                ..Default::default()
            },
            &["checkpoint_timeout = '1h'"],
        );
        c.query("CREATE TABLE t(id int, note text)");
        c
    }

    /// A cluster made from `primary`'s backup `backup` that recovers from
    /// `prefix` of this store with `walarch restore` (started by the caller,
    /// after its recovery target is set).
    pub fn restoring_cluster(
        &self,
        name: &str,
        primary: &Cluster,
        backup: &str,
        prefix: &str,
    ) -> Cluster {
        let mut r = Cluster::new(name);
        r.init_from_backup(
            primary,
            backup,
            &crate::FromBackupOptions {
                restore_command: Some(&self.restore_command(prefix)),
                ..Default::default()
            },
        );
        r
    }

    /// `walarch restore` fetches `walfile` from `prefix` into `c`'s root;
    /// its bytes must equal those of `reference`.
    pub fn assert_holds(&self, c: &Cluster, prefix: &str, walfile: &str, reference: &Path) {
        let dest = c.root.join(format!("fetched-{walfile}"));
        crate::chown_to_server(&c.root);
        let (code, _, err) = self.walarch(&[
            "restore",
            &self.url(prefix),
            walfile,
            dest.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "restore {walfile}: {err}");
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(reference).unwrap(),
            "{walfile}: the bucket's bytes differ from {}",
            reference.display()
        );
        std::fs::remove_file(&dest).unwrap();
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment the `walarch` command reads the store from.
    pub fn env(&self) -> [(&'static str, String); 3] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// A `restore_command` restoring from `prefix` of this store.
    pub fn restore_command(&self, prefix: &str) -> String {
        let env: Vec<String> = self.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} {} restore {} %f %p",
            env.join(" "),
            crate::walarch_bin().display(),
            self.url(prefix)
        )
    }

    /// A signed plain request with curl (the key passed on stdin, not on
    /// its command line): the body, or None on an HTTP error.
    fn curl(&self, args: &[&str]) -> Option<Vec<u8>> {
        use std::io::Write;
        let mut child = Command::new("curl")
            .args([
                "-sS",
                "--fail",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "-K",
                "-",
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run curl");
        let conf = format!("user = \"{}:{}\"\n", self.access_key, self.secret_key);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// The bytes of object `key` of the bucket; `None` when it is absent
    /// (or the request fails).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.curl(&[&format!("{}/{}/{key}", self.endpoint, self.bucket)])
    }

    /// The bytes of object `key` of the bucket.
    pub fn get_object(&self, key: &str) -> Vec<u8> {
        self.curl(&[&format!("{}/{}/{key}", self.endpoint, self.bucket)])
            .unwrap_or_else(|| panic!("GET {key} failed"))
    }

    /// Replaces object `key` behind the archive's back, with `headers`
    /// (e.g. its metadata): what rot in the store looks like to readers.
    pub fn overwrite_object(&self, key: &str, bytes: &[u8], headers: &[String]) {
        let f = self.dir.join("overwrite.tmp");
        std::fs::write(&f, bytes).unwrap();
        let mut args = vec!["-X".to_string(), "PUT".into(), "--data-binary".into()];
        args.push(format!("@{}", f.display()));
        args.extend(["-H".into(), "x-amz-content-sha256: UNSIGNED-PAYLOAD".into()]);
        for h in headers {
            args.extend(["-H".into(), h.clone()]);
        }
        args.push(format!("{}/{}/{key}", self.endpoint, self.bucket));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.curl(&args)
            .unwrap_or_else(|| panic!("PUT {key} failed"));
    }

    /// Runs `walarch` as the server's OS user against this store:
    /// (exit code, stdout, stderr).
    pub fn walarch(&self, args: &[&str]) -> (i32, String, String) {
        let out = crate::as_server_user(crate::walarch_bin())
            .args(args)
            .envs(self.env())
            .output()
            .expect("run walarch");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}
