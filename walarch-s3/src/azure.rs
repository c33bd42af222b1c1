//! An Azure Blob Storage container (and prefix) as a destination
//! (`az://CONTAINER/PREFIX`): the client, and the create-only completion
//! of a blob uploaded in blocks. The rest is cloud.rs.
//!
//! Create-only: Put Blob with `If-None-Match: *` (object_store's
//! `PutMode::Create`; Azure answers 412, Azurite 409, both mapped to
//! `AlreadyExists`). A blob larger than a part is uploaded as blocks (Put
//! Block, invisible until committed) and committed by Put Block List, which
//! object_store sends without a condition (it would replace an existing
//! blob): we send that request ourselves with `If-None-Match: *` and the
//! digest's `x-ms-meta-sha256`, authorized by a service SAS that
//! object_store signs for the blob (account key or Entra ID), by the SAS
//! token given, or by the Entra ID bearer token.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use object_store::azure::{AzureCredential, MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::multipart::PartId;
use object_store::path::Path as ObjPath;
use object_store::signer::Signer;
use reqwest::header::IF_NONE_MATCH;

use walarch_core::support::error::ArchiveError;
use walarch_core::wal::checksum::{to_hex, Sha256Digest};

use crate::cloud::{clients, config_error, Backend, CloudDestination, CloudSettings, Terms};
use crate::errors::{classify, classify_reqwest, classify_status, Failure};

/// The development account of Azurite (and the old storage emulator),
/// published by Microsoft.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

#[derive(Clone)]
pub struct AzureSettings {
    /// The storage account; `None`: `AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    pub container: String,
    /// The account's blob service URL; `None`:
    /// `https://ACCOUNT.blob.core.windows.net`. Azurite:
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    /// The account key (base64); with none, a SAS token, else object_store's
    /// chain from the environment (`AZURE_STORAGE_ACCOUNT_KEY`, workload
    /// identity, managed identity, ...).
    pub access_key: Option<String>,
    /// A SAS token (`sv=...&sig=...`).
    pub sas_token: Option<String>,
    pub common: CloudSettings,
}

/// The secrets only as digests: the server keys its client cache by this
/// text (a rotated key builds a new client), and it must never show them.
impl std::fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSettings")
            .field("account", &self.account)
            .field("container", &self.container)
            .field("endpoint", &self.endpoint)
            .field("access_key", &crate::cloud::secret_digest(&self.access_key))
            .field("sas_token", &crate::cloud::secret_digest(&self.sas_token))
            .field("common", &self.common)
            .finish()
    }
}

impl AzureSettings {
    pub fn new(container: impl Into<String>) -> Self {
        AzureSettings {
            account: None,
            container: container.into(),
            endpoint: None,
            access_key: None,
            sas_token: None,
            common: CloudSettings::default(),
        }
    }
}

static TERMS: Terms = Terms {
    scheme: "az",
    store: "Azure Blob Storage",
    container: "container",
    endpoint_hint: [
        "Check walarch.azure_endpoint and walarch.azure_account, and that the store is running and reachable.",
        "Check --endpoint (or AZURE_STORAGE_ENDPOINT) and --azure-account (or AZURE_STORAGE_ACCOUNT_NAME), and that the store is running and reachable.",
    ],
    credentials_hint: [
        "Check the key in walarch.azure_key_file or the token in walarch.azure_sas_file (or the server's AZURE_STORAGE_ACCOUNT_KEY, or its managed or workload identity's role on the container).",
        "Check --azure-key-file or --azure-sas-file (or AZURE_STORAGE_ACCOUNT_KEY, or the managed or workload identity's role on the container).",
    ],
    ca_hint: [
        "Check that the endpoint's certificate is signed by a CA the system trusts and names the endpoint's host.",
        "Check that the endpoint's certificate is signed by a CA in --ca-file (or the system's) and names the endpoint's host.",
    ],
    not_found_codes: &["BlobNotFound"],
    // Put Block List: at most 50,000 blocks of at most 4000 MiB.
    max_parts: (50_000, "A block blob has at most 50,000 blocks."),
    max_part_size: 4000 << 20,
    etag_key: "object_etag",
};

