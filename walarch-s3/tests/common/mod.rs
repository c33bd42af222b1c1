//! Shared by the live tests: the store's settings for a prefix, test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

#[allow(unused_imports)]
pub use walarch_integration::seaweed::{dead_port, Seaweed, SIGCONT, SIGSTOP};
use walarch_s3::S3Settings;

/// A file of `len` bytes of a pattern that differs with `seed`.
pub fn make_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    std::fs::write(path, v).unwrap();
}

/// A scratch directory, removed on drop (also when a test panics).
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("s3proto-files-{}-{}", std::process::id(), tag));
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Peak RSS (VmHWM) of this process, in KiB.
pub fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Resets VmHWM to the current RSS (Linux >= 4.0).
pub fn reset_vm_hwm() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The bytes stored under `name`, which must exist.
pub fn read_all(dest: &dyn walarch_core::destination::Destination, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut r = dest.open(name).unwrap().expect("object exists");
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

/// Prints an error's parts, for reading the messages in the test output.
pub fn show(case: &str, e: &walarch_core::support::error::ArchiveError) {
    eprintln!(
        "=== {case}\n  kind: {:?}\n  message: {}\n  detail: {}\n  hint: {}",
        e.kind,
        e.message,
        e.detail.as_deref().unwrap_or("-"),
        e.hint.as_deref().unwrap_or("-")
    );
}

/// Settings of the store for keys under `prefix`.
pub fn settings(s3: &Seaweed, prefix: &str) -> S3Settings {
    let mut s = S3Settings::new(s3.bucket.clone());
    s.endpoint = Some(s3.endpoint.clone());
    s.prefix = prefix.to_string();
    s.access_key_id = Some(s3.access_key.clone());
    s.secret_access_key = Some(s3.secret_key.clone());
    s.timeout = Duration::from_secs(30);
    s.connect_timeout = Duration::from_secs(2);
    s
}

/// A fresh age key pair: (recipients, identities).
pub fn age_keys() -> (
    walarch_core::destination::sealed::Recipients,
    walarch_core::destination::sealed::Identities,
) {
    use age::secrecy::ExposeSecret;
    use walarch_core::destination::sealed::{Identities, Recipients};
    let id = age::x25519::Identity::generate();
    (
        Recipients::parse(&id.to_public().to_string(), "test recipient").unwrap(),
        Identities::parse(id.to_string().expose_secret(), "test identity").unwrap(),
    )
}

/// `sizes_of` says what `size` says of each name, one by one.
pub fn sizes_agree(dest: &dyn walarch_core::destination::Destination, names: &[String]) {
    let one_by_one: Vec<Option<u64>> = names.iter().map(|n| dest.size(n).unwrap()).collect();
    assert_eq!(dest.sizes_of(names).unwrap(), one_by_one, "{names:?}");
}

/// The four names a WAL file may be stored under.
pub fn forms_of(wal: &str) -> Vec<String> {
    use walarch_core::wal::walname::{form_name, Form};
    Form::ALL
        .into_iter()
        .filter_map(|f| form_name(wal, f))
        .collect()
}

/// Encrypted forms through the archive view, on an empty `dest`: a segment
/// stored `.zst.age` and a history file `.history.age`, their originals
/// recorded beside the stored digest; `sizes_of` as `size`; the duplicate
/// rule across forms, judged by the record without a key; a record that
/// does not vouch refused with nothing changed; read back with the key.
pub fn encrypted_forms(dest: &dyn walarch_core::destination::Destination, tag: &str) {
    use std::sync::Arc;
    use walarch_core::archiving::archive_protocol::{archive_file, ArchiveOutcome};
    use walarch_core::destination::compressed::Original;
    use walarch_core::destination::compressing::{Compressing, Sealing};
    use walarch_core::destination::{Destination, Recorded, Stored};
    use walarch_core::support::error::ErrorKind;
    use walarch_core::wal::checksum::sha256;

    const SEG: &str = "000000010000000000000001";
    const HIST: &str = "00000002.history";
    let (recipients, identities) = age_keys();
    let sealing = Sealing::To(Arc::new(recipients));
    let dir = scratch(tag);
    let f = dir.join(SEG);
    // Records, then the zeros of a switched segment.
    make_file(&f, 1 << 20, 11);
    let mut data = std::fs::read(&f).unwrap();
    data.resize(16 << 20, 0);
    std::fs::write(&f, &data).unwrap();
    let h = dir.join(HIST);
    let hist = b"1\t0/3000000\tno recovery target specified\n".to_vec();
    std::fs::write(&h, &hist).unwrap();

    let sealed = Compressing::new(dest, Some(1)).sealing(sealing.clone());
    let out = archive_file(&sealed, SEG, &f).unwrap();
    let zst_age = format!("{SEG}.zst.age");
    let stored = dest.size(&zst_age).unwrap().expect("the encrypted form");
    assert_eq!(
        out,
        ArchiveOutcome::Archived {
            bytes: 16 << 20,
            sha256: sha256(&data),
            stored_bytes: stored,
        }
    );
    assert!(stored < 2 << 20, "compressed before encryption: {stored}");
    let stored_bytes = read_all(dest, &zst_age);
    // The record is of the stored bytes (sha256sum -c without a key), the
    // original beside it.
    assert_eq!(
        dest.recorded(&zst_age).unwrap(),
        Recorded::Digest(sha256(&stored_bytes))
    );
    let seg_original = Original {
        sha256: sha256(&data),
        len: data.len() as u64,
    };
    assert_eq!(
        dest.recorded_original(&zst_age).unwrap(),
        Some(seg_original)
    );
    for n in forms_of(SEG).iter().filter(|n| **n != zst_age) {
        assert_eq!(dest.size(n).unwrap(), None, "{n}");
    }

    assert!(matches!(
        archive_file(&sealed, HIST, &h).unwrap(),
        ArchiveOutcome::Archived { bytes, .. } if bytes == hist.len() as u64
    ));
    let hist_age = format!("{HIST}.age");
    assert!(dest.size(&hist_age).unwrap().is_some());
    assert_eq!(dest.size(HIST).unwrap(), None);
    assert_eq!(
        dest.recorded_original(&hist_age).unwrap(),
        Some(Original {
            sha256: sha256(&hist),
            len: hist.len() as u64,
        })
    );
    // Neither an absent name nor a form stored without encryption has one.
    assert_eq!(dest.recorded_original(&format!("{SEG}.age")).unwrap(), None);
    let partial = format!("{SEG}.partial");
    assert!(matches!(
        dest.store_new_bytes(&partial, b"a partial segment")
            .unwrap(),
        Stored::Created { .. }
    ));
    assert_eq!(dest.recorded_original(&partial).unwrap(), None);
    // Create-only, like every store.
    assert_eq!(
        dest.store_new_sealed(&zst_age, b"other", &seg_original)
            .unwrap(),
        Stored::Exists
    );

    // One listing answers as the lookups one by one: present and absent
    // forms, next to `SEG.partial` (a longer key with the same beginning),
    // a WAL file with nothing stored, names sharing too little to list.
    sizes_agree(dest, &forms_of(SEG));
    sizes_agree(dest, &[SEG.to_string(), format!("{SEG}.zst")]);
    sizes_agree(dest, &forms_of(HIST));
    // A plain form present: its key is the forms' whole common
    // beginning (a listing by exactly that prefix misses it on Azure).
    sizes_agree(dest, &forms_of(&partial));
    sizes_agree(dest, &forms_of("000000010000000000000002"));
    sizes_agree(dest, &[SEG.to_string(), hist_age.clone(), partial.clone()]);
    sizes_agree(dest, std::slice::from_ref(&zst_age));
    sizes_agree(dest, &[]);

    // Offered again, with compression and encryption off or on: judged by
    // the record without a key, no second form.
    let plain = Compressing::new(dest, None);
    let zstd = Compressing::new(dest, Some(1));
    let sealed_plain = Compressing::new(dest, None).sealing(sealing.clone());
    for (what, view) in [
        ("plain", &plain),
        ("compressed", &zstd),
        ("encrypted", &sealed_plain),
        ("compressed and encrypted", &sealed),
    ] {
        for (name, file) in [(SEG, &f), (HIST, &h)] {
            match archive_file(view, name, file) {
                Ok(ArchiveOutcome::AlreadyArchived { sha256: d, .. }) => {
                    assert_eq!(d, sha256(&std::fs::read(file).unwrap()), "{what} {name}")
                }
                other => panic!("{what} {name}: {other:?}"),
            }
        }
    }
    let mut listed = dest.list().unwrap();
    listed.sort();
    let mut want = vec![hist_age.clone(), zst_age.clone(), partial.clone()];
    want.sort();
    assert_eq!(listed, want);
    // Other bytes: a conflict, whichever form would take them.
    let mut other = data.clone();
    other[100] ^= 1;
    let g = dir.join("other");
    std::fs::write(&g, &other).unwrap();
    for (what, view) in [("plain", &plain), ("encrypted", &sealed)] {
        let e = archive_file(view, SEG, &g).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{what}: {e}");
    }

    // Read back with the key: the original bytes.
    let opening = Compressing::new(dest, Some(1)).opening(Some(Arc::new(identities)));
    assert!(read_all(&opening, SEG) == data, "decrypted segment differs");
    assert_eq!(read_all(&opening, HIST), hist);
    // Without one, never "not in the archive".
    assert!(plain.open(SEG).is_err());

    // A record that does not vouch for the stored bytes (replaced by a
    // wrong digest, no original): refused, nothing changed.
    dest.write_record(&zst_age, &[7u8; 32]).unwrap();
    assert_eq!(dest.recorded_original(&zst_age).unwrap(), None);
    sizes_agree(dest, &forms_of(SEG));
    for view in [&sealed, &plain] {
        let e = archive_file(view, SEG, &f).unwrap_err();
        show("record does not vouch", &e);
        assert!(
            e.message
                .contains("is encrypted and its checksum record does not vouch"),
            "{e}"
        );
    }
    assert!(
        read_all(dest, &zst_age) == stored_bytes,
        "the stored form changed"
    );
    assert_eq!(
        dest.recorded(&zst_age).unwrap(),
        Recorded::Digest([7u8; 32])
    );
    let mut after = dest.list().unwrap();
    after.sort();
    assert_eq!(after, listed);
}

/// A TCP proxy that records the request line of every request it forwards
/// (keep-alive connections included: each head, then its body by
/// Content-Length).
pub fn recording_proxy(upstream: String) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { break };
            let Ok(mut u) = TcpStream::connect(&upstream) else {
                break;
            };
            let (mut c2, mut u2) = (c.try_clone().unwrap(), u.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Write);
            });
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut r = BufReader::new(c);
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let first = head.lines().next().unwrap_or("").to_string();
                    seen.lock().unwrap().push(first);
                    let mut body = vec![0u8; len];
                    if std::io::Read::read_exact(&mut r, &mut body).is_err()
                        || u.write_all(head.as_bytes()).is_err()
                        || u.write_all(&body).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, lines)
}
