//! The storage trait, at the level of snapshots, and its one implementation over any [`ObjectStore`]
//! (a local directory through `LocalFileSystem`, S3 through `AmazonS3`).
//!
//! # Layout
//! - Schema-2 bundles (with a member index) are stored content-addressed: each member is the object
//!   `<folder>/.blobs/sha256/<hex>`, shared by every snapshot and cluster under the folder, and the snapshot is
//!   `<folder>/<cluster>/<snapshot>/index.json` (the member list), `…/bundle.tar.gz.sha256` and
//!   `…/metadata.json`. (`.blobs` starts with a dot, which no cluster name can.)
//! - Bundles without an index (schema 1) are one object, `<folder>/<cluster>/<snapshot>/bundle.tar.gz`, beside
//!   the same sidecar and metadata. Both layouts are read.
//!
//! # Contract
//! A snapshot becomes visible only when complete: the data is uploaded (members, or the bundle through an
//! atomic multipart upload), then the sidecar, then `metadata.json` — the commit marker. Data without metadata
//! (an interrupted upload) is listed as incomplete, is not found by [`SnapshotStore::head`] and
//! [`SnapshotStore::get`], and a new push of the same name replaces it. Deletion removes the marker first.
//! Downloads are verified member by member and as a whole against the sidecar.
//!
//! # Garbage collection and concurrent pushes
//! Blobs are removed by [`SnapshotStore::collect_garbage`] only when no `index.json` under the folder names
//! them, complete or not. A push writes its `index.json` before it checks which blobs exist, and a collection
//! announces itself with a mark file, `<folder>/.gc/<random>.json`, before it lists the indexes:
//! - a push whose index was written before the mark is seen by the collection, which keeps its blobs;
//! - a push that starts after the mark sees the mark and waits until the collection ends (a mark older than
//!   [`GC_STALE`], left by a killed collection, is ignored), so it never relies on a blob being removed.

use backon::Retryable;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::members::{BundleIndex, LocalMembers, Member, MemberSource, Moved, SMALL_MEMBER};
use crate::{ClusterName, Error, SnapshotName};

mod gc;
mod pull;
mod push;

pub const BUNDLE: &str = "bundle.tar.gz";
pub const SIDECAR: &str = "bundle.tar.gz.sha256";
pub const METADATA: &str = "metadata.json";
pub const INDEX: &str = "index.json";
/// Shared members, `<folder>/.blobs/sha256/<hex>`.
pub const BLOBS: &str = ".blobs";
/// Collection marks, `<folder>/.gc/<random>.json`.
pub const GC_MARKS: &str = ".gc";
/// A collection mark older than this (by the store's clock) was left by a killed collection.
pub const GC_STALE: std::time::Duration = std::time::Duration::from_secs(10 * 60);
/// How long a push waits for a running collection before it gives up.
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// Existence checks in flight during a push.
const HEADS_IN_FLIGHT: usize = 16;
/// Small member uploads in flight.
const PUTS_IN_FLIGHT: usize = 4;

/// Multipart part size and parts in flight: memory stays near PART_SIZE × (PARTS_IN_FLIGHT + 1).
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// Download range size; RANGES_IN_FLIGHT ranges are fetched at once and consumed in order.
const RANGE_SIZE: u64 = 4 << 20;
const RANGES_IN_FLIGHT: usize = 4;
/// The most a metadata or sidecar object may be (they are small; anything bigger is not ours).
use crate::sidecar::SMALL_FILE_MAX as SMALL_MAX;

pub use crate::members::OnBytes;

/// A snapshot as a remote lists it.
#[derive(Debug, Clone)]
pub struct RemoteSnapshot {
    pub name: SnapshotName,
    /// Bundle, sidecar and metadata all present.
    pub complete: bool,
    /// Size of the bundle object (0 if absent).
    pub size: u64,
    pub modified: std::time::SystemTime,
    /// `metadata.json`, when complete.
    pub metadata: Option<Vec<u8>>,
    /// The sidecar's digest, when present and well-formed.
    pub sha256: Option<String>,
    /// Why this snapshot cannot be read (an invalid index, metadata too big to be ours): it is listed, so that it
    /// can be deleted, and never counted as ok. Remote text: may hold any character.
    pub problem: Option<String>,
}

