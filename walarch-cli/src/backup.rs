//! `walarch backup list` and `walarch backup restore`: thin glue over
//! walarch_core::backup.
//!
//! Exit status of `backup list`: 0 listed; 2 usage error; 3 the archive
//! could not be read.
//!
//! Exit status of `backup restore`: 0 restored, verified, and the recovery
//! settings written; 1 the backup cannot be restored as asked (no such
//! backup, incomplete, its WAL missing from the archive, a target before
//! its end, a compression not read); 2 usage error, including a data or
//! tablespace directory that is not empty; 3 an object or file failed its
//! check, or an I/O error. With 1 and 2 nothing was changed; with 3 what
//! restore wrote is removed (kept, without recovery settings, with
//! --no-clean).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use walarch_core::backup::list::{list_backups, Listing, WalStatus};
use walarch_core::backup::restore::{
    restore_backup, restore_command, Failure, FailureKind, Request, Target, TargetAction, Which,
};
use walarch_core::destination::destination_setting::DestinationSpec;

use crate::{archive, command_args, usage, S3Options};

pub fn cmd_backup(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("list") => cmd_list(&args[1..]),
        Some("restore") => cmd_restore(&args[1..]),
        Some(other) => usage(&format!("unknown backup command \"{other}\"")),
        None => usage("backup takes list or restore"),
    }
}

