//! The module's settings. Where the archive is, and how to reach it, is
//! validated by check hooks so a bad value is refused when it is set (ALTER
//! SYSTEM, reload, start-up) with a DETAIL saying why, instead of failing at
//! archive time. `destination()` turns them into the destination to use.

use std::ffi::{c_char, c_void, CStr, CString};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use walarch_core::archiving::breaker::DestinationId;
use walarch_core::destination::compressing::{Compressing, Sealing};
use walarch_core::destination::destination_setting::{
    check_ca_file, check_endpoint, read_credentials_file, read_secret_file, resolve,
    DestinationSpec,
};
use walarch_core::destination::local_directory::LocalDirectory;
use walarch_core::destination::sealed::Recipients;
use walarch_core::destination::Destination;
use walarch_s3::credentials::CredentialOptions;
use walarch_s3::{
    AzureSettings, CloudDestination, CloudSettings, GcsSettings, S3Destination, S3Settings,
    UriStyle,
};

type Setting = GucSetting<Option<CString>>;

pub static ARCHIVE_DESTINATION: Setting = Setting::new(None);
pub static ARCHIVE_DIRECTORY: Setting = Setting::new(None);
pub static S3_ENDPOINT: Setting = Setting::new(None);
pub static S3_REGION: Setting = Setting::new(Some(c"us-east-1"));
pub static S3_CREDENTIALS_FILE: Setting = Setting::new(None);
pub static S3_CA_FILE: Setting = Setting::new(None);
pub static S3_URI_STYLE: Setting = Setting::new(Some(c"auto"));
pub static S3_REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static BACKUP_ROLE: Setting = Setting::new(None);
pub static S3_SSE: Setting = Setting::new(Some(c"none"));
pub static S3_SSE_KMS_KEY_ID: Setting = Setting::new(None);
pub static S3_SSE_CUSTOMER_KEY_FILE: Setting = Setting::new(None);
pub static S3_STORAGE_CLASS: Setting = Setting::new(None);
pub static S3_PROFILE: Setting = Setting::new(None);
pub static ENCRYPTION_RECIPIENTS: Setting = Setting::new(None);

/// A string setting with a check hook, sighup, superuser-only.
///
/// # Safety
/// `check` and `show` must be guarded hooks that never unwind across FFI.
unsafe fn define_string(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static Setting,
    check: pg_sys::GucStringCheckHook,
    show: pg_sys::GucShowHook,
) {
    // SAFETY: the hooks are guarded (caller's promise); names are static.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            name,
            short,
            long,
            setting,
            GucContext::Sighup,
            GucFlags::SUPERUSER_ONLY,
            check,
            None,
            show,
        );
    }
}

