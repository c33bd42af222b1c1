//! Hand-started PostgreSQL clusters for walarch_ext's integration tests.
//!
//! The tests run as root (CI does); the server runs as the `postgres` OS user
//! (`runuser`), on a private Unix socket with TCP off, in a directory of its
//! own under `WALARCH_TEST_ROOT` (default `/tmp/walarch-it`). The PostgreSQL
//! major version comes from `WALARCH_TEST_PG` (default 15): Debian's build for
//! 15, the cached relocatable builds (scripts/setup.sh) for 16–18. The
//! extension must already be installed into that build (scripts/test.sh).
//!
//! `cluster` is a generic cluster after PostgreSQL's Perl
//! `PostgreSQL::Test::Cluster`; `archiver` reads PostgreSQL's archiver state;
//! `walarch` is the opt-in layer for walarch_ext; `setups` holds the cluster
//! setups that several test files share.

pub mod archiver;
pub mod azurite;
pub mod cluster;
pub mod crash;
pub mod keys;
pub mod seaweed;
pub mod setups;
pub mod util;
pub mod walarch;

pub use cluster::{BackupOptions, Cluster, FromBackupOptions, InitOptions, PsqlOutput, WalMethod};
pub use util::{
    as_server_user, bindir, chown_to_server, pg_major, quoted, sh, skipped_between_15_and_18,
    wait_until, TmpfsMount, SERVER_USER,
};
pub use walarch::{restore_command, verify_ok, walarch, walarch_bin, Walarch};

// The archive's naming, from the core that writes it.
pub use walarch_core::destination::local_directory::SIDECAR_SUFFIX;
pub use walarch_core::destination::local_directory::TEMP_PREFIX;
