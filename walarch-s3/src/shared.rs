//! The requests every object store (S3, Azure, GCS) makes alike for the
//! archive's layout: `PREFIX/NAME` with its SHA-256 in the metadata, a
//! `NAME.sha256` sidecar once a record was replaced. Each destination
//! runs these on its runtime and words the failures; how a failed request
//! for an object is classified is the destination's (`ObjectError`: S3 looks
//! closer at a 403).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};

use walarch_core::destination::Recorded;

use crate::bucket::recorded_from;
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
        Err(object_store::Error::NotFound { .. }) => return Ok(Recorded::Missing),
        Err(e) => return Err(failed(path, e).await),
    };
    let sidecar = match sidecar {
        Ok(s) => s,
        Err(e) => return Err(failed(side, e).await),
    };
    Ok(recorded_from(&head, sidecar, &name))
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
