//! Azure Blob Storage and Google Cloud Storage as destinations, through
//! object_store, with the same layout and rules as an S3 bucket (bucket.rs):
//! `PREFIX/NAME` holds the file with its SHA-256 in the user metadata
//! `sha256` (`x-ms-meta-sha256`, `x-goog-meta-sha256`), set by the
//! create-only PUT that stores it (Azure: `If-None-Match: *`; GCS:
//! `x-goog-if-generation-match: 0`; object_store maps the refusal to
//! `AlreadyExists`); `PREFIX/NAME.sha256` only once `write_record` has
//! replaced a record. An encrypted form has its original's SHA-256 and
//! length in the metadata `original` (`HEX LEN`) too. Files larger than a part, and base backups, are
//! uploaded in parts (Azure: blocks; GCS: an XML API multipart upload) and
//! completed create-only by a request of our own (azure.rs, gcs.rs):
//! object_store completes uploads only with overwrite.
//!
//! What is store-specific (building the client, the completion, the names
//! in messages) is in azure.rs and gcs.rs.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::list::PaginatedListStore;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{
    Attributes, BackoffConfig, Certificate, ClientOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, RetryConfig,
};

use walarch_core::destination::compressed::Original;
use walarch_core::destination::{Destination, Entry, ObjectEntry, ObjectWriter, Recorded, Stored};
use walarch_core::support::error::{ArchiveError, ErrorKind};
use walarch_core::wal::checksum::{sha256, to_hex, Hasher, Sha256Digest};
use walarch_core::wal::walname::stored_form;

use crate::bucket::{
    add_original, digest_attributes, list_entries, read_stream, StreamReader, SIDECAR_SUFFIX,
};
use crate::errors::{self as s3_error, classify, Context, Failure, Naming};
use crate::objects::{list_objects_under, PartStore, PartsWriter};
use crate::runtime::{self, RunError};
use crate::shared::{self, plain_errors};

/// Settings every cloud store shares.
#[derive(Debug, Clone)]
pub struct CloudSettings {
    /// Key prefix without leading or trailing slash; may be empty.
    pub prefix: String,
    /// PEM file of CA(s) trusted for the endpoint, besides the system's.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Limit of each HTTP request and of each call.
    pub timeout: Duration,
    /// Files larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Size of each part (the last may be smaller).
    pub part_size: usize,
    pub max_retries: usize,
    /// Whose settings these are: what the hints of errors name.
    pub naming: Naming,
}

impl Default for CloudSettings {
    fn default() -> Self {
        CloudSettings {
            prefix: String::new(),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            multipart_threshold: 16 << 20,
            part_size: 16 << 20,
            max_retries: 3,
            naming: Naming::Server,
        }
    }
}

