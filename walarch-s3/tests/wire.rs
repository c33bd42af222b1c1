//! Server-side encryption, storage class and a pinned self-signed
//! certificate against a live SeaweedFS (4.48: it honours SSE-S3 and SSE-C
//! and records the storage class; SSE-KMS needs a KMS it is not given
//! here, so that mode is covered by the header unit tests only).

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{make_file, scratch, settings, show, Seaweed};
use walarch_core::destination::{Destination, Recorded, Stored};
use walarch_core::support::error::{ArchiveError, ErrorKind};
use walarch_core::wal::checksum::sha256;
use walarch_s3::wire::read_customer_key_file;
use walarch_s3::{S3Destination, Sse};

const SEG: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";
const HISTORY: &str = "00000002.history";

fn read_all(dest: &dyn Destination, name: &str) -> Vec<u8> {
    let mut r = dest.open(name).unwrap().expect("object exists");
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// The response headers of a signed HEAD of `key` (lower-case), or the
/// status line of a failure.
fn head(sw: &Seaweed, key: &str) -> String {
    let out = Command::new("curl")
        .args(["-sI", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", sw.access_key, sw.secret_key))
        .arg(format!("{}/{}/{key}", sw.endpoint, sw.bucket))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
}

/// One file under the multipart threshold and one above (3 parts).
fn small_and_large(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (small, large) = (dir.join("small"), dir.join("large"));
    make_file(&small, 300_000, 21);
    make_file(&large, 12 << 20, 22);
    (small, large)
}

#[test]
fn sse_s3_single_and_multipart() {
    let sw = Seaweed::shared();
    let dir = scratch("sse-s3");
    let (small, large) = small_and_large(&dir);
    let mut s = settings(sw, "sse-s3");
    s.multipart_threshold = 5 << 20;
    s.part_size = 5 << 20;
    s.sse = Sse::Aes256;
    let dest = S3Destination::new(s).unwrap();
    for (name, f) in [(SEG, &small), (SEG2, &large)] {
        assert!(matches!(
            dest.store_new(name, f).unwrap(),
            Stored::Created { .. }
        ));
        let data = std::fs::read(f).unwrap();
        assert!(read_all(&dest, name) == data, "{name}");
        assert_eq!(
            dest.recorded(name).unwrap(),
            Recorded::Digest(sha256(&data))
        );
        let h = head(sw, &format!("sse-s3/{name}"));
        eprintln!("HEAD {name}:\n{h}");
        assert!(
            h.contains("x-amz-server-side-encryption: aes256"),
            "{name}: {h}"
        );
    }
    // A replaced record (the sidecar) is encrypted the same way.
    dest.write_record(SEG, &[1; 32]).unwrap();
    let h = head(sw, &format!("sse-s3/{SEG}.sha256"));
    assert!(h.contains("x-amz-server-side-encryption: aes256"), "{h}");
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest([1; 32]));
}

fn key_file(dir: &Path, name: &str, fill: u8) -> String {
    use base64_free::encode;
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n", encode(&[fill; 32]))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.to_str().unwrap().to_string()
}

/// Standard base64, for the test's key files (the crate under test has
/// its own).
mod base64_free {
    pub fn encode(b: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    s.push('=');
                }
            }
        }
        s
    }
}

