//! S3Destination against a live SeaweedFS (started by seaweed.sh).

mod common;

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{make_file, read_all, scratch, settings, show, Seaweed};
use walarch_core::destination::{Destination, Recorded, Stored};
use walarch_core::support::error::{ArchiveError, ErrorKind};
use walarch_core::wal::checksum::{sha256, to_hex};
use walarch_s3::{S3Destination, S3Settings};

const SEG: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

fn assert_no_secret(e: &ArchiveError, secret: &str) {
    let all = format!("{e}");
    assert!(!all.contains(secret), "secret leaked: {all}");
}

#[test]
fn store_read_record_list_remove() {
    let sw = Seaweed::shared();
    let dest = S3Destination::new(settings(sw, "cluster-a/wal")).unwrap();
    assert_eq!(dest.describe(), "s3://wal/cluster-a/wal");
    assert_eq!(
        dest.location(SEG),
        "s3://wal/cluster-a/wal/000000010000000000000001"
    );
    let dir = scratch("basic");
    let f = dir.join("seg");
    make_file(&f, 16 << 20, 1);
    let data = std::fs::read(&f).unwrap();
    let want = sha256(&data);

    assert_eq!(dest.size(SEG).unwrap(), None);
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
    assert!(dest.open(SEG).unwrap().is_none());

    let t = Instant::now();
    let s = dest.store_new(SEG, &f).unwrap();
    eprintln!("16 MiB store_new: {:?}", t.elapsed());
    assert_eq!(
        s,
        Stored::Created {
            bytes: 16 << 20,
            sha256: want,
            stored_bytes: 16 << 20,
        }
    );
    assert_eq!(dest.size(SEG).unwrap(), Some(16 << 20));
    let t = Instant::now();
    assert!(read_all(&dest, SEG) == data, "read back differs");
    eprintln!("16 MiB open+read: {:?}", t.elapsed());
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));

    // Again: refused, nothing changed.
    let g = dir.join("other");
    make_file(&g, 1000, 2);
    assert_eq!(dest.store_new(SEG, &g).unwrap(), Stored::Exists);
    assert_eq!(dest.size(SEG).unwrap(), Some(16 << 20));

    // Replace the record, read it back, and back again.
    let wrong = [7u8; 32];
    dest.write_record(SEG, &wrong).unwrap();
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(wrong));
    dest.make_durable(SEG).unwrap();
    dest.write_record(SEG, &want).unwrap();
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));

    // List: only WAL names directly under the prefix.
    dest.store_new("00000002.history", &g).unwrap();
    dest.store_new(&format!("{SEG2}.partial"), &g).unwrap();
    dest.store_new("not-a-wal-file", &g).unwrap();
    let outside = S3Destination::new(settings(sw, "cluster-b/wal")).unwrap();
    outside.store_new(SEG2, &g).unwrap();
    let nested = S3Destination::new(settings(sw, "cluster-a/wal/sub")).unwrap();
    nested.store_new(SEG2, &g).unwrap();
    let sibling = S3Destination::new(settings(sw, "cluster-a/wal2")).unwrap();
    sibling.store_new(SEG2, &g).unwrap();
    let mut names = dest.list().unwrap();
    names.sort();
    let mut want_names = vec![
        "00000002.history".to_string(),
        SEG.to_string(),
        format!("{SEG2}.partial"),
    ];
    want_names.sort();
    assert_eq!(names, want_names);

    // Remove: object and record gone.
    dest.remove(SEG).unwrap();
    assert_eq!(dest.size(SEG).unwrap(), None);
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
    assert!(dest.open(SEG).unwrap().is_none());
    // A name stored again after remove gets its new record, not the old
    // sidecar's.
    assert!(matches!(
        dest.store_new(SEG, &g).unwrap(),
        Stored::Created { .. }
    ));
    assert_eq!(
        dest.recorded(SEG).unwrap(),
        Recorded::Digest(sha256(&std::fs::read(&g).unwrap()))
    );
    drop(dir);
}