/// The words messages use for a store, and the settings (server) or
/// options (command line) its hints name.
#[derive(Debug)]
pub(crate) struct Terms {
    /// "az", "gs"
    pub scheme: &'static str,
    /// "Azure Blob Storage"
    pub store: &'static str,
    /// "container", "bucket"
    pub container: &'static str,
    pub endpoint_hint: [&'static str; 2],
    pub credentials_hint: [&'static str; 2],
    pub ca_hint: [&'static str; 2],
    /// The codes that say "no such object" (a 404 without one is another
    /// 404: a wrong endpoint, a proxy).
    pub not_found_codes: &'static [&'static str],
    /// Parts an object may have, and what the limit means.
    pub max_parts: (usize, &'static str),
    /// The largest part.
    pub max_part_size: usize,
    /// The metadata key, on a sidecar, of the ETag of the object it
    /// records (Azure's names must be C# identifiers: no hyphen).
    pub etag_key: &'static str,
}

/// The store behind a `CloudDestination`.
#[derive(Clone)]
pub(crate) enum Backend {
    Azure(Arc<object_store::azure::MicrosoftAzure>),
    Gcs(Arc<object_store::gcp::GoogleCloudStorage>),
}

/// Cheap to clone: the client and its connections are shared.
#[derive(Clone)]
pub struct CloudDestination {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) parts: Arc<dyn MultipartStore>,
    pub(crate) backend: Backend,
    /// For the create-only completion: same TLS roots and timeouts.
    pub(crate) http: reqwest::Client,
    pub(crate) terms: &'static Terms,
    pub(crate) container: String,
    /// The account or service URL, for messages and the completion.
    pub(crate) endpoint: String,
    pub(crate) settings: CloudSettings,
}

/// A secret as the start of its SHA-256: tells a rotated one apart,
/// shows nothing of it.
pub(crate) fn secret_digest(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|v| format!("sha256:{}…", &to_hex(&sha256(v.as_bytes()))[..16]))
}

pub(crate) fn config_error(message: String) -> ArchiveError {
    ArchiveError::new(ErrorKind::Configuration, message)
}

/// object_store client options and our own reqwest client, alike: timeouts,
/// plain HTTP only for an http:// endpoint, the CA file's certificates.
pub(crate) fn clients(
    settings: &CloudSettings,
    endpoint: &str,
) -> Result<(ClientOptions, RetryConfig, reqwest::Client), ArchiveError> {
    let allow_http = endpoint.starts_with("http://");
    let mut options = ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(settings.timeout)
        .with_connect_timeout(settings.connect_timeout);
    let mut http = reqwest::Client::builder()
        // A redirect to another host would carry the headers (an SSE-C
        // key) there: only the same host's are followed.
        .redirect(crate::errors::same_host_redirects())
        .timeout(settings.timeout)
        .connect_timeout(settings.connect_timeout)
        .https_only(!allow_http);
    if let Some(ca) = &settings.ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| ArchiveError::io("read CA certificate file", ca, &e))?;
        let bad = |e: String| {
            config_error(format!(
                "could not parse CA certificate file \"{}\": {e}",
                ca.display()
            ))
        };
        let certs = Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        let rcerts = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(e.without_url().to_string()))?;
        if certs.is_empty() {
            return Err(bad("it holds no certificate".into()));
        }
        for c in certs {
            options = options.with_root_certificate(c);
        }
        http = http.tls_certs_merge(rcerts);
    }
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: settings.max_retries,
        retry_timeout: settings.timeout,
    };
    let http = http.build().map_err(|e| {
        config_error(format!(
            "could not build the HTTP client: {}",
            e.without_url()
        ))
    })?;
    Ok((options, retry, http))
}

