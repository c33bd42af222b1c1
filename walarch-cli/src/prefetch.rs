//! `walarch restore` with prefetching, and the detached helper it starts
//! (`walarch prefetch-helper`, internal): the process side of
//! `walarch_core::restore::prefetch`.

use std::cell::OnceCell;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use walarch_core::destination::sealed::Identities;
use walarch_core::destination::Destination;
use walarch_core::restore::prefetch::{restore_through_spool, run_helper, HelperOptions, MAX_JOBS};
use walarch_core::restore::spool::{self, Spool};
use walarch_core::restore::{restore_retrying, RestoreError, Retry};

use crate::{archive, command_args, open_for_restore, usage, S3Options};

/// Segments fetched ahead by default from a bucket (16 × 16 MB = 256 MB at
/// most in the spool) and from a directory, where a few ahead already take
/// the copy and its fsync off recovery's path.
pub const DEFAULT_DEPTH: usize = 16;
pub const DEFAULT_DEPTH_DIRECTORY: usize = 8;
/// The most that may be asked for.
pub const MAX_DEPTH: usize = 256;
/// The helper stops after this long without a request.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// The prefetch options of `walarch restore`.
pub const FLAGS: [&str; 3] = ["--prefetch", "--spool", "--prefetch-idle"];
pub const SWITCHES: [&str; 1] = ["--no-prefetch"];

/// Prefetching as asked for on the command line.
pub struct Prefetching {
    pub depth: usize,
    pub spool: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub idle: Duration,
}

/// What the options and the destination make of prefetching: `None` for
/// off. On by default when PostgreSQL runs the command (DEST in a data
/// directory's pg_wal).
pub fn settings(
    flags: &[(String, Option<String>)],
    is_bucket: bool,
    dest: &Path,
) -> Result<Option<Prefetching>, String> {
    let (mut depth, mut off, mut spool_arg, mut idle) = (None, false, None, DEFAULT_IDLE);
    for (k, v) in flags {
        let v = v.as_deref().unwrap_or_default();
        match k.as_str() {
            "--no-prefetch" => off = true,
            "--prefetch" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_DEPTH).contains(&n) => depth = Some(n),
                _ => {
                    return Err(format!(
                        "--prefetch takes a number of segments, 1 to {MAX_DEPTH}"
                    ))
                }
            },
            "--spool" => spool_arg = Some(PathBuf::from(v)),
            "--prefetch-idle" => match v.parse::<u64>() {
                Ok(s) if s > 0 => idle = Duration::from_secs(s),
                _ => return Err("--prefetch-idle takes a number of seconds".into()),
            },
            _ => {}
        }
    }
    if off && depth.is_some() {
        return Err("--prefetch and --no-prefetch contradict each other".into());
    }
    if off {
        return Ok(None);
    }
    let default = spool::default_for(dest);
    let spool = match (spool_arg, &default) {
        (Some(s), _) => absolute(&s)?,
        (None, Some((s, _))) => s.clone(),
        // Not run by PostgreSQL: no spool to default to.
        (None, None) if depth.is_none() => return Ok(None),
        (None, None) => {
            return Err(
                "--prefetch needs --spool DIR when DEST is not in the pg_wal directory of a data directory"
                    .into(),
            )
        }
    };
    Ok(Some(Prefetching {
        depth: depth.unwrap_or(if is_bucket {
            DEFAULT_DEPTH
        } else {
            DEFAULT_DEPTH_DIRECTORY
        }),
        spool,
        data_dir: default.map(|(_, d)| d),
        idle,
    }))
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("--spool \"{}\": {e}", p.display()))
}

/// Who a helper serves: no two recoveries share a spool.
fn owner(p: &Prefetching, archive_arg: &str, o: &S3Options) -> String {
    format!(
        "data {}\narchive {} {}\n",
        p.data_dir
            .as_deref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        archive_arg.trim_end_matches('/'),
        o.endpoint.as_deref().unwrap_or_default()
    )
}