/// `--name=value` as `--name value`, for the options that take a value
/// (pg_basebackup's `--tablespace-mapping=OLD=NEW` form).
fn split_equals(args: &[String], with_value: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if k.starts_with("--") && with_value.contains(&k) => {
                out.push(k.to_string());
                out.push(v.to_string());
            }
            _ => out.push(a.clone()),
        }
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn cmd_list(args: &[String]) -> ExitCode {
    let (a, o) = match command_args(args, &[], &["--json"]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let json = a.flags.iter().any(|(k, _)| k == "--json");
    let dir = match &a.positional[..] {
        [d] => d.clone(),
        [] => return usage("backup list takes ARCHIVE"),
        [_, extra, ..] => return usage(&format!("unexpected argument \"{extra}\"")),
    };
    let dest = match archive(&dir, &o) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let listing = match list_backups(&*dest) {
        Ok(l) => l,
        Err(e) => {
            say!("walarch: error: could not list the backups in \"{dir}\": {e}");
            return ExitCode::from(3);
        }
    };
    if json {
        println!("{}", listing_json(&dir, &listing));
    } else {
        print_listing(&dir, &listing);
    }
    ExitCode::SUCCESS
}

fn listing_json(dir: &str, l: &Listing) -> serde_json::Value {
    let backups: Vec<serde_json::Value> = l
        .complete
        .iter()
        .map(|b| {
            let i = &b.info;
            let (stored, size) = i.sizes();
            let missing = match &b.wal {
                WalStatus::Complete => vec![],
                WalStatus::Missing(m) => m.clone(),
            };
            serde_json::json!({
                "label": i.label,
                "start_time": i.start_time,
                "stop_time": i.stop_time,
                "start_lsn": i.start_lsn,
                "start_timeline": i.start_timeline,
                "start_wal": i.start_wal,
                "stop_lsn": i.stop_lsn,
                "stop_timeline": i.stop_timeline,
                "stop_wal": i.stop_wal,
                "pg_version": i.pg_version,
                "system_identifier": i.system_identifier,
                "stored_bytes": stored,
                "size_bytes": size,
                "tablespaces": i.tablespaces.iter().map(|t| serde_json::json!({"oid": t.oid, "location": t.location})).collect::<Vec<_>>(),
                "wal_complete": missing.is_empty(),
                "missing_wal": missing,
                "restorable": missing.is_empty(),
                "encrypted": i.encryption.is_some(),
                "encryption": i.encryption.as_ref().map(|e| serde_json::json!({"method": e.method, "recipients": e.recipients})),
                "dropped_after": b.dropped_after.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                "reaches_present": b.dropped_after.is_empty(),
            })
        })
        .collect();
    let incomplete: Vec<serde_json::Value> = l
        .incomplete
        .iter()
        .map(|b| {
            serde_json::json!({
                "label": b.label,
                "objects": b.objects,
                "stored_bytes": b.stored_bytes,
                "reason": b.reason,
                "restorable": false,
            })
        })
        .collect();
    serde_json::json!({"archive": dir, "backups": backups, "incomplete": incomplete})
}

fn print_listing(dir: &str, l: &Listing) {
    if l.complete.is_empty() && l.incomplete.is_empty() {
        println!("no backups in \"{dir}\"");
        return;
    }
    for b in &l.complete {
        let i = &b.info;
        let (stored, size) = i.sizes();
        let wal = match &b.wal {
            WalStatus::Complete => "wal: complete".to_string(),
            WalStatus::Missing(m) if m.len() == 1 => format!("wal: missing {}", m[0]),
            WalStatus::Missing(m) => {
                format!("wal: missing {} (and {} more)", m[0], m.len() - 1)
            }
        };
        let wal = match b.dropped_after.first() {
            None => wal,
            Some(m) => format!(
                "{wal}; cannot reach the present: {}..{} dropped by walarch.max_backlog ({})",
                m.first, m.last, m.name
            ),
        };
        let encrypted = match &i.encryption {
            Some(e) => format!("  encrypted ({}, {} recipient(s))", e.method, e.recipients),
            None => String::new(),
        };
        println!(
            "{}  {} .. {}  lsn {} (timeline {}) .. {} (timeline {})  {} stored / {} original{encrypted}  {wal}",
            i.label,
            i.start_time,
            i.stop_time,
            i.start_lsn,
            i.start_timeline,
            i.stop_lsn,
            i.stop_timeline,
            mib(stored),
            mib(size),
        );
    }
    for b in &l.incomplete {
        println!(
            "{}  incomplete ({}): {} object(s), {} stored; not restorable",
            b.label,
            b.reason,
            b.objects,
            mib(b.stored_bytes)
        );
    }
}

/// Splits `OLD=NEW` as pg_basebackup does (`\=` for an `=` in a path).
fn parse_mapping(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (mut old, mut new, mut in_new, mut chars) =
        (String::new(), String::new(), false, s.chars().peekable());
    while let Some(c) = chars.next() {
        let cur = if in_new { &mut new } else { &mut old };
        match c {
            '\\' if chars.peek() == Some(&'=') => cur.push(chars.next().unwrap_or('=')),
            '=' if !in_new => in_new = true,
            '=' => {
                return Err(format!(
                    "multiple \"=\" signs in tablespace mapping \"{s}\""
                ))
            }
            c => cur.push(c),
        }
    }
    if !in_new || old.is_empty() || new.is_empty() {
        return Err(format!(
            "invalid tablespace mapping format \"{s}\", must be \"OLDDIR=NEWDIR\""
        ));
    }
    for d in [&old, &new] {
        if !Path::new(d).is_absolute() {
            return Err(format!(
                "directory \"{d}\" in tablespace mapping \"{s}\" is not an absolute path"
            ));
        }
    }
    Ok((PathBuf::from(old), PathBuf::from(new)))
}

/// The options `walarch restore` needs to reach the same bucket from the
/// server: what was given here or found in the environment, except the
/// credentials, which are never written into the data directory.
fn bucket_options(o: &S3Options, s3: bool) -> Vec<String> {
    // The AWS variables only for an s3:// archive: an az:// or gs:// one
    // reads its own from the server's environment.
    let env = |k: &str| std::env::var(k).ok().filter(|v| s3 && !v.is_empty());
    let mut out = Vec::new();
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            out.push(k.to_string());
            out.push(v);
        }
    };
    add(
        "--endpoint",
        o.endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL")),
    );
    add(
        "--region",
        o.region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION")),
    );
    // restore_command runs in the data directory: an absolute path.
    let abs = |p: &String| crate::absolute_path(p);
    add(
        "--ca-file",
        o.ca_file
            .clone()
            .or_else(|| env("AWS_CA_BUNDLE"))
            .as_ref()
            .map(abs),
    );
    add("--uri-style", o.uri_style.clone());
    // Names of files, never their contents.
    add("--credentials-file", o.credentials_file.as_ref().map(abs));
    add("--profile", o.profile.clone());
    add("--timeout", o.timeout.map(|t| t.as_secs().to_string()));
    add(
        "--sse-customer-key-file",
        o.sse_customer_key_file.as_ref().map(abs),
    );
    add("--azure-account", o.azure_account.clone());
    add("--azure-key-file", o.azure_key_file.as_ref().map(abs));
    add("--azure-sas-file", o.azure_sas_file.as_ref().map(abs));
    add(
        "--gcs-credentials-file",
        o.gcs_credentials_file.as_ref().map(abs),
    );
    out
}

