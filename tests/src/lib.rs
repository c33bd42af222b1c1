//! A hand-started PostgreSQL cluster for integration tests.
//!
//! The tests run as root (CI does); the server runs as the `postgres` OS user
//! (`runuser`), on a private Unix socket with TCP off, in a directory of its
//! own under `WALARCH_TEST_ROOT` (default `/tmp/walarch-it`). The PostgreSQL
//! major version comes from `WALARCH_TEST_PG` (default 15): Debian's build for
//! 15, the cached relocatable builds (scripts/setup.sh) for 16–18. The
//! extension must already be installed into that build (scripts/test.sh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const SERVER_USER: &str = "postgres";

/// Prefix of walarch_ext's temporary files in the archive directory.
pub const TEMP_PREFIX: &str = ".walarch-tmp.";

pub fn pg_major() -> u32 {
    std::env::var("WALARCH_TEST_PG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

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

fn is_root() -> bool {
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

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct Cluster {
    pub name: String,
    /// Everything of this cluster lives below here; removed on drop.
    pub root: PathBuf,
    pub data: PathBuf,
    pub sockdir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    running: bool,
}

#[derive(Default)]
pub struct InitOptions<'a> {
    /// `initdb --wal-segsize` in MB (default 16).
    pub wal_segsize_mb: Option<u32>,
    /// Extra postgresql.conf lines.
    pub conf: &'a [&'a str],
}

impl Cluster {
    /// initdb + our settings, not started. `archive_library` and
    /// `shared_preload_libraries` are walarch_ext; the archive directory is
    /// `<root>/archive` unless `conf` says otherwise.
    pub fn init(name: &str, opts: InitOptions) -> Cluster {
        assert!(
            is_root() || std::env::var("USER").as_deref() == Ok(SERVER_USER),
            "integration tests run as root (or as {SERVER_USER})"
        );
        let base = std::env::var("WALARCH_TEST_ROOT").unwrap_or_else(|_| "/tmp/walarch-it".into());
        let root = PathBuf::from(format!("{base}/pg{}-{name}", pg_major()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(root.join("archive")).unwrap();
        fs::create_dir_all(root.join("sock")).unwrap();
        if is_root() {
            sh(&format!("chmod 755 '{base}'"));
        }
        chown_to_server(&root);

        let port =
            26000 + (pg_major() as u16 - 15) * 200 + NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let c = Cluster {
            name: name.into(),
            data: root.join("data"),
            sockdir: root.join("sock"),
            log: root.join("server.log"),
            root,
            port,
            running: false,
        };
        let mut initdb = as_server_user(bindir().join("initdb"));
        initdb.args(["-D"]).arg(&c.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        run_ok(&mut initdb, "initdb");
        let mut conf = vec![
            "listen_addresses = ''".to_string(),
            format!("port = {}", c.port),
            format!("unix_socket_directories = '{}'", c.sockdir.display()),
            "shared_preload_libraries = 'walarch_ext'".into(),
            "wal_level = replica".into(),
            "archive_mode = on".into(),
            "archive_library = 'walarch_ext'".into(),
            format!(
                "walarch.archive_directory = '{}'",
                c.archive_dir().display()
            ),
            "fsync = on".into(),
            "max_wal_size = '1GB'".into(),
            "log_line_prefix = '%m [%p] %b '".into(),
        ];
        conf.extend(opts.conf.iter().map(|s| s.to_string()));
        let path = c.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("\n# walarch integration test\n");
        for l in conf {
            text.push_str(&l);
            text.push('\n');
        }
        fs::write(&path, text).unwrap();
        c
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.root.join("archive")
    }

    pub fn start(&mut self) {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]);
        let out = c.output().unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        self.running = true;
    }

    pub fn stop(&mut self) {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", "fast", "stop"]);
        run_ok(&mut c, "pg_ctl stop");
        self.running = false;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Runs SQL through psql; Ok(stdout) or Err(stderr).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let mut c = as_server_user(bindir().join("psql"));
        c.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sockdir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ]);
        let out: Output = c.output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs SQL that must succeed; returns its trimmed output.
    pub fn query(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
    }

    pub fn server_version_num(&self) -> u32 {
        self.query("SHOW server_version_num").parse().unwrap()
    }

    /// Writes some WAL and switches; returns the name of the completed file.
    pub fn switch_wal(&self) -> String {
        self.query(
            "CREATE TABLE IF NOT EXISTS walarch_load(x int); \
             INSERT INTO walarch_load SELECT generate_series(1, 100)",
        );
        self.query("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// The WAL file currently being written (the next one a switch completes).
    pub fn current_walfile(&self) -> String {
        self.query("SELECT pg_walfile_name(pg_current_wal_lsn())")
    }

    pub fn archiver_pid(&self) -> Option<i32> {
        self.query("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
            .parse()
            .ok()
    }

    pub fn failed_count(&self) -> i64 {
        self.query("SELECT failed_count FROM pg_stat_archiver")
            .parse()
            .unwrap()
    }

    pub fn archived_count(&self) -> i64 {
        self.query("SELECT archived_count FROM pg_stat_archiver")
            .parse()
            .unwrap()
    }

    pub fn status_file(&self, walfile: &str, suffix: &str) -> PathBuf {
        self.data
            .join(format!("pg_wal/archive_status/{walfile}.{suffix}"))
    }

    /// Waits until the archiver has marked `walfile` done (our callback
    /// returned true for it).
    pub fn wait_done(&self, walfile: &str, timeout: Duration) {
        let done = self.status_file(walfile, "done");
        wait_until(&format!("{walfile}.done"), timeout, || done.exists());
    }

    /// WAL files with a `.ready` status file, sorted by name: what the
    /// archiver still has to archive, read straight from archive_status.
    pub fn ready_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.data.join("pg_wal/archive_status"))
            .unwrap()
            .filter_map(|e| {
                e.unwrap()
                    .file_name()
                    .into_string()
                    .unwrap()
                    .strip_suffix(".ready")
                    .map(str::to_owned)
            })
            .collect();
        v.sort();
        v
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the server log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_until(&format!("log line {needle:?}"), timeout, || {
            self.log_text().contains(needle)
        });
    }

    /// Names in the archive directory, sorted (temporary files included).
    pub fn archive_listing(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.archive_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// Temporary files in the archive directory.
    pub fn archive_temp_files(&self) -> Vec<String> {
        self.archive_listing()
            .into_iter()
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    /// WAL files in the archive: neither checksum sidecars nor temporaries.
    pub fn archived_wal_files(&self) -> Vec<String> {
        self.archive_listing()
            .into_iter()
            .filter(|n| !n.starts_with(TEMP_PREFIX) && !n.ends_with(".sha256"))
            .collect()
    }

    /// Asserts `archive/walfile` equals `pg_wal/walfile` byte for byte.
    pub fn assert_archived_identical(&self, walfile: &str) {
        let archived = fs::read(self.archive_dir().join(walfile))
            .unwrap_or_else(|e| panic!("{walfile} is not in the archive: {e}"));
        let source = fs::read(self.data.join("pg_wal").join(walfile)).unwrap();
        assert_eq!(archived.len(), source.len(), "{walfile}: size differs");
        assert!(
            archived == source,
            "{walfile}: archived bytes differ from pg_wal"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let mut c = as_server_user(bindir().join("pg_ctl"));
            c.arg("-D")
                .arg(&self.data)
                .args(["-w", "-m", "immediate", "stop"]);
            let _ = c.output();
        }
        // Keep the directory of a failed test for inspection (or of every
        // test with WALARCH_TEST_KEEP set).
        if !std::thread::panicking() && std::env::var_os("WALARCH_TEST_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        } else {
            eprintln!(
                "cluster {} kept at {} (log: {})",
                self.name,
                self.root.display(),
                self.log.display()
            );
            eprintln!("--- last server log lines ---");
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{l}");
            }
        }
    }
}

fn run_ok(c: &mut Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// A streaming standby of `primary` (pg_basebackup -R), archiving into
    /// its own directory with walarch_ext. Not started.
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        // Reuse init() for the directories, port and settings, then replace
        // its data directory with the base backup.
        let c = Cluster::init(name, InitOptions::default());
        let conf = fs::read_to_string(c.data.join("postgresql.conf")).unwrap();
        let ours = conf
            .split("# walarch integration test\n")
            .nth(1)
            .unwrap()
            .to_string();
        fs::remove_dir_all(&c.data).unwrap();
        let mut bb = as_server_user(bindir().join("pg_basebackup"));
        // A slot keeps the primary's WAL until the standby has it.
        bb.arg("-D")
            .arg(&c.data)
            .args([
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                "walarch_standby",
                "--no-sync",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&primary.sockdir)
            .args(["-p", &primary.port.to_string()]);
        run_ok(&mut bb, "pg_basebackup");
        // A minimal primary_conninfo: the relocatable 16+ builds' pg_basebackup
        // writes options (sslcertmode) that the walreceiver's libpq, Debian's
        // libpq 15 found first on the library path, rejects.
        let auto = c.data.join("postgresql.auto.conf");
        let mut kept: String = fs::read_to_string(&auto)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("primary_conninfo"))
            .map(|l| format!("{l}\n"))
            .collect();
        kept.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres'\n",
            primary.sockdir.display(),
            primary.port
        ));
        fs::write(&auto, kept).unwrap();
        // Later lines win: the standby's own port, socket and archive.
        let mut text = fs::read_to_string(c.data.join("postgresql.conf")).unwrap();
        text.push_str("\n# walarch integration test (standby)\n");
        text.push_str(&ours);
        fs::write(c.data.join("postgresql.conf"), text).unwrap();
        c
    }

    pub fn promote(&self) {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(["-w", "promote"]);
        run_ok(&mut c, "pg_ctl promote");
    }
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

impl Cluster {
    /// One column of `walarch_stats()`, as text ("" for NULL). The extension
    /// must exist (`CREATE EXTENSION walarch_ext`).
    pub fn stat(&self, col: &str) -> String {
        self.query(&format!("SELECT {col} FROM walarch_stats()"))
    }

    pub fn stat_i64(&self, col: &str) -> i64 {
        let v = self.stat(col);
        v.parse().unwrap_or_else(|_| panic!("{col} = {v:?}"))
    }

    /// Writes some WAL and switches `n` times without waiting; returns the
    /// completed files in order.
    pub fn switch_many(&self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.switch_wal()).collect()
    }

    /// Waits until nothing is left to archive.
    ///
    /// After a crash restart the postmaster refuses to restart the archiver
    /// within 10 s of its previous start (PgArchCanRestart) and retries only
    /// on its next server-loop pass, up to 60 s later unless something wakes
    /// it. A connection about once a second wakes it, as client traffic does
    /// on a live server, so the wait is bounded by the 10 s rule.
    pub fn wait_drained(&self, timeout: Duration) {
        let status = self.data.join("pg_wal/archive_status");
        let mut polls = 0u32;
        wait_until("no .ready file left", timeout, || {
            polls += 1;
            if polls % 10 == 0 {
                let _ = self.psql("SELECT 1");
            }
            fs::read_dir(&status)
                .unwrap()
                .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".ready"))
        });
    }

    /// Copies completed WAL files out of pg_wal, for comparisons after the
    /// originals may have been recycled (crash recovery, checkpoints).
    pub fn keep_reference_copies(&self, files: &[String]) -> PathBuf {
        let dir = self.root.join("reference");
        fs::create_dir_all(&dir).unwrap();
        for f in files {
            fs::copy(self.data.join("pg_wal").join(f), dir.join(f)).unwrap();
        }
        dir
    }

    /// Asserts `archive/walfile` equals `reference/walfile`.
    pub fn assert_archived_equals(&self, walfile: &str, reference: &Path) {
        let archived = fs::read(self.archive_dir().join(walfile))
            .unwrap_or_else(|e| panic!("{walfile} is not in the archive: {e}"));
        assert!(
            archived == fs::read(reference.join(walfile)).unwrap(),
            "{walfile}: archived bytes differ"
        );
    }

    /// Sends a signal to a process (as root).
    pub fn kill(&self, pid: i32, signal: &str) {
        sh(&format!("kill -{signal} {pid}"));
    }

    pub fn postmaster_pid(&self) -> i32 {
        fs::read_to_string(self.data.join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the server accepts queries again (after a crash restart).
    pub fn wait_ready(&self, timeout: Duration) {
        wait_until("server accepting queries", timeout, || {
            self.psql("SELECT 1").is_ok()
        });
    }
}

/// The `walarch` binary (scripts/test.sh installs it).
pub fn walarch_bin() -> PathBuf {
    PathBuf::from(std::env::var("WALARCH_BIN").unwrap_or_else(|_| "/usr/local/bin/walarch".into()))
}

/// Runs `walarch` as the server's OS user: (exit code, stdout, stderr).
pub fn walarch(args: &[&str]) -> (i32, String, String) {
    let out = as_server_user(walarch_bin())
        .args(args)
        .output()
        .expect("run walarch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Cluster {
    /// A base backup without WAL (`-X none`): recovery needs the archive.
    pub fn base_backup(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        let mut bb = as_server_user(bindir().join("pg_basebackup"));
        bb.arg("-D")
            .arg(&dir)
            .args([
                "-X",
                "none",
                "--no-sync",
                "-c",
                "fast",
                "-U",
                "postgres",
                "-h",
            ])
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string()]);
        run_ok(&mut bb, "pg_basebackup");
        dir
    }

    /// A cluster recovering from `backup` with `restore_command` = walarch
    /// restore from `archive`, plus `recovery` settings; it archives (on its
    /// new timeline) into `archive_into` (its own directory by default).
    /// Not started.
    pub fn from_backup(
        name: &str,
        backup: &Path,
        archive: &Path,
        recovery: &[&str],
        archive_into: Option<&Path>,
    ) -> Cluster {
        let c = Cluster::init(name, InitOptions::default());
        let conf = fs::read_to_string(c.data.join("postgresql.conf")).unwrap();
        let ours = conf
            .split("# walarch integration test\n")
            .nth(1)
            .unwrap()
            .to_string();
        fs::remove_dir_all(&c.data).unwrap();
        sh(&format!(
            "cp -a '{}' '{}'",
            backup.display(),
            c.data.display()
        ));
        chown_to_server(&c.data);
        let mut text = fs::read_to_string(c.data.join("postgresql.conf")).unwrap();
        text.push_str("\n# walarch integration test (recovery)\n");
        text.push_str(&ours);
        if let Some(dir) = archive_into {
            text.push_str(&format!(
                "walarch.archive_directory = '{}'\n",
                dir.display()
            ));
        }
        text.push_str(&format!(
            "restore_command = '{} restore {} %f %p'\n",
            walarch_bin().display(),
            archive.display()
        ));
        for l in recovery {
            text.push_str(l);
            text.push('\n');
        }
        fs::write(c.data.join("postgresql.conf"), text).unwrap();
        fs::write(c.data.join("recovery.signal"), "").unwrap();
        chown_to_server(&c.data);
        c
    }

    /// Starts a recovering cluster and waits until recovery has ended and it
    /// accepts writes (promoted).
    pub fn start_and_wait_promoted(&mut self, timeout: Duration) {
        self.start();
        wait_until("end of recovery", timeout, || {
            self.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
        });
    }
}
