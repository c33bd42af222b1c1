//! The WAL files of a destination whichever form they are stored in, as the
//! archive protocol sees them: `X` as it is, compressed (`X.zst`, segments
//! and `.partial` files only), encrypted (`X.age`) or both (`X.zst.age`).
//! New files take the form the settings ask for.
//!
//! Through this view the protocol's rules span every form unchanged: a WAL
//! file offered again is judged against whichever form holds it, by the
//! original bytes, and one WAL file never gets a second form. For a
//! compressed form the original's SHA-256 is in its header (trusted only
//! when the stored bytes match their record, else the decompressed bytes
//! decide). An encrypted form cannot be read on the archiving side, which
//! holds no private key: its record keeps the original's SHA-256 and
//! length, trusted when the stored bytes match the record; anything else
//! is refused rather than guessed.

use std::io::{Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use crate::destination::compressed::{self, Original};
use crate::destination::sealed::{Identities, Recipients};
use crate::destination::{
    Destination, Entry, Leftovers, ObjectEntry, ObjectWriter, Recorded, Stored,
};
use crate::support::error::{ArchiveError, ErrorKind};
use crate::wal::checksum::{hash_reader, sha256, to_hex, Sha256Digest};
use crate::wal::walname::{form_name, stored_form, Form};

/// Whether, and to whom, new files are encrypted. Equal when they encrypt
/// to the same keys (or fail for the same reason).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Sealing {
    #[default]
    Off,
    To(Arc<Recipients>),
    /// Encryption is configured but its recipients cannot be used: nothing
    /// is stored, in any form, and every attempt fails saying why.
    Broken(String),
}

pub struct Compressing<'a> {
    inner: &'a dyn Destination,
    level: Option<i32>,
    sealing: Sealing,
    /// What reads encrypted forms (the restore side's tools); the server
    /// has none.
    opening: Option<Arc<Identities>>,
}

/// A compressed form's stored bytes, and the original they decompress to.
type Decoded = (Vec<u8>, Option<Vec<u8>>);

/// What stands under a WAL file's name: the stored name and its form.
struct Holder {
    name: String,
    form: Form,
}

impl<'a> Compressing<'a> {
    /// `level`: the zstd level new segments are stored with; `None` stores
    /// them as they are (and still sees every other form).
    pub fn new(inner: &'a dyn Destination, level: Option<i32>) -> Self {
        Compressing {
            inner,
            level,
            sealing: Sealing::Off,
            opening: None,
        }
    }

    /// New files are encrypted as `sealing` says.
    pub fn sealing(mut self, sealing: Sealing) -> Self {
        self.sealing = sealing;
        self
    }

    /// Encrypted forms are read with `ids`.
    pub fn opening(mut self, ids: Option<Arc<Identities>>) -> Self {
        self.opening = ids;
        self
    }

    pub fn sealing_state(&self) -> &Sealing {
        &self.sealing
    }

    /// The form a new `name` is stored in.
    pub fn target_form(&self, name: &str) -> Form {
        let encrypted = !matches!(self.sealing, Sealing::Off);
        let zst = Form {
            compressed: true,
            encrypted,
        };
        if self.level.is_some() && form_name(name, zst).is_some() {
            zst
        } else {
            Form {
                compressed: false,
                encrypted,
            }
        }
    }

    /// The names `name` may be stored under, the form new files take first.
    fn candidates(&self, name: &str) -> Vec<(String, Form)> {
        let target = self.target_form(name);
        std::iter::once(target)
            .chain(Form::ALL.into_iter().filter(|f| *f != target))
            .filter_map(|f| form_name(name, f).map(|n| (n, f)))
            .collect()
    }

