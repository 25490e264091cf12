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

/// Entry names inside the archive, for the writer; [`Layout::of`] reads the same names back, and a test checks
/// that each of these is read as what it is.
pub const ETCD_ENTRY: &str = "etcd/snapshot.db";
pub const METADATA_ENTRY: &str = "metadata.json";
pub const IMAGE_BLOBS_DIR: &str = "images/blobs/sha256";
/// Each node's image index is `<IMAGE_NODES_DIR>/<node>/index.json`.
pub const IMAGE_NODES_DIR: &str = "images/nodes";
pub const PVS_DIR: &str = "pvs";
/// local-path-provisioner roots a bundle may carry, as paths inside a node (stock kind: /var; upstream: /opt).
pub const PV_ROOTS: &[&str] = &["/var/local-path-provisioner", "/opt/local-path-provisioner"];

/// What an entry of the archive is, by its path's components: the layout, stated once for the reader.
#[derive(Debug, PartialEq, Eq)]
pub enum Layout<'a> {
    Metadata,
    Etcd,
    /// `images/blobs/sha256/<hex>` (the name is not checked here).
    Blob {
        hex: &'a str,
    },
    /// `images/nodes/<node>/index.json`.
    NodeIndex {
        node: &'a str,
    },
    /// `pvs/<node>/<root>/<rest>`: an entry of a volume root (`rest` empty for the root itself).
    Pv {
        node: &'a str,
        root: &'static str,
        rest: &'a [&'a str],
    },
    /// A directory of the layout itself: it carries nothing.
    Dir,
    Unknown,
}

impl<'a> Layout<'a> {
    /// Node names are kind's container names: what one may be, and never a path.
    pub fn node_name_ok(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !s.starts_with('.')
    }

    /// The entry at `parts` of type `kind`. A file of the layout is a regular file, not a link to one.
    pub fn of(parts: &'a [&'a str], kind: tar::EntryType) -> Self {
        let is_dir = kind == tar::EntryType::Directory;
        let is_file = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
        let node_ok = |n: &str| Self::node_name_ok(n);
        let root = |a: &str, b: &str| PV_ROOTS.iter().copied().find(|r| *r == format!("/{a}/{b}"));
        match parts {
            [m] if is_file && *m == METADATA_ENTRY => Layout::Metadata,
            ["etcd", "snapshot.db"] if is_file => Layout::Etcd,
            ["images", "blobs", "sha256", hex] if is_file => Layout::Blob { hex },
            ["images", "nodes", node, "index.json"] if is_file && node_ok(node) => Layout::NodeIndex { node },
            [p, node, a, b, rest @ ..] if *p == PVS_DIR && node_ok(node) && root(a, b).is_some() => Layout::Pv {
                node,
                root: root(a, b).expect("matched"),
                rest,
            },
            ["etcd"] | ["images"] | ["images", "blobs"] | ["images", "blobs", "sha256"] | ["images", "nodes"]
                if is_dir =>
            {
                Layout::Dir
            }
            [p] if is_dir && *p == PVS_DIR => Layout::Dir,
            ["images", "nodes", node] if is_dir && node_ok(node) => Layout::Dir,
            [p, node] if is_dir && *p == PVS_DIR && node_ok(node) => Layout::Dir,
            [p, node, a]
                if is_dir
                    && *p == PVS_DIR
                    && node_ok(node)
                    && PV_ROOTS.iter().any(|r| r.split('/').nth(1) == Some(*a)) =>
            {
                Layout::Dir
            }
            _ => Layout::Unknown,
        }
    }
}

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

#[cfg(test)]
mod layout_tests {
    use super::*;

    fn of(path: &str, is_dir: bool) -> Layout<'static> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        let parts: Vec<&str> = path.split('/').collect();
        let parts: &'static [&str] = Box::leak(parts.into_boxed_slice());
        let kind = if is_dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        };
        Layout::of(parts, kind)
    }

    /// The names the writer uses are read back as what they are.
    #[test]
    fn the_writers_names_are_the_readers_layout() {
        assert_eq!(of(METADATA_ENTRY, false), Layout::Metadata);
        assert_eq!(of(ETCD_ENTRY, false), Layout::Etcd);
        assert_eq!(of(&format!("{IMAGE_BLOBS_DIR}/ab"), false), Layout::Blob { hex: "ab" });
        let index = format!("{IMAGE_NODES_DIR}/kind-worker/index.json");
        assert_eq!(of(&index, false), Layout::NodeIndex { node: "kind-worker" });
        for root in PV_ROOTS {
            let file = format!("{PVS_DIR}/kind-worker{root}/pvc-1/f");
            assert!(matches!(of(&file, false), Layout::Pv { root: r, rest: ["pvc-1", "f"], .. } if r == *root));
            assert!(matches!(
                of(&format!("{PVS_DIR}/kind-worker{root}"), true),
                Layout::Pv { rest: [], .. }
            ));
        }
        for dir in [IMAGE_BLOBS_DIR, IMAGE_NODES_DIR, PVS_DIR, "etcd", "pvs/kind-worker/var"] {
            assert_eq!(of(dir, true), Layout::Dir, "{dir}");
        }
        assert_eq!(of("pvs/../index.json", false), Layout::Unknown);
        assert_eq!(of("images/nodes/.hidden/index.json", false), Layout::Unknown);
        let parts: &[&str] = &[METADATA_ENTRY];
        assert_eq!(Layout::of(parts, tar::EntryType::Symlink), Layout::Unknown);
    }
}
