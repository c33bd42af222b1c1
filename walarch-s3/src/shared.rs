//! The requests every object store (S3, Azure, GCS) makes alike for the
//! archive's layout: `PREFIX/NAME` with its SHA-256 in the metadata, a
//! `NAME.sha256` sidecar once a record was replaced. Each destination
//! runs these on its runtime and words the failures; how a failed request
//! for an object is classified is the destination's (`ObjectError`: S3 looks
//! closer at a 403).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    list::{PaginatedListOptions, PaginatedListStore},
    Attribute, Attributes, GetOptions, GetResult, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};

use walarch_core::destination::compressed::Original;
use walarch_core::destination::Recorded;

use crate::bucket::{original_from, recorded_from};
use crate::errors::{classify, Failure};

/// Classifies the failure of a request for the object at a path.
pub(crate) type ObjectError =
    Arc<dyn Fn(ObjPath, object_store::Error) -> BoxFuture<'static, Failure> + Send + Sync>;

/// `ObjectError` that only classifies.
pub(crate) fn plain_errors() -> ObjectError {
    Arc::new(|_, e| Box::pin(async move { classify(&e) }))
}

/// The record of `path`: its metadata, or its sidecar `side` when that
/// records the object as it is now (`etag_key`: the sidecar's metadata key
/// of the object's ETag).
pub(crate) async fn recorded(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    side: ObjPath,
    name: String,
    etag_key: &'static str,
    failed: ObjectError,
) -> Result<Recorded, Failure> {
    Ok(
        match record_sources(store, path, side, etag_key, failed).await? {
            None => Recorded::Missing,
            Some((head, sidecar)) => recorded_from(&head, sidecar, &name),
        },
    )
}

/// The original an encrypted form's record keeps (`recorded`'s sources);
/// `None` when the object is absent or its record has none.
pub(crate) async fn recorded_original(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    side: ObjPath,
    name: String,
    etag_key: &'static str,
    failed: ObjectError,
) -> Result<Option<Original>, Failure> {
    Ok(record_sources(store, path, side, etag_key, failed)
        .await?
        .and_then(|(head, sidecar)| original_from(&head, sidecar, &name)))
}

/// The sidecar's object ETag and body, when there is one.
type Sidecar = Option<(Option<String>, Bytes)>;