    /// What holds `name`, and its stored length: every form is looked up in
    /// one `sizes_of` (one listing in an object store).
    fn holder(&self, name: &str) -> Result<Option<(Holder, u64)>, ArchiveError> {
        let cands = self.candidates(name);
        let names: Vec<String> = cands.iter().map(|(n, _)| n.clone()).collect();
        let sizes = self.inner.sizes_of(&names)?;
        Ok(cands
            .into_iter()
            .zip(sizes)
            .find_map(|((name, form), size)| size.map(|n| (Holder { name, form }, n))))
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

    /// A stored form's bytes and, when they restore the WAL file as their
    /// form says (decrypted with the identities given, decompressed to what
    /// the header says), the original. An encrypted form without identities
    /// is refused.
    fn decoded(&self, h: &Holder) -> Result<Option<Decoded>, ArchiveError> {
        let Some(stored) = self.read_stored(&h.name)? else {
            return Ok(None);
        };
        let plain = if h.form.encrypted {
            let Some(ids) = &self.opening else {
                return Err(self.unreadable(&h.name));
            };
            match ids.open_bytes(&stored) {
                Ok(p) => p,
                Err(_) => return Ok(Some((stored, None))),
            }
        } else {
            stored.clone()
        };
        if !h.form.compressed {
            return Ok(Some((stored, Some(plain))));
        }
        let mut original = Vec::new();
        let ok = compressed::decompress(&plain[..], &mut original).is_ok();
        Ok(Some((stored, ok.then_some(original))))
    }

    /// The original an encrypted form's record keeps, when the record (its
    /// stored-bytes digest `recorded`) matches the stored bytes; `None`
    /// otherwise.
    fn sealed_original(
        &self,
        stored: &str,
        recorded: &Sha256Digest,
    ) -> Result<Option<Original>, ArchiveError> {
        let Some(original) = self.inner.recorded_original(stored)? else {
            return Ok(None);
        };
        let Some(mut r) = self.inner.open(stored)? else {
            return Ok(None);
        };
        let (_, digest) = hash_reader(&mut r)
            .map_err(|e| crate::archiving::archive_protocol::read_error(self.inner, stored, &e))?;
        Ok((digest == *recorded).then_some(original))
    }

    /// The refusal where only the bytes of an encrypted form could settle
    /// whether it holds a WAL file.
    fn unreadable(&self, stored: &str) -> ArchiveError {
        ArchiveError::new(
            ErrorKind::Conflict,
            format!(
                "archive file \"{}\" is encrypted and its checksum record does not vouch for it",
                self.inner.location(stored)
            ),
        )
        .with_detail(
            "The record is missing or damaged, or the stored bytes differ from it; \
             without the private key the archiver cannot compare the file with the WAL file.",
        )
        .with_hint(
            "Check the archive with \"walarch verify --identity-file KEY\" where the key is kept. \
             A damaged file moved away is archived again; walarch_ext never overwrites it.",
        )
    }

    /// The error of a store attempted while encryption is configured but
    /// unusable.
    fn broken(why: &str) -> ArchiveError {
        ArchiveError::new(
            ErrorKind::Configuration,
            "walarch.encryption_recipients cannot be used: nothing is archived",
        )
        .with_detail(why.to_string())
        .with_hint(
            "Make the file readable by the server with one age public key (age1…) per line, \
             or set walarch.encryption_recipients to '' to archive unencrypted.",
        )
    }
}

impl Destination for Compressing<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn location(&self, name: &str) -> String {
        match self.holder(name) {
            Ok(Some((h, _))) => self.inner.location(&h.name),
            _ => {
                let target = form_name(name, self.target_form(name));
                self.inner.location(target.as_deref().unwrap_or(name))
            }
        }
    }

