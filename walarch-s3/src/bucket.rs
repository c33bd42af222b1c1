//! An S3 bucket (and prefix) as a `Destination`, through object_store.
//!
//! Layout: `PREFIX/NAME` holds the WAL file, with its SHA-256 (hex) in the
//! user metadata `x-amz-meta-sha256`, set by the create-only PUT that
//! stores it. `PREFIX/NAME.sha256` exists only once `write_record` has
//! replaced a record: `sha256sum` format (`HEX  NAME\n`), with the ETag of
//! the object it describes in `x-amz-meta-object-etag`. An encrypted form
//! also has the SHA-256 and length of the file before encryption in
//! `x-amz-meta-original` (`HEX LEN`), as the directory's record keeps them. S3 metadata cannot
//! be edited in place, and object_store 0.14's `copy`/`copy_opts` cannot
//! replace it (`CopyOptions` has only a mode; the copy request sends no
//! `x-amz-metadata-directive`), so the record is replaced by that sidecar
//! instead of a self-copy (which would also rewrite up to 1 GiB server-side
//! and change the object's ETag and date). `recorded` trusts the sidecar
//! when its ETag is the object's current one, else the metadata.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, RetryConfig,
};
use reqwest::header::{HeaderName, HeaderValue, IF_NONE_MATCH};

use walarch_core::destination::compressed::Original;
use walarch_core::destination::local_directory::parse_record;
use walarch_core::destination::{Destination, Entry, ObjectEntry, ObjectWriter, Recorded, Stored};
use walarch_core::support::error::{ArchiveError, ErrorKind};
use walarch_core::wal::checksum::{from_hex, sha256, to_hex, Hasher, Sha256Digest};
use walarch_core::wal::walname::stored_form;

use crate::credentials::{self, CredentialOptions, Source};
use crate::errors::{
    self as s3_error, classify, classify_reqwest, classify_status, Context, Failure, Naming,
};
use crate::objects::S3ObjectWriter;
use crate::runtime;
use crate::shared;
use crate::tls;
use crate::wire::{takes_storage_class, Sse};

/// User metadata key of the digest: `x-amz-meta-sha256`.
pub const META_SHA256: &str = "sha256";
/// User metadata key of an encrypted form's original: `HEX LEN`.
pub const META_ORIGINAL: &str = "original";
/// User metadata key, on a sidecar, of the ETag of the object it records.
pub const META_OBJECT_ETAG: &str = "object-etag";
pub const SIDECAR_SUFFIX: &str = ".sha256";

#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `http(s)://host:port`; `None` for AWS itself (from the region).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix without leading or trailing slash; may be empty.
    pub prefix: String,
    /// Keys given directly; when `None`, the credential chain decides
    /// (`choose_credentials`).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `https://BUCKET.host/key` instead of `https://host/BUCKET/key`. With
    /// an endpoint, the endpoint must then include the bucket.
    pub virtual_hosted_style: bool,
    /// PEM file of the CA(s) that sign the endpoint's certificate, trusted
    /// in addition to the system's.
    pub ca_file: Option<PathBuf>,
    /// Trust only `ca_file`, not the system's CAs.
    pub ca_only: bool,
    pub connect_timeout: Duration,
    /// Limit of each HTTP request (client timeout) and of each call.
    pub timeout: Duration,
    /// Files larger than this are uploaded in parts.
    pub multipart_threshold: u64,
    /// Part size of multipart uploads (S3: at least 5 MiB but the last).
    pub part_size: usize,
    /// object_store retries of a failed request (connect errors, 5xx, and,
    /// for idempotent requests, timeouts), within `timeout`.
    pub max_retries: usize,
    /// HEAD before storing, for stores that ignore `If-None-Match` (off
    /// only to test that the store itself refuses).
    pub head_before_put: bool,
    /// Whose settings these are: what the hints of errors name.
    pub naming: Naming,
    /// Server-side encryption of what is stored (and, for SSE-C, the key
    /// every read needs).
    pub sse: Sse,
    /// Storage class of segments and base backup tars (`wire::
    /// takes_storage_class`); `None`: the bucket's default.
    pub storage_class: Option<String>,
    /// `aws_session_token` that goes with the keys given directly.
    pub session_token: Option<String>,
    /// Where the credential chain starts: the credentials file and profile
    /// the settings or options name.
    pub credential_options: CredentialOptions,
    /// The chain's choice (`choose_credentials`); when `None` and no keys
    /// are given, `S3Destination::new` runs the chain on the process's
    /// environment.
    pub credentials: Option<Source>,
}

/// How the bucket is addressed: `walarch.s3_uri_style` and `--uri-style`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriStyle {
    /// Host style for AWS itself, path style for any other endpoint.
    Auto,
    /// `https://host/BUCKET/key`
    Path,
    /// `https://BUCKET.host/key`
    Host,
}

impl UriStyle {
    pub fn parse(s: &str) -> Option<UriStyle> {
        match s {
            "auto" => Some(UriStyle::Auto),
            "path" => Some(UriStyle::Path),
            "host" => Some(UriStyle::Host),
            _ => None,
        }
    }
}

impl S3Settings {
    /// Fills what the settings leave unset from the environment, then
    /// decides the URI style. The server and the command line both come
    /// here, so that an endpoint from `AWS_ENDPOINT_URL` makes `auto` path
    /// style on both sides.
    pub fn complete(&mut self, style: UriStyle) {
        self.complete_with(style, |k| std::env::var(k).ok());
    }

    fn complete_with(&mut self, style: UriStyle, var: impl Fn(&str) -> Option<String>) {
        self.fill_with(var);
        self.virtual_hosted_style = match style {
            UriStyle::Host => true,
            UriStyle::Path => false,
            UriStyle::Auto => self.endpoint.is_none(),
        };
    }

