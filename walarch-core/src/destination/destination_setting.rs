//! What `walarch.archive_destination` may say: an absolute path (a local
//! directory), `s3://BUCKET[/PREFIX]`, `az://CONTAINER[/PREFIX]` or
//! `gs://BUCKET[/PREFIX]`, and the settings that go with them. Parsed here
//! so the GUC check hooks refuse a bad value when it is set, with this text
//! as the DETAIL, and the `walarch` command reads the same.

use std::path::PathBuf;

use crate::destination::archive_dir::{self, DirProblem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    Directory(PathBuf),
    S3 {
        bucket: String,
        prefix: String,
    },
    /// `az://CONTAINER[/PREFIX]`: Azure Blob Storage.
    Azure {
        container: String,
        prefix: String,
    },
    /// `gs://BUCKET[/PREFIX]`: Google Cloud Storage.
    Gcs {
        bucket: String,
        prefix: String,
    },
}

impl DestinationSpec {
    /// What a non-empty setting says. A directory is not required to exist
    /// here: one that vanishes later is an archiving failure (counted,
    /// retried), not a configuration problem. `check` adds that test for
    /// the moment the value is set.
    pub fn parse(value: &str) -> Result<DestinationSpec, String> {
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = split_url(rest)?;
            check_bucket(&bucket)?;
            return Ok(DestinationSpec::S3 { bucket, prefix });
        }
        if let Some(rest) = value.strip_prefix("az://") {
            let (container, prefix) = split_url(rest)?;
            check_container(&container)?;
            return Ok(DestinationSpec::Azure { container, prefix });
        }
        if let Some(rest) = value.strip_prefix("gs://") {
            let (bucket, prefix) = split_url(rest)?;
            // GCS bucket names follow S3's rules (and allow underscores).
            check_bucket(&bucket.replace('_', "-"))?;
            return Ok(DestinationSpec::Gcs { bucket, prefix });
        }
        if value.contains("://") {
            return Err(
                "Only local directories (an absolute path), s3://BUCKET[/PREFIX], az://CONTAINER[/PREFIX] and gs://BUCKET[/PREFIX] are supported."
                    .into(),
            );
        }
        match archive_dir::validate(value) {
            Ok(()) | Err(DirProblem::Missing | DirProblem::NotADirectory) => {
                Ok(DestinationSpec::Directory(PathBuf::from(value)))
            }
            Err(p) => Err(p.detail().to_string()),
        }
    }

    /// `parse`, and for a directory that it exists: for check hooks.
    pub fn check(value: &str) -> Result<(), String> {
        if let DestinationSpec::Directory(_) = DestinationSpec::parse(value)? {
            archive_dir::validate(value).map_err(|p| p.detail().to_string())?;
        }
        Ok(())
    }
}

/// The archive the two settings name together: `walarch.archive_destination`,
/// or `walarch.archive_directory` (its older name). `Ok(None)` when neither
/// is set; an error (the DETAIL) when both are set to different archives,
/// so that nothing is archived until the operator settles it.
pub fn resolve(destination: &str, directory: &str) -> Result<Option<DestinationSpec>, String> {
    match (destination.is_empty(), directory.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => DestinationSpec::parse(destination).map(Some),
        (true, false) => DestinationSpec::parse(directory).map(Some),
        (false, false) => {
            let (a, b) = (
                DestinationSpec::parse(destination)?,
                DestinationSpec::parse(directory)?,
            );
            if a == b {
                Ok(Some(a))
            } else {
                Err(format!(
                    "walarch.archive_destination is \"{destination}\" but walarch.archive_directory (its older name) is \"{directory}\"."
                ))
            }
        }
    }
}

/// `BUCKET[/PREFIX]` of a URL: the bucket and the prefix without trailing
/// slash, whose components must be plain names.
fn split_url(rest: &str) -> Result<(String, String), String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    if prefix
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
        && !prefix.is_empty()
    {
        return Err(format!(
            "The prefix \"{prefix}\" has an empty, \".\" or \"..\" component."
        ));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

impl DestinationSpec {
    /// Whether the destination is an object store (not a directory).
    pub fn is_object_store(&self) -> bool {
        !matches!(self, DestinationSpec::Directory(_))
    }
}

/// Azure container naming rules (3–63 characters: lowercase letters,
/// digits and single hyphens, starting and ending with a letter or digit).
fn check_container(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("The destination names no container: use az://CONTAINER[/PREFIX].".into());
    }
    let ok_chars = c
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_ends = [c.as_bytes()[0], c.as_bytes()[c.len() - 1]]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&c.len()) || !ok_chars || !ok_ends || c.contains("--") {
        return Err(format!(
            "\"{c}\" is not a valid container name: 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit."
        ));
    }
    Ok(())
}

