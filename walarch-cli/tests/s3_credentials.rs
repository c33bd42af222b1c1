//! `walarch` against a live SeaweedFS with `--credentials-file` and
//! `--profile`, its environment holding no credentials.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use walarch_core::destination::{Destination, Stored};
use walarch_integration::seaweed::Seaweed;
use walarch_s3::{S3Destination, S3Settings};

const SEG: &str = "000000010000000000000001";

fn walarch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_walarch"))
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent-walarch-home")
        // No instance metadata to wait for if the chain got that far.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn restore_with_a_credentials_file_and_a_profile() {
    let sw = Seaweed::start("cli-creds", None);
    let d = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let src = d.path().join("seg");
    std::fs::write(&src, &data).unwrap();
    let mut s = S3Settings::new(sw.bucket.clone());
    s.endpoint = Some(sw.endpoint.clone());
    s.prefix = "cli/creds".into();
    s.access_key_id = Some(sw.access_key.clone());
    s.secret_access_key = Some(sw.secret_key.clone());
    s.timeout = Duration::from_secs(30);
    let dest = S3Destination::new(s).unwrap();
    assert!(matches!(
        dest.store_new(SEG, &src).unwrap(),
        Stored::Created { .. }
    ));

    let creds = d.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = nobody\naws_secret_access_key = wrong-secret-0123456789\n\
             [walarch]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            sw.access_key, sw.secret_key
        ),
    )
    .unwrap();
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let archive = format!("s3://{}/cli/creds", sw.bucket);
    let out = d.path().join("restored");
    let run = |profile: &str, out: &std::path::Path| {
        walarch(&[
            "restore",
            &archive,
            SEG,
            out.to_str().unwrap(),
            "--no-prefetch",
            "--retry-for",
            "0s",
            "--endpoint",
            &sw.endpoint,
            "--credentials-file",
            creds.to_str().unwrap(),
            "--profile",
            profile,
        ])
    };
    let (code, _, err) = run("walarch", &out);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(&out).unwrap() == data);

    // The default profile's keys are refused: not "not in the archive".
    let (code, _, err) = run("default", &d.path().join("x"));
    eprintln!("{err}");
    assert_ne!(code, 0);
    assert_ne!(code, 1, "a refusal must not read as a missing file: {err}");
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(err.contains("profile \"default\""), "{err}");
    assert!(!err.contains("wrong-secret-0123456789"), "{err}");

    // A profile that is not in the file.
    let (code, _, err) = run("nosuch", &d.path().join("y"));
    eprintln!("{err}");
    assert_ne!(code, 0);
    assert!(
        err.contains("\"nosuch\"") && err.contains(creds.to_str().unwrap()),
        "{err}"
    );
}
