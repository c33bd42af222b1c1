//! Archiving into an S3-compatible bucket (a real SeaweedFS store with a
//! configured identity, so every request is signed), restoring and
//! verifying from it.

use std::time::Duration;

use walarch_integration::seaweed::{Seaweed, SIGCONT, SIGKILL, SIGSTOP};
use walarch_integration::setups::batch;
use walarch_integration::{
    pg_major, skipped_between_15_and_18, wait_until, BackupOptions, Cluster, Walarch,
};

const T: Duration = Duration::from_secs(90);

/// `walarch` fetches `walfile` from the bucket; its bytes must equal
/// pg_wal's.
fn assert_in_bucket_identical(s3: &Seaweed, c: &Cluster, prefix: &str, walfile: &str) {
    s3.assert_holds(c, prefix, walfile, &c.data.join("pg_wal").join(walfile));
}

/// After an outage: the archiver is the one from before, and the bucket
/// verifies (no gap, every checksum right).
fn assert_survived(s3: &Seaweed, c: &Cluster, prefix: &str, archiver: i32) {
    assert_eq!(
        c.archiver_pid(),
        Some(archiver),
        "the archiver was restarted"
    );
    let (code, out, err) = s3.walarch(&["verify", &s3.url(prefix)]);
    assert_eq!(code, 0, "verify: {out}{err}");
}

#[test]
fn archives_into_a_bucket_and_recovers_from_it() {
    let s3 = Seaweed::start("pg-archive", None);
    let prefix = format!("pg{}/main", pg_major());
    let c = s3.archiving_cluster("s3-archive", &prefix, &[]);
    c.query("CREATE TABLE t(id int, note text)");
    batch(&c, 1, 100, "before backup");
    let files = c.switch_many(4);
    c.wait_drained(T);
    for f in &files {
        assert_in_bucket_identical(&s3, &c, &prefix, f);
    }
    assert_eq!(c.failed_count(), 0);
    assert!(c.stat_i64("archived_count") >= 4);
    assert_eq!(c.stat("last_error"), "");
    // Uploads take time; none is in flight once drained (the worker may
    // still be looking at a file the archiver has just finished: wait).
    let last: f64 = c.stat("last_transfer_ms").parse().unwrap();
    assert!(last > 0.0, "last upload took {last} ms");
    wait_until("nothing in flight", T, || {
        c.stat_i64("bytes_in_flight") == 0
    });

    // An identical duplicate (a crash between archiving and .done, simulated
    // by handing a .done back): accepted, counted, the object unchanged.
    let again = &files[1];
    let archived = c.stat_i64("archived_count");
    std::fs::rename(c.status_file(again, "done"), c.status_file(again, "ready")).unwrap();
    c.wait_done(again, T);
    assert_eq!(c.failed_count(), 0);
    assert!(c.stat_i64("archived_count") > archived);
    assert_in_bucket_identical(&s3, &c, &prefix, again);

    // PITR from a base backup without WAL, restore_command reading the
    // bucket, to a restore point.
    c.backup("base", &BackupOptions::without_wal());
    batch(&c, 101, 200, "wanted");
    c.query("SELECT pg_create_restore_point('walarch_s3')");
    batch(&c, 201, 300, "after the target");
    c.switch_wal();
    c.wait_drained(T);
    let (code, out, err) = s3.walarch(&["verify", &s3.url(&prefix)]);
    assert_eq!(code, 0, "verify: {out}{err}");
    assert!(out.contains("archive intact"), "{out}");
    assert!(
        c.query("SELECT count(*) FROM walarch_verify() WHERE status <> 'ok'") == "0",
        "walarch_verify() on the bucket"
    );

    let mut r = s3.restoring_cluster("s3-recovered", &c, "base", &prefix);
    r.append_conf(&[
        "recovery_target_name = 'walarch_s3'",
        "recovery_target_action = 'promote'",
        "archive_mode = off",
    ]);
    r.start_and_wait_promoted(T);
    assert_eq!(r.query("SELECT count(*) FROM t"), "200");
}