pub fn define() {
    // SAFETY: every hook below is #[pg_guard]ed and returns a value on every
    // path.
    unsafe {
        define_string(
            c"walarch.archive_destination",
            c"Where WAL files are archived: an absolute directory path, s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] or gs://BUCKET[/PREFIX].",
            c"Empty means archiving is not configured (unless walarch.archive_directory, its older name, is set).",
            &ARCHIVE_DESTINATION,
            Some(check_archive_destination),
            None,
        );
        define_string(
            c"walarch.archive_directory",
            c"Directory into which WAL files are archived (the older name of walarch.archive_destination).",
            c"An absolute path to an existing directory the server can write. Empty means archiving is not configured.",
            &ARCHIVE_DIRECTORY,
            Some(check_archive_directory),
            None,
        );
        define_string(
            c"walarch.s3_endpoint",
            c"URL of the S3-compatible endpoint (http:// or https://); empty for AWS itself.",
            c"",
            &S3_ENDPOINT,
            Some(check_s3_endpoint),
            None,
        );
        define_string(
            c"walarch.s3_region",
            c"Region of the bucket.",
            c"",
            &S3_REGION,
            Some(check_s3_region),
            None,
        );
        define_string(
            c"walarch.s3_credentials_file",
            c"File with the bucket's aws_access_key_id, aws_secret_access_key and aws_session_token (AWS shared credentials format), profile walarch.s3_profile.",
            c"Empty: the AWS credential chain from the server's environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, web identity, container credentials, instance metadata). Read at each use, so a rotated key needs no reload. Secrets are not settings: PostgreSQL logs every changed setting's value at reload.",
            &S3_CREDENTIALS_FILE,
            Some(check_s3_credentials_file),
            None,
        );
        define_string(
            c"walarch.s3_ca_file",
            c"PEM file of the certificate authorities that sign the endpoint's certificate.",
            c"Trusted in addition to the system's. Empty: the system's only.",
            &S3_CA_FILE,
            Some(check_s3_ca_file),
            None,
        );
        define_string(
            c"walarch.s3_uri_style",
            c"How the bucket is addressed: auto, path (https://host/BUCKET/key) or host (https://BUCKET.host/key).",
            c"auto: host style for AWS, path style for a custom endpoint.",
            &S3_URI_STYLE,
            Some(check_s3_uri_style),
            None,
        );
        define_string(
            c"walarch.s3_profile",
            c"Profile of the credentials file to read (walarch.s3_credentials_file, else the server's AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials).",
            c"Empty: the server's AWS_PROFILE, else default.",
            &S3_PROFILE,
            Some(check_s3_profile),
            None,
        );
        define_string(
            c"walarch.backup_role",
            c"Role whose members may take base backups with pg_basebackup --target=walarch.",
            c"Empty: superusers only. The backup also needs a replication connection.",
            &BACKUP_ROLE,
            None,
            None,
        );
        define_string(
            c"walarch.s3_sse",
            c"Server-side encryption of what is stored: none, AES256 (SSE-S3), aws:kms (SSE-KMS) or sse-c (a key of your own).",
            c"none: the bucket's default encryption. Reading needs nothing more, except with sse-c: walarch restore/verify/expire/backup then need --sse-customer-key-file.",
            &S3_SSE,
            Some(check_s3_sse),
            None,
        );
        define_string(
            c"walarch.s3_sse_kms_key_id",
            c"KMS key (id, alias or ARN) of walarch.s3_sse = aws:kms.",
            c"Empty: the account's AWS managed key aws/s3.",
            &S3_SSE_KMS_KEY_ID,
            Some(check_s3_sse_kms_key_id),
            None,
        );
        define_string(
            c"walarch.s3_sse_customer_key_file",
            c"File holding the key of walarch.s3_sse = sse-c: its 32 bytes, or their base64 on one line.",
            c"Protected like walarch.s3_credentials_file (0600, owned by the server's user). Every object stored is readable only with this key: keep a copy of it away from the archive.",
            &S3_SSE_CUSTOMER_KEY_FILE,
            Some(check_s3_sse_customer_key_file),
            None,
        );
        define_string(
            c"walarch.s3_storage_class",
            c"Storage class of WAL segments and base backup tars (STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR...).",
            c"Empty: the bucket's default. History and backup history files, checksum records, markers and backup.json always take the bucket's default.",
            &S3_STORAGE_CLASS,
            Some(check_s3_storage_class),
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"walarch.s3_request_timeout",
        c"How long one request to the object store may take before it fails.",
        c"The archiver is never held longer than this by one request.",
        &S3_REQUEST_TIMEOUT,
        1_000,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

/// After every `walarch.*` setting is defined: from then on a misspelt one
/// is an error, and placeholders for names we do not define are removed (so
/// this must come last, or our own settings from postgresql.conf vanish).
pub fn reserve_prefix() {
    // SAFETY: called from _PG_init with a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"walarch".as_ptr()) };
}

fn text(s: &Setting) -> String {
    s.get()
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_default()
}

fn non_empty(s: &Setting) -> Option<String> {
    Some(text(s)).filter(|v| !v.is_empty())
}

/// `walarch.backup_role`, when set.
pub fn backup_role() -> Option<String> {
    non_empty(&BACKUP_ROLE)
}

pub type SharedDestination = Arc<dyn Destination + Send + Sync>;

/// The destination the settings name, what identifies it (for the circuit
/// breaker and copy-ahead claims), and how long one request to it may take.
pub struct Configured {
    pub dest: SharedDestination,
    pub id: DestinationId,
    pub request_timeout: Option<Duration>,
}

/// The S3 destination of the current settings, kept while they do not
/// change (its HTTP client and connections are reused).
static S3_CACHE: Mutex<Option<(u64, SharedDestination)>> = Mutex::new(None);

/// The destination the settings name, or why there is none (a DETAIL).
/// Runs in the archiver, the worker and backends, never in the postmaster:
/// an S3 destination starts threads on first use.
pub fn destination() -> Result<SharedDestination, String> {
    configured().map(|c| c.dest)
}

/// `destination()`, with its identity and request limit.
pub fn configured() -> Result<Configured, String> {
    let spec = resolve(&text(&ARCHIVE_DESTINATION), &text(&ARCHIVE_DIRECTORY))?
        .ok_or_else(|| "walarch.archive_destination is not set.".to_string())?;
    match spec {
        DestinationSpec::Directory(dir) => {
            // The directory itself, not only its name: a repointed link or
            // another filesystem mounted there is another archive.
            let behind = std::fs::metadata(&dir)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    format!("{}:{}", m.dev(), m.ino())
                })
                .unwrap_or_default();
            let id = DestinationId::of(&["directory", &dir.to_string_lossy(), &behind]);
            Ok(Configured {
                dest: Arc::new(LocalDirectory::new(dir, file_create_mode())),
                id,
                request_timeout: None,
            })
        }
        DestinationSpec::S3 { bucket, prefix } => {
            let settings = s3_settings(bucket, prefix)?;
            // What names the store, credentials aside: a rotated key is the
            // same archive.
            let id = DestinationId::of(&[
                "s3",
                settings.endpoint.as_deref().unwrap_or(""),
                &settings.region,
                &settings.bucket,
                &settings.prefix,
                if settings.virtual_hosted_style {
                    "host"
                } else {
                    "path"
                },
            ]);
            let request_timeout = Some(settings.timeout);
            // The key covers every setting, the secret included; it is a
            // hash, never shown.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{settings:?}").hash(&mut h);
            // And the certificates: a replaced (pinned) certificate takes
            // effect at the next reload, as a rotated key does.
            if let Some(ca) = &settings.ca_file {
                std::fs::read(ca).unwrap_or_default().hash(&mut h);
            }
            let key = h.finish();
            let mut cache = S3_CACHE.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, d)) = cache.as_ref() {
                if *k == key {
                    return Ok(Configured {
                        dest: Arc::clone(d),
                        id,
                        request_timeout,
                    });
                }
            }
            let d: SharedDestination =
                Arc::new(S3Destination::new(settings).map_err(|e| match e.detail {
                    Some(d) => format!("{}: {d}", e.message),
                    None => e.message,
                })?);
            *cache = Some((key, Arc::clone(&d)));
            Ok(Configured {
                dest: d,
                id,
                request_timeout,
            })
        }
        DestinationSpec::Azure { container, prefix } => {
            let mut s = AzureSettings::new(container);
            s.account = non_empty(&AZURE_ACCOUNT);
            s.endpoint = non_empty(&AZURE_ENDPOINT);
            if let Some(f) = non_empty(&AZURE_KEY_FILE) {
                s.access_key = Some(read_secret_file(&f, "account key")?);
            } else if let Some(f) = non_empty(&AZURE_SAS_FILE) {
                s.sas_token = Some(read_secret_file(&f, "SAS token")?);
            }
            s.common = cloud_settings(prefix);
            let id = DestinationId::of(&[
                "azure",
                s.endpoint.as_deref().unwrap_or(""),
                s.account.as_deref().unwrap_or(""),
                &s.container,
                &s.common.prefix,
            ]);
            cached_cloud(format!("{s:?}"), id, s.common.timeout, || {
                CloudDestination::azure(s)
            })
        }
        DestinationSpec::Gcs { bucket, prefix } => {
            let mut s = GcsSettings::new(bucket);
            s.endpoint = non_empty(&GCS_ENDPOINT);
            if let Some(f) = non_empty(&GCS_CREDENTIALS_FILE) {
                s.service_account_key = Some(read_secret_file(&f, "service account key")?);
            }
            s.common = cloud_settings(prefix);
            let id = DestinationId::of(&[
                "gcs",
                s.endpoint.as_deref().unwrap_or(""),
                &s.bucket,
                &s.common.prefix,
            ]);
            cached_cloud(format!("{s:?}"), id, s.common.timeout, || {
                CloudDestination::gcs(s)
            })
        }
    }
}