impl CloudDestination {
    pub(crate) fn key(&self, name: &str) -> ObjPath {
        if self.settings.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{}", self.settings.prefix, name))
        }
    }

    fn prefix_path(&self) -> Option<ObjPath> {
        (!self.settings.prefix.is_empty()).then(|| ObjPath::from(self.settings.prefix.clone()))
    }

    pub fn settings(&self) -> &CloudSettings {
        &self.settings
    }

    fn fail(&self, action: &str, name: Option<&str>, f: Failure) -> ArchiveError {
        let location = match name {
            Some(n) => self.location(n),
            None => self.describe(),
        };
        describe_failure(f, self, action, &location)
    }

    fn run_fail(&self, action: &str, name: Option<&str>, e: RunError) -> ArchiveError {
        match e {
            RunError::TimedOut(d) => self.fail(action, name, Failure::TimedOut(Some(d))),
            e => {
                let location = match name {
                    Some(n) => self.location(n),
                    None => self.describe(),
                };
                let cx = Context {
                    action,
                    location: &location,
                    endpoint: &self.endpoint,
                    bucket: &self.container,
                    timeout: self.settings.timeout,
                    naming: self.settings.naming,
                    credentials: "",
                };
                s3_error::run_error(e, &cx)
            }
        }
    }

    fn call<T, F>(&self, action: &str, name: Option<&str>, fut: F) -> Result<T, ArchiveError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    {
        self.call_within(self.settings.timeout, action, name, fut)
    }

    fn call_within<T, F>(
        &self,
        deadline: Duration,
        action: &str,
        name: Option<&str>,
        fut: F,
    ) -> Result<T, ArchiveError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    {
        match runtime::run(deadline, fut) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(f)) => Err(self.fail(action, name, f)),
            Err(e) => Err(self.run_fail(action, name, e)),
        }
    }

    /// One create-only PUT of `data`, with its digest in the metadata.
    fn put_new(&self, name: &str, data: Vec<u8>) -> Result<Stored, ArchiveError> {
        self.put_new_with(name, data, None)
    }

    /// `put_new`, with an encrypted form's original in the metadata.
    fn put_new_with(
        &self,
        name: &str,
        data: Vec<u8>,
        original: Option<&Original>,
    ) -> Result<Stored, ArchiveError> {
        let digest = sha256(&data);
        let bytes = data.len() as u64;
        let store = Arc::clone(&self.store);
        let path = self.key(name);
        let mut attributes = digest_attributes(&digest);
        if let Some(o) = original {
            add_original(&mut attributes, o);
        }
        self.call("store", Some(name), async move {
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            match store.put_opts(&path, Bytes::from(data).into(), opts).await {
                Ok(_) => Ok(Stored::Created {
                    bytes,
                    sha256: digest,
                    stored_bytes: bytes,
                }),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(Stored::Exists),
                Err(e) => Err(classify(&e)),
            }
        })
    }

    /// A large file in parts: hashed first (GCS takes the digest when the
    /// upload starts), hashed again while sent and compared, completed
    /// create-only with the digest recorded.
    fn store_in_parts(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let rd = |e: io::Error| ArchiveError::io("read file", source, &e);
        let digest = {
            let mut f = File::open(source).map_err(rd)?;
            let mut h = Hasher::new();
            io::copy(&mut f, &mut HashWrite(&mut h)).map_err(rd)?;
            h.finish()
        };
        let mut w = PartsWriter::with_digest(self, self.key(name), name, digest);
        let mut f = File::open(source).map_err(rd)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = f.read(&mut buf).map_err(rd)?;
            if k == 0 {
                break;
            }
            match w.write(&buf[..k]) {
                Ok(()) => {}
                // The name was found taken when the upload was to start.
                Err(e) if e.kind == ErrorKind::Conflict => return Ok(Stored::Exists),
                Err(e) => {
                    Box::new(w).abort();
                    return Err(e);
                }
            }
        }
        match w.finish_hashed(source) {
            Err(e) if e.kind == ErrorKind::Conflict => Ok(Stored::Exists),
            r => r,
        }
    }

    /// Reads back what was just created and compares it with what was
    /// sent: Azure and GCS check no checksum of an upload here (object_store
    /// sends none), and a file counts as archived only once the store holds
    /// its bytes. Other bytes there (created just now, by this upload) are
    /// removed, and the failure makes the archiver try again.
    fn read_back(&self, name: &str, stored: Stored) -> Result<Stored, ArchiveError> {
        let Stored::Created { bytes, sha256, .. } = &stored else {
            return Ok(stored);
        };
        let (bytes, sent) = (*bytes, *sha256);
        let store = Arc::clone(&self.store);
        let path = self.key(name);
        // The request timeout, and a minute per GiB to read it.
        let within = self.settings.timeout + Duration::from_secs(60 * (1 + (bytes >> 30)));
        let wrong = self.call_within(within, "verify", Some(name), async move {
            use futures_util::StreamExt;
            let mut body = store
                .get(&path)
                .await
                .map_err(|e| classify(&e))?
                .into_stream();
            let (mut h, mut n) = (Hasher::new(), 0u64);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| classify(&e))?;
                n += chunk.len() as u64;
                h.update(&chunk);
            }
            let got = h.finish();
            if n == bytes && got == sent {
                return Ok(None);
            }
            let _ = store.delete(&path).await;
            Ok(Some(format!("{n} bytes, SHA-256 {}", to_hex(&got))))
        })?;
        match wrong {
            None => Ok(stored),
            Some(held) => Err(ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "could not store \"{}\": read back, {} held other bytes than were sent",
                    self.location(name),
                    self.terms.store
                ),
            )
            .with_detail(format!(
                "Sent {bytes} bytes, SHA-256 {}; held {held}. The object was removed.",
                to_hex(&sent)
            ))
            .with_hint(
                "The archiver tries again; if this repeats, check the network path to the store.",
            )),
        }
    }

    /// Whether `path` exists (HEAD).
    async fn exists(store: &Arc<dyn ObjectStore>, path: &ObjPath) -> Result<bool, Failure> {
        match store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(classify(&e)),
        }
    }
}

struct HashWrite<'a>(&'a mut Hasher);