/// `walarch restore` through the spool; starts a helper when none runs.
pub fn restore(
    archive_arg: &str,
    o: &S3Options,
    ids: Option<&Identities>,
    p: &Prefetching,
    walfile: &str,
    dest: &Path,
    retry: &Retry,
) -> Result<(), RestoreError> {
    // Opened only when the file is not taken from the spool.
    let opened: OnceCell<Box<dyn Destination>> = OnceCell::new();
    let archive = || -> Result<&dyn Destination, RestoreError> {
        if opened.get().is_none() {
            let _ = opened.set(open_for_restore(archive_arg, o)?);
        }
        Ok(&**opened.get().expect("set above"))
    };
    let log = |m: &str| say!("walarch: {m}");
    let spool = match Spool::create(&p.spool) {
        Ok(s) => s,
        // One given with --spool must be usable.
        Err(e) if spool::default_for(dest).is_none_or(|(d, _)| d != p.spool) => {
            return Err(RestoreError::Usage(format!("cannot use --spool: {e}")));
        }
        Err(e) => {
            say!(
                "walarch: warning: could not use the prefetch spool \"{}\": {e}; restoring without prefetching",
                p.spool.display()
            );
            return restore_retrying(&archive, ids, walfile, dest, retry, &log).map(|_| ());
        }
    };
    let me = owner(p, archive_arg, o);
    // While the helper is fetching the file, wait for it rather than fetch
    // it twice; its own timeouts bound the wait.
    let wait = o.timeout.unwrap_or(Duration::from_secs(60)) * 2;
    let outcome =
        restore_through_spool(&archive, ids, &spool, &me, walfile, dest, wait, retry, &log)?;
    for w in &outcome.warnings {
        say!("walarch: warning: {w}");
    }
    if outcome.start_helper {
        if let Err(e) = start_helper(archive_arg, o, p) {
            say!("walarch: warning: could not start the prefetch helper: {e}");
        }
    }
    Ok(())
}

/// The S3 options again, for the helper's command line (never secrets:
/// those stay in the environment it inherits, or in the credentials file
/// named here).
fn s3_args(o: &S3Options) -> Vec<String> {
    let mut a = vec![];
    // The helper runs in "/": files by absolute path (restore_command's
    // own may be relative to the data directory). Names, never contents.
    let file = |v: &Option<String>| v.as_deref().map(crate::absolute_path);
    for (flag, v) in [
        ("--endpoint", o.endpoint.clone()),
        ("--region", o.region.clone()),
        ("--ca-file", file(&o.ca_file)),
        ("--uri-style", o.uri_style.clone()),
        ("--sse-customer-key-file", file(&o.sse_customer_key_file)),
        ("--credentials-file", file(&o.credentials_file)),
        ("--profile", o.profile.clone()),
        ("--azure-account", o.azure_account.clone()),
        ("--azure-key-file", file(&o.azure_key_file)),
        ("--azure-sas-file", file(&o.azure_sas_file)),
        ("--gcs-credentials-file", file(&o.gcs_credentials_file)),
    ] {
        if let Some(v) = v {
            a.extend([flag.to_string(), v]);
        }
    }
    if let Some(t) = o.timeout {
        a.extend(["--timeout".into(), t.as_secs().to_string()]);
    }
    // Each one, also one that came from WALARCH_IDENTITY_FILE (relative to
    // the data directory, perhaps): the helper decrypts what it prefetches.
    for f in &o.identity_files {
        a.extend(["--identity-file".into(), crate::absolute_path(f)]);
    }
    a
}

/// Starts `walarch prefetch-helper` detached: its own session (PostgreSQL's
/// signals to the startup process's group do not reach it, and
/// restore_command does not wait for it).
fn start_helper(archive_arg: &str, o: &S3Options, p: &Prefetching) -> std::io::Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("prefetch-helper")
        .arg(archive_arg)
        .arg("--spool")
        .arg(&p.spool)
        .args(["--prefetch", &p.depth.to_string()])
        .args(["--prefetch-idle", &p.idle.as_secs().to_string()])
        .args(s3_args(o))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(d) = &p.data_dir {
        cmd.arg("--data").arg(d);
    }
    // SAFETY: setsid is async-signal-safe, as pre_exec requires.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(|_| ())
}