    /// Fills what the settings leave unset from the standard AWS
    /// environment: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
    /// `AWS_CA_BUNDLE`. (Credentials: `choose_credentials`.)
    fn fill_with(&mut self, var: impl Fn(&str) -> Option<String>) {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        if self.endpoint.is_none() {
            self.endpoint = var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL"));
        }
        if self.ca_file.is_none() {
            self.ca_file = var("AWS_CA_BUNDLE").map(PathBuf::from);
        }
    }

    /// Runs the credential chain on the process's environment, unless keys
    /// are given directly: reads the credentials file now, so that settings
    /// built again after a key rotation differ. The error is a DETAIL.
    pub fn choose_credentials(&mut self) -> Result<(), String> {
        self.choose_credentials_with(&|k| std::env::var(k).ok())
    }

    /// `choose_credentials` with the environment `var`.
    pub fn choose_credentials_with(
        &mut self,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        if self.access_key_id.is_none() && self.secret_access_key.is_none() {
            self.credentials = Some(credentials::choose(&self.credential_options, var)?);
        }
        Ok(())
    }

    /// Where the credentials come from, for messages (no secret).
    pub fn credentials_source(&self) -> String {
        match (&self.access_key_id, &self.credentials) {
            (Some(_), _) => "the keys given to the client".into(),
            (None, Some(s)) => s.describe(),
            (None, None) => "the credential chain".into(),
        }
    }

    pub fn new(bucket: impl Into<String>) -> Self {
        S3Settings {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            virtual_hosted_style: false,
            ca_file: None,
            ca_only: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            multipart_threshold: 16 << 20,
            part_size: 16 << 20,
            max_retries: 3,
            head_before_put: true,
            naming: Naming::Server,
            sse: Sse::None,
            storage_class: None,
            session_token: None,
            credential_options: CredentialOptions::default(),
            credentials: None,
        }
    }
}

/// Cheap to clone: the client and its connections are shared.
#[derive(Clone)]
pub struct S3Destination {
    store: Arc<AmazonS3>,
    /// For the one request object_store cannot send (create-only
    /// CompleteMultipartUpload): same TLS roots and timeouts.
    http: reqwest::Client,
    settings: S3Settings,
    endpoint_text: String,
    /// `S3Settings::credentials_source`, for messages.
    credentials_text: String,
}

fn config_error(message: String) -> ArchiveError {
    ArchiveError::new(ErrorKind::Configuration, message)
}

