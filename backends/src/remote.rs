//! The storage trait, at the level of snapshots, and its one implementation over any [`ObjectStore`]
//! (a local directory through `LocalFileSystem`, S3 through `AmazonS3`).
//!
//! # Layout
//! `<folder>/<cluster>/<snapshot>/bundle.tar.gz`, `…/bundle.tar.gz.sha256`, `…/metadata.json`.
//!
//! # Contract
//! A snapshot becomes visible only when complete: the bundle is uploaded (multipart, itself atomic), then the
//! sidecar, then `metadata.json` — the commit marker. A bundle without metadata (an interrupted upload) is
//! listed as incomplete, is not found by [`SnapshotStore::head`] and [`SnapshotStore::get`], and a new push of
//! the same name replaces it. Deletion removes the marker first. Downloads are verified against the sidecar.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{ClusterName, Error, SnapshotName};

pub const BUNDLE: &str = "bundle.tar.gz";
pub const SIDECAR: &str = "bundle.tar.gz.sha256";
pub const METADATA: &str = "metadata.json";

/// Multipart part size and parts in flight: memory stays near PART_SIZE × (PARTS_IN_FLIGHT + 1).
const PART_SIZE: usize = 8 << 20;
const PARTS_IN_FLIGHT: usize = 4;
/// Download range size; RANGES_IN_FLIGHT ranges are fetched at once and consumed in order.
const RANGE_SIZE: u64 = 4 << 20;
const RANGES_IN_FLIGHT: usize = 4;
/// The most a metadata or sidecar object may be (they are small; anything bigger is not ours).
use crate::sidecar::SMALL_FILE_MAX as SMALL_MAX;

/// Reports bytes moved, for progress bars.
pub type Progress<'a> = &'a (dyn Fn(u64) + Send + Sync);

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
}

/// What a download brought, after verification.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub sidecar: String,
    pub metadata: Vec<u8>,
    pub sha256: String,
    pub size: u64,
}

