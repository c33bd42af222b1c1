//! SHA-256 of WAL files: hashing streams and files, and the hexadecimal form
//! records use.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

pub type Sha256Digest = [u8; 32];

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

/// SHA-256 of bytes in memory.
pub fn sha256(b: &[u8]) -> Sha256Digest {
    Sha256::digest(b).into()
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
    let mut buf = vec![0u8; crate::support::fsutil::IO_BUFFER];
    let mut total = 0u64;
    loop {
        let n = crate::support::fsutil::read_full(r, &mut buf)?;
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
    fn fips_test_vector_and_hex_round_trip() {
        let (len, d) = hash_reader(&mut &b"abc"[..]).unwrap();
        assert_eq!(len, 3);
        // FIPS 180-2 test vector.
        assert_eq!(
            to_hex(&d),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex("xyz"), None);
    }
}