/// Segments stored compressed (`X.zst`, from memory) in the bucket: the
/// store verifies the checksum of the compressed bytes, the view gives the
/// original back, and the duplicate rule spans both forms.
#[test]
fn compressed_segments_in_the_bucket() {
    use walarch_core::archiving::archive_protocol::{archive_file, ArchiveOutcome};
    use walarch_core::destination::compressing::Compressing;

    let sw = Seaweed::shared();
    let dest = S3Destination::new(settings(sw, "compressed/wal")).unwrap();
    let dir = scratch("compressed");
    let f = dir.join(SEG);
    // Records, then the zeros of a switched segment.
    make_file(&f, 1 << 20, 7);
    let mut data = std::fs::read(&f).unwrap();
    data.resize(16 << 20, 0);
    std::fs::write(&f, &data).unwrap();

    let zstd = Compressing::new(&dest, Some(1));
    let out = archive_file(&zstd, SEG, &f).unwrap();
    let z = format!("{SEG}.zst");
    let stored = dest.size(&z).unwrap().expect("compressed object");
    assert_eq!(dest.size(SEG).unwrap(), None);
    assert_eq!(
        out,
        ArchiveOutcome::Archived {
            bytes: 16 << 20,
            sha256: sha256(&data),
            stored_bytes: stored,
        }
    );
    assert!(stored < 2 << 20, "{stored} bytes");
    // The record is of the stored bytes, as sha256sum would check them.
    assert_eq!(
        dest.recorded(&z).unwrap(),
        Recorded::Digest(sha256(&read_all(&dest, &z)))
    );
    assert!(read_all(&zstd, SEG) == data);
    assert_eq!(
        dest.store_new_bytes(&z, b"other").unwrap(),
        Stored::Exists,
        "create-only"
    );

    // Offered again with compression off: judged by the original bytes.
    let plain = Compressing::new(&dest, None);
    assert!(matches!(
        archive_file(&plain, SEG, &f).unwrap(),
        ArchiveOutcome::AlreadyArchived { .. }
    ));
    assert_eq!(dest.size(SEG).unwrap(), None, "no second copy");
    let mut other = data.clone();
    other[100] ^= 1;
    std::fs::write(&f, &other).unwrap();
    let e = archive_file(&plain, SEG, &f).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert_eq!(plain.list().unwrap(), vec![SEG.to_string()]);
    zstd.remove(SEG).unwrap();
    assert!(dest.list().unwrap().is_empty());
}

/// Encrypted forms (`.zst.age`, `.history.age`) in the bucket, their
/// originals in the metadata (`common::encrypted_forms`).
#[test]
fn encrypted_forms_in_the_bucket() {
    let sw = Seaweed::shared();
    let dest = S3Destination::new(settings(sw, "encrypted/wal")).unwrap();
    common::encrypted_forms(&dest, "s3-encrypted");
    // At the bucket's root too (no prefix: the listing's prefix is the
    // name's beginning alone).
    let root = S3Destination::new(settings(sw, "")).unwrap();
    common::sizes_agree(&root, &common::forms_of(SEG));
}

/// The forms of a WAL file are looked up in one listing of the keys that
/// begin with its name (not a directory), whatever stands next to them; a
/// single name, or names that share too little, take a HEAD each.
#[test]
fn the_forms_of_a_file_are_one_listing() {
    let sw = Seaweed::shared();
    let upstream = sw.endpoint.trim_start_matches("http://").to_string();
    let (port, lines) = common::recording_proxy(upstream);
    let mut s = settings(sw, "one-listing/wal");
    s.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let dest = S3Destination::new(s).unwrap();
    dest.store_new_bytes(&format!("{SEG}.zst"), b"compressed")
        .unwrap();
    dest.store_new_bytes(&format!("{SEG}.partial"), b"partial")
        .unwrap();
    dest.write_record(&format!("{SEG}.zst"), &[1; 32]).unwrap();
    dest.store_new_bytes(SEG2, b"next").unwrap();

    let forms = common::forms_of(SEG);
    lines.lock().unwrap().clear();
    let sizes = dest.sizes_of(&forms).unwrap();
    let sent = std::mem::take(&mut *lines.lock().unwrap());
    assert_eq!(sizes, vec![None, Some(10), None, None], "{forms:?}");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].starts_with("GET /wal?")
            && sent[0].contains("list-type=2")
            // One character short of the name (see shared::listed_prefix).
            && sent[0].contains(&format!("prefix=one-listing%2Fwal%2F{}", &SEG[..SEG.len() - 1]))
            && !sent[0].contains(&format!("prefix=one-listing%2Fwal%2F{SEG}")),
        "{sent:?}"
    );
    common::sizes_agree(&dest, &forms);

    lines.lock().unwrap().clear();
    let names = [SEG.to_string(), "00000002.history".to_string()];
    assert_eq!(dest.sizes_of(&names).unwrap(), vec![None, None]);
    let sent = std::mem::take(&mut *lines.lock().unwrap());
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|l| l.starts_with("HEAD ")), "{sent:?}");
}

