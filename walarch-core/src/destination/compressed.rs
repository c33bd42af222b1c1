//! The compressed form of an archived WAL file, `<walfile>.zst`: a zstd
//! skippable frame holding the original file's SHA-256 and length, then
//! one zstd frame of the file (with zstd's own content checksum).
//!
//! Both checks stay possible with standard tools: the stored bytes have
//! their `sha256sum -c` record like any archived file, and `zstd -d`
//! skips the skippable frame and restores the original. Restore checks
//! the stored bytes against their record while reading, and the
//! decompressed bytes against the SHA-256 carried in the header, so that
//! PostgreSQL is handed exactly the bytes that were archived.

use std::io::{self, Read, Write};

use crate::wal::checksum::{sha256, Hasher, Sha256Digest};

/// Suffix of the compressed form.
pub const SUFFIX: &str = ".zst";

/// Skippable-frame magic: 0x184D2A50..=0x184D2A5F are skippable, the low
/// nibble is free for applications.
const MAGIC: u32 = 0x184D_2A57;
const TAG: &[u8; 8] = b"walarch1";
const PAYLOAD_LEN: usize = TAG.len() + 32 + 8;
/// Bytes before the zstd frame.
pub const HEADER_LEN: usize = 8 + PAYLOAD_LEN;

/// What the header says of the original file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Original {
    pub sha256: Sha256Digest,
    pub len: u64,
}

fn encode_header(o: &Original) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
    h[8..16].copy_from_slice(TAG);
    h[16..48].copy_from_slice(&o.sha256);
    h[48..56].copy_from_slice(&o.len.to_le_bytes());
    h
}

/// The original's SHA-256 and length from a compressed file's first
/// `HEADER_LEN` bytes; `None` when they are not our header.
pub fn decode_header(b: &[u8]) -> Option<Original> {
    if b.len() < HEADER_LEN
        || b[0..4] != MAGIC.to_le_bytes()
        || b[4..8] != (PAYLOAD_LEN as u32).to_le_bytes()
        || &b[8..16] != TAG
    {
        return None;
    }
    Some(Original {
        sha256: b[16..48].try_into().unwrap(),
        len: u64::from_le_bytes(b[48..56].try_into().unwrap()),
    })
}

/// The compressed form of `data` (a whole WAL file) at zstd `level`. It is
/// decompressed before it is returned, and zstd checks its content checksum
/// (XXH64 of `data`, taken as it was compressed) and the length: a
/// compressed form that would not restore the WAL file is never stored. The
/// SHA-256 in the header is checked again at restore; hashing the output
/// here too would cost as much as the decompression.
pub fn compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let original = Original {
        sha256: sha256(data),
        len: data.len() as u64,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + data.len() / 4);
    out.extend_from_slice(&encode_header(&original));
    let mut enc = zstd::stream::Encoder::new(out, level)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(original.len))?;
    enc.write_all(data)?;
    let out = enc.finish()?;
    let restored = zstd::stream::Decoder::new(&out[HEADER_LEN..])
        .and_then(|mut d| io::copy(&mut d, &mut io::sink()));
    match restored {
        Ok(n) if n == original.len => Ok(out),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the compressed data restores {n} bytes, not {}",
                original.len
            ),
        )),
        Err(e) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the compressed data does not restore the original: {e}"),
        )),
    }
}

/// Why a compressed file was not restored.
#[derive(Debug)]
pub enum DecodeError {
    /// Not our header: not a walarch compressed file, or damaged.
    Header,
    /// The zstd frame is corrupt or truncated.
    Frame(io::Error),
    /// It decompressed, but not to the original recorded in the header.
    Mismatch {
        expected: Original,
        actual: Original,
    },
    /// Writing the output failed.
    Write(io::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::wal::checksum::to_hex;
        match self {
            DecodeError::Header => f.write_str("no walarch header: not a compressed WAL file"),
            DecodeError::Frame(e) => write!(f, "corrupt compressed data: {e}"),
            DecodeError::Mismatch { expected, actual } => write!(
                f,
                "decompressed to {} bytes with SHA-256 {}, the original had {} bytes with SHA-256 {}",
                actual.len,
                to_hex(&actual.sha256),
                expected.len,
                to_hex(&expected.sha256)
            ),
            DecodeError::Write(e) => write!(f, "{e}"),
        }
    }
}

/// Decompresses a compressed file read from `r` into `w`; the output's
/// SHA-256 and length must be those in the header. Returns the original.
pub fn decompress(mut r: impl Read, mut w: impl Write) -> Result<Original, DecodeError> {
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).map_err(|_| DecodeError::Header)?;
    let expected = decode_header(&head).ok_or(DecodeError::Header)?;
    let mut dec = zstd::stream::Decoder::new(r).map_err(DecodeError::Frame)?;
    let mut h = Hasher::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; crate::support::fsutil::IO_BUFFER];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DecodeError::Frame(e)),
        };
        h.update(&buf[..n]);
        w.write_all(&buf[..n]).map_err(DecodeError::Write)?;
        len += n as u64;
    }
    let actual = Original {
        sha256: h.finish(),
        len,
    };
    if actual != expected {
        return Err(DecodeError::Mismatch { expected, actual });
    }
    Ok(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// WAL-like: a few kilobytes of records, then zeros (a switched segment).
    fn segment() -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        for (i, b) in v.iter_mut().take(40_000).enumerate() {
            *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
        }
        v
    }

    #[test]
    fn round_trip_keeps_the_bytes_and_says_what_they_were() {
        let data = segment();
        let z = compress(&data, 3).unwrap();
        assert!(z.len() < data.len() / 10, "{} bytes", z.len());
        let mut out = vec![];
        let o = decompress(&z[..], &mut out).unwrap();
        assert!(out == data);
        assert_eq!(o.len, data.len() as u64);
        assert_eq!(o.sha256, sha256(&data));
        assert_eq!(decode_header(&z).unwrap(), o);
    }

    #[test]
    fn standard_zstd_decoders_skip_the_header() {
        let data = segment();
        let z = compress(&data, 1).unwrap();
        assert!(zstd::stream::decode_all(&z[..]).unwrap() == data);
    }

    #[test]
    fn corrupt_data_is_refused() {
        let data = segment();
        let mut z = compress(&data, 3).unwrap();
        let mid = HEADER_LEN + (z.len() - HEADER_LEN) / 2;
        z[mid] ^= 0x40;
        let err = decompress(&z[..], io::sink()).unwrap_err();
        assert!(
            matches!(err, DecodeError::Frame(_) | DecodeError::Mismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn truncated_frame_is_refused() {
        let data = segment();
        let z = compress(&data, 3).unwrap();
        for cut in [HEADER_LEN, HEADER_LEN + 5, z.len() - 1] {
            let err = decompress(&z[..cut], io::sink()).unwrap_err();
            assert!(matches!(err, DecodeError::Frame(_)), "cut at {cut}: {err}");
        }
        let err = decompress(&z[..HEADER_LEN - 1], io::sink()).unwrap_err();
        assert!(matches!(err, DecodeError::Header), "{err}");
    }

    #[test]
    fn a_header_that_lies_is_caught() {
        let data = segment();
        let mut z = compress(&data, 3).unwrap();
        z[20] ^= 1; // one bit of the recorded SHA-256
        let err = decompress(&z[..], io::sink()).unwrap_err();
        assert!(matches!(err, DecodeError::Mismatch { .. }), "{err}");
        assert!(decode_header(b"\x28\xb5\x2f\xfd plain zstd").is_none());
    }
}
