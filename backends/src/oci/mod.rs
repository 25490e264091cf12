//! OCI registries as snapshot stores: each snapshot is an OCI artifact (image manifest 1.1 with our own
//! `artifactType`), tagged by snapshot name in the repository `<REPOSITORY>/<cluster>`.
//!
//! - config blob: the snapshot's `metadata.json` (`application/vnd.kubectl-snapshot.config.v1+json`), so `list`
//!   and `show` never download the bundle;
//! - schema-2 bundles (with a member index): one layer per member, in bundle order
//!   (`application/vnd.kubectl-snapshot.member.v1.tar+gzip`, annotated with the entry it holds). Members are
//!   deterministic, so the registry stores each once per repository and a push uploads only those it lacks;
//!   the bundle's sha256 is the manifest annotation `io.kubectl-snapshot.bundle.sha256`. Blobs a deleted
//!   manifest leaves unreferenced are removed by the registry's own garbage collection, not by this client;
//! - schema-1 bundles: one layer, the bundle (`application/vnd.kubectl-snapshot.bundle.v1.tar+gzip`, titled
//!   `<snapshot>.tar.gz`), whose digest is the bundle's sha256, so the digest is the sidecar and the registry
//!   checks it on upload;
//! - manifest annotations: `org.opencontainers.image.created`, `io.kubectl-snapshot.cluster`,
//!   `io.kubectl-snapshot.snapshot`, `io.kubectl-snapshot.k8s-version`.
//!
//! Blobs are pushed first (skipped when already present), the manifest last: the tag is the commit marker.
//! Credentials: `--oci-username` with a password, else the Docker config (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`; credential helpers) or Podman's auth file, else anonymous. A Docker config that is
//! there but unusable (malformed, a failing helper) is an error, not anonymous access.
//!
//! By concern: [`credentials`], [`errors`] (what an oci-client error means), [`manifests`] (reading and checking
//! a snapshot's manifest), [`push`] (members mounted or uploaded), [`http`] (the requests oci-client does not
//! make); this file holds the store and its [`SnapshotStore`] methods.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::members::{BundleIndex, LocalMembers, Member, MemberSource, Moved};
use crate::remote::{Collected, Fetched, OnBytes, RemoteSnapshot, SnapshotStore, Upload};
use crate::s3::Secret;
use crate::{ClusterName, Error, SnapshotName};

mod credentials;
mod errors;
mod http;
mod manifests;
mod pull;
mod push;

use credentials::*;
use errors::*;
use http::*;

pub const ARTIFACT_TYPE: &str = "application/vnd.kubectl-snapshot.bundle.v1";
pub const CONFIG_TYPE: &str = "application/vnd.kubectl-snapshot.config.v1+json";
pub const BUNDLE_TYPE: &str = "application/vnd.kubectl-snapshot.bundle.v1.tar+gzip";
/// A member of a schema-2 bundle (a run of gzip members aligned to tar entries): one layer each, in order.
pub const MEMBER_TYPE: &str = "application/vnd.kubectl-snapshot.member.v1.tar+gzip";
/// Manifest annotation of a member-layered snapshot: the whole bundle's sha256 (its sidecar).
const BUNDLE_SHA256: &str = "io.kubectl-snapshot.bundle.sha256";
/// Layer annotation: the first tar entry a member holds.
const HOLDS: &str = "io.kubectl-snapshot.holds";
/// Existence checks and member uploads in flight.
const MEMBERS_IN_FLIGHT: usize = 4;
/// Sibling repositories (other clusters' snapshots) searched for members to mount.
const MAX_SIBLINGS: usize = 32;
/// Manifests of the repository read before a push to learn which members it holds.
const MAX_MANIFESTS_READ: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct OciOptions {
    /// `host[:port]`.
    pub registry: String,
    /// Base repository path; snapshots go to `<repository>/<cluster>`.
    pub repository: String,
    /// Plain HTTP.
    pub insecure: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// How requests outside oci-client answered the registry's challenge.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Basic,
    Bearer(String),
}