/// S3 bucket naming rules (3–63 characters: lowercase letters, digits, dots
/// and hyphens, starting and ending with a letter or digit).
fn check_bucket(b: &str) -> Result<(), String> {
    if b.is_empty() {
        return Err("The destination names no bucket: use s3://BUCKET[/PREFIX].".into());
    }
    let ok_chars = b
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ok_ends = [b.as_bytes()[0], b.as_bytes()[b.len() - 1]]
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&b.len()) || !ok_chars || !ok_ends {
        return Err(format!(
            "\"{b}\" is not a valid bucket name: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit."
        ));
    }
    Ok(())
}

/// Checks `walarch.s3_endpoint`: empty (AWS for the region) or an http(s)
/// URL with a host.
pub fn check_endpoint(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .ok_or_else(|| "The endpoint must start with http:// or https://.".to_string())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) && !port.is_empty() {
            h
        } else {
            host
        }
    });
    if name.is_empty() || name.contains(char::is_whitespace) || host.contains('@') {
        return Err(format!("\"{value}\" names no valid host."));
    }
    Ok(())
}

/// Checks `walarch.s3_ca_file`: empty, or a readable file holding at least
/// one PEM certificate.
pub fn check_ca_file(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let text = std::fs::read_to_string(value).map_err(|e| {
        format!(
            "Could not read \"{value}\": {}.",
            crate::support::error::os_message(&e)
        )
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("\"{value}\" holds no PEM certificate."));
    }
    Ok(())
}

/// The rule a credentials file must follow: PostgreSQL's for
/// `ssl_key_file`.
pub const CREDENTIALS_FILE_RULE: &str = "The file must be owned by the server's operating system user with permissions u=rw (0600) or less, or by root with permissions u=rw,g=r (0640) or less, as ssl_key_file.";

/// What is wrong with a credentials file owned by `owner` with `mode`, read
/// by a process running as `euid`; the same test as PostgreSQL's for its
/// private key file (be-secure-common.c).
pub fn credentials_file_problem(path: &str, owner: u32, mode: u32, euid: u32) -> Option<String> {
    if owner != euid && owner != 0 {
        return Some(format!(
            "\"{path}\" must be owned by the server's operating system user or root. {CREDENTIALS_FILE_RULE}"
        ));
    }
    let too_open = if owner == euid {
        mode & 0o077 != 0
    } else {
        // root's: group read is allowed.
        mode & 0o037 != 0
    };
    too_open.then(|| format!("\"{path}\" has group or other access. {CREDENTIALS_FILE_RULE}"))
}

/// Access key ID and secret from a credentials file in the AWS shared
/// credentials format (`aws_access_key_id = ...`, `aws_secret_access_key =
/// ...`, from its `[default]` section or, without one, its first). Its
/// owner and permissions must be those PostgreSQL requires of a private
/// key (`credentials_file_problem`).
pub fn read_credentials_file(path: &str) -> Result<(String, String), String> {
    let text = read_private_file(path)?;
    parse_credentials(&text).ok_or_else(|| {
        format!("\"{path}\" holds no aws_access_key_id and aws_secret_access_key pair.")
    })
}

/// The text of a file holding a secret (an Azure account key or SAS token,
/// a GCS service account key), trimmed: its owner and permissions must be
/// those PostgreSQL requires of a private key (`credentials_file_problem`).
/// `what` names the secret for the message of an empty file.
pub fn read_secret_file(path: &str, what: &str) -> Result<String, String> {
    let text = read_private_file(path)?.trim().to_string();
    if text.is_empty() {
        return Err(format!("\"{path}\" holds no {what}."));
    }
    Ok(text)
}

/// A file's text, when its owner and permissions are those of a private
/// key (`credentials_file_problem`).
fn read_private_file(path: &str) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "Could not read \"{path}\": {}.",
            crate::support::error::os_message(&e)
        )
    })?;
    // SAFETY: geteuid() cannot fail.
    let euid = unsafe { libc::geteuid() };
    if let Some(problem) = credentials_file_problem(path, meta.uid(), meta.mode(), euid) {
        return Err(problem);
    }
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "Could not read \"{path}\": {}.",
            crate::support::error::os_message(&e)
        )
    })
}

