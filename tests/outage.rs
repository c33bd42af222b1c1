//! A store that stops answering (SIGSTOP of the real SeaweedFS: connections
//! open, nothing answers): the circuit breaker makes the archiver fail fast,
//! so a fast shutdown takes seconds and loses nothing; a reload to another
//! destination mid-round starts no further upload to the old one, and the
//! worker's copies there are not taken for archived.

use std::time::{Duration, Instant};

use walarch_integration::seaweed::{Seaweed, SIGCONT, SIGSTOP};
use walarch_integration::{
    pg_major, skipped_between_15_and_18, wait_until, Cluster, InitOptions, Walarch,
};

const T: Duration = Duration::from_secs(90);
/// The request timeout of these tests: a hung store costs this per request.
const REQUEST_TIMEOUT_S: u64 = 10;

fn cluster(s3: &Seaweed, name: &str, prefix: &str, extra: &[&str]) -> Cluster {
    let timeout = format!("walarch.s3_request_timeout = '{REQUEST_TIMEOUT_S}s'");
    let mut conf = vec![timeout.as_str(), "checkpoint_timeout = '1h'"];
    conf.extend_from_slice(extra);
    s3.archiving_cluster_with(
        name,
        prefix,
        &InitOptions {
            wal_segsize_mb: Some(1),
            ..Default::default()
        },
        &conf,
    )
}

/// Names of the WAL files `walarch verify` finds under `prefix`.
fn in_bucket(s3: &Seaweed, prefix: &str, names: &[String]) -> Vec<String> {
    let (_, json, err) = s3.walarch(&["verify", &s3.url(prefix), "--json"]);
    assert!(!json.is_empty(), "verify: {err}");
    names
        .iter()
        .filter(|n| json.contains(&format!("\"walfile\":\"{n}\"")))
        .cloned()
        .collect()
}

#[test]
fn a_fast_shutdown_with_the_store_hung_takes_seconds_and_loses_nothing() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("outage-stop", None);
    let prefix = format!("pg{}/stop", pg_major());
    let mut c = cluster(&s3, "outage-stop", &prefix, &[]);
    let first = c.switch_wal();
    c.wait_done(&first, T);

    let log = c.log_position();
    s3.signal(SIGSTOP);
    let backlog = c.switch_many(3);
    // Attempts now fail at once, saying since when and when the next is.
    c.wait_for_log("is unavailable since", log, T);
    let text = c.log_text();
    assert!(text.contains("The next attempt is at"), "{text}");
    assert!(text.contains("nothing is lost"), "{text}");
    // The uploads that hung have ended: nothing is counted in flight.
    wait_until("nothing in flight", T, || {
        c.stat_i64("bytes_in_flight") == 0
    });
    for f in &backlog {
        assert!(c.status_file(f, "ready").exists(), "{f} not ready");
    }

    // Without the breaker the archiver's last round pays full request
    // timeouts on every try (minutes at the default); with it, at most one
    // probe's.
    let started = Instant::now();
    c.stop_mode("fast");
    let took = started.elapsed();
    eprintln!("fast shutdown with the store hung: {took:?}");
    assert!(
        took < Duration::from_secs(2 * REQUEST_TIMEOUT_S),
        "fast shutdown took {took:?}"
    );
    for f in &backlog {
        assert!(
            c.status_file(f, "ready").exists(),
            "{f} no longer ready after the shutdown"
        );
    }

    s3.signal(SIGCONT);
    c.start();
    c.wait_drained(T);
    for f in &backlog {
        s3.assert_holds(&c, &prefix, f, &c.data.join("pg_wal").join(f));
    }
    let (code, out, err) = s3.walarch(&["verify", &s3.url(&prefix)]);
    assert_eq!(code, 0, "verify: {out}{err}");
    assert!(!c.log_text().contains("FATAL"), "{}", c.log_text());
}

#[test]
fn a_reload_to_another_destination_starts_no_upload_to_the_old_one() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("outage-reload", None);
    let prefix = format!("pg{}/reload", pg_major());
    let c = cluster(
        &s3,
        "outage-reload",
        &prefix,
        &["walarch.parallel_copies = 2"],
    );
    let first = c.switch_wal();
    c.wait_done(&first, T);

    // Uploads hang mid-round: the worker holds the whole backlog, two of
    // them running.
    s3.signal(SIGSTOP);
    let backlog = c.switch_many(8);
    wait_until("two uploads running", T, || {
        c.stat_i64("bytes_in_flight") >= 2 << 20
    });
    // Another destination, then the store answers again (before the hung
    // requests time out, so the breaker has no part in this).
    let dir = c.archive_dir();
    c.query(&format!(
        "ALTER SYSTEM SET walarch.archive_destination = '{}'",
        dir.display()
    ));
    c.query("SELECT pg_reload_conf()");
    // Not a timing assertion: lets the postmaster pass SIGHUP on before
    // the uploads can end.
    std::thread::sleep(Duration::from_millis(500));
    s3.signal(SIGCONT);

    c.wait_drained(T);
    // The old destination got only the uploads that were running at the
    // reload (the worker's two and the archiver's own), none started
    // after it; everything else is in the destination configured now.
    let old = in_bucket(&s3, &prefix, &backlog);
    assert!(old.len() <= 3, "uploaded to the old destination: {old:?}");
    let listing = c.archive_listing();
    for f in &backlog {
        if listing.contains(f) {
            c.assert_archived_identical(f);
        } else {
            assert!(old.contains(f), "{f} is in neither destination");
            s3.assert_holds(&c, &prefix, f, &c.data.join("pg_wal").join(f));
        }
    }
    eprintln!("in the old destination: {old:?}");
}

#[test]
fn copy_ahead_turned_off_mid_round_starts_no_further_upload() {
    if skipped_between_15_and_18() {
        return;
    }
    let s3 = Seaweed::start("outage-off", None);
    let prefix = format!("pg{}/off", pg_major());
    let c = cluster(&s3, "outage-off", &prefix, &["walarch.parallel_copies = 2"]);
    let first = c.switch_wal();
    c.wait_done(&first, T);
    let before = c.stat_i64("copied_ahead_count");

    s3.signal(SIGSTOP);
    let backlog = c.switch_many(8);
    wait_until("two uploads running", T, || {
        c.stat_i64("bytes_in_flight") >= 2 << 20
    });
    c.query("ALTER SYSTEM SET walarch.copy_ahead = off");
    c.query("SELECT pg_reload_conf()");
    // Not a timing assertion: lets the postmaster pass SIGHUP on before
    // the uploads can end.
    std::thread::sleep(Duration::from_millis(500));
    s3.signal(SIGCONT);

    c.wait_drained(T);
    for f in &backlog {
        s3.assert_holds(&c, &prefix, f, &c.data.join("pg_wal").join(f));
    }
    // Only the two uploads running at the reload were the worker's; the
    // archiver stored the rest itself.
    let ahead = c.stat_i64("copied_ahead_count") - before;
    assert!(
        ahead <= 2,
        "{ahead} files copied ahead after it was turned off"
    );
}
