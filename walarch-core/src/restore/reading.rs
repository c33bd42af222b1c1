//! Reading an archived WAL file back, whichever of its four forms holds it
//! (`X`, `X.zst`, `X.age`, `X.zst.age`): restore, verify and retention all
//! read through here, so that what they trust is checked the same way.
//!
//! The stored bytes are checked against their record (the first line of
//! the checksum record, which `sha256sum -c` checks without any key); an
//! encrypted form is then decrypted with the identities given (age
//! authenticates every 64 KiB chunk and the end of the stream), a
//! compressed one decompressed (its header carries the original's SHA-256
//! and length, checked), and what comes out of an encrypted form is checked
//! against the original's SHA-256 and length its record keeps. Anyone
//! holding the public key can make a valid age file: the record, not the
//! decryption, says which bytes were archived.
//!
//! The output is written as it is produced: the caller writes to a
//! temporary file or a buffer and uses it only when this succeeds.

use std::io::{self, Read, Write};

use crate::archiving::archive_protocol::read_error;
use crate::destination::compressed::{self, DecodeError, Original};
use crate::destination::sealed::{Identities, OpenError};
use crate::destination::{Destination, Recorded};
use crate::support::error::ArchiveError;
use crate::wal::checksum::{to_hex, Hasher, Sha256Digest};
use crate::wal::walname::{form_name, Form};

/// What holds a WAL file: the stored name and its form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub stored: String,
    pub form: Form,
}

/// A stored file found, and a reader of its stored bytes.
pub type OpenedStored<'a> = (Holder, Box<dyn Read + Send + 'a>);

/// Finds the form that holds `walfile` and opens it: the plain form first
/// (one request, where most archives keep their files), then one lookup
/// (`sizes_of`) for the others. `None` when no form holds it.
pub fn open_stored<'a>(
    archive: &'a dyn Destination,
    walfile: &str,
) -> Result<Option<OpenedStored<'a>>, ArchiveError> {
    if let Some(r) = archive.open(walfile)? {
        return Ok(Some((
            Holder {
                stored: walfile.to_string(),
                form: Form::PLAIN,
            },
            r,
        )));
    }
    let others: Vec<(String, Form)> = Form::ALL
        .into_iter()
        .filter(|f| *f != Form::PLAIN)
        .filter_map(|f| form_name(walfile, f).map(|n| (n, f)))
        .collect();
    if others.is_empty() {
        return Ok(None);
    }
    let names: Vec<String> = others.iter().map(|(n, _)| n.clone()).collect();
    let sizes = archive.sizes_of(&names)?;
    for ((stored, form), size) in others.into_iter().zip(sizes) {
        if size.is_none() {
            continue;
        }
        if let Some(r) = archive.open(&stored)? {
            return Ok(Some((Holder { stored, form }, r)));
        }
    }
    Ok(None)
}

/// A stored file's checksum record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The stored bytes' SHA-256.
    pub digest: Sha256Digest,
    /// The original's, kept for an encrypted form.
    pub original: Option<Original>,
}

/// Why a stored file was not read back.
#[derive(Debug)]
pub enum ReadFailure {
    /// The store could not be read.
    Store(ArchiveError),
    /// The output could not be written.
    Write(io::Error),
    /// No checksum record.
    NoRecord,
    /// The record is not one for this file (the reason).
    BadRecord(String),
    /// The stored bytes differ from their record.
    Mismatch {
        len: u64,
        recorded: Sha256Digest,
        actual: Sha256Digest,
    },
    /// An encrypted form, and no identity to read it.
    NoIdentity,
    /// None of the identities given is a recipient of the file.
    NoMatchingKey,
    /// The stored bytes match their record but do not restore the WAL file
    /// the record (or the compressed header) says (why).
    Undecodable(String),
}

impl ReadFailure {
    /// A sentence about stored file `stored` (without the consequence).
    pub fn describe(&self, stored: &str, ids: Option<&Identities>) -> String {
        match self {
            ReadFailure::Store(e) => match &e.detail {
                Some(d) => format!("{}: {d}", e.message),
                None => e.message.clone(),
            },
            ReadFailure::Write(e) => format!(
                "could not write \"{stored}\" out: {}",
                crate::support::error::os_message(e)
            ),
            ReadFailure::NoRecord => format!("no checksum recorded for \"{stored}\""),
            ReadFailure::BadRecord(why) => format!("the checksum record of \"{stored}\" {why}"),
            ReadFailure::Mismatch {
                len,
                recorded,
                actual,
            } => format!(
                "checksum mismatch for \"{stored}\": recorded {}, archived file ({len} bytes) has {}",
                to_hex(recorded),
                to_hex(actual)
            ),
            ReadFailure::NoIdentity => format!(
                "\"{stored}\" is encrypted and no identity was given to decrypt it (--identity-file FILE or WALARCH_IDENTITY_FILE, the archive's private key)"
            ),
            ReadFailure::NoMatchingKey => format!(
                "none of the identities given ({}) can decrypt \"{stored}\": it was encrypted to another key (after a key rotation, give the older key's identity file too: --identity-file is repeatable)",
                ids.map(|i| i.sources.join(", ")).unwrap_or_default()
            ),
            ReadFailure::Undecodable(why) => {
                format!("\"{stored}\" matches its checksum record but {why}")
            }
        }
    }
}

