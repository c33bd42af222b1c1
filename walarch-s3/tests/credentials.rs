//! The AWS credential chain against a live SeaweedFS, with the credential
//! endpoints (container, instance metadata) served by small HTTP servers on
//! 127.0.0.1. The environment is passed to the chain as a lookup, never
//! set on the process (tests run in parallel).
//!
//! SeaweedFS 4.48 and session tokens: a request signed with a static
//! identity's keys and carrying `X-Amz-Security-Token` is refused (403
//! InvalidAccessKeyId: it looks the keys up among its own STS sessions).
//! So the credential servers below hand out the store's own keys with an
//! empty `Token`, and `a_session_token_is_sent_to_the_store` proves by that
//! refusal that a file's `aws_session_token` reaches the store.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{dead_port, make_file, scratch, settings, show, Seaweed};
use walarch_core::destination::{Destination, Stored};
use walarch_core::support::error::ErrorKind;
use walarch_core::wal::checksum::sha256;
use walarch_s3::credentials::{CredentialOptions, Source};
use walarch_s3::{S3Destination, S3Settings};

const SEG: &str = "000000010000000000000001";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// A small HTTP/1.1 server on 127.0.0.1 (one connection at a time, closed
/// after each answer) that records what it was asked.
struct Loopback {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Loopback {
    fn start(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen2, handler): (_, Arc<Handler>) = (Arc::clone(&seen), Arc::new(handler));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let _ = serve(conn, &*handler, &seen2);
            }
        });
        Loopback { url, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &Handler, seen: &Mutex<Vec<Request>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let req = Request {
        method,
        path,
        headers,
    };
    let (status, text) = handler(&req);
    seen.lock().unwrap().push(req);
    let mut w = conn;
    write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )?;
    w.flush()
}

/// The store's own identity as a credentials endpoint answers, expiring
/// `in_secs` from now. `Token` is empty: see the top of this file.
fn credentials_json(sw: &Seaweed, in_secs: i64) -> String {
    let exp = chrono::Utc::now() + chrono::Duration::seconds(in_secs);
    format!(
        r#"{{"AccessKeyId":"{}","SecretAccessKey":"{}","Token":"","Expiration":"{}"}}"#,
        sw.access_key,
        sw.secret_key,
        exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// The environment of a process with only `pairs` set (and a HOME without
/// `.aws`).
fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let mut m: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.entry("HOME".into())
        .or_insert_with(|| "/nonexistent-walarch-home".into());
    move |k: &str| m.get(k).cloned()
}

/// The store's settings with the chain's choice for `vars` instead of keys.
fn chained(
    sw: &Seaweed,
    prefix: &str,
    opts: CredentialOptions,
    vars: &[(&str, &str)],
) -> S3Settings {
    let mut s = settings(sw, prefix);
    s.access_key_id = None;
    s.secret_access_key = None;
    s.credential_options = opts;
    s.choose_credentials_with(&env(vars)).unwrap();
    s
}

fn private_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn store_and_read_back(dest: &S3Destination, dir: &Path, len: usize, seed: u64) {
    let f = dir.join(format!("seg-{seed}"));
    make_file(&f, len, seed);
    let data = std::fs::read(&f).unwrap();
    assert_eq!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created {
            bytes: len as u64,
            sha256: sha256(&data),
            stored_bytes: len as u64,
        }
    );
    let mut back = Vec::new();
    dest.open(SEG)
        .unwrap()
        .expect("stored")
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "read back differs");
}

#[test]
fn a_credentials_file_profile_stores_and_reads_back() {
    let sw = Seaweed::shared();
    let dir = scratch("creds-profile");
    // The default profile holds wrong keys: only the named one can work.
    let file = private_file(
        &dir,
        "credentials",
        &format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong-secret-0123456789\n\n\
             [archive]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            sw.access_key, sw.secret_key
        ),
    );
    let opts = |profile: &str| CredentialOptions {
        file: Some(file.clone()),
        profile: Some(profile.into()),
    };
    // The file wins over keys in the environment.
    let s = chained(
        sw,
        "creds/profile",
        opts("archive"),
        &[
            ("AWS_ACCESS_KEY_ID", "env-key"),
            ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ],
    );
    let dest = S3Destination::new(s).unwrap();
    store_and_read_back(&dest, &dir, 100_000, 1);

    // The default profile's wrong keys are refused, and the hint says where
    // they came from.
    let s = chained(sw, "creds/profile-default", opts("default"), &[]);
    let e = S3Destination::new(s)
        .unwrap()
        .store_new(SEG, &dir.join("seg-1"))
        .unwrap_err();
    show("default profile's wrong keys", &e);
    assert_eq!(e.kind, ErrorKind::Configuration);
    assert!(
        e.message.contains("refused the credentials"),
        "{}",
        e.message
    );
    let detail = e.detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!(
            "credentials file \"{}\", profile \"default\"",
            file.display()
        )),
        "{detail}"
    );
    assert!(e
        .hint
        .clone()
        .unwrap_or_default()
        .contains("walarch.s3_profile"));
    assert!(!format!("{e}").contains("wrong-secret-0123456789"));

    // A profile that is not there: an error naming it and the file.
    let mut s = settings(sw, "creds/none");
    s.access_key_id = None;
    s.secret_access_key = None;
    s.credential_options = opts("missing");
    let m = s.choose_credentials_with(&env(&[])).unwrap_err();
    eprintln!("=== missing profile: {m}");
    assert!(
        m.contains("\"missing\"") && m.contains(&file.display().to_string()),
        "{m}"
    );
}

