//! object_store errors turned into PostgreSQL-style messages that say which
//! failure it was.
//!
//! Where the information is: `object_store::Error::{Generic, NotFound,
//! PermissionDenied, Unauthenticated, Precondition, ...}` carry a boxed
//! `source` chain that holds, for every HTTP request, object_store's
//! `RetryError`. It has `status()` and `body()` (the S3 error XML with
//! `<Code>` and `<Message>`; HEAD answers have no body), but in 0.14 it is
//! declared in the private module `client::retry`, so it cannot be
//! downcast to from outside: status and body are parsed from its Display,
//! which embeds both. Below it, for failures without an HTTP answer, is the
//! public `object_store::client::HttpError`, whose `kind()` says Connect /
//! Timeout / Request / Interrupted / Decode / Unknown, with the reqwest ->
//! hyper -> io / rustls error as its `source()` chain.
//!
//! Secrets: messages are built from the setting names, the endpoint URL, the
//! S3 code and message and the innermost transport error, never from the
//! top-level Display of an object_store or reqwest error (they include the
//! request URL, which for a presigned request carries a signature).

use std::error::Error as StdError;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};

use crate::runtime::RunError;
use walarch_core::support::error::{os_message, strip_os_error, ArchiveError, ErrorKind};

/// What went wrong, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, DNS, connect timeout, network unreachable.
    Unreachable(String),
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    Tls(String),
    /// The deadline of the call, or the client's request timeout, passed.
    TimedOut(Option<Duration>),
    /// 401/403, or an S3 code about the credentials.
    Credentials {
        code: String,
        message: String,
    },
    NoSuchBucket,
    /// 403 for an object while the credentials may list the bucket: they
    /// may not read (or write) that object.
    ObjectForbidden {
        code: String,
        message: String,
    },
    /// 403 for an object, and listing the bucket is refused too: S3 answers
    /// 403 instead of 404 for a missing key when the credentials lack
    /// s3:ListBucket, so the object may as well not exist.
    Unlisted {
        code: String,
        message: String,
    },
    /// The store rejected the upload's checksum.
    Checksum {
        code: String,
        message: String,
    },
    /// Any other answer of the store.
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// A request that failed on the way without an HTTP answer (connection
    /// reset, broken body): transient, like `Unreachable`.
    Transport(String),
    Other(String),
    /// No credentials to sign with: the chain's source (`source`, never a
    /// value) failed.
    NoCredentials {
        source: String,
        cause: String,
        transient: bool,
    },
}

impl Failure {
    /// Worth trying again: the store did not answer, or answered that it
    /// cannot serve now (5xx, throttling).
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Unreachable(_) | Failure::TimedOut(_) | Failure::Transport(_) => true,
            Failure::NoCredentials { transient, .. } => *transient,
            Failure::Status { status, code, .. } => {
                *status >= 500
                    || *status == 429
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "ServiceUnavailable" | "InternalError"
                    )
            }
            _ => false,
        }
    }
}

/// The text of a simple XML element, e.g. `<Code>` of an S3 error body.
pub fn xml_element(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&close)?;
    Some(
        body[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

const CREDENTIAL_CODES: &[&str] = &[
    "AccessDenied",
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "RequestTimeTooSkewed",
    // Azure Blob Storage's.
    "AuthenticationFailed",
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "InvalidAuthenticationInfo",
    "NoAuthenticationInformation",
    "InsufficientAccountPermissions",
];

const CHECKSUM_CODES: &[&str] = &[
    "BadDigest",
    "XAmzContentChecksumMismatch",
    "XAmzContentSHA256Mismatch",
    "InvalidDigest",
    "InvalidChecksum",
    // Azure Blob Storage's.
    "Md5Mismatch",
    "Crc64Mismatch",
];

/// Classifies an HTTP status and S3 error body.
pub fn classify_status(status: u16, body: Option<&str>) -> Failure {
    let code = body
        .and_then(|b| xml_element(b, "Code"))
        .unwrap_or_default();
    let message = body
        .and_then(|b| xml_element(b, "Message"))
        .unwrap_or_default();
    // S3's and GCS's; Azure's container.
    if code == "NoSuchBucket" || code == "ContainerNotFound" {
        return Failure::NoSuchBucket;
    }
    if CREDENTIAL_CODES.contains(&code.as_str())
        || (code.is_empty() && (status == 401 || status == 403))
    {
        return Failure::Credentials { code, message };
    }
    let lower = message.to_ascii_lowercase();
    if CHECKSUM_CODES.contains(&code.as_str())
        || (code == "InvalidRequest" && (lower.contains("checksum") || lower.contains("digest")))
    {
        return Failure::Checksum { code, message };
    }
    if status == 408 || code == "RequestTimeout" {
        return Failure::TimedOut(None);
    }
    Failure::Status {
        status,
        code,
        message,
    }
}

/// The chain of `source()`s below `e`, outermost first.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut v = vec![e];
    let mut cur = e.source();
    while let Some(s) = cur {
        v.push(s);
        cur = s.source();
    }
    v
}

/// The innermost error's text (the root cause), without " (os error N)".
fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let c = chain(e);
    let last = c.last().unwrap();
    // An io::Error wrapping a rustls error prints the rustls text; that is
    // what we want. A hyper "connection error" wrapping nothing prints
    // itself.
    strip_os_error(&last.to_string())
}

