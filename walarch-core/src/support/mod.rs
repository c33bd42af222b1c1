//! What every part uses: errors in PostgreSQL's terms, threads that leave
//! signals to the server, and the test fixtures.

pub mod blocked_signals;
pub mod error;
pub(crate) mod fsutil;
#[cfg(test)]
pub(crate) mod testing;
