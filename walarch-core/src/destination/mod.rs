//! Where archived WAL files are kept: the operations the archive protocol
//! needs from a store, and nothing of the protocol itself.
//!
//! A destination stores a file create-only together with a record of its
//! SHA-256, reads that record back, fetches, lists and removes. What every
//! destination must guarantee is stated on each method; the rules built on
//! top (name check, duplicate rule, when a file counts as archived) live once
//! in `archive_protocol`.

pub mod archive_dir;
pub mod compressed;
pub mod compressing;
pub mod destination_setting;
mod directory_objects;
pub mod local_directory;
pub mod sealed;

mod hashed_copy;

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::Sha256Digest;

/// What `store_new` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored now, with its checksum record: `bytes` and `sha256` are of the
    /// file offered, `stored_bytes` what the destination holds for it (less
    /// when compressed).
    Created {
        bytes: u64,
        sha256: Sha256Digest,
        stored_bytes: u64,
    },
    /// Something is already stored under the name; nothing was changed.
    Exists,
}

/// The checksum a destination holds for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Digest(Sha256Digest),
    /// No record.
    Missing,
    /// A record that cannot be read as one for this file.
    Malformed,
}

/// A name found in a destination, and when it was stored (when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub stored_at: Option<SystemTime>,
}

/// What cleaning up after interrupted stores did.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub removed: Vec<String>,
    /// Names it could not remove, with the error text.
    pub failed: Vec<(String, String)>,
}

/// A large object written as a stream (a base backup's tar), create-only.
/// Nothing is visible under its name until `finish` returns.
pub trait ObjectWriter: Send {
    /// Appends `data`. May block while earlier parts are uploaded (a
    /// bounded number at a time).
    fn write(&mut self, data: &[u8]) -> Result<(), ArchiveError>;

    /// Makes the object durable under its name (or acknowledged by the store
    /// with every part's checksum verified) and returns the bytes stored.
    /// Fails, storing nothing, when the name is already taken.
    fn finish(self: Box<Self>) -> Result<u64, ArchiveError>;

    /// Discards what was written (a temporary file, an unfinished multipart
    /// upload). Best effort: what a crash leaves is swept later.
    fn abort(self: Box<Self>);
}

/// An object found under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// The full name, prefix included (`backups/L/base.tar.zst`).
    pub name: String,
    pub size: u64,
    /// When it was stored (last modified), when the destination says:
    /// retention judges an incomplete backup's age by it; `None` counts as
    /// recent (kept).
    pub stored_at: Option<SystemTime>,
}

pub trait Destination: Sync {
    /// The destination itself, for messages: the directory or the URL.
    fn describe(&self) -> String;

    /// Where `name` is (or would be) stored, for messages: a path or a URL.
    fn location(&self, name: &str) -> String;

    /// Stores the bytes of `source` as `name`, with the SHA-256 of the bytes
    /// stored, never replacing anything already under `name`. Returns
    /// `Created` only once the file and its record are durable (or
    /// acknowledged by the store with the checksum verified); on an error,
    /// nothing is visible under `name` that was not there before.
    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError>;

    /// `store_new` for bytes in memory (a compressed form).
    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError>;

    /// `store_new_bytes` for an encrypted form: its record keeps, next to
    /// the stored bytes' SHA-256, the SHA-256 and length of the file before
    /// encryption, which the archiving side (holding no private key) judges
    /// a file offered again by.
    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &compressed::Original,
    ) -> Result<Stored, ArchiveError> {
        let _ = (data, original);
        Err(ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{} cannot keep encrypted files (\"{name}\")",
                self.describe()
            ),
        ))
    }

    /// The checksum recorded for a stored `name`.
    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError>;

    /// The original a stored encrypted form's record keeps
    /// (`store_new_sealed`); `None` without a record or without that part.
    fn recorded_original(&self, name: &str) -> Result<Option<compressed::Original>, ArchiveError> {
        let _ = name;
        Ok(None)
    }

    /// Replaces the checksum record of a stored `name`, durably.
    fn write_record(&self, name: &str, sha256: &Sha256Digest) -> Result<(), ArchiveError>;

    /// Makes a stored `name` and its record durable, whoever stored them
    /// (an earlier attempt may have died before doing so).
    fn make_durable(&self, name: &str) -> Result<(), ArchiveError>;

    /// The length of a stored `name`; `None` when nothing is stored there.
    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError>;

    /// The length of what holds WAL file `name` in the destination, in
    /// whatever form it is stored: `size` unless the destination stores
    /// files transformed (compressed). A single lookup.
    fn stored_size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        self.size(name)
    }

    /// The form a new `name` is stored in (the archive view's settings).
    fn new_form(&self, name: &str) -> crate::wal::walname::Form {
        let _ = name;
        crate::wal::walname::Form::PLAIN
    }

    /// The lengths of the stored `names` (`None` where nothing is): one
    /// lookup each, unless the store can list them at once (the forms of
    /// one WAL file share their beginning).
    fn sizes_of(&self, names: &[String]) -> Result<Vec<Option<u64>>, ArchiveError> {
        names.iter().map(|n| self.size(n)).collect()
    }

    /// Reads a stored `name`; `None` when nothing is stored there.
    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError>;

    /// Every name stored, WAL file or not, except checksum records and
    /// temporary files, with when it was stored: what retention looks at
    /// (anything it cannot name is reported, never removed).
    fn entries(&self) -> Result<Vec<Entry>, ArchiveError>;

    /// Names of the WAL files stored (neither records nor temporaries), in
    /// no particular order.
    fn list(&self) -> Result<Vec<String>, ArchiveError>;

    /// Removes a stored `name` and its record, the record last: a crash in
    /// between leaves a record without its file, which `verify` ignores,
    /// never a file without its record, which it would report.
    fn remove(&self, name: &str) -> Result<(), ArchiveError>;

    /// Whether nothing at all is stored (an archive directory whose network
    /// mount failed looks like this): one cheap look, not a full listing.
    fn is_empty(&self) -> Result<bool, ArchiveError> {
        Ok(self.entries()?.is_empty())
    }

    /// Starts a streamed, create-only object `name`, which may contain `/`
    /// (`backups/LABEL/base.tar.zst`); folders are created as needed. These
    /// objects carry no checksum record of their own: whoever writes them
    /// records digests (`backup.json`).
    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        Err(ArchiveError::new(
            ErrorKind::Configuration,
            format!(
                "{} cannot store objects of base backups (\"{name}\")",
                self.describe()
            ),
        ))
    }

    /// Every object whose name starts with `prefix` (`backups/`), at any
    /// depth, temporaries excluded.
    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        let _ = prefix;
        Ok(Vec::new())
    }

    /// Reads an object written by `create_object`; `None` when absent.
    fn open_object(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        self.open(name)
    }

    /// Removes an object written by `create_object` (and, for a directory,
    /// its folder once empty). Removing an absent object succeeds.
    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        self.remove(name)
    }

    /// Removes what interrupted stores left behind (crash leftovers).
    fn clean_leftovers(&self) -> Result<Leftovers, ArchiveError> {
        Ok(Leftovers::default())
    }
}