/// What Azure and GCS destinations share of the settings.
fn cloud_settings(prefix: String) -> CloudSettings {
    CloudSettings {
        prefix,
        timeout: Duration::from_millis(S3_REQUEST_TIMEOUT.get().max(1_000) as u64),
        ..Default::default()
    }
}

/// The Azure or GCS destination of the current settings, kept while they
/// (`settings`, secrets included: only its hash is kept) do not change.
fn cached_cloud(
    settings: String,
    id: DestinationId,
    timeout: Duration,
    build: impl FnOnce() -> Result<CloudDestination, walarch_core::support::error::ArchiveError>,
) -> Result<Configured, String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    settings.hash(&mut h);
    let key = h.finish();
    let mut cache = CLOUD_CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let dest = match cache.as_ref() {
        Some((k, d)) if *k == key => Arc::clone(d),
        _ => {
            let d: SharedDestination = Arc::new(build().map_err(|e| match e.detail {
                Some(d) => format!("{}: {d}", e.message),
                None => e.message,
            })?);
            *cache = Some((key, Arc::clone(&d)));
            d
        }
    };
    Ok(Configured {
        dest,
        id,
        request_timeout: Some(timeout),
    })
}

static CLOUD_CACHE: Mutex<Option<(u64, SharedDestination)>> = Mutex::new(None);

