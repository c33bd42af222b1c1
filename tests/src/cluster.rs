//! A PostgreSQL cluster for tests, after PostgreSQL's Perl
//! `PostgreSQL::Test::Cluster`: `new` picks the directories and a port,
//! `init` or `init_from_backup` makes the data directory, and settings are
//! postgresql.conf lines (`append_conf`, `adjust_conf`). It knows nothing of
//! walarch_ext; walarch.rs adds that.
//!
//! The server runs as the `postgres` OS user on a private Unix socket with
//! TCP off. On drop it is stopped (immediate) and its directory removed,
//! unless the test panicked or `WALARCH_TEST_KEEP` is set.

use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use crate::util::{
    as_server_user, bindir, chown_to_server, is_root, pg_major, quoted, run_ok, sh, test_root,
    wait_until, SERVER_USER,
};

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

#[derive(Clone, Copy, Default)]
pub struct InitOptions {
    /// `initdb --wal-segsize` in MB (default 16).
    pub wal_segsize_mb: Option<u32>,
    /// wal_level = replica, which streaming and archiving need; otherwise
    /// minimal, as in the Perl Cluster.
    pub allows_streaming: bool,
}

/// pg_basebackup's `-X`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub enum WalMethod {
    /// No WAL in the backup: recovery takes all of it from an archive.
    None,
    #[default]
    Stream,
}

/// `Default` is pg_basebackup's own defaults.
#[derive(Clone, Copy, Default)]
pub struct BackupOptions<'a> {
    pub wal: WalMethod,
    /// `-c fast` instead of a spread checkpoint.
    pub checkpoint_fast: bool,
    /// `-C -S`: a slot on the source, so it keeps WAL until a standby has it.
    pub create_slot: Option<&'a str>,
}

impl BackupOptions<'_> {
    /// `-X none -c fast`: a backup whose recovery needs the archive.
    pub fn without_wal() -> Self {
        BackupOptions {
            wal: WalMethod::None,
            checkpoint_fast: true,
            create_slot: None,
        }
    }
}

#[derive(Clone, Copy, Default)]
pub struct FromBackupOptions<'a> {
    /// A standby streaming from the root node (primary_conninfo,
    /// standby.signal), as Perl's `has_streaming`.
    pub has_streaming: bool,
    /// The root node's slot to stream from.
    pub primary_slot_name: Option<&'a str>,
    /// Recovery from an archive with this restore_command (recovery.signal,
    /// or standby.signal with `has_streaming`), as Perl's `has_restoring`.
    pub restore_command: Option<&'a str>,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
/// Each major version has its own range, so runs for several versions in
/// parallel do not pick the same ports.
const PORTS_PER_MAJOR: u16 = 200;

/// A port nothing listens on over TCP and with no socket in `sockdir`, the
/// checks of the Perl Cluster's get_free_port.
fn free_port(sockdir: &std::path::Path) -> u16 {
    let base = 26000 + (pg_major() as u16 - 15) * PORTS_PER_MAJOR;
    for _ in 0..PORTS_PER_MAJOR {
        let port = base + NEXT_PORT.fetch_add(1, Ordering::SeqCst) % PORTS_PER_MAJOR;
        let socket = sockdir.join(format!(".s.PGSQL.{port}"));
        if !socket.exists() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + PORTS_PER_MAJOR);
}

impl Cluster {
    /// Directories (a fresh `<WALARCH_TEST_ROOT>/pgNN-<name>`) and a free
    /// port; no data directory yet.
    pub fn new(name: &str) -> Cluster {
        assert!(
            is_root() || std::env::var("USER").as_deref() == Ok(SERVER_USER),
            "integration tests run as root (or as {SERVER_USER})"
        );
        let base = test_root();
        let root = PathBuf::from(format!("{base}/pg{}-{name}", pg_major()));
        let _ = fs::remove_dir_all(&root);
        let sockdir = root.join("sock");
        fs::create_dir_all(&sockdir).unwrap();
        if is_root() {
            sh(&format!("chmod 755 '{base}'"));
        }
        chown_to_server(&root);
        Cluster {
            name: name.into(),
            data: root.join("data"),
            log: root.join("server.log"),
            port: free_port(&sockdir),
            sockdir,
            root,
            running: false,
        }
    }

    /// The node's own connection settings; later lines win over a backup's.
    fn own_settings(&self) -> Vec<String> {
        vec![
            "listen_addresses = ''".into(),
            format!("port = {}", self.port),
            format!(
                "unix_socket_directories = {}",
                quoted(self.sockdir.display().to_string())
            ),
        ]
    }