#[test]
fn sse_c_single_and_multipart_and_reads_need_the_key() {
    let sw = Seaweed::shared();
    let dir = scratch("sse-c");
    let (small, large) = small_and_large(&dir);
    let key = read_customer_key_file(&key_file(&dir, "key", 0x5a)).unwrap();
    let mut s = settings(sw, "sse-c");
    s.multipart_threshold = 5 << 20;
    s.part_size = 5 << 20;
    s.sse = Sse::Customer(key);
    let dest = S3Destination::new(s.clone()).unwrap();
    for (name, f) in [(SEG, &small), (SEG2, &large)] {
        let st = dest.store_new(name, f);
        if let Err(e) = &st {
            show("SSE-C store", e);
        }
        assert!(matches!(st.unwrap(), Stored::Created { .. }), "{name}");
        let data = std::fs::read(f).unwrap();
        assert!(read_all(&dest, name) == data, "{name}");
        assert_eq!(
            dest.recorded(name).unwrap(),
            Recorded::Digest(sha256(&data))
        );
        assert_eq!(dest.store_new(name, f).unwrap(), Stored::Exists);
    }
    // The store keeps no plain copy: the bytes it holds are not the file's
    // (read with a plain signed GET through curl).
    let raw = Command::new("curl")
        .args(["-s", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", sw.access_key, sw.secret_key))
        .arg(format!("{}/{}/sse-c/{SEG}", sw.endpoint, sw.bucket))
        .output()
        .unwrap()
        .stdout;
    assert!(raw != std::fs::read(&small).unwrap());

    // Without the key, or with another: refused, clearly, never "missing"
    // and never other bytes.
    let mut without = s.clone();
    without.sse = Sse::None;
    let mut other = s.clone();
    other.sse = Sse::Customer(read_customer_key_file(&key_file(&dir, "other", 0x11)).unwrap());
    for (case, st) in [
        ("SSE-C read without the key", without),
        ("SSE-C read with another key", other),
    ] {
        let d = S3Destination::new(st).unwrap();
        let e = match d.open(SEG) {
            Ok(Some(mut r)) => {
                let mut v = Vec::new();
                match r.read_to_end(&mut v) {
                    Ok(_) => panic!("{case}: read {} bytes", v.len()),
                    Err(e) => ArchiveError::new(ErrorKind::Io, e.to_string()),
                }
            }
            Ok(None) => panic!("{case}: reads as missing"),
            Err(e) => e,
        };
        show(case, &e);
        assert!(
            e.hint.as_deref().unwrap_or("").contains("SSE-C"),
            "{case}: {e:?}"
        );
        assert!(d.recorded(SEG).is_err(), "{case}");
    }
}

#[test]
fn storage_class_on_segments_only() {
    let sw = Seaweed::shared();
    let dir = scratch("class");
    let (small, large) = small_and_large(&dir);
    let hist = dir.join("hist");
    std::fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
    let mut s = settings(sw, "class");
    s.multipart_threshold = 5 << 20;
    s.part_size = 5 << 20;
    s.storage_class = Some("STANDARD_IA".into());
    let dest = S3Destination::new(s).unwrap();
    dest.store_new(SEG, &small).unwrap();
    dest.store_new(SEG2, &large).unwrap();
    let zst = "000000010000000000000003.zst";
    dest.store_new_bytes(zst, b"compressed").unwrap();
    dest.store_new(HISTORY, &hist).unwrap();
    dest.write_record(SEG, &[2; 32]).unwrap();
    // A tar in parts (objects.rs's multipart upload), and one in one PUT.
    let mut w = dest.create_object("backups/L/base.tar").unwrap();
    w.write(&std::fs::read(&large).unwrap()).unwrap();
    w.finish().unwrap();
    let mut w = dest.create_object("backups/L/16384.tar").unwrap();
    w.write(b"tar").unwrap();
    w.finish().unwrap();
    let mut w = dest.create_object("backups/L/backup.json").unwrap();
    w.write(b"{}").unwrap();
    w.finish().unwrap();
    for name in [SEG, SEG2, zst, "backups/L/base.tar", "backups/L/16384.tar"] {
        let h = head(sw, &format!("class/{name}"));
        assert!(
            h.contains("x-amz-storage-class: standard_ia"),
            "{name}: {h}"
        );
    }
    for name in [
        HISTORY,
        "000000010000000000000001.sha256",
        "backups/L/backup.json",
    ] {
        let h = head(sw, &format!("class/{name}"));
        assert!(h.starts_with("http/1.1 200"), "{name}: {h}");
        assert!(!h.contains("x-amz-storage-class"), "{name}: {h}");
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args:?}");
}

/// The usual self-signed certificate: a CA certificate serving as the
/// server's own.
fn self_signed(dir: &Path, name: &str) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        dir,
    );
}