pub static AZURE_ACCOUNT: Setting = Setting::new(None);
pub static AZURE_ENDPOINT: Setting = Setting::new(None);
pub static AZURE_KEY_FILE: Setting = Setting::new(None);
pub static AZURE_SAS_FILE: Setting = Setting::new(None);
pub static GCS_ENDPOINT: Setting = Setting::new(None);
pub static GCS_CREDENTIALS_FILE: Setting = Setting::new(None);

/// Settings of Azure Blob Storage and Google Cloud Storage destinations.
/// Secrets only in files (PostgreSQL logs every changed setting's value at
/// reload), read at each use like walarch.s3_credentials_file.
pub fn define_cloud_settings() {
    // SAFETY: every hook below is #[pg_guard]ed and returns a value on every
    // path.
    unsafe {
        define_string(
            c"walarch.azure_account",
            c"Azure storage account of an az:// destination.",
            c"Empty: the server's AZURE_STORAGE_ACCOUNT_NAME.",
            &AZURE_ACCOUNT,
            Some(check_azure_account),
            None,
        );
        define_string(
            c"walarch.azure_endpoint",
            c"Blob service URL of the Azure account (http:// or https://), for Azurite or another cloud.",
            c"Empty: https://ACCOUNT.blob.core.windows.net. Azurite: http://127.0.0.1:10000/devstoreaccount1.",
            &AZURE_ENDPOINT,
            Some(check_s3_endpoint),
            None,
        );
        define_string(
            c"walarch.azure_key_file",
            c"File holding the Azure storage account key.",
            c"Empty: walarch.azure_sas_file, else the server's AZURE_STORAGE_ACCOUNT_KEY, workload identity or managed identity. The file must be private, as walarch.s3_credentials_file.",
            &AZURE_KEY_FILE,
            Some(check_azure_key_file),
            None,
        );
        define_string(
            c"walarch.azure_sas_file",
            c"File holding a SAS token for the Azure container (sv=...&sig=...).",
            c"Used when walarch.azure_key_file is empty. The token must allow read, add, create, write, delete and list. The file must be private, as walarch.s3_credentials_file.",
            &AZURE_SAS_FILE,
            Some(check_azure_sas_file),
            None,
        );
        define_string(
            c"walarch.gcs_endpoint",
            c"URL of the Google Cloud Storage service (http:// or https://).",
            c"Empty: the key file's gcs_base_url, else https://storage.googleapis.com.",
            &GCS_ENDPOINT,
            Some(check_s3_endpoint),
            None,
        );
        define_string(
            c"walarch.gcs_credentials_file",
            c"Service account key file (JSON) for a gs:// destination.",
            c"Empty: the server's GOOGLE_APPLICATION_CREDENTIALS, else application default credentials or the metadata server. The file must be private, as walarch.s3_credentials_file.",
            &GCS_CREDENTIALS_FILE,
            Some(check_gcs_credentials_file),
            None,
        );
    }
}

fn s3_settings(bucket: String, prefix: String) -> Result<S3Settings, String> {
    let mut s = S3Settings::new(bucket);
    s.prefix = prefix;
    s.endpoint = non_empty(&S3_ENDPOINT);
    s.region = non_empty(&S3_REGION).unwrap_or_else(|| "us-east-1".into());
    s.credential_options = CredentialOptions {
        file: non_empty(&S3_CREDENTIALS_FILE).map(Into::into),
        profile: non_empty(&S3_PROFILE),
    };
    s.ca_file = non_empty(&S3_CA_FILE).map(Into::into);
    s.sse = walarch_s3::wire::sse_from_settings(
        &text(&S3_SSE),
        non_empty(&S3_SSE_KMS_KEY_ID).as_deref(),
        non_empty(&S3_SSE_CUSTOMER_KEY_FILE).as_deref(),
    )?;
    s.storage_class = non_empty(&S3_STORAGE_CLASS);
    s.timeout = Duration::from_millis(S3_REQUEST_TIMEOUT.get().max(1_000) as u64);
    // The server's environment fills what the settings leave unset.
    s.complete(UriStyle::parse(&text(&S3_URI_STYLE)).unwrap_or(UriStyle::Auto));
    // The credentials file is read here, at each use: its keys are part of
    // the settings the cached client is keyed by, so a rotated key or a
    // changed profile makes a new client.
    s.choose_credentials()?;
    Ok(s)
}