fn looks_like_tls(e: &(dyn StdError + 'static)) -> bool {
    chain(e).iter().any(|s| {
        let t = s.to_string().to_ascii_lowercase();
        t.contains("certificate")
            || t.contains("invalid peer")
            || t.contains("tls handshake")
            || t.contains("received corrupt message")
            || t.contains("invalidcontenttype")
            || t.contains("alert")
    })
}

/// Classifies a transport error (no HTTP answer).
pub fn classify_transport(kind: Option<HttpErrorKind>, e: &(dyn StdError + 'static)) -> Failure {
    if looks_like_tls(e) {
        return Failure::Tls(root_cause(e));
    }
    let is_timeout = chain(e).iter().any(|s| {
        s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || s.downcast_ref::<reqwest::Error>()
                .is_some_and(|r| r.is_timeout())
    });
    match kind {
        Some(HttpErrorKind::Timeout) => Failure::TimedOut(None),
        Some(HttpErrorKind::Connect) if is_timeout => {
            Failure::Unreachable("connection timed out".into())
        }
        Some(HttpErrorKind::Connect) => Failure::Unreachable(root_cause(e)),
        _ if is_timeout => Failure::TimedOut(None),
        _ => Failure::Transport(root_cause(e)),
    }
}

const STATUS_MARK: &str = "Server returned non-2xx status code: ";
const BODY_ERROR_MARK: &str = "Server returned error response: ";

/// Classifies any object_store error.
pub fn classify(e: &object_store::Error) -> Failure {
    // Getting the credentials failed, not the store's request.
    if let Some(f) = crate::credentials::credentials_failure(e) {
        return f;
    }
    let c = chain(e);
    // No HTTP answer: the transport error, public as `HttpError`.
    for s in &c {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            return classify_transport(Some(h.kind()), *s);
        }
    }
    // An HTTP answer: `RetryError` holds status and body but is not
    // nameable outside object_store (pub struct in a pub(crate) module), so
    // they are read from its Display: "... - Server returned non-2xx status
    // code: 403 Forbidden: <?xml ...><Error><Code>..." .
    for s in &c {
        let t = s.to_string();
        if let Some(i) = t.find(STATUS_MARK) {
            let rest = &t[i + STATUS_MARK.len()..];
            if let Ok(status) = rest.get(..3).unwrap_or("").parse::<u16>() {
                return classify_status(status, Some(rest));
            }
        }
        if let Some(i) = t.find(BODY_ERROR_MARK) {
            return classify_status(200, Some(&t[i..]));
        }
    }
    match e {
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => Failure::Credentials {
            code: String::new(),
            message: String::new(),
        },
        _ => Failure::Other(root_cause(e)),
    }
}

/// Classifies a reqwest error of our own presigned requests.
pub fn classify_reqwest(e: reqwest::Error) -> Failure {
    // The URL may be presigned (a session token, a SAS signature).
    let e = e.without_url();
    let kind = if e.is_timeout() {
        Some(HttpErrorKind::Timeout)
    } else if e.is_connect() {
        Some(HttpErrorKind::Connect)
    } else {
        None
    };
    classify_transport(kind, &e)
}

/// The redirect policy of the requests walarch sends itself: up to 10,
/// within the first request's host only.
pub fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt
            .previous()
            .first()
            .is_some_and(|first| first.host_str() == attempt.url().host_str());
        if same && attempt.previous().len() < 10 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Who set the destination up, so that a hint names what they can change:
/// the server's settings or the `walarch` command's options and environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Naming {
    #[default]
    Server,
    CommandLine,
}

