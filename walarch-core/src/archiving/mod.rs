//! The way out: the archiver's callback, the copy-ahead worker that stores
//! ready files before the archiver asks, what they share in memory, and the
//! statistics they keep.

pub mod archive_protocol;
pub mod archive_status;
pub mod archiver;
pub mod breaker;
pub mod budget;
pub mod copy_ahead;
pub mod host;
pub(crate) mod parallel_copy;
pub mod shared_state;
pub mod stats_file;
