//! Streamed objects (a base backup's tars) in the bucket.
//!
//! An object smaller than a part is one create-only PUT. A larger one is a
//! multipart upload: parts are uploaded while the next is filled, at most
//! `MAX_PARTS_IN_FLIGHT` at a time and fewer once parts are large (memory
//! stays bounded at about `IN_FLIGHT_BYTES` plus the part filling). S3
//! allows 10,000 parts: they start at `part_size` and double every
//! `PARTS_PER_SIZE` parts (at most 5 GiB), which reaches S3's 5 TiB object
//! limit; every part but the last is at least 5 MiB. A large part must
//! fit in the request timeout. Each part's SHA-256 is sent and verified by
//! the store (the client's checksum algorithm), and the upload
//! is completed create-only (`If-None-Match: *`). Nothing is visible under
//! the name before the completion; an aborted or failed upload is
//! discarded with AbortMultipartUpload (a crash leaves it for the bucket's
//! lifecycle rule: it is never visible as an object).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMultipartOptions, PutPayload};

use walarch_core::destination::{Destination, ObjectEntry, ObjectWriter, Stored};
use walarch_core::support::error::{ArchiveError, ErrorKind};
use walarch_core::wal::checksum::{Hasher, Sha256Digest};

use crate::bucket::{exists, S3Destination};
use crate::errors::{self as s3_error, classify, Failure};
use crate::runtime;

/// Parts uploading at once per object.
pub const MAX_PARTS_IN_FLIGHT: usize = 4;
/// Bytes of parts in flight past which fewer are sent at once (one at least).
pub const IN_FLIGHT_BYTES: usize = 1 << 30;
/// S3's limits: parts per upload, and the largest part.
pub const MAX_PARTS: usize = 10_000;
pub const MAX_PART_SIZE: usize = 5 << 30;
/// Parts of one size before the size doubles.
pub const PARTS_PER_SIZE: usize = 1000;

/// The size of part `idx` (from 0) when they start at `base`. Past the
/// first `PARTS_PER_SIZE` parts they grow from 16 MiB at least, so that a
/// 5 MiB `base` reaches 5 TiB too.
pub fn part_size_at(base: usize, idx: usize) -> usize {
    let doublings = (idx / PARTS_PER_SIZE).min(20) as u32;
    let from = if doublings == 0 {
        base
    } else {
        base.max(16 << 20)
    };
    from.saturating_mul(1 << doublings).min(MAX_PART_SIZE)
}

/// Parts in flight at once when they are `part` bytes.
fn parts_in_flight(part: usize) -> usize {
    (IN_FLIGHT_BYTES / part.max(1)).clamp(1, MAX_PARTS_IN_FLIGHT)
}

fn taken(dest: &dyn Destination, name: &str) -> ArchiveError {
    ArchiveError::new(
        ErrorKind::Conflict,
        format!(
            "could not store \"{}\": it already exists",
            dest.location(name)
        ),
    )
}

