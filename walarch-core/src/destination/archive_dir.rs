//! Validation of `walarch.archive_directory`, shared by the GUC check hook
//! (which rejects a bad value with this text as its DETAIL) and the CLI.

use std::path::Path;

use crate::wal::walname::MAX_WAL_NAME_LEN;

/// PostgreSQL's MAXPGPATH.
pub const MAXPGPATH: usize = 1024;

/// Why a value cannot be the archive directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirProblem {
    Relative,
    TooLong,
    Missing,
    NotADirectory,
}

impl DirProblem {
    /// Sentence-style text for errdetail.
    pub fn detail(&self) -> &'static str {
        match self {
            DirProblem::Relative => "The archive directory must be an absolute path.",
            DirProblem::TooLong => {
                "The archive directory path is too long for a WAL file name to fit under it."
            }
            DirProblem::Missing => "The specified archive directory does not exist.",
            DirProblem::NotADirectory => "The specified archive directory is not a directory.",
        }
    }
}

/// Checks a non-empty setting. The directory may still vanish later: the
/// archive path reports that as an ordinary failure.
pub fn validate(value: &str) -> Result<(), DirProblem> {
    if !value.starts_with('/') {
        return Err(DirProblem::Relative);
    }
    // Room for "/", the longest WAL name, and the temporary-file decoration.
    if value.len() + 1 + MAX_WAL_NAME_LEN + crate::destination::local_directory::MAX_DECORATION_LEN
        >= MAXPGPATH
    {
        return Err(DirProblem::TooLong);
    }
    match std::fs::metadata(Path::new(value)) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DirProblem::NotADirectory),
        Err(_) => Err(DirProblem::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_each_problem() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        assert_eq!(validate(dir), Ok(()));
        assert_eq!(validate("relative/dir"), Err(DirProblem::Relative));
        assert_eq!(validate(&format!("{dir}/nope")), Err(DirProblem::Missing));
        let f = d.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(
            validate(f.to_str().unwrap()),
            Err(DirProblem::NotADirectory)
        );
        let long = format!("/{}", "a".repeat(1000));
        assert_eq!(validate(&long), Err(DirProblem::TooLong));
    }
}
