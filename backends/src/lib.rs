//! Storage for kubectl-snapshot bundles.
//!
//! - [`name`]: validated snapshot and cluster names (safe as file names, object keys and OCI tags).
//! - [`local`]: the local store, `<root>/<cluster>/<snap>.tar.gz` + `.sha256` + `.metadata.json`.
//! - [`Error`]: what callers can match on.

pub mod local;
pub mod name;

pub use local::{LocalSnapshot, LocalStore, SnapshotPaths};
pub use name::{ClusterName, SnapshotName};

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("snapshot {name:?} not found for cluster {cluster:?}")]
    NotFound { cluster: String, name: String },
    #[error("snapshot {name:?} already exists for cluster {cluster:?}; choose another name or delete it first")]
    AlreadyExists { cluster: String, name: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName { what: &'static str, value: String, reason: &'static str },
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), cause: source }
    }
}
