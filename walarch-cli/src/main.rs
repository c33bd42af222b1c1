//! `walarch`: the command-line side of walarch_ext, without PostgreSQL.
//!
//!   walarch restore ARCHIVE WALFILE DEST [--prefetch N | --no-prefetch] [--spool DIR]
//!                                             (restore_command = 'walarch restore ARCHIVE %f %p')
//!   walarch verify ARCHIVE [--from WALFILE] [--to WALFILE] [--json]
//!   walarch expire ARCHIVE (--keep-backups N | --before WALFILE | --older-than DURATION)
//!   (restore, verify and expire: --identity-file FILE, repeatable, else
//!   WALARCH_IDENTITY_FILE: the age identities that read an encrypted archive)
//!   walarch cleanup ARCHIVE RESTARTFILE       (archive_cleanup_command = 'walarch cleanup ARCHIVE %r')
//!   walarch backup list ARCHIVE [--json]
//!   walarch backup restore ARCHIVE LABEL|latest PGDATA [--target-…] [--tablespace-mapping OLD=NEW]…
//!
//! ARCHIVE is a directory or s3://BUCKET[/PREFIX]. For a bucket, the
//! credentials come from the AWS credential chain (walarch_s3::credentials):
//! --credentials-file (AWS shared credentials format, as
//! walarch.s3_credentials_file) with --profile, else the environment
//! (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE,
//! AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials), web identity,
//! container credentials, instance metadata: never from the command line,
//! where `ps` shows them. The endpoint, region and CA bundle from --endpoint, --region,
//! --ca-file or AWS_ENDPOINT_URL, AWS_REGION, AWS_CA_BUNDLE.
//!
//! Exit status: 0 success; 1 the file is not in the archive (restore) or the
//! archive is not complete and intact (verify); 2 usage error; 3 refused
//! (integrity) or I/O error. restore differs, because PostgreSQL reads 1 to
//! 125 as "not in the archive" (the end of archive recovery): any failure
//! but a clean "not found" exits 255, which stops recovery, or 1 on a
//! standby (standby.signal), which retries by itself. `backup list` and
//! `backup restore` document theirs in backup.rs.

use std::path::Path;
use std::process::ExitCode;

/// `eprintln!` that never panics (stderr may be a full disk or a closed
/// pipe): a panic must not decide restore's exit status.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
use std::time::Duration;

use walarch_core::destination::destination_setting::{
    check_ca_file, check_endpoint, read_secret_file, DestinationSpec,
};
use walarch_core::destination::local_directory::LocalDirectory;
use walarch_core::destination::Destination;
use walarch_core::maintenance::verify::{verify_opening, Report};
use walarch_core::restore::{restore_retrying, RecoveryMode, RestoreError, Retry};
use walarch_core::wal::time::parse_duration;
use walarch_core::wal::walname::{WalFileKind, WalFileName};
use walarch_s3::credentials::CredentialOptions;
use walarch_s3::{
    AzureSettings, CloudDestination, CloudSettings, GcsSettings, Naming, S3Destination, S3Settings,
    UriStyle,
};

mod backup;
mod expire;
mod prefetch;

const USAGE: &str = "usage:
  walarch restore ARCHIVE WALFILE DEST [--prefetch N | --no-prefetch] [--spool DIR]
                 [--prefetch-idle SECONDS] [--retry-for DURATION] [--identity-file FILE]...
                 [S3 OPTIONS]
  walarch verify ARCHIVE [--from WALFILE] [--to WALFILE] [--json] [--identity-file FILE]...
                 [S3 OPTIONS]
  walarch expire ARCHIVE (--keep-backups N | --before WALFILE | --older-than DURATION)
                 [--dry-run] [--json] [--no-backup-check] [--identity-file FILE]... [S3 OPTIONS]
  walarch cleanup ARCHIVE RESTARTFILE [--dry-run] [--clean-backup-history] [S3 OPTIONS]
  walarch backup list ARCHIVE [--json] [S3 OPTIONS]
  walarch backup restore ARCHIVE LABEL|latest PGDATA
                 [--target-time TIME | --target-lsn LSN | --target-name NAME]
                 [--target-action pause|promote|shutdown] [--target-timeline TLI]
                 [-T|--tablespace-mapping OLD=NEW]... [-j|--jobs N] [--no-clean]
                 [--identity-file FILE]... [S3 OPTIONS]