impl io::Write for HashWrite<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn pick(naming: Naming, two: [&'static str; 2]) -> &'static str {
    match naming {
        Naming::Server => two[0],
        Naming::CommandLine => two[1],
    }
}

/// The message for a classified failure of a cloud store: unavailable
/// (the archiver retries, restore retries), configuration (credentials,
/// TLS, a missing container), or another I/O failure.
fn describe_failure(
    f: Failure,
    d: &CloudDestination,
    action: &str,
    location: &str,
) -> ArchiveError {
    let t = d.terms;
    let head = format!("could not {action} \"{location}\"");
    let transient = f.is_transient();
    let mut e = match f {
        Failure::Unreachable(cause) => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "{head}: {} endpoint \"{}\" is unreachable",
                t.store, d.endpoint
            ),
        )
        .with_detail(cause)
        .with_hint(pick(d.settings.naming, t.endpoint_hint)),
        Failure::Tls(cause) => ArchiveError::new(
            ErrorKind::Configuration,
            format!("{head}: TLS connection to \"{}\" failed", d.endpoint),
        )
        .with_detail(cause)
        .with_hint(pick(d.settings.naming, t.ca_hint)),
        Failure::TimedOut(within) => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "{head}: {} endpoint \"{}\" did not answer within {}",
                t.store,
                d.endpoint,
                s3_error::fmt_duration(within.unwrap_or(d.settings.timeout))
            ),
        ),
        Failure::Credentials { code, message }
        | Failure::ObjectForbidden { code, message }
        | Failure::Unlisted { code, message } => ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{head}: {} refused the credentials{}",
                t.store,
                code_suffix(&code)
            ),
        )
        .with_detail(if message.is_empty() {
            "403 Forbidden".to_string()
        } else {
            message
        })
        .with_hint(pick(d.settings.naming, t.credentials_hint)),
        Failure::NoSuchBucket => ArchiveError::new(
            ErrorKind::Configuration,
            format!("{head}: {} \"{}\" does not exist", t.container, d.container),
        )
        .with_hint(format!(
            "Create the {} or correct the {}:// URL of the archive.",
            t.container, t.scheme
        )),
        Failure::Checksum { code, message } => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "{head}: {} rejected the upload's checksum{}",
                t.store,
                code_suffix(&code)
            ),
        )
        .with_detail(message),
        Failure::Status {
            status,
            code,
            message,
        } => {
            let e = ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "{head}: {} answered HTTP {status}{}",
                    t.store,
                    code_suffix(&code)
                ),
            );
            if message.is_empty() {
                e
            } else {
                e.with_detail(message)
            }
        }
        Failure::NoCredentials { source, cause, .. } => ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{head}: could not get {} credentials from {source}",
                t.store
            ),
        )
        .with_detail(cause)
        .with_hint(pick(d.settings.naming, t.credentials_hint)),
        Failure::Transport(cause) | Failure::Other(cause) => {
            ArchiveError::new(ErrorKind::Io, format!("{head}: {} request failed", t.store))
                .with_detail(cause)
        }
    };
    if transient {
        e.kind = ErrorKind::Unavailable;
    }
    e
}

fn code_suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" ({code})")
    }
}

impl PartStore for CloudDestination {
    fn part_size_at(&self, idx: usize) -> usize {
        crate::objects::part_size_at(self.settings.part_size, idx).min(self.terms.max_part_size)
    }

    fn max_parts(&self) -> (usize, &'static str) {
        self.terms.max_parts
    }

    fn begin_upload(
        &self,
        name: &str,
        path: &ObjPath,
        digest: Option<&Sha256Digest>,
    ) -> Result<Option<String>, ArchiveError> {
        let store = Arc::clone(&self.store);
        let parts = Arc::clone(&self.parts);
        let path = path.clone();
        // GCS records metadata when the upload starts; Azure when it is
        // completed (and refuses metadata here).
        let attributes = match (&self.backend, digest) {
            (Backend::Gcs(_), Some(d)) => digest_attributes(d),
            _ => Attributes::new(),
        };
        self.call("store", Some(name), async move {
            // A taken name is refused before any part is sent; the
            // completion is create-only all the same.
            if Self::exists(&store, &path).await? {
                return Ok(None);
            }
            let opts = object_store::PutMultipartOptions {
                attributes,
                ..Default::default()
            };
            parts
                .create_multipart_opts(&path, opts)
                .await
                .map(Some)
                .map_err(|e| classify(&e))
        })
    }