#[test]
fn malformed_and_missing_metadata() {
    let sw = Seaweed::shared();
    let dest = S3Destination::new(settings(sw, "meta")).unwrap();
    // Objects put by someone else: no metadata, and a bad one.
    let ep = &sw.endpoint;
    let sig = "aws:amz:us-east-1:s3".to_string();
    let user = format!("{}:{}", sw.access_key, sw.secret_key);
    for (name, header) in [(SEG, None), (SEG2, Some("x-amz-meta-sha256: nothex"))] {
        let mut c = Command::new("curl");
        c.args(["-sf", "-X", "PUT", "--data-binary", "abc"])
            .args(["--aws-sigv4", &sig, "--user", &user])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
        if let Some(h) = header {
            c.args(["-H", h]);
        }
        let st = c.arg(format!("{ep}/wal/meta/{name}")).status().unwrap();
        assert!(st.success());
    }
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
    assert_eq!(dest.recorded(SEG2).unwrap(), Recorded::Malformed);
    let d = sha256(b"abc");
    dest.write_record(SEG2, &d).unwrap();
    assert_eq!(dest.recorded(SEG2).unwrap(), Recorded::Digest(d));
}

/// With the HEAD check off, the store itself must refuse: If-None-Match on
/// PUT, and on CompleteMultipartUpload (our presigned request).
#[test]
fn store_refuses_overwrite_without_head_check_single_and_multipart() {
    let sw = Seaweed::shared();
    let mut s = settings(sw, "create-only");
    s.multipart_threshold = 8 << 20;
    s.part_size = 5 << 20;
    s.head_before_put = false;
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("create-only");
    let small = dir.join("small");
    make_file(&small, 100_000, 3);
    let big = dir.join("big");
    make_file(&big, (12 << 20) + 12345, 4);
    let big_data = std::fs::read(&big).unwrap();

    assert!(matches!(
        dest.store_new(SEG, &small).unwrap(),
        Stored::Created { .. }
    ));
    assert_eq!(
        dest.store_new(SEG, &big).unwrap(),
        Stored::Exists,
        "PUT If-None-Match"
    );
    assert_eq!(dest.size(SEG).unwrap(), Some(100_000));

    // Multipart: 3 parts (5 + 5 + 2 MiB), create-only completion.
    let t = Instant::now();
    let s = dest.store_new(SEG2, &big).unwrap();
    eprintln!("12 MiB multipart store_new: {:?}", t.elapsed());
    assert_eq!(
        s,
        Stored::Created {
            bytes: big_data.len() as u64,
            sha256: sha256(&big_data),
            stored_bytes: big_data.len() as u64,
        }
    );
    assert!(
        read_all(&dest, SEG2) == big_data,
        "multipart read back differs"
    );
    assert_eq!(
        dest.recorded(SEG2).unwrap(),
        Recorded::Digest(sha256(&big_data))
    );
    // Again, multipart onto the existing name: the completion gets 412.
    let big2 = dir.join("big2");
    make_file(&big2, (12 << 20) + 1, 5);
    assert_eq!(
        dest.store_new(SEG2, &big2).unwrap(),
        Stored::Exists,
        "complete If-None-Match"
    );
    assert!(read_all(&dest, SEG2) == big_data, "object was replaced");
    drop(dir);
}

