//! What `walarch.archive_destination` may say: an absolute path (a local
//! directory) or `s3://BUCKET[/PREFIX]`, and the S3 settings that go with
//! it. Parsed here so the GUC check hooks refuse a bad value when it is set,
//! with this text as the DETAIL, and the `walarch` command reads the same.

use std::path::PathBuf;

use crate::archive_dir::{self, DirProblem};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestinationSpec {
    Directory(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl DestinationSpec {
    /// Parses a non-empty setting. A directory is also checked to exist.
    pub fn parse(value: &str) -> Result<DestinationSpec, String> {
        if let Some(rest) = value.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket(bucket)?;
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
            return Ok(DestinationSpec::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if value.contains("://") {
            return Err(
                "Only local directories (an absolute path) and s3://BUCKET[/PREFIX] are supported."
                    .into(),
            );
        }
        archive_dir::validate(value).map_err(|p: DirProblem| p.detail().to_string())?;
        Ok(DestinationSpec::Directory(PathBuf::from(value)))
    }
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
            crate::error::os_message(&e)
        )
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("\"{value}\" holds no PEM certificate."));
    }
    Ok(())
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
    fn refuses_bad_values_with_a_reason() {
        for (v, says) in [
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://Wal", "not a valid bucket name"),
            ("s3://ab", "not a valid bucket name"),
            ("s3://-ab", "not a valid bucket name"),
            ("s3://wal//x", "empty"),
            ("s3://wal/a/../b", "\"..\""),
            ("gs://wal", "Only local directories"),
            ("relative/dir", "absolute"),
            ("/no/such/dir/here", "does not exist"),
        ] {
            let e = DestinationSpec::parse(v).unwrap_err();
            assert!(e.contains(says), "{v}: {e}");
            assert!(e.ends_with('.'), "a DETAIL is a sentence: {e}");
        }
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