    fn parts_store(&self) -> Arc<dyn MultipartStore> {
        Arc::clone(&self.parts)
    }

    fn request_timeout(&self) -> Duration {
        self.settings.timeout
    }

    fn store_failed(&self, name: &str, f: Failure) -> ArchiveError {
        self.fail("store", Some(name), f)
    }

    fn run_failed(&self, name: &str, e: RunError) -> ArchiveError {
        self.run_fail("store", Some(name), e)
    }

    fn put_small(&self, name: &str, data: Vec<u8>) -> Result<Stored, ArchiveError> {
        self.put_new(name, data)
    }

    fn complete(
        &self,
        name: &str,
        path: &ObjPath,
        id: &str,
        parts: Vec<PartId>,
        total: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Stored, ArchiveError> {
        let created = match &self.backend {
            Backend::Azure(store) => {
                let fut = crate::azure::put_block_list_create_only(
                    Arc::clone(store),
                    self.http.clone(),
                    self.blob_url(path),
                    path.clone(),
                    parts,
                    digest,
                    self.settings.timeout,
                );
                self.call("store", Some(name), fut)?
            }
            Backend::Gcs(store) => {
                let fut = crate::gcs::complete_create_only(
                    Arc::clone(store),
                    self.http.clone(),
                    self.blob_url(path),
                    id.to_string(),
                    parts,
                );
                self.call("store", Some(name), fut)?
            }
        };
        Ok(if created {
            Stored::Created {
                bytes: total,
                sha256: digest.unwrap_or([0; 32]),
                stored_bytes: total,
            }
        } else {
            Stored::Exists
        })
    }
}

impl CloudDestination {
    /// The URL of the object at `path`: the endpoint, the container, the
    /// key's segments (each percent-encoded).
    pub(crate) fn blob_url(&self, path: &ObjPath) -> reqwest::Url {
        let mut url = reqwest::Url::parse(&self.endpoint).expect("checked when built");
        {
            let mut segs = url.path_segments_mut().expect("an http(s) URL");
            segs.pop_if_empty().push(&self.container);
            for p in path.parts() {
                segs.push(p.as_ref());
            }
        }
        url
    }
}

impl Destination for CloudDestination {
    fn describe(&self) -> String {
        if self.settings.prefix.is_empty() {
            format!("{}://{}", self.terms.scheme, self.container)
        } else {
            format!(
                "{}://{}/{}",
                self.terms.scheme, self.container, self.settings.prefix
            )
        }
    }