ARCHIVE: a directory, s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] or gs://BUCKET[/PREFIX]
--identity-file FILE: an age identity file (age-keygen output, mode 0600) that decrypts an
            archive stored with walarch.encryption_recipients; repeatable (older keys after a
            rotation); else WALARCH_IDENTITY_FILE. Without it, encrypted files are not restored
            (restore fails, stopping recovery), verify checks only their stored bytes, and
            expire refuses if it must read an encrypted history or backup file.
S3 OPTIONS: --endpoint URL --region REGION --ca-file PEM --uri-style auto|path|host
            --timeout SECONDS --credentials-file FILE --profile NAME
            --sse-customer-key-file FILE (objects stored with walarch.s3_sse = sse-c)
            (credentials: --credentials-file, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
            AWS_SESSION_TOKEN, ~/.aws/credentials (AWS_PROFILE), web identity, container
            credentials, instance metadata)
  for az://: --azure-account NAME --azure-key-file FILE | --azure-sas-file FILE
            --endpoint URL --ca-file PEM --timeout SECONDS
            (else AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY, managed or
            workload identity)
  for gs://: --gcs-credentials-file FILE --endpoint URL --ca-file PEM --timeout SECONDS
            (else GOOGLE_APPLICATION_CREDENTIALS, application default credentials)";

/// `p` as an absolute path, for a command that runs elsewhere (the
/// prefetch helper in "/", restore_command in the data directory).
pub(crate) fn absolute_path(p: &str) -> String {
    std::path::absolute(p)
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_else(|_| p.to_string())
}

