//! A Google Cloud Storage bucket (and prefix) as a destination
//! (`gs://BUCKET/PREFIX`): the client, and the create-only completion of a
//! multipart upload. The rest is cloud.rs.
//!
//! object_store talks to GCS through its XML API. Create-only: PUT with
//! `x-goog-if-generation-match: 0` (`PutMode::Create`; 412 mapped to
//! `AlreadyExists`). A file larger than a part is an XML API multipart
//! upload, whose metadata (the digest) is given when it starts; object_store
//! completes it without a condition, so we send the completion ourselves
//! with `x-goog-if-generation-match: 0` and the same bearer token.
//!
//! Not tested against a real store or emulator (see the README).

use std::sync::Arc;

use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::multipart::PartId;

use walarch_core::support::error::ArchiveError;

use crate::bucket::complete_body;
use crate::cloud::{clients, config_error, Backend, CloudDestination, CloudSettings, Terms};
use crate::errors::{classify, classify_reqwest, classify_status, Failure};

#[derive(Clone)]
pub struct GcsSettings {
    pub bucket: String,
    /// The service URL; `None`: the key file's `gcs_base_url`, else
    /// `https://storage.googleapis.com`.
    pub endpoint: Option<String>,
    /// The service account key (JSON text, read from a file); `None`:
    /// object_store's chain (`GOOGLE_SERVICE_ACCOUNT`,
    /// `GOOGLE_APPLICATION_CREDENTIALS`, application default credentials,
    /// the metadata server).
    pub service_account_key: Option<String>,
    pub common: CloudSettings,
}

/// The key only as a digest (see `AzureSettings`'s).
impl std::fmt::Debug for GcsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsSettings")
            .field("bucket", &self.bucket)
            .field("endpoint", &self.endpoint)
            .field(
                "service_account_key",
                &crate::cloud::secret_digest(&self.service_account_key),
            )
            .field("common", &self.common)
            .finish()
    }
}

impl GcsSettings {
    pub fn new(bucket: impl Into<String>) -> Self {
        GcsSettings {
            bucket: bucket.into(),
            endpoint: None,
            service_account_key: None,
            common: CloudSettings::default(),
        }
    }
}

static TERMS: Terms = Terms {
    scheme: "gs",
    store: "Google Cloud Storage",
    container: "bucket",
    endpoint_hint: [
        "Check walarch.gcs_endpoint and that the store is reachable.",
        "Check --endpoint and that the store is reachable.",
    ],
    credentials_hint: [
        "Check the key in walarch.gcs_credentials_file (or the server's GOOGLE_APPLICATION_CREDENTIALS, or its service account's role on the bucket).",
        "Check --gcs-credentials-file (or GOOGLE_APPLICATION_CREDENTIALS, or the service account's role on the bucket).",
    ],
    ca_hint: [
        "Check that the endpoint's certificate is signed by a CA the system trusts and names the endpoint's host.",
        "Check that the endpoint's certificate is signed by a CA in --ca-file (or the system's).",
    ],
    not_found_codes: &["NoSuchKey"],
    // The XML API's multipart limits are S3's.
    max_parts: (10_000, "An object in GCS is at most 5 TiB."),
    max_part_size: 5 << 30,
    etag_key: "object-etag",
};

impl CloudDestination {
    /// Builds a Google Cloud Storage client; makes no request.
    pub fn gcs(mut s: GcsSettings) -> Result<CloudDestination, ArchiveError> {
        s.common.prefix = s.common.prefix.trim_matches('/').to_string();
        if s.bucket.is_empty() {
            return Err(config_error("the bucket name is empty".into()));
        }
        let base_from_key = s.service_account_key.as_deref().and_then(|k| {
            // Only the URL: the key's other fields are secrets.
            let i = k.find("\"gcs_base_url\"")?;
            let rest = k[i + 14..].trim_start().strip_prefix(':')?.trim_start();
            let rest = rest.strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        });
        let endpoint = s
            .endpoint
            .clone()
            .or(base_from_key)
            .unwrap_or_else(|| "https://storage.googleapis.com".into());
        if reqwest::Url::parse(&endpoint).map_or(true, |u| u.cannot_be_a_base()) {
            return Err(config_error(format!("invalid GCS endpoint \"{endpoint}\"")));
        }
        let (options, retry, http) = clients(&s.common, &endpoint)?;
        let mut b = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name(&s.bucket)
            .with_base_url(&endpoint)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(k) = &s.service_account_key {
            b = b.with_service_account_key(k);
        }
        let store = Arc::new(b.build().map_err(|e| {
            config_error(format!(
                "invalid GCS settings: {}",
                first_line(&e.to_string())
            ))
        })?);
        Ok(CloudDestination {
            store: store.clone(),
            parts: store.clone(),
            backend: Backend::Gcs(store),
            http,
            terms: &TERMS,
            container: s.bucket,
            endpoint,
            settings: s.common,
        })
    }
}

/// An error's first line only: a key file's parse error may quote it.
fn first_line(t: &str) -> &str {
    t.lines().next().unwrap_or("")
}

/// Completes a multipart upload with `x-goog-if-generation-match: 0`:
/// `Ok(true)` stored, `Ok(false)` the name is taken (nothing changed).
pub(crate) async fn complete_create_only(
    store: Arc<GoogleCloudStorage>,
    http: reqwest::Client,
    mut url: reqwest::Url,
    upload_id: String,
    parts: Vec<PartId>,
) -> Result<bool, Failure> {
    let credential = store
        .credentials()
        .get_credential()
        .await
        .map_err(|e| classify(&e))?;
    url.query_pairs_mut().append_pair("uploadId", &upload_id);
    let mut req = http
        .post(url)
        .header("x-goog-if-generation-match", "0")
        .body(complete_body(&parts));
    if !credential.bearer.is_empty() {
        req = req.bearer_auth(&credential.bearer);
    }
    let resp = req.send().await.map_err(classify_reqwest)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(classify_reqwest)?;
    match status {
        200 if !text.contains("<Error>") => Ok(true),
        412 => Ok(false),
        _ => Err(classify_status(status, Some(&text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walarch_core::destination::Destination;
    use walarch_core::support::error::ErrorKind;

    fn dead_port() -> u16 {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn the_key_file_names_the_endpoint_and_a_dead_one_is_unavailable() {
        let port = dead_port();
        let key = format!(
            r#"{{"private_key": "secret-value", "private_key_id": "k", "client_email": "e",
                "disable_oauth": true, "gcs_base_url": "http://127.0.0.1:{port}"}}"#
        );
        let mut s = GcsSettings::new("wal");
        s.service_account_key = Some(key);
        s.common.prefix = "/c1/wal/".into();
        s.common.timeout = std::time::Duration::from_secs(3);
        s.common.max_retries = 0;
        let d = CloudDestination::gcs(s).unwrap();
        assert_eq!(d.describe(), "gs://wal/c1/wal");
        assert_eq!(d.endpoint, format!("http://127.0.0.1:{port}"));
        assert_eq!(
            d.blob_url(&d.key("backups/L/a b")).as_str(),
            format!("http://127.0.0.1:{port}/wal/c1/wal/backups/L/a%20b")
        );
        let e = d.size("000000010000000000000001").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
        assert!(e.message.contains("Google Cloud Storage endpoint"), "{e}");
        assert!(!format!("{e}").contains("secret-value"));
    }
}