/// The record of `h`, as far as reading it back needs: an encrypted form's
/// must keep the original's SHA-256 and length.
pub fn record_of(archive: &dyn Destination, h: &Holder) -> Result<Record, ReadFailure> {
    let digest = match archive.recorded(&h.stored).map_err(ReadFailure::Store)? {
        Recorded::Digest(d) => d,
        Recorded::Missing => return Err(ReadFailure::NoRecord),
        Recorded::Malformed => return Err(ReadFailure::BadRecord("is malformed".into())),
    };
    let original = if h.form.encrypted {
        match archive
            .recorded_original(&h.stored)
            .map_err(ReadFailure::Store)?
        {
            Some(o) => Some(o),
            None => {
                return Err(ReadFailure::BadRecord(
                    "keeps no SHA-256 of the original, which an encrypted file needs to be checked once decrypted".into(),
                ))
            }
        }
    } else {
        None
    };
    Ok(Record { digest, original })
}

/// What was read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBack {
    /// The stored bytes: how many were read.
    pub stored_len: u64,
    /// The WAL file written out: its length and SHA-256.
    pub original: Original,
}

/// Hashes and counts what is read through it; keeps the first read error
/// of the store (decryption and decompression see a copy).
struct Tee<R> {
    inner: R,
    h: Hasher,
    len: u64,
    failed: Option<io::Error>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.h.update(&buf[..n]);
                self.len += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.failed.get_or_insert(e);
                Err(copy)
            }
        }
    }
}

/// Reads the stored form `h` from `src` back to the WAL file, written to
/// `out` as it comes; every check is made before this returns `Ok`, so the
/// caller uses `out` only then. `record` is `record_of(h)`.
pub fn read_back(
    archive: &dyn Destination,
    ids: Option<&Identities>,
    h: &Holder,
    record: &Record,
    src: impl Read + Send,
    out: &mut dyn Write,
) -> Result<ReadBack, ReadFailure> {
    if h.form.encrypted && ids.is_none() {
        return Err(ReadFailure::NoIdentity);
    }
    let mut tee = Tee {
        inner: src,
        h: Hasher::new(),
        len: 0,
        failed: None,
    };
    let produced = produce(ids, h.form, &mut tee, out);
    if let Err(ReadFailure::Write(e)) = produced {
        return Err(ReadFailure::Write(e));
    }
    // The rest of the stored bytes: a file that failed early is still
    // compared with its record, which says best what is wrong with it.
    if tee.failed.is_none() {
        let _ = io::copy(&mut tee, &mut io::sink());
    }
    if let Some(e) = tee.failed.take() {
        return Err(ReadFailure::Store(read_error(archive, &h.stored, &e)));
    }
    let actual = tee.h.finish();
    if actual != record.digest {
        return Err(ReadFailure::Mismatch {
            len: tee.len,
            recorded: record.digest,
            actual,
        });
    }
    let original = produced?;
    if h.form.encrypted {
        match record.original {
            Some(o) if o == original => {}
            Some(o) => {
                return Err(ReadFailure::Undecodable(format!(
                    "{} to {} bytes with SHA-256 {}, not to the original its record keeps ({} bytes with SHA-256 {})",
                    if h.form.compressed { "decrypts and decompresses" } else { "decrypts" },
                    original.len,
                    to_hex(&original.sha256),
                    o.len,
                    to_hex(&o.sha256)
                )))
            }
            None => {
                return Err(ReadFailure::BadRecord(
                    "keeps no SHA-256 of the original".into(),
                ))
            }
        }
    }
    Ok(ReadBack {
        stored_len: tee.len,
        original,
    })
}

/// Decrypts and decompresses what `form` needs, writing the WAL file to
/// `out`; the original's SHA-256 and length.
fn produce<R: Read + Send>(
    ids: Option<&Identities>,
    form: Form,
    tee: &mut Tee<R>,
    out: &mut dyn Write,
) -> Result<Original, ReadFailure> {
    let what = if form.encrypted {
        "does not decrypt"
    } else {
        "cannot be read"
    };
    let mut plain: Box<dyn Read + Send + '_> = match (form.encrypted, ids) {
        (false, _) => Box::new(tee),
        (true, None) => return Err(ReadFailure::NoIdentity),
        (true, Some(ids)) => ids.open(tee).map_err(|e| match e {
            OpenError::NoMatchingKey => ReadFailure::NoMatchingKey,
            e => ReadFailure::Undecodable(format!("{what}: {e}")),
        })?,
    };
    let original = if form.compressed {
        match compressed::decompress(&mut plain, &mut *out) {
            Ok(o) => o,
            Err(DecodeError::Write(e)) => return Err(ReadFailure::Write(e)),
            Err(e) => {
                return Err(ReadFailure::Undecodable(format!(
                    "does not decompress to the WAL file it recorded: {e}"
                )))
            }
        }
    } else {
        let mut h = Hasher::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; crate::support::fsutil::IO_BUFFER];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReadFailure::Undecodable(format!("{what}: {e}"))),
            };
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(ReadFailure::Write)?;
            len += n as u64;
        }
        Original {
            sha256: h.finish(),
            len,
        }
    };
    // To the end: an encrypted stream's last chunk is authenticated when it
    // is reached, and nothing may follow the compressed WAL file.
    let mut more = [0u8; 1];
    loop {
        match plain.read(&mut more) {
            Ok(0) => break,
            Ok(_) => {
                return Err(ReadFailure::Undecodable(
                    "holds more data after the WAL file".into(),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadFailure::Undecodable(format!("{what}: {e}"))),
        }
    }
    Ok(original)
}

/// A small stored file (history, backup history; at most `max` bytes)
/// read back whole into memory, checked as restore checks it.
pub fn read_back_small(
    archive: &dyn Destination,
    ids: Option<&Identities>,
    h: &Holder,
    src: impl Read + Send,
    max: u64,
) -> Result<Vec<u8>, ReadFailure> {
    let record = record_of(archive, h)?;
    let mut out = Vec::new();
    read_back(archive, ids, h, &record, src.take(max), &mut out)?;
    Ok(out)
}