const RESTORE_VALUES: [&str; 9] = [
    "--target-time",
    "--target-lsn",
    "--target-name",
    "--target-action",
    "--target-timeline",
    "--tablespace-mapping",
    "-T",
    "--jobs",
    "-j",
];

fn cmd_restore(args: &[String]) -> ExitCode {
    let args = split_equals(args, &RESTORE_VALUES);
    let (a, o) = match command_args(&args, &RESTORE_VALUES, &["--no-clean"]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let [dir, which, pgdata] = &a.positional[..] else {
        return usage("backup restore takes ARCHIVE LABEL|latest PGDATA");
    };
    let which = match Which::parse(which) {
        Ok(w) => w,
        Err(m) => return usage(&m),
    };
    let (mut targets, mut action, mut timeline, mut mapping, mut jobs, mut keep) =
        (vec![], None, None, vec![], 4usize, false);
    for (k, v) in &a.flags {
        let v = v.clone().unwrap_or_default();
        match k.as_str() {
            "--target-time" => targets.push(Target::Time(v)),
            "--target-lsn" => targets.push(Target::Lsn(v)),
            "--target-name" => targets.push(Target::Name(v)),
            "--target-action" => match TargetAction::parse(&v) {
                Some(t) => action = Some(t),
                None => return usage("--target-action takes pause, promote or shutdown"),
            },
            "--target-timeline" => timeline = Some(v),
            "--tablespace-mapping" | "-T" => match parse_mapping(&v) {
                Ok(m) => mapping.push(m),
                Err(m) => return usage(&m),
            },
            "--jobs" | "-j" => match v.parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => jobs = n,
                _ => return usage("--jobs takes a number from 1 to 64"),
            },
            "--no-clean" => keep = true,
            _ => {}
        }
    }
    if targets.len() > 1 {
        return usage("give at most one of --target-time, --target-lsn, --target-name");
    }
    let pgdata = match std::path::absolute(pgdata) {
        Ok(p) => p,
        Err(e) => return usage(&format!("invalid data directory \"{pgdata}\": {e}")),
    };
    let identities = match o.identities() {
        Ok(i) => i,
        Err(m) => {
            say!("walarch: error: {m}");
            return ExitCode::from(2);
        }
    };
    let dest = match archive(dir, &o) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            say!("walarch: error: could not find the path of this walarch: {e}");
            return ExitCode::from(3);
        }
    };
    let is_bucket = DestinationSpec::parse(dir).is_ok_and(|d| d.is_object_store());
    let (archive_arg, mut options) = if is_bucket {
        let s3 = matches!(DestinationSpec::parse(dir), Ok(DestinationSpec::S3 { .. }));
        (dir.clone(), bucket_options(&o, s3))
    } else {
        // restore_command runs in the data directory: an absolute path.
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| PathBuf::from(dir));
        (abs.to_string_lossy().into_owned(), vec![])
    };
    // The WAL is as encrypted as the backup: recovery reads it with the same
    // identities (their files' names; restore_command runs in the data
    // directory, so absolute).
    let identity_files: Vec<String> = o
        .identity_files
        .iter()
        .map(|f| crate::absolute_path(f))
        .collect();
    for f in &identity_files {
        options.push("--identity-file".into());
        options.push(f.clone());
    }
    let req = Request {
        which,
        pgdata,
        tablespace_mapping: mapping,
        jobs,
        target: targets.pop(),
        target_action: action,
        target_timeline: timeline,
        restore_command: restore_command(&exe, &archive_arg, &options),
        keep_on_failure: keep,
        identities,
    };
    let log = |m: &str| say!("walarch: {m}");
    match restore_backup(&*dest, &req, &log) {
        Ok(r) => {
            say!(
                "walarch: backup \"{}\" restored into \"{}\": {} object(s) ({}) verified against backup.json, {} file(s) against backup_manifest",
                r.info.label,
                req.pgdata.display(),
                r.objects,
                mib(r.stored_bytes),
                r.files_checked
            );
            say!("walarch: written to postgresql.auto.conf (earlier recovery settings commented out), and recovery.signal created:");
            for l in r.settings.iter().filter(|l| !l.starts_with('#')) {
                say!("    {l}");
            }
            if matches!(DestinationSpec::parse(dir), Ok(DestinationSpec::S3 { .. }))
                && o.credentials_file.is_none()
            {
                say!(
                    "walarch: restore_command carries no credentials: the server's user needs them from its environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, web identity, container or instance credentials), or restore with --credentials-file [--profile], whose names restore_command then carries"
                );
            }
            if !identity_files.is_empty() {
                say!(
                    "walarch: restore_command reads {} as the server's operating system user: it must be readable by it (owned by it with mode 0600, or by root with mode 0640 and the server's group)",
                    identity_files
                        .iter()
                        .map(|f| format!("\"{f}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // SAFETY: geteuid has no preconditions and cannot fail.
            if unsafe { libc::geteuid() } == 0 {
                say!(
                    "walarch: the restored files belong to root: change their owner to the server's user (chown -R) before starting it"
                );
            }
            match (&req.target, req.target_action.unwrap_or(TargetAction::Pause)) {
                (None, _) => say!(
                    "walarch: start the server: it recovers to the end of the archive, then opens on a new timeline"
                ),
                (Some(_), TargetAction::Pause) => say!(
                    "walarch: start the server: it pauses at the target; check the data, then SELECT pg_wal_replay_resume() to open it, or stop it and restore again with another target"
                ),
                (Some(_), TargetAction::Promote) => say!(
                    "walarch: start the server: it opens on a new timeline at the target"
                ),
                (Some(_), TargetAction::Shutdown) => say!(
                    "walarch: start the server: it stops at the target (start it again without the target settings to open it)"
                ),
            }
            ExitCode::SUCCESS
        }
        Err(f) => report(&f),
    }
}

fn report(f: &Failure) -> ExitCode {
    say!("walarch: error: {}", f.message);
    if let Some(d) = &f.detail {
        say!("DETAIL:  {d}");
    }
    if let Some(h) = &f.hint {
        say!("HINT:  {h}");
    }
    ExitCode::from(match f.kind {
        FailureKind::NotRestorable => 1,
        FailureKind::Usage => 2,
        FailureKind::Integrity | FailureKind::Io => 3,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tablespace_mappings_as_pg_basebackup_reads_them() {
        assert_eq!(
            parse_mapping("/a=/b").unwrap(),
            (PathBuf::from("/a"), PathBuf::from("/b"))
        );
        assert_eq!(
            parse_mapping(r"/a\=x=/b").unwrap(),
            (PathBuf::from("/a=x"), PathBuf::from("/b"))
        );
        for bad in ["/a", "=/b", "/a=", "/a=/b=/c", "a=/b", "/a=b"] {
            assert!(parse_mapping(bad).is_err(), "{bad}");
        }
        assert_eq!(
            split_equals(
                &["--tablespace-mapping=/a=/b".into(), "--x=y".into()],
                &RESTORE_VALUES
            ),
            ["--tablespace-mapping", "/a=/b", "--x=y"]
        );
    }
}
