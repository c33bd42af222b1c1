//! The Azure Blob Storage destination against a live Azurite (started by
//! scripts/azurite.sh), no PostgreSQL: create-only stores (single and in
//! blocks), records, reads with their digest checked, listing, removal,
//! damage, and failures classified.

mod common;

use std::time::Duration;

use common::{make_file, read_all, scratch, show};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::path::Path as ObjPath;
use object_store::{Attribute, Attributes, ObjectStore, PutMode, PutOptions};
use walarch_core::destination::{Destination, Recorded, Stored};
use walarch_core::restore::{restore, RestoreError};
use walarch_core::support::error::ErrorKind;
use walarch_core::wal::checksum::{sha256, to_hex};
use walarch_integration::azurite::{Azurite, ACCOUNT, KEY};
use walarch_s3::{AzureSettings, CloudDestination, CloudSettings, AZURITE_KEY};

const SEG: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

fn settings(az: &Azurite, prefix: &str) -> AzureSettings {
    let mut s = AzureSettings::new(az.container.clone());
    s.account = Some(ACCOUNT.into());
    s.endpoint = Some(az.endpoint.clone());
    s.access_key = Some(KEY.into());
    s.common = CloudSettings {
        prefix: prefix.into(),
        timeout: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    s
}

/// Small parts, so that a few MiB take several blocks.
fn small_parts(az: &Azurite, prefix: &str) -> AzureSettings {
    let mut s = settings(az, prefix);
    s.common.part_size = 5 << 20;
    s.common.multipart_threshold = 5 << 20;
    s
}

#[test]
fn store_create_only_read_record_list_remove() {
    assert_eq!(AZURITE_KEY, KEY);
    let az = Azurite::shared();
    let dest = CloudDestination::azure(settings(az, "cluster-a/wal")).unwrap();
    assert_eq!(dest.describe(), "az://wal/cluster-a/wal");
    let dir = scratch("az-basic");
    let f = dir.join("seg");
    make_file(&f, 1 << 20, 1);
    let data = std::fs::read(&f).unwrap();
    let want = sha256(&data);

    assert_eq!(dest.size(SEG).unwrap(), None);
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
    assert!(dest.open(SEG).unwrap().is_none());
    assert!(dest.is_empty().unwrap());

    assert_eq!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created {
            bytes: 1 << 20,
            sha256: want,
            stored_bytes: 1 << 20
        }
    );
    assert_eq!(dest.size(SEG).unwrap(), Some(1 << 20));
    assert!(read_all(&dest, SEG) == data, "read back differs");
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));

    // Again, other bytes: refused by the store (If-None-Match: *), nothing
    // changed; from memory too.
    let g = dir.join("other");
    make_file(&g, 1000, 2);
    assert_eq!(dest.store_new(SEG, &g).unwrap(), Stored::Exists);
    assert_eq!(dest.store_new_bytes(SEG, b"x").unwrap(), Stored::Exists);
    assert!(
        read_all(&dest, SEG) == data,
        "a refused store changed the blob"
    );
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));

    // restore checks the digest.
    let out = dir.join("restored");
    assert_eq!(restore(&dest, SEG, &out).unwrap(), 1 << 20);
    assert!(std::fs::read(&out).unwrap() == data);

    // A replaced record is a sidecar, left out of listings.
    assert_eq!(
        dest.store_new_bytes(SEG2, b"second").unwrap(),
        Stored::Created {
            bytes: 6,
            sha256: sha256(b"second"),
            stored_bytes: 6
        }
    );
    let other = [7u8; 32];
    dest.write_record(SEG2, &other).unwrap();
    assert_eq!(dest.recorded(SEG2).unwrap(), Recorded::Digest(other));
    let mut names = dest.list().unwrap();
    names.sort();
    assert_eq!(names, vec![SEG.to_string(), SEG2.to_string()]);
    assert_eq!(dest.entries().unwrap().len(), 2);
    assert!(!dest.is_empty().unwrap());

    // Removal takes the record too; removing what is absent succeeds (a
    // WAL file is removed in both its forms).
    dest.remove(SEG2).unwrap();
    dest.remove(SEG2).unwrap();
    assert_eq!(dest.size(SEG2).unwrap(), None);
    assert!(dest.open(SEG2).unwrap().is_none());
    assert_eq!(dest.list().unwrap(), vec![SEG.to_string()]);
    assert!(dest
        .objects_under("")
        .unwrap()
        .iter()
        .all(|o| !o.name.starts_with(SEG2)));
}

