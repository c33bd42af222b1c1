//! The vocabulary of WAL: file names, timelines and their histories, the
//! SHA-256 digests recorded for every file, and time as the archive states it.

pub mod checksum;
pub mod time;
pub mod timeline_history;
pub mod walname;