#[test]
fn wrong_secret_gives_the_credentials_message() {
    let sw = Seaweed::shared();
    let mut s = settings(sw, "creds");
    s.secret_access_key = Some("definitely-not-the-secret-0123456789".into());
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("creds");
    let f = dir.join("f");
    make_file(&f, 1000, 6);
    let e = dest.store_new(SEG, &f).unwrap_err();
    show("wrong secret, store_new (HEAD, no body)", &e);
    assert_eq!(e.kind, ErrorKind::Configuration);
    assert!(e.message.contains("refused the credentials"), "{e}");
    assert_no_secret(&e, "definitely-not-the-secret");
    let e = dest.list().unwrap_err();
    show("wrong secret, list", &e);
    assert!(
        e.message
            .contains("refused the credentials (SignatureDoesNotMatch)"),
        "{e}"
    );
    assert_no_secret(&e, "definitely-not-the-secret");
    assert_no_secret(&e, &sw.secret_key);

    let mut s = settings(sw, "creds");
    s.access_key_id = Some("nosuchkey".into());
    let e = S3Destination::new(s).unwrap().list().unwrap_err();
    show("unknown access key, list", &e);
    assert!(e.message.contains("refused the credentials"), "{e}");
    drop(dir);
}

#[test]
fn missing_bucket_gives_the_bucket_message() {
    let sw = Seaweed::shared();
    let mut s = settings(sw, "x");
    s.bucket = "no-such-bucket".into();
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("bucket");
    let f = dir.join("f");
    make_file(&f, 1000, 7);
    let e = dest.store_new(SEG, &f).unwrap_err();
    show("missing bucket, store_new", &e);
    assert_eq!(
        e.message,
        "could not store \"s3://no-such-bucket/x/000000010000000000000001\": bucket \"no-such-bucket\" does not exist"
    );
    let e = dest.list().unwrap_err();
    show("missing bucket, list", &e);
    assert!(
        e.message
            .ends_with("bucket \"no-such-bucket\" does not exist"),
        "{e}"
    );
    // Reading from it is an error too, never "no such file" (which restore
    // would report as the end of the archive).
    let e = dest.open(SEG).err().expect("an error, not None");
    show("missing bucket, open", &e);
    assert!(e.message.ends_with("does not exist"), "{e}");
    assert!(dest.is_empty().is_err());
    // An empty prefix of a bucket that exists is empty; one with a file is not.
    let empty = S3Destination::new(settings(sw, "nothing-here")).unwrap();
    assert!(empty.is_empty().unwrap());
    assert!(empty.open(SEG).unwrap().is_none());
    drop(dir);
}

#[test]
fn endpoint_down_gives_the_unreachable_message_in_time() {
    let port = common::dead_port();
    let mut s = S3Settings::new("wal");
    s.endpoint = Some(format!("http://127.0.0.1:{port}"));
    s.access_key_id = Some("k".into());
    s.secret_access_key = Some("s3cr3t-value".into());
    s.timeout = Duration::from_secs(3);
    s.connect_timeout = Duration::from_secs(1);
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("down");
    let f = dir.join("f");
    make_file(&f, 1000, 8);
    let t = Instant::now();
    let e = dest.store_new(SEG, &f).unwrap_err();
    let took = t.elapsed();
    show(&format!("nothing listening, store_new ({took:?})"), &e);
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("is unreachable"), "{e}");
    assert!(
        e.detail.as_deref().unwrap().contains("onnection refused"),
        "{e}"
    );
    assert_no_secret(&e, "s3cr3t-value");
    // The forms of a file, looked up at once: unavailable, never absent.
    let e = dest.sizes_of(&common::forms_of(SEG)).unwrap_err();
    show("nothing listening, sizes_of", &e);
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("is unreachable"), "{e}");

    // Unresolvable host name (DNS).
    let mut s = S3Settings::new("wal");
    s.endpoint = Some("http://no-such-host.invalid:9000".into());
    s.access_key_id = Some("k".into());
    s.secret_access_key = Some("s".into());
    s.timeout = Duration::from_secs(3);
    let t = Instant::now();
    let e = S3Destination::new(s).unwrap().list().unwrap_err();
    show(&format!("unresolvable host, list ({:?})", t.elapsed()), &e);
    assert!(e.message.contains("is unreachable"), "{e}");
    drop(dir);
}