impl CloudDestination {
    /// Builds an Azure Blob Storage client; makes no request.
    pub fn azure(mut s: AzureSettings) -> Result<CloudDestination, ArchiveError> {
        s.common.prefix = s.common.prefix.trim_matches('/').to_string();
        if s.container.is_empty() {
            return Err(config_error("the container name is empty".into()));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let account = s
            .account
            .clone()
            .or_else(|| env("AZURE_STORAGE_ACCOUNT_NAME"))
            .or_else(|| env("AZURE_STORAGE_ACCOUNT"))
            .ok_or_else(|| {
                config_error(
                    "no Azure storage account: set walarch.azure_account (or --azure-account, or AZURE_STORAGE_ACCOUNT_NAME)"
                        .into(),
                )
            })?;
        let endpoint = s
            .endpoint
            .clone()
            .or_else(|| env("AZURE_STORAGE_ENDPOINT"))
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        if reqwest::Url::parse(&endpoint).map_or(true, |u| u.cannot_be_a_base()) {
            return Err(config_error(format!(
                "invalid Azure endpoint \"{endpoint}\""
            )));
        }
        let (options, retry, http) = clients(&s.common, &endpoint)?;
        // The environment first (AZURE_STORAGE_ACCOUNT_KEY, workload and
        // managed identity, ...), the settings over it.
        let mut b = MicrosoftAzureBuilder::from_env()
            .with_account(&account)
            .with_container_name(&s.container)
            .with_endpoint(endpoint.clone())
            .with_retry(retry)
            .with_client_options(options);
        if let Some(k) = &s.access_key {
            b = b.with_access_key(k);
        } else if let Some(t) = &s.sas_token {
            let pairs = object_store::azure::split_sas(t.trim().trim_start_matches('?'))
                .map_err(|_| config_error("the Azure SAS token is not a query string".into()))?;
            b = b.with_sas_authorization(pairs);
        }
        let store = Arc::new(b.build().map_err(|e| {
            // Builder errors name settings, never their secret values.
            config_error(format!("invalid Azure settings: {e}"))
        })?);
        Ok(CloudDestination {
            store: store.clone(),
            parts: store.clone(),
            backend: Backend::Azure(store),
            http,
            terms: &TERMS,
            container: s.container,
            endpoint,
            settings: s.common,
        })
    }
}

/// The Put Block List body committing `parts` in order.
fn block_list(parts: &[PartId]) -> String {
    let mut b = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    for p in parts {
        // object_store's block ids: its content_id, base64-encoded.
        let id = base64::engine::general_purpose::STANDARD.encode(&p.content_id);
        b.push_str(&format!("<Latest>{id}</Latest>"));
    }
    b.push_str("</BlockList>");
    b
}

/// Put Block List with `If-None-Match: *`: `Ok(true)` committed, `Ok(false)`
/// the name is taken (nothing changed).
pub(crate) async fn put_block_list_create_only(
    store: Arc<MicrosoftAzure>,
    http: reqwest::Client,
    blob_url: reqwest::Url,
    path: ObjPath,
    parts: Vec<PartId>,
    digest: Option<Sha256Digest>,
    timeout: Duration,
) -> Result<bool, Failure> {
    let credential = store
        .credentials()
        .get_credential()
        .await
        .map_err(|e| classify(&e))?;
    let mut bearer = None;
    let mut url = match credential.as_ref() {
        AzureCredential::SASToken(pairs) => {
            let mut u = blob_url;
            u.query_pairs_mut().extend_pairs(pairs.iter());
            u
        }
        AzureCredential::BearerToken(token) => {
            bearer = Some(token.clone());
            blob_url
        }
        // A service SAS for this blob, signed with the account key.
        AzureCredential::AccessKey(_) => store
            .signed_url(
                reqwest::Method::PUT,
                &path,
                timeout + Duration::from_secs(60),
            )
            .await
            .map_err(|e| classify(&e))?,
    };
    url.query_pairs_mut().append_pair("comp", "blocklist");
    let mut req = http
        .put(url)
        .header(IF_NONE_MATCH, "*")
        .header("x-ms-version", "2023-11-03")
        .header("content-type", "application/xml")
        .body(block_list(&parts));
    if let Some(d) = digest {
        req = req.header("x-ms-meta-sha256", to_hex(&d));
    }
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(classify_reqwest)?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(classify_reqwest)?;
    match status {
        200..=299 => Ok(true),
        // Azure answers 412 ConditionNotMet, Azurite 409 BlobAlreadyExists.
        412 | 409 => Ok(false),
        _ => Err(classify_status(status, Some(&text))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_list_names_object_stores_block_ids_in_order() {
        let parts = vec![
            PartId {
                content_id: "00000000000000000000000000000001".into(),
            },
            PartId {
                content_id: "ab".into(),
            },
        ];
        assert_eq!(
            block_list(&parts),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>\
             <Latest>MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDE=</Latest>\
             <Latest>YWI=</Latest></BlockList>"
        );
    }

    #[test]
    fn settings_name_no_secret_in_errors() {
        let mut s = AzureSettings::new("wal");
        s.account = Some("acct".into());
        s.access_key = Some("not base64 !!secret-value".into());
        let e = CloudDestination::azure(s)
            .err()
            .expect("a bad key is refused");
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }
}
