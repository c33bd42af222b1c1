//! Keeping the archive sound: checking what it holds, and removing what no
//! backup needs any more.

pub mod retention;
pub mod verify;