impl S3Destination {
    /// Builds the client; makes no request.
    pub fn new(mut settings: S3Settings) -> Result<Self, ArchiveError> {
        settings.prefix = settings.prefix.trim_matches('/').to_string();
        if settings.bucket.is_empty() {
            return Err(config_error("the bucket name is empty".into()));
        }
        if settings.part_size < 5 << 20 {
            return Err(config_error(
                "multipart part size must be at least 5 MiB".into(),
            ));
        }
        let endpoint_text = settings
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", settings.region));
        let allow_http = endpoint_text.starts_with("http://");

        let options = ClientOptions::new()
            .with_allow_http(allow_http)
            .with_timeout(settings.timeout)
            .with_connect_timeout(settings.connect_timeout);
        // Proxies: reqwest's own, from the environment, for both clients.
        let mut http = reqwest::Client::builder()
            // A redirect to another host would carry the headers (an SSE-C
            // key) there: only the same host's are followed.
            .redirect(crate::errors::same_host_redirects())
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .https_only(!allow_http);
        let mut connector = None;
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ArchiveError::io("read CA certificate file", ca, &e))?;
            let certs = tls::pem_certificates(&pem).map_err(|e| {
                config_error(format!(
                    "could not parse CA certificate file \"{}\": {}",
                    ca.display(),
                    e
                ))
            })?;
            if certs.is_empty() {
                return Err(config_error(format!(
                    "CA certificate file \"{}\" holds no certificate",
                    ca.display()
                )));
            }
            let config = tls::client_config(certs, settings.ca_only).map_err(|e| {
                config_error(format!(
                    "could not use CA certificate file \"{}\": {}",
                    ca.display(),
                    e
                ))
            })?;
            http = http.use_preconfigured_tls(config.clone());
            connector = Some(tls::Connector {
                tls: config,
                timeout: settings.timeout,
                connect_timeout: settings.connect_timeout,
            });
        }

        let credential_client_options = options.clone();
        let retry = RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
            },
            max_retries: settings.max_retries,
            retry_timeout: settings.timeout,
        };
        let mut b = AmazonS3Builder::new()
            .with_region(&settings.region)
            .with_bucket_name(&settings.bucket)
            .with_virtual_hosted_style_request(settings.virtual_hosted_style)
            .with_checksum_algorithm(Checksum::SHA256)
            // One plain DELETE per object: DeleteObjects (POST ?delete) is
            // missing from some S3-compatible stores.
            .with_disable_bulk_delete(true)
            .with_retry(retry.clone())
            .with_client_options(options);
        if let Some(ep) = &settings.endpoint {
            b = b.with_endpoint(ep);
        }
        if let Some(c) = connector.clone() {
            b = b.with_http_connector(c);
        }
        b = match &settings.sse {
            Sse::None => b,
            Sse::Aes256 => b.with_config(sse_type_key(), "AES256"),
            Sse::Kms { key_id } => match key_id {
                Some(k) => b.with_sse_kms_encryption(k),
                None => b.with_config(sse_type_key(), "aws:kms"),
            },
            Sse::Customer(key) => b.with_ssec_encryption(key.base64()),
        };
        // One provider for every request, the presigned completion
        // included, so refreshed credentials serve all of them.
        let source = match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(k), Some(sec)) => credentials::Source::Static {
                access_key_id: k.clone(),
                secret_access_key: sec.clone(),
                session_token: settings.session_token.clone(),
                origin: "the keys given to the client".into(),
            },
            (None, None) => match &settings.credentials {
                Some(src) => src.clone(),
                None => {
                    credentials::choose(&settings.credential_options, &|k| std::env::var(k).ok())
                        .map_err(config_error)?
                }
            },
            _ => {
                return Err(config_error(
                    "an access key ID and a secret access key go together".into(),
                ))
            }
        };
        if settings.credentials.is_none() && settings.access_key_id.is_none() {
            settings.credentials = Some(source.clone());
        }
        let provider = credentials::provider(
            &source,
            &settings.region,
            &credential_client_options,
            connector,
            &retry,
            settings.timeout,
        )
        .map_err(config_error)?;
        b = b.with_credentials(provider);
        let credentials_text = settings.credentials_source();
        let store = b.build().map_err(|e| {
            // Builder errors name settings, never their secret values.
            config_error(format!("invalid S3 settings: {e}"))
        })?;
        let http = http.build().map_err(|e| {
            config_error(format!(
                "could not build the HTTP client: {}",
                e.without_url()
            ))
        })?;
        Ok(S3Destination {
            store: Arc::new(store),
            http,
            settings,
            endpoint_text,
            credentials_text,
        })
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    pub(crate) fn store(&self) -> &Arc<AmazonS3> {
        &self.store
    }

    /// `walarch.s3_storage_class`, on the objects that take it.
    pub(crate) fn add_storage_class(&self, name: &str, attributes: &mut Attributes) {
        if let Some(class) = &self.settings.storage_class {
            if takes_storage_class(name) {
                attributes.insert(Attribute::StorageClass, class.clone().into());
            }
        }
    }

    pub(crate) fn key(&self, name: &str) -> ObjPath {
        if self.settings.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{}", self.settings.prefix, name))
        }
    }

    pub(crate) fn cx<'a>(&'a self, action: &'a str, location: &'a str) -> Context<'a> {
        Context {
            action,
            location,
            endpoint: &self.endpoint_text,
            bucket: &self.settings.bucket,
            timeout: self.settings.timeout,
            naming: self.settings.naming,
            credentials: &self.credentials_text,
        }
    }

    pub(crate) fn fail(&self, action: &str, name: Option<&str>, f: Failure) -> ArchiveError {
        let loc = match name {
            Some(n) => self.location(n),
            None => self.describe(),
        };
        sse_c_hint(
            s3_error::to_archive_error(f, &self.cx(action, &loc)),
            &self.settings,
        )
    }

    /// Runs `fut` with the call deadline; maps every failure.
    pub(crate) fn call<T, F>(
        &self,
        action: &str,
        name: Option<&str>,
        fut: F,
    ) -> Result<T, ArchiveError>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, Failure>> + Send + 'static,
    {
        self.call_within(self.settings.timeout, action, name, fut)
    }

    pub(crate) fn call_within<T, F>(
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
            Err(e) => {
                let loc = match name {
                    Some(n) => self.location(n),
                    None => self.describe(),
                };
                Err(s3_error::run_error(e, &self.cx(action, &loc)))
            }
        }
    }

    fn store_single(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        // One pass over the file: read it whole (it is sent from memory
        // anyway: object_store's PutPayload) and hash it.
        let mut data = Vec::new();
        File::open(source)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| ArchiveError::io("read file", source, &e))?;
        self.put_new(name, data)
    }

    /// One create-only PUT of `data`, checksummed.
    pub(crate) fn put_new(&self, name: &str, data: Vec<u8>) -> Result<Stored, ArchiveError> {
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
        let head_first = self.settings.head_before_put;
        let mut attributes = digest_attributes(&digest);
        if let Some(o) = original {
            add_original(&mut attributes, o);
        }
        self.add_storage_class(name, &mut attributes);
        self.call("store", Some(name), async move {
            // Some stores ignore If-None-Match: look first. The window left
            // on such a store is between this HEAD and the PUT.
            if head_first && exists(&store, &path).await? {
                return Ok(Stored::Exists);
            }
            let opts = PutOptions {
                mode: PutMode::Create,
                attributes,
                ..Default::default()
            };
            let payload = PutPayload::from(Bytes::from(data));
            match store.put_opts(&path, payload, opts).await {
                Ok(_) => Ok(Stored::Created {
                    bytes,
                    sha256: digest,
                    stored_bytes: bytes,
                }),
                Err(object_store::Error::AlreadyExists { .. }) => Ok(Stored::Exists),
                Err(e) => Err(object_failure(&store, &path, &e).await),
            }
        })
    }

    /// Multipart: hash the file (first pass), create the upload with the
    /// digest in its metadata, upload the parts (second pass, each part's
    /// SHA-256 sent and verified by the store, the whole hashed again and
    /// compared), then complete create-only.
    fn store_multipart(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let rd = |e: io::Error| ArchiveError::io("read file", source, &e);
        let (bytes, digest) = {
            let mut f = File::open(source).map_err(rd)?;
            let mut h = Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).map_err(rd)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k as u64;
            }
            (n, h.finish())
        };

        let store = Arc::clone(&self.store);
        let path = self.key(name);
        let upload_id = {
            let (store, path) = (Arc::clone(&store), path.clone());
            let head_first = self.settings.head_before_put;
            let mut attributes = digest_attributes(&digest);
            self.add_storage_class(name, &mut attributes);
            let created = self.call("store", Some(name), async move {
                if head_first && exists(&store, &path).await? {
                    return Ok(None);
                }
                let opts = PutMultipartOptions {
                    attributes,
                    ..Default::default()
                };
                store
                    .create_multipart_opts(&path, opts)
                    .await
                    .map(Some)
                    .map_err(|e| classify(&e))
            })?;
            match created {
                None => return Ok(Stored::Exists),
                Some(id) => id,
            }
        };

        let result =
            self.upload_parts_and_complete(name, source, &path, &upload_id, bytes, &digest);
        if !matches!(result, Ok(Stored::Created { .. })) {
            // Best effort; a crash here leaves an incomplete upload (not
            // visible as an object) for a lifecycle rule to expire.
            let (store, path, id) = (Arc::clone(&store), path.clone(), upload_id.clone());
            let _ = runtime::run(self.settings.timeout, async move {
                store.abort_multipart(&path, &id).await
            });
        }
        result
    }

    fn upload_parts_and_complete(
        &self,
        name: &str,
        source: &Path,
        path: &ObjPath,
        upload_id: &str,
        expected_len: u64,
        expected: &Sha256Digest,
    ) -> Result<Stored, ArchiveError> {
        let rd = |e: io::Error| ArchiveError::io("read file", source, &e);
        let mut f = File::open(source).map_err(rd)?;
        let mut h = Hasher::new();
        let mut total = 0u64;
        let mut parts: Vec<PartId> = Vec::new();
        // One part uploading while the next is read.
        let mut pending: Option<runtime::Pending<Result<PartId, Failure>>> = None;
        let mut idx = 0usize;
        loop {
            let mut buf = vec![0u8; self.settings.part_size];
            let mut filled = 0;
            while filled < buf.len() {
                let k = f.read(&mut buf[filled..]).map_err(rd)?;
                if k == 0 {
                    break;
                }
                filled += k;
            }
            buf.truncate(filled);
            if let Some(p) = pending.take() {
                parts.push(self.wait_part(name, p)?);
            }
            if filled == 0 && idx > 0 {
                break;
            }
            h.update(&buf);
            total += filled as u64;
            let (store, path, id) = (Arc::clone(&self.store), path.clone(), upload_id.to_string());
            let i = idx;
            let payload = PutPayload::from(Bytes::from(buf));
            pending = Some(
                runtime::spawn(self.settings.timeout, async move {
                    store
                        .put_part(&path, &id, i, payload)
                        .await
                        .map_err(|e| classify(&e))
                })
                .map_err(|e| {
                    let loc = self.location(name);
                    s3_error::run_error(e, &self.cx("store", &loc))
                })?,
            );
            idx += 1;
            if filled < self.settings.part_size {
                // Short read: the end (the next read would give 0).
                if let Some(p) = pending.take() {
                    parts.push(self.wait_part(name, p)?);
                }
                break;
            }
        }
        if total != expected_len || h.finish() != *expected {
            return Err(ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "could not store \"{}\": file \"{}\" changed while being archived",
                    self.location(name),
                    source.display()
                ),
            ));
        }
        self.complete_create_only(name, path, upload_id, parts, total, *expected)
    }

    pub(crate) fn wait_part(
        &self,
        name: &str,
        p: runtime::Pending<Result<PartId, Failure>>,
    ) -> Result<PartId, ArchiveError> {
        crate::objects::PartStore::wait_part(self, name, p)
    }

    /// CompleteMultipartUpload with `If-None-Match: *`. object_store 0.14
    /// completes uploads only with overwrite (`MultipartUpload::complete`,
    /// `MultipartStore::complete_multipart` both pass
    /// `CompleteMultipartMode::Overwrite`), so the request is presigned by
    /// object_store's `Signer` (the header signed too) and sent here.
    pub(crate) fn complete_create_only(
        &self,
        name: &str,
        path: &ObjPath,
        upload_id: &str,
        parts: Vec<PartId>,
        bytes: u64,
        digest: Sha256Digest,
    ) -> Result<Stored, ArchiveError> {
        let body = complete_body(&parts);
        let store = Arc::clone(&self.store);
        let http = self.http.clone();
        let (path, id) = (path.clone(), upload_id.to_string());
        let expires = self.settings.timeout + Duration::from_secs(60);
        // S3 wants the SSE-C key on the completion too when parts carry a
        // checksum (they do: SHA-256); signed, like every x-amz header.
        let sse_c = sse_c_headers(&self.settings.sse);
        self.call("store", Some(name), async move {
            let url = completion_url(&store, &path, &id, expires, &sse_c)
                .await
                .map_err(|e| classify(&e))?;
            let mut request = http.post(url).header(IF_NONE_MATCH, "*");
            for (k, v) in sse_c {
                request = request.header(k, v);
            }
            let resp = request.body(body).send().await.map_err(classify_reqwest)?;
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(classify_reqwest)?;
            match status {
                // S3 may answer 200 with an <Error> body.
                200 if !text.contains("<Error>") => Ok(Stored::Created {
                    bytes,
                    sha256: digest,
                    stored_bytes: bytes,
                }),
                412 => Ok(Stored::Exists),
                _ => Err(classify_status(status, Some(&text))),
            }
        })
    }
}