/// PostgreSQL's file creation mode (common/file_perm.h): 0600, or 0640 with
/// group access (initdb -g).
fn file_create_mode() -> u32 {
    unsafe extern "C" {
        static pg_file_create_mode: std::ffi::c_int;
    }
    // SAFETY: a plain int the server set at start-up.
    unsafe { pg_file_create_mode as u32 }
}

/// Runs `validate` on a new string value; an empty value is always
/// accepted. On failure the text becomes the error's DETAIL.
///
/// # Safety
/// `newval` is what PostgreSQL passes to a string check hook.
unsafe fn check_with(
    newval: *mut *mut c_char,
    validate: impl Fn(&str) -> Result<(), String>,
) -> bool {
    // SAFETY: PostgreSQL passes a valid pointer to a C string (or NULL).
    let value = unsafe {
        if newval.is_null() || (*newval).is_null() {
            return true;
        }
        CStr::from_ptr(*newval).to_string_lossy()
    };
    if value.is_empty() {
        return true;
    }
    match validate(&value) {
        Ok(()) => true,
        Err(detail) => {
            let detail = CString::new(detail.replace('\0', "")).unwrap_or_default();
            // SAFETY: GUC_check_errdetail(): the GUC machinery prints and
            // frees the palloc'd copy.
            unsafe { pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr()) };
            false
        }
    }
}

macro_rules! check_hook {
    ($name:ident, $validate:expr) => {
        #[pg_guard]
        unsafe extern "C-unwind" fn $name(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            _source: pg_sys::GucSource::Type,
        ) -> bool {
            // SAFETY: a string check hook's arguments, passed on.
            unsafe { check_with(newval, $validate) }
        }
    };
}

check_hook!(check_archive_destination, DestinationSpec::check);
check_hook!(check_archive_directory, |v| {
    walarch_core::destination::archive_dir::validate(v).map_err(|p| p.detail().to_string())
});
check_hook!(check_s3_endpoint, check_endpoint);
check_hook!(check_s3_ca_file, check_ca_file);
check_hook!(check_s3_credentials_file, |v| read_credentials_file(v)
    .map(|_| ()));
check_hook!(check_s3_profile, |v: &str| {
    if v.contains(['[', ']', '\n']) || v.trim() != v {
        Err(format!("\"{v}\" is not a profile name."))
    } else {
        Ok(())
    }
});
check_hook!(check_s3_region, |v: &str| {
    if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        Ok(())
    } else {
        Err(format!("\"{v}\" is not a region name."))
    }
});
check_hook!(check_s3_sse, walarch_s3::wire::check_sse);
check_hook!(check_s3_sse_kms_key_id, walarch_s3::wire::check_kms_key_id);
check_hook!(check_s3_sse_customer_key_file, |v| {
    walarch_s3::wire::read_customer_key_file(v).map(|_| ())
});
check_hook!(
    check_s3_storage_class,
    walarch_s3::wire::check_storage_class
);
check_hook!(check_s3_uri_style, |v: &str| match UriStyle::parse(v) {
    Some(_) => Ok(()),
    None => Err("Use auto, path or host.".to_string()),
});

#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    #[name = c"off"]
    Off,
    #[name = c"zstd"]
    Zstd,
}

pub static COMPRESSION: GucSetting<Compression> = GucSetting::<Compression>::new(Compression::Off);
pub static COMPRESSION_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(DEFAULT_LEVEL);

/// zstd's level 1: on pgbench WAL it stores within a few percent of level 3
/// at about half the CPU (docs/benchmark-compression.md).
const DEFAULT_LEVEL: i32 = 1;

/// The zstd level new segments are stored with, or `None` to store them as
/// they are.
pub fn compression_level() -> Option<i32> {
    match COMPRESSION.get() {
        Compression::Off => None,
        Compression::Zstd => Some(COMPRESSION_LEVEL.get()),
    }
}

