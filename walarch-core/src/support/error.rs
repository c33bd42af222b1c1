//! The error a failed archive attempt reports: PostgreSQL-style message,
//! detail and hint, plus a kind the caller can act on.

use std::fmt;
use std::io;
use std::path::Path;

/// What went wrong, coarsely: the extension maps it to a SQLSTATE and the
/// tests assert on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The archive directory setting is unusable (unset, relative, too long).
    Configuration,
    /// The file name is not one PostgreSQL archives.
    InvalidName,
    /// The final name exists with different content: refused, never overwritten.
    Conflict,
    /// The archive device is full (ENOSPC / EDQUOT).
    DiskFull,
    /// Another process holds the file (the copy-ahead worker copying it).
    Busy,
    /// A checksum record was wrong and has been rewritten (a warning).
    DamagedRecord,
    /// The destination cannot be reached or cannot serve now (connect
    /// failure, timeout, HTTP 5xx or throttling, a stale network mount):
    /// worth trying again later, and never a sign that a file is missing.
    Unavailable,
    /// A bug caught before it could take the process down.
    Internal,
    /// Any other I/O failure (missing directory, permissions, EIO, ...).
    Io,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError {
    pub kind: ErrorKind,
    /// Lowercase, no trailing period, like PostgreSQL's errmsg.
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The raw OS error number, when there is one.
    pub os_error: Option<i32>,
}

impl ArchiveError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ArchiveError {
            kind,
            message: message.into(),
            detail: None,
            hint: None,
            os_error: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// An I/O failure on `path` while doing `action` ("open", "write", ...):
    /// the message reads like PostgreSQL's `could not write file "...": %m`.
    pub fn io(action: &str, path: &Path, err: &io::Error) -> Self {
        let os = err.raw_os_error();
        let disk_full = matches!(os, Some(libc::ENOSPC) | Some(libc::EDQUOT));
        let kind = if disk_full {
            ErrorKind::DiskFull
        } else if is_transient(err) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Io
        };
        let mut e = ArchiveError::new(
            kind,
            format!(
                "could not {action} \"{}\": {}",
                path.display(),
                os_message(err)
            ),
        );
        e.os_error = os;
        if disk_full {
            e.hint = Some(
                "The archive device is full. Free space there; archiving resumes by itself.".into(),
            );
        } else if matches!(
            os,
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS)
        ) {
            // Also the command line's: name no setting the user may not have.
            e.hint = Some(
                "Check that the operating system user doing this (the server's, when archiving) may access the path."
                    .into(),
            );
        } else if os == Some(libc::ENOENT) {
            e.hint = Some(
                "Check that the archive (walarch.archive_destination, or walarch's ARCHIVE argument) exists."
                    .into(),
            );
        }
        e
    }
}

/// Whether an I/O error says the far side is unreachable or slow rather
/// than that something is wrong with the data: a network filesystem that
/// went away, a connection reset or timed out while streaming.
pub fn is_transient(err: &io::Error) -> bool {
    use io::ErrorKind as K;
    matches!(
        err.raw_os_error(),
        Some(
            libc::ETIMEDOUT
                | libc::ESTALE
                | libc::ENOTCONN
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ENETDOWN
                | libc::ECONNRESET
                | libc::ECONNREFUSED
                | libc::ECONNABORTED
        )
    ) || matches!(
        err.kind(),
        K::TimedOut | K::ConnectionReset | K::ConnectionAborted | K::ConnectionRefused
    )
}

/// The OS error text without Rust's " (os error N)" suffix, like `%m`.
pub fn os_message(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => strip_os_error(&io::Error::from_raw_os_error(code).to_string()),
        None => err.to_string(),
    }
}

/// `s` without Rust's " (os error N)" suffix.
pub fn strip_os_error(s: &str) -> String {
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

/// A message with its DETAIL and HINT lines, as PostgreSQL prints them
/// (`sep` after the label: psql puts two spaces, the server log one).
pub fn write_report(
    f: &mut fmt::Formatter<'_>,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
    sep: &str,
) -> fmt::Result {
    write!(f, "{message}")?;
    if let Some(d) = detail {
        write!(f, "\nDETAIL:{sep}{d}")?;
    }
    if let Some(h) = hint {
        write!(f, "\nHINT:{sep}{h}")?;
    }
    Ok(())
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_report(
            f,
            &self.message,
            self.detail.as_deref(),
            self.hint.as_deref(),
            " ",
        )
    }
}

impl std::error::Error for ArchiveError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_reads_like_postgres() {
        let e = ArchiveError::io(
            "write file",
            Path::new("/a/b"),
            &io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(e.kind, ErrorKind::DiskFull);
        assert_eq!(
            e.message,
            "could not write file \"/a/b\": No space left on device"
        );
        assert!(e.hint.unwrap().contains("full"));
        let e = ArchiveError::io(
            "open file",
            Path::new("/x"),
            &io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(e.kind, ErrorKind::Io);
        assert_eq!(e.message, "could not open file \"/x\": Permission denied");
        for transient in [
            io::Error::from_raw_os_error(libc::ESTALE),
            io::Error::from_raw_os_error(libc::ETIMEDOUT),
            io::Error::new(io::ErrorKind::ConnectionReset, "S3 read failed"),
        ] {
            let e = ArchiveError::io("read file", Path::new("/x"), &transient);
            assert_eq!(e.kind, ErrorKind::Unavailable, "{transient}");
        }
        let e = ArchiveError::io(
            "read file",
            Path::new("/x"),
            &io::Error::from_raw_os_error(libc::EIO),
        );
        assert_eq!(e.kind, ErrorKind::Io);
    }

    /// `walarch.NAME` words in `text`.
    fn setting_names(text: &str) -> Vec<String> {
        let mut out = vec![];
        let mut rest = text;
        while let Some(i) = rest.find("walarch.") {
            let tail = &rest[i + "walarch.".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let before_ok = i == 0 || !rest.as_bytes()[i - 1].is_ascii_alphanumeric();
            if end > 0 && before_ok {
                out.push(format!("walarch.{}", &tail[..end]));
            }
            rest = &tail[end..];
        }
        out
    }

    /// Every `walarch.NAME` that code (messages, hints, details, queries)
    /// mentions is a setting the extension defines in src/guc.rs.
    #[test]
    fn messages_name_only_settings_that_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let guc = std::fs::read_to_string(root.join("src/guc.rs")).unwrap();
        let defined: Vec<String> = guc
            .lines()
            .filter_map(|l| l.trim().strip_prefix("c\"walarch."))
            .map(|l| format!("walarch.{}", &l[..l.find('"').unwrap()]))
            .collect();
        assert!(defined.len() >= 10, "{defined:?}");
        let mut files = vec![];
        for dir in [
            "src",
            "walarch-core/src",
            "walarch-s3/src",
            "walarch-cli/src",
        ] {
            for e in std::fs::read_dir(root.join(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut unknown = vec![];
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            for (i, line) in text.lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                for name in setting_names(line) {
                    if !defined.contains(&name) {
                        unknown.push(format!("{}:{}: {name}", f.display(), i + 1));
                    }
                }
            }
        }
        assert!(unknown.is_empty(), "not settings: {unknown:#?}");
        // The scan finds what it looks for.
        assert_eq!(
            setting_names("see walarch.s3_endpoint, not xwalarch.y or walarch_ext."),
            vec!["walarch.s3_endpoint".to_string()]
        );
    }
}
