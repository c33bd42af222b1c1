//! `walarch`: the command-line side of walarch_ext, without PostgreSQL.
//!
//!   walarch restore ARCHIVE_DIR WALFILE DEST      (restore_command = 'walarch restore DIR %f %p')
//!   walarch verify ARCHIVE_DIR [--from WALFILE] [--to WALFILE] [--json]
//!
//! Exit status: 0 success; 1 the file is not in the archive (restore) or the
//! archive is not complete and intact (verify); 2 usage error; 3 refused
//! (integrity) or I/O error.

use std::path::Path;
use std::process::ExitCode;

use walarch_core::local_directory::LocalDirectory;
use walarch_core::restore::{restore, RestoreError};
use walarch_core::verify::{verify, Report};
use walarch_core::walname::{WalFileKind, WalFileName};

const USAGE: &str = "usage:
  walarch restore ARCHIVE_DIR WALFILE DEST
  walarch verify ARCHIVE_DIR [--from WALFILE] [--to WALFILE] [--json]";

fn usage(msg: &str) -> ExitCode {
    eprintln!("walarch: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("restore") => cmd_restore(&args[1..]),
        Some("verify") => cmd_verify(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => usage(&format!("unknown command \"{other}\"")),
        None => usage("a command is required"),
    }
}

/// The archive named on the command line. Files are only read here, so the
/// mode for new files does not matter.
fn archive(arg: &str) -> Result<LocalDirectory, ExitCode> {
    let p = Path::new(arg);
    if p.is_dir() {
        Ok(LocalDirectory::new(p, 0o600))
    } else {
        Err(usage(&format!("\"{arg}\" is not a directory")))
    }
}

fn cmd_restore(args: &[String]) -> ExitCode {
    if let Some(opt) = args.iter().find(|a| a.starts_with('-')) {
        return usage(&format!("unknown option \"{opt}\""));
    }
    let [dir, walfile, dest] = args else {
        return usage("restore takes ARCHIVE_DIR WALFILE DEST");
    };
    let archive = match archive(dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match restore(&archive, walfile, Path::new(dest)) {
        Ok(_) => ExitCode::SUCCESS,
        // PostgreSQL probes for files that may not exist (the next timeline's
        // history, the end of the archive): say so briefly.
        Err(RestoreError::NotFound(m)) => {
            eprintln!("walarch: {m}");
            ExitCode::from(1)
        }
        Err(RestoreError::Usage(m)) => usage(&m),
        Err(e) => {
            eprintln!("walarch: error: {e}");
            ExitCode::from(3)
        }
    }
}

fn cmd_verify(args: &[String]) -> ExitCode {
    let mut dir = None;
    let (mut from, mut to, mut json) = (None, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "--from" | "--to" => {
                let Some(v) = it.next() else {
                    return usage(&format!("{a} needs a WAL file name"));
                };
                let w = match WalFileName::parse(v) {
                    Some(w) if w.kind == WalFileKind::Segment => w,
                    _ => return usage(&format!("\"{v}\" is not a WAL segment name")),
                };
                if a == "--from" {
                    from = Some(w)
                } else {
                    to = Some(w)
                }
            }
            s if s.starts_with('-') => return usage(&format!("unknown option \"{s}\"")),
            s if dir.is_none() => dir = Some(s.to_string()),
            s => return usage(&format!("unexpected argument \"{s}\"")),
        }
    }
    let Some(dir) = dir else {
        return usage("verify takes ARCHIVE_DIR");
    };
    let archive = match archive(&dir) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let report = match verify(&archive, from.as_ref(), to.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "walarch: error: could not read the archive \"{dir}\": {}",
                e.message
            );
            return ExitCode::from(3);
        }
    };
    if json {
        println!("{}", to_json(&dir, &report));
    } else {
        print_text(&report);
    }
    if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn to_json(dir: &str, r: &Report) -> String {
    let findings: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| serde_json::json!({"walfile": f.walfile, "status": f.status.as_str(), "detail": f.detail}))
        .collect();
    serde_json::json!({
        "archive": dir,
        "intact": r.intact(),
        "segment_size": r.segment_size,
        "timelines": r.timelines,
        "checked": r.findings.iter().filter(|f| f.status != walarch_core::verify::Status::Missing).count(),
        "problems": r.problems().count(),
        "findings": findings,
    })
    .to_string()
}

fn print_text(r: &Report) {
    for f in r.problems() {
        println!("{}: {}: {}", f.walfile, f.status.as_str(), f.detail);
    }
    let checked = r
        .findings
        .iter()
        .filter(|f| f.status != walarch_core::verify::Status::Missing)
        .count();
    let problems = r.problems().count();
    let size = r
        .segment_size
        .map(|s| format!("{} MB segments", s >> 20))
        .unwrap_or("no segments".into());
    if problems == 0 {
        println!(
            "archive intact: {checked} files verified ({size}, timelines {:?})",
            r.timelines
        );
    } else {
        println!("archive NOT intact: {problems} problem(s) among {checked} files ({size})");
    }
}