/// The keys of one profile of a credentials file.
#[derive(Clone, PartialEq, Eq)]
pub struct ProfileKeys {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `aws_session_token`: temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for ProfileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"******")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "******"),
            )
            .finish()
    }
}

/// Which profile of a credentials file to read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    pub name: String,
    /// Named by a setting, an option or AWS_PROFILE. When not (the name is
    /// then `default`), a file without a `[default]` section gives its
    /// first keys, as before profiles were read.
    pub explicit: bool,
}

impl Profile {
    pub fn default_profile() -> Profile {
        Profile {
            name: "default".into(),
            explicit: false,
        }
    }
}

/// Why a profile gave no keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileProblem {
    /// No `[NAME]` (or `[profile NAME]`) section.
    NoSuchProfile,
    /// The section lacks these keys.
    MissingKeys(Vec<&'static str>),
}

/// The keys of `profile` in the text of a credentials file.
pub fn parse_profile(text: &str, profile: &Profile) -> Result<ProfileKeys, ProfileProblem> {
    let sections = sections(text);
    let named = sections.iter().find(|(n, _)| {
        n == &profile.name || n.strip_prefix("profile ").map(str::trim) == Some(&profile.name)
    });
    let pairs = match named {
        Some((_, p)) => p,
        None if !profile.explicit && profile.name == "default" => {
            // The first section with keys (or keys before any section).
            match sections.iter().find(|(_, p)| keys_of(p).is_ok()) {
                Some((_, p)) => p,
                None => return Err(ProfileProblem::NoSuchProfile),
            }
        }
        None => return Err(ProfileProblem::NoSuchProfile),
    };
    keys_of(pairs)
}

/// What is wrong, as a sentence naming the file and the profile (never a
/// value).
pub fn profile_problem_text(path: &str, profile: &Profile, p: &ProfileProblem) -> String {
    match p {
        ProfileProblem::NoSuchProfile => format!(
            "\"{path}\" has no profile \"{}\" (a [{}] section with aws_access_key_id and aws_secret_access_key).",
            profile.name, profile.name
        ),
        ProfileProblem::MissingKeys(k) => format!(
            "Profile \"{}\" of \"{path}\" has no {}.",
            profile.name,
            k.join(" and ")
        ),
    }
}

/// `read_credentials_file` for one profile, with its session token.
pub fn read_credentials_profile(path: &str, profile: &Profile) -> Result<ProfileKeys, String> {
    let text = read_private_file(path)?;
    parse_profile(&text, profile).map_err(|p| profile_problem_text(path, profile, &p))
}

type Section = (String, Vec<(String, String)>);

fn sections(text: &str) -> Vec<Section> {
    let mut sections: Vec<Section> = vec![(String::new(), vec![])];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.trim().to_string(), vec![]));
        } else if let Some((k, v)) = line.split_once('=') {
            if let Some(last) = sections.last_mut() {
                last.1.push((k.trim().to_lowercase(), v.trim().to_string()));
            }
        }
    }
    sections
}

fn keys_of(pairs: &[(String, String)]) -> Result<ProfileKeys, ProfileProblem> {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(ProfileKeys {
            access_key_id,
            secret_access_key,
            session_token: get("aws_session_token"),
        }),
        (k, s) => Err(ProfileProblem::MissingKeys(
            [
                k.is_none().then_some("aws_access_key_id"),
                s.is_none().then_some("aws_secret_access_key"),
            ]
            .into_iter()
            .flatten()
            .collect(),
        )),
    }
}