/// The presigned URL of the create-only completion, signed with the
/// store's credential provider's current credentials (and their session
/// token, `X-Amz-Security-Token`, which is part of the signed query).
async fn completion_url(
    store: &AmazonS3,
    path: &ObjPath,
    upload_id: &str,
    expires: Duration,
    signed: &[(HeaderName, HeaderValue)],
) -> Result<reqwest::Url, object_store::Error> {
    let mut opts = SignedUrlOptions::new()
        .with_query([("uploadId", upload_id)])
        .with_signed_header(IF_NONE_MATCH, HeaderValue::from_static("*"));
    for (k, v) in signed {
        opts = opts.with_signed_header(k.clone(), v.clone());
    }
    store
        .signed_url_opts(reqwest::Method::POST, path, expires, &opts)
        .await
}

impl S3Destination {
    /// A 403 for an object is looked at closer (`object_failure`).
    fn object_errors(&self) -> shared::ObjectError {
        let store = Arc::clone(&self.store);
        Arc::new(move |path, e| {
            let store = Arc::clone(&store);
            Box::pin(async move { object_failure(&store, &path, &e).await })
        })
    }
}

/// Whether `path` exists (HEAD).
pub(crate) async fn exists(store: &AmazonS3, path: &ObjPath) -> Result<bool, Failure> {
    match store.head(path).await {
        Ok(_) => Ok(true),
        Err(object_store::Error::NotFound { .. }) => Ok(false),
        Err(e) => Err(object_failure(store, path, &e).await),
    }
}