#[test]
fn a_session_token_is_sent_to_the_store() {
    let sw = Seaweed::shared();
    let dir = scratch("creds-token");
    let file = private_file(
        &dir,
        "credentials",
        &format!(
            "[temporary]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = FQoGZXIvYXdzEXAMPLEtoken0123456789\n",
            sw.access_key, sw.secret_key
        ),
    );
    let opts = CredentialOptions {
        file: Some(file.clone()),
        profile: Some("temporary".into()),
    };
    let s = chained(sw, "creds/token", opts.clone(), &[]);
    match &s.credentials {
        Some(Source::Static { session_token, .. }) => {
            assert_eq!(
                session_token.as_deref(),
                Some("FQoGZXIvYXdzEXAMPLEtoken0123456789")
            )
        }
        other => panic!("{other:?}"),
    }
    let f = dir.join("seg");
    make_file(&f, 1000, 3);
    // The same keys work without the token (a_credentials_file_profile_...);
    // with it SeaweedFS looks for an STS session and refuses: the token was
    // sent, signed.
    let e = S3Destination::new(s)
        .unwrap()
        .store_new(SEG, &f)
        .unwrap_err();
    show("session token", &e);
    assert!(e.message.contains("InvalidAccessKeyId"), "{}", e.message);
    assert!(
        !format!("{e}").contains("FQoGZXIvYXdzEXAMPLEtoken"),
        "token leaked"
    );
    assert!(!format!("{e}").contains(&sw.secret_key), "secret leaked");
}

#[test]
fn container_credentials_are_refreshed_and_serve_a_multipart_upload() {
    let sw = Seaweed::shared();
    let dir = scratch("creds-container");
    // EKS Pod Identity's token file ends with a newline; it is not sent.
    let token_file = private_file(&dir, "token", "pod-identity-token\n");
    let served = Arc::new(AtomicUsize::new(0));
    let (sw_json_soon, sw_json_later) = (credentials_json(sw, 120), credentials_json(sw, 3600));
    let n = Arc::clone(&served);
    let server = Loopback::start(move |r| {
        if r.path != "/v1/credentials" {
            return (404, "{}".into());
        }
        if r.headers.get("authorization").map(String::as_str) != Some("pod-identity-token") {
            return (
                403,
                r#"{"code":"AccessDeniedException","message":"bad token"}"#.into(),
            );
        }
        // First: credentials that expire within the refresh margin (5
        // minutes), so the next use must fetch again; then long-lived ones.
        match n.fetch_add(1, Ordering::SeqCst) {
            0 => (200, sw_json_soon.clone()),
            _ => (200, sw_json_later.clone()),
        }
    });
    let full_uri = format!("{}/v1/credentials", server.url);
    let vars = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            token_file.to_str().unwrap(),
        ),
    ];
    let mut s = chained(sw, "creds/container", CredentialOptions::default(), &vars);
    assert!(
        matches!(&s.credentials, Some(Source::Container { url, .. }) if *url == full_uri),
        "{:?}",
        s.credentials
    );
    // Above the threshold: create, three parts, the create-only completion
    // (presigned here with the provider's current credentials).
    s.multipart_threshold = 5 << 20;
    s.part_size = 5 << 20;
    let dest = S3Destination::new(s).unwrap();
    store_and_read_back(&dest, &dir, (12 << 20) + 1234, 4);
    assert_eq!(
        served.load(Ordering::SeqCst),
        2,
        "one fetch, one refresh of the credentials about to expire, then the cache"
    );
    assert!(server.requests().iter().all(|r| r.method == "GET"));

    // The endpoint refusing the token: the error names the source and
    // what it answered, never the token.
    let bad = private_file(&dir, "bad-token", "not-the-token");
    let vars = [
        ("AWS_CONTAINER_CREDENTIALS_FULL_URI", full_uri.as_str()),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
            bad.to_str().unwrap(),
        ),
    ];
    let s = chained(
        sw,
        "creds/container-bad",
        CredentialOptions::default(),
        &vars,
    );
    let e = S3Destination::new(s).unwrap().size(SEG).unwrap_err();
    show("container endpoint refuses", &e);
    assert!(
        e.message.contains(&format!(
            "could not get S3 credentials from container credentials at \"{full_uri}\""
        )),
        "{}",
        e.message
    );
    let detail = e.detail.clone().unwrap_or_default();
    assert!(
        detail.contains("403") && detail.contains("bad token"),
        "{detail}"
    );
    assert_eq!(e.kind, ErrorKind::Configuration);
    assert!(!format!("{e}").contains("not-the-token"));

    // Nothing listening: transient, named.
    let gone = format!("http://127.0.0.1:{}/v1/credentials", dead_port());
    let s = chained(
        sw,
        "creds/container-gone",
        CredentialOptions::default(),
        &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", gone.as_str())],
    );
    let e = S3Destination::new(s).unwrap().size(SEG).unwrap_err();
    show("container endpoint gone", &e);
    assert!(
        e.message.contains("container credentials at"),
        "{}",
        e.message
    );
    assert_eq!(e.kind, ErrorKind::Unavailable);
}

