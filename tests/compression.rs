//! Compressed archives (`walarch.compression = zstd`): what is stored, that
//! recovery gets the original bytes back through an archive mixing both
//! forms, the duplicate rule across forms, and what forced switches cost.

use std::path::Path;
use std::time::Duration;

use walarch_integration::setups::{batch, recovering_from};
use walarch_integration::{
    chown_to_server, sh, verify_ok, walarch, BackupOptions, Cluster, InitOptions, Walarch,
};

const T: Duration = Duration::from_secs(120);

fn exists(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

/// The form `walfile` is stored in: asserts exactly one form is there.
fn stored_compressed(archive: &Path, walfile: &str) -> bool {
    let plain = exists(archive, walfile);
    let zst = exists(archive, &format!("{walfile}.zst"));
    assert!(plain != zst, "{walfile}: plain {plain}, compressed {zst}");
    zst
}

fn set_compression(c: &mut Cluster, value: &str) {
    c.adjust_conf("walarch.compression", value);
    c.restart();
}

#[test]
fn pitr_through_a_mixed_archive_and_the_duplicate_rule_across_forms() {
    let mut p = Cluster::new("zstd-pitr");
    p.init_walarch(&InitOptions {
        wal_segsize_mb: Some(1),
        ..Default::default()
    });
    // wal_keep_size keeps switched segments in pg_wal across the restarts,
    // so one can be offered again.
    p.append_conf(&[
        "checkpoint_timeout = '1h'",
        "wal_keep_size = '64MB'",
        "walarch.compression = zstd",
    ]);
    p.start();
    p.query("CREATE EXTENSION walarch_ext");
    p.query("CREATE TABLE t(id int, note text)");
    p.backup("base", &BackupOptions::without_wal());
    let archive = p.archive_dir();

    // Compressed, then plain, then compressed again.
    let a = batch(&p, 1, 100, "compressed");
    assert!(stored_compressed(&archive, &a));
    let ref_a = p.keep_reference_copies(std::slice::from_ref(&a));
    set_compression(&mut p, "off");
    let b = batch(&p, 101, 200, "plain");
    assert!(!stored_compressed(&archive, &b));

    // Offered again with compression off (a crash between archiving and
    // .done, simulated by handing the .done back): judged against the
    // compressed form by the original bytes, accepted, no second copy.
    let failed = p.failed_count();
    std::fs::rename(p.status_file(&a, "done"), p.status_file(&a, "ready")).unwrap();
    p.wait_done(&a, T);
    assert_eq!(p.failed_count(), failed, "{}", p.log_text());
    assert!(stored_compressed(&archive, &a));

    set_compression(&mut p, "zstd");
    p.query("SELECT pg_create_restore_point('mixed')");
    let c = batch(&p, 201, 300, "after the target");
    assert!(stored_compressed(&archive, &c));

    // The standard tool checks what is stored, either form.
    let out = sh(&format!(
        "cd '{}' && sha256sum -c {a}.zst.sha256 {b}.sha256 {c}.zst.sha256",
        archive.display()
    ));
    assert_eq!(out.matches(": OK").count(), 3, "{out}");
    // walarch restore hands back the original bytes.
    let fetched = p.root.join("fetched");
    chown_to_server(&p.root);
    let (code, _, err) = walarch(&[
        "restore",
        archive.to_str().unwrap(),
        &a,
        fetched.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&fetched).unwrap() == std::fs::read(ref_a.join(&a)).unwrap());

    verify_ok(&archive);
    let (_, json, _) = walarch(&["verify", archive.to_str().unwrap(), "--json"]);
    let compressed_files = json
        .split("\"compressed_files\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("{json}"));
    assert!(compressed_files >= 2, "{json}");
    assert_eq!(
        p.query("SELECT count(*) FILTER (WHERE status <> 'ok') FROM walarch_verify()"),
        "0"
    );
    let (archived, stored) = (p.stat_i64("archived_bytes"), p.stat_i64("stored_bytes"));
    assert!(stored > 0 && stored < archived, "{stored} of {archived}");
    eprintln!("archived {archived} bytes, stored {stored}");

    let mut r = recovering_from(
        "zstd-recovered",
        &p,
        "base",
        &archive,
        &[
            "recovery_target_name = 'mixed'",
            "recovery_target_action = 'promote'",
        ],
        None,
    );
    r.start_and_wait_promoted(T);
    assert_eq!(
        r.query("SELECT note, count(*) FROM t GROUP BY note ORDER BY note"),
        "compressed|100\nplain|100"
    );
}

/// A quiet server with a short `archive_timeout`: every switched 16 MB
/// segment is mostly the zeros PostgreSQL pads it with.
#[test]
fn forced_switches_on_a_quiet_server_store_almost_nothing() {
    let mut c = Cluster::new("zstd-quiet");
    c.init_walarch(&InitOptions::default());
    c.append_conf(&["archive_timeout = '1s'", "walarch.compression = zstd"]);
    c.start();
    c.query("CREATE EXTENSION walarch_ext");
    c.query("CREATE TABLE beat(at timestamptz)");
    // The checkpointer, which forces the switches, starts sleeping before
    // recovery ends and only then learns of archive_timeout: up to
    // checkpoint_timeout later, or at the first signal. A reload wakes it.
    c.query("SELECT pg_reload_conf()");
    // The WAL of initdb and of the set-up ends here; what follows is quiet.
    let setup = c.query("SELECT pg_walfile_name(pg_switch_wal())");
    // One small write a second for 30 s, as a low-traffic server.
    for _ in 0..30 {
        c.query("INSERT INTO beat VALUES (now())");
        std::thread::sleep(Duration::from_secs(1));
    }
    let last = c.query("SELECT pg_walfile_name(pg_switch_wal())");
    c.wait_done(&last, T);

    let archive = c.archive_dir();
    let segments: Vec<String> = c
        .archived_wal_files()
        .into_iter()
        .filter(|n| n.len() == 28 && n.ends_with(".zst") && n[..24] > *setup && n[..24] <= *last)
        .collect();
    let stored: u64 = segments
        .iter()
        .map(|n| std::fs::metadata(archive.join(n)).unwrap().len())
        .sum();
    let n = segments.len() as u64;
    assert!(n >= 15, "only {n} switches in 30 s: {segments:?}");
    assert!(
        !c.archived_wal_files().iter().any(|f| f.len() == 24),
        "a segment was stored plain"
    );
    let per_segment = stored / n;
    eprintln!("{n} switched 16 MiB segments, {stored} bytes stored, {per_segment} bytes each");
    assert!(
        per_segment < 64 << 10,
        "{per_segment} bytes per switched segment"
    );
    verify_ok(&archive);
}
