//! The `walarch` binary's interface: exit codes, messages, JSON.

use std::process::Command;

use walarch_core::archiving::archive_protocol::archive_file;
use walarch_core::destination::local_directory::LocalDirectory;

fn walarch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walarch"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An archive with three 1 MB "segments" (long page header declaring 1 MB).
fn archive() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let (wal, arch) = (d.path().join("wal"), d.path().join("arch"));
    std::fs::create_dir(&wal).unwrap();
    std::fs::create_dir(&arch).unwrap();
    for i in 1..=3u8 {
        let name = format!("00000001000000000000000{i}");
        let mut v = vec![i; 1 << 20];
        v[2..4].copy_from_slice(&2u16.to_le_bytes());
        v[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        std::fs::write(wal.join(&name), v).unwrap();
        archive_file(&LocalDirectory::new(&arch, 0o600), &name, &wal.join(&name)).unwrap();
    }
    let a = arch.to_str().unwrap().to_string();
    (d, a)
}

#[test]
fn usage_errors_never_panic() {
    let (_d, arch) = archive();
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["verify"],
        vec!["verify", &arch, "--bogus"],
        vec!["verify", &arch, "--from"],
        vec!["verify", &arch, "--from", "not-a-wal-name"],
        vec!["verify", "/nonexistent/dir"],
        vec!["restore", &arch],
        vec!["restore", &arch, "../../etc/passwd", "/tmp/x"],
        vec![
            "restore",
            "/nonexistent",
            "000000010000000000000001",
            "/tmp/x",
        ],
        vec![
            "restore",
            "--force",
            &arch,
            "000000010000000000000001",
            "/tmp/x",
        ],
        vec![
            "restore",
            &arch,
            "000000010000000000000001",
            "/tmp/x",
            "--prefetch",
            "0",
        ],
        vec![
            "restore",
            &arch,
            "000000010000000000000001",
            "/tmp/x",
            "--prefetch",
            "4",
            "--no-prefetch",
        ],
        // Not in a data directory's pg_wal: prefetching needs a spool.
        vec![
            "restore",
            &arch,
            "000000010000000000000001",
            "/tmp/x",
            "--prefetch",
            "4",
        ],
        vec![
            "restore",
            &arch,
            "000000010000000000000001",
            "/tmp/x",
            "--prefetch-idle",
            "x",
        ],
        vec!["prefetch-helper"],
        vec!["prefetch-helper", &arch, "--spool", "/tmp/s"],
        vec!["expire", &arch],
        vec!["expire", &arch, "--keep-backups"],
        vec!["expire", &arch, "--keep-backups", "-1"],
        vec!["expire", &arch, "--older-than", "7"],
        vec![
            "expire",
            &arch,
            "--older-than",
            "1d",
            "--before",
            "000000010000000000000002",
        ],
        vec!["cleanup", &arch],
        vec!["cleanup", &arch, "00000002.history"],
    ] {
        let (code, _, err) = walarch(&args);
        // restore's usage errors must stop archive recovery, never read as
        // "not in the archive".
        let expected = if args.first() == Some(&"restore") {
            255
        } else {
            2
        };
        assert_eq!(code, expected, "{args:?}: {err}");
        assert!(err.contains("usage:"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn verify_reports_and_exits_by_integrity() {
    let (_d, arch) = archive();
    let (code, out, _) = walarch(&["verify", &arch]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("archive intact: 3 files verified (1 MB segments"),
        "{out}"
    );

    std::fs::remove_file(format!("{arch}/000000010000000000000002")).unwrap();
    let (code, out, _) = walarch(&["verify", &arch, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["segment_size"], 1 << 20);
    let missing: Vec<_> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["status"] == "missing")
        .collect();
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0]["walfile"], "000000010000000000000002");
    // Outside the damaged range all is well.
    let (code, _, _) = walarch(&["verify", &arch, "--from", "000000010000000000000003"]);
    assert_eq!(code, 0);
}

#[test]
fn restore_exit_codes() {
    let (d, arch) = archive();
    let dest = d.path().join("RECOVERYXLOG");
    let dest = dest.to_str().unwrap();
    let (code, _, err) = walarch(&["restore", &arch, "000000010000000000000001", dest]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = walarch(&["restore", &arch, "00000002.history", dest]);
    assert_eq!(
        (code, err.trim()),
        (1, "walarch: \"00000002.history\" is not in the archive")
    );
    std::fs::remove_file(dest).unwrap();
    let f = format!("{arch}/000000010000000000000003");
    let mut b = std::fs::read(&f).unwrap();
    b[100] ^= 1;
    std::fs::write(&f, b).unwrap();
    let (code, _, err) = walarch(&["restore", &arch, "000000010000000000000003", dest]);
    assert_eq!(code, 255, "a corrupt file stops recovery: {err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(err.contains("stops recovery"), "{err}");
    assert!(!std::path::Path::new(dest).exists());

    // In a standby's data directory the same failure exits 1: PostgreSQL
    // retries it (and never gets the bad bytes).
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("pg_wal")).unwrap();
    std::fs::write(data.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(data.join("standby.signal"), "").unwrap();
    let sdest = data.join("pg_wal/RECOVERYXLOG");
    let sdest = sdest.to_str().unwrap();
    let args = [
        "restore",
        &arch,
        "000000010000000000000003",
        sdest,
        "--no-prefetch",
    ];
    let (code, _, err) = walarch(&args);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("checksum mismatch") && err.contains("standby"),
        "{err}"
    );
    assert!(!std::path::Path::new(sdest).exists());
    // Archive recovery in the same directory: stops.
    std::fs::remove_file(data.join("standby.signal")).unwrap();
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    assert_eq!(walarch(&args).0, 255);
    // A directory archive that is gone is no "not found" either.
    let gone = d.path().join("gone");
    let gone = gone.to_str().unwrap();
    let (code, _, err) = walarch(&["restore", gone, "000000010000000000000001", dest]);
    assert_eq!(code, 255, "{err}");
    assert!(
        walarch(&[
            "restore",
            &arch,
            "000000010000000000000001",
            dest,
            "--retry-for",
            "x"
        ])
        .0 == 255
    );
}

#[test]
fn expire_and_cleanup_report_what_goes() {
    let (_d, arch) = archive();
    // No base backup in this archive: a cut by position is refused unless
    // the backups are said to be kept elsewhere.
    let (code, _, err) = walarch(&["expire", &arch, "--before", "000000010000000000000002"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--no-backup-check"), "{err}");
    let (code, out, err) = walarch(&[
        "expire",
        &arch,
        "--before",
        "000000010000000000000002",
        "--no-backup-check",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["keeps_from"], "000000010000000000000002");
    assert_eq!(v["removed"], 0);
    assert_eq!(v["files"][0]["walfile"], "000000010000000000000001");
    assert_eq!(v["files"][0]["action"], "remove");
    assert!(std::path::Path::new(&format!("{arch}/000000010000000000000001")).exists());

    // cleanup is quiet when it works, as pg_archivecleanup.
    let (code, out, err) = walarch(&["cleanup", &arch, "000000010000000000000003"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let (code, out, _) = walarch(&["verify", &arch]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 files verified"), "{out}");
}

/// An archive encrypted to an age key (as `walarch.encryption_recipients`
/// stores it): restore and verify need `--identity-file` or
/// `WALARCH_IDENTITY_FILE`; without it restore stops recovery (255), never
/// "not in the archive", and verify says what it could not check.
#[test]
fn an_encrypted_archive_needs_the_identity_file() {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;
    use walarch_core::destination::compressing::{Compressing, Sealing};
    use walarch_core::destination::sealed::Recipients;
    let d = tempfile::tempdir().unwrap();
    let (wal, arch) = (d.path().join("wal"), d.path().join("arch"));
    std::fs::create_dir(&wal).unwrap();
    std::fs::create_dir(&arch).unwrap();
    let keys = walarch_integration::keys::key_pair(d.path(), "archive");
    let other = walarch_integration::keys::key_pair(d.path(), "other");
    let r = Recipients::read_file(keys.recipients.to_str().unwrap()).unwrap();
    let inner = LocalDirectory::new(&arch, 0o600);
    let view = Compressing::new(&inner, Some(1)).sealing(Sealing::To(Arc::new(r)));
    let mut segs = vec![];
    for i in 1..=3u8 {
        let name = format!("00000001000000000000000{i}");
        let mut v = vec![i; 1 << 20];
        v[2..4].copy_from_slice(&2u16.to_le_bytes());
        v[32..36].copy_from_slice(&(1u32 << 20).to_le_bytes());
        std::fs::write(wal.join(&name), &v).unwrap();
        archive_file(&view, &name, &wal.join(&name)).unwrap();
        assert!(arch.join(format!("{name}.zst.age")).is_file());
        segs.push((name, v));
    }
    let arch = arch.to_str().unwrap();
    let key = keys.identity.to_str().unwrap();
    let dest = d.path().join("RECOVERYXLOG");
    let dest_s = dest.to_str().unwrap();
    let seg = segs[1].0.as_str();

    let (code, _, err) = walarch(&["restore", arch, seg, dest_s]);
    assert_eq!(code, 255, "{err}");
    assert!(
        err.contains("is encrypted and no identity was given")
            && err.contains("--identity-file")
            && err.contains("stops recovery"),
        "{err}"
    );
    assert!(!dest.exists());
    let (code, _, err) = walarch(&[
        "restore",
        arch,
        seg,
        dest_s,
        "--identity-file",
        other.identity.to_str().unwrap(),
    ]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("none of the identities given"), "{err}");
    assert!(!dest.exists());

    let (code, _, err) = walarch(&["restore", arch, seg, dest_s, "--identity-file", key]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&dest).unwrap() == segs[1].1);
    std::fs::remove_file(&dest).unwrap();
    // Key rotation: several identity files, the matching one anywhere.
    let (code, _, err) = walarch(&[
        "restore",
        arch,
        seg,
        dest_s,
        "--identity-file",
        other.identity.to_str().unwrap(),
        "--identity-file",
        key,
    ]);
    assert_eq!(code, 0, "{err}");
    std::fs::remove_file(&dest).unwrap();
    // From the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_walarch"))
        .args(["restore", arch, seg, dest_s])
        .env("WALARCH_IDENTITY_FILE", key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&dest).unwrap() == segs[1].1);
    std::fs::remove_file(&dest).unwrap();
    // An identity file others can read is refused, and stops recovery.
    std::fs::set_permissions(&keys.identity, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = walarch(&["restore", arch, seg, dest_s, "--identity-file", key]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains(key), "{err}");
    std::fs::set_permissions(&keys.identity, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Verify without the key: intact, every file said to be unchecked.
    let (code, out, err) = walarch(&["verify", arch]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{seg}.zst.age: unchecked: encrypted"))
            && out.contains("3 encrypted file(s) NOT decrypted"),
        "{out}"
    );
    let (_, json, _) = walarch(&["verify", arch, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (v["intact"].as_bool(), v["encrypted_unchecked"].as_u64()),
        (Some(true), Some(3))
    );
    assert_eq!(v["segment_size"], 1 << 20);
    // With it: decrypted and checked.
    let (code, json, err) = walarch(&["verify", arch, "--json", "--identity-file", key]);
    assert_eq!(code, 0, "{json}{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (
            v["encrypted_files"].as_u64(),
            v["encrypted_unchecked"].as_u64()
        ),
        (Some(3), Some(0))
    );
    // With the wrong one: not intact.
    let (code, out, _) = walarch(&[
        "verify",
        arch,
        "--identity-file",
        other.identity.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no_key"), "{out}");
}