#[test]
fn instance_metadata_imdsv2() {
    let sw = Seaweed::shared();
    let dir = scratch("creds-imds");
    let creds = credentials_json(sw, 3600);
    let server = Loopback::start(move |r| {
        const TOKEN: &str = "imds-session-token";
        match (r.method.as_str(), r.path.as_str()) {
            ("PUT", "/latest/api/token")
                if r.headers
                    .contains_key("x-aws-ec2-metadata-token-ttl-seconds") =>
            {
                (200, TOKEN.into())
            }
            // IMDSv2 only: every GET carries the session token.
            ("GET", _)
                if r.headers
                    .get("x-aws-ec2-metadata-token")
                    .map(String::as_str)
                    != Some(TOKEN) =>
            {
                (401, String::new())
            }
            ("GET", "/latest/meta-data/iam/security-credentials/") => (200, "walarch-role".into()),
            ("GET", "/latest/meta-data/iam/security-credentials/walarch-role") => {
                (200, creds.clone())
            }
            _ => (404, String::new()),
        }
    });
    let s = chained(
        sw,
        "creds/imds",
        CredentialOptions::default(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", server.url.as_str())],
    );
    assert_eq!(
        s.credentials,
        Some(Source::InstanceMetadata {
            endpoint: Some(server.url.clone())
        })
    );
    let dest = S3Destination::new(s).unwrap();
    store_and_read_back(&dest, &dir, 200_000, 5);
    let seen: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect();
    assert_eq!(
        &seen[..3],
        &[
            ("PUT".to_string(), "/latest/api/token".to_string()),
            (
                "GET".into(),
                "/latest/meta-data/iam/security-credentials/".into()
            ),
            (
                "GET".into(),
                "/latest/meta-data/iam/security-credentials/walarch-role".into()
            ),
        ],
        "{seen:?}"
    );
    // Cached: one fetch for all the requests of the store and the read.
    assert_eq!(seen.len(), 3, "{seen:?}");

    // No metadata service: the error says it was the source tried.
    let gone = format!("http://127.0.0.1:{}", dead_port());
    let s = chained(
        sw,
        "creds/imds-gone",
        CredentialOptions::default(),
        &[("AWS_EC2_METADATA_SERVICE_ENDPOINT", gone.as_str())],
    );
    let e = S3Destination::new(s).unwrap().size(SEG).unwrap_err();
    show("no instance metadata", &e);
    assert!(
        e.message.contains(&format!(
            "could not get S3 credentials from instance metadata at \"{gone}\""
        )),
        "{}",
        e.message
    );
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e
        .hint
        .unwrap_or_default()
        .contains("walarch.s3_credentials_file"));
}