/// The failure of a request for the object at `path`. A 403 there (a HEAD
/// has no body to say more) is either refused credentials, an object the
/// credentials may not access, or, when they may not list the bucket, a
/// missing object (S3 answers 403 instead of 404 then): one LIST of the key
/// as a prefix tells which, so that the message says what to grant and a
/// missing file never reads as refused credentials.
pub(crate) async fn object_failure(
    store: &AmazonS3,
    path: &ObjPath,
    e: &object_store::Error,
) -> Failure {
    let f = classify(e);
    let (code, message) = match &f {
        Failure::Credentials { code, message } if code.is_empty() || code == "AccessDenied" => {
            (code.clone(), message.clone())
        }
        _ => return f,
    };
    let first = store.list(Some(path)).next().await;
    match first {
        None | Some(Ok(_)) => Failure::ObjectForbidden { code, message },
        Some(Err(le)) => match classify(&le) {
            Failure::Credentials { code: c, .. } if c.is_empty() || c == "AccessDenied" => {
                Failure::Unlisted { code, message }
            }
            // The listing says more (SignatureDoesNotMatch...).
            lf @ Failure::Credentials { .. } => lf,
            _ => f,
        },
    }
}

/// Says so when a refusal is about an SSE-C key: the store's answer to a
/// read without one (400, "… Customer provided keys must provide the
/// customer key", AWS: "… stored using a form of Server Side Encryption")
/// and, when a key is given, the 403 a store answers for another key.
fn sse_c_hint(mut e: ArchiveError, settings: &S3Settings) -> ArchiveError {
    let text = format!("{} {}", e.message, e.detail.as_deref().unwrap_or("")).to_ascii_lowercase();
    let option = match settings.naming {
        Naming::Server => "walarch.s3_sse = 'sse-c' and walarch.s3_sse_customer_key_file",
        Naming::CommandLine => "--sse-customer-key-file",
    };
    let needs_key = text.contains("server side encryption")
        || text.contains("server-side encryption")
        || text.contains("customer provided key")
        || text.contains("customer key");
    if needs_key && !matches!(settings.sse, Sse::Customer(_)) {
        e.kind = ErrorKind::Configuration;
        e.hint = Some(format!(
            "The object is stored with SSE-C (server-side encryption with a key of your own): \
             its key is needed ({option})."
        ));
    } else if matches!(settings.sse, Sse::Customer(_))
        && (needs_key || text.contains("accessdenied") || text.contains("denied access"))
    {
        let before = e.hint.take().map(|h| format!("{h} ")).unwrap_or_default();
        e.hint = Some(format!(
            "{before}Or the object was stored with another SSE-C key than the one given \
             ({option})."
        ));
    }
    e
}

/// object_store's key of the encryption type (its enum of encryption keys
/// is not exported; its name is).
fn sse_type_key() -> object_store::aws::AmazonS3ConfigKey {
    "aws_server_side_encryption"
        .parse()
        .expect("object_store knows aws_server_side_encryption")
}

/// The SSE-C headers (key and its MD5 marked sensitive: never logged).
fn sse_c_headers(sse: &Sse) -> Vec<(HeaderName, HeaderValue)> {
    let Sse::Customer(key) = sse else {
        return Vec::new();
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = b64.decode(key.base64()).unwrap_or_default();
    let md5 = {
        use md5::Digest as _;
        b64.encode(md5::Md5::digest(&raw))
    };
    let sensitive = |s: String| {
        let mut v = HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    };
    vec![
        (
            HeaderName::from_static("x-amz-server-side-encryption-customer-algorithm"),
            HeaderValue::from_static("AES256"),
        ),
        (
            HeaderName::from_static("x-amz-server-side-encryption-customer-key"),
            sensitive(key.base64().to_string()),
        ),
        (
            HeaderName::from_static("x-amz-server-side-encryption-customer-key-md5"),
            sensitive(md5),
        ),
    ]
}

pub(crate) fn digest_attributes(d: &Sha256Digest) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::Metadata(META_SHA256.into()), to_hex(d).into());
    a
}

/// An encrypted form's original, `HEX LEN`, beside its digest.
pub(crate) fn add_original(a: &mut Attributes, o: &Original) {
    a.insert(
        Attribute::Metadata(META_ORIGINAL.into()),
        format!("{} {}", to_hex(&o.sha256), o.len).into(),
    );
}

fn parse_original(v: &str) -> Option<Original> {
    let (hex, len) = v.split_once(' ')?;
    Some(Original {
        sha256: from_hex(hex)?,
        len: len.parse().ok()?,
    })
}

/// The part's ETag and checksum from object_store's `PartId`: with a
/// checksum algorithm configured its `content_id` is the XML
/// `<PartMetadata><e_tag>..</e_tag><checksum_sha256>..</checksum_sha256>`
/// (object_store's private `PartMetadata`), else the bare ETag.
fn part_fields(p: &PartId) -> (String, Option<String>) {
    let c = &p.content_id;
    if c.starts_with('<') {
        let etag = s3_error::xml_element(c, "e_tag").unwrap_or_default();
        let sum = s3_error::xml_element(c, "checksum_sha256");
        (etag, sum)
    } else {
        (c.clone(), None)
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) fn complete_body(parts: &[PartId]) -> String {
    let mut b = String::from("<CompleteMultipartUpload>");
    for (i, p) in parts.iter().enumerate() {
        let (etag, sum) = part_fields(p);
        b.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag>",
            i + 1,
            xml_escape(&etag)
        ));
        if let Some(s) = sum {
            b.push_str(&format!(
                "<ChecksumSHA256>{}</ChecksumSHA256>",
                xml_escape(&s)
            ));
        }
        b.push_str("</Part>");
    }
    b.push_str("</CompleteMultipartUpload>");
    b
}

