//! The WAL files of a destination whichever form they are stored in, as the
//! archive protocol sees them: `X` is the file stored as it is or, for
//! segments and `.partial` files, its compressed form `X.zst`. With a level
//! set, new ones are stored compressed.
//!
//! Through this view the protocol's rules span both forms unchanged: a WAL
//! file offered again is judged against whichever form holds it, by the
//! original bytes (the SHA-256 in the compressed form's header, trusted only
//! when the stored bytes match their record, else the decompressed bytes),
//! and one WAL file never gets a second form.

use std::io::{Cursor, Read};
use std::path::Path;

use crate::destination::compressed::{self, Original};
use crate::destination::{
    Destination, Entry, Leftovers, ObjectEntry, ObjectWriter, Recorded, Stored,
};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::{sha256, to_hex, Sha256Digest};
use crate::wal::walname::{compressed_name, stored_form};

pub struct Compressing<'a> {
    inner: &'a dyn Destination,
    level: Option<i32>,
}

/// A compressed form's stored bytes, and the original they decompress to.
type Decoded = (Vec<u8>, Option<Vec<u8>>);

/// What stands under a WAL file's name.
enum Holder {
    Plain,
    Compressed(String),
}

impl<'a> Compressing<'a> {
    /// `level`: the zstd level new segments are stored with; `None` stores
    /// them as they are (and still sees compressed ones).
    pub fn new(inner: &'a dyn Destination, level: Option<i32>) -> Self {
        Compressing { inner, level }
    }

    /// What holds `name`, and its stored length. The form new files take
    /// is looked up first: one lookup for most.
    fn holder(&self, name: &str) -> Result<Option<(Holder, u64)>, ArchiveError> {
        let z = compressed_name(name);
        let compressed_first = self.level.is_some() && z.is_some();
        let plain = |s: &Self| -> Result<_, ArchiveError> {
            Ok(s.inner.size(name)?.map(|n| (Holder::Plain, n)))
        };
        if !compressed_first {
            if let Some(h) = plain(self)? {
                return Ok(Some(h));
            }
        }
        if let Some(z) = z {
            if let Some(n) = self.inner.size(&z)? {
                return Ok(Some((Holder::Compressed(z), n)));
            }
        }
        if compressed_first {
            return plain(self);
        }
        Ok(None)
    }

    fn read_stored(&self, z: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let Some(mut r) = self.inner.open(z)? else {
            return Ok(None);
        };
        let mut data = Vec::new();
        r.read_to_end(&mut data)
            .map_err(|e| crate::archiving::archive_protocol::read_error(self.inner, z, &e))?;
        Ok(Some(data))
    }

    /// A compressed form's stored bytes and, when they decompress to what
    /// their header says, the original.
    fn decoded(&self, z: &str) -> Result<Option<Decoded>, ArchiveError> {
        let Some(stored) = self.read_stored(z)? else {
            return Ok(None);
        };
        let mut original = Vec::new();
        let ok = compressed::decompress(&stored[..], &mut original).is_ok();
        Ok(Some((stored, ok.then_some(original))))
    }
}