fn parse_credentials(text: &str) -> Option<(String, String)> {
    parse_profile(text, &Profile::default_profile())
        .ok()
        .map(|k| (k.access_key_id, k.secret_access_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_directories_and_buckets() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        assert_eq!(
            DestinationSpec::parse(dir),
            Ok(DestinationSpec::Directory(d.path().to_path_buf()))
        );
        assert_eq!(
            DestinationSpec::parse("s3://wal"),
            Ok(DestinationSpec::S3 {
                bucket: "wal".into(),
                prefix: "".into()
            })
        );
        assert_eq!(
            DestinationSpec::parse("s3://my-bucket.eu/cluster1/wal/"),
            Ok(DestinationSpec::S3 {
                bucket: "my-bucket.eu".into(),
                prefix: "cluster1/wal".into()
            })
        );
    }

    #[test]
    fn parses_azure_and_gcs_urls() {
        assert_eq!(
            DestinationSpec::parse("az://wal-1/cluster1/wal/"),
            Ok(DestinationSpec::Azure {
                container: "wal-1".into(),
                prefix: "cluster1/wal".into()
            })
        );
        assert_eq!(
            DestinationSpec::parse("gs://my_bucket.eu"),
            Ok(DestinationSpec::Gcs {
                bucket: "my_bucket.eu".into(),
                prefix: "".into()
            })
        );
        assert!(DestinationSpec::parse("az://wal")
            .unwrap()
            .is_object_store());
        assert!(!DestinationSpec::parse("/x").unwrap().is_object_store());
    }

    #[test]
    fn secret_files_follow_the_credentials_file_rule() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("key");
        std::fs::write(&f, "  c2VjcmV0\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = f.to_str().unwrap();
        assert_eq!(read_secret_file(path, "key"), Ok("c2VjcmV0".into()));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = read_secret_file(path, "key").unwrap_err();
        assert!(
            e.contains(CREDENTIALS_FILE_RULE) && !e.contains("c2VjcmV0"),
            "{e}"
        );
        std::fs::write(&f, "\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret_file(path, "account key")
            .unwrap_err()
            .contains("holds no account key"));
    }

    #[test]
    fn refuses_bad_values_with_a_reason() {
        for (v, says) in [
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://Wal", "not a valid bucket name"),
            ("s3://ab", "not a valid bucket name"),
            ("s3://-ab", "not a valid bucket name"),
            ("s3://wal//x", "empty"),
            ("s3://wal/a/../b", "\"..\""),
            ("ftp://wal", "Only local directories"),
            ("az://", "no container"),
            ("az://Wal", "not a valid container name"),
            ("az://a--b", "not a valid container name"),
            ("az://wal.x", "not a valid container name"),
            ("az://wal//x", "empty"),
            ("gs://", "no bucket"),
            ("gs://-ab", "not a valid bucket name"),
            ("relative/dir", "absolute"),
            ("/no/such/dir/here", "does not exist"),
        ] {
            let e = DestinationSpec::check(v).unwrap_err();
            assert!(e.contains(says), "{v}: {e}");
            assert!(e.ends_with('.'), "a DETAIL is a sentence: {e}");
        }
    }

    #[test]
    fn the_older_setting_agrees_or_nothing_is_archived() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        let local = Some(DestinationSpec::Directory(d.path().to_path_buf()));
        assert_eq!(resolve("", ""), Ok(None));
        assert_eq!(resolve(dir, ""), Ok(local.clone()));
        assert_eq!(resolve("", dir), Ok(local.clone()));
        assert_eq!(resolve(dir, dir), Ok(local));
        let e = resolve("s3://wal", dir).unwrap_err();
        assert!(e.contains("s3://wal") && e.contains(dir), "{e}");
        assert!(resolve("s3://Bad", "").is_err());
        // A directory that vanished is still the destination: storing into
        // it fails and is counted.
        assert_eq!(
            resolve("/no/such/dir", ""),
            Ok(Some(DestinationSpec::Directory("/no/such/dir".into())))
        );
    }

    #[test]
    fn reads_credentials_files() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            parse_credentials("[other]\naws_access_key_id=a\naws_secret_access_key=b\n[default]\naws_access_key_id = K\naws_secret_access_key = S\n"),
            Some(("K".into(), "S".into()))
        );
        assert_eq!(
            parse_credentials("# c\nAWS_ACCESS_KEY_ID=K\naws_secret_access_key=S=x\n"),
            Some(("K".into(), "S=x".into()))
        );
        assert_eq!(parse_credentials("aws_access_key_id=K\n"), None);
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("creds");
        std::fs::write(&f, "aws_access_key_id=K\naws_secret_access_key=S\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = f.to_str().unwrap();
        assert_eq!(read_credentials_file(path), Ok(("K".into(), "S".into())));
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_credentials_file(path).unwrap_err();
            assert!(e.contains("group or other access"), "{mode:o}: {e}");
            assert!(e.contains(CREDENTIALS_FILE_RULE), "{e}");
        }
        assert!(read_credentials_file("/no/such")
            .unwrap_err()
            .contains("Could not read"));
    }

    #[test]
    fn reads_profiles_with_session_tokens() {
        use std::os::unix::fs::PermissionsExt;
        let text = "aws_access_key_id = top\naws_secret_access_key = topsecret\n\
                    [default]\naws_access_key_id = K\naws_secret_access_key = S\n\
                    [prod]\naws_access_key_id = PK\naws_secret_access_key = PS\naws_session_token = PT\n\
                    [profile cfg]\naws_access_key_id = CK\naws_secret_access_key = CS\n\
                    [half]\naws_access_key_id = HK\n";
        let named = |n: &str| Profile {
            name: n.into(),
            explicit: true,
        };
        let keys = |k: &str, s: &str, t: Option<&str>| ProfileKeys {
            access_key_id: k.into(),
            secret_access_key: s.into(),
            session_token: t.map(String::from),
        };
        assert_eq!(
            parse_profile(text, &named("prod")),
            Ok(keys("PK", "PS", Some("PT")))
        );
        assert_eq!(
            parse_profile(text, &named("default")),
            Ok(keys("K", "S", None))
        );
        assert_eq!(
            parse_profile(text, &named("cfg")),
            Ok(keys("CK", "CS", None))
        );
        assert_eq!(
            parse_profile(text, &named("half")),
            Err(ProfileProblem::MissingKeys(vec!["aws_secret_access_key"]))
        );
        assert_eq!(
            parse_profile(text, &named("nope")),
            Err(ProfileProblem::NoSuchProfile)
        );
        // Without [default]: an explicit "default" is missing, the implicit
        // one takes the first keys (as before profiles).
        let no_default = "aws_access_key_id = K0\naws_secret_access_key = S0\n[x]\n";
        assert_eq!(
            parse_profile(no_default, &named("default")),
            Err(ProfileProblem::NoSuchProfile)
        );
        assert_eq!(
            parse_profile(no_default, &Profile::default_profile()),
            Ok(keys("K0", "S0", None))
        );
        // Texts name the file and the profile, never a value.
        let t = profile_problem_text("/f", &named("nope"), &ProfileProblem::NoSuchProfile);
        assert!(t.contains("\"/f\"") && t.contains("\"nope\""), "{t}");
        let t = profile_problem_text(
            "/f",
            &named("half"),
            &ProfileProblem::MissingKeys(vec!["aws_secret_access_key"]),
        );
        assert!(
            t.contains("half") && t.contains("aws_secret_access_key") && !t.contains("HK"),
            "{t}"
        );
        assert!(!format!("{:?}", keys("K", "S3CR3T", Some("T0K3N"))).contains("S3CR3T"));
        assert!(!format!("{:?}", keys("K", "S3CR3T", Some("T0K3N"))).contains("T0K3N"));
        // The file rule holds for profiles too.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("creds");
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = f.to_str().unwrap();
        assert_eq!(
            read_credentials_profile(path, &named("prod")),
            Ok(keys("PK", "PS", Some("PT")))
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_credentials_profile(path, &named("prod"))
            .unwrap_err()
            .contains("group or other access"));
    }

    #[test]
    fn credentials_files_follow_the_rule_for_ssl_key_file() {
        let (server, root, other) = (70, 0, 1000);
        let p = |owner, mode| credentials_file_problem("f", owner, mode, server);
        // The server's own: 0600 or less.
        for ok in [0o600, 0o400, 0o200, 0o100600] {
            assert_eq!(p(server, ok), None, "{ok:o}");
        }
        for bad in [0o640, 0o604, 0o610, 0o644, 0o700 | 0o001] {
            assert!(p(server, bad).unwrap().contains("group or other access"));
        }
        // root's: group read is allowed too.
        for ok in [0o600, 0o640, 0o440] {
            assert_eq!(p(root, ok), None, "{ok:o}");
        }
        for bad in [0o660, 0o650, 0o644, 0o641] {
            assert!(p(root, bad).unwrap().contains("group or other access"));
        }
        // Anyone else's: refused whatever the mode.
        let e = p(other, 0o600).unwrap();
        assert!(e.contains("must be owned by the server's operating system user or root"));
        assert!(
            e.ends_with(CREDENTIALS_FILE_RULE) && e.ends_with('.'),
            "{e}"
        );
    }

    #[test]
    fn checks_endpoints_and_ca_files() {
        for ok in [
            "",
            "http://127.0.0.1:8333",
            "https://s3.example.com",
            "https://h/path",
        ] {
            assert_eq!(check_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "127.0.0.1:8333",
            "ftp://x",
            "http://",
            "https://:80",
            "http://u@h",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        let d = tempfile::tempdir().unwrap();
        let pem = d.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(check_ca_file(pem.to_str().unwrap()), Ok(()));
        std::fs::write(&pem, "not a certificate").unwrap();
        assert!(check_ca_file(pem.to_str().unwrap())
            .unwrap_err()
            .contains("no PEM"));
        assert!(check_ca_file("/no/such/ca.pem")
            .unwrap_err()
            .contains("Could not read"));
    }
}