fn usage(msg: &str) -> ExitCode {
    say!("walarch: {msg}\n{USAGE}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == "restore") {
        // Until restore knows better, any panic stops archive recovery.
        exit_on_panic(RecoveryMode::current().failure_status());
    }
    let args: Vec<String> = match raw.into_iter().map(|a| a.into_string()).collect() {
        Ok(a) => a,
        Err(bad) => {
            let code = usage(&format!("argument {bad:?} is not valid UTF-8"));
            return if std::env::args_os().nth(1).is_some_and(|a| a == "restore") {
                ExitCode::from(RecoveryMode::current().failure_status())
            } else {
                code
            };
        }
    };
    match args.first().map(String::as_str) {
        Some("restore") => cmd_restore(&args[1..]),
        Some("verify") => cmd_verify(&args[1..]),
        Some("expire") => expire::cmd_expire(&args[1..]),
        Some("cleanup") => expire::cmd_cleanup(&args[1..]),
        Some("backup") => backup::cmd_backup(&args[1..]),
        // Internal: started by restore.
        Some("prefetch-helper") => prefetch::cmd_helper(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => usage(&format!("unknown command \"{other}\"")),
        None => usage("a command is required"),
    }
}

/// Options for reaching a bucket.
#[derive(Default)]
struct S3Options {
    endpoint: Option<String>,
    region: Option<String>,
    ca_file: Option<String>,
    uri_style: Option<String>,
    timeout: Option<Duration>,
    /// An AWS shared credentials file (read when the archive is opened).
    credentials_file: Option<String>,
    /// The SSE-C key file of an archive stored with `sse-c`.
    sse_customer_key_file: Option<String>,
    /// The profile of the credentials file (else AWS_PROFILE, else default).
    profile: Option<String>,
    /// Azure and GCS (`CLOUD_FLAGS`): files are read when the archive is
    /// opened.
    azure_account: Option<String>,
    azure_key_file: Option<String>,
    azure_sas_file: Option<String>,
    gcs_credentials_file: Option<String>,
    /// `--identity-file` (repeatable), else `WALARCH_IDENTITY_FILE`: the age
    /// identities that read an encrypted archive.
    identity_files: Vec<String>,
}

impl S3Options {
    /// The identities given, read now (each file protected like a
    /// credentials file); `None` when none is given.
    fn identities(
        &self,
    ) -> Result<Option<std::sync::Arc<walarch_core::destination::sealed::Identities>>, String> {
        if self.identity_files.is_empty() {
            return Ok(None);
        }
        walarch_core::destination::sealed::Identities::read_files(&self.identity_files)
            .map(|i| Some(std::sync::Arc::new(i)))
            .map_err(|m| format!("invalid identity file: {m}"))
    }
}

/// The options of Azure and GCS archives; `--endpoint`, `--ca-file` and
/// `--timeout` are shared with S3.
const CLOUD_FLAGS: [&str; 4] = [
    "--azure-account",
    "--azure-key-file",
    "--azure-sas-file",
    "--gcs-credentials-file",
];

fn cloud_options(flags: &[(String, Option<String>)], o: &mut S3Options) -> Result<(), String> {
    for (k, v) in flags {
        let v = Some(v.clone().unwrap_or_default());
        match k.as_str() {
            "--azure-account" => o.azure_account = v,
            "--azure-key-file" => o.azure_key_file = v,
            "--azure-sas-file" => o.azure_sas_file = v,
            "--gcs-credentials-file" => o.gcs_credentials_file = v,
            _ => {}
        }
    }
    if o.azure_key_file.is_some() && o.azure_sas_file.is_some() {
        return Err("--azure-key-file and --azure-sas-file cannot both be given".into());
    }
    Ok(())
}

/// Positional arguments and flags (`--name value`, or `--name` alone when
/// listed in `switches`).
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

fn split_args(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Args, String> {
    let mut out = Args {
        positional: vec![],
        flags: vec![],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if with_value.contains(&a.as_str()) {
            let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
            out.flags.push((a.clone(), Some(v.clone())));
        } else if switches.contains(&a.as_str()) {
            out.flags.push((a.clone(), None));
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(format!("unknown option \"{a}\""));
        } else {
            out.positional.push(a.clone());
        }
    }
    Ok(out)
}

const S3_FLAGS: [&str; 8] = [
    "--endpoint",
    "--region",
    "--ca-file",
    "--uri-style",
    "--timeout",
    "--credentials-file",
    "--sse-customer-key-file",
    "--profile",
];

fn s3_options(flags: &[(String, Option<String>)]) -> Result<S3Options, String> {
    let mut o = S3Options::default();
    for (k, v) in flags {
        let v = v.clone().unwrap_or_default();
        match k.as_str() {
            "--endpoint" => {
                check_endpoint(&v)?;
                o.endpoint = Some(v)
            }
            "--region" => o.region = Some(v),
            "--ca-file" => {
                check_ca_file(&v)?;
                o.ca_file = Some(v)
            }
            "--uri-style" => match v.as_str() {
                "auto" | "path" | "host" => o.uri_style = Some(v),
                _ => return Err("--uri-style takes auto, path or host".into()),
            },
            "--timeout" => match v.parse::<u64>() {
                Ok(s) if s > 0 => o.timeout = Some(Duration::from_secs(s)),
                _ => return Err("--timeout takes a number of seconds".into()),
            },
            "--credentials-file" => o.credentials_file = Some(v),
            "--sse-customer-key-file" => o.sse_customer_key_file = Some(v),
            "--profile" => {
                if v.is_empty() || v.contains(['[', ']', '\n']) {
                    return Err("--profile takes a profile name".into());
                }
                o.profile = Some(v)
            }
            _ => {}
        }
    }
    Ok(o)
}

/// A command's arguments: its own flags (`with_value`, `switches`) besides
/// the S3 options, which are read here.
fn command_args(
    args: &[String],
    with_value: &[&str],
    switches: &[&str],
) -> Result<(Args, S3Options), ExitCode> {
    let mut all = S3_FLAGS.to_vec();
    all.extend(CLOUD_FLAGS);
    all.push("--identity-file");
    all.extend(with_value);
    let a = split_args(args, &all, switches).map_err(|m| usage(&m))?;
    let mut o = s3_options(&a.flags).map_err(|m| usage(&m))?;
    cloud_options(&a.flags, &mut o).map_err(|m| usage(&m))?;
    o.identity_files = a
        .flags
        .iter()
        .filter(|(k, _)| k == "--identity-file")
        .filter_map(|(_, v)| v.clone())
        .collect();
    if o.identity_files.is_empty() {
        if let Some(f) = std::env::var("WALARCH_IDENTITY_FILE")
            .ok()
            .filter(|v| !v.is_empty())
        {
            o.identity_files.push(f);
        }
    }
    Ok((a, o))
}

/// Why an archive could not be opened.
enum OpenError {
    /// The argument is wrong (exit 2, with the usage).
    Usage(String),
    /// It could not be set up (exit 3).
    Failed(String),
    /// It cannot be reached now (exit 3; restore retries).
    Unavailable(String),
}

/// The archive named on the command line. Files are only read here, so the
/// mode for new files does not matter.
fn open_archive(arg: &str, o: &S3Options) -> Result<Box<dyn Destination>, OpenError> {
    // A network mount that is slow or gone stale: worth retrying, unlike a
    // directory that does not exist.
    if !arg.contains("://") {
        if let Err(e) = std::fs::metadata(arg) {
            if walarch_core::support::error::is_transient(&e) {
                return Err(OpenError::Unavailable(format!(
                    "could not reach the archive directory \"{arg}\": {}",
                    walarch_core::support::error::os_message(&e)
                )));
            }
        }
    }
    match DestinationSpec::parse(arg) {
        Ok(DestinationSpec::Directory(p)) if p.is_dir() => {
            Ok(Box::new(LocalDirectory::new(p, 0o600)))
        }
        Ok(DestinationSpec::Directory(_)) => {
            Err(OpenError::Usage(format!("\"{arg}\" is not a directory")))
        }
        Ok(DestinationSpec::S3 { bucket, prefix }) => {
            let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
            let mut s = S3Settings::new(bucket);
            s.naming = Naming::CommandLine;
            s.prefix = prefix;
            s.endpoint = o.endpoint.clone();
            s.credential_options = CredentialOptions {
                file: o.credentials_file.clone().map(Into::into),
                profile: o.profile.clone(),
            };
            s.ca_file = o.ca_file.clone().map(Into::into);
            // Reading needs only SSE-C's key (SSE-S3 and SSE-KMS objects
            // read back like any other); a write sends it too.
            if let Some(f) = &o.sse_customer_key_file {
                let key = walarch_s3::wire::read_customer_key_file(f).map_err(|m| {
                    OpenError::Failed(format!("invalid --sse-customer-key-file: {m}"))
                })?;
                s.sse = walarch_s3::Sse::Customer(key);
            }
            if let Some(r) = o
                .region
                .clone()
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
            {
                s.region = r;
            }
            s.complete(
                o.uri_style
                    .as_deref()
                    .and_then(UriStyle::parse)
                    .unwrap_or(UriStyle::Auto),
            );
            if let Some(t) = o.timeout {
                s.timeout = t;
            }
            s.choose_credentials()
                .map_err(|m| OpenError::Failed(format!("could not get S3 credentials: {m}")))?;
            S3Destination::new(s)
                .map(|d| Box::new(d) as Box<dyn Destination>)
                .map_err(|e| OpenError::Failed(e.to_string()))
        }
        Ok(DestinationSpec::Azure { container, prefix }) => {
            let mut s = AzureSettings::new(container);
            s.account = o.azure_account.clone();
            s.endpoint = o.endpoint.clone();
            if let Some(f) = &o.azure_key_file {
                s.access_key =
                    Some(read_secret_file(f, "account key").map_err(|m| {
                        OpenError::Failed(format!("invalid --azure-key-file: {m}"))
                    })?);
            }
            if let Some(f) = &o.azure_sas_file {
                s.sas_token =
                    Some(read_secret_file(f, "SAS token").map_err(|m| {
                        OpenError::Failed(format!("invalid --azure-sas-file: {m}"))
                    })?);
            }
            s.common = cloud_settings(prefix, o);
            CloudDestination::azure(s)
                .map(|d| Box::new(d) as Box<dyn Destination>)
                .map_err(|e| OpenError::Failed(e.to_string()))
        }
        Ok(DestinationSpec::Gcs { bucket, prefix }) => {
            let mut s = GcsSettings::new(bucket);
            s.endpoint = o.endpoint.clone();
            if let Some(f) = &o.gcs_credentials_file {
                s.service_account_key =
                    Some(read_secret_file(f, "service account key").map_err(|m| {
                        OpenError::Failed(format!("invalid --gcs-credentials-file: {m}"))
                    })?);
            }
            s.common = cloud_settings(prefix, o);
            CloudDestination::gcs(s)
                .map(|d| Box::new(d) as Box<dyn Destination>)
                .map_err(|e| OpenError::Failed(e.to_string()))
        }
        Err(_) if !arg.contains("://") && !Path::new(arg).is_dir() => {
            Err(OpenError::Usage(format!("\"{arg}\" is not a directory")))
        }
        Err(detail) => Err(OpenError::Usage(format!(
            "\"{arg}\" is not an archive: {detail}"
        ))),
    }
}

/// What Azure and GCS archives share of the command line.
fn cloud_settings(prefix: String, o: &S3Options) -> CloudSettings {
    let mut c = CloudSettings {
        prefix,
        ca_file: o.ca_file.clone().map(Into::into),
        naming: Naming::CommandLine,
        ..Default::default()
    };
    if let Some(t) = o.timeout {
        c.timeout = t;
    }
    c
}

/// `open_archive`, reporting a failure and giving the exit status.
fn archive(arg: &str, o: &S3Options) -> Result<Box<dyn Destination>, ExitCode> {
    open_archive(arg, o).map_err(|e| match e {
        OpenError::Usage(m) => usage(&m),
        OpenError::Failed(m) | OpenError::Unavailable(m) => {
            say!("walarch: error: {m}");
            ExitCode::from(3)
        }
    })
}

/// How long `walarch restore` retries an unavailable archive: `--retry-for`,
/// by default a few minutes in archive recovery and not at all on a standby
/// (PostgreSQL retries there by itself, and may stream meanwhile).
fn retry_policy(flags: &[(String, Option<String>)], mode: RecoveryMode) -> Result<Retry, String> {
    match flags.iter().rev().find(|(k, _)| k == "--retry-for") {
        Some((_, v)) => parse_duration(v.as_deref().unwrap_or_default())
            .map(Retry::new)
            .map_err(|e| format!("--retry-for: {e}")),
        None if mode == RecoveryMode::Standby => Ok(Retry::never()),
        None => Ok(Retry::new(Retry::DEFAULT_FOR)),
    }
}

/// A panic exits 101, which PostgreSQL would take for "not in the archive":
/// restore exits with its failure status instead, whichever thread panics.
fn exit_on_panic(status: u8) {
    std::panic::set_hook(Box::new(move |info| {
        say!("walarch: internal error: {info}");
        std::process::exit(i32::from(status));
    }));
}

fn cmd_restore(args: &[String]) -> ExitCode {
    let mut with_value = prefetch::FLAGS.to_vec();
    with_value.push("--retry-for");
    let parsed = command_args(args, &with_value, &prefetch::SWITCHES);
    // Even a usage error must not read as "not found" during archive
    // recovery. Until DEST is known, the mode is the working directory's
    // (PostgreSQL runs restore_command in the data directory).
    let fail_in = |mode: RecoveryMode, code: ExitCode| -> ExitCode {
        if mode == RecoveryMode::Archive {
            ExitCode::from(walarch_core::restore::EXIT_STOP_RECOVERY)
        } else {
            code
        }
    };
    let fail = |code| fail_in(RecoveryMode::current(), code);
    let (a, o) = match parsed {
        Ok(x) => x,
        Err(code) => return fail(code),
    };
    let [dir, walfile, dest] = &a.positional[..] else {
        return fail(usage("restore takes ARCHIVE WALFILE DEST"));
    };
    let dest = Path::new(dest);
    let mode = RecoveryMode::of(dest);
    exit_on_panic(mode.failure_status());
    let fail = |code| fail_in(mode, code);
    let is_bucket = DestinationSpec::parse(dir).is_ok_and(|d| d.is_object_store());
    let (prefetching, retry) = match prefetch::settings(&a.flags, is_bucket, dest)
        .and_then(|p| Ok((p, retry_policy(&a.flags, mode)?)))
    {
        Ok(x) => x,
        Err(m) => return fail(usage(&m)),
    };
    let log = |m: &str| say!("walarch: {m}");
    // Read now: a bad identity file is an error of every restore, whatever
    // the file restored (it must not appear only at the first encrypted one).
    let ids = match o.identities() {
        Ok(i) => i,
        Err(m) => {
            say!("walarch: error: could not restore \"{walfile}\" from \"{dir}\": {m}");
            return ExitCode::from(mode.failure_status());
        }
    };
    let result = match &prefetching {
        Some(p) => prefetch::restore(dir, &o, ids.as_deref(), p, walfile, dest, &retry),
        None => {
            let opened = std::cell::OnceCell::new();
            let archive = || -> Result<&dyn Destination, RestoreError> {
                if opened.get().is_none() {
                    let _ = opened.set(open_for_restore(dir, &o)?);
                }
                Ok(&**opened.get().expect("set above"))
            };
            restore_retrying(&archive, ids.as_deref(), walfile, dest, &retry, &log).map(|_| ())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // PostgreSQL probes for files that may not exist (the next timeline's
        // history, the end of the archive): say so briefly.
        Err(RestoreError::NotFound(m)) => {
            say!("walarch: {m}");
            ExitCode::from(walarch_core::restore::EXIT_NOT_FOUND)
        }
        Err(RestoreError::Usage(m)) => fail(usage(&m)),
        Err(e) => {
            say!("walarch: error: could not restore \"{walfile}\" from \"{dir}\": {e}");
            let status = mode.failure_status();
            match mode {
                RecoveryMode::Archive => say!(
                    "walarch: exiting with status {status} so that PostgreSQL stops recovery here instead of \
                     taking this file for the end of the archive; repair the archive and start the server \
                     again to continue, or set a recovery target before this file to end recovery there"
                ),
                RecoveryMode::Standby => say!(
                    "walarch: exiting with status {status} (standby.signal): the standby retries the file"
                ),
            }
            ExitCode::from(status)
        }
    }
}

/// `open_archive` for restore: a failure is an error of the restore.
pub(crate) fn open_for_restore(
    arg: &str,
    o: &S3Options,
) -> Result<Box<dyn Destination>, RestoreError> {
    open_archive(arg, o).map_err(|e| match e {
        OpenError::Usage(m) => RestoreError::Usage(m),
        OpenError::Failed(m) => RestoreError::Io(m),
        OpenError::Unavailable(m) => RestoreError::Unavailable(m),
    })
}

fn cmd_verify(args: &[String]) -> ExitCode {
    let (a, o) = match command_args(args, &["--from", "--to"], &["--json"]) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let (mut from, mut to, mut json) = (None, None, false);
    for (k, v) in &a.flags {
        match (k.as_str(), v) {
            ("--json", _) => json = true,
            ("--from" | "--to", Some(v)) => {
                let w = match WalFileName::parse(v) {
                    Some(w) if w.kind == WalFileKind::Segment => w,
                    _ => return usage(&format!("\"{v}\" is not a WAL segment name")),
                };
                if k == "--from" {
                    from = Some(w)
                } else {
                    to = Some(w)
                }
            }
            _ => {}
        }
    }
    let dir = match &a.positional[..] {
        [d] => d.clone(),
        [] => return usage("verify takes ARCHIVE"),
        [_, extra, ..] => return usage(&format!("unexpected argument \"{extra}\"")),
    };
    let ids = match o.identities() {
        Ok(i) => i,
        Err(m) => {
            say!("walarch: error: {m}");
            return ExitCode::from(3);
        }
    };
    let archive = match archive(&dir, &o) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let report = match verify_opening(
        &*archive,
        ids.as_deref(),
        from.as_ref(),
        to.as_ref(),
        &mut || Ok(()),
    ) {
        Ok(r) => r,
        Err(e) => {
            say!(
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
        "checked": checked(r),
        "problems": r.problems().count(),
        "compressed_files": r.compressed_files,
        "encrypted_files": r.encrypted_files,
        "encrypted_unchecked": r.encrypted_unchecked,
        "stored_bytes": r.stored_bytes,
        "wal_bytes": r.wal_bytes,
        "findings": findings,
    })
    .to_string()
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Files (WAL files, backup objects) read and checked.
fn checked(r: &Report) -> usize {
    use walarch_core::maintenance::verify::Status;
    r.findings
        .iter()
        .filter(|f| {
            !matches!(
                f.status,
                Status::Missing | Status::Dropped | Status::InProgress | Status::Incomplete
            )
        })
        .count()
}

fn print_text(r: &Report) {
    use walarch_core::maintenance::verify::Status;
    // Problems, and what is said without being one: the backups that may be
    // in progress, encrypted files not decrypted.
    for f in r.findings.iter().filter(|f| f.status != Status::Ok) {
        println!("{}: {}: {}", f.walfile, f.status.as_str(), f.detail);
    }
    let checked = checked(r);
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
        if r.compressed_files > 0 {
            println!(
                "{} of them compressed; {} of WAL stored in {}",
                r.compressed_files,
                mib(r.wal_bytes),
                mib(r.stored_bytes)
            );
        }
    } else {
        println!("archive NOT intact: {problems} problem(s) among {checked} files ({size})");
    }
    if r.encrypted_files > 0 {
        println!(
            "{} encrypted file(s) decrypted and checked against the original's SHA-256",
            r.encrypted_files
        );
    }
    if r.encrypted_unchecked > 0 {
        println!(
            "{} encrypted file(s) NOT decrypted: only their stored bytes were checked; give --identity-file FILE to check what they restore to",
            r.encrypted_unchecked
        );
    }
}
