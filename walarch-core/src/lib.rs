//! Server-independent logic of walarch_ext.
//!
//! Everything here runs without PostgreSQL: the extension is a thin layer over
//! it, and the `walarch` command reuses it without linking the server. Errors
//! carry PostgreSQL-style text (lowercase message, detail, hint) so the
//! extension can report them as they are.
//!
//! The modules are grouped by the step of the data's way they serve:
//! `wal` (names, timelines, digests), `archiving` (the way out),
//! `destination` (where files live: a directory here, a bucket in
//! `walarch-s3`), `restore` (the way back), `backup` (base backups),
//! `maintenance` (verify, retention) and `support`.
//!
//! One WAL file's way: the archiver's callback calls
//! `archiving::archiver::archive_one`, which settles with the copy-ahead
//! worker through `archiving::shared_state` (via the `host`), then runs the
//! rules of `archiving::archive_protocol` against a `destination` —
//! `destination::local_directory`, which stores it with `hashed_copy` and
//! `fsutil`.

pub mod archiving;
pub mod backup;
pub mod destination;
pub mod maintenance;
pub mod restore;
pub mod support;
pub mod wal;

pub use support::error::{ArchiveError, ErrorKind};