pub struct OciStore {
    client: Client,
    http: reqwest::Client,
    auth: RegistryAuth,
    opts: OciOptions,
    description: String,
    /// Set once the registry's token realm has been checked (see [`OciStore::check_realm`]).
    realm_checked: tokio::sync::OnceCell<()>,
}

/// `REGISTRY/REPOSITORY` from an `oci://` URL.
pub fn split_url(rest: &str) -> Result<(String, String), Error> {
    let (registry, repo) = rest
        .split_once('/')
        .ok_or_else(|| Error::Config(format!("oci://{rest}: expected oci://REGISTRY/REPOSITORY")))?;
    let repo = repo.trim_matches('/');
    if registry.is_empty() || repo.is_empty() {
        return Err(Error::Config(format!(
            "oci://{rest}: expected oci://REGISTRY/REPOSITORY"
        )));
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(Error::Config(format!(
            "oci://{rest}: repository paths must be lowercase"
        )));
    }
    if let Some(bad) = repo.split('/').find(|c| !is_path_component(c)) {
        return Err(Error::Config(format!(
            "oci://{rest}: {bad:?} is not a valid repository path component ({PATH_COMPONENT_RULE})"
        )));
    }
    Ok((registry.to_owned(), repo.to_owned()))
}

const PATH_COMPONENT_RULE: &str = "lowercase letters and digits, separated by '.', '_', '__' or dashes";

