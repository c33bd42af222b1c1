//! age key pairs for encrypted archives: the public half where the server
//! reads it, the private half where it cannot (root's, 0600), as an
//! operator keeps it off the database server.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;

pub struct KeyPair {
    /// The recipients file (`walarch.encryption_recipients`), readable by
    /// the server.
    pub recipients: PathBuf,
    /// The identity file, root's with mode 0600: the server cannot read it.
    pub identity: PathBuf,
    /// The public key itself (`age1…`).
    pub public: String,
}

/// A fresh key pair in `dir`, files named after `name`.
pub fn key_pair(dir: &Path, name: &str) -> KeyPair {
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let recipients = dir.join(format!("{name}.recipients"));
    let identity = dir.join(format!("{name}.key"));
    std::fs::write(&recipients, format!("# {name}\n{public}\n")).unwrap();
    std::fs::set_permissions(&recipients, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &identity,
        format!("# {name}\n{}\n", id.to_string().expose_secret()),
    )
    .unwrap();
    std::fs::set_permissions(&identity, std::fs::Permissions::from_mode(0o600)).unwrap();
    KeyPair {
        recipients,
        identity,
        public,
    }
}

impl KeyPair {
    /// Hands the identity to the server's OS user (restore_command runs as
    /// it on the restore host), still 0600.
    pub fn give_identity_to_server(&self) {
        crate::util::chown_to_server(&self.identity);
    }
}
