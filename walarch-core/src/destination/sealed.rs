//! The encrypted form of an archived file, `<name>.age` (or `.zst.age`, the
//! compressed form encrypted): a plain age file (age-encryption.org/v1) to
//! X25519 recipients, whose payload is authenticated in 64 KiB chunks, so a
//! flipped byte anywhere or a truncated file fails to decrypt. `age -d -i
//! KEY` reads it back with the standard tool.
//!
//! The server holds only the recipients (public keys): it can write the
//! archive, never read it. What it needs to judge a file offered again, the
//! original's SHA-256 and length, is kept in the checksum record next to
//! the stored bytes' SHA-256 (see `Destination::store_new_sealed`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::str::FromStr;

/// Suffix of the encrypted form.
pub const SUFFIX: &str = ".age";

/// The public keys new files are encrypted to.
#[derive(Clone)]
pub struct Recipients {
    keys: Vec<age::x25519::Recipient>,
    /// The file they came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({} from {})", self.keys.len(), self.source)
    }
}

impl Recipients {
    /// Parses a recipients file as `age -R` does: one `age1…` public key per
    /// line, blank lines and `#` comments ignored. At least one key.
    pub fn parse(text: &str, source: &str) -> Result<Recipients, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Recipient::from_str(line).map_err(|_| {
                let what = if line.starts_with("AGE-SECRET-KEY-") {
                    "a private key (an identity), not a public key: keep it off the database server"
                } else {
                    "not an age public key (age1…)"
                };
                format!("Line {} of \"{source}\" is {what}.", i + 1)
            })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(format!("\"{source}\" holds no age public key (age1…)."));
        }
        Ok(Recipients {
            keys,
            source: source.to_string(),
        })
    }

    /// Reads and parses a recipients file (public keys: no permission rule).
    pub fn read_file(path: &str) -> Result<Recipients, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "Could not read \"{path}\": {}.",
                crate::support::error::os_message(&e)
            )
        })?;
        Recipients::parse(&text, path)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn encryptor(&self) -> io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k as &dyn age::Recipient))
            .map_err(|e| io::Error::other(format!("could not encrypt: {e}")))
    }

    /// `data` encrypted to every recipient.
    pub fn seal(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(data.len() + data.len() / 4096 + 256);
        let mut w = self.encryptor()?.wrap_output(&mut out)?;
        w.write_all(data)?;
        w.finish()?;
        Ok(out)
    }

    /// A writer that encrypts what it is given into `inner`; `finish` must
    /// be called (an unfinished stream does not decrypt).
    pub fn seal_stream<W: Write>(&self, inner: W) -> io::Result<SealWriter<W>> {
        Ok(SealWriter(self.encryptor()?.wrap_output(inner)?))
    }
}

/// An encrypting writer (`Recipients::seal_stream`).
pub struct SealWriter<W: Write>(age::stream::StreamWriter<W>);

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> SealWriter<W> {
    /// Writes the last chunk and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

/// The private keys that read encrypted files (`--identity-file`), several
/// for key rotation: each file is tried in turn.
#[derive(Default)]
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// The files they came from, for messages.
    pub sources: Vec<String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({:?})", self.sources)
    }
}

impl Identities {
    /// Identities from `age-keygen` output (`AGE-SECRET-KEY-1…` lines,
    /// `#` comments).
    pub fn parse(text: &str, source: &str) -> Result<Identities, String> {
        let file = age::IdentityFile::from_buffer(BufReader::new(text.as_bytes()))
            .map_err(|_| format!("\"{source}\" is not an age identity file."))?;
        let keys = file
            .into_identities()
            .map_err(|_| format!("\"{source}\" is not an age identity file."))?;
        if keys.is_empty() {
            return Err(format!(
                "\"{source}\" holds no age identity (AGE-SECRET-KEY-1…)."
            ));
        }
        Ok(Identities {
            keys,
            sources: vec![source.to_string()],
        })
    }

    /// Reads identity files; each must be protected like a credentials file
    /// (`destination_setting::CREDENTIALS_FILE_RULE`).
    pub fn read_files(paths: &[String]) -> Result<Identities, String> {
        let mut all = Identities::default();
        for p in paths {
            let text =
                crate::destination::destination_setting::read_secret_file(p, "age identity")?;
            let mut one = Identities::parse(&text, p)?;
            all.keys.append(&mut one.keys);
            all.sources.append(&mut one.sources);
        }
        Ok(all)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A reader of the plaintext of the encrypted stream `r`. A damaged or
    /// truncated stream fails while it is read (an `InvalidData` error),
    /// never with a short read.
    pub fn open<'r, R: Read + Send + 'r>(
        &self,
        r: R,
    ) -> Result<Box<dyn Read + Send + 'r>, OpenError> {
        let d = age::Decryptor::new_buffered(BufReader::with_capacity(
            crate::support::fsutil::IO_BUFFER,
            r,
        ))
        .map_err(|e| OpenError::Header(e.to_string()))?;
        if d.is_scrypt() {
            return Err(OpenError::Header(
                "encrypted with a passphrase, not to a public key".into(),
            ));
        }
        match d.decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity)) {
            Ok(r) => Ok(Box::new(r)),
            Err(age::DecryptError::NoMatchingKeys) => Err(OpenError::NoMatchingKey),
            Err(e) => Err(OpenError::Header(e.to_string())),
        }
    }

    /// The plaintext of a whole encrypted file in memory.
    pub fn open_bytes(&self, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::with_capacity(data.len());
        self.open(data)?
            .read_to_end(&mut out)
            .map_err(|e| OpenError::Payload(e.to_string()))?;
        Ok(out)
    }
}