/// `walarch prefetch-helper ARCHIVE --spool DIR --prefetch N
/// --prefetch-idle S [--data DIR] [S3 OPTIONS]`: started by restore.
pub fn cmd_helper(args: &[String]) -> ExitCode {
    close_inherited_descriptors();
    let (a, o) = match command_args(
        args,
        &["--spool", "--prefetch", "--prefetch-idle", "--data"],
        &[],
    ) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let [archive_arg] = &a.positional[..] else {
        return usage("prefetch-helper takes ARCHIVE");
    };
    let value = |k: &str| {
        a.flags
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.clone())
    };
    let (Some(spool_dir), Some(depth), Some(idle)) = (
        value("--spool"),
        value("--prefetch").and_then(|v| v.parse::<usize>().ok()),
        value("--prefetch-idle").and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return usage("prefetch-helper needs --spool, --prefetch and --prefetch-idle");
    };
    let identities = match o.identities() {
        Ok(i) => i,
        Err(m) => {
            say(&m);
            return ExitCode::from(3);
        }
    };
    let archive = match archive(archive_arg, &o) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let p = Prefetching {
        depth: depth.clamp(1, MAX_DEPTH),
        spool: PathBuf::from(spool_dir),
        data_dir: value("--data").map(PathBuf::from),
        idle: Duration::from_secs(idle.max(1)),
    };
    let spool = match Spool::create(&p.spool) {
        Ok(s) => s,
        Err(e) => {
            say(&format!(
                "could not create the spool \"{}\": {e}",
                p.spool.display()
            ));
            return ExitCode::from(3);
        }
    };
    let opts = HelperOptions {
        depth: p.depth,
        idle: p.idle,
        data_dir: p.data_dir.clone(),
        owner: owner(&p, archive_arg, &o),
        identities,
    };
    match run_helper(&*archive, &spool, &opts, &say) {
        Ok(Some(s)) => {
            say(&format!(
                "stopped ({}): {} segments fetched ahead ({} at a time), {} discarded unused, {} failed",
                s.why,
                s.fetched,
                p.depth.min(MAX_JOBS),
                s.discarded,
                s.failed
            ));
            ExitCode::SUCCESS
        }
        // Another helper serves the spool.
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!(
                "could not use the spool \"{}\": {e}",
                p.spool.display()
            ));
            ExitCode::from(3)
        }
    }
}

/// A line in the server log (the helper's stderr is restore_command's);
/// never fails the helper.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "walarch prefetch: {msg}");
}

/// The helper outlives restore_command: it must not keep open what the
/// startup process left inheritable (anything but stdin, stdout, stderr).
fn close_inherited_descriptors() {
    // SAFETY: closes descriptors this process has not opened; Rust's own
    // are not yet open.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn on_by_default_inside_a_data_directory_only() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("pg_wal")).unwrap();
        std::fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        let dest = d.path().join("pg_wal/RECOVERYXLOG");
        let bucket = settings(&[], true, &dest).unwrap().unwrap();
        assert_eq!(bucket.depth, DEFAULT_DEPTH);
        assert!(bucket.spool.ends_with("pg_wal/walarch_prefetch"));
        assert_eq!(bucket.idle, DEFAULT_IDLE);
        let dir = settings(&[], false, &dest).unwrap().unwrap();
        assert_eq!(dir.depth, DEFAULT_DEPTH_DIRECTORY);
        assert!(settings(&flags(&[("--no-prefetch", None)]), true, &dest)
            .unwrap()
            .is_none());
        let set = settings(
            &flags(&[("--prefetch", Some("32")), ("--prefetch-idle", Some("5"))]),
            false,
            &dest,
        )
        .unwrap()
        .unwrap();
        assert_eq!((set.depth, set.idle), (32, Duration::from_secs(5)));

        // A file restored by hand: no spool to default to.
        let elsewhere = d.path().join("copy");
        assert!(settings(&[], true, &elsewhere).unwrap().is_none());
        let e = settings(&flags(&[("--prefetch", Some("4"))]), true, &elsewhere).err();
        assert!(e.unwrap().contains("--spool"));
        let spooled = settings(
            &flags(&[("--prefetch", Some("4")), ("--spool", Some("/tmp/s"))]),
            true,
            &elsewhere,
        )
        .unwrap()
        .unwrap();
        assert_eq!(spooled.spool, PathBuf::from("/tmp/s"));

        for bad in [
            flags(&[("--prefetch", Some("0"))]),
            flags(&[("--prefetch", Some("x"))]),
            flags(&[("--prefetch", Some("100000"))]),
            flags(&[("--prefetch-idle", Some("0"))]),
            flags(&[("--prefetch", Some("4")), ("--no-prefetch", None)]),
        ] {
            assert!(settings(&bad, true, &dest).is_err(), "{bad:?}");
        }
    }
}
