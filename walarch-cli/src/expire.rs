//! `walarch expire` (retention) and `walarch cleanup` (archive_cleanup_command).

use std::process::ExitCode;
use std::time::SystemTime;

use walarch_core::destination::compressing::Compressing;
use walarch_core::destination::{Destination, Entry};
use walarch_core::maintenance::retention::{
    execute, plan, plan_cleanup, read_facts_opening, Action, BackupCheck, Plan, Rule,
};
use walarch_core::wal::time::parse_duration;
use walarch_core::ArchiveError;

use crate::{archive, command_args, usage, S3Options};

fn failed(what: &str, e: &ArchiveError) -> ExitCode {
    say!("walarch: error: {what}: {e}");
    ExitCode::from(3)
}

pub fn cmd_expire(args: &[String]) -> ExitCode {
    let (a, o) = match command_args(
        args,
        &["--keep-backups", "--before", "--older-than"],
        &["--dry-run", "--json", "--no-backup-check"],
    ) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (mut rules, mut dry_run, mut json) = (vec![], false, false);
    let mut check = BackupCheck::Required;
    for (k, v) in &a.flags {
        let v = v.as_deref().unwrap_or_default();
        match k.as_str() {
            "--dry-run" => dry_run = true,
            "--json" => json = true,
            "--no-backup-check" => check = BackupCheck::Skipped,
            "--keep-backups" => match v.parse::<u32>() {
                Ok(n) if n > 0 => rules.push(Rule::KeepBackups(n)),
                _ => return usage("--keep-backups takes a number of base backups, at least 1"),
            },
            "--before" => rules.push(Rule::Before(v.to_string())),
            "--older-than" => match parse_duration(v) {
                Ok(d) => rules.push(Rule::OlderThan(d)),
                Err(m) => return usage(&m),
            },
            _ => {}
        }
    }
    let [rule] = &rules[..] else {
        return usage("expire takes exactly one of --keep-backups, --before, --older-than");
    };
    let dir = match &a.positional[..] {
        [d] => d.clone(),
        [] => return usage("expire takes ARCHIVE"),
        [_, extra, ..] => return usage(&format!("unexpected argument \"{extra}\"")),
    };
    // Read now: a bad identity file is an error even where it is not needed.
    let ids = match o.identities() {
        Ok(i) => i,
        Err(m) => {
            say!("walarch: error: {m}");
            return ExitCode::from(3);
        }
    };
    with_entries(&dir, &o, |dest, stored, entries| {
        let facts = match read_facts_opening(stored, ids.as_deref(), entries) {
            Ok(f) => f,
            Err(e) => return failed("nothing removed", &e),
        };
        match plan(entries, &facts, rule, SystemTime::now(), check) {
            Ok(p) => {
                let code = run(dest, &p, dry_run, json, &dir);
                if !dry_run && code == ExitCode::SUCCESS {
                    sweep(dest, json);
                }
                code
            }
            Err(e) => failed("nothing removed", &e),
        }
    })
}

/// Opens the archive as WAL files whichever form they are stored in, lists
/// it and hands it to `f`, with the archive as stored (which history and
/// backup files are read from, in whichever form holds them) and the list.
fn with_entries(
    dir: &str,
    o: &S3Options,
    f: impl FnOnce(&dyn Destination, &dyn Destination, &[Entry]) -> ExitCode,
) -> ExitCode {
    let inner = match archive(dir, o) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let dest = Compressing::new(&*inner, None);
    match dest.entries() {
        Ok(entries) => f(&dest, &*inner, &entries),
        Err(e) => failed(&format!("could not list the archive \"{dir}\""), &e),
    }
}

pub fn cmd_cleanup(args: &[String]) -> ExitCode {
    let (a, o) = match command_args(args, &[], &["--dry-run", "--clean-backup-history"]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let has = |f: &str| a.flags.iter().any(|(k, _)| k == f);
    let [dir, restart] = &a.positional[..] else {
        return usage("cleanup takes ARCHIVE RESTARTFILE (archive_cleanup_command = 'walarch cleanup ARCHIVE %r')");
    };
    with_entries(dir, &o, |dest, _, entries| {
        let p = match plan_cleanup(entries, restart, has("--clean-backup-history")) {
            Ok(p) => p,
            Err(e) => return usage(&e.to_string()),
        };
        if has("--dry-run") {
            return run(dest, &p, true, false, dir);
        }
        // Quiet when it works, as pg_archivecleanup: the server logs stderr.
        match execute(dest, &p, |_| {}) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => failed("cleanup stopped", &e),
        }
    })
}

/// Removes what interrupted stores and removals left behind (temporary
/// files of dead processes, checksum records whose file is gone), saying
/// what went; a failure there is reported but does not fail the expiry.
fn sweep(dest: &dyn Destination, json: bool) {
    match dest.clean_leftovers() {
        Ok(l) => {
            for n in &l.removed {
                if json {
                    say!("walarch: removed leftover {n}");
                } else {
                    println!("removed leftover {n}");
                }
            }
            for (n, e) in &l.failed {
                say!("walarch: warning: could not remove leftover {n}: {e}");
            }
        }
        Err(e) => say!("walarch: warning: could not clean leftovers: {e}"),
    }
}

/// Lists (dry run) or carries out the plan: one line per file as it goes,
/// then a summary; or one JSON document at the end.
fn run(dest: &dyn Destination, p: &Plan, dry_run: bool, json: bool, dir: &str) -> ExitCode {
    let line = |d: &walarch_core::maintenance::retention::Decision| match d.action {
        Action::Remove if dry_run => println!("would remove {}", d.walfile),
        Action::Remove => println!("removed {}", d.walfile),
        Action::Leave => println!("left {}: {}", d.walfile, d.reason),
    };
    let removals = p.removals().count();
    let mut done = 0;
    let result = if dry_run {
        Ok(0)
    } else {
        execute(dest, p, |d| {
            done += 1;
            if !json {
                line(d);
            }
        })
    };
    if json {
        let files: Vec<serde_json::Value> = p
            .decisions
            .iter()
            .map(|d| {
                serde_json::json!({"walfile": d.walfile, "action": d.action.as_str(dry_run), "reason": d.reason})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "archive": dir, "dry_run": dry_run, "keeps_from": p.cut, "reason": p.why,
                "removed": done, "files": files,
            })
        );
    } else {
        if dry_run {
            p.decisions.iter().for_each(line);
        } else {
            p.decisions
                .iter()
                .filter(|d| d.action == Action::Leave)
                .for_each(line);
        }
        let verb = if dry_run {
            "would be removed"
        } else {
            "removed"
        };
        match &p.cut {
            Some(cut) => println!(
                "{removals} file(s) {verb}, {}; the archive keeps {cut} on",
                p.why
            ),
            None => println!("{removals} file(s) {verb}, {}", p.why),
        }
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => failed(
            &format!("expiry stopped after {done} of {removals} file(s); what remains has no hole"),
            &e,
        ),
    }
}