#[test]
fn wrong_secret_and_a_hung_store_fail_without_killing_the_archiver_then_resume() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("pg-failures", None);
    let prefix = format!("pg{}/failures", pg_major());
    let wrong = "not-the-secret-4f1d2c";
    // Every wait bounded well within the test's: the archiver waits for a
    // worker's upload up to twice the request timeout. The archiver alone:
    // a copy-ahead round that read the credentials just before they were
    // replaced below would store the file with the right ones (correctly:
    // a rotated key is the same archive), and no failure would come.
    let c = s3.archiving_cluster(
        "s3-failures",
        &prefix,
        &[
            "walarch.s3_request_timeout = '10s'",
            "walarch.copy_ahead = off",
        ],
    );
    let credentials = c.root.join("s3-credentials");
    // The test's premise: the store refuses a wrong secret (SeaweedFS loads
    // its identities at start; seen accepting anything once under load).
    wait_until("the store to refuse a wrong secret", T, || {
        let out = walarch_integration::as_server_user(walarch_integration::walarch_bin())
            .args(["verify", &s3.url(&prefix)])
            .envs(s3.env())
            .env("AWS_SECRET_ACCESS_KEY", wrong)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).contains("refused the credentials")
    });
    s3.write_credentials(&credentials, Some(wrong));
    let archiver = c.archiver_pid().expect("archiver running");
    let log = c.log_position();
    let base = c.failed_count();
    let stuck = c.switch_wal();
    if let Err(e) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.wait_failures(base, 2, T)))
    {
        panic!(
            "{:?}; {stuck} archived: {}; stats: {}",
            e.downcast_ref::<String>(),
            c.status_file(&stuck, "done").exists(),
            c.query("SELECT * FROM walarch_stats()")
        );
    }
    c.wait_for_log("refused the credentials", log, T);
    assert!(c.stat("last_error").contains("refused the credentials"));
    assert!(c.failed_count() > base);
    assert!(!c.status_file(&stuck, "done").exists());

    // The right secret in the file (rotated in place, no reload): archiving
    // resumes by itself.
    s3.write_credentials(&credentials, None);
    c.wait_done(&stuck, T);
    assert_eq!(
        c.archiver_pid(),
        Some(archiver),
        "the archiver was restarted"
    );

    // A store that stops answering mid-backlog (SIGSTOP): every request
    // times out, nothing is reported archived; after SIGCONT the backlog
    // drains and nothing is lost.
    let base = c.failed_count();
    s3.signal(SIGSTOP);
    let backlog = c.switch_many(5);
    c.wait_failures(base, 1, T);
    assert!(!c.status_file(&backlog[0], "done").exists());
    s3.signal(SIGCONT);
    c.wait_drained(T);
    for f in &backlog {
        assert_in_bucket_identical(&s3, &c, &prefix, f);
    }
    assert_survived(&s3, &c, &prefix, archiver);

    // The secrets never reach the server log, whatever happened.
    let text = c.log_text();
    assert!(!text.contains(wrong), "the wrong secret is in the log");
    assert!(!text.contains(&s3.secret_key), "the secret is in the log");
    assert!(!text.contains("FATAL"), "{text}");
}

#[test]
fn a_store_killed_mid_backlog_and_brought_back_loses_nothing() {
    if skipped_between_15_and_18() {
        return;
    }
    let mut s3 = Seaweed::start("pg-killed", None);
    let prefix = format!("pg{}/killed", pg_major());
    let c = s3.archiving_cluster("s3-killed", &prefix, &[]);
    let archiver = c.archiver_pid().expect("archiver running");
    let first = c.switch_wal();
    c.wait_done(&first, T);

    // The store dies (connections refused): failures are counted with
    // their cause, nothing is reported archived.
    let log = c.log_position();
    let base = c.failed_count();
    s3.signal(SIGKILL);
    let backlog = c.switch_many(5);
    let mut all = vec![first];
    all.extend(backlog.iter().cloned());
    let reference = c.keep_reference_copies(&all);
    c.wait_failures(base, 2, T);
    c.wait_for_log("is unreachable", log, T);
    // The cause, or (once the circuit breaker is open) the failing fast.
    let last = c.stat("last_error");
    assert!(
        last.contains("is unreachable") || last.contains("is unavailable since"),
        "{last}"
    );
    assert!(!c.status_file(&backlog[0], "done").exists());

    // Back on its data: the backlog drains by itself, the file archived
    // before the loss is still there, nothing is lost.
    s3.restart();
    c.wait_drained(T);
    for f in &all {
        s3.assert_holds(&c, &prefix, f, &reference.join(f));
    }
    assert_survived(&s3, &c, &prefix, archiver);
}

#[test]
fn a_different_file_in_the_bucket_is_refused_and_never_overwritten() {
    let s3 = Seaweed::start("pg-conflict", None);
    let prefix = format!("pg{}/shared", pg_major());
    // Two clusters sharing one prefix by mistake: their segment names
    // collide, their contents differ.
    let a = s3.archiving_cluster("s3-first", &prefix, &[]);
    let first = a.switch_wal();
    a.wait_done(&first, T);
    let b = s3.archiving_cluster("s3-second", &prefix, &["walarch.copy_ahead = off"]);
    let log = b.log_position();
    // Every completed segment is archived in order: the second cluster's
    // archiver reaches the first cluster's file name.
    while b.switch_wal() < first {}
    b.wait_for_log(
        &format!(
            "archive file \"{}/{first}\" already exists with different contents",
            s3.url(&prefix)
        ),
        log,
        T,
    );
    assert!(!b.status_file(&first, "done").exists());
    // The first cluster's file is intact.
    assert_in_bucket_identical(&s3, &a, &prefix, &first);
}