    /// initdb and the base settings; not started.
    pub fn init(&mut self, opts: &InitOptions) {
        let mut initdb = as_server_user(bindir().join("initdb"));
        initdb.args(["-D"]).arg(&self.data).args([
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
        let mut conf = self.own_settings();
        // Production's durability and checkpoint spacing, not the faster
        // settings of PostgreSQL's own test clusters; the prefix names the
        // process of every log line.
        conf.extend([
            "fsync = on".into(),
            "max_wal_size = '1GB'".into(),
            "log_line_prefix = '%m [%p] %b '".into(),
        ]);
        // max_wal_senders, max_replication_slots and hot_standby default to
        // allowing streaming already.
        if opts.allows_streaming {
            conf.push("wal_level = replica".into());
        } else {
            conf.extend(["wal_level = minimal".into(), "max_wal_senders = 0".into()]);
        }
        self.append_conf(&conf);
    }

    /// Where `backup` puts base backups.
    pub fn backup_dir(&self) -> PathBuf {
        self.root.join("backups")
    }

    /// pg_basebackup of the running server into `<root>/backups/<name>`.
    pub fn backup(&self, name: &str, opts: &BackupOptions) -> PathBuf {
        fs::create_dir_all(self.backup_dir()).unwrap();
        chown_to_server(&self.backup_dir());
        let dir = self.backup_dir().join(name);
        let mut bb = as_server_user(bindir().join("pg_basebackup"));
        bb.arg("-D").arg(&dir).args([
            "-X",
            match opts.wal {
                WalMethod::None => "none",
                WalMethod::Stream => "stream",
            },
        ]);
        if opts.checkpoint_fast {
            bb.args(["-c", "fast"]);
        }
        if let Some(slot) = opts.create_slot {
            bb.args(["-C", "-S", slot]);
        }
        bb.args(["--no-sync", "-U", "postgres", "-h"])
            .arg(&self.sockdir)
            .args(["-p", &self.port.to_string()]);
        run_ok(&mut bb, "pg_basebackup");
        dir
    }

    /// The data directory as a copy of `root_node`'s backup `backup_name`,
    /// with this node's own port and socket; not started.
    pub fn init_from_backup(
        &mut self,
        root_node: &Cluster,
        backup_name: &str,
        opts: &FromBackupOptions,
    ) {
        let backup = root_node.backup_dir().join(backup_name);
        assert!(backup.is_dir(), "no backup {}", backup.display());
        assert!(!self.data.exists(), "{} is initialised already", self.name);
        sh(&format!(
            "cp -a '{}' '{}'",
            backup.display(),
            self.data.display()
        ));
        let mut conf = self.own_settings();
        if opts.has_streaming {
            // A minimal primary_conninfo rather than pg_basebackup -R's: the
            // relocatable 16+ builds' pg_basebackup writes options
            // (sslcertmode) that the walreceiver's libpq, Debian's libpq 15
            // found first on the library path, rejects.
            conf.push(format!(
                "primary_conninfo = 'host={} port={} user=postgres'",
                root_node.sockdir.display(),
                root_node.port
            ));
            if let Some(slot) = opts.primary_slot_name {
                conf.push(format!("primary_slot_name = {}", quoted(slot)));
            }
        }
        if let Some(cmd) = opts.restore_command {
            conf.push(format!("restore_command = {}", quoted(cmd)));
        }
        self.append_conf(&conf);
        if opts.has_streaming {
            fs::write(self.data.join("standby.signal"), "").unwrap();
        } else if opts.restore_command.is_some() {
            fs::write(self.data.join("recovery.signal"), "").unwrap();
        }
        chown_to_server(&self.data);
    }

    /// Appends lines to postgresql.conf (later lines win).
    pub fn append_conf(&self, lines: &[impl AsRef<str>]) {
        let path = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).unwrap();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for l in lines {
            text.push_str(l.as_ref());
            text.push('\n');
        }
        // Rewritten in place, so the file keeps its owner.
        fs::write(&path, text).unwrap();
    }

    /// Sets `param` to `value` (as written, quotes included) in
    /// postgresql.conf: earlier lines setting it are removed, as the Perl
    /// Cluster's adjust_conf does.
    pub fn adjust_conf(&self, param: &str, value: &str) {
        let path = self.data.join("postgresql.conf");
        let mut text: String = fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|l| {
                l.strip_prefix(param)
                    .is_none_or(|rest| rest.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!("{param} = {value}\n"));
        fs::write(&path, text).unwrap();
    }

    fn pg_ctl_start(&self, wait_secs: u32) -> std::io::Result<Output> {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D").arg(&self.data).arg("-l").arg(&self.log).args([
            "-w",
            "-t",
            &wait_secs.to_string(),
            "start",
        ]);
        c.output()
    }

