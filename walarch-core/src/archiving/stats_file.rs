//! The statistics file written at a clean shutdown and read at the next
//! start, like PostgreSQL's own `pg_stat/` file. Text, one `key value` per
//! line, with a header naming the format and a closing `end` line, so a torn
//! or foreign file is rejected as a whole rather than half-read.

use std::io::{self, Write};
use std::path::Path;

use crate::archiving::shared_state::{bounded, Stats};

const HEADER: &str = "walarch_ext stats 4";

/// A value on one line: backslash and newline escaped.
pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

pub(crate) fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn serialize(s: &Stats) -> String {
    let mut out = format!("{HEADER}\n");
    let mut line = |k: &str, v: String| out.push_str(&format!("{k} {v}\n"));
    line("archived_count", s.archived_count.to_string());
    line("last_archived_wal", escape(s.last_archived_wal.as_str()));
    line("last_archived_time", s.last_archived_time.to_string());
    line("failed_count", s.failed_count.to_string());
    line("last_failed_wal", escape(s.last_failed_wal.as_str()));
    line("last_failed_time", s.last_failed_time.to_string());
    line("stats_reset", s.stats_reset.to_string());
    line("archived_bytes", s.archived_bytes.to_string());
    line("stored_bytes", s.stored_bytes.to_string());
    line("copied_ahead_count", s.copied_ahead_count.to_string());
    line("copy_ahead_failures", s.copy_ahead_failures.to_string());
    line("last_error", escape(s.last_error.as_str()));
    line("last_transfer_us", s.last_transfer_us.to_string());
    line("transfer_us_total", s.transfer_us_total.to_string());
    line("transfers", s.transfers.to_string());
    line("dropped_count", s.dropped_count.to_string());
    line("dropped_bytes", s.dropped_bytes.to_string());
    line("last_dropped_wal", escape(s.last_dropped_wal.as_str()));
    line("last_dropped_time", s.last_dropped_time.to_string());
    line("compressed_count", s.compressed_count.to_string());
    line("encrypted_count", s.encrypted_count.to_string());
    out.push_str("end\n");
    out
}

pub fn parse(text: &str) -> Option<Stats> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let mut s = Stats::new(0);
    let mut ended = false;
    let mut seen = 0;
    for l in lines {
        if l == "end" {
            ended = true;
            break;
        }
        let (k, v) = l.split_once(' ').unwrap_or((l, ""));
        let int = || v.parse::<i64>().ok();
        match k {
            "archived_count" => s.archived_count = int()?,
            "last_archived_wal" => s.last_archived_wal = bounded(&unescape(v)),
            "last_archived_time" => s.last_archived_time = int()?,
            "failed_count" => s.failed_count = int()?,
            "last_failed_wal" => s.last_failed_wal = bounded(&unescape(v)),
            "last_failed_time" => s.last_failed_time = int()?,
            "stats_reset" => s.stats_reset = int()?,
            "archived_bytes" => s.archived_bytes = int()?,
            "stored_bytes" => s.stored_bytes = int()?,
            "copied_ahead_count" => s.copied_ahead_count = int()?,
            "copy_ahead_failures" => s.copy_ahead_failures = int()?,
            "last_error" => s.last_error = bounded(&unescape(v)),
            "last_transfer_us" => s.last_transfer_us = int()?,
            "transfer_us_total" => s.transfer_us_total = int()?,
            "transfers" => s.transfers = int()?,
            "dropped_count" => s.dropped_count = int()?,
            "dropped_bytes" => s.dropped_bytes = int()?,
            "last_dropped_wal" => s.last_dropped_wal = bounded(&unescape(v)),
            "last_dropped_time" => s.last_dropped_time = int()?,
            "compressed_count" => s.compressed_count = int()?,
            "encrypted_count" => s.encrypted_count = int()?,
            _ => return None,
        }
        seen += 1;
    }
    (ended && seen == 21).then_some(s)
}

/// Writes the file atomically: temporary file, fsync, rename, directory fsync.
pub fn write(path: &Path, s: &Stats) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serialize(s).as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    crate::support::fsutil::fsync_dir(dir)
}

/// What `take` found.
#[derive(Debug, PartialEq)]
pub enum Taken {
    Stats(Box<Stats>),
    Absent,
    /// A file that is not one this version reads, and why; discarded.
    Unusable(String),
}

