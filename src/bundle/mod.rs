//! The bundle format: one `.tar.gz` holding etcd, images, PV data and metadata, with a `.sha256` sidecar.
//! Layout and versioning: docs/bundle-format.md.

pub mod extract;
pub mod metadata;
mod pargz;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod reader_tests;

pub use metadata::Metadata;
pub use reader::Status;
pub use writer::{BundleSink, WriterOptions};

/// Entry names inside the archive.
pub const ETCD_ENTRY: &str = "etcd/snapshot.db";
pub const METADATA_ENTRY: &str = "metadata.json";
pub const IMAGE_BLOBS_DIR: &str = "images/blobs/sha256";
/// Each node's image index is `<IMAGE_NODES_DIR>/<node>/index.json`.
pub const IMAGE_NODES_DIR: &str = "images/nodes";
pub const PVS_DIR: &str = "pvs";
/// local-path-provisioner roots a bundle may carry, as paths inside a node (stock kind: /var; upstream: /opt).
pub const PV_ROOTS: &[&str] = &["/var/local-path-provisioner", "/opt/local-path-provisioner"];

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{0}")]
    Source(std::io::Error),
    #[error("duplicate entry {0} in bundle")]
    Duplicate(String),
    #[error("{path}: unsupported entry type {kind}")]
    Unsupported { path: String, kind: String },
    #[error("the bundle writer stopped unexpectedly")]
    WriterGone,
    #[error("the bundle writer failed earlier")]
    WriterFailed,
    #[error("malformed sidecar: {0:?}")]
    BadSidecar(String),
    #[error("malformed metadata: {0}")]
    BadMetadata(String),
    #[error(
        "bundle schema version {found} is not supported (this kubectl-snapshot reads up to {supported}); upgrade kubectl-snapshot"
    )]
    SchemaVersion { found: u32, supported: u32 },
}

impl BundleError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause: source,
        }
    }
}