impl Naming {
    fn pick(self, server: &'static str, cli: &'static str) -> &'static str {
        match self {
            Naming::Server => server,
            Naming::CommandLine => cli,
        }
    }
}

/// What the message needs to know about the destination.
pub struct Context<'a> {
    /// "store", "read", "list", ...
    pub action: &'a str,
    /// s3://bucket/prefix/NAME or s3://bucket/prefix
    pub location: &'a str,
    pub endpoint: &'a str,
    pub bucket: &'a str,
    pub timeout: Duration,
    pub naming: Naming,
    /// Where the credentials come from (`Source::describe`).
    pub credentials: &'a str,
}

fn code_suffix(code: &str) -> String {
    if code.is_empty() {
        String::new()
    } else {
        format!(" ({code})")
    }
}

/// The TLS library's reason in plain words, the reason itself kept at the
/// end (rustls' names, e.g. `CaUsedAsEndEntity`, say little to an
/// operator).
pub fn tls_detail(cause: &str, naming: Naming) -> String {
    let file = naming.pick("walarch.s3_ca_file", "--ca-file (or AWS_CA_BUNDLE)");
    let plain = if cause.contains("CaUsedAsEndEntity") {
        format!(
            "The endpoint presented a self-signed (CA) certificate as its own, and it is not \
             one of the certificates in {file}: put that very certificate in the file (it is \
             then pinned), or have the store serve a certificate signed by a CA in the file."
        )
    } else if cause.contains("UnknownIssuer") {
        format!(
            "The endpoint's certificate is not signed by a CA in {file} or the system's, and \
             is not itself in {file}."
        )
    } else if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        "The endpoint's certificate does not name the endpoint's host: its subjectAltName \
         must hold the host name or IP address of the endpoint URL."
            .to_string()
    } else if cause.contains("Expired") || cause.contains("NotValidYet") {
        "The endpoint's certificate is outside its validity dates.".to_string()
    } else {
        return cause.to_string();
    };
    format!("{plain} ({cause})")
}

/// The message for a classified failure.
pub fn to_archive_error(f: Failure, cx: &Context<'_>) -> ArchiveError {
    let transient = f.is_transient();
    let mut e = describe(f, cx);
    if transient {
        e.kind = ErrorKind::Unavailable;
    }
    e
}