/// The record of a stored object, from its HEAD (`head`, with metadata)
/// and its sidecar (ETag of the object it records, body) when there is one:
/// the sidecar when it records the object as it is now, else the metadata.
/// S3, Azure and GCS keep records alike.
pub(crate) fn recorded_from(
    head: &object_store::GetResult,
    sidecar: Option<(Option<String>, Bytes)>,
    name: &str,
) -> Recorded {
    match current_sidecar(head, sidecar, name) {
        Some(Some((d, _))) => return Recorded::Digest(d),
        Some(None) => return Recorded::Malformed,
        None => {}
    }
    match head
        .attributes
        .get(&Attribute::Metadata(META_SHA256.into()))
    {
        None => Recorded::Missing,
        Some(v) => match from_hex(v.as_ref()) {
            Some(d) => Recorded::Digest(d),
            None => Recorded::Malformed,
        },
    }
}

/// The original an encrypted form's record keeps, from the same sources as
/// `recorded_from`: a current sidecar without it (one `write_record`
/// replaced) gives `None`, never the metadata's older word.
pub(crate) fn original_from(
    head: &object_store::GetResult,
    sidecar: Option<(Option<String>, Bytes)>,
    name: &str,
) -> Option<Original> {
    match current_sidecar(head, sidecar, name) {
        Some(parsed) => parsed.and_then(|(_, o)| o),
        None => head
            .attributes
            .get(&Attribute::Metadata(META_ORIGINAL.into()))
            .and_then(|v| parse_original(v.as_ref())),
    }
}

/// The parsed sidecar when it records the object as it is now (`Some(None)`
/// when it does but is malformed); `None` when the metadata is the record.
fn current_sidecar(
    head: &object_store::GetResult,
    sidecar: Option<(Option<String>, Bytes)>,
    name: &str,
) -> Option<Option<(Sha256Digest, Option<Original>)>> {
    let (etag, body) = sidecar?;
    (etag.is_some() && etag == head.meta.e_tag).then(|| {
        std::str::from_utf8(&body)
            .ok()
            .and_then(|t| parse_record(t, name))
    })
}

/// The names directly under `prefix`, checksum records left out.
pub(crate) async fn list_entries(
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjPath>,
) -> Result<Vec<Entry>, Failure> {
    let r = store
        .list_with_delimiter(prefix.as_ref())
        .await
        .map_err(|e| classify(&e))?;
    Ok(r.objects
        .into_iter()
        .filter_map(|o| {
            let name = o.location.filename()?.to_string();
            (!name.ends_with(SIDECAR_SUFFIX)).then(|| Entry {
                name,
                stored_at: Some(o.last_modified.into()),
            })
        })
        .collect())
}

/// Hands the body of `r` to a reader over a bounded channel, from a task:
/// each chunk must come within `idle`, and a body that ends short is a
/// broken transfer. `store` names the store in messages.
pub(crate) fn read_stream(
    r: object_store::GetResult,
    idle: Duration,
    store: &'static str,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>> {
    let expected = r.meta.size;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut s = r.into_stream();
        let mut received = 0u64;
        loop {
            let item = match tokio::time::timeout(idle, s.next()).await {
                // A body that ends short is a broken transfer (to
                // be retried), not a corrupt object.
                Ok(None) if received < expected => Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("{store} read ended after {received} of {expected} bytes"),
                )),
                Ok(None) => break,
                Ok(Some(Ok(b))) => {
                    received += b.len() as u64;
                    Ok(b)
                }
                Ok(Some(Err(e))) => {
                    let f = classify(&e);
                    // A broken stream is transient: the reader's
                    // error kind says so (error::is_transient).
                    let kind = if f.is_transient() {
                        io::ErrorKind::ConnectionReset
                    } else {
                        io::ErrorKind::Other
                    };
                    Err(io::Error::new(
                        kind,
                        format!("{store} read failed: {}", describe_failure(&f)),
                    ))
                }
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{store} read stalled for {}", s3_error::fmt_duration(idle)),
                )),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break; // reader dropped, or error delivered
            }
        }
    });
    rx
}

/// `HEX  NAME` (sha256sum's format), as the directory's records.
#[cfg(test)]
fn parse_sidecar(text: &str, name: &str) -> Option<Sha256Digest> {
    parse_record(text, name).map(|(d, _)| d)
}

/// Streaming read: a task pulls the GET body and hands chunks over a
/// bounded channel (4 chunks: object_store yields hyper's frames, some KiB
/// to 1 MiB); each chunk must come within the timeout.
pub(crate) struct StreamReader {
    pub(crate) rx: tokio::sync::mpsc::Receiver<Result<Bytes, io::Error>>,
    pub(crate) cur: Bytes,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

impl Destination for S3Destination {
    fn describe(&self) -> String {
        if self.settings.prefix.is_empty() {
            format!("s3://{}", self.settings.bucket)
        } else {
            format!("s3://{}/{}", self.settings.bucket, self.settings.prefix)
        }
    }

