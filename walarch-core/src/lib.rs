//! Server-independent logic of walarch_ext.
//!
//! Everything here runs without PostgreSQL: the extension is a thin layer over
//! it, and a command-line tool can reuse it without linking the server. Errors
//! carry PostgreSQL-style text (lowercase message, detail, hint) so the
//! extension can report them as they are.

pub mod archive_dir;
pub mod checksum;
pub mod durable_copy;
pub mod error;
pub mod fixed_str;
pub mod fsutil;
pub mod parallel_copy;
pub mod pending;
pub mod quiet_thread;
pub mod restore;
pub mod shared_state;
pub mod stats_file;
pub mod temp_file;
pub mod time;
pub mod trailing_hash;
pub mod verify;
pub mod walname;

pub use durable_copy::{archive_file, ArchiveOutcome, CopyOptions};
pub use error::{ArchiveError, ErrorKind};
