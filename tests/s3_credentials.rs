//! The S3 credential chain inside the server: the profile of the
//! credentials file (`walarch.s3_profile`), switched by a reload, and a
//! WARNING that says where refused credentials came from.

use std::time::Duration;

use walarch_integration::seaweed::Seaweed;
use walarch_integration::{chown_to_server, pg_major, sh};

const T: Duration = Duration::from_secs(90);

#[test]
fn the_profile_setting_is_read_and_a_reload_switches_it() {
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let s3 = Seaweed::start("pg-profile", None);
    let prefix = format!("pg{}/profile", pg_major());
    let c = s3.archiving_cluster(
        "s3-profile",
        &prefix,
        &["walarch.s3_profile = 'walarch'", "walarch.copy_ahead = off"],
    );
    // The default profile's keys are wrong now: only walarch's work. Read
    // at each use, so no reload is needed for the file.
    let credentials = c.root.join("s3-credentials");
    let tmp = credentials.with_extension("tmp");
    std::fs::write(
        &tmp,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = not-the-secret-5e2a\n\
             [walarch]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    sh(&format!("chmod 600 '{}'", tmp.display()));
    chown_to_server(&tmp);
    std::fs::rename(&tmp, &credentials).unwrap();
    let first = c.switch_wal();
    c.wait_done(&first, T);
    step("archived with profile walarch");

    // Another profile by reload: refused, and the WARNING's DETAIL names
    // the file and the profile, not the secret.
    c.query("ALTER SYSTEM SET walarch.s3_profile = 'default'");
    c.query("SELECT pg_reload_conf()");
    let log = c.log_position();
    let stuck = c.switch_wal();
    c.wait_for_log("profile \"default\"", log, T);
    let text = c.log_text();
    assert!(text.contains("refused the credentials"), "{text}");
    assert!(!text.contains("not-the-secret-5e2a"), "secret in the log");
    assert!(!c.status_file(&stuck, "done").exists());
    step("refused with profile default");

    // A profile the file lacks: the WARNING names it and the file.
    let log = c.log_position();
    c.query("ALTER SYSTEM SET walarch.s3_profile = 'nosuch'");
    c.query("SELECT pg_reload_conf()");
    c.wait_for_log("has no profile \"nosuch\"", log, T);
    step("profile nosuch named");

    // Back to walarch's: archiving resumes.
    c.query("ALTER SYSTEM SET walarch.s3_profile = 'walarch'");
    c.query("SELECT pg_reload_conf()");
    c.wait_done(&stuck, T);
    step("archived again with profile walarch");
}