impl Destination for Compressing<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn location(&self, name: &str) -> String {
        match self.holder(name).map(|h| h.map(|(h, _)| h)) {
            Ok(Some(Holder::Compressed(z))) => self.inner.location(&z),
            Ok(Some(Holder::Plain)) => self.inner.location(name),
            _ => match (self.level, compressed_name(name)) {
                (Some(_), Some(z)) => self.inner.location(&z),
                _ => self.inner.location(name),
            },
        }
    }

    /// Looks for the other form only (the inner store finds its own name
    /// taken): one lookup more per file than the inner destination alone.
    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let Some(z) = compressed_name(name) else {
            return self.inner.store_new(name, source);
        };
        let Some(level) = self.level else {
            if self.inner.size(&z)?.is_some() {
                return Ok(Stored::Exists);
            }
            return self.inner.store_new(name, source);
        };
        if self.inner.size(name)?.is_some() {
            return Ok(Stored::Exists);
        }
        let data = std::fs::read(source).map_err(|e| ArchiveError::io("read file", source, &e))?;
        let packed = compressed::compress(&data, level).map_err(|e| {
            ArchiveError::new(
                ErrorKind::Io,
                format!("could not compress \"{}\": {e}", source.display()),
            )
        })?;
        let original = compressed::decode_header(&packed).ok_or_else(|| {
            ArchiveError::new(ErrorKind::Internal, "compressed data without its header")
        })?;
        Ok(match self.inner.store_new_bytes(&z, &packed)? {
            Stored::Created { stored_bytes, .. } => Stored::Created {
                bytes: original.len,
                sha256: original.sha256,
                stored_bytes,
            },
            Stored::Exists => Stored::Exists,
        })
    }

    fn store_new_bytes(&self, name: &str, data: &[u8]) -> Result<Stored, ArchiveError> {
        self.inner.store_new_bytes(name, data)
    }

    /// For a compressed form: the original's SHA-256, when the stored bytes
    /// match their record and decompress to what their header says (a
    /// compressed segment decompresses in about a millisecond, and this is
    /// asked only of duplicates); `Malformed` otherwise, so that the
    /// protocol settles it by the bytes.
    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        let z = match self.holder(name)?.map(|(h, _)| h) {
            None => return Ok(Recorded::Missing),
            Some(Holder::Plain) => return self.inner.recorded(name),
            Some(Holder::Compressed(z)) => z,
        };
        let recorded = self.inner.recorded(&z)?;
        let Recorded::Digest(d) = recorded else {
            return Ok(recorded);
        };
        Ok(match self.decoded(&z)? {
            None => Recorded::Missing,
            Some((stored, Some(original))) if sha256(&stored) == d => {
                Recorded::Digest(sha256(&original))
            }
            Some(_) => Recorded::Malformed,
        })
    }

    /// For a compressed form, the record is of its stored bytes: rewritten
    /// only once they are proven to decompress to `sha256`.
    fn write_record(&self, name: &str, sha256_of_wal: &Sha256Digest) -> Result<(), ArchiveError> {
        let z = match self.holder(name)?.map(|(h, _)| h) {
            Some(Holder::Compressed(z)) => z,
            _ => return self.inner.write_record(name, sha256_of_wal),
        };
        let proven = match self.decoded(&z)? {
            Some((stored, Some(original))) if sha256(&original) == *sha256_of_wal => stored,
            _ => {
                return Err(ArchiveError::new(
                    ErrorKind::Conflict,
                    format!(
                        "archive file \"{}\" does not decompress to the WAL file with SHA-256 {}",
                        self.inner.location(&z),
                        to_hex(sha256_of_wal)
                    ),
                ))
            }
        };
        self.inner.write_record(&z, &sha256(&proven))
    }

    fn make_durable(&self, name: &str) -> Result<(), ArchiveError> {
        match self.holder(name)?.map(|(h, _)| h) {
            Some(Holder::Compressed(z)) => self.inner.make_durable(&z),
            _ => self.inner.make_durable(name),
        }
    }

    /// For a compressed form: the original's length from its header (the
    /// stored length if the header is unreadable, which then matches no WAL
    /// file and sends the protocol to the bytes).
    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        match self.holder(name)?.map(|(h, _)| h) {
            None => Ok(None),
            Some(Holder::Plain) => self.inner.size(name),
            Some(Holder::Compressed(z)) => {
                let mut head = [0u8; compressed::HEADER_LEN];
                let Some(mut r) = self.inner.open(&z)? else {
                    return Ok(None);
                };
                let n = crate::support::fsutil::read_full(&mut r, &mut head).map_err(|e| {
                    crate::archiving::archive_protocol::read_error(self.inner, &z, &e)
                })?;
                match compressed::decode_header(&head[..n]) {
                    Some(Original { len, .. }) => Ok(Some(len)),
                    None => self.inner.size(&z),
                }
            }
        }
    }

    /// For a compressed form: the decompressed bytes, or the stored bytes
    /// themselves when they do not decompress (then they match no WAL
    /// file, and the protocol refuses them as different).
    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        match self.holder(name)?.map(|(h, _)| h) {
            None => Ok(None),
            Some(Holder::Plain) => self.inner.open(name),
            Some(Holder::Compressed(z)) => Ok(self.decoded(&z)?.map(|(stored, original)| {
                Box::new(Cursor::new(original.unwrap_or(stored))) as Box<dyn Read + Send>
            })),
        }
    }

    fn stored_size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        Ok(self.holder(name)?.map(|(_, n)| n))
    }

    // A base backup's objects are compressed by the backup writer itself.
    fn create_object(&self, name: &str) -> Result<Box<dyn ObjectWriter>, ArchiveError> {
        self.inner.create_object(name)
    }

    fn objects_under(&self, prefix: &str) -> Result<Vec<ObjectEntry>, ArchiveError> {
        self.inner.objects_under(prefix)
    }

    fn open_object(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        self.inner.open_object(name)
    }

    fn remove_object(&self, name: &str) -> Result<(), ArchiveError> {
        self.inner.remove_object(name)
    }

    /// WAL files by their own names, whichever form holds them (the older
    /// time if both do); other names as they are.
    fn entries(&self) -> Result<Vec<Entry>, ArchiveError> {
        let mut by_name: std::collections::BTreeMap<String, Option<std::time::SystemTime>> =
            Default::default();
        for e in self.inner.entries()? {
            let name = stored_form(&e.name).map_or(e.name.clone(), |(wal, _)| wal.to_string());
            let t = by_name.entry(name).or_insert(e.stored_at);
            *t = match (*t, e.stored_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(by_name
            .into_iter()
            .map(|(name, stored_at)| Entry { name, stored_at })
            .collect())
    }

    /// The WAL files held, whichever form.
    fn list(&self) -> Result<Vec<String>, ArchiveError> {
        let mut names: Vec<String> = self
            .inner
            .list()?
            .iter()
            .filter_map(|n| stored_form(n).map(|(wal, _)| wal.to_string()))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn remove(&self, name: &str) -> Result<(), ArchiveError> {
        if let Some(z) = compressed_name(name) {
            self.inner.remove(&z)?;
        }
        self.inner.remove(name)
    }

    fn clean_leftovers(&self) -> Result<Leftovers, ArchiveError> {
        self.inner.clean_leftovers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archiving::archive_protocol::{archive_file, ArchiveOutcome};
    use crate::destination::local_directory::LocalDirectory;
    use crate::support::testing::MemoryDestination;

    const SEG: &str = "000000010000000000000003";

    /// WAL-like bytes: records, then the zeros of a switched segment.
    fn wal_bytes(seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        for (i, b) in v.iter_mut().take(50_000).enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        v
    }

    /// Runs `check` against a directory and an in-memory destination:
    /// (destination, directory holding the WAL files).
    fn each_destination(check: impl Fn(&dyn Destination, &Path)) {
        let d = tempfile::tempdir().unwrap();
        let arch = d.path().join("archive");
        std::fs::create_dir(&arch).unwrap();
        check(&LocalDirectory::new(&arch, 0o600), d.path());
        let d = tempfile::tempdir().unwrap();
        check(&MemoryDestination::default(), d.path());
    }

    fn wal(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn stores_segments_compressed_and_history_files_as_they_are() {
        each_destination(|inner, dir| {
            let view = Compressing::new(inner, Some(3));
            let data = wal_bytes(1);
            let out = archive_file(&view, SEG, &wal(dir, SEG, &data)).unwrap();
            assert_eq!(inner.size(SEG).unwrap(), None);
            let stored = inner.size(&format!("{SEG}.zst")).unwrap().unwrap();
            assert!(stored < data.len() as u64 / 10, "{stored} bytes");
            assert_eq!(
                out,
                ArchiveOutcome::Archived {
                    bytes: data.len() as u64,
                    sha256: sha256(&data),
                    stored_bytes: stored,
                }
            );
            assert_eq!(view.size(SEG).unwrap(), Some(data.len() as u64));
            assert_eq!(view.list().unwrap(), vec![SEG.to_string()]);

            let h = "00000002.history";
            archive_file(
                &view,
                h,
                &wal(dir, h, b"1\t0/3000000\tno recovery target\n"),
            )
            .unwrap();
            assert!(inner.size(h).unwrap().is_some());
            assert!(inner.size(&format!("{h}.zst")).unwrap().is_none());
        });
    }

    #[test]
    fn the_duplicate_rule_spans_both_forms() {
        each_destination(|inner, dir| {
            let data = wal_bytes(2);
            let src = wal(dir, SEG, &data);
            // Compressed first; offered again compressed, then plain.
            archive_file(&Compressing::new(inner, Some(1)), SEG, &src).unwrap();
            for level in [Some(1), None] {
                let out = archive_file(&Compressing::new(inner, level), SEG, &src).unwrap();
                assert!(
                    matches!(out, ArchiveOutcome::AlreadyArchived { .. }),
                    "{out:?}"
                );
            }
            assert_eq!(inner.size(SEG).unwrap(), None, "a second, plain form");

            // Different contents under either form are refused, untouched.
            let before = inner.size(&format!("{SEG}.zst")).unwrap();
            let other = wal(dir, "other", &wal_bytes(9));
            for level in [Some(1), None] {
                let e = archive_file(&Compressing::new(inner, level), SEG, &other).unwrap_err();
                assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
                assert!(e.message.contains(".zst\""), "{}", e.message);
            }
            assert_eq!(inner.size(&format!("{SEG}.zst")).unwrap(), before);
            assert_eq!(inner.size(SEG).unwrap(), None);
        });
    }

    #[test]
    fn a_plain_file_offered_with_compression_on_is_judged_by_its_bytes() {
        each_destination(|inner, dir| {
            let seg = "000000010000000000000004";
            let data = wal_bytes(3);
            let src = wal(dir, seg, &data);
            archive_file(&Compressing::new(inner, None), seg, &src).unwrap();
            let out = archive_file(&Compressing::new(inner, Some(3)), seg, &src).unwrap();
            assert!(
                matches!(out, ArchiveOutcome::AlreadyArchived { .. }),
                "{out:?}"
            );
            assert_eq!(inner.size(&format!("{seg}.zst")).unwrap(), None);
            let e = archive_file(
                &Compressing::new(inner, Some(3)),
                seg,
                &wal(dir, "other", &wal_bytes(4)),
            )
            .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
        });
    }

    #[test]
    fn a_compressed_form_without_a_good_record_is_settled_by_its_bytes() {
        each_destination(|inner, dir| {
            let data = wal_bytes(5);
            let src = wal(dir, SEG, &data);
            let view = Compressing::new(inner, Some(3));
            archive_file(&view, SEG, &src).unwrap();
            let z = format!("{SEG}.zst");
            let stored = {
                let mut v = Vec::new();
                inner
                    .open(&z)
                    .unwrap()
                    .unwrap()
                    .read_to_end(&mut v)
                    .unwrap();
                v
            };
            // A damaged record over good bytes: rewritten, archived.
            inner.write_record(&z, &[7u8; 32]).unwrap();
            let out = archive_file(&view, SEG, &src).unwrap();
            let ArchiveOutcome::AlreadyArchived {
                repaired_record, ..
            } = out
            else {
                panic!("{out:?}")
            };
            assert!(repaired_record.is_some());
            assert_eq!(
                inner.recorded(&z).unwrap(),
                Recorded::Digest(sha256(&stored))
            );

            // Bytes that do not decompress (zstd's own checksum, the last
            // bytes, damaged): refused as different, untouched.
            let mut bad = stored.clone();
            let last = bad.len() - 1;
            bad[last] ^= 0x20;
            inner.remove(&z).unwrap();
            inner.store_new_bytes(&z, &bad).unwrap();
            let e = archive_file(&view, SEG, &src).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
            let mut now = Vec::new();
            inner
                .open(&z)
                .unwrap()
                .unwrap()
                .read_to_end(&mut now)
                .unwrap();
            assert!(now == bad);
        });
    }
}