/// What a download brought, after verification.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub sidecar: String,
    pub metadata: Vec<u8>,
    pub sha256: String,
    pub size: u64,
    /// The member index, for schema-2 snapshots (the local store keeps it beside the bundle).
    pub index: Option<BundleIndex>,
    pub moved: Moved,
}

/// A finished local snapshot, as a push reads it.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    pub bundle: &'a Path,
    pub sidecar: &'a str,
    pub metadata: &'a [u8],
    /// The bundle's member index (schema-2 bundles): members the remote already has are not sent again.
    pub index: Option<&'a BundleIndex>,
}

/// What a garbage collection removed, or would remove.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    /// `(sha256, size)` of each unreferenced blob.
    pub blobs: Vec<(String, u64)>,
    /// Blobs kept because a snapshot (complete or being pushed) references them.
    pub kept: usize,
    /// Set when the store does not collect blobs itself, saying who does.
    pub note: Option<String>,
}

/// Snapshot storage. Implementations must keep the contract above; [`crate::conformance`] checks it.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Where this store is, for messages (never includes a secret).
    fn describe(&self) -> String;
    /// Uploads a finished bundle with its sidecar line, metadata and (schema 2) member index. Fails with
    /// `AlreadyExists` when a complete snapshot of that name is there.
    async fn put(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        upload: Upload<'_>,
        progress: OnBytes<'_>,
    ) -> Result<Moved, Error>;
    /// A cluster's snapshots (complete and incomplete), by name.
    async fn list(&self, cluster: &ClusterName) -> Result<Vec<RemoteSnapshot>, Error>;
    /// One complete snapshot's metadata and sidecar, without its bundle.
    async fn head(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<RemoteSnapshot, Error>;
    /// Downloads the bundle into `dest` (created) and verifies it against the sidecar. Members that `local`
    /// holds (and that still match their digest) are copied instead of downloaded.
    async fn get(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        dest: &Path,
        local: &LocalMembers,
        progress: OnBytes<'_>,
    ) -> Result<Fetched, Error>;
    /// Deletes a snapshot, complete or not. Shared blobs stay until [`Self::collect_garbage`].
    async fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error>;
    /// Removes the blobs no snapshot references. `deleting` are snapshots about to be deleted (their
    /// references are not counted); with `dry_run` nothing is removed and the result is the plan.
    async fn collect_garbage(
        &self,
        deleting: &[(ClusterName, SnapshotName)],
        dry_run: bool,
    ) -> Result<Collected, Error>;
}

/// What a listing saw of one snapshot's objects.
#[derive(Default)]
struct Seen {
    bundle: Option<u64>,
    index: bool,
    sidecar: bool,
    metadata: bool,
    modified: Option<std::time::SystemTime>,
}

/// [`SnapshotStore`] over an object store, under an optional folder.
pub struct ObjectSnapshotStore {
    store: Arc<dyn ObjectStore>,
    folder: String,
    description: String,
}

impl ObjectSnapshotStore {
    pub fn new(store: Arc<dyn ObjectStore>, folder: &str, description: impl Into<String>) -> Self {
        Self {
            store,
            folder: folder.trim_matches('/').to_owned(),
            description: description.into(),
        }
    }