    /// Looks for every other form (one `sizes_of`; the inner store finds its
    /// own name taken).
    fn store_new(&self, name: &str, source: &Path) -> Result<Stored, ArchiveError> {
        let recipients = match &self.sealing {
            Sealing::Broken(why) => return Err(Self::broken(why)),
            Sealing::To(r) => Some(r),
            Sealing::Off => None,
        };
        let target = self.target_form(name);
        let Some(target_name) = form_name(name, target) else {
            // Not a WAL file name: the inner store and the protocol refuse it.
            return self.inner.store_new(name, source);
        };
        let others: Vec<String> = Form::ALL
            .into_iter()
            .filter(|f| *f != target)
            .filter_map(|f| form_name(name, f))
            .collect();
        if self.inner.sizes_of(&others)?.iter().any(Option::is_some) {
            return Ok(Stored::Exists);
        }
        if target == Form::PLAIN {
            return self.inner.store_new(name, source);
        }
        let data = std::fs::read(source).map_err(|e| ArchiveError::io("read file", source, &e))?;
        let (packed, original) = if target.compressed {
            let level = self.level.unwrap_or(1);
            let packed = compressed::compress(&data, level).map_err(|e| {
                ArchiveError::new(
                    ErrorKind::Io,
                    format!("could not compress \"{}\": {e}", source.display()),
                )
            })?;
            let original = compressed::decode_header(&packed).ok_or_else(|| {
                ArchiveError::new(ErrorKind::Internal, "compressed data without its header")
            })?;
            (packed, original)
        } else {
            let original = Original {
                sha256: sha256(&data),
                len: data.len() as u64,
            };
            (data, original)
        };
        let stored = match recipients {
            None => self.inner.store_new_bytes(&target_name, &packed)?,
            Some(r) => {
                let sealed = r.seal(&packed).map_err(|e| {
                    ArchiveError::new(
                        ErrorKind::Internal,
                        format!("could not encrypt \"{}\": {e}", source.display()),
                    )
                })?;
                drop(packed);
                self.inner
                    .store_new_sealed(&target_name, &sealed, &original)?
            }
        };
        Ok(match stored {
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

    fn store_new_sealed(
        &self,
        name: &str,
        data: &[u8],
        original: &Original,
    ) -> Result<Stored, ArchiveError> {
        self.inner.store_new_sealed(name, data, original)
    }

    fn recorded_original(&self, name: &str) -> Result<Option<Original>, ArchiveError> {
        self.inner.recorded_original(name)
    }

    /// The original's SHA-256, when the stored bytes match their record
    /// (asked only of duplicates): for a compressed form, when they also
    /// decompress to what their header says; for an encrypted one, as its
    /// record keeps it. `Malformed` otherwise, so that the protocol settles
    /// it by the bytes (which, encrypted, it cannot: see `open`).
    fn recorded(&self, name: &str) -> Result<Recorded, ArchiveError> {
        let h = match self.holder(name)?.map(|(h, _)| h) {
            None => return Ok(Recorded::Missing),
            Some(h) if h.form == Form::PLAIN => return self.inner.recorded(name),
            Some(h) => h,
        };
        let recorded = self.inner.recorded(&h.name)?;
        let Recorded::Digest(d) = recorded else {
            return Ok(recorded);
        };
        if h.form.encrypted {
            return Ok(match self.sealed_original(&h.name, &d)? {
                Some(o) => Recorded::Digest(o.sha256),
                None => Recorded::Malformed,
            });
        }
        Ok(match self.decoded(&h)? {
            None => Recorded::Missing,
            Some((stored, Some(original))) if sha256(&stored) == d => {
                Recorded::Digest(sha256(&original))
            }
            Some(_) => Recorded::Malformed,
        })
    }

    /// For a compressed form, the record is of its stored bytes: rewritten
    /// only once they are proven to decompress to `sha256`. An encrypted
    /// form's record is never rewritten here: it keeps the original's
    /// digest, which only the archiving of the file itself can vouch for.
    fn write_record(&self, name: &str, sha256_of_wal: &Sha256Digest) -> Result<(), ArchiveError> {
        let h = match self.holder(name)?.map(|(h, _)| h) {
            Some(h) if h.form != Form::PLAIN => h,
            _ => return self.inner.write_record(name, sha256_of_wal),
        };
        if h.form.encrypted {
            return Err(self.unreadable(&h.name));
        }
        let proven = match self.decoded(&h)? {
            Some((stored, Some(original))) if sha256(&original) == *sha256_of_wal => stored,
            _ => {
                return Err(ArchiveError::new(
                    ErrorKind::Conflict,
                    format!(
                        "archive file \"{}\" does not decompress to the WAL file with SHA-256 {}",
                        self.inner.location(&h.name),
                        to_hex(sha256_of_wal)
                    ),
                ))
            }
        };
        self.inner.write_record(&h.name, &sha256(&proven))
    }

    fn make_durable(&self, name: &str) -> Result<(), ArchiveError> {
        match self.holder(name)?.map(|(h, _)| h) {
            Some(h) => self.inner.make_durable(&h.name),
            None => self.inner.make_durable(name),
        }
    }

    /// The original's length: from a compressed form's header (the stored
    /// length if the header is unreadable, which then matches no WAL file
    /// and sends the protocol to the bytes), from an encrypted form's
    /// record (likewise).
    fn size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        let Some((h, stored_len)) = self.holder(name)? else {
            return Ok(None);
        };
        if h.form == Form::PLAIN {
            return Ok(Some(stored_len));
        }
        if h.form.encrypted {
            return Ok(Some(
                self.inner
                    .recorded_original(&h.name)?
                    .map_or(stored_len, |o| o.len),
            ));
        }
        let mut head = [0u8; compressed::HEADER_LEN];
        let Some(mut r) = self.inner.open(&h.name)? else {
            return Ok(None);
        };
        let n = crate::support::fsutil::read_full(&mut r, &mut head)
            .map_err(|e| crate::archiving::archive_protocol::read_error(self.inner, &h.name, &e))?;
        Ok(Some(
            compressed::decode_header(&head[..n]).map_or(stored_len, |Original { len, .. }| len),
        ))
    }

    /// The original bytes, or the stored bytes themselves when they do not
    /// decrypt or decompress (then they match no WAL file, and the protocol
    /// refuses them as different). An encrypted form without identities is
    /// refused.
    fn open(&self, name: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ArchiveError> {
        match self.holder(name)?.map(|(h, _)| h) {
            None => Ok(None),
            Some(h) if h.form == Form::PLAIN => self.inner.open(name),
            Some(h) => Ok(self.decoded(&h)?.map(|(stored, original)| {
                Box::new(Cursor::new(original.unwrap_or(stored))) as Box<dyn Read + Send>
            })),
        }
    }

    fn stored_size(&self, name: &str) -> Result<Option<u64>, ArchiveError> {
        Ok(self.holder(name)?.map(|(_, n)| n))
    }

    fn sizes_of(&self, names: &[String]) -> Result<Vec<Option<u64>>, ArchiveError> {
        self.inner.sizes_of(names)
    }

    fn new_form(&self, name: &str) -> Form {
        self.target_form(name)
    }

    fn vouched(&self, name: &str) -> Result<Option<(u64, Sha256Digest)>, ArchiveError> {
        let h = match self.holder(name)?.map(|(h, _)| h) {
            Some(h) if h.form.encrypted => h,
            _ => return Ok(None),
        };
        let Recorded::Digest(d) = self.inner.recorded(&h.name)? else {
            return Ok(None);
        };
        Ok(self
            .sealed_original(&h.name, &d)?
            .map(|o| (o.len, o.sha256)))
    }

    // A base backup's objects are compressed and encrypted by the backup
    // writer itself.
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

    /// WAL files by their own names, whichever form holds them (the oldest
    /// time if several do); other names as they are.
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

    /// Every form, the plain one last.
    fn remove(&self, name: &str) -> Result<(), ArchiveError> {
        for f in Form::ALL.into_iter().rev() {
            match form_name(name, f) {
                Some(n) => self.inner.remove(&n)?,
                None if f == Form::PLAIN => self.inner.remove(name)?,
                None => {}
            }
        }
        Ok(())
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
    pub(super) fn wal_bytes(seed: u8) -> Vec<u8> {
        let mut v = vec![0u8; 1 << 20];
        for (i, b) in v.iter_mut().take(50_000).enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
        v
    }

    /// Runs `check` against a directory and an in-memory destination:
    /// (destination, directory holding the WAL files).
    pub(super) fn each_destination(check: impl Fn(&dyn Destination, &Path)) {
        let d = tempfile::tempdir().unwrap();
        let arch = d.path().join("archive");
        std::fs::create_dir(&arch).unwrap();
        check(&LocalDirectory::new(&arch, 0o600), d.path());
        let d = tempfile::tempdir().unwrap();
        check(&MemoryDestination::default(), d.path());
    }

    pub(super) fn wal(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
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

#[cfg(test)]
mod sealed_tests {
    use super::tests::{each_destination, wal, wal_bytes};
    use super::*;
    use crate::archiving::archive_protocol::{archive_file, ArchiveOutcome};
    use crate::destination::sealed::tests::keys;

    const SEG: &str = "000000010000000000000007";
    const HISTORY: &str = "00000002.history";

    fn read_all(mut r: Box<dyn Read + Send + '_>) -> Vec<u8> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn every_form_round_trips_and_only_the_target_form_is_stored() {
        let (r, i) = keys();
        let (r, i) = (Arc::new(r), Arc::new(i));
        each_destination(|inner, dir| {
            for (n, (level, seal)) in [
                (None, false),
                (Some(1), false),
                (None, true),
                (Some(1), true),
            ]
            .into_iter()
            .enumerate()
            {
                let seg = format!("00000001000000000000001{n}");
                let data = wal_bytes(n as u8);
                let sealing = if seal {
                    Sealing::To(r.clone())
                } else {
                    Sealing::Off
                };
                let view = Compressing::new(inner, level).sealing(sealing);
                let form = view.target_form(&seg);
                assert_eq!((form.compressed, form.encrypted), (level.is_some(), seal));
                let out = archive_file(&view, &seg, &wal(dir, &seg, &data)).unwrap();
                let ArchiveOutcome::Archived {
                    bytes, sha256: d, ..
                } = out
                else {
                    panic!("{out:?}")
                };
                assert_eq!((bytes, d), (data.len() as u64, sha256(&data)));
                let stored = form_name(&seg, form).unwrap();
                for f in Form::ALL {
                    let other = form_name(&seg, f).unwrap();
                    assert_eq!(
                        inner.size(&other).unwrap().is_some(),
                        other == stored,
                        "{other}"
                    );
                }
                if seal {
                    let raw = read_all(inner.open(&stored).unwrap().unwrap());
                    assert!(raw.starts_with(b"age-encryption.org/v1\n"));
                    assert_eq!(
                        inner.recorded(&stored).unwrap(),
                        Recorded::Digest(sha256(&raw)),
                        "the record checks the stored bytes"
                    );
                    assert_eq!(
                        inner.recorded_original(&stored).unwrap(),
                        Some(Original {
                            sha256: sha256(&data),
                            len: data.len() as u64
                        })
                    );
                }
                // Any reader with the identity gets the WAL file back.
                let reader = Compressing::new(inner, None).opening(Some(i.clone()));
                assert!(read_all(reader.open(&seg).unwrap().unwrap()) == data);
                assert_eq!(reader.size(&seg).unwrap(), Some(data.len() as u64));
            }
            // History files: encrypted, never compressed.
            let view = Compressing::new(inner, Some(1)).sealing(Sealing::To(r.clone()));
            let text = b"1\t0/3000000\tno recovery target\n";
            archive_file(&view, HISTORY, &wal(dir, HISTORY, text)).unwrap();
            assert!(inner.size("00000002.history.age").unwrap().is_some());
            assert!(inner.size(HISTORY).unwrap().is_none());
            let reader = Compressing::new(inner, None).opening(Some(i.clone()));
            assert_eq!(read_all(reader.open(HISTORY).unwrap().unwrap()), text);
            assert_eq!(reader.list().unwrap().len(), 5);
        });
    }

    #[test]
    fn a_file_offered_again_is_judged_by_the_record_without_the_key() {
        let (r, _) = keys();
        let r = Arc::new(r);
        each_destination(|inner, dir| {
            let data = wal_bytes(7);
            let src = wal(dir, SEG, &data);
            let sealed = || Compressing::new(inner, Some(1)).sealing(Sealing::To(r.clone()));
            archive_file(&sealed(), SEG, &src).unwrap();
            let z = format!("{SEG}.zst.age");
            let before = read_all(inner.open(&z).unwrap().unwrap());
            // Again, in every setting: the same file is archived already.
            for view in [
                sealed(),
                Compressing::new(inner, None),
                Compressing::new(inner, Some(1)),
                Compressing::new(inner, None).sealing(Sealing::To(r.clone())),
            ] {
                let out = archive_file(&view, SEG, &src).unwrap();
                assert!(
                    matches!(out, ArchiveOutcome::AlreadyArchived { .. }),
                    "{out:?}"
                );
            }
            // Other bytes under the name: refused, whichever form is asked.
            let other = wal(dir, "other", &wal_bytes(8));
            for view in [sealed(), Compressing::new(inner, None)] {
                let e = archive_file(&view, SEG, &other).unwrap_err();
                assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
                assert!(
                    e.message.contains("already exists with different contents"),
                    "{}",
                    e.message
                );
            }
            let forms: Vec<_> = Form::ALL
                .iter()
                .filter(|f| inner.size(&form_name(SEG, **f).unwrap()).unwrap().is_some())
                .collect();
            assert_eq!(forms, vec![&Form::ZST_AGE], "one form only");
            assert!(read_all(inner.open(&z).unwrap().unwrap()) == before);

            // A record that no longer vouches for the stored bytes cannot be
            // settled without the key: refused, nothing changed.
            inner.write_record(&z, &[9u8; 32]).unwrap();
            let e = archive_file(&sealed(), SEG, &src).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
            assert!(e.message.contains("is encrypted"), "{}", e.message);
            assert!(
                e.hint.as_deref().unwrap().contains("--identity-file"),
                "{e:?}"
            );
            assert!(read_all(inner.open(&z).unwrap().unwrap()) == before);
            assert_eq!(inner.recorded(&z).unwrap(), Recorded::Digest([9u8; 32]));
        });
    }

    #[test]
    fn unusable_recipients_store_nothing_in_any_form() {
        each_destination(|inner, dir| {
            let view = Compressing::new(inner, Some(1)).sealing(Sealing::Broken(
                "Could not read \"/k\": permission denied.".into(),
            ));
            for name in [SEG, HISTORY] {
                let e = archive_file(&view, name, &wal(dir, name, b"x")).unwrap_err();
                assert_eq!(e.kind, ErrorKind::Configuration, "{e:?}");
                assert!(e.message.contains("walarch.encryption_recipients"), "{e:?}");
                assert!(e.detail.as_deref().unwrap().contains("permission denied"));
            }
            assert!(inner.list().unwrap().is_empty());
            assert!(inner.entries().unwrap().is_empty());
        });
    }
}