#[test]
fn hung_store_times_out_within_the_deadline() {
    let sw = Seaweed::start("hang", None);
    let mut s = settings(&sw, "hang");
    s.timeout = Duration::from_secs(3);
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("hang");
    let f = dir.join("f");
    make_file(&f, 1 << 20, 9);
    assert!(matches!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created { .. }
    ));

    sw.signal(common::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = Instant::now();
        let e = dest.store_new(SEG2, &f).unwrap_err();
        let took = t.elapsed();
        show(&format!("SIGSTOPped store, store_new ({took:?})"), &e);
        assert!(took < Duration::from_millis(4500), "{took:?}");
        assert!(e.message.contains("did not answer within 3 s"), "{e}");
        let t = Instant::now();
        let e = dest.recorded(SEG).unwrap_err();
        let took = t.elapsed();
        show(&format!("SIGSTOPped store, recorded ({took:?})"), &e);
        assert!(took < Duration::from_millis(4500), "{took:?}");
    }));
    sw.signal(common::SIGCONT);
    result.unwrap();

    // Reads that stall mid-body.
    let big = dir.join("big");
    make_file(&big, 16 << 20, 10);
    dest.store_new(SEG2, &big).unwrap();
    let mut r = dest.open(SEG2).unwrap().unwrap();
    let mut first = vec![0u8; 1024];
    r.read_exact(&mut first).unwrap();
    sw.signal(common::SIGSTOP);
    let t = Instant::now();
    let mut rest = Vec::new();
    let e = r.read_to_end(&mut rest);
    let took = t.elapsed();
    sw.signal(common::SIGCONT);
    // Buffered chunks may arrive; what is left must fail in time.
    eprintln!(
        "=== SIGSTOPped store mid-read ({took:?}, {} bytes read): {:?}",
        rest.len(),
        e
    );
    assert!(e.is_err() || rest.len() + 1024 == 16 << 20);
    assert!(took < Duration::from_millis(7000), "{took:?}");
    drop(sw);
    drop(dir);
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

/// A private CA and a server certificate for 127.0.0.1 signed by it.
fn make_ca(dir: &Path) {
    openssl(
        &[
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
        ],
        dir,
    );
    openssl(
        &[
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
        ],
        dir,
    );
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
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
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.pem",
            "-days",
            "2",
            "-subj",
            "/CN=some other CA",
        ],
        dir,
    );
}

#[test]
fn tls_with_a_private_ca() {
    let dir = scratch("tls");
    make_ca(&dir);
    let sw = Seaweed::start("tls", Some((&dir.join("srv.pem"), &dir.join("srv.key"))));
    let https = sw.https_endpoint.clone().unwrap();
    let f = dir.join("f");
    make_file(&f, 3 << 20, 11);

    // Not trusted: the system's CAs do not know ours.
    let mut s = settings(&sw, "tls");
    s.endpoint = Some(https.clone());
    s.timeout = Duration::from_secs(5);
    let e = S3Destination::new(s.clone())
        .unwrap()
        .store_new(SEG, &f)
        .unwrap_err();
    show("TLS, CA not trusted", &e);
    assert!(e.message.contains("TLS connection"), "{e}");
    assert_eq!(e.kind, ErrorKind::Configuration);

    // Trusted with only another CA.
    let mut wrong = s.clone();
    wrong.ca_file = Some(dir.join("other.pem"));
    wrong.ca_only = true;
    let e = S3Destination::new(wrong).unwrap().list().unwrap_err();
    show("TLS, only another CA trusted", &e);
    assert!(e.message.contains("TLS connection"), "{e}");

    // The private CA: works, multipart (presigned completion) included.
    let mut good = s.clone();
    good.ca_file = Some(dir.join("ca.pem"));
    good.ca_only = true;
    good.multipart_threshold = 5 << 20;
    good.part_size = 5 << 20;
    let dest = S3Destination::new(good).unwrap();
    assert!(matches!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created { .. }
    ));
    let big = dir.join("big");
    make_file(&big, 11 << 20, 12);
    let st = dest.store_new(SEG2, &big).unwrap();
    assert!(matches!(st, Stored::Created { .. }));
    assert!(read_all(&dest, SEG2) == std::fs::read(&big).unwrap());
    assert_eq!(dest.store_new(SEG2, &big).unwrap(), Stored::Exists);

    // HTTPS client onto the plain HTTP port: TLS fails too.
    let mut plain = s.clone();
    plain.endpoint = Some(sw.endpoint.replace("http://", "https://"));
    let e = S3Destination::new(plain).unwrap().list().unwrap_err();
    show("TLS to a plain HTTP port", &e);
    assert!(e.message.contains("TLS connection"), "{e}");
    drop(sw);
    drop(dir);
}