/// The HEAD of `path` (with metadata) and its sidecar `side`, read at
/// once; `None` when the object is absent.
async fn record_sources(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    side: ObjPath,
    etag_key: &'static str,
    failed: ObjectError,
) -> Result<Option<(GetResult, Sidecar)>, Failure> {
    let head = store.get_opts(&path, GetOptions::new().with_head(true));
    let sidecar = async {
        match store.get(&side).await {
            Ok(r) => {
                let etag = r
                    .attributes
                    .get(&Attribute::Metadata(etag_key.into()))
                    .map(|v| v.to_string());
                Ok(Some((etag, r.bytes().await?)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let (head, sidecar) = futures_util::join!(head, sidecar);
    let head = match head {
        Ok(h) => h,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(failed(path, e).await),
    };
    let sidecar = match sidecar {
        Ok(s) => s,
        Err(e) => return Err(failed(side, e).await),
    };
    Ok(Some((head, sidecar)))
}

/// Replaces the record of `path` by the sidecar `side` holding `text`, with
/// the object's current ETag.
pub(crate) async fn write_record(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    side: ObjPath,
    text: String,
    etag_key: &'static str,
    failed: ObjectError,
) -> Result<(), Failure> {
    let head = match store.head(&path).await {
        Ok(h) => h,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Failure::Other("no such object".into()))
        }
        Err(e) => return Err(failed(path, e).await),
    };
    let mut attributes = Attributes::new();
    if let Some(etag) = head.e_tag {
        attributes.insert(Attribute::Metadata(etag_key.into()), etag.into());
    }
    let opts = PutOptions {
        mode: PutMode::Overwrite,
        attributes,
        ..Default::default()
    };
    store
        .put_opts(&side, PutPayload::from(text), opts)
        .await
        .map(|_| ())
        .map_err(|e| classify(&e))
}

/// The size of `path`; `None` when absent.
pub(crate) async fn size(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    failed: ObjectError,
) -> Result<Option<u64>, Failure> {
    match store.head(&path).await {
        Ok(m) => Ok(Some(m.size)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(failed(path, e).await),
    }
}

/// Whether nothing is under `prefix` (the first page of a listing only).
pub(crate) async fn is_empty(
    store: Arc<dyn ObjectStore>,
    prefix: Option<ObjPath>,
) -> Result<bool, Failure> {
    match store.list(prefix.as_ref()).next().await {
        None => Ok(true),
        Some(Ok(_)) => Ok(false),
        Some(Err(e)) => Err(classify(&e)),
    }
}

/// Removes `path`, then its sidecar `side` when given (the record last).
/// Removing what is absent succeeds (S3 answers 204, Azure 404).
pub(crate) async fn remove(
    store: Arc<dyn ObjectStore>,
    path: ObjPath,
    side: Option<ObjPath>,
) -> Result<(), Failure> {
    for p in std::iter::once(path).chain(side) {
        match store.delete(&p).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(classify(&e)),
        }
    }
    Ok(())
}

/// The sizes of `keys` (`None` where absent), all under `dir` (the
/// archive's prefix, empty for the bucket's root). The forms of one WAL
/// file share their beginning: when the keys share at least
/// `MIN_LISTED_PREFIX` characters of their name, one listing of the keys
/// starting with that (`PaginatedListStore`: a raw prefix, not a
/// directory) answers for all of them; else, or when the listing is
/// refused (credentials allowed to read but not to list), one HEAD each,
/// as `size`.
pub(crate) async fn sizes_of(
    lister: Arc<dyn PaginatedListStore>,
    store: Arc<dyn ObjectStore>,
    dir: String,
    keys: Vec<ObjPath>,
    failed: ObjectError,
) -> Result<Vec<Option<u64>>, Failure> {
    if let Some(prefix) = listed_prefix(&dir, &keys) {
        match list_sizes(lister.as_ref(), &prefix, &keys).await {
            Ok(sizes) => return Ok(sizes),
            Err(Failure::Credentials { .. }) => {}
            Err(f) => return Err(f),
        }
    }
    let mut sizes = Vec::with_capacity(keys.len());
    for k in keys {
        sizes.push(size(Arc::clone(&store), k, Arc::clone(&failed)).await?);
    }
    Ok(sizes)
}

/// Shortest name prefix worth a listing: a WAL file name (24), a history
/// file's (16) share at least this; two unrelated names rarely do.
const MIN_LISTED_PREFIX: usize = 8;

/// The common beginning of `keys`, when there are two or more and it goes
/// at least `MIN_LISTED_PREFIX` characters into the name under `dir`.
fn listed_prefix(dir: &str, keys: &[ObjPath]) -> Option<String> {
    let [first, rest @ ..] = keys else {
        return None;
    };
    if rest.is_empty() {
        return None;
    }
    let mut len = first.as_ref().len();
    for k in rest {
        len = first
            .as_ref()
            .bytes()
            .zip(k.as_ref().bytes())
            .take(len)
            .take_while(|(a, b)| a == b)
            .count();
    }
    // One character short of the common beginning: Azure's listing drops
    // a blob whose name is the prefix itself (object_store takes it for a
    // directory marker), and the first key, a WAL file's plain name, often
    // is. The siblings this lets in are not among `keys`.
    let common = first.as_ref().get(..len.checked_sub(1)?)?;
    let name = if dir.is_empty() {
        common
    } else {
        common.strip_prefix(dir)?.strip_prefix('/')?
    };
    (name.len() >= MIN_LISTED_PREFIX && !name.contains('/')).then(|| common.to_string())
}

/// The sizes of `keys` from the listing of the keys starting with
/// `prefix` (sidecars and anything else there are not among `keys`).
async fn list_sizes(
    lister: &dyn PaginatedListStore,
    prefix: &str,
    keys: &[ObjPath],
) -> Result<Vec<Option<u64>>, Failure> {
    let mut sizes = vec![None; keys.len()];
    let mut page_token = None;
    loop {
        let opts = PaginatedListOptions {
            page_token,
            ..Default::default()
        };
        let page = lister
            .list_paginated(Some(prefix), opts)
            .await
            .map_err(|e| classify(&e))?;
        for o in page.result.objects {
            for (k, s) in keys.iter().zip(sizes.iter_mut()) {
                if *k == o.location {
                    *s = Some(o.size);
                }
            }
        }
        match page.page_token {
            Some(t) => page_token = Some(t),
            None => return Ok(sizes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_only_for_names_that_share_enough() {
        let keys =
            |names: &[&str]| -> Vec<ObjPath> { names.iter().map(|n| ObjPath::from(*n)).collect() };
        let seg = "a/wal/000000010000000000000001";
        let forms = keys(&[
            seg,
            &format!("{seg}.zst"),
            &format!("{seg}.age"),
            &format!("{seg}.zst.age"),
        ]);
        // One character short: Azure drops a blob named as the prefix.
        assert_eq!(
            listed_prefix("a/wal", &forms).as_deref(),
            Some("a/wal/00000001000000000000000")
        );
        // The prefix may end inside a name (not a directory).
        let two = keys(&[seg, "a/wal/000000010000000000000002"]);
        assert_eq!(
            listed_prefix("a/wal", &two).as_deref(),
            Some("a/wal/0000000100000000000000")
        );
        // At the bucket's root.
        let root = keys(&["00000002.history", "00000002.history.age"]);
        assert_eq!(listed_prefix("", &root).as_deref(), Some("00000002.histor"));
        // One name, names sharing too little, or only the directory: HEADs.
        assert_eq!(listed_prefix("a/wal", &keys(&[seg])), None);
        assert_eq!(listed_prefix("a/wal", &[]), None);
        assert_eq!(
            listed_prefix("a/wal", &keys(&["a/wal/0000000A", "a/wal/0000000B"])),
            None
        );
        assert_eq!(
            listed_prefix("a/wal", &keys(&[seg, "a/wal/00000002.history"])),
            None
        );
        assert_eq!(
            listed_prefix("a/w", &keys(&["a/wal/000000010000", "a/wal/000000010001"])),
            None
        );
    }
}