/// Reads and removes the file.
pub fn take(path: &Path) -> io::Result<Taken> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Taken::Absent),
        Err(e) => return Err(e),
    };
    std::fs::remove_file(path)?;
    let text = String::from_utf8_lossy(&text);
    let first = text.lines().next().unwrap_or("");
    if first != HEADER {
        return Ok(Taken::Unusable(format!(
            "its format \"{}\" is not \"{HEADER}\"",
            first.chars().take(40).collect::<String>()
        )));
    }
    Ok(parse(&text).map_or_else(
        || Taken::Unusable("it is incomplete or damaged".into()),
        |s| Taken::Stats(Box::new(s)),
    ))
}

/// Removes the file if present (after a crash its counts are not trusted).
pub fn discard(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Offset and values of `ControlFileData.state` (catalog/pg_control.h), the
/// same in PostgreSQL 15 to 18: after system_identifier (u64),
/// pg_control_version (u32) and catalog_version_no (u32).
const CONTROL_STATE_OFFSET: usize = 16;
const DB_SHUTDOWNED: u32 = 1;
const DB_SHUTDOWNED_IN_RECOVERY: u32 = 2;

/// True when `global/pg_control` says the cluster was shut down cleanly, so
/// that statistics saved at shutdown are current.
pub fn shut_down_cleanly(data_dir: &Path) -> io::Result<bool> {
    let bytes = std::fs::read(data_dir.join("global/pg_control"))?;
    let state = bytes
        .get(CONTROL_STATE_OFFSET..CONTROL_STATE_OFFSET + 4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "pg_control is too short"))?;
    Ok(state == DB_SHUTDOWNED || state == DB_SHUTDOWNED_IN_RECOVERY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::shared_state::ArchiveState;

    fn sample() -> Stats {
        let mut st = ArchiveState::new(42);
        st.record_archived(
            "000000010000000000000001",
            100,
            40,
            Some(crate::wal::walname::Form::ZST_AGE),
            true,
            50,
        );
        st.record_dropped("000000010000000000000003", 16, 55);
        st.record_failed(
            "000000010000000000000002",
            "could not \"x\":\nline two \\ back",
            60,
        );
        st.stats
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(parse(&serialize(&s)), Some(s));
    }

    #[test]
    fn rejects_torn_or_foreign_files() {
        let text = serialize(&sample());
        assert_eq!(parse(&text[..text.len() - 4]), None, "no end line");
        assert_eq!(parse(&text.replace(HEADER, "other 1")), None);
        assert_eq!(
            parse(&text.replace("failed_count 1", "failed_count x")),
            None
        );
        assert_eq!(parse(&text.replace("failed_count 1\n", "")), None);
    }

    #[test]
    fn write_then_take_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("walarch_ext.stat");
        write(&p, &sample()).unwrap();
        assert_eq!(take(&p).unwrap(), Taken::Stats(Box::new(sample())));
        assert_eq!(take(&p).unwrap(), Taken::Absent, "the file is consumed");
        // An older format is discarded, saying so, never misread.
        std::fs::write(
            &p,
            serialize(&sample()).replace(HEADER, "walarch_ext stats 0"),
        )
        .unwrap();
        assert!(matches!(take(&p).unwrap(), Taken::Unusable(w) if w.contains("stats 0")));
        assert!(!p.exists());
        std::fs::write(&p, &serialize(&sample())[..30]).unwrap();
        assert!(matches!(take(&p).unwrap(), Taken::Unusable(w) if w.contains("incomplete")));
    }

    #[test]
    fn reads_control_file_state() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("global")).unwrap();
        let mut ctl = vec![0u8; 296];
        ctl[16..20].copy_from_slice(&1u32.to_ne_bytes());
        std::fs::write(d.path().join("global/pg_control"), &ctl).unwrap();
        assert!(shut_down_cleanly(d.path()).unwrap());
        ctl[16..20].copy_from_slice(&6u32.to_ne_bytes()); // DB_IN_PRODUCTION
        std::fs::write(d.path().join("global/pg_control"), &ctl).unwrap();
        assert!(!shut_down_cleanly(d.path()).unwrap());
    }
}
