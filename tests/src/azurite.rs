//! A throwaway Azurite (Azure Blob Storage) of its own, started by
//! scripts/azurite.sh on a free loopback port with a container `wal`, and
//! stopped and removed on drop (and by the script's watchdog if the test
//! process dies). The account is Azurite's published development account.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Cluster, Walarch};

/// Azurite's development account and key (published by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    pub dir: PathBuf,
    pub port: u16,
    /// The account's blob service URL.
    pub endpoint: String,
    pub container: String,
    pub pid: i32,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/azurite.sh")
}

impl Azurite {
    pub fn start(tag: &str) -> Azurite {
        let mut last = String::new();
        for _attempt in 0..3 {
            // A port free now; another process may take it before Azurite
            // binds it: then try another.
            let port = TcpListener::bind(("127.0.0.1", 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = std::env::temp_dir().join(format!(
                "walarch-azurite-{tag}-{}-{port}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            let out = Command::new("bash")
                .arg(script())
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .env("AZURITE_PARENT_PID", std::process::id().to_string())
                .output()
                .expect("run azurite.sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                last = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
                let _ = Command::new("bash")
                    .arg(script())
                    .arg("stop")
                    .arg(&dir)
                    .status();
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            eprintln!("[{tag}] {}", stdout.trim());
            let pid = std::fs::read_to_string(dir.join("pid"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            return Azurite {
                endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
                container: "wal".into(),
                port,
                pid,
                dir,
            };
        }
        panic!("could not start azurite: {last}");
    }

    /// The instance shared by the tests of one test binary (stopped by the
    /// script's watchdog when the process exits).
    pub fn shared() -> &'static Azurite {
        static SHARED: std::sync::OnceLock<Azurite> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Azurite::start("shared"))
    }

    /// Stops it (the data stays until drop): the store is then unreachable.
    pub fn stop(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }

    /// Replaces blob `name` of the container behind the archive's back,
    /// without metadata: what rot looks like to readers. Returns the HTTP
    /// status.
    pub fn overwrite_blob(&self, name: &str, bytes: &[u8]) -> String {
        let f = self.dir.join("overwrite.tmp");
        std::fs::write(&f, bytes).unwrap();
        let out = Command::new("bash")
            .arg(script())
            .args(["request", &self.port.to_string(), "PUT"])
            .arg(format!("/{}/{name}", self.container))
            .arg(&f)
            .output()
            .expect("run azurite.sh");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// An account SAS token for the blob service (read, add, create,
    /// write, delete, list), signed with the development key.
    pub fn sas_token(&self) -> String {
        let out = Command::new("bash")
            .arg(script())
            .arg("sas")
            .output()
            .expect("run azurite.sh");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn url(&self, prefix: &str) -> String {
        format!("az://{}/{prefix}", self.container)
    }

    /// Writes the account key into `path`, private to the server's OS user.
    pub fn write_key_file(&self, path: &Path) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{KEY}\n")).unwrap();
        crate::sh(&format!("chmod 600 '{}'", tmp.display()));
        crate::chown_to_server(&tmp);
        std::fs::rename(&tmp, path).unwrap();
    }

    /// postgresql.conf lines that archive into `prefix` of the container.
    pub fn archive_conf(&self, prefix: &str, key_file: &Path) -> Vec<String> {
        vec![
            "walarch.archive_directory = ''".into(),
            format!("walarch.archive_destination = '{}'", self.url(prefix)),
            format!("walarch.azure_account = '{ACCOUNT}'"),
            format!("walarch.azure_endpoint = '{}'", self.endpoint),
            format!("walarch.azure_key_file = '{}'", key_file.display()),
            "walarch.s3_request_timeout = '5s'".into(),
        ]
    }

    /// The `walarch` options that reach this store, with `key_file`.
    pub fn cli_options(&self, key_file: &Path) -> Vec<String> {
        vec![
            "--azure-account".into(),
            ACCOUNT.into(),
            "--endpoint".into(),
            self.endpoint.clone(),
            "--azure-key-file".into(),
            key_file.display().to_string(),
        ]
    }

    /// Runs `walarch` as the server's OS user: (exit code, stdout, stderr).
    pub fn walarch(&self, args: &[&str], key_file: &Path) -> (i32, String, String) {
        let out = crate::as_server_user(crate::walarch_bin())
            .args(args)
            .args(self.cli_options(key_file))
            .output()
            .expect("run walarch");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// A `restore_command` restoring from `prefix` of this store.
    pub fn restore_command(&self, prefix: &str, key_file: &Path) -> String {
        format!(
            "{} restore {} %f %p {}",
            crate::walarch_bin().display(),
            self.url(prefix),
            self.cli_options(key_file).join(" ")
        )
    }

    /// A started cluster archiving into `prefix` of this store (1 MB
    /// segments), with the extension created; the key file in its root.
    pub fn archiving_cluster(&self, name: &str, prefix: &str) -> (Cluster, PathBuf) {
        let mut c = Cluster::new(name);
        c.init_walarch(&crate::InitOptions {
            wal_segsize_mb: Some(1),
            ..Default::default()
        });
        let key = c.root.join("azure-key");
        self.write_key_file(&key);
        c.append_conf(&self.archive_conf(prefix, &key));
        c.append_conf(&["checkpoint_timeout = '1h'"]);
        c.start();
        c.query("CREATE EXTENSION walarch_ext");
        (c, key)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