    /// One snapshot of a listing, from the objects seen. What its objects hold is untrusted: one that cannot
    /// be read is listed with the reason (so that it can be deleted), and the others still list.
    async fn listed(&self, cluster: &ClusterName, name: SnapshotName, seen: Seen) -> Result<RemoteSnapshot, Error> {
        let snap = name.as_str();
        let data = seen.bundle.is_some() || seen.index;
        let complete = data && seen.sidecar && seen.metadata;
        let mut problem = None;
        let (metadata, sha256, size) = if complete {
            let read = async {
                let m = self.small(&self.key(&[cluster.as_str(), snap, METADATA])).await?;
                let s = self
                    .small(&self.key(&[cluster.as_str(), snap, SIDECAR]))
                    .await?
                    .and_then(|b| parse_sidecar(&b));
                let size = match seen.bundle {
                    Some(size) => size,
                    None => self.index_of(cluster, &name).await?.map_or(0, |i| i.size),
                };
                Ok::<_, Error>((m, s, size))
            };
            match read.await {
                Ok(found) => found,
                Err(e @ (Error::Integrity { .. } | Error::Unrecognized { .. })) => {
                    problem = Some(e.reason());
                    (None, None, seen.bundle.unwrap_or(0))
                }
                Err(e) => return Err(e),
            }
        } else {
            (None, None, seen.bundle.unwrap_or(0))
        };
        Ok(RemoteSnapshot {
            name,
            complete: complete && (metadata.is_some() || problem.is_some()),
            size,
            modified: seen.modified.unwrap_or(std::time::SystemTime::UNIX_EPOCH),
            metadata,
            sha256,
            problem,
        })
    }

    fn key(&self, parts: &[&str]) -> Key {
        let mut all: Vec<&str> = self.folder.split('/').filter(|s| !s.is_empty()).collect();
        all.extend(parts);
        Key::from_iter(all)
    }

    fn err(&self, op: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { path, .. } => Error::Remote {
                remote: self.description.clone(),
                message: format!("{op}: {path} not found"),
            },
            object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
                Error::Denied {
                    remote: self.description.clone(),
                    message: format!("{op}: {e}"),
                }
            }
            other => {
                let message = format!("{op}: {other}");
                // object_store maps 401/403 to the typed variants above on most requests, but not on all (a
                // list's failure arrives as Generic), and its RetryError, which holds the status, is private to
                // the crate. There, the S3 API's own error codes in the response (documented, machine-readable:
                // SignatureDoesNotMatch, InvalidAccessKeyId, AccessDenied) classify it.
                let denied = [
                    "SignatureDoesNotMatch",
                    "InvalidAccessKeyId",
                    "AccessDenied",
                    "403 Forbidden",
                ]
                .iter()
                .any(|c| message.contains(c));
                if denied {
                    Error::Denied {
                        remote: self.description.clone(),
                        message,
                    }
                } else {
                    Error::Request {
                        remote: self.description.clone(),
                        op: op.to_owned(),
                        cause: Box::new(other),
                    }
                }
            }
        }
    }

    async fn small(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        match self.store.head(key).await {
            Ok(meta) if meta.size > SMALL_MAX => {
                return Err(Error::Unrecognized {
                    remote: self.description.clone(),
                    object: key.to_string(),
                    reason: format!("{} bytes, more than a snapshot's {SMALL_MAX}", meta.size),
                });
            }
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("reading", e)),
        }
        match self.store.get(key).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(|e| self.err("reading", e))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("reading", e)),
        }
    }

    fn not_found(cluster: &ClusterName, name: &SnapshotName) -> Error {
        Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        }
    }
}

fn parse_sidecar(bytes: &[u8]) -> Option<String> {
    crate::Sidecar::parse_bytes(bytes).map(|s| s.sha256.to_string())
}

impl ObjectSnapshotStore {
    fn blob_key(&self, sha256: &str) -> Key {
        self.key(&[BLOBS, "sha256", sha256])
    }