    fn location(&self, name: &str) -> String {
        format!("{}/{}", self.describe(), name)
    }

    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let len = std::fs::metadata(source)
            .map_err(|e| ArchiveError::io("stat file", source, &e))?
            .len();
        if len <= self.settings.multipart_threshold {
            self.store_single(name, source)
        } else {
            self.store_multipart(name, source)
        }
    }

    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError> {
        // Compressed forms: at most about a segment (1 GB), within a single
        // PUT's 5 GB.
        self.put_new(name, data.to_vec())
    }

    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &Original,
    ) -> Result<Stored, ArchiveError> {
        self.put_new_with(name, data.to_vec(), Some(original))
    }

    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        let fut = shared::recorded(
            self.store.clone(),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            name.to_string(),
            META_OBJECT_ETAG,
            self.object_errors(),
        );
        self.call("read the checksum record of", Some(name), fut)
    }

    fn recorded_original(&self, name: &str) -> Result<Option<Original>, ArchiveError> {
        let fut = shared::recorded_original(
            self.store.clone(),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            name.to_string(),
            META_OBJECT_ETAG,
            self.object_errors(),
        );
        self.call("read the checksum record of", Some(name), fut)
    }

    fn write_record(&self, name: &str, sha256: &Sha256Digest) -> Result<(), ArchiveError> {
        let fut = shared::write_record(
            self.store.clone(),
            self.key(name),
            self.key(&format!("{name}{SIDECAR_SUFFIX}")),
            format!("{}  {}\n", to_hex(sha256), name),
            META_OBJECT_ETAG,
            self.object_errors(),
        );
        self.call("write the checksum record of", Some(name), fut)
    }

    fn make_durable(&self, _name: &str) -> Result<(), ArchiveError> {
        // An acknowledged PUT is durable in S3.
        Ok(())
    }

    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        let fut = shared::size(self.store.clone(), self.key(name), self.object_errors());
        self.call("stat", Some(name), fut)
    }

    /// One listing for the forms of a WAL file (`shared::sizes_of`).
    fn sizes_of(&self, names: &[String]) -> Result<Vec<Option<u64>>, ArchiveError> {
        let fut = shared::sizes_of(
            self.store.clone(),
            self.store.clone(),
            self.settings.prefix.clone(),
            names.iter().map(|n| self.key(n)).collect(),
            self.object_errors(),
        );
        let first = names.first().map(String::as_str);
        self.call("stat", first, fut)
    }

    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        let store = Arc::clone(&self.store);
        let path = self.key(name);
        let idle = self.settings.timeout;
        let rx = self.call("read", Some(name), async move {
            let r = match store.get(&path).await {
                Ok(r) => r,
                // Absent only when the store says there is no such key:
                // any 404 (a bucket gone, a wrong endpoint or URI style, a
                // proxy) reads as "not in the archive" to restore, which
                // ends archive recovery.
                Err(e @ object_store::Error::NotFound { .. }) => {
                    return match classify(&e) {
                        Failure::Status { code, .. } if code == "NoSuchKey" => Ok(None),
                        Failure::Status {
                            status: 404,
                            code,
                            message,
                        } if code.is_empty() => Err(Failure::Status {
                            status: 404,
                            code: "NotFound".into(),
                            message: if message.is_empty() {
                                "the store answered 404 without saying NoSuchKey; \
                                     check the endpoint, the bucket and the URI style"
                                    .into()
                            } else {
                                message
                            },
                        }),
                        f => Err(f),
                    };
                }
                Err(e) => return Err(object_failure(&store, &path, &e).await),
            };
            let rx = read_stream(r, idle, "S3");
            Ok(Some(rx))
        })?;
        Ok(rx.map(|rx| {
            Box::new(StreamReader {
                rx,
                cur: Bytes::new(),
            }) as Box<dyn Read + Send + '_>
        }))
    }

    fn is_empty(&self) -> Result<bool, ArchiveError> {
        let prefix =
            (!self.settings.prefix.is_empty()).then(|| ObjPath::from(self.settings.prefix.clone()));
        self.call("list", None, shared::is_empty(self.store.clone(), prefix))
    }

    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        let store = Arc::clone(&self.store);
        let prefix =
            (!self.settings.prefix.is_empty()).then(|| ObjPath::from(self.settings.prefix.clone()));
        // Listing many thousands of names takes several requests: allow
        // one timeout per 1000 (a page) on top.
        self.call_within(self.settings.timeout * 4, "list", None, async move {
            list_entries(store, prefix).await
        })
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
        let fut = shared::remove(self.store.clone(), self.key(name), Some(side));
        self.call("remove", Some(name), fut)
    }

    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        Ok(Box::new(S3ObjectWriter::new(self, self.key(name), name)))
    }

    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        self.objects_under_prefix(prefix)
    }

    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        // These objects have no checksum sidecar: one DELETE.
        self.delete_object(name)
    }
}

/// Short text of a failure for io::Error payloads.
pub(crate) fn describe_failure(f: &Failure) -> String {
    match f {
        Failure::Unreachable(c) => format!("endpoint unreachable: {c}"),
        Failure::Tls(c) => format!("TLS failure: {c}"),
        Failure::TimedOut(_) => "timed out".into(),
        Failure::Credentials { code, .. } => format!("credentials refused {code}"),
        Failure::NoSuchBucket => "no such bucket".into(),
        Failure::ObjectForbidden { code, .. } => format!("access to the object denied {code}"),
        Failure::Unlisted { code, .. } => {
            format!("403 {code}: missing, or not readable (s3:ListBucket not granted)")
        }
        Failure::Checksum { code, .. } => format!("checksum rejected {code}"),
        Failure::Status { status, code, .. } => format!("HTTP {status} {code}"),
        Failure::Transport(c) | Failure::Other(c) => c.clone(),
        Failure::NoCredentials { source, cause, .. } => {
            format!("could not get credentials from {source}: {cause}")
        }
    }
}