/// An OCI repository path component, `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` (distribution-spec).
fn is_path_component(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(first), Some(last)) = (s.chars().next(), s.chars().last()) else {
        return false;
    };
    alnum(first)
        && alnum(last)
        && s.split(alnum)
            .filter(|sep| !sep.is_empty())
            .all(|sep| matches!(sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

pub fn open(o: &OciOptions) -> Result<OciStore, Error> {
    let mut certs = Vec::new();
    let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(600));
    for path in &o.ca {
        let data = std::fs::read(path).map_err(|e| Error::Config(format!("--oci-ca {path}: {e}")))?;
        let cert = reqwest::Certificate::from_pem(&data).map_err(|e| Error::Config(format!("--oci-ca {path}: {e}")))?;
        http = http.add_root_certificate(cert);
        certs.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    let config = ClientConfig {
        protocol: if o.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        use_monolithic_push: true,
        extra_root_certificates: certs,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(300)),
        ..Default::default()
    };
    let (auth, from) = credentials(o)?;
    let http = http.build().map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
    let description = format!("oci://{}/{} (credentials: {from})", o.registry, o.repository);
    Ok(OciStore {
        client: Client::new(config),
        http,
        auth,
        opts: o.clone(),
        description,
        realm_checked: Default::default(),
    })
}

/// Attempts at a blob upload; a dropped connection, a timeout, 5xx or 429 starts a new upload after 1 s, then 2 s.
const UPLOAD_ATTEMPTS: u32 = 3;
/// Snapshots whose manifest and metadata `list` reads at once.
const LIST_IN_FLIGHT: usize = 8;

impl OciStore {
    fn repo(&self, cluster: &ClusterName) -> Result<String, Error> {
        let c = cluster.as_str();
        if !is_path_component(c) {
            return Err(Error::Config(format!(
                "cluster {c:?} cannot name an OCI repository ({PATH_COMPONENT_RULE}); snapshots of it can go to S3 or a directory"
            )));
        }
        Ok(format!("{}/{c}", self.opts.repository))
    }

    fn reference(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<Reference, Error> {
        Ok(Reference::with_tag(
            self.opts.registry.clone(),
            self.repo(cluster)?,
            name.to_string(),
        ))
    }

    /// A snapshot that exists: its reference, manifest and metadata; `NotFound` otherwise.
    async fn existing(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
    ) -> Result<(Reference, OciImageManifest, Vec<u8>), Error> {
        self.check_realm().await?;
        let r = self.reference(cluster, name)?;
        let m = self.manifest(&r).await?.ok_or_else(|| Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        })?;
        let metadata = self.config(&r, &m).await?;
        Ok((r, m, metadata))
    }

    fn err(&self, op: &str, e: oci_client::errors::OciDistributionError) -> Error {
        if kind(&e) == Kind::Denied {
            Error::Denied {
                remote: self.description.clone(),
                message: format!("{op}: {}", crate::chain(&e)),
            }
        } else {
            Error::Request {
                remote: self.description.clone(),
                op: op.to_owned(),
                cause: Box::new(e),
            }
        }
    }
}

#[async_trait]
impl SnapshotStore for OciStore {
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
        self.check_realm().await?;
        let r = self.reference(cluster, name)?;
        if self.manifest(&r).await?.is_some() {
            return Err(Error::AlreadyExists {
                cluster: cluster.to_string(),
                name: name.to_string(),
            });
        }
        let sidecar = crate::Sidecar::parse(upload.sidecar)
            .map_err(|_| Error::Integrity {
                remote: self.description.clone(),
                name: name.to_string(),
                message: "its local sidecar is malformed".into(),
            })?
            .sha256;
        let bundle = upload.bundle;
        let metadata = upload.metadata;
        let size = std::fs::metadata(bundle)
            .map_err(|e| Error::io(format!("reading {}", bundle.display()), e))?
            .len();
        self.client
            .auth(&r, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| self.err("authenticating", e))?;
        let (layers, moved) = match upload.index {
            Some(index) => self.put_members(&r, name, bundle, index, &sidecar, progress).await?,
            None => {
                self.put_whole(&r, name, (bundle, size), &sidecar.prefixed(), progress)
                    .await?
            }
        };
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(metadata)));
        self.client
            .push_blob(&r, metadata.to_vec(), &config_digest)
            .await
            .map_err(|e| self.err("uploading the metadata", e))?;
        let bundle_sha256 = upload.index.is_some().then(|| sidecar.hex());
        let manifest = manifests::snapshot_manifest((cluster, name), metadata, config_digest, layers, bundle_sha256);
        // The tag is the commit marker, last.
        self.client
            .push_manifest(&r, &OciManifest::Image(manifest))
            .await
            .map_err(|e| self.err("pushing the manifest", e))?;
        Ok(moved)
    }

    async fn list(&self, cluster: &ClusterName) -> Result<Vec<RemoteSnapshot>, Error> {
        self.check_realm().await?;
        let tags = self.tags(&self.repo(cluster)?).await?;
        let names: Vec<SnapshotName> = tags.iter().filter_map(|t| SnapshotName::new(t).ok()).collect();
        let Some(first) = names.first() else {
            return Ok(Vec::new());
        };
        // One token for the repository before the reads fan out (oci-client would fetch one per request).
        self.client
            .auth(&self.reference(cluster, first)?, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.err("authenticating", e))?;
        let read = |name: SnapshotName| async move {
            let r = self.reference(cluster, &name)?;
            let found = async {
                let Some(m) = self.manifest(&r).await? else {
                    return Ok(None);
                };
                let metadata = self.config(&r, &m).await?;
                Ok::<_, Error>(Some(self.snapshot(name.clone(), &m, metadata)))
            };
            match found.await {
                // A tag that cannot be read is listed with the reason; the others still list.
                Err(e @ (Error::Unrecognized { .. } | Error::Integrity { .. })) => Ok(Some(RemoteSnapshot {
                    name,
                    complete: true,
                    size: 0,
                    modified: std::time::SystemTime::UNIX_EPOCH,
                    metadata: None,
                    sha256: None,
                    problem: Some(e.reason()),
                })),
                other => other,
            }
        };
        let mut out: Vec<RemoteSnapshot> = futures_util::stream::iter(names)
            .map(read)
            .buffered(LIST_IN_FLIGHT)
            .try_filter_map(|s| async move { Ok(s) })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn head(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<RemoteSnapshot, Error> {
        let (_, m, metadata) = self.existing(cluster, name).await?;
        Ok(self.snapshot(name.clone(), &m, metadata))
    }

    async fn get(
        &self,
        cluster: &ClusterName,
        name: &SnapshotName,
        dest: &Path,
        local: &LocalMembers,
        progress: OnBytes<'_>,
    ) -> Result<Fetched, Error> {
        let (r, m, metadata) = self.existing(cluster, name).await?;
        match self.index_of(name, &m)? {
            Some(index) => {
                self.get_members(&r, name, index, metadata, (dest, local), progress)
                    .await
            }
            None => {
                let layer = m.layers.first().ok_or_else(|| Error::NotFound {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                })?;
                self.get_layer(&r, name, layer, metadata, dest, progress).await
            }
        }
    }

    async fn delete(&self, cluster: &ClusterName, name: &SnapshotName) -> Result<(), Error> {
        self.check_realm().await?;
        let r = self.reference(cluster, name)?;
        match self.manifest(&r).await {
            // A tag whose manifest cannot be read is listed as a snapshot, so it can be deleted as one.
            Ok(Some(_)) | Err(Error::Unrecognized { .. }) => {}
            Ok(None) => {
                return Err(Error::NotFound {
                    cluster: cluster.to_string(),
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
        let digest = self
            .client
            .fetch_manifest_digest(&r, &self.auth)
            .await
            .map_err(|e| self.err("resolving the manifest digest", e))?;
        self.delete_manifest(&self.repo(cluster)?, &digest).await
    }

    async fn collect_garbage(
        &self,
        _deleting: &[(ClusterName, SnapshotName)],
        _dry_run: bool,
    ) -> Result<Collected, Error> {
        Ok(Collected {
            note: Some(
                "a registry removes the blobs no manifest references with its own garbage collection \
                 (distribution: `registry garbage-collect`)"
                    .into(),
            ),
            ..Collected::default()
        })
    }
}

/// Members of a snapshot, from its repository.
struct OciMembers<'a> {
    store: &'a OciStore,
    r: Reference,
}

impl OciMembers<'_> {
    fn descriptor(m: &Member) -> OciDescriptor {
        OciDescriptor {
            media_type: MEMBER_TYPE.into(),
            digest: format!("sha256:{}", m.sha256),
            size: m.size as i64,
            ..Default::default()
        }
    }
}

#[async_trait]
impl MemberSource for OciMembers<'_> {
    async fn fetch(&self, m: &Member) -> Result<bytes::Bytes, Error> {
        let mut stream = self.stream(m).await?;
        let mut out = Vec::with_capacity(usize::try_from(m.size).unwrap_or(0));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if (out.len() + chunk.len()) as u64 > m.size {
                return Err(Error::Remote {
                    remote: self.store.description.clone(),
                    message: format!("member {} is larger than declared", m.sha256),
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }

    async fn stream(
        &self,
        m: &Member,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<bytes::Bytes, Error>>, Error> {
        let sized = self
            .store
            .client
            .pull_blob_stream(&self.r, &Self::descriptor(m))
            .await
            .map_err(|e| self.store.err("downloading a member", e))?;
        Ok(sized.stream.map_err(|e| Error::io("downloading a member", e)).boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("127.0.0.1:5000/team/snaps").unwrap(),
            ("127.0.0.1:5000".into(), "team/snaps".into())
        );
        assert!(split_url("ghcr.io").is_err());
        assert!(split_url("ghcr.io/Team").is_err());
        assert!(split_url("ghcr.io/team/-snaps").is_err());
        assert!(split_url("ghcr.io/team//snaps").is_err(), "an empty path component");
    }

    #[test]
    fn path_components() {
        for ok in ["a", "kind", "conf.names_x-1", "a__b", "a---b", "0", "my.cluster-2"] {
            assert!(is_path_component(ok), "{ok}");
        }
        for bad in ["", "_c", "c_", "a..b", "a___b", "-a", "a-", "A", "a.-b", "a b"] {
            assert!(!is_path_component(bad), "{bad}");
        }
    }
}