/// Whether, and to whom, new files are encrypted: the recipients file of
/// `walarch.encryption_recipients`, read at each use (a rotated key needs
/// no reload, and a file that cannot be used stops archiving instead of
/// archiving in plaintext).
pub fn sealing() -> Sealing {
    match non_empty(&ENCRYPTION_RECIPIENTS) {
        None => Sealing::Off,
        Some(path) => match Recipients::read_file(&path) {
            Ok(r) => Sealing::To(Arc::new(r)),
            Err(why) => Sealing::Broken(why),
        },
    }
}

/// The archive as the archiving side sees it: WAL files in every form, new
/// ones stored in the form the settings ask for.
pub fn archive_view(dest: &dyn Destination) -> Compressing<'_> {
    Compressing::new(dest, compression_level()).sealing(sealing())
}

/// `walarch.max_backlog`, in MB; 0 = off.
pub static MAX_BACKLOG: GucSetting<i32> = GucSetting::<i32>::new(0);

/// The budget in force, when `walarch.max_backlog` is set.
pub fn budget() -> Option<walarch_core::archiving::budget::Budget> {
    let mb = MAX_BACKLOG.get();
    // SAFETY: a plain int fixed at server start.
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    (mb > 0).then_some(walarch_core::archiving::budget::Budget {
        max_backlog: (mb as u64) << 20,
        segment_size,
    })
}

pub static COPY_AHEAD: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static PARALLEL_COPIES: GucSetting<i32> = GucSetting::<i32>::new(4);

/// The copy-ahead worker's settings (only meaningful when preloaded, but
/// defined everywhere so that SHOW and ALTER SYSTEM work in any process).
pub fn define_worker_settings() {
    GucRegistry::define_bool_guc(
        c"walarch.copy_ahead",
        c"Copies ready WAL files into the archive ahead of the archiver.",
        c"Needs walarch_ext in shared_preload_libraries. When off, the archiver's calls copy every file themselves.",
        &COPY_AHEAD,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"walarch.parallel_copies",
        c"How many WAL files the copy-ahead worker copies at once.",
        c"",
        &PARALLEL_COPIES,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"walarch.max_backlog",
        c"How much WAL may wait to be archived while the archive destination is failing, before the oldest is dropped; 0 keeps it all.",
        c"Dropped WAL files are reported archived without being stored (a WARNING per file, walarch_stats().dropped_count, a DROPPED marker in the archive): point-in-time recovery cannot pass them. History and backup files are never dropped, nor anything while the destination takes files.",
        &MAX_BACKLOG,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_enum_guc(
        c"walarch.compression",
        c"How new WAL segments are stored: off (as they are) or zstd (as WALFILE.zst).",
        c"Archived files of either form are recognised whatever the setting; history and backup files are always stored as they are.",
        &COMPRESSION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SAFETY: no hooks.
    unsafe {
        define_string(
            c"walarch.encryption_recipients",
            c"File of the age public keys (age1..., one per line) new WAL files and base backups are encrypted to; empty: not encrypted.",
            c"Encrypted files are stored as WALFILE.age or WALFILE.zst.age and read back only with a private key (walarch ... --identity-file), which the server never needs. Read at each use: if the file cannot be read or holds no public key, nothing is archived (a WARNING says why) until it is fixed.",
            &ENCRYPTION_RECIPIENTS,
            None,
            None,
        );
    }
    GucRegistry::define_int_guc(
        c"walarch.compression_level",
        c"The zstd level used when walarch.compression is zstd.",
        c"Negative levels are faster and compress less; above 3 costs much more CPU for little gain on WAL.",
        &COMPRESSION_LEVEL,
        -7,
        19,
        GucContext::Sighup,
        GucFlags::default(),
    );
}

// The checks of define_cloud_settings (after the macro).
check_hook!(check_azure_account, |v: &str| {
    if (3..=24).contains(&v.len())
        && v.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(format!(
            "\"{v}\" is not a storage account name: 3 to 24 lowercase letters and digits."
        ))
    }
});
check_hook!(check_azure_key_file, |v| read_secret_file(v, "account key")
    .map(|_| ()));
check_hook!(check_azure_sas_file, |v| read_secret_file(v, "SAS token")
    .map(|_| ()));
check_hook!(check_gcs_credentials_file, |v| read_secret_file(
    v,
    "service account key"
)
.map(|_| ()));
