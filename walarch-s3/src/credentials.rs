//! The AWS credential chain, in the order of the AWS SDKs:
//!
//! 1. the credentials file named by `walarch.s3_credentials_file` /
//!    `--credentials-file`, its profile `walarch.s3_profile` / `--profile`
//!    (else `AWS_PROFILE`, else `default`), with `aws_session_token`;
//! 2. the environment: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+
//!    `AWS_SESSION_TOKEN`), then the shared credentials file
//!    (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`);
//! 3. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`: EKS IRSA);
//! 4. container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`: ECS;
//!    `AWS_CONTAINER_CREDENTIALS_FULL_URI` with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `..._TOKEN`: EKS Pod
//!    Identity);
//! 5. instance metadata (IMDSv2; `AWS_EC2_METADATA_SERVICE_ENDPOINT`,
//!    `AWS_EC2_METADATA_DISABLED`).
//!
//! `choose` decides (plain code over an environment lookup, so it is tested
//! without touching the process's environment); `provider` builds what
//! signs the requests. object_store's own providers serve web identity and
//! instance metadata (cached, refreshed 5 minutes before expiry); container
//! credentials have a provider here, because object_store 0.14 reads the
//! relative URI only from 169.254.170.2 and the full URI only with a token
//! file, and sends that file's text with its trailing newline. Every
//! failure to get credentials names the source tried, never a value.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential, AwsCredentialProvider};
use object_store::{ClientOptions, CredentialProvider, RetryConfig, StaticCredentialProvider};

use walarch_core::destination::destination_setting::{
    parse_profile, profile_problem_text, read_credentials_profile, Profile, ProfileProblem,
};
use walarch_core::support::error::os_message;

use crate::errors::{classify, Failure};

/// Where the chain starts: the settings or options that name a file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CredentialOptions {
    /// `walarch.s3_credentials_file` / `--credentials-file`.
    pub file: Option<PathBuf>,
    /// `walarch.s3_profile` / `--profile`: the profile of whichever
    /// credentials file is read. `None`: `AWS_PROFILE`, else `default`.
    pub profile: Option<String>,
}

/// How a container credentials endpoint wants to be authorised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContainerAuth {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: read at every fetch (it
    /// is rotated).
    File(PathBuf),
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    Value(String),
}

