//! `backup.json`: what a complete backup holds, written last.

use serde::{Deserialize, Serialize};

/// The format version written; readers refuse a newer one.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub format: u32,
    pub label: String,
    /// `pg_control`'s system identifier, as text (JSON numbers lose 64-bit
    /// precision in many readers).
    pub system_identifier: String,
    /// `server_version_num` of the server backed up.
    pub pg_version: u32,
    pub wal_segment_size: u64,
    /// `X/X` as PostgreSQL writes LSNs.
    pub start_lsn: String,
    pub start_timeline: u32,
    /// The WAL file holding `start_lsn` on `start_timeline`.
    pub start_wal: String,
    pub stop_lsn: String,
    pub stop_timeline: u32,
    /// The WAL file holding the last byte before `stop_lsn`: recovery from
    /// this backup is consistent once it has replayed it.
    pub stop_wal: String,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub stop_time: String,
    pub tablespaces: Vec<Tablespace>,
    pub objects: Vec<BackupObject>,
    /// The label of the backup this one is incremental to (PostgreSQL 17+
    /// `--incremental`); `None` for a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub based_on: Option<String>,
    /// Set when the objects are encrypted (`backup.json` itself never is:
    /// listing and verifying the stored bytes need no key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// How a backup's objects are encrypted: never the keys, only how many
/// recipients can read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// `age` (age-encryption.org/v1, X25519 recipients).
    pub method: String,
    pub recipients: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    /// Where it was on the server backed up (the `pg_tblspc` link's target).
    pub location: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// The data directory's tar (`base.tar`).
    Base,
    /// A tablespace's tar (`OID.tar`).
    Tablespace,
    Manifest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupObject {
    /// File name within the backup's folder (`base.tar.zst`).
    pub name: String,
    pub kind: ObjectKind,
    /// For a tablespace's tar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_oid: Option<u32>,
    /// The archive's name as PostgreSQL sent it (`base.tar`, or
    /// `base.tar.zst` when the server compressed it).
    pub archive_name: String,
    /// Bytes PostgreSQL sent.
    pub size: u64,
    /// Bytes stored (less when walarch compressed them).
    pub stored_size: u64,
    /// SHA-256 (hex) of the stored bytes.
    pub sha256: String,
    /// `zstd` when walarch compressed it, `none` when stored as sent.
    pub compression: String,
}

impl BackupObject {
    /// Stored encrypted (after compression): its name ends in `.age`. The
    /// name, as for WAL files, is what says how the stored bytes are read.
    pub fn is_sealed(&self) -> bool {
        self.name.ends_with(crate::destination::sealed::SUFFIX)
    }
}

impl BackupInfo {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("serializable");
        s.push('\n');
        s
    }

    /// Parses `backup.json`, refusing a format this version does not know.
    pub fn from_json(text: &[u8]) -> Result<BackupInfo, String> {
        let info: BackupInfo =
            serde_json::from_slice(text).map_err(|e| format!("backup.json is not valid: {e}"))?;
        if info.format > FORMAT {
            return Err(format!(
                "backup.json has format {}, newer than this walarch reads ({FORMAT})",
                info.format
            ));
        }
        Ok(info)
    }

    /// Bytes stored for the whole backup, and bytes PostgreSQL sent.
    pub fn sizes(&self) -> (u64, u64) {
        self.objects
            .iter()
            .fold((0, 0), |(s, o), b| (s + b.stored_size, o + b.size))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fixture's record, with a tablespace and an object.
    pub(crate) fn sample() -> BackupInfo {
        let mut i = crate::backup::fixture::sample();
        i.tablespaces = vec![Tablespace {
            oid: 16385,
            location: "/srv/ts1".into(),
        }];
        i.objects = vec![BackupObject {
            name: "base.tar.zst".into(),
            kind: ObjectKind::Base,
            tablespace_oid: None,
            archive_name: "base.tar".into(),
            size: 100,
            stored_size: 40,
            sha256: "00".repeat(32),
            compression: "zstd".into(),
        }];
        i
    }

    #[test]
    fn round_trip_and_newer_format_refused() {
        let i = sample();
        let back = BackupInfo::from_json(i.to_json().as_bytes()).unwrap();
        assert_eq!(back, i);
        assert_eq!(back.sizes(), (40, 100));
        let mut newer = i.clone();
        newer.format = FORMAT + 1;
        let err = BackupInfo::from_json(newer.to_json().as_bytes()).unwrap_err();
        assert!(err.contains("newer"), "{err}");
        assert!(BackupInfo::from_json(b"{").is_err());
    }
}