#[test]
fn web_identity_failures_name_the_source() {
    let sw = Seaweed::shared();
    // object_store's web identity provider reads the token file, then asks
    // STS (HTTPS only): a missing token file fails first, without a
    // request.
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/walarch/token"),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/walarch"),
        ("AWS_ENDPOINT_URL_STS", "https://127.0.0.1:1"),
    ];
    let s = chained(sw, "creds/web", CredentialOptions::default(), &vars);
    assert!(matches!(s.credentials, Some(Source::WebIdentity { .. })));
    let e = S3Destination::new(s).unwrap().size(SEG).unwrap_err();
    show("web identity token file missing", &e);
    assert!(
        e.message
            .contains("could not get S3 credentials from web identity"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("arn:aws:iam::123456789012:role/walarch"),
        "{}",
        e.message
    );
    let detail = e.detail.clone().unwrap_or_default();
    assert!(detail.contains("/nonexistent/walarch/token"), "{detail}");
    assert_eq!(e.kind, ErrorKind::Configuration);
}

/// A private CA and a certificate for 127.0.0.1 signed by it (the STS
/// client of object_store speaks HTTPS only).
fn make_ca(dir: &Path) {
    let openssl = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=walarch test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

/// A loopback STS over HTTPS answering AssumeRoleWithWebIdentity with the
/// store's identity when the web identity token is `token` (python3's
/// http.server and ssl); every request is logged to `log`.
const STS: &str = r#"
import datetime, http.server, ssl, sys, urllib.parse
key, secret, token, cert, keyfile, log = sys.argv[1:7]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        n = int(self.headers.get('Content-Length') or 0)
        q.update(urllib.parse.parse_qs(self.rfile.read(n).decode()))
        one = lambda k: q.get(k, [''])[0]
        with open(log, 'a') as f:
            f.write('%s %s %s\n' % (one('Action'), one('RoleArn'), one('RoleSessionName')))
        if one('WebIdentityToken') != token:
            status, body = 403, '<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>the token is not valid</Message></Error></ErrorResponse>'
        else:
            exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')
            status, body = 200, ('<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>'
                '<AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey><SessionToken></SessionToken>'
                '<Expiration>%s</Expiration></Credentials></AssumeRoleWithWebIdentityResult>'
                '</AssumeRoleWithWebIdentityResponse>') % (key, secret, exp)
        body = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', 'text/xml')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(('127.0.0.1', 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, keyfile)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn web_identity_through_a_loopback_sts() {
    let sw = Seaweed::shared();
    let dir = scratch("creds-web");
    make_ca(&dir);
    let log = dir.join("sts.log");
    let mut child = Child(
        std::process::Command::new("python3")
            .arg("-c")
            .arg(STS)
            .args([&sw.access_key, &sw.secret_key, "eyJ-web-identity-token"])
            .arg(dir.join("srv.pem"))
            .arg(dir.join("srv.key"))
            .arg(&log)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut port = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let sts = format!("https://127.0.0.1:{}/", port.trim());
    let token_file = private_file(&dir, "token", "eyJ-web-identity-token");
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/walarch"),
        ("AWS_ROLE_SESSION_NAME", "walarch-test"),
        ("AWS_ENDPOINT_URL_STS", sts.as_str()),
    ];
    let mut s = chained(sw, "creds/web", CredentialOptions::default(), &vars);
    assert!(
        matches!(s.credentials, Some(Source::WebIdentity { .. })),
        "{:?}",
        s.credentials
    );
    // The store's CA file is trusted for STS as well.
    s.ca_file = Some(dir.join("ca.pem"));
    let dest = S3Destination::new(s).unwrap();
    store_and_read_back(&dest, &dir, 50_000, 6);
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls, "AssumeRoleWithWebIdentity arn:aws:iam::123456789012:role/walarch walarch-test\n",
        "one exchange, then the cached credentials"
    );

    // STS refusing the token: named, with STS's answer, never the token.
    let bad = private_file(&dir, "bad-token", "eyJ-some-other-token");
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", bad.to_str().unwrap()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/walarch"),
        ("AWS_ENDPOINT_URL_STS", sts.as_str()),
    ];
    let mut s = chained(sw, "creds/web-bad", CredentialOptions::default(), &vars);
    s.ca_file = Some(dir.join("ca.pem"));
    let e = S3Destination::new(s).unwrap().size(SEG).unwrap_err();
    show("STS refuses the token", &e);
    assert!(
        e.message
            .contains("could not get S3 credentials from web identity"),
        "{}",
        e.message
    );
    let detail = e.detail.clone().unwrap_or_default();
    assert!(detail.contains("InvalidIdentityToken"), "{detail}");
    assert!(
        !format!("{e}").contains("eyJ-some-other-token"),
        "token leaked"
    );
}