#[test]
fn self_signed_certificate_is_pinned() {
    let dir = scratch("pin");
    self_signed(&dir, "srv");
    self_signed(&dir, "other");
    let sw = Seaweed::start("pin", Some((&dir.join("srv.pem"), &dir.join("srv.key"))));
    let (small, large) = small_and_large(&dir);
    let mut s = settings(&sw, "pin");
    s.endpoint = sw.https_endpoint.clone();
    s.multipart_threshold = 5 << 20;
    s.part_size = 5 << 20;
    s.timeout = std::time::Duration::from_secs(10);

    for ca_only in [false, true] {
        let mut good = s.clone();
        good.ca_file = Some(dir.join("srv.pem"));
        good.ca_only = ca_only;
        good.prefix = format!("pin-{ca_only}");
        let dest = S3Destination::new(good).unwrap();
        // Single PUT, multipart with the completion sent by walarch-s3's
        // own client, reads and a listing.
        for (name, f) in [(SEG, &small), (SEG2, &large)] {
            assert!(matches!(
                dest.store_new(name, f).unwrap(),
                Stored::Created { .. }
            ));
            assert!(read_all(&dest, name) == std::fs::read(f).unwrap());
        }
        assert_eq!(
            dest.list().unwrap(),
            vec![SEG.to_string(), SEG2.to_string()]
        );
    }

    // Pinned, but for another name: the host is still checked.
    let mut other_name = s.clone();
    other_name.ca_file = Some(dir.join("srv.pem"));
    other_name.endpoint = Some(
        sw.https_endpoint
            .clone()
            .unwrap()
            .replace("127.0.0.1", "localhost"),
    );
    let e = S3Destination::new(other_name).unwrap().list().unwrap_err();
    show("TLS, the pinned certificate names another host", &e);
    assert!(e.message.contains("TLS connection"), "{e}");
    assert!(
        e.detail.as_deref().unwrap_or("").contains("subjectAltName"),
        "{e}"
    );

    // Another self-signed certificate in the file: refused, saying what to
    // put there.
    let mut wrong = s.clone();
    wrong.ca_file = Some(dir.join("other.pem"));
    let e = S3Destination::new(wrong).unwrap().list().unwrap_err();
    show("TLS, another self-signed certificate in the file", &e);
    assert_eq!(e.kind, ErrorKind::Configuration);
    assert!(e.message.contains("TLS connection"), "{e}");
    assert!(
        e.hint
            .as_deref()
            .unwrap_or("")
            .contains("endpoint's own certificate"),
        "{e}"
    );
    drop(sw);
}

/// A loopback HTTP recorder (not a store): answers every request 200 with
/// an ETag and keeps each request's head, lower-cased.
fn recorder() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&heads);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let seen = std::sync::Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let low = line.to_ascii_lowercase();
                        if let Some(v) = low.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        head.push_str(&low);
                    }
                    let mut body = vec![0; len];
                    std::io::Read::read_exact(&mut r, &mut body).unwrap();
                    seen.lock().unwrap().push(head);
                    let mut w = c.try_clone().unwrap();
                    w.write_all(b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (url, heads)
}

/// SSE-KMS (which the test store cannot do): the headers object_store
/// sends for it, on a PUT seen by a loopback recorder.
#[test]
fn sse_kms_headers_are_sent() {
    let dir = scratch("kms");
    let (small, _) = small_and_large(&dir);
    let (url, heads) = recorder();
    for (key_id, expect_key) in [(None, None), (Some("alias/wal"), Some("alias/wal"))] {
        heads.lock().unwrap().clear();
        let mut s = walarch_s3::S3Settings::new("wal");
        s.endpoint = Some(url.clone());
        s.access_key_id = Some("k".into());
        s.secret_access_key = Some("s".into());
        s.head_before_put = false;
        s.storage_class = Some("STANDARD_IA".into());
        s.sse = Sse::Kms {
            key_id: key_id.map(String::from),
        };
        let dest = S3Destination::new(s).unwrap();
        assert!(matches!(
            dest.store_new(SEG, &small).unwrap(),
            Stored::Created { .. }
        ));
        let seen = heads.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        let h = &seen[0];
        assert!(h.starts_with("put /wal/000000010000000000000001 "), "{h}");
        assert!(
            h.contains("x-amz-server-side-encryption: aws:kms\r\n"),
            "{h}"
        );
        assert!(h.contains("x-amz-storage-class: standard_ia\r\n"), "{h}");
        match expect_key {
            Some(k) => assert!(
                h.contains(&format!(
                    "x-amz-server-side-encryption-aws-kms-key-id: {k}\r\n"
                )),
                "{h}"
            ),
            None => assert!(!h.contains("kms-key-id"), "{h}"),
        }
    }
}
