//! SHA-256 checksums of archived files, recorded in a sidecar per file:
//! `<walfile>.sha256` holding `<hex>  <walfile>\n`, the format `sha256sum -c`
//! reads, so `cd ARCHIVE && sha256sum -c *.sha256` checks the archive with
//! standard tools.
//!
//! A sidecar per file rather than one manifest: each is written with the same
//! temp-file, fsync, rename protocol as its WAL file, by whichever process
//! archived it, with no shared file to lock or append to from parallel
//! copies, and nothing to rewrite when old files are pruned.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub const SIDECAR_SUFFIX: &str = ".sha256";

pub type Sha256Digest = [u8; 32];

pub fn sidecar_name(walfile: &str) -> String {
    format!("{walfile}{SIDECAR_SUFFIX}")
}

pub fn sidecar_path(dir: &Path, walfile: &str) -> PathBuf {
    dir.join(sidecar_name(walfile))
}

pub fn to_hex(d: &Sha256Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Sha256Digest> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

/// The sidecar's text for `walfile`.
pub fn format_sidecar(digest: &Sha256Digest, walfile: &str) -> String {
    format!("{}  {walfile}\n", to_hex(digest))
}

/// The digest a sidecar records for `walfile`; `None` if it is malformed or
/// names another file.
pub fn parse_sidecar(text: &str, walfile: &str) -> Option<Sha256Digest> {
    let line = text.strip_suffix('\n').unwrap_or(text);
    let (hex, name) = line.split_once("  ")?;
    (name == walfile).then_some(())?;
    from_hex(hex)
}

/// Length and SHA-256 of a file.
pub fn hash_file(path: &Path) -> io::Result<(u64, Sha256Digest)> {
    hash_reader(&mut File::open(path)?)
}

/// Hashes a stream while it passes through.
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Self {
        Hasher(Sha256::new())
    }
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    pub fn finish(self) -> Sha256Digest {
        self.0.finalize().into()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `r` to its end; returns its length and SHA-256.
pub fn hash_reader(r: &mut impl Read) -> io::Result<(u64, Sha256Digest)> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; crate::fsutil::IO_BUFFER];
    let mut total = 0u64;
    loop {
        let n = crate::fsutil::read_full(r, &mut buf)?;
        if n == 0 {
            return Ok((total, h.finish()));
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_round_trip_and_sha256sum_format() {
        let (len, d) = hash_reader(&mut &b"abc"[..]).unwrap();
        assert_eq!(len, 3);
        // FIPS 180-2 test vector.
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let text = format_sidecar(&d, "000000010000000000000001");
        assert_eq!(text, format!("{}  000000010000000000000001\n", to_hex(&d)));
        assert_eq!(parse_sidecar(&text, "000000010000000000000001"), Some(d));
        assert_eq!(parse_sidecar(&text, "000000010000000000000002"), None);
        assert_eq!(
            parse_sidecar(
                "xyz  000000010000000000000001\n",
                "000000010000000000000001"
            ),
            None
        );
    }

    #[test]
    fn sha256sum_accepts_the_sidecar() {
        if std::process::Command::new("sha256sum")
            .arg("--version")
            .output()
            .is_err()
        {
            return; // coreutils missing: nothing to compare with
        }
        let dir = tempfile::tempdir().unwrap();
        let name = "000000010000000000000001";
        std::fs::write(dir.path().join(name), vec![5u8; 100_000]).unwrap();
        let (len, d) = hash_file(&dir.path().join(name)).unwrap();
        assert_eq!(len, 100_000);
        std::fs::write(sidecar_path(dir.path(), name), format_sidecar(&d, name)).unwrap();
        let ok = std::process::Command::new("sha256sum")
            .args(["-c", &sidecar_name(name)])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stdout)
        );
        std::fs::write(dir.path().join(name), vec![6u8; 100_000]).unwrap();
        let bad = std::process::Command::new("sha256sum")
            .args(["-c", &sidecar_name(name)])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!bad.status.success());
    }
}