/// The chain's choice. `Debug` shows the keys of `Static`: the server
/// hashes it so that a rotated key makes a new client; never log it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
        /// Where they were read, for messages.
        origin: String,
    },
    WebIdentity {
        token_file: String,
        role_arn: String,
        session_name: Option<String>,
        /// `AWS_ENDPOINT_URL_STS`; object_store's default:
        /// `https://sts.REGION.amazonaws.com`. HTTPS only.
        sts_endpoint: Option<String>,
    },
    Container {
        url: String,
        auth: Option<ContainerAuth>,
    },
    InstanceMetadata {
        /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`; else 169.254.169.254.
        endpoint: Option<String>,
    },
}

const ECS_HOST: &str = "http://169.254.170.2";
const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// The sources in the order they are tried, for the message when none
/// gives credentials.
pub const CHAIN_TEXT: &str = "the credentials file (walarch.s3_credentials_file or --credentials-file), \
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, the shared credentials file (AWS_SHARED_CREDENTIALS_FILE \
or ~/.aws/credentials), web identity (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN), container \
credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or AWS_CONTAINER_CREDENTIALS_FULL_URI), \
instance metadata";

impl Source {
    /// What the credentials come from, without any secret.
    pub fn describe(&self) -> String {
        match self {
            Source::Static { origin, .. } => origin.clone(),
            Source::WebIdentity {
                token_file,
                role_arn,
                ..
            } => format!(
                "web identity (role \"{role_arn}\", token file \"{token_file}\", AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)"
            ),
            Source::Container { url, .. } => format!("container credentials at \"{url}\""),
            Source::InstanceMetadata { endpoint } => format!(
                "instance metadata at \"{}\"",
                endpoint.as_deref().unwrap_or(IMDS_ENDPOINT)
            ),
        }
    }
}

/// The profile to read: the setting or option, else `AWS_PROFILE`.
fn profile_of(opts: &CredentialOptions, var: &dyn Fn(&str) -> Option<String>) -> Profile {
    match opts.profile.clone().or_else(|| var("AWS_PROFILE")) {
        Some(name) => Profile {
            name,
            explicit: true,
        },
        None => Profile::default_profile(),
    }
}

/// The home directory of the process's user: `HOME`, else the password
/// database.
fn home_dir(var: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(h) = var("HOME") {
        return Some(PathBuf::from(h));
    }
    // SAFETY: getpwuid_r with a buffer of its size; the result points into
    // `buf` and is copied before it goes.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        );
        if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir)
            .to_string_lossy()
            .into_owned();
        (!dir.is_empty()).then(|| PathBuf::from(dir))
    }
}

/// Decides where the credentials come from. `var` is the environment
/// (unset and empty alike are `None`). Reads the credentials files now:
/// their keys are in the result. An error is a sentence for a DETAIL.
pub fn choose(
    opts: &CredentialOptions,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Source, String> {
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    let profile = profile_of(opts, &var);

    // 1. The file the settings name.
    if let Some(f) = &opts.file {
        let path = f.to_string_lossy();
        let keys = read_credentials_profile(&path, &profile)?;
        return Ok(Source::Static {
            access_key_id: keys.access_key_id,
            secret_access_key: keys.secret_access_key,
            session_token: keys.session_token,
            origin: format!("credentials file \"{path}\", profile \"{}\"", profile.name),
        });
    }

    // 2. The environment: keys, then the shared credentials file. A
    // profile named by a setting or an option skips the keys, as the AWS
    // CLI does for --profile (AWS_PROFILE does not).
    let keys = if opts.profile.is_some() {
        (None, None)
    } else {
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    };
    match keys {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(Source::Static {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
                origin: "the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)".into(),
            })
        }
        (Some(_), None) => {
            return Err(
                "AWS_ACCESS_KEY_ID is set in the environment but AWS_SECRET_ACCESS_KEY is not."
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "AWS_SECRET_ACCESS_KEY is set in the environment but AWS_ACCESS_KEY_ID is not."
                    .into(),
            )
        }
        (None, None) => {}
    }
    let (shared, named) = match var("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => (Some(PathBuf::from(p)), true),
        None => (home_dir(&var).map(|h| h.join(".aws/credentials")), false),
    };
    let mut read_one = false;
    if let Some(path) = shared {
        let shown = path.to_string_lossy().into_owned();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                read_one = true;
                // `default` strictly: another section of a file the process
                // happens to have is no credentials for this archive (the
                // first-section fallback is only for the file a setting
                // names).
                let strict = Profile {
                    explicit: true,
                    ..profile.clone()
                };
                match parse_profile(&text, &strict) {
                    Ok(keys) => {
                        return Ok(Source::Static {
                            access_key_id: keys.access_key_id,
                            secret_access_key: keys.secret_access_key,
                            session_token: keys.session_token,
                            origin: format!(
                                "shared credentials file \"{shown}\", profile \"{}\"",
                                profile.name
                            ),
                        })
                    }
                    // No default profile there: the chain goes on.
                    Err(ProfileProblem::NoSuchProfile) if !profile.explicit => {}
                    Err(p) => return Err(profile_problem_text(&shown, &profile, &p)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !named => {}
            Err(e) => {
                return Err(format!(
                    "Could not read the shared credentials file \"{shown}\"{}: {}.",
                    if named {
                        " (AWS_SHARED_CREDENTIALS_FILE)"
                    } else {
                        ""
                    },
                    os_message(&e)
                ))
            }
        }
    }
    if profile.explicit && !read_one {
        return Err(format!(
            "Profile \"{}\" is named (by walarch.s3_profile, --profile or AWS_PROFILE) but no credentials file was found to read it from.",
            profile.name
        ));
    }

    // 3. Web identity (EKS IRSA).
    match (var("AWS_WEB_IDENTITY_TOKEN_FILE"), var("AWS_ROLE_ARN")) {
        (Some(token_file), Some(role_arn)) => {
            return Ok(Source::WebIdentity {
                token_file,
                role_arn,
                session_name: var("AWS_ROLE_SESSION_NAME"),
                sts_endpoint: var("AWS_ENDPOINT_URL_STS"),
            })
        }
        (Some(_), None) => {
            return Err(
                "AWS_WEB_IDENTITY_TOKEN_FILE is set in the environment but AWS_ROLE_ARN is not."
                    .into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "AWS_ROLE_ARN is set in the environment but AWS_WEB_IDENTITY_TOKEN_FILE is not."
                    .into(),
            )
        }
        (None, None) => {}
    }

    // 4. Container credentials (ECS, EKS Pod Identity).
    let url = if let Some(rel) = var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
        if !rel.starts_with('/') {
            return Err(format!(
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \"{rel}\" does not start with \"/\"."
            ));
        }
        Some(format!("{ECS_HOST}{rel}"))
    } else if let Some(full) = var("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        check_container_url(&full)?;
        Some(full)
    } else {
        None
    };
    if let Some(url) = url {
        let auth = var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            .map(|f| ContainerAuth::File(PathBuf::from(f)))
            .or_else(|| var("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(ContainerAuth::Value));
        return Ok(Source::Container { url, auth });
    }

    // 5. Instance metadata.
    if var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Err(format!(
            "No credentials were found; tried {CHAIN_TEXT} (disabled by AWS_EC2_METADATA_DISABLED)."
        ));
    }
    Ok(Source::InstanceMetadata {
        endpoint: var("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
    })
}

/// As the AWS SDKs: a full URI over plain HTTP only to this machine or to
/// the link-local addresses of ECS and EKS Pod Identity, since the answer
/// holds credentials.
fn check_container_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("AWS_CONTAINER_CREDENTIALS_FULL_URI \"{url}\" is not an http:// or https:// URL.")
    })?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // "http://localhost@elsewhere/" goes elsewhere: no user part at all.
    if authority.contains('@') {
        return Err(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI names a user (user@host); a credentials endpoint takes none."
                .to_string(),
        );
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    let allowed = host == "localhost"
        || host == "169.254.170.2"
        || host == "169.254.170.23"
        || host.eq_ignore_ascii_case("fd00:ec2::23")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI \"{url}\" uses plain http to a host other than this machine or the ECS/EKS credentials addresses (169.254.170.2, 169.254.170.23, fd00:ec2::23): use https."
        ))
    }
}

/// A failure to get credentials: which source, what failed.
#[derive(Debug)]
pub(crate) struct CredentialsError {
    pub source_text: String,
    pub cause: String,
    pub transient: bool,
}

impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not get credentials from {}: {}",
            self.source_text, self.cause
        )
    }
}

impl StdError for CredentialsError {}

fn credentials_error(source_text: &str, cause: String, transient: bool) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: Box::new(CredentialsError {
            source_text: source_text.to_string(),
            cause,
            transient,
        }),
    }
}

/// An empty session token is none (some endpoints send `"Token": ""`).
fn normalized(c: Arc<AwsCredential>) -> Arc<AwsCredential> {
    if c.token.as_deref() == Some("") {
        Arc::new(AwsCredential {
            key_id: c.key_id.clone(),
            secret_key: c.secret_key.clone(),
            token: None,
        })
    } else {
        c
    }
}

/// One of object_store's providers, its failures named after the source.
#[derive(Debug)]
struct Labelled {
    what: String,
    inner: AwsCredentialProvider,
}

#[async_trait]
impl CredentialProvider for Labelled {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        match self.inner.get_credential().await {
            Ok(c) => Ok(normalized(c)),
            Err(e) => {
                let f = classify(&e);
                Err(credentials_error(
                    &self.what,
                    crate::bucket::describe_failure(&f),
                    f.is_transient(),
                ))
            }
        }
    }
}

/// Renew this long before the expiry (object_store's rule too).
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// Container credentials (ECS task role, EKS Pod Identity): fetched from
/// `url`, cached until `REFRESH_BEFORE` their expiry, then fetched again;
/// while a refresh fails the cached ones serve until they expire.
#[derive(Debug)]
pub(crate) struct ContainerProvider {
    url: String,
    auth: Option<ContainerAuth>,
    what: String,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<Option<(Arc<AwsCredential>, Option<Instant>)>>,
    /// The last failed renewal: the next is tried 30 s later at the
    /// earliest while the cached credentials serve.
    failed_at: std::sync::Mutex<Option<Instant>>,
}

impl ContainerProvider {
    fn new(url: String, auth: Option<ContainerAuth>, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            // The credentials endpoint is local: never through a proxy.
            .no_proxy()
            .build()
            .map_err(|e| format!("could not build the HTTP client: {}", e.without_url()))?;
        let what = format!("container credentials at \"{url}\"");
        Ok(ContainerProvider {
            url,
            auth,
            what,
            client,
            cache: tokio::sync::Mutex::new(None),
            failed_at: std::sync::Mutex::new(None),
        })
    }

    async fn fetch(&self) -> Result<(Arc<AwsCredential>, Option<Instant>), (String, bool)> {
        let mut req = self.client.get(&self.url);
        match &self.auth {
            Some(ContainerAuth::File(p)) => {
                let t = std::fs::read_to_string(p).map_err(|e| {
                    (
                        format!(
                            "could not read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \"{}\": {}",
                            p.display(),
                            os_message(&e)
                        ),
                        false,
                    )
                })?;
                req = req.header(reqwest::header::AUTHORIZATION, t.trim());
            }
            Some(ContainerAuth::Value(t)) => {
                req = req.header(reqwest::header::AUTHORIZATION, t.trim());
            }
            None => {}
        }
        let resp = req.send().await.map_err(|e| {
            let f = crate::errors::classify_reqwest(e);
            (crate::bucket::describe_failure(&f), f.is_transient())
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            let f = crate::errors::classify_reqwest(e);
            (crate::bucket::describe_failure(&f), f.is_transient())
        })?;
        if !status.is_success() {
            // An error answer holds no credentials: its text helps.
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(200).collect();
            return Err((
                format!(
                    "HTTP {status}{}",
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(": {text}")
                    }
                ),
                status.is_server_error() || status.as_u16() == 429,
            ));
        }
        parse_container_answer(&body).map_err(|m| (m, false))
    }
}

/// The JSON of a container (or instance) credentials endpoint:
/// `AccessKeyId`, `SecretAccessKey`, `Token`, `Expiration` (RFC 3339).
fn parse_container_answer(body: &[u8]) -> Result<(Arc<AwsCredential>, Option<Instant>), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not JSON ({})", e.classify_name()))?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (Some(key_id), Some(secret_key)) = (field("AccessKeyId"), field("SecretAccessKey")) else {
        return Err("the answer has no AccessKeyId and SecretAccessKey".into());
    };
    let expiry = match field("Expiration") {
        None => None,
        Some(t) => {
            let at = chrono::DateTime::parse_from_rfc3339(&t)
                .map_err(|_| format!("the answer's Expiration \"{t}\" is not an RFC 3339 time"))?;
            let left = (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
                .to_std()
                .unwrap_or_default();
            Some(Instant::now() + left)
        }
    };
    let cred = AwsCredential {
        key_id,
        secret_key,
        token: field("Token").filter(|t| !t.is_empty()),
    };
    Ok((Arc::new(cred), expiry))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected data",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[async_trait]
impl CredentialProvider for ContainerProvider {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        // One fetch at a time; the others wait for its result.
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        // Still valid for a while: a renewal that fails or hangs must not
        // hold up requests these can sign.
        let mut usable = false;
        if let Some((c, expiry)) = cache.as_ref() {
            if expiry.is_none_or(|e| e.saturating_duration_since(now) > REFRESH_BEFORE) {
                return Ok(Arc::clone(c));
            }
            usable = expiry.is_some_and(|e| e > now + Duration::from_secs(30));
            let failed_lately = self
                .failed_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(30));
            if usable && failed_lately {
                return Ok(Arc::clone(c));
            }
        }
        let fetched = if usable {
            tokio::time::timeout(Duration::from_secs(5), self.fetch())
                .await
                .unwrap_or_else(|_| Err(("no answer within 5 s".into(), true)))
        } else {
            self.fetch().await
        };
        if fetched.is_err() {
            *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        }
        match fetched {
            Ok((c, expiry)) => {
                *cache = Some((Arc::clone(&c), expiry));
                Ok(c)
            }
            Err((cause, transient)) => match cache.as_ref() {
                // Not expired yet: serve them while the endpoint recovers.
                Some((c, Some(e))) if *e > now + Duration::from_secs(10) => Ok(Arc::clone(c)),
                _ => Err(credentials_error(&self.what, cause, transient)),
            },
        }
    }
}

/// What signs the requests for `source`. `options` and `retry` are the
/// store's (its CA file and timeouts serve STS as well).
pub(crate) fn provider(
    source: &Source,
    region: &str,
    options: &ClientOptions,
    // The pinned/private CA client of `walarch.s3_ca_file`: STS behind a
    // private CA too.
    connector: Option<crate::tls::Connector>,
    retry: &RetryConfig,
    timeout: Duration,
) -> Result<AwsCredentialProvider, String> {
    // object_store builds its providers only inside a store: build one
    // with the source's settings and take its provider.
    let borrowed = |b: AmazonS3Builder| -> Result<AwsCredentialProvider, String> {
        let b = match connector.clone() {
            Some(c) => b.with_http_connector(c),
            None => b,
        };
        let store = b
            .with_bucket_name("credentials")
            .with_region(region)
            .with_client_options(options.clone())
            .with_retry(retry.clone())
            .build()
            .map_err(|e| format!("invalid credential settings: {e}"))?;
        Ok(Arc::clone(store.credentials()))
    };
    Ok(match source {
        Source::Static {
            access_key_id,
            secret_access_key,
            session_token,
            ..
        } => Arc::new(StaticCredentialProvider::new(AwsCredential {
            key_id: access_key_id.clone(),
            secret_key: secret_access_key.clone(),
            token: session_token.clone().filter(|t| !t.is_empty()),
        })),
        Source::WebIdentity {
            token_file,
            role_arn,
            session_name,
            sts_endpoint,
        } => {
            let mut b = AmazonS3Builder::new()
                .with_config(AmazonS3ConfigKey::WebIdentityTokenFile, token_file)
                .with_config(AmazonS3ConfigKey::RoleArn, role_arn);
            if let Some(n) = session_name {
                b = b.with_config(AmazonS3ConfigKey::RoleSessionName, n);
            }
            if let Some(e) = sts_endpoint {
                b = b.with_config(AmazonS3ConfigKey::StsEndpoint, e);
            }
            Arc::new(Labelled {
                what: source.describe(),
                inner: borrowed(b)?,
            })
        }
        Source::Container { url, auth } => {
            Arc::new(ContainerProvider::new(url.clone(), auth.clone(), timeout)?)
        }
        Source::InstanceMetadata { endpoint } => {
            let b = AmazonS3Builder::new()
                .with_metadata_endpoint(endpoint.as_deref().unwrap_or(IMDS_ENDPOINT));
            Arc::new(Labelled {
                what: source.describe(),
                inner: borrowed(b)?,
            })
        }
    })
}

/// The failure, when `e` is one of getting credentials.
pub(crate) fn credentials_failure(e: &(dyn StdError + 'static)) -> Option<Failure> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = cur {
        if let Some(c) = s.downcast_ref::<CredentialsError>() {
            return Some(Failure::NoCredentials {
                source: c.source_text.clone(),
                cause: c.cause.clone(),
                transient: c.transient,
            });
        }
        cur = s.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    fn private_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    const FILE: &str = "[default]\naws_access_key_id = DK\naws_secret_access_key = DS\n\
                        [prod]\naws_access_key_id = PK\naws_secret_access_key = PS\naws_session_token = PT\n";

    fn keys(s: &Source) -> (String, Option<String>) {
        match s {
            Source::Static {
                access_key_id,
                session_token,
                ..
            } => (access_key_id.clone(), session_token.clone()),
            other => panic!("not static: {other:?}"),
        }
    }

    #[test]
    fn the_chain_takes_the_first_source_configured() {
        let d = tempfile::tempdir().unwrap();
        let file = private_file(d.path(), "creds", FILE);
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        private_file(
            &home.join(".aws"),
            "credentials",
            "[default]\naws_access_key_id = HK\naws_secret_access_key = HS\n",
        );
        let h = home.to_str().unwrap();
        let nohome = d.path().join("nohome");
        let nh = nohome.to_str().unwrap();
        let with_file = |profile: Option<&str>| CredentialOptions {
            file: Some(file.clone()),
            profile: profile.map(String::from),
        };
        let none = CredentialOptions::default();
        let everything = [
            ("HOME", h),
            ("AWS_ACCESS_KEY_ID", "EK"),
            ("AWS_SECRET_ACCESS_KEY", "ES"),
            ("AWS_SESSION_TOKEN", "ET"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
        ];

        // 1. The named file wins over everything, with its profile.
        let s = choose(&with_file(None), &env(&everything)).unwrap();
        assert_eq!(keys(&s), ("DK".into(), None));
        assert!(
            s.describe().contains("profile \"default\""),
            "{}",
            s.describe()
        );
        let s = choose(&with_file(Some("prod")), &env(&everything)).unwrap();
        assert_eq!(keys(&s), ("PK".into(), Some("PT".into())));
        // AWS_PROFILE names the profile when the settings do not.
        let s = choose(&with_file(None), &env(&[("AWS_PROFILE", "prod")])).unwrap();
        assert_eq!(keys(&s), ("PK".into(), Some("PT".into())));
        let e = choose(&with_file(Some("nope")), &env(&[])).unwrap_err();
        assert!(
            e.contains("\"nope\"") && e.contains(file.to_str().unwrap()),
            "{e}"
        );

        // 2. The environment's keys, with the session token.
        let s = choose(&none, &env(&everything)).unwrap();
        assert_eq!(keys(&s), ("EK".into(), Some("ET".into())));
        assert!(s.describe().contains("environment"));
        let e = choose(&none, &env(&[("AWS_ACCESS_KEY_ID", "EK")])).unwrap_err();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY is not"), "{e}");
        // Empty is unset.
        let s = choose(
            &none,
            &env(&[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("HOME", h),
            ]),
        )
        .unwrap();
        assert_eq!(keys(&s), ("HK".into(), None));

        // A profile the settings name skips the environment's keys (as
        // the AWS CLI's --profile), for the shared file's profile.
        let named_profile = CredentialOptions {
            file: None,
            profile: Some("default".into()),
        };
        let s = choose(&named_profile, &env(&everything)).unwrap();
        assert_eq!(keys(&s), ("HK".into(), None));
        // Without [default], another section of ~/.aws/credentials is not
        // taken: the chain goes on (here to web identity).
        let other_home = d.path().join("other");
        std::fs::create_dir_all(other_home.join(".aws")).unwrap();
        private_file(
            &other_home.join(".aws"),
            "credentials",
            "[legacy]\naws_access_key_id = LK\naws_secret_access_key = LS\n",
        );
        let s = choose(
            &none,
            &env(&[
                ("HOME", other_home.to_str().unwrap()),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
                ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ]),
        )
        .unwrap();
        assert!(matches!(s, Source::WebIdentity { .. }), "{}", s.describe());

        // ... then the shared file: ~/.aws/credentials, or the one named.
        let rest = &everything[..1];
        let s = choose(&none, &env(rest)).unwrap();
        assert_eq!(keys(&s), ("HK".into(), None));
        assert!(
            s.describe().contains(".aws/credentials"),
            "{}",
            s.describe()
        );
        let named = [
            ("HOME", h),
            ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
            ("AWS_PROFILE", "prod"),
        ];
        assert_eq!(
            keys(&choose(&none, &env(&named)).unwrap()),
            ("PK".into(), Some("PT".into()))
        );
        let missing = [("AWS_SHARED_CREDENTIALS_FILE", "/no/such/credentials")];
        assert!(choose(&none, &env(&missing))
            .unwrap_err()
            .contains("AWS_SHARED_CREDENTIALS_FILE"));
        // A named profile must exist; the default one may not.
        let e = choose(&none, &env(&[("HOME", h), ("AWS_PROFILE", "other")])).unwrap_err();
        assert!(e.contains("\"other\""), "{e}");
        let e = choose(&none, &env(&[("HOME", nh), ("AWS_PROFILE", "other")])).unwrap_err();
        assert!(e.contains("no credentials file"), "{e}");

        // 3. Web identity, when no file gives keys.
        let later = [
            ("HOME", nh),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ROLE_SESSION_NAME", "walarch"),
            ("AWS_ENDPOINT_URL_STS", "https://sts.example"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:1/creds",
            ),
        ];
        assert_eq!(
            choose(&none, &env(&later)).unwrap(),
            Source::WebIdentity {
                token_file: "/var/run/token".into(),
                role_arn: "arn:aws:iam::1:role/r".into(),
                session_name: Some("walarch".into()),
                sts_endpoint: Some("https://sts.example".into()),
            }
        );
        let e = choose(
            &none,
            &env(&[("HOME", nh), ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]),
        )
        .unwrap_err();
        assert!(e.contains("AWS_ROLE_ARN is not"), "{e}");

        // 4. Container: the relative URI (ECS) first, else the full one.
        assert_eq!(
            choose(&none, &env(&[later[0], later[5], later[6]])).unwrap(),
            Source::Container {
                url: "http://169.254.170.2/v2/credentials/x".into(),
                auth: None
            }
        );
        let pod = [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials",
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                "/var/run/secrets/pods.eks.amazonaws.com/token",
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "ignored-when-the-file-is-set",
            ),
            ("HOME", nh),
        ];
        assert_eq!(
            choose(&none, &env(&pod)).unwrap(),
            Source::Container {
                url: "http://169.254.170.23/v1/credentials".into(),
                auth: Some(ContainerAuth::File(
                    "/var/run/secrets/pods.eks.amazonaws.com/token".into()
                ))
            }
        );
        let token = [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "tok"),
            ("HOME", nh),
        ];
        assert_eq!(
            choose(&none, &env(&token)).unwrap(),
            Source::Container {
                url: "http://127.0.0.1:9/creds".into(),
                auth: Some(ContainerAuth::Value("tok".into()))
            }
        );

        // 5. Instance metadata last, unless disabled.
        assert_eq!(
            choose(&none, &env(&[("HOME", nh)])).unwrap(),
            Source::InstanceMetadata { endpoint: None }
        );
        assert_eq!(
            choose(
                &none,
                &env(&[
                    ("HOME", nh),
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:5")
                ])
            )
            .unwrap(),
            Source::InstanceMetadata {
                endpoint: Some("http://127.0.0.1:5".into())
            }
        );
        let e = choose(
            &none,
            &env(&[("HOME", nh), ("AWS_EC2_METADATA_DISABLED", "true")]),
        )
        .unwrap_err();
        assert!(
            e.contains("No credentials were found") && e.contains("web identity"),
            "{e}"
        );
    }

    #[test]
    fn container_urls_over_http_stay_local() {
        for ok in [
            "https://creds.example/x",
            "http://127.0.0.1:8080/creds",
            "http://localhost/creds",
            "http://[::1]:9/c",
            "http://169.254.170.2/v2/credentials",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
        ] {
            assert_eq!(check_container_url(ok), Ok(()), "{ok}");
        }
        for bad in ["http://10.0.0.1/creds", "http://creds.example/x", "ftp://x"] {
            assert!(check_container_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn container_answers() {
        let (c, exp) = parse_container_answer(
            br#"{"AccessKeyId":"A","SecretAccessKey":"S","Token":"T","Expiration":"2999-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!((c.key_id.as_str(), c.token.as_deref()), ("A", Some("T")));
        assert!(exp.unwrap() > Instant::now() + Duration::from_secs(3600));
        let (c, exp) =
            parse_container_answer(br#"{"AccessKeyId":"A","SecretAccessKey":"S","Token":""}"#)
                .unwrap();
        assert_eq!((c.token.clone(), exp), (None, None));
        assert!(parse_container_answer(br#"{"AccessKeyId":"A"}"#)
            .unwrap_err()
            .contains("no AccessKeyId"));
        assert!(parse_container_answer(b"<html>")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_container_answer(
            br#"{"AccessKeyId":"A","SecretAccessKey":"S","Expiration":"soon"}"#
        )
        .unwrap_err()
        .contains("RFC 3339"));
    }
}
