//! Streamed objects (base backups) in a live SeaweedFS bucket.

mod common;

use std::io::Read;
use std::time::Instant;

use common::{settings, Seaweed};
use walarch_core::destination::{Destination, ObjectEntry};
use walarch_core::support::error::ErrorKind;
use walarch_core::wal::checksum::sha256;
use walarch_s3::S3Destination;

fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn dest(sw: &Seaweed, prefix: &str) -> S3Destination {
    let mut s = settings(sw, prefix);
    s.part_size = 5 << 20;
    S3Destination::new(s).unwrap()
}

fn store(d: &dyn Destination, name: &str, data: &[u8]) -> Result<u64, ErrorKind> {
    let mut w = d.create_object(name).map_err(|e| e.kind)?;
    for c in data.chunks(1 << 20) {
        w.write(c).map_err(|e| e.kind)?;
    }
    w.finish().map_err(|e| e.kind)
}

fn read(d: &dyn Destination, name: &str) -> Option<Vec<u8>> {
    let mut r = d.open_object(name).unwrap()?;
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    Some(v)
}

#[test]
fn multipart_and_single_objects_create_only_list_read_remove() {
    let sw = Seaweed::shared();
    let d = dest(sw, "objects-a");
    // 7 parts of 5 MiB and a short last one: more than the parts in flight.
    let big = bytes((35 << 20) + 12_345, 1);
    let t = Instant::now();
    assert_eq!(
        store(&d, "backups/L/base.tar.zst", &big),
        Ok(big.len() as u64)
    );
    eprintln!("35 MiB object: {:?}", t.elapsed());
    let small = b"{\"label\": \"L\"}\n".to_vec();
    assert_eq!(
        store(&d, "backups/L/backup.started", &small),
        Ok(small.len() as u64)
    );
    // Exactly one part: a single PUT.
    let one = bytes(5 << 20, 2);
    assert_eq!(store(&d, "backups/L/one", &one), Ok(5 << 20));
    // Not under the prefix asked for.
    store(&d, "backups/L2/backup.started", b"x").unwrap();
    dest(sw, "objects-other")
        .create_object("backups/L/x")
        .and_then(|w| w.finish())
        .unwrap();

    let mut under = d.objects_under("backups/L/").unwrap();
    under.sort_by(|a, b| a.name.cmp(&b.name));
    // Each with the time the store gives (retention judges incomplete
    // backups by it); compared without it.
    assert!(under.iter().all(|o| o.stored_at.is_some()), "{under:?}");
    under.iter_mut().for_each(|o| o.stored_at = None);
    let entry = |n: &str, size: usize| ObjectEntry {
        name: n.into(),
        size: size as u64,
        stored_at: None,
    };
    assert_eq!(
        under,
        [
            entry("backups/L/backup.started", small.len()),
            entry("backups/L/base.tar.zst", big.len()),
            entry("backups/L/one", one.len()),
        ]
    );
    assert_eq!(d.objects_under("backups/").unwrap().len(), 4);
    assert!(sha256(&read(&d, "backups/L/base.tar.zst").unwrap()) == sha256(&big));
    assert_eq!(read(&d, "backups/L/backup.started").unwrap(), small);

    // Create-only, whatever the size; nothing changed.
    assert_eq!(
        store(&d, "backups/L/base.tar.zst", &bytes(12 << 20, 3)),
        Err(ErrorKind::Conflict)
    );
    assert_eq!(
        store(&d, "backups/L/backup.started", b"other"),
        Err(ErrorKind::Conflict)
    );
    assert_eq!(read(&d, "backups/L/backup.started").unwrap(), small);
    assert!(sha256(&read(&d, "backups/L/base.tar.zst").unwrap()) == sha256(&big));

    for n in [
        "backups/L/base.tar.zst",
        "backups/L/backup.started",
        "backups/L/one",
    ] {
        d.remove_object(n).unwrap();
    }
    d.remove_object("backups/L/never-was").unwrap();
    assert!(d.objects_under("backups/L/").unwrap().is_empty());
    assert!(read(&d, "backups/L/one").is_none());
}

#[test]
fn an_aborted_upload_leaves_nothing_visible() {
    let sw = Seaweed::shared();
    let d = dest(sw, "objects-b");
    let mut w = d.create_object("backups/A/base.tar.zst").unwrap();
    w.write(&bytes(17 << 20, 4)).unwrap();
    w.abort();
    // A writer dropped without finish shows nothing either.
    let mut w = d.create_object("backups/A/16385.tar.zst").unwrap();
    w.write(&bytes(11 << 20, 5)).unwrap();
    drop(w);
    assert!(d.objects_under("backups/A/").unwrap().is_empty());
    // The name is free.
    assert_eq!(store(&d, "backups/A/base.tar.zst", b"after"), Ok(5));
}
