//! An S3-compatible bucket (and key prefix) as a walarch_ext destination,
//! through the `object_store` crate, on a tokio runtime of its own whose
//! threads never receive signals (see `runtime`).
//!
//! Kept out of walarch-core so that the core stays small and quick to test;
//! the extension and the `walarch` command link it.

mod azure;
mod bucket;
mod cloud;
pub mod credentials;
mod errors;
mod gcs;
mod objects;
mod shared;
pub use errors::Naming;
pub mod runtime;
pub use objects::MAX_PARTS_IN_FLIGHT;

pub use azure::{AzureSettings, AZURITE_ACCOUNT, AZURITE_KEY};
pub use bucket::{S3Destination, S3Settings, UriStyle, META_SHA256, SIDECAR_SUFFIX};
pub mod tls;
pub mod wire;
pub use cloud::{CloudDestination, CloudSettings};
pub use gcs::GcsSettings;
pub use wire::{CustomerKey, Sse};