#[test]
fn compressed_into_a_bucket_and_restored_from_it() {
    let s3 = Seaweed::start("pg-zstd", None);
    let prefix = format!("pg{}/zstd", pg_major());
    let c = s3.archiving_cluster("s3-zstd", &prefix, &["walarch.compression = zstd"]);
    let files = c.switch_many(3);
    c.wait_drained(T);
    for f in &files {
        assert_in_bucket_identical(&s3, &c, &prefix, f);
    }
    assert_eq!(c.failed_count(), 0, "{}", c.log_text());
    let (code, json, err) = s3.walarch(&["verify", &s3.url(&prefix), "--json"]);
    assert_eq!(code, 0, "verify: {json}{err}");
    for f in &files {
        assert!(
            json.contains(&format!("\"walfile\":\"{f}.zst\"")),
            "{f}: {json}"
        );
    }
    let (archived, stored) = (c.stat_i64("archived_bytes"), c.stat_i64("stored_bytes"));
    assert!(
        stored > 0 && stored * 10 < archived,
        "{stored} of {archived}"
    );
}

/// `walarch restore` of a file the store answers 403 for: "not in the
/// archive" (exit 1) only on a 404; with credentials that may not list the
/// bucket (S3 then answers 403 for a missing file) an error naming
/// s3:ListBucket (exit 255: recovery stops), never "not found" nor
/// "credentials refused".
#[test]
fn restore_tells_a_403_from_a_missing_file() {
    if ![15, 18].contains(&pg_major()) {
        return; // the command only: nothing version-specific
    }
    let identity = |name: &str, actions: &str| {
        format!(
            r#"{{"name": "{name}", "credentials": [{{"accessKey": "{name}", "secretKey": "{name}-secret-0123456789"}}], "actions": [{actions}]}}"#
        )
    };
    let s3 = Seaweed::start_with_identities(
        "pg-perm",
        &[
            identity("writeonly", r#""Write""#),
            identity("nogets", r#""Write", "List""#),
        ]
        .join(","),
    );
    let dest = std::env::temp_dir().join(format!("walarch-perm-{}", std::process::id()));
    std::fs::create_dir_all(&dest).unwrap();
    walarch_integration::chown_to_server(&dest);
    let target = dest.join("RECOVERYXLOG");
    // Not an empty archive (restore refuses to call that the end of one).
    s3.overwrite_object("perm/000000010000000000000001", b"some wal", &[]);
    let restore = |user: Option<&str>| {
        let mut cmd = walarch_integration::as_server_user(walarch_integration::walarch_bin());
        cmd.args([
            "restore",
            &s3.url("perm"),
            "000000010000000000000007",
            target.to_str().unwrap(),
        ])
        .envs(s3.env());
        if let Some(u) = user {
            cmd.env("AWS_ACCESS_KEY_ID", u)
                .env("AWS_SECRET_ACCESS_KEY", format!("{u}-secret-0123456789"));
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = restore(None);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("is not in the archive"), "{err}");
    let (code, err) = restore(Some("writeonly"));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("s3:ListBucket"), "{err}");
    assert!(
        !err.contains("not in the archive") && !err.contains("refused the credentials"),
        "{err}"
    );
    let (code, err) = restore(Some("nogets"));
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("S3 store denied access to it"), "{err}");
    assert!(!target.exists());
    std::fs::remove_dir_all(&dest).unwrap();
}

/// walarch_verify() on a bucket whose store hangs (SIGSTOP: connections
/// open, nothing answers) ends at statement_timeout with the timeout's own
/// error, not after a request timeout. PostgreSQL 15 and 18 only.
#[test]
fn verify_of_a_hung_bucket_stops_at_statement_timeout() {
    if skipped_between_15_and_18() {
        return;
    }
    if ![15, 18].contains(&pg_major()) {
        return;
    }
    let s3 = Seaweed::start("pg-verify-hung", None);
    let prefix = format!("pg{}/verify-hung", pg_major());
    let c = s3.archiving_cluster(
        "s3-verify-hung",
        &prefix,
        &["walarch.s3_request_timeout = '60s'"],
    );
    c.switch_wal();
    c.wait_drained(Duration::from_secs(60));
    s3.signal(SIGSTOP);
    let start = std::time::Instant::now();
    let r = c.psql("SET statement_timeout = '1s'; SELECT count(*) FROM walarch_verify()");
    let took = start.elapsed();
    s3.signal(SIGCONT);
    let err = r.expect_err("verify of a hung store cannot succeed");
    assert!(
        err.contains("canceling statement due to statement timeout"),
        "{err}"
    );
    // Bounded by the interrupt, not by the 60 s request timeout.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    // The store back, verify works again.
    assert_eq!(c.query("SELECT count(*) > 0 FROM walarch_verify()"), "t");
}