    async fn exists(&self, key: &Key) -> Result<bool, Error> {
        match self.store.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.err("checking", e)),
        }
    }

    fn integrity(&self, name: &SnapshotName, message: String) -> Error {
        Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message,
        }
    }

    /// A snapshot's member index, if it has one (checked: it is untrusted).
    async fn index_of(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<Option<BundleIndex>, Error> {
        let Some(bytes) = self.small(&self.key(&[cluster.as_str(), name.as_str(), INDEX])).await? else {
            return Ok(None);
        };
        BundleIndex::parse(&bytes)
            .map(Some)
            .map_err(|e| self.integrity(name, e.to_string()))
    }
}

#[async_trait]
impl SnapshotStore for ObjectSnapshotStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn put(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        upload: Upload<'_>,
        progress: OnBytes<'_>,
    ) -> Result<Moved, Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        if self.small(&self.key(&[c, n, METADATA])).await?.is_some() {
            return Err(Error::AlreadyExists {
                cluster: c.to_owned(),
                name: n.to_owned(),
            });
        }
        let expected = parse_sidecar(upload.sidecar.as_bytes())
            .ok_or_else(|| self.integrity(name, "its local sidecar is malformed".into()))?;
        let moved = match upload.index {
            Some(index) => self.put_members(c, name, &upload, index, &expected, progress).await?,
            None => {
                // An interrupted schema-2 push of this name is replaced.
                let _ = self.store.delete(&self.key(&[c, n, INDEX])).await;
                self.put_whole(c, n, upload.bundle, &expected, progress).await?
            }
        };
        self.store
            .put(
                &self.key(&[c, n, SIDECAR]),
                PutPayload::from(upload.sidecar.as_bytes().to_vec()),
            )
            .await
            .map_err(|e| self.err("uploading the sidecar", e))?;
        // The commit marker, last.
        self.store
            .put(&self.key(&[c, n, METADATA]), PutPayload::from(upload.metadata.to_vec()))
            .await
            .map_err(|e| self.err("uploading the metadata", e))?;
        Ok(moved)
    }

    async fn list(&self, cluster: &ClusterName) -> Result<Vec<RemoteSnapshot>, Error> {
        let prefix = self.key(&[cluster.as_str()]);
        let mut objects = self.store.list(Some(&prefix));
        let mut found: std::collections::BTreeMap<String, Seen> = Default::default();
        let depth = prefix.parts().count();
        while let Some(item) = objects.next().await {
            let meta = match item {
                Ok(meta) => meta,
                // A name object_store cannot represent (a control character, a `..` segment) is not ours.
                Err(object_store::Error::InvalidPath { .. }) => continue,
                Err(e) => return Err(self.err("listing", e)),
            };
            let parts: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
            // <prefix>/<snapshot>/<file>; anything else under the prefix is not ours and is ignored.
            let [snap, file] = &parts[depth.min(parts.len())..] else {
                continue;
            };
            if SnapshotName::new(snap).is_err() {
                continue;
            }
            let e = found.entry(snap.clone()).or_default();
            let modified = std::time::SystemTime::from(meta.last_modified);
            match file.as_str() {
                BUNDLE => {
                    e.bundle = Some(meta.size);
                    e.modified = Some(modified);
                }
                INDEX => {
                    e.index = true;
                    e.modified = Some(modified);
                }
                SIDECAR => e.sidecar = true,
                METADATA => e.metadata = true,
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (snap, seen) in found {
            let Ok(name) = SnapshotName::new(&snap) else { continue };
            out.push(self.listed(cluster, name, seen).await?);
        }
        Ok(out)
    }

    async fn head(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<RemoteSnapshot, Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let Some(metadata) = self.small(&self.key(&[c, n, METADATA])).await? else {
            return Err(Self::not_found(cluster, name));
        };
        let (size, modified) = match self.store.head(&self.key(&[c, n, BUNDLE])).await {
            Ok(m) => (m.size, std::time::SystemTime::from(m.last_modified)),
            Err(object_store::Error::NotFound { .. }) => {
                let modified = match self.store.head(&self.key(&[c, n, INDEX])).await {
                    Ok(m) => std::time::SystemTime::from(m.last_modified),
                    Err(object_store::Error::NotFound { .. }) => return Err(Self::not_found(cluster, name)),
                    Err(e) => return Err(self.err("reading", e)),
                };
                let index = self
                    .index_of(cluster, name)
                    .await?
                    .ok_or_else(|| Self::not_found(cluster, name))?;
                (index.size, modified)
            }
            Err(e) => return Err(self.err("reading", e)),
        };
        let sha256 = self
            .small(&self.key(&[c, n, SIDECAR]))
            .await?
            .and_then(|b| parse_sidecar(&b));
        Ok(RemoteSnapshot {
            name: name.clone(),
            complete: sha256.is_some(),
            size,
            modified,
            metadata: Some(metadata),
            sha256,
            problem: None,
        })
    }

    async fn get(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        dest: &Path,
        local: &LocalMembers,
        progress: OnBytes<'_>,
    ) -> Result<Fetched, Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let head = self.head(cluster, name).await?;
        let sidecar_bytes = self
            .small(&self.key(&[c, n, SIDECAR]))
            .await?
            .ok_or_else(|| Self::not_found(cluster, name))?;
        let expected =
            parse_sidecar(&sidecar_bytes).ok_or_else(|| self.integrity(name, "its sidecar is malformed".into()))?;
        let has_bundle = self.exists(&self.key(&[c, n, BUNDLE])).await?;
        let index = if has_bundle {
            None
        } else {
            self.index_of(cluster, name).await?
        };
        let (actual, size, moved) = match &index {
            Some(index) => {
                if index.sha256 != expected {
                    return Err(self.integrity(name, "its member index and its sidecar disagree".into()));
                }
                let blobs = pull::Blobs {
                    store: Arc::clone(&self.store),
                    keys: index
                        .members
                        .iter()
                        .map(|m| (m.sha256.clone(), self.blob_key(&m.sha256)))
                        .collect(),
                    description: self.description.clone(),
                };
                let integrity = |message: String| self.integrity(name, message);
                let (actual, moved) =
                    crate::members::assemble(index, local, &blobs, dest, progress, &integrity).await?;
                (actual, index.size, moved)
            }
            None => {
                let (actual, size) = self.get_whole(c, n, &head, dest, progress).await?;
                let moved = Moved {
                    transferred: size,
                    members_transferred: 1,
                    ..Moved::default()
                };
                (actual, size, moved)
            }
        };
        if actual != expected {
            return Err(self.integrity(
                name,
                format!("sha256 mismatch: sidecar={expected}, downloaded={actual}"),
            ));
        }
        Ok(Fetched {
            sidecar: String::from_utf8_lossy(&sidecar_bytes).into_owned(),
            metadata: head.metadata.unwrap_or_default(),
            sha256: actual,
            size,
            index,
            moved,
        })
    }

    async fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let mut any = false;
        for file in [METADATA, SIDECAR, INDEX, BUNDLE] {
            let key = self.key(&[c, n, file]);
            if !self.exists(&key).await? {
                continue;
            }
            self.store.delete(&key).await.map_err(|e| self.err("deleting", e))?;
            any = true;
        }
        if !any {
            return Err(Self::not_found(cluster, name));
        }
        Ok(())
    }

    async fn collect_garbage(
        &self,
        deleting: &[(ClusterName, SnapshotName)],
        dry_run: bool,
    ) -> Result<Collected, Error> {
        let mark = if dry_run {
            None
        } else {
            let key = self.key(&[GC_MARKS, &format!("{}.json", crate::local::nonce())]);
            let body = serde_json::json!({ "pid": std::process::id(), "since": jiff::Timestamp::now().to_string() });
            self.store
                .put(&key, PutPayload::from(body.to_string().into_bytes()))
                .await
                .map_err(|e| self.err("marking a garbage collection", e))?;
            Some(key)
        };
        let result = self.collect(deleting, dry_run).await;
        if let Some(key) = mark {
            let _ = self.store.delete(&key).await;
        }
        result
    }
}