/// Why an encrypted file was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// Not an age file, or its header is damaged.
    Header(String),
    /// None of the identities is a recipient of the file.
    NoMatchingKey,
    /// The payload failed authentication (damaged) or ended early.
    Payload(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Header(e) => write!(f, "not a readable age file: {e}"),
            OpenError::NoMatchingKey => {
                f.write_str("none of the identities given is a recipient of the file")
            }
            OpenError::Payload(e) => write!(f, "the encrypted data is damaged or truncated: {e}"),
        }
    }
}

/// Whether a reader starts as an age file does (for messages about a file
/// that should be one).
pub fn looks_sealed(mut r: impl BufRead) -> bool {
    r.fill_buf()
        .map(|b| b.starts_with(b"age-encryption.org/v1\n"))
        .unwrap_or(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    /// A fresh key pair: (recipients file text, identity file text).
    pub(crate) fn key_pair() -> (String, String) {
        let id = age::x25519::Identity::generate();
        (
            format!("# test\n{}\n", id.to_public()),
            format!("# created: now\n{}\n", id.to_string().expose_secret()),
        )
    }

    pub(crate) fn keys() -> (Recipients, Identities) {
        let (r, i) = key_pair();
        (
            Recipients::parse(&r, "r").unwrap(),
            Identities::parse(&i, "i").unwrap(),
        )
    }

    fn data() -> Vec<u8> {
        (0..300_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect()
    }

    #[test]
    fn round_trip_to_every_recipient() {
        let (r1, i1) = key_pair();
        let (r2, i2) = key_pair();
        let both = Recipients::parse(&format!("{r1}\n\n{r2}"), "both").unwrap();
        assert_eq!(both.len(), 2);
        let sealed = both.seal(&data()).unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        assert!(looks_sealed(&sealed[..]));
        for i in [i1, i2] {
            let ids = Identities::parse(&i, "i").unwrap();
            assert!(ids.open_bytes(&sealed).unwrap() == data());
        }
        // A fresh file key per file: the same bytes never encrypt alike.
        assert_ne!(both.seal(&data()).unwrap(), sealed);
    }

    #[test]
    fn a_stream_decrypts_like_a_buffer() {
        let (r, i) = keys();
        let mut w = r.seal_stream(Vec::new()).unwrap();
        for c in data().chunks(7000) {
            w.write_all(c).unwrap();
        }
        let streamed = w.finish().unwrap();
        assert!(i.open_bytes(&streamed).unwrap() == data());
    }

    #[test]
    fn the_wrong_identity_is_refused() {
        let (r, _) = keys();
        let (_, other) = keys();
        let sealed = r.seal(b"wal").unwrap();
        assert_eq!(
            other.open_bytes(&sealed).unwrap_err(),
            OpenError::NoMatchingKey
        );
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let (r, i) = keys();
        let plain = &data()[..140_000]; // three chunks, the last one short
        let sealed = r.seal(plain).unwrap();
        let header = sealed.len() - plain.len() - 3 * 16;
        // Header and nonce densely, the payload (every chunk, every tag)
        // sparsely, and the last byte.
        let positions = (0..header)
            .step_by(7)
            .chain((header..sealed.len()).step_by(4099))
            .chain([header + 65536 + 8, sealed.len() - 1]);
        for pos in positions {
            let mut bad = sealed.clone();
            bad[pos] ^= 0x04;
            if let Ok(out) = i.open_bytes(&bad) {
                panic!(
                    "a flip at {pos} of {} decrypted ({} bytes)",
                    sealed.len(),
                    out.len()
                );
            }
        }
    }

    #[test]
    fn a_truncated_stream_is_refused() {
        let (r, i) = keys();
        let plain = data();
        let sealed = r.seal(&plain).unwrap();
        // At a chunk boundary too: the last chunk is marked as last.
        let header = sealed.len() - plain.len() - (plain.len().div_ceil(65536)) * 16;
        for cut in [10, header, header + 65536 + 16, sealed.len() - 1] {
            assert!(i.open_bytes(&sealed[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        let (_, i) = key_pair();
        let e = Recipients::parse(&i, "/etc/r").unwrap_err();
        assert!(e.contains("private key"), "{e}");
        let e = Recipients::parse("# nothing\n\n", "/etc/r").unwrap_err();
        assert!(e.contains("holds no age public key"), "{e}");
        let e = Recipients::parse("age1notakey\n", "/etc/r").unwrap_err();
        assert!(
            e.contains("Line 1") && e.contains("not an age public key"),
            "{e}"
        );
        let e = Identities::parse("age1xyz\n", "/k").unwrap_err();
        assert!(e.contains("/k"), "{e}");
    }
}