#[test]
fn checksum_is_sent_and_verified_by_the_store() {
    // object_store sends x-amz-checksum-sha256 (checked here through the
    // store's answer: SeaweedFS stores and returns it on HEAD); a wrong
    // one is refused (seaweed.sh verify checks that with curl, and the
    // message mapping is unit-tested in s3_error).
    let sw = Seaweed::shared();
    let dest = S3Destination::new(settings(sw, "cksum")).unwrap();
    let dir = scratch("cksum");
    let f = dir.join("f");
    make_file(&f, 70_000, 13);
    let data = std::fs::read(&f).unwrap();
    dest.store_new(SEG, &f).unwrap();
    let out = Command::new("curl")
        .args(["-sfI", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!("{}:{}", sw.access_key, sw.secret_key))
        .args(["-H", "x-amz-checksum-mode: ENABLED"])
        .arg(format!("{}/wal/cksum/{SEG}", sw.endpoint))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    eprintln!("HEAD of an object stored by store_new:\n{head}");
    assert!(
        head.contains(&format!("x-amz-meta-sha256: {}", to_hex(&sha256(&data)))),
        "{head}"
    );
    drop(dir);
}

/// A TCP proxy that flips one byte of the first request body on each
/// connection, and records the request heads it forwarded.
fn corrupting_proxy(upstream: String) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let heads2 = Arc::clone(&heads);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { break };
            let Ok(mut u) = TcpStream::connect(&upstream) else {
                break;
            };
            let (mut c2, mut u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let heads = Arc::clone(&heads2);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut body_at: Option<usize> = None;
                let mut flipped = false;
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let start = seen.len();
                    seen.extend_from_slice(&buf[..n]);
                    if body_at.is_none() {
                        if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            body_at = Some(i + 4);
                            heads
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&seen[..i]).into_owned());
                        }
                    }
                    if let (Some(b), false) = (body_at, flipped) {
                        let target = b + 1000;
                        if target >= start && target < seen.len() {
                            buf[target - start] ^= 0xff;
                            flipped = true;
                        }
                    }
                    if u.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = u.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, heads)
}

#[test]
fn corrupted_upload_is_rejected_with_the_checksum_message() {
    let sw = Seaweed::shared();
    let upstream = sw.endpoint.trim_start_matches("http://").to_string();
    let (port, heads) = corrupting_proxy(upstream);
    let mut s = settings(sw, "corrupt");
    s.endpoint = Some(format!("http://127.0.0.1:{port}"));
    s.head_before_put = false;
    s.max_retries = 0;
    let dest = S3Destination::new(s).unwrap();
    let dir = scratch("corrupt");
    let f = dir.join("f");
    make_file(&f, 200_000, 14);
    let e = dest.store_new(SEG, &f).unwrap_err();
    show("byte flipped in transit, store_new", &e);
    let head = heads.lock().unwrap()[0].to_ascii_lowercase();
    eprintln!("request head as sent by object_store:\n{head}");
    assert!(
        head.starts_with("put /wal/corrupt/000000010000000000000001 "),
        "{head}"
    );
    assert!(head.contains("\r\nif-none-match: *"), "{head}");
    assert!(head.contains("\r\nx-amz-checksum-sha256: "), "{head}");
    assert!(head.contains("\r\nx-amz-meta-sha256: "), "{head}");
    assert!(e.message.contains("rejected the upload's checksum"), "{e}");
    // Nothing stored.
    let direct = S3Destination::new(settings(sw, "corrupt")).unwrap();
    assert_eq!(direct.size(SEG).unwrap(), None);
    drop(dir);
}