#[allow(dead_code)]
fn _assert_sync() {
    fn s<T: Sync + Send>() {}
    s::<S3Destination>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_style_is_decided_after_the_environment_fills_the_endpoint() {
        let env = |endpoint: Option<&'static str>| {
            move |k: &str| (k == "AWS_ENDPOINT_URL").then(|| endpoint.map(String::from))?
        };
        let decide = |set: Option<&str>, from_env: Option<&'static str>, style| {
            let mut s = S3Settings::new("b");
            s.endpoint = set.map(String::from);
            s.complete_with(style, env(from_env));
            (s.endpoint, s.virtual_hosted_style)
        };
        // AWS itself: host style.
        assert_eq!(decide(None, None, UriStyle::Auto), (None, true));
        // An endpoint from the environment is a custom endpoint: path style.
        assert_eq!(
            decide(None, Some("http://127.0.0.1:9000"), UriStyle::Auto),
            (Some("http://127.0.0.1:9000".into()), false)
        );
        assert_eq!(
            decide(Some("http://a:1"), Some("http://b:2"), UriStyle::Auto),
            (Some("http://a:1".into()), false)
        );
        // An empty variable is unset.
        assert_eq!(decide(None, Some(""), UriStyle::Auto), (None, true));
        // An explicit style wins either way.
        assert!(decide(None, Some("http://b:2"), UriStyle::Host).1);
        assert!(!decide(None, None, UriStyle::Path).1);
        assert_eq!(UriStyle::parse("auto"), Some(UriStyle::Auto));
        assert_eq!(UriStyle::parse("sideways"), None);
    }

    #[test]
    fn sse_c_headers_carry_key_and_md5_marked_sensitive() {
        assert!(sse_c_headers(&Sse::None).is_empty());
        assert!(sse_c_headers(&Sse::Aes256).is_empty());
        let h = sse_c_headers(&Sse::Customer(crate::CustomerKey::from_bytes(&[7; 32])));
        let get = |n: &str| h.iter().find(|(k, _)| k.as_str() == n).map(|(_, v)| v);
        assert_eq!(
            get("x-amz-server-side-encryption-customer-algorithm").unwrap(),
            "AES256"
        );
        let key = get("x-amz-server-side-encryption-customer-key").unwrap();
        assert_eq!(key, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=");
        assert!(key.is_sensitive());
        let md5 = get("x-amz-server-side-encryption-customer-key-md5").unwrap();
        assert_eq!(md5, "y4HAEFCYWuvAXWFTtA1Qpg==");
        assert!(md5.is_sensitive());
    }

    #[test]
    fn sse_c_refusals_say_so() {
        let refusal = |detail: &str| {
            ArchiveError::new(
                ErrorKind::Io,
                "could not read \"s3://b/x\": S3 store answered HTTP 400 (InvalidArgument)",
            )
            .with_detail(detail.to_string())
        };
        let mut s = S3Settings::new("b");
        let e = sse_c_hint(
            refusal("Requests specifying Server Side Encryption with Customer provided keys must provide the customer key."),
            &s,
        );
        assert_eq!(e.kind, ErrorKind::Configuration);
        assert!(e.hint.unwrap().contains("walarch.s3_sse_customer_key_file"));
        s.naming = Naming::CommandLine;
        let e = sse_c_hint(
            refusal("The object was stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve the object."),
            &s,
        );
        assert!(e.hint.unwrap().contains("--sse-customer-key-file"));
        // With a key: a 403 may be another key.
        s.sse = Sse::Customer(crate::CustomerKey::from_bytes(&[1; 32]));
        let denied = ArchiveError::new(
            ErrorKind::Configuration,
            "S3 store denied access to it (AccessDenied)",
        )
        .with_hint("Grant s3:GetObject.".to_string());
        let e = sse_c_hint(denied, &s);
        assert_eq!(
            e.hint.as_deref(),
            Some("Grant s3:GetObject. Or the object was stored with another SSE-C key than the one given (--sse-customer-key-file).")
        );
        // Anything else is left alone.
        let other = refusal("Something else.");
        assert_eq!(sse_c_hint(other, &S3Settings::new("b")).hint, None);
    }

    #[test]
    fn the_completion_is_signed_with_the_session_token() {
        let completion = |token: Option<&str>| {
            let mut s = S3Settings::new("wal");
            s.endpoint = Some("http://127.0.0.1:9".into());
            s.access_key_id = Some("AKIDEXAMPLE".into());
            s.secret_access_key = Some("secret".into());
            s.session_token = token.map(String::from);
            s.complete_with(UriStyle::Auto, |_| None);
            let d = S3Destination::new(s).unwrap();
            let store = Arc::clone(d.store());
            runtime::run(Duration::from_secs(10), async move {
                let path = ObjPath::from("p/x");
                completion_url(&store, &path, "up-1", Duration::from_secs(60), &[]).await
            })
            .unwrap()
            .unwrap()
        };
        let url = completion(Some("the/session+token="));
        let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let pos = |k: &str| q.iter().position(|(n, _)| n == k);
        let token = pos("X-Amz-Security-Token").expect("token in the query");
        assert_eq!(q[token].1, "the/session+token=");
        // SigV4 query signing covers every parameter before the signature,
        // and the If-None-Match header.
        assert!(token < pos("X-Amz-Signature").unwrap(), "{url}");
        let signed = &q[pos("X-Amz-SignedHeaders").unwrap()].1;
        assert!(signed.split(';').any(|h| h == "if-none-match"), "{signed}");
        assert!(q[pos("X-Amz-Credential").unwrap()]
            .1
            .starts_with("AKIDEXAMPLE/"));

        // Without a token, none is sent.
        let url = completion(None);
        assert!(
            !url.query().unwrap_or("").contains("X-Amz-Security-Token"),
            "{url}"
        );
    }

    #[test]
    fn sidecar_format() {
        let d = [0xabu8; 32];
        let t = format!("{}  000000010000000000000001\n", to_hex(&d));
        assert_eq!(parse_sidecar(&t, "000000010000000000000001"), Some(d));
        assert_eq!(parse_sidecar(&t, "000000010000000000000002"), None);
        assert_eq!(parse_sidecar("zz  x\n", "x"), None);
    }

    #[test]
    fn complete_body_from_part_ids() {
        let parts = vec![
            PartId {
                content_id: "<PartMetadata><e_tag>&quot;abc&quot;</e_tag><checksum_sha256>AAA=</checksum_sha256></PartMetadata>".into(),
            },
            PartId {
                content_id: "\"def\"".into(),
            },
        ];
        assert_eq!(
            complete_body(&parts),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;abc&quot;</ETag>\
             <ChecksumSHA256>AAA=</ChecksumSHA256></Part><Part><PartNumber>2</PartNumber>\
             <ETag>&quot;def&quot;</ETag></Part></CompleteMultipartUpload>"
        );
    }
}