/// What a store must offer for `PartsWriter`: S3 (multipart upload) and
/// Azure (blocks and a block list), each completing create-only.
pub(crate) trait PartStore: Destination + Clone + Send + 'static {
    /// The size of part `idx` (from 0).
    fn part_size_at(&self, idx: usize) -> usize;
    /// Parts an object may have, and what the limit means for messages.
    fn max_parts(&self) -> (usize, &'static str);
    /// Starts an upload (of an object whose digest is `digest`, when known
    /// in advance); `None` when the name is already taken.
    fn begin_upload(
        &self,
        name: &str,
        path: &ObjPath,
        digest: Option<&Sha256Digest>,
    ) -> Result<Option<String>, ArchiveError>;
    /// The store's multipart side, and the limit of each request.
    fn parts_store(&self) -> Arc<dyn MultipartStore>;
    fn request_timeout(&self) -> std::time::Duration;
    /// The error of storing `name`: a failed request, or its task.
    fn store_failed(&self, name: &str, f: Failure) -> ArchiveError;
    fn run_failed(&self, name: &str, e: runtime::RunError) -> ArchiveError;

    /// Sends part `idx` in the background.
    fn send_part(
        &self,
        name: &str,
        path: &ObjPath,
        id: &str,
        idx: usize,
        payload: PutPayload,
    ) -> Result<runtime::Pending<Result<PartId, Failure>>, ArchiveError> {
        let parts = self.parts_store();
        let (path, id) = (path.clone(), id.to_string());
        runtime::spawn(self.request_timeout(), async move {
            parts
                .put_part(&path, &id, idx, payload)
                .await
                .map_err(|e| classify(&e))
        })
        .map_err(|e| self.run_failed(name, e))
    }

    fn wait_part(
        &self,
        name: &str,
        p: runtime::Pending<Result<PartId, Failure>>,
    ) -> Result<PartId, ArchiveError> {
        match p.wait() {
            Ok(Ok(part)) => Ok(part),
            Ok(Err(f)) => Err(self.store_failed(name, f)),
            Err(e) => Err(self.run_failed(name, e)),
        }
    }

    /// One create-only PUT, for an object smaller than a part.
    fn put_small(&self, name: &str, data: Vec<u8>) -> Result<Stored, ArchiveError>;
    /// Completes the upload create-only, with `digest` recorded on the
    /// object when given.
    fn complete(
        &self,
        name: &str,
        path: &ObjPath,
        id: &str,
        parts: Vec<PartId>,
        total: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Stored, ArchiveError>;
    /// Discards an upload, best effort.
    fn abort_upload(&self, path: &ObjPath, id: &str) {
        let parts = self.parts_store();
        let (path, id) = (path.clone(), id.to_string());
        let _ = runtime::run(self.request_timeout(), async move {
            parts.abort_multipart(&path, &id).await
        });
    }
}

pub(crate) type S3ObjectWriter = PartsWriter<S3Destination>;

pub(crate) struct PartsWriter<D: PartStore> {
    dest: D,
    name: String,
    path: ObjPath,
    /// The part being filled.
    buf: Vec<u8>,
    upload: Option<String>,
    in_flight: VecDeque<runtime::Pending<Result<PartId, Failure>>>,
    /// Parts acknowledged, in order.
    done: Vec<PartId>,
    total: u64,
    /// The digest to record on the object (a WAL file's, known before it
    /// is sent), and the hash of what was written, compared with it.
    digest: Option<(Sha256Digest, Hasher)>,
}

impl<D: PartStore> PartsWriter<D> {
    pub(crate) fn new(dest: &D, path: ObjPath, name: &str) -> PartsWriter<D> {
        PartsWriter {
            dest: dest.clone(),
            name: name.to_string(),
            path,
            buf: Vec::new(),
            upload: None,
            in_flight: VecDeque::new(),
            done: Vec::new(),
            total: 0,
            digest: None,
        }
    }

    /// A writer for a file whose digest is `digest`: recorded on the
    /// object, and checked against what is written.
    pub(crate) fn with_digest(
        dest: &D,
        path: ObjPath,
        name: &str,
        digest: Sha256Digest,
    ) -> PartsWriter<D> {
        let mut w = Self::new(dest, path, name);
        w.digest = Some((digest, Hasher::new()));
        w
    }

    /// Parts sent so far.
    fn parts(&self) -> usize {
        self.done.len() + self.in_flight.len()
    }

    /// The size of the part being filled.
    fn part_size(&self) -> usize {
        self.dest.part_size_at(self.parts())
    }

    /// Creates the upload (first part only).
    fn upload_id(&mut self) -> Result<String, ArchiveError> {
        if let Some(id) = &self.upload {
            return Ok(id.clone());
        }
        let digest = self.digest.as_ref().map(|(d, _)| *d);
        let id = self
            .dest
            .begin_upload(&self.name, &self.path, digest.as_ref())?
            .ok_or_else(|| taken(&self.dest, &self.name))?;
        self.upload = Some(id.clone());
        Ok(id)
    }

    /// Waits for the oldest part in flight.
    fn wait_oldest(&mut self) -> Result<(), ArchiveError> {
        if let Some(p) = self.in_flight.pop_front() {
            let part = self.dest.wait_part(&self.name, p)?;
            self.done.push(part);
        }
        Ok(())
    }

    /// Sends the filled part (waiting first when enough are in flight).
    fn send_part(&mut self) -> Result<(), ArchiveError> {
        let idx = self.parts();
        let (max, limit) = self.dest.max_parts();
        if idx >= max {
            return Err(ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "could not store \"{}\": it would take more than {max} parts",
                    self.dest.location(&self.name)
                ),
            )
            .with_detail(limit));
        }
        let id = self.upload_id()?;
        while self.in_flight.len() >= parts_in_flight(self.buf.len()) {
            self.wait_oldest()?;
        }
        let data = std::mem::take(&mut self.buf);
        let payload = PutPayload::from(Bytes::from(data));
        let pending = self
            .dest
            .send_part(&self.name, &self.path, &id, idx, payload)?;
        self.in_flight.push_back(pending);
        Ok(())
    }

    /// Stores what was written; `digest` is recorded on the object.
    fn finish_inner(&mut self, digest: Option<Sha256Digest>) -> Result<Stored, ArchiveError> {
        if self.upload.is_none() {
            // Smaller than a part: one create-only PUT.
            let data = std::mem::take(&mut self.buf);
            return self.dest.put_small(&self.name, data);
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        let id = self.upload.clone().unwrap_or_default();
        let parts = std::mem::take(&mut self.done);
        let r = self
            .dest
            .complete(&self.name, &self.path, &id, parts, self.total, digest)?;
        if let Stored::Created { .. } = r {
            self.upload = None;
        }
        Ok(r)
    }

    fn abort_upload(&mut self) {
        // Dropping a pending part aborts its task.
        self.in_flight.clear();
        if let Some(id) = self.upload.take() {
            self.dest.abort_upload(&self.path, &id);
        }
    }

    /// Finishes a `with_digest` writer: what was written must have the
    /// digest (the file did not change while it was read).
    pub(crate) fn finish_hashed(
        mut self,
        source: &std::path::Path,
    ) -> Result<Stored, ArchiveError> {
        let (digest, hasher) = self.digest.take().expect("a with_digest writer");
        if hasher.finish() != digest {
            self.abort_upload();
            return Err(ArchiveError::new(
                ErrorKind::Io,
                format!(
                    "could not store \"{}\": file \"{}\" changed while being archived",
                    self.dest.location(&self.name),
                    source.display()
                ),
            ));
        }
        let r = self.finish_inner(Some(digest));
        if r.is_err() {
            self.abort_upload();
        }
        r
    }
}

