//! Storage for kubectl-snapshot bundles.
//!
//! - [`name`]: validated snapshot and cluster names (safe as file names, object keys and OCI tags).
//! - [`local`]: the local store, `<root>/<cluster>/<snap>.tar.gz` + `.sha256` + `.metadata.json`.
//! - [`remote`]: the [`SnapshotStore`] trait and [`ObjectSnapshotStore`], its implementation over any
//!   `object_store` (a directory, S3).
//! - [`s3`]: S3 options (k3s-style) and credentials; [`url`]: remote URLs.
//! - [`sidecar`]: the `.sha256` sidecar and the digest type, parsed and written in one place.
//! - [`conformance`] (feature `conformance`): the suite every store runs.
//! - [`Error`]: what callers can match on.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod listing;
pub mod local;
pub mod members;
pub mod name;
pub mod oci;
pub mod remote;
mod retry;
pub mod s3;
pub mod sidecar;
pub mod url;

pub use local::{LocalSnapshot, LocalStore, SnapshotPaths};
pub use members::{BundleIndex, LocalMembers, Moved};
pub use name::{ClusterName, SnapshotName};
pub use remote::{Collected, Fetched, ObjectSnapshotStore, RemoteSnapshot, SnapshotStore, Upload};
pub use sidecar::{SMALL_FILE_MAX, Sha256, Sidecar};

/// Errors from a store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("snapshot {name:?} not found for cluster {cluster:?}")]
    NotFound { cluster: String, name: String },
    #[error("snapshot {name:?} already exists for cluster {cluster:?}; choose another name or delete it first")]
    AlreadyExists { cluster: String, name: String },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{context}: {cause}")]
    Io { context: String, cause: std::io::Error },
    #[error("{remote}: {message}")]
    Remote { remote: String, message: String },
    /// A request the remote's client failed, with that client's error kept (object_store's, oci-client's) for
    /// a caller to inspect; the message shows it and its causes once.
    #[error("{remote}: {op}: {}", chain(cause.as_ref()))]
    Request {
        remote: String,
        op: String,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{remote}: access denied: {message}")]
    Denied { remote: String, message: String },
    #[error("{remote}: snapshot {name:?} failed verification: {message}; nothing was kept")]
    Integrity {
        remote: String,
        name: String,
        message: String,
    },
    /// An object in a remote that is not what kubectl-snapshot writes (another tool's, or hostile).
    #[error("{remote}: {object}: {reason}")]
    Unrecognized {
        remote: String,
        object: String,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

impl Error {
    /// What is wrong, without the remote's name (for a listing that names it once).
    pub fn reason(&self) -> String {
        match self {
            Self::Integrity { message, .. } => message.clone(),
            Self::Unrecognized { object, reason, .. } => format!("{object}: {reason}"),
            other => other.to_string(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            cause: source,
        }
    }
}

/// An error and its causes on one line (`a: b: c`), leaving out a cause whose text is already shown: HTTP
/// clients keep the reason (a certificate, a refused connection) in the source chain, not in their message.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
