//! Archiving into a store behind a self-signed certificate (pinned through
//! walarch.s3_ca_file) with SSE-C and a storage class, then reading it back
//! with `walarch restore`/`verify` and `--ca-file`/`--sse-customer-key-file`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use walarch_integration::seaweed::Seaweed;
use walarch_integration::{chown_to_server, pg_major, sh};

const T: Duration = Duration::from_secs(90);

/// A directory the server's OS user can read, removed on drop.
struct Files(PathBuf);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn files() -> Files {
    let d = std::env::temp_dir().join(format!(
        "walarch-wire-{}-pg{}",
        std::process::id(),
        pg_major()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    sh(&format!("chmod 755 '{}'", d.display()));
    Files(d)
}

/// `openssl req -x509` as an operator types it: a CA certificate serving
/// as the server's own.
fn self_signed(dir: &Path, name: &str) {
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    sh(&format!("chmod 644 '{}/{name}.pem'", dir.display()));
}

#[test]
fn sse_c_and_storage_class_through_a_pinned_self_signed_certificate() {
    let f = files();
    self_signed(&f.0, "store");
    let s3 = Seaweed::start(
        "pg-wire",
        Some((&f.0.join("store.pem"), &f.0.join("store.key"))),
    );
    let https = s3.https_endpoint.clone().unwrap();
    let cert = f.0.join("store.pem");
    let key = f.0.join("sse.key");
    sh(&format!(
        "openssl rand -base64 32 > '{k}' && chmod 600 '{k}'",
        k = key.display()
    ));
    chown_to_server(&key);
    let prefix = format!("pg{}/wire", pg_major());
    let c = s3.archiving_cluster(
        "s3-wire",
        &prefix,
        &[
            &format!("walarch.s3_endpoint = '{https}'"),
            &format!("walarch.s3_ca_file = '{}'", cert.display()),
            "walarch.s3_sse = 'sse-c'",
            &format!("walarch.s3_sse_customer_key_file = '{}'", key.display()),
            "walarch.s3_storage_class = 'STANDARD_IA'",
        ],
    );
    c.query("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let walfiles = c.switch_many(2);
    c.wait_drained(T);

    let url = s3.url(&prefix);
    let read = ["--endpoint", &https, "--ca-file", cert.to_str().unwrap()];
    let with_key = [
        &read[..],
        &["--sse-customer-key-file", key.to_str().unwrap()],
    ]
    .concat();
    let (code, out, err) = s3.walarch(&[&["verify", &url][..], &with_key].concat());
    assert_eq!(code, 0, "verify: {out}{err}");
    chown_to_server(&c.root);
    for w in &walfiles {
        let dest = c.root.join(format!("fetched-{w}"));
        let args = [&["restore", &url, w, dest.to_str().unwrap()][..], &with_key].concat();
        let (code, _, err) = s3.walarch(&args);
        assert_eq!(code, 0, "restore {w}: {err}");
        assert!(
            std::fs::read(&dest).unwrap() == std::fs::read(c.data.join("pg_wal").join(w)).unwrap()
        );
    }

    // Without the key: not "missing" (exit 1 would end archive recovery),
    // a failure that says what is needed.
    let dest = c.root.join("fetched-nokey");
    let (code, _, err) = s3.walarch(
        &[
            &["restore", &url, &walfiles[0], dest.to_str().unwrap()][..],
            &read,
        ]
        .concat(),
    );
    assert!(code != 0 && code != 1, "{code}: {err}");
    assert!(
        err.contains("SSE-C") && err.contains("--sse-customer-key-file"),
        "{err}"
    );

    // Bad values are refused when set, and change nothing.
    for (setting, value, detail) in [
        ("walarch.s3_sse", "des", "not a server-side encryption"),
        (
            "walarch.s3_storage_class",
            "standard ia",
            "not a storage class",
        ),
        (
            "walarch.s3_sse_customer_key_file",
            cert.to_str().unwrap(),
            "group or other access",
        ),
    ] {
        let e = c
            .psql(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
            .unwrap_err();
        assert!(e.contains(detail), "{setting}: {e}");
    }
    assert_eq!(c.query("SHOW walarch.s3_sse").trim(), "sse-c");
}