impl<D: PartStore> ObjectWriter for PartsWriter<D> {
    fn write(&mut self, mut data: &[u8]) -> Result<(), ArchiveError> {
        if let Some((_, h)) = &mut self.digest {
            h.update(data);
        }
        while !data.is_empty() {
            let part = self.part_size();
            // A full part is sent only once more bytes come: the last part
            // is then never empty, and an object of exactly one part is a
            // plain PUT.
            if self.buf.len() == part {
                self.send_part()?;
                continue; // the next part may be larger
            }
            if self.buf.capacity() < part {
                self.buf.reserve_exact(part - self.buf.len());
            }
            let k = (part - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..k]);
            self.total += k as u64;
            data = &data[k..];
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, ArchiveError> {
        // The digest is recorded by the caller (backup.json), not here.
        let r = match self.finish_inner(None) {
            Ok(Stored::Created { .. }) => Ok(self.total),
            Ok(Stored::Exists) => Err(taken(&self.dest, &self.name)),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.abort_upload();
        }
        r
    }

    fn abort(mut self: Box<Self>) {
        self.abort_upload();
    }
}

impl PartStore for S3Destination {
    fn part_size_at(&self, idx: usize) -> usize {
        part_size_at(self.settings().part_size, idx)
    }

    fn max_parts(&self) -> (usize, &'static str) {
        (MAX_PARTS, "An object in S3 is at most 5 TiB.")
    }

    fn begin_upload(
        &self,
        name: &str,
        path: &ObjPath,
        _digest: Option<&Sha256Digest>,
    ) -> Result<Option<String>, ArchiveError> {
        // Base backups only: WAL files go through store_multipart.
        let store = Arc::clone(self.store());
        let path = path.clone();
        let head_first = self.settings().head_before_put;
        let mut opts = PutMultipartOptions::default();
        self.add_storage_class(name, &mut opts.attributes);
        self.call("store", Some(name), async move {
            // Some stores ignore If-None-Match: look first, so that a taken
            // name is refused before any part is sent.
            if head_first && exists(&store, &path).await? {
                return Ok(None);
            }
            store
                .create_multipart_opts(&path, opts)
                .await
                .map(Some)
                .map_err(|e| classify(&e))
        })
    }

    fn parts_store(&self) -> Arc<dyn MultipartStore> {
        Arc::clone(self.store()) as Arc<dyn MultipartStore>
    }

    fn request_timeout(&self) -> std::time::Duration {
        self.settings().timeout
    }

    fn store_failed(&self, name: &str, f: Failure) -> ArchiveError {
        self.fail("store", Some(name), f)
    }

    fn run_failed(&self, name: &str, e: runtime::RunError) -> ArchiveError {
        let loc = self.location(name);
        s3_error::run_error(e, &self.cx("store", &loc))
    }

    fn put_small(&self, name: &str, data: Vec<u8>) -> Result<Stored, ArchiveError> {
        self.put_new(name, data)
    }

    fn complete(
        &self,
        name: &str,
        path: &ObjPath,
        id: &str,
        parts: Vec<PartId>,
        total: u64,
        digest: Option<Sha256Digest>,
    ) -> Result<Stored, ArchiveError> {
        self.complete_create_only(name, path, id, parts, total, digest.unwrap_or([0; 32]))
    }
}

impl S3Destination {
    pub(crate) fn objects_under_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<ObjectEntry>, ArchiveError> {
        let fut = list_objects_under(self.store().clone(), &self.settings().prefix, prefix);
        self.call_within(self.settings().timeout * 4, "list", None, fut)
    }

