//! What can go wrong with the image store, one typed error for callers to match on.

use std::path::PathBuf;

/// An image store failure. Whatever the variant, a failed pull leaves nothing partial in
/// the store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {why}")]
    InvalidReference { reference: String, why: String },
    #[error("image {0} is not in the local store")]
    NotFound(String),
    #[error("registry {registry} does not have {reference}")]
    UnknownImage { registry: String, reference: String },
    #[error("registry {registry} is unreachable: {why}")]
    Unreachable { registry: String, why: String },
    #[error("registry {registry} refused the credentials for {reference}: {why}")]
    Unauthorized {
        registry: String,
        reference: String,
        why: String,
    },
    #[error("registry {registry} failed: {why}")]
    Registry { registry: String, why: String },
    #[error("{what} {digest} does not match its digest (got {actual})")]
    DigestMismatch {
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("{digest}: unsupported digest (only sha256 is supported)")]
    UnsupportedDigest { digest: String },
    #[error("image has no manifest for {platform} (it has: {available})")]
    NoPlatform { platform: String, available: String },
    #[error("unsupported {what}: {media_type}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("layer {digest} is not a tar archive: {why}")]
    NotATar { digest: String, why: String },
    #[error("layer {digest} refused: entry {entry:?} {why}")]
    HostileLayer {
        digest: String,
        entry: String,
        why: String,
    },
    #[error("{what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("credentials file {path}: {why}")]
    Credentials { path: PathBuf, why: String },
    #[error("CA certificate {path}: {why}")]
    CaFile { path: PathBuf, why: String },
    #[error(
        "image store {dir} was made for ids {stored_base}+{stored_range}, not {base}+{range}: use another state directory"
    )]
    IdShiftMismatch {
        dir: PathBuf,
        stored_base: u32,
        stored_range: u32,
        base: u32,
        range: u32,
    },
    #[error(
        "image {reference}: its layer {digest} is neither unpacked nor fetched (a prune or a failed unpack removed it): pull the image again"
    )]
    LayerMissing { reference: String, digest: String },
    #[error("image {reference} is in use by {users}")]
    InUse { reference: String, users: String },
    #[error("image store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }
}
