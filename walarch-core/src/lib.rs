//! Server-independent logic of walarch_ext.
//!
//! Everything here runs without PostgreSQL: the extension is a thin layer over
//! it, and the `walarch` command reuses it without linking the server. Errors
//! carry PostgreSQL-style text (lowercase message, detail, hint) so the
//! extension can report them as they are.
//!
//! One WAL file's way: the archiver's callback calls `archiver::archive_one`,
//! which settles with the copy-ahead worker through `shared_state` (via the
//! `host`), then runs the rules of `archive_protocol` against a
//! `destination` — `local_directory`, which stores it with `hashed_copy`
//! and `fsutil`.

pub mod archive_dir;
pub mod archive_protocol;
pub mod archive_status;
pub mod archiver;
pub mod blocked_signals;
pub mod breaker;
pub mod checksum;
pub mod compressed;
pub mod compressing;
pub mod copy_ahead;
pub mod destination;
pub mod destination_setting;
pub mod error;
pub mod host;
pub mod local_directory;
pub mod prefetch;
pub mod restore;
pub mod retention;
pub mod shared_state;
pub mod spool;
pub mod stats_file;
pub mod time;
pub mod timeline_history;
pub mod verify;
pub mod walname;

mod fsutil;
mod hashed_copy;
mod parallel_copy;
#[cfg(test)]
mod testing;

pub use error::{ArchiveError, ErrorKind};