/// A 403 for an object is told apart: refused credentials, an object the
/// credentials may not access (they may list the bucket), or, when they
/// may not list it either, a file that may just be missing (S3 answers 403
/// for a missing key without s3:ListBucket). Identities with restricted
/// actions make the store answer 403.
#[test]
fn a_403_for_an_object_says_what_to_grant() {
    let identity = |name: &str, actions: &str| {
        format!(
            r#"{{"name": "{name}", "credentials": [{{"accessKey": "{name}", "secretKey": "{name}-secret-0123456789"}}], "actions": [{actions}]}}"#
        )
    };
    let sw = Seaweed::start_with_identities(
        "perm",
        &[
            identity("writeonly", r#""Write""#),
            identity("nogets", r#""Write", "List""#),
        ]
        .join(","),
    );
    let as_user = |user: &str| {
        let mut s = settings(&sw, "perm");
        s.access_key_id = Some(user.into());
        s.secret_access_key = Some(format!("{user}-secret-0123456789"));
        S3Destination::new(s).unwrap()
    };
    let full = S3Destination::new(settings(&sw, "perm")).unwrap();
    let dir = scratch("perm");
    let f = dir.join("f");
    make_file(&f, 1000, 9);
    assert!(matches!(
        full.store_new(SEG, &f).unwrap(),
        Stored::Created { .. }
    ));

    // May list, may not read: access denied, grant s3:GetObject.
    let nogets = as_user("nogets");
    for (case, e) in [
        ("list but no read, open", nogets.open(SEG).err().unwrap()),
        (
            "list but no read, recorded",
            nogets.recorded(SEG).unwrap_err(),
        ),
        ("list but no read, size", nogets.size(SEG).unwrap_err()),
    ] {
        show(case, &e);
        assert_eq!(e.kind, ErrorKind::Configuration, "{case}");
        assert!(
            e.message.contains("S3 store denied access to it"),
            "{case}: {e}"
        );
        assert!(
            !e.message.contains("refused the credentials"),
            "{case}: {e}"
        );
        assert!(
            e.hint.as_deref().unwrap().contains("s3:GetObject"),
            "{case}"
        );
    }

    // May not list either: existing or not, the file may be missing; the
    // message names s3:ListBucket and never reads as "not found".
    let writeonly = as_user("writeonly");
    for name in [SEG, SEG2] {
        let e = writeonly.open(name).err().expect("not Ok(None): not a 404");
        show("no list, no read, open", &e);
        assert_eq!(e.kind, ErrorKind::Configuration);
        assert!(
            e.message
                .contains("may not list the bucket (s3:ListBucket): the file may be missing"),
            "{e}"
        );
        assert!(e.hint.as_deref().unwrap().contains("s3:ListBucket"), "{e}");
        assert!(!e.message.contains("refused the credentials"), "{e}");
        let e = writeonly.size(name).unwrap_err();
        assert!(
            e.message
                .contains("may not list the bucket (s3:ListBucket): the file may be missing"),
            "{e}"
        );
    }

    // A missing file for credentials that may list and read: a plain 404.
    assert!(full.open(SEG2).unwrap().is_none());
    assert_eq!(full.size(SEG2).unwrap(), None);

    // Refused credentials still say so.
    let mut s = settings(&sw, "perm");
    s.secret_access_key = Some("definitely-not-the-secret-0123456789".into());
    let e = S3Destination::new(s).unwrap().open(SEG).err().unwrap();
    show("wrong secret, open", &e);
    assert!(e.message.contains("refused the credentials"), "{e}");
    drop(dir);
}