    pub fn start(&mut self) {
        let out = self.pg_ctl_start(60).unwrap();
        if !out.status.success() {
            panic!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_text()
            );
        }
        self.running = true;
    }

    /// Tries to start, waiting at most `wait_secs`; whether it started (the
    /// Perl Cluster's `start(fail_ok => 1)`).
    pub fn try_start(&mut self, wait_secs: u32) -> bool {
        let ok = self
            .pg_ctl_start(wait_secs)
            .is_ok_and(|o| o.status.success());
        self.running |= ok;
        ok
    }

    /// A fast shutdown.
    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// A shutdown in `mode` (smart, fast, immediate).
    pub fn stop_mode(&mut self, mode: &str) {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "-m", mode, "stop"]);
        run_ok(&mut c, "pg_ctl stop");
        self.running = false;
    }

    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn promote(&self) {
        let mut c = as_server_user(bindir().join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(["-w", "promote"]);
        run_ok(&mut c, "pg_ctl promote");
    }

    /// Starts a recovering cluster and waits until recovery has ended and it
    /// accepts writes (promoted).
    pub fn start_and_wait_promoted(&mut self, timeout: Duration) {
        self.start();
        wait_until("end of recovery", timeout, || {
            self.psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f")
        });
    }

    /// Starts a recovering cluster that is expected to stop recovery rather
    /// than open: waits until its postmaster has exited, and asserts that it
    /// never ended recovery (no new timeline, never read-write). Returns the
    /// server log.
    pub fn start_expecting_recovery_to_stop(&mut self, timeout: Duration) -> String {
        // With hot_standby, pg_ctl may see the server up (read-only) before
        // recovery fails.
        self.running |= self.try_start(60);
        let pid_file = self.data.join("postmaster.pid");
        wait_until("the server to stop recovery and exit", timeout, || {
            !pid_file.exists()
        });
        self.running = false;
        let log = self.log_text();
        assert!(
            !log.contains("selected new timeline ID")
                && !log.contains("database system is ready to accept connections"),
            "recovery ended and the server opened:\n{log}"
        );
        assert!(
            log.contains("aborting startup due to startup process failure")
                || log.contains("startup process") && log.contains("exited with exit code 1"),
            "{log}"
        );
        log
    }

    /// Waits until the server accepts queries again (after a crash restart).
    pub fn wait_ready(&self, timeout: Duration) {
        wait_until("server accepting queries", timeout, || {
            self.psql("SELECT 1").is_ok()
        });
    }

    /// psql's whole output, whether it failed or not (warnings are on
    /// stderr).
    pub fn psql_output(&self, sql: &str) -> PsqlOutput {
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
        let out = c.output().unwrap();
        PsqlOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs SQL through psql; Ok(trimmed stdout) or Err(stderr).
    pub fn psql(&self, sql: &str) -> Result<String, String> {
        let out = self.psql_output(sql);
        if out.success {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.stderr)
        }
    }

    /// Runs SQL that must succeed; returns its trimmed output (the Perl
    /// Cluster's safe_psql).
    pub fn query(&self, sql: &str) -> String {
        self.psql(sql)
            .unwrap_or_else(|e| panic!("`{sql}` failed: {e}"))
    }

    pub fn server_version_num(&self) -> u32 {
        self.query("SHOW server_version_num").parse().unwrap()
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

    /// Sends a signal to a process (as root).
    pub fn kill(&self, pid: i32, signal: &str) {
        sh(&format!("kill -{signal} {pid}"));
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The current length of the server log: pass it to `wait_for_log`
    /// before an action, so that only lines written since count.
    pub fn log_position(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// Waits until the server log holds `needle` after offset `from`;
    /// returns the offset just past it.
    pub fn wait_for_log(&self, needle: &str, from: u64, timeout: Duration) -> u64 {
        let mut end = from;
        wait_until(
            &format!("log line {needle:?} after offset {from}"),
            timeout,
            || {
                let log = fs::read(&self.log).unwrap_or_default();
                let tail = log.get(from as usize..).unwrap_or_default();
                match tail
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                {
                    Some(i) => {
                        end = from + (i + needle.len()) as u64;
                        true
                    }
                    None => false,
                }
            },
        );
        end
    }
}

pub struct PsqlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
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