fn describe(f: Failure, cx: &Context<'_>) -> ArchiveError {
    let head = format!("could not {} \"{}\"", cx.action, cx.location);
    match f {
        Failure::Unreachable(cause) => ArchiveError::new(
            ErrorKind::Io,
            format!("{head}: S3 endpoint \"{}\" is unreachable", cx.endpoint),
        )
        .with_detail(cause)
        .with_hint(cx.naming.pick(
            "Check walarch.s3_endpoint and that the store is running and reachable.",
            "Check --endpoint (or AWS_ENDPOINT_URL) and that the store is running and reachable.",
        )),
        Failure::Tls(cause) => ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{head}: TLS connection to S3 endpoint \"{}\" failed",
                cx.endpoint
            ),
        )
        .with_detail(tls_detail(&cause, cx.naming))
        .with_hint(cx.naming.pick(
            "Put in walarch.s3_ca_file the CA certificate that signed the endpoint's \
             certificate, or the endpoint's own certificate (a self-signed one is then \
             trusted as it is); it must name the endpoint's host (subjectAltName).",
            "Give with --ca-file (or AWS_CA_BUNDLE) the CA certificate that signed the \
             endpoint's certificate, or the endpoint's own certificate (a self-signed one \
             is then trusted as it is); it must name the endpoint's host (subjectAltName).",
        )),
        Failure::TimedOut(d) => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "{head}: S3 endpoint \"{}\" did not answer within {}",
                cx.endpoint,
                fmt_duration(d.unwrap_or(cx.timeout))
            ),
        )
        .with_hint(cx.naming.pick(
            "The store is slow or hung; the archiver will retry. See walarch.s3_request_timeout.",
            "The store is slow or hung. See --timeout.",
        )),
        Failure::Credentials { code, message } => ArchiveError::new(
            ErrorKind::Configuration,
            format!("{head}: S3 store refused the credentials{}", code_suffix(&code)),
        )
        // Where they came from goes in the DETAIL: `walarch restore`
        // prints no hint.
        .with_detail(format!(
            "{}. The credentials came from {}.",
            if message.is_empty() {
                "403 Forbidden"
            } else {
                message.trim_end_matches('.')
            },
            cx.credentials
        ))
        .with_hint(cx.naming.pick(CHAIN_HINT_SERVER, CHAIN_HINT_CLI)),
        Failure::ObjectForbidden { code, message } => ArchiveError::new(
            ErrorKind::Configuration,
            format!("{head}: S3 store denied access to it{}", code_suffix(&code)),
        )
        .with_detail(if message.is_empty() {
            "403 Forbidden, while listing the bucket is allowed: the credentials may not read or write this object.".to_string()
        } else {
            format!("{message} (listing the bucket is allowed)")
        })
        .with_hint(format!(
            "Grant s3:GetObject and s3:PutObject on arn:aws:s3:::{}/* to the credentials' user or role.",
            cx.bucket
        )),
        Failure::Unlisted { code, message } => ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{head}: S3 store answered 403 Forbidden{} and the credentials may not list the bucket (s3:ListBucket): the file may be missing or unreadable",
                code_suffix(&code)
            ),
        )
        .with_detail(format!(
            "{}Listing the bucket is refused too: without s3:ListBucket, S3 answers 403 instead of 404 for a missing file, so the two cannot be told apart.",
            if message.is_empty() {
                String::new()
            } else {
                format!("{}. ", message.trim_end_matches('.'))
            }
        ))
        .with_hint(format!(
            "Grant s3:ListBucket on arn:aws:s3:::{} and s3:GetObject on arn:aws:s3:::{}/* to the credentials' user or role.",
            cx.bucket, cx.bucket
        )),
        Failure::NoSuchBucket => ArchiveError::new(
            ErrorKind::Configuration,
            format!("{head}: bucket \"{}\" does not exist", cx.bucket),
        )
        .with_hint(cx.naming.pick(
            "Create the bucket or correct walarch.archive_destination.",
            "Create the bucket or correct the s3:// URL of ARCHIVE.",
        )),
        Failure::Checksum { code, message } => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "{head}: S3 store rejected the upload's checksum{}",
                code_suffix(&code)
            ),
        )
        .with_detail(message)
        .with_hint("The bytes changed on the way to the store; nothing was stored. The archiver will retry."),
        Failure::Status {
            status,
            code,
            message,
        } => {
            let mut e = ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "{head}: S3 store answered HTTP {status}{}",
                    code_suffix(&code)
                ),
            );
            if !message.is_empty() {
                e = e.with_detail(message);
            }
            e
        }
        Failure::Transport(cause) | Failure::Other(cause) => {
            ArchiveError::new(ErrorKind::Io, format!("{head}: S3 request failed")).with_detail(cause)
        }
        Failure::NoCredentials { source, cause, .. } => ArchiveError::new(
            // to_archive_error makes a transient one Unavailable.
            ErrorKind::Configuration,
            format!("{head}: could not get S3 credentials from {source}"),
        )
        .with_detail(cause)
        .with_hint(cx.naming.pick(CHAIN_HINT_SERVER, CHAIN_HINT_CLI)),
    }
}

/// Where credentials come from, in the chain's order, as a hint.
const CHAIN_HINT_SERVER: &str = "Credentials come from walarch.s3_credentials_file (profile walarch.s3_profile), \
else the server's environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, the shared \
credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile AWS_PROFILE), web identity \
(AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI \
or AWS_CONTAINER_CREDENTIALS_FULL_URI), then instance metadata.";
const CHAIN_HINT_CLI: &str =
    "Credentials come from --credentials-file (profile --profile or AWS_PROFILE), \
else the environment: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, the shared \
credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials), web identity (AWS_ROLE_ARN, \
AWS_WEB_IDENTITY_TOKEN_FILE), container credentials (AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or \
AWS_CONTAINER_CREDENTIALS_FULL_URI), then instance metadata.";