    fn location(&self, name: &str) -> String {
        format!("{}/{}", self.describe(), name)
    }

    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let len = std::fs::metadata(source)
            .map_err(|e| ArchiveError::io("stat file", source, &e))?
            .len();
        // GCS: one PUT whatever the size (up to 5 TiB): its XML multipart
        // completion replaces an existing object, preconditions or not.
        let stored = if len > self.settings.multipart_threshold
            && !matches!(self.backend, Backend::Gcs(_))
        {
            self.store_in_parts(name, source)?
        } else {
            let mut data = Vec::new();
            File::open(source)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| ArchiveError::io("read file", source, &e))?;
            self.put_new(name, data)?
        };
        self.read_back(name, stored)
    }

    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError> {
        let stored = self.put_new(name, data.to_vec())?;
        self.read_back(name, stored)
    }

    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &Original,
    ) -> Result<Stored, ArchiveError> {
        let stored = self.put_new_with(name, data.to_vec(), Some(original))?;
        self.read_back(name, stored)
    }

    fn recorded_original(&self, name: &str) -> Result<Option<Original>, ArchiveError> {
        let fut = shared::recorded_original(
            Arc::clone(&self.store),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            name.to_string(),
            self.terms.etag_key,
            plain_errors(),
        );
        self.call("read the checksum record of", Some(name), fut)
    }

    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        let fut = shared::recorded(
            Arc::clone(&self.store),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            name.to_string(),
            self.terms.etag_key,
            plain_errors(),
        );
        self.call("read the checksum record of", Some(name), fut)
    }

    fn write_record(&self, name: &str, sha256: &Sha256Digest) -> Result<(), ArchiveError> {
        let fut = shared::write_record(
            Arc::clone(&self.store),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            format!("{}  {}\n", to_hex(sha256), name),
            self.terms.etag_key,
            plain_errors(),
        );
        self.call("write the checksum record of", Some(name), fut)
    }

    fn make_durable(&self, _name: &str) -> Result<(), ArchiveError> {
        // An acknowledged PUT is durable in the store.
        Ok(())
    }

    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        let fut = shared::size(Arc::clone(&self.store), self.key(name), plain_errors());
        self.call("stat", Some(name), fut)
    }

    /// One listing for the forms of a WAL file (`shared::sizes_of`).
    fn sizes_of(&self, names: &[String]) -> Result<Vec<Option<u64>>, ArchiveError> {
        let lister: Arc<dyn PaginatedListStore> = match &self.backend {
            Backend::Azure(s) => Arc::clone(s) as _,
            Backend::Gcs(s) => Arc::clone(s) as _,
        };
        let fut = shared::sizes_of(
            lister,
            Arc::clone(&self.store),
            self.settings.prefix.clone(),
            names.iter().map(|n| self.key(n)).collect(),
            plain_errors(),
        );
        let first = names.first().map(String::as_str);
        self.call("stat", first, fut)
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        let store = Arc::clone(&self.store);
        let path = self.key(name);
        let idle = self.settings.timeout;
        let terms = self.terms;
        let rx = self.call("read", Some(name), async move {
            match store.get(&path).await {
                Ok(r) => Ok(Some(read_stream(r, idle, terms.store))),
                // Absent only when the store says there is no such object:
                // any other 404 (a container gone, a wrong endpoint, a
                // proxy) must not read as "not in the archive" to restore,
                // which ends archive recovery.
                Err(e @ object_store::Error::NotFound { .. }) => match classify(&e) {
                    Failure::Status { code, .. } if terms.not_found_codes.contains(&code.as_str()) => {
                        Ok(None)
                    }
                    Failure::Status {
                        status: 404,
                        code,
                        message,
                    } if code.is_empty() => Err(Failure::Status {
                        status: 404,
                        code: "NotFound".into(),
                        message: if message.is_empty() {
                            format!(
                                "the store answered 404 without saying {}; check the endpoint and the {}",
                                terms.not_found_codes[0], terms.container
                            )
                        } else {
                            message
                        },
                    }),
                    f => Err(f),
                },
                Err(e) => Err(classify(&e)),
            }
        })?;
        Ok(rx.map(|rx| {
            Box::new(StreamReader {
                rx,
                cur: Bytes::new(),
            }) as Box<dyn Read + Send + '_>
        }))
    }

    fn is_empty(&self) -> Result<bool, ArchiveError> {
        let fut = shared::is_empty(Arc::clone(&self.store), self.prefix_path());
        self.call("list", None, fut)
    }

    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        let fut = list_entries(Arc::clone(&self.store), self.prefix_path());
        self.call_within(self.settings.timeout * 4, "list", None, fut)
    }

    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| stored_form(n).is_some())
            .collect())
    }

    fn remove(&self, name: &str) -> Result<(), ArchiveError> {
        let side = self.key(&format!("{name}{SIDECAR_SUFFIX}"));
        let fut = shared::remove(Arc::clone(&self.store), self.key(name), Some(side));
        self.call("remove", Some(name), fut)
    }

    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        if matches!(self.backend, Backend::Gcs(_)) {
            // A base backup streams: it needs parts, and GCS's completion
            // of parts cannot refuse to replace an existing object.
            return Err(ArchiveError::new(
                ErrorKind::Configuration,
                format!(
                    "could not store \"{}\": base backups into gs:// archives are not supported",
                    self.location(name)
                ),
            )
            .with_detail("A base backup is uploaded in parts, and the completion of a GCS multipart upload replaces an object already there.")
            .with_hint("Keep base backups in an s3:// or az:// archive, or a directory, with pg_basebackup --target=walarch there."));
        }
        Ok(Box::new(PartsWriter::new(self, self.key(name), name)))
    }

    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        let fut = list_objects_under(Arc::clone(&self.store), &self.settings.prefix, prefix);
        self.call_within(self.settings.timeout * 4, "list", None, fut)
    }

    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        let fut = shared::remove(Arc::clone(&self.store), self.key(name), None);
        self.call("remove", Some(name), fut)
    }
}