#[test]
fn large_files_and_objects_in_blocks_are_create_only() {
    let az = Azurite::shared();
    let dest = CloudDestination::azure(small_parts(az, "large")).unwrap();
    let dir = scratch("az-large");

    // A WAL file larger than a part: blocks, committed with its digest.
    let f = dir.join("seg");
    make_file(&f, 12 << 20, 3);
    let data = std::fs::read(&f).unwrap();
    let want = sha256(&data);
    assert_eq!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created {
            bytes: 12 << 20,
            sha256: want,
            stored_bytes: 12 << 20
        }
    );
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));
    assert!(read_all(&dest, SEG) == data);
    assert_eq!(dest.store_new(SEG, &f).unwrap(), Stored::Exists);

    // A base backup's object, streamed in blocks (past 3 parts).
    let name = "backups/L1/base.tar.zst";
    let mut w = dest.create_object(name).unwrap();
    let big: Vec<u8> = (0..(17u32 << 20)).map(|i| (i % 251) as u8).collect();
    for c in big.chunks(32 << 10) {
        w.write(c).unwrap();
    }
    assert_eq!(w.finish().unwrap(), 17 << 20);
    let mut r = dest.open_object(name).unwrap().unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert!(back == big, "the object read back differs");
    let listed = dest.objects_under("backups/").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, name);
    assert_eq!(listed[0].size, 17 << 20);

    // The name taken while the blocks were sent (after the writer looked):
    // the block list is refused by the store and the blob is unchanged.
    let racing = "backups/L2/base.tar.zst";
    let mut w = dest.create_object(racing).unwrap();
    for c in big.chunks(1 << 20) {
        w.write(c).unwrap();
    }
    assert!(matches!(
        dest.store_new_bytes(racing, b"first").unwrap(),
        Stored::Created { .. }
    ));
    let e = w.finish().unwrap_err();
    show("block list onto a taken name", &e);
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(e.message.contains("already exists"), "{e}");
    let mut r = dest.open_object(racing).unwrap().unwrap();
    let mut back = Vec::new();
    r.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"first");

    dest.remove_object(name).unwrap();
    dest.remove_object(name).unwrap(); // absent: fine
    assert!(dest.open_object(name).unwrap().is_none());
}

#[test]
fn a_damaged_blob_is_detected() {
    let az = Azurite::shared();
    let dest = CloudDestination::azure(settings(az, "damage")).unwrap();
    let dir = scratch("az-damage");
    let f = dir.join("seg");
    make_file(&f, 64 << 10, 4);
    let Stored::Created { sha256: want, .. } = dest.store_new(SEG, &f).unwrap() else {
        panic!("not stored");
    };
    // Rot: other bytes under the same name, the record kept.
    let store = MicrosoftAzureBuilder::new()
        .with_account(ACCOUNT)
        .with_access_key(KEY)
        .with_container_name(&az.container)
        .with_endpoint(az.endpoint.clone())
        .with_allow_http(true)
        .build()
        .unwrap();
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::Metadata("sha256".into()), to_hex(&want).into());
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        attributes,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.put_opts(
        &ObjPath::from(format!("damage/{SEG}")),
        vec![0u8; 64 << 10].into(),
        opts,
    ))
    .unwrap();
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(want));
    match restore(&dest, SEG, &dir.join("out")) {
        Err(RestoreError::Integrity(m)) => eprintln!("refused: {m}"),
        other => panic!("a damaged blob was restored: {other:?}"),
    }
    let report = walarch_core::maintenance::verify::verify(&dest, None, None).unwrap();
    assert!(!report.intact(), "verify missed the damage");
    // Its record gone too (another writer): reported, not restored.
    assert_eq!(
        az.overwrite_blob(&format!("damage/{SEG}"), b"no record"),
        "201"
    );
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Missing);
    assert!(restore(&dest, SEG, &dir.join("out2")).is_err());
}

#[test]
fn failures_are_classified_and_name_no_secret() {
    let az = Azurite::shared();
    // A wrong key (valid base64): refused credentials, a configuration
    // problem, the key nowhere in the message.
    let mut s = settings(az, "wrong");
    let wrong = "d3Jvbmcta2V5LXNlY3JldC12YWx1ZS13cm9uZy1rZXk=";
    s.access_key = Some(wrong.into());
    let dest = CloudDestination::azure(s).unwrap();
    let e = dest.size(SEG).unwrap_err();
    show("wrong key (HEAD)", &e);
    assert_eq!(e.kind, ErrorKind::Configuration, "{e}");
    let e = dest.store_new_bytes(SEG, b"x").unwrap_err();
    show("wrong key (PUT)", &e);
    assert_eq!(e.kind, ErrorKind::Configuration, "{e}");
    assert!(e.message.contains("refused the credentials"), "{e}");
    assert!(e
        .hint
        .as_deref()
        .unwrap()
        .contains("walarch.azure_key_file"));
    assert!(!format!("{e}").contains(wrong) && !format!("{e}").contains("d3Jvbmc"));

    // A container that does not exist: a configuration problem, and a read
    // is not "not in the archive".
    let mut s = settings(az, "");
    s.container = "nosuch".into();
    let dest = CloudDestination::azure(s).unwrap();
    let e = match dest.open(SEG) {
        Err(e) => e,
        Ok(r) => panic!("a missing container read as {:?}", r.is_some()),
    };
    show("missing container", &e);
    assert_eq!(e.kind, ErrorKind::Configuration, "{e}");
    assert!(
        e.message.contains("container \"nosuch\" does not exist"),
        "{e}"
    );
}