    pub(crate) fn delete_object(&self, name: &str) -> Result<(), ArchiveError> {
        let store = Arc::clone(self.store());
        let path = self.key(name);
        self.call("remove", Some(name), async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(classify(&e)),
            }
        })
    }
}

/// Every object under `root/prefix` (`root` the destination's own prefix),
/// named without `root/`. Listing is by whole path segments: list the
/// folder the prefix is in, keep the names that start with it.
pub(crate) fn list_objects_under(
    store: Arc<dyn ObjectStore>,
    root: &str,
    prefix: &str,
) -> impl std::future::Future<Output = Result<Vec<ObjectEntry>, Failure>> + Send + 'static {
    let folder = prefix.rsplit_once('/').map_or("", |(f, _)| f).to_string();
    let under = match (root.is_empty(), folder.is_empty()) {
        (true, true) => None,
        (true, false) => Some(ObjPath::from(folder)),
        (false, true) => Some(ObjPath::from(root)),
        (false, false) => Some(ObjPath::from(format!("{root}/{folder}"))),
    };
    let strip = if root.is_empty() {
        String::new()
    } else {
        format!("{root}/")
    };
    let prefix = prefix.to_string();
    async move {
        let mut out = Vec::new();
        let mut s = store.list(under.as_ref());
        while let Some(item) = s.next().await {
            let o = item.map_err(|e| classify(&e))?;
            let full = o.location.to_string();
            let Some(name) = full.strip_prefix(&strip) else {
                continue;
            };
            if name.starts_with(&prefix) {
                out.push(ObjectEntry {
                    name: name.to_string(),
                    size: o.size,
                    stored_at: Some(o.last_modified.into()),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::S3Settings;

    #[test]
    fn small_object_and_an_unreachable_store_fail_cleanly() {
        // Nothing listens there: the PUT fails as unreachable, nothing hangs.
        let mut s = S3Settings::new("b");
        s.endpoint = Some("http://127.0.0.1:9".into());
        s.access_key_id = Some("k".into());
        s.secret_access_key = Some("secret-value".into());
        s.timeout = std::time::Duration::from_secs(3);
        s.max_retries = 0;
        let dest = S3Destination::new(s).unwrap();
        let mut w = dest.create_object("backups/L/backup.started").unwrap();
        w.write(b"x").unwrap();
        let e = w.finish().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable, "{e:?}");
        assert!(!format!("{e}").contains("secret-value"));
    }

    #[test]
    fn part_sizes_grow_to_reach_5_tib_within_10000_parts() {
        for base in [5 << 20, 16 << 20, 64 << 20] {
            let sizes: Vec<usize> = (0..MAX_PARTS).map(|i| part_size_at(base, i)).collect();
            assert!(sizes
                .iter()
                .all(|&p| (5 << 20..=MAX_PART_SIZE).contains(&p)));
            assert!(sizes.windows(2).all(|w| w[0] <= w[1]));
            let total: u64 = sizes.iter().map(|&p| p as u64).sum();
            assert!(total >= 5 << 40, "base {base}: {total}");
        }
        assert_eq!(part_size_at(16 << 20, 999), 16 << 20);
        assert_eq!(part_size_at(16 << 20, 1000), 32 << 20);
        assert_eq!(part_size_at(16 << 20, 9999), MAX_PART_SIZE);
        // Memory in flight stays bounded as parts grow.
        assert_eq!(parts_in_flight(16 << 20), MAX_PARTS_IN_FLIGHT);
        assert_eq!(parts_in_flight(512 << 20), 2);
        assert_eq!(parts_in_flight(MAX_PART_SIZE), 1);
    }

    #[test]
    fn parts_are_cut_at_the_part_size_and_the_last_is_never_empty() {
        let mut s = S3Settings::new("b");
        s.endpoint = Some("http://127.0.0.1:9".into());
        s.part_size = 5 << 20;
        let dest = S3Destination::new(s).unwrap();
        let mut w = S3ObjectWriter::new(&dest, dest.key("x"), "x");
        // Exactly one part's worth, in pieces: held back until more comes.
        for c in vec![0u8; 5 << 20].chunks(32 << 10) {
            ObjectWriter::write(&mut w, c).unwrap();
        }
        assert_eq!(w.total, 5 << 20);
        assert!(w.upload.is_none() && w.in_flight.is_empty());
        assert_eq!(w.buf.len(), 5 << 20);
    }
}