pub fn run_error(e: RunError, cx: &Context<'_>) -> ArchiveError {
    match e {
        RunError::TimedOut(d) => to_archive_error(Failure::TimedOut(Some(d)), cx),
        // The caller gave up (cancel, terminate, shutdown, the postmaster
        // gone), not the store's fault. A backend raises PostgreSQL's own
        // error for a cancel or terminate before this one.
        RunError::Interrupted => ArchiveError::new(
            ErrorKind::Io,
            format!(
                "could not {} \"{}\": interrupted (canceled, terminated or shutting down)",
                cx.action, cx.location
            ),
        ),
        RunError::Runtime(io) => ArchiveError::new(
            ErrorKind::Internal,
            format!(
                "could not {} \"{}\": could not start the S3 client's threads: {}",
                cx.action,
                cx.location,
                os_message(&io)
            ),
        ),
        RunError::Lost => ArchiveError::new(
            ErrorKind::Internal,
            format!(
                "could not {} \"{}\": the S3 request was lost (task panicked)",
                cx.action, cx.location
            ),
        ),
    }
}

pub fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_reasons_in_plain_words() {
        let d = tls_detail(
            "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
            Naming::Server,
        );
        assert!(
            d.starts_with("The endpoint presented a self-signed (CA) certificate"),
            "{d}"
        );
        assert!(
            d.contains("walarch.s3_ca_file") && d.ends_with("(CaUsedAsEndEntity)))"),
            "{d}"
        );
        let d = tls_detail(
            "invalid peer certificate: UnknownIssuer",
            Naming::CommandLine,
        );
        assert!(d.contains("--ca-file"), "{d}");
        let d = tls_detail("invalid peer certificate: NotValidForName", Naming::Server);
        assert!(d.contains("subjectAltName"), "{d}");
        assert_eq!(
            tls_detail("handshake failure", Naming::Server),
            "handshake failure"
        );
    }

    #[test]
    fn s3_codes() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>\
                    <Message>The request signature we calculated does not match</Message></Error>";
        assert!(matches!(
            classify_status(403, Some(body)),
            Failure::Credentials { code, .. } if code == "SignatureDoesNotMatch"
        ));
        assert_eq!(
            classify_status(404, Some("<Error><Code>NoSuchBucket</Code></Error>")),
            Failure::NoSuchBucket
        );
        assert!(matches!(
            classify_status(400, Some("<Error><Code>BadDigest</Code></Error>")),
            Failure::Checksum { .. }
        ));
        assert!(matches!(
            classify_status(400, Some("<Error><Code>InvalidRequest</Code><Message>Value for x-amz-checksum-sha256 header is invalid.</Message></Error>")),
            Failure::Checksum { .. }
        ));
        assert!(matches!(
            classify_status(403, None),
            Failure::Credentials { .. }
        ));
        assert!(matches!(
            classify_status(500, Some("<Error><Code>InternalError</Code></Error>")),
            Failure::Status { status: 500, .. }
        ));
        // Transient: retried by restore, and what opens the archiver's
        // circuit breaker; a refusal or a 404 is not.
        for (status, body) in [
            (500, "<Error><Code>InternalError</Code></Error>"),
            (503, "<Error><Code>SlowDown</Code></Error>"),
            (429, ""),
            (408, ""),
        ] {
            assert!(
                classify_status(status, Some(body)).is_transient(),
                "{status}"
            );
        }
        for (status, body) in [
            (403, "<Error><Code>AccessDenied</Code></Error>"),
            (404, "<Error><Code>NoSuchBucket</Code></Error>"),
            (400, "<Error><Code>BadDigest</Code></Error>"),
            (409, "<Error><Code>Conflict</Code></Error>"),
        ] {
            assert!(
                !classify_status(status, Some(body)).is_transient(),
                "{status}"
            );
        }
        assert!(Failure::Unreachable("connection refused".into()).is_transient());
        assert!(!Failure::Tls("UnknownIssuer".into()).is_transient());
    }
}