/// Snapshot storage. Implementations must keep the contract above; [`crate::conformance`] checks it.
#[async_trait]
pub trait SnapshotStore: Send + Sync {
    /// Where this store is, for messages (never includes a secret).
    fn describe(&self) -> String;
    /// Uploads a finished bundle with its sidecar line and metadata. Fails with `AlreadyExists` when a complete
    /// snapshot of that name is there.
    async fn put(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        bundle: &Path,
        sidecar: &str,
        metadata: &[u8],
        progress: Progress<'_>,
    ) -> Result<(), Error>;
    /// A cluster's snapshots (complete and incomplete), by name.
    async fn list(&self, cluster: &ClusterName) -> Result<Vec<RemoteSnapshot>, Error>;
    /// One complete snapshot's metadata and sidecar, without its bundle.
    async fn head(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<RemoteSnapshot, Error>;
    /// Downloads the bundle into `dest` (created or truncated) and verifies it against the sidecar.
    async fn get(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, Error>;
    /// Deletes a snapshot, complete or not.
    async fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error>;
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
                    Error::Remote {
                        remote: self.description.clone(),
                        message,
                    }
                }
            }
        }
    }

    async fn small(&self, key: &Key) -> Result<Option<Vec<u8>>, Error> {
        match self.store.head(key).await {
            Ok(meta) if meta.size > SMALL_MAX => {
                return Err(Error::Remote {
                    remote: self.description.clone(),
                    message: format!("{key} is {} bytes: not a snapshot file", meta.size),
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

#[async_trait]
impl SnapshotStore for ObjectSnapshotStore {
    fn describe(&self) -> String {
        self.description.clone()
    }

    async fn put(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        bundle: &Path,
        sidecar: &str,
        metadata: &[u8],
        progress: Progress<'_>,
    ) -> Result<(), Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        if self.small(&self.key(&[c, n, METADATA])).await?.is_some() {
            return Err(Error::AlreadyExists {
                cluster: c.to_owned(),
                name: n.to_owned(),
            });
        }
        let expected = parse_sidecar(sidecar.as_bytes()).ok_or_else(|| Error::Integrity {
            remote: self.description.clone(),
            name: n.to_owned(),
            message: "its local sidecar is malformed".into(),
        })?;
        let key = self.key(&[c, n, BUNDLE]);
        let mut file = tokio::fs::File::open(bundle)
            .await
            .map_err(|e| Error::io(format!("opening {}", bundle.display()), e))?;
        let mut hasher = Sha256::new();
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| self.err("starting the upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        let sent: Result<(), Error> = async {
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(|e| Error::io(format!("reading {}", bundle.display()), e))?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.err("uploading the bundle", e))?;
                hasher.update(&buf[..n]);
                writer.write(&buf[..n]);
                progress(n as u64);
            }
        }
        .await;
        if let Err(e) = sent {
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(|e| self.err("uploading the bundle", e))?;
        // The bytes sent are checked against the sidecar (hashed on the way, no second read) before the commit.
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            let _ = self.store.delete(&key).await;
            return Err(Error::Integrity {
                remote: self.description.clone(),
                name: n.to_owned(),
                message: format!(
                    "the local bundle does not match its sidecar (sidecar={expected}, bundle={actual}); nothing was published"
                ),
            });
        }
        self.store
            .put(
                &self.key(&[c, n, SIDECAR]),
                PutPayload::from(sidecar.as_bytes().to_vec()),
            )
            .await
            .map_err(|e| self.err("uploading the sidecar", e))?;
        // The commit marker, last.
        self.store
            .put(&self.key(&[c, n, METADATA]), PutPayload::from(metadata.to_vec()))
            .await
            .map_err(|e| self.err("uploading the metadata", e))?;
        Ok(())
    }

    async fn list(&self, cluster: &ClusterName) -> Result<Vec<RemoteSnapshot>, Error> {
        let prefix = self.key(&[cluster.as_str()]);
        let mut objects = self.store.list(Some(&prefix));
        let mut found: std::collections::BTreeMap<String, (Option<u64>, bool, bool, std::time::SystemTime)> =
            Default::default();
        while let Some(item) = objects.next().await {
            let meta = item.map_err(|e| self.err("listing", e))?;
            let parts: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
            let depth = prefix.parts().count();
            // <prefix>/<snapshot>/<file>; anything else under the prefix is not ours and is ignored.
            let [snap, file] = &parts[depth.min(parts.len())..] else {
                continue;
            };
            if SnapshotName::new(snap).is_err() {
                continue;
            }
            let e = found
                .entry(snap.clone())
                .or_insert((None, false, false, std::time::SystemTime::UNIX_EPOCH));
            match file.as_str() {
                BUNDLE => {
                    e.0 = Some(meta.size);
                    e.3 = std::time::SystemTime::from(meta.last_modified);
                }
                SIDECAR => e.1 = true,
                METADATA => e.2 = true,
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (snap, (size, has_sidecar, has_meta, modified)) in found {
            let name = SnapshotName::new(&snap).map_err(|_| Error::Remote {
                remote: self.description.clone(),
                message: format!("bad name {snap}"),
            })?;
            let complete = size.is_some() && has_sidecar && has_meta;
            let (metadata, sha256) = if complete {
                let m = self.small(&self.key(&[cluster.as_str(), &snap, METADATA])).await?;
                let s = self
                    .small(&self.key(&[cluster.as_str(), &snap, SIDECAR]))
                    .await?
                    .and_then(|b| parse_sidecar(&b));
                (m, s)
            } else {
                (None, None)
            };
            out.push(RemoteSnapshot {
                name,
                complete: complete && metadata.is_some(),
                size: size.unwrap_or(0),
                modified,
                metadata,
                sha256,
            });
        }
        Ok(out)
    }

    async fn head(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<RemoteSnapshot, Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let Some(metadata) = self.small(&self.key(&[c, n, METADATA])).await? else {
            return Err(Self::not_found(cluster, name));
        };
        let bundle = match self.store.head(&self.key(&[c, n, BUNDLE])).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Err(Self::not_found(cluster, name)),
            Err(e) => return Err(self.err("reading", e)),
        };
        let sha256 = self
            .small(&self.key(&[c, n, SIDECAR]))
            .await?
            .and_then(|b| parse_sidecar(&b));
        Ok(RemoteSnapshot {
            name: name.clone(),
            complete: sha256.is_some(),
            size: bundle.size,
            modified: std::time::SystemTime::from(bundle.last_modified),
            metadata: Some(metadata),
            sha256,
        })
    }

    async fn get(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        dest: &Path,
        progress: Progress<'_>,
    ) -> Result<Fetched, Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let head = self.head(cluster, name).await?;
        let sidecar_bytes = self
            .small(&self.key(&[c, n, SIDECAR]))
            .await?
            .ok_or_else(|| Self::not_found(cluster, name))?;
        let expected = parse_sidecar(&sidecar_bytes).ok_or_else(|| Error::Integrity {
            remote: self.description.clone(),
            name: n.to_owned(),
            message: "its sidecar is malformed".into(),
        })?;
        // Ranged GETs, several in flight, consumed in order: hashed and written sequentially.
        let key = self.key(&[c, n, BUNDLE]);
        let total = head.size;
        let ranges: Vec<std::ops::Range<u64>> = (0..total.div_ceil(RANGE_SIZE))
            .map(|i| i * RANGE_SIZE..((i + 1) * RANGE_SIZE).min(total))
            .collect();
        let mut parts = futures_util::stream::iter(ranges)
            .map(|r| {
                let key = key.clone();
                let store = Arc::clone(&self.store);
                async move { store.get_range(&key, r).await }
            })
            .buffered(RANGES_IN_FLIGHT);
        let file = crate::local::create_private_file(dest)
            .map(tokio::fs::File::from_std)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(part) = parts.next().await {
            let chunk = part.map_err(|e| self.err("downloading the bundle", e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            progress(chunk.len() as u64);
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        out.get_ref()
            .sync_all()
            .await
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            return Err(Error::Integrity {
                remote: self.description.clone(),
                name: n.to_owned(),
                message: format!("sha256 mismatch: sidecar={expected}, downloaded={actual}"),
            });
        }
        Ok(Fetched {
            sidecar: String::from_utf8_lossy(&sidecar_bytes).into_owned(),
            metadata: head.metadata.unwrap_or_default(),
            sha256: actual,
            size,
        })
    }

    async fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error> {
        let (c, n) = (cluster.as_str(), name.as_str());
        let mut any = false;
        for file in [METADATA, SIDECAR, BUNDLE] {
            let key = self.key(&[c, n, file]);
            match self.store.head(&key).await {
                Ok(_) => {}
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err("deleting", e)),
            }
            self.store.delete(&key).await.map_err(|e| self.err("deleting", e))?;
            any = true;
        }
        if !any {
            return Err(Self::not_found(cluster, name));
        }
        Ok(())
    }
}