/// Encrypted forms (`.zst.age`, `.history.age`) in the container, their
/// originals in the metadata, each read back before it counts
/// (`common::encrypted_forms`).
#[test]
fn encrypted_forms_in_the_container() {
    let az = Azurite::shared();
    let dest = CloudDestination::azure(settings(az, "encrypted/wal")).unwrap();
    common::encrypted_forms(&dest, "az-encrypted");
}

/// The forms of a WAL file are looked up in one listing of the blobs whose
/// names begin with its name; a single name takes a HEAD.
#[test]
fn the_forms_of_a_file_are_one_listing() {
    let az = Azurite::shared();
    let hostport = az
        .endpoint
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (port, lines) = common::recording_proxy(hostport);
    let mut s = settings(az, "one-listing/wal");
    s.endpoint = Some(format!("http://127.0.0.1:{port}/{ACCOUNT}"));
    let dest = CloudDestination::azure(s).unwrap();
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
        sent[0].starts_with(&format!("GET /{ACCOUNT}/{}?", az.container))
            && sent[0].contains("comp=list")
            // One character short of the name (see shared::listed_prefix).
            && sent[0].contains(&format!("prefix=one-listing%2Fwal%2F{}", &SEG[..SEG.len() - 1]))
            && !sent[0].contains(&format!("prefix=one-listing%2Fwal%2F{SEG}")),
        "{sent:?}"
    );
    common::sizes_agree(&dest, &forms);

    lines.lock().unwrap().clear();
    assert_eq!(dest.sizes_of(&[SEG2.to_string()]).unwrap(), vec![Some(4)]);
    let sent = std::mem::take(&mut *lines.lock().unwrap());
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].starts_with("HEAD "), "{sent:?}");
}

#[test]
fn a_stopped_store_is_unavailable_not_missing() {
    let az = Azurite::start("stopped");
    let mut s = settings(&az, "down");
    s.common.timeout = Duration::from_secs(5);
    s.common.max_retries = 1;
    let dest = CloudDestination::azure(s).unwrap();
    assert_eq!(
        dest.store_new_bytes(SEG, b"x").unwrap(),
        Stored::Created {
            bytes: 1,
            sha256: sha256(b"x"),
            stored_bytes: 1
        }
    );
    az.stop();
    for (what, e) in [
        ("open", dest.open(SEG2).map(|r| r.is_some()).unwrap_err()),
        ("size", dest.size(SEG).unwrap_err()),
        (
            "sizes_of",
            dest.sizes_of(&common::forms_of(SEG)).unwrap_err(),
        ),
        ("list", dest.list().unwrap_err()),
        ("store", dest.store_new_bytes(SEG2, b"y").unwrap_err()),
    ] {
        show(what, &e);
        assert_eq!(e.kind, ErrorKind::Unavailable, "{what}: {e}");
        assert!(e.message.contains("unreachable"), "{what}: {e}");
    }
    match restore(&dest, SEG2, &std::env::temp_dir().join("walarch-az-none")) {
        Err(RestoreError::Unavailable(_)) => {}
        other => panic!("restore from a stopped store: {other:?}"),
    }
}

#[test]
fn a_sas_token_stores_create_only_also_in_blocks() {
    let az = Azurite::shared();
    let mut s = small_parts(az, "sas");
    s.access_key = None;
    let token = az.sas_token();
    s.sas_token = Some(token.clone());
    let dest = CloudDestination::azure(s).unwrap();
    let dir = scratch("az-sas");
    let f = dir.join("seg");
    make_file(&f, 11 << 20, 5);
    let data = std::fs::read(&f).unwrap();
    // In blocks: Put Block List with the token's query, If-None-Match: *.
    assert!(matches!(
        dest.store_new(SEG, &f).unwrap(),
        Stored::Created { .. }
    ));
    assert_eq!(dest.recorded(SEG).unwrap(), Recorded::Digest(sha256(&data)));
    assert!(read_all(&dest, SEG) == data);
    assert_eq!(dest.store_new(SEG, &f).unwrap(), Stored::Exists);
    // The block list itself refused on a taken name.
    let mut w = dest.create_object("backups/S/base.tar").unwrap();
    w.write(&data).unwrap();
    assert!(matches!(
        dest.store_new_bytes("backups/S/base.tar", b"first")
            .unwrap(),
        Stored::Created { .. }
    ));
    let e = w.finish().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    // A token signed with another key: refused credentials, not shown.
    let bad = token.replace("sig=", "sig=AAAA");
    let mut s = settings(az, "sas");
    s.access_key = None;
    s.sas_token = Some(bad.clone());
    let e = CloudDestination::azure(s).unwrap().size(SEG).unwrap_err();
    show("bad SAS", &e);
    assert_eq!(e.kind, ErrorKind::Configuration, "{e}");
    assert!(!format!("{e}").contains("sig="), "{e}");
}
