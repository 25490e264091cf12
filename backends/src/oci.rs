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

/// The Docker config file, as the Docker CLI finds it: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    Some(dir.join("config.json"))
}

/// The Docker config's credential for `registry`: `None` when there is no config or it names none; an error when
/// it is there but cannot be used (malformed, a helper that fails), never a silent fall back to anonymous access.
fn docker_credential_for(registry: &str) -> Result<Option<(docker_credential::DockerCredential, String)>, Error> {
    use docker_credential::CredentialRetrievalError as E;
    let Some(path) = docker_config_path() else {
        return Ok(None);
    };
    let from = format!("the Docker config ({})", path.display());
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Config(format!("{from}: {e}"))),
    };
    match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), registry) {
        Ok(c) => Ok(Some((c, from))),
        Err(E::NoCredentialConfigured) => Ok(None),
        Err(E::ConfigReadError) => Err(Error::Config(format!(
            "{from} is not valid JSON; fix it, or pass --oci-username with --oci-password-stdin"
        ))),
        // A helper's output may hold the secret: only its name and what failed are shown.
        Err(E::HelperFailure { helper, .. }) => Err(Error::Config(format!(
            "{from}: its credential helper docker-credential-{helper} failed for {registry}; run \
             `docker login {registry}`, or pass --oci-username with --oci-password-stdin"
        ))),
        Err(e) => Err(Error::Config(format!(
            "{from}: the credential for {registry} cannot be read ({e}); run `docker login {registry}`, or pass \
             --oci-username with --oci-password-stdin"
        ))),
    }
}

fn credentials(o: &OciOptions) -> Result<(RegistryAuth, String), Error> {
    match (&o.username, &o.password) {
        (Some(u), Some(p)) => {
            return Ok((
                RegistryAuth::Basic(u.clone(), p.expose().to_owned()),
                "--oci-username".into(),
            ));
        }
        (Some(_), None) => {
            return Err(Error::Config(
                "--oci-username needs a password: --oci-password-stdin".into(),
            ));
        }
        _ => {}
    }
    let found = match docker_credential_for(&o.registry)? {
        Some(found) => Some(found),
        None => docker_credential::get_podman_credential(&o.registry)
            .ok()
            .map(|c| (c, "Podman's auth file".to_owned())),
    };
    match found {
        Some((docker_credential::DockerCredential::UsernamePassword(u, p), from)) => {
            Ok((RegistryAuth::Basic(u, p), from))
        }
        Some((docker_credential::DockerCredential::IdentityToken(_), from)) => Err(Error::Config(format!(
            "{from} holds an identity token for {}, which is not supported; use --oci-username",
            o.registry
        ))),
        None => Ok((RegistryAuth::Anonymous, "anonymous".into())),
    }
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

/// What a 401 asks for.
enum Challenge {
    Bearer {
        realm: Option<String>,
        service: Option<String>,
    },
    Basic,
}

/// The challenge among a response's `WWW-Authenticate` challenges that we can answer (Bearer before Basic).
fn challenge(headers: &reqwest::header::HeaderMap) -> Option<Challenge> {
    let header = headers.get("www-authenticate")?.to_str().ok()?;
    let challenges = http_auth::parse_challenges(header).ok()?;
    if let Some(bearer) = challenges.iter().find(|c| c.scheme.eq_ignore_ascii_case("bearer")) {
        let param = |k: &str| {
            bearer
                .params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.to_unescaped())
        };
        return Some(Challenge::Bearer {
            realm: param("realm"),
            service: param("service"),
        });
    }
    challenges
        .iter()
        .any(|c| c.scheme.eq_ignore_ascii_case("basic"))
        .then_some(Challenge::Basic)
}

/// Attempts at a blob upload; a dropped connection, a timeout, 5xx or 429 starts a new upload after 1 s, then 2 s.
const UPLOAD_ATTEMPTS: u32 = 3;
/// Snapshots whose manifest and metadata `list` reads at once.
const LIST_IN_FLIGHT: usize = 8;

/// Whether the registry answered with the error code `code` (the distribution spec's error envelope).
/// oci-client parses the envelope for some requests (`RegistryError`); for others (an upload's final PUT) it
/// hands over the status and body (`ServerError`), and the body is parsed here as the same envelope.
fn registry_code(e: &oci_client::errors::OciDistributionError, code: oci_client::errors::OciErrorCode) -> bool {
    any_code(e, |c| *c == code)
}

fn transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(r) => !r.is_builder() && r.status().is_none_or(|s| s.is_server_error() || s.as_u16() == 429),
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

/// A bound on tag pages, against a registry that keeps inventing new ones.
const MAX_TAG_PAGES: usize = 10_000;

/// The target of the `rel="next"` link in a `Link` header (RFC 8288), if any.
fn next_link(header: &str) -> Option<String> {
    header.split('<').skip(1).find_map(|link| {
        let (target, params) = link.split_once('>')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().trim_end_matches(',').trim();
            p.strip_prefix("rel=").is_some_and(|v| {
                v.trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
            })
        });
        is_next.then(|| target.trim().to_owned())
    })
}

/// What an oci-client error means, from its type: the HTTP status, or the registry's error codes (the
/// distribution spec's envelope, parsed by oci-client or, for a bare `ServerError`, here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotFound,
    Denied,
    Other,
}

/// Whether the registry's error envelope holds a code for which `f` is true.
fn any_code(
    e: &oci_client::errors::OciDistributionError,
    f: impl Fn(&oci_client::errors::OciErrorCode) -> bool,
) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciEnvelope};
    match e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| f(&x.code)),
        E::ServerError { message, .. } => serde_json::from_str::<OciEnvelope>(message)
            .is_ok_and(|envelope| envelope.errors.iter().any(|x| f(&x.code))),
        _ => false,
    }
}

fn kind(e: &oci_client::errors::OciDistributionError) -> Kind {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
    let status = match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => return Kind::Denied,
        E::ImageManifestNotFoundError(_) => return Kind::NotFound,
        E::ServerError { code, .. } => Some(*code),
        E::RequestError(r) => r.status().map(|s| s.as_u16()),
        _ => None,
    };
    match status {
        Some(401 | 403) => return Kind::Denied,
        Some(404) => return Kind::NotFound,
        _ => {}
    }
    if any_code(e, |c| matches!(c, C::Unauthorized | C::Denied)) {
        Kind::Denied
    } else if any_code(e, |c| {
        matches!(c, C::ManifestUnknown | C::NameUnknown | C::BlobUnknown | C::NotFound)
    }) {
        Kind::NotFound
    } else {
        Kind::Other
    }
}

fn not_found_like(e: &oci_client::errors::OciDistributionError) -> bool {
    kind(e) == Kind::NotFound
}

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

    fn err(&self, op: &str, e: oci_client::errors::OciDistributionError) -> Error {
        let message = format!("{op}: {}", crate::chain(&e));
        if kind(&e) == Kind::Denied {
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

    /// Our manifest for a snapshot, or `None` when the tag does not exist.
    async fn manifest(&self, r: &Reference) -> Result<Option<OciImageManifest>, Error> {
        use oci_client::errors::OciDistributionError as E;
        // A read is retried like an upload: a proxy that refused a request may have closed the pooled
        // connection the next request goes out on.
        let mut attempt = 1;
        loop {
            match self.client.pull_manifest(r, &self.auth).await {
                Ok((OciManifest::Image(m), _)) if m.artifact_type.as_deref() == Some(ARTIFACT_TYPE) => {
                    return Ok(Some(m));
                }
                Ok(_) => return Ok(None),
                Err(e) if not_found_like(&e) => return Ok(None),
                // A tag whose manifest is not one a registry client can read: not usable, but listed so that
                // it can be deleted.
                Err(
                    e @ (E::ManifestParsingError(_)
                    | E::JsonError(_)
                    | E::ManifestEncodingError(_)
                    | E::UnsupportedMediaTypeError(_)
                    | E::UnsupportedSchemaVersionError(_)
                    | E::VersionedParsingError(_)),
                ) => {
                    return Err(Error::Unrecognized {
                        remote: self.description.clone(),
                        object: r.to_string(),
                        reason: format!("manifest cannot be read: {}", crate::chain(&e)),
                    });
                }
                Err(e) if attempt < UPLOAD_ATTEMPTS && transient(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => return Err(self.err("reading the manifest", e)),
            }
        }
    }

    async fn config(&self, r: &Reference, m: &OciImageManifest) -> Result<Vec<u8>, Error> {
        if !(0..=crate::SMALL_FILE_MAX as i64).contains(&m.config.size) {
            return Err(Error::Unrecognized {
                remote: self.description.clone(),
                object: r.to_string(),
                reason: format!(
                    "its manifest declares a metadata blob of {} bytes, more than a snapshot's {}",
                    m.config.size,
                    crate::SMALL_FILE_MAX
                ),
            });
        }
        let mut out = Vec::new();
        self.client
            .pull_blob(r, &m.config, &mut out)
            .await
            .map_err(|e| self.err("reading the metadata", e))?;
        Ok(out)
    }

    fn snapshot(&self, name: SnapshotName, m: &OciImageManifest, metadata: Vec<u8>) -> RemoteSnapshot {
        let layer = m.layers.first();
        let (size, sha256) = if layer.is_some_and(|l| l.media_type == MEMBER_TYPE) {
            (
                m.layers.iter().map(|l| l.size.max(0) as u64).sum(),
                m.annotations.as_ref().and_then(|a| a.get(BUNDLE_SHA256)).cloned(),
            )
        } else {
            (
                layer.map_or(0, |l| l.size.max(0) as u64),
                layer.and_then(|l| l.digest.strip_prefix("sha256:").map(str::to_owned)),
            )
        };
        RemoteSnapshot {
            name,
            complete: layer.is_some(),
            size,
            // The snapshot's creation time, from the manifest's `created` annotation (registries keep no object times).
            modified: m
                .annotations
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.created"))
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(std::time::SystemTime::UNIX_EPOCH, std::time::SystemTime::from),
            metadata: Some(metadata),
            sha256,
            problem: None,
        }
    }

    /// The member index a member-layered manifest describes (checked: the manifest is untrusted).
    fn index_of(&self, name: &SnapshotName, m: &OciImageManifest) -> Result<Option<BundleIndex>, Error> {
        if m.layers.first().is_none_or(|l| l.media_type != MEMBER_TYPE) {
            return Ok(None);
        }
        let integrity = |message: String| Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message,
        };
        let mut offset = 0u64;
        let mut members = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let sha256 = l
                .digest
                .strip_prefix("sha256:")
                .filter(|_| l.media_type == MEMBER_TYPE)
                .ok_or_else(|| integrity(format!("layer {} is not a sha256-named member", l.digest)))?;
            let size =
                u64::try_from(l.size).map_err(|_| integrity(format!("layer {} has size {}", l.digest, l.size)))?;
            members.push(Member {
                offset,
                size,
                sha256: sha256.to_owned(),
                holds: l
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HOLDS))
                    .cloned()
                    .unwrap_or_default(),
                entries: 1,
            });
            offset = offset.saturating_add(size);
        }
        let index = BundleIndex {
            index_version: crate::members::INDEX_VERSION,
            sha256: m
                .annotations
                .as_ref()
                .and_then(|a| a.get(BUNDLE_SHA256))
                .cloned()
                .unwrap_or_default(),
            size: offset,
            members,
        };
        index.check().map_err(|e| integrity(e.to_string()))?;
        Ok(Some(index))
    }

    /// The member digests that the manifests of (up to [`MAX_MANIFESTS_READ`]) tags in `r`'s repository name; empty
    /// when they cannot be read.
    async fn layers_in_repository(&self, r: &Reference) -> std::collections::HashSet<String> {
        let Ok(mut tags) = self.tags(r.repository()).await else {
            return Default::default();
        };
        // Snapshot names usually sort by time (schedules, the default name): the last ones are the newest.
        tags.sort();
        let newest: Vec<String> = tags.into_iter().rev().take(MAX_MANIFESTS_READ).collect();
        let reads = newest.into_iter().map(|tag| {
            let reference = Reference::with_tag(r.registry().to_owned(), r.repository().to_owned(), tag);
            async move { self.manifest(&reference).await.ok().flatten() }
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .flat_map(|m| m.layers.into_iter())
            .filter(|l| l.media_type == MEMBER_TYPE)
            .filter_map(|l| l.digest.strip_prefix("sha256:").map(str::to_owned))
            .collect()
    }

    /// Repositories beside `own` under the base path, from the registry's catalog (first page, at most
    /// [`MAX_SIBLINGS`]); empty when the registry does not serve a catalog to these credentials.
    async fn siblings(&self, own: &str) -> Vec<String> {
        let url = self.url("/v2/_catalog?n=1000");
        let Ok(resp) = self
            .authed(reqwest::Method::GET, &url, "registry:catalog:*", &mut None)
            .await
        else {
            return Vec::new();
        };
        if !resp.status().is_success() {
            return Vec::new();
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let base = format!("{}/", self.opts.repository);
        body["repositories"]
            .as_array()
            .map(|repos| {
                repos
                    .iter()
                    .filter_map(|r| r.as_str())
                    .filter(|r| r.starts_with(&base) && *r != own)
                    .take(MAX_SIBLINGS)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Cross-repository mounts (`POST …/blobs/uploads/?mount=<digest>&from=<repo>`) of the members that other
    /// clusters' repositories of the same registry already hold; returns the digests mounted. Anything that
    /// fails here only means the member is uploaded instead.
    async fn mount_from_siblings(&self, r: &Reference, members: &[Member]) -> std::collections::HashSet<String> {
        let mut mounted = std::collections::HashSet::new();
        if members.is_empty() {
            return mounted;
        }
        let own = r.repository().to_owned();
        for sibling in self.siblings(&own).await {
            let mut session = None;
            let mut here = Vec::new();
            for m in members.iter().filter(|m| !mounted.contains(&m.sha256)) {
                let url = self.url(&format!("/v2/{sibling}/blobs/sha256:{}", m.sha256));
                let scope = format!("repository:{sibling}:pull");
                if let Ok(resp) = self.authed(reqwest::Method::HEAD, &url, &scope, &mut session).await
                    && resp.status().is_success()
                {
                    here.push(m.sha256.clone());
                }
            }
            let mut session = None;
            for sha in here {
                let url = self.url(&format!("/v2/{own}/blobs/uploads/?mount=sha256:{sha}&from={sibling}"));
                let scope = format!("repository:{own}:pull,push repository:{sibling}:pull");
                match self.authed(reqwest::Method::POST, &url, &scope, &mut session).await {
                    Ok(resp) if resp.status() == reqwest::StatusCode::CREATED => {
                        mounted.insert(sha);
                    }
                    // 202: the registry opened an upload session instead; the member is uploaded as usual.
                    _ => {}
                }
            }
            if mounted.len() == members.len() {
                break;
            }
        }
        mounted
    }

    /// Uploads `size` bytes of `bundle` from `offset` as the blob `digest` (retrying transient failures); the
    /// registry recomputes the digest, so bytes that do not match are refused.
    #[allow(clippy::too_many_arguments)]
    async fn upload_blob(
        &self,
        r: &Reference,
        name: &SnapshotName,
        bundle: &Path,
        offset: u64,
        size: u64,
        digest: &str,
        progress: OnBytes<'_>,
    ) -> Result<(), Error> {
        // Bytes reported so far: a retried upload reports only what goes past it, so progress ends at `size`.
        let reported = std::sync::atomic::AtomicU64::new(0);
        let mut attempt = 1;
        loop {
            match self.upload(r, bundle, offset, digest, size, &reported, progress).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < UPLOAD_ATTEMPTS && transient(&e) => {
                    tokio::time::sleep(std::time::Duration::from_secs(1 << (attempt - 1))).await;
                    attempt += 1;
                }
                Err(e) if registry_code(&e, oci_client::errors::OciErrorCode::DigestInvalid) => {
                    return Err(Error::Integrity {
                        remote: self.description.clone(),
                        name: name.to_string(),
                        message: "the local bundle does not match its sidecar; nothing was published".into(),
                    });
                }
                Err(oci_client::errors::OciDistributionError::ServerError { code: 413, .. }) => {
                    return Err(Error::Remote {
                        remote: self.description.clone(),
                        message: format!(
                            "the registry, or a proxy in front of it, refuses a request body of {size} bytes (HTTP 413): \
                             raise its limit on request size (nginx: client_max_body_size 0)"
                        ),
                    });
                }
                Err(e) => {
                    return Err(self.err(
                        &format!("uploading the bundle (attempt {attempt} of {UPLOAD_ATTEMPTS})"),
                        e,
                    ));
                }
            }
        }
    }

    /// The layers of a schema-2 bundle: the members the registry lacks are uploaded, after the whole bundle is
    /// checked against its sidecar.
    async fn put_members(
        &self,
        r: &Reference,
        name: &SnapshotName,
        bundle: &Path,
        index: &BundleIndex,
        sidecar: &crate::Sha256,
        progress: OnBytes<'_>,
    ) -> Result<(Vec<OciDescriptor>, Moved), Error> {
        let integrity = |message: &str| Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message: message.to_owned(),
        };
        let size = std::fs::metadata(bundle)
            .map_err(|e| Error::io(format!("reading {}", bundle.display()), e))?
            .len();
        if index.sha256 != sidecar.hex() || index.size != size || index.check().is_err() {
            return Err(integrity(
                "the local bundle, its sidecar and its member index disagree; nothing was published",
            ));
        }
        // The registry checks each member it receives against its digest (DIGEST_INVALID otherwise); members
        // it already has are the bytes the index names, and a pull checks the whole bundle.
        let distinct: Vec<Member> = index.distinct().into_iter().cloned().collect();
        // Layers of the repository's other snapshots are there (the registry refuses a manifest whose blobs it
        // lacks, and refuses ours the same way if one went missing since): a few manifest reads replace most of
        // the per-member existence checks.
        let listed = self.layers_in_repository(r).await;
        let checks: Vec<(Member, bool)> = futures_util::stream::iter(distinct)
            .map(|m| {
                let listed = &listed;
                async move {
                    let exists = listed.contains(&m.sha256)
                        || self
                            .client
                            .blob_exists(r, &format!("sha256:{}", m.sha256))
                            .await
                            .unwrap_or(false);
                    (m, exists)
                }
            })
            .buffered(MEMBERS_IN_FLIGHT * 4)
            .collect()
            .await;
        let absent: Vec<Member> = checks.iter().filter(|(_, e)| !e).map(|(m, _)| m.clone()).collect();
        let mounted = self.mount_from_siblings(r, &absent).await;
        let checks = checks
            .into_iter()
            .map(|(m, exists)| {
                let here = exists || mounted.contains(&m.sha256);
                (m, here)
            })
            .collect::<Vec<_>>();
        let mut moved = Moved::default();
        let mut missing = Vec::new();
        for (m, exists) in checks {
            if exists {
                moved.reused += m.size;
                moved.members_reused += 1;
                progress(m.size);
            } else {
                moved.transferred += m.size;
                moved.members_transferred += 1;
                missing.push(m);
            }
        }
        futures_util::stream::iter(missing)
            .map(|m| async move {
                self.upload_blob(
                    r,
                    name,
                    bundle,
                    m.offset,
                    m.size,
                    &format!("sha256:{}", m.sha256),
                    progress,
                )
                .await
            })
            .buffer_unordered(MEMBERS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        // Repeated members count once above; progress still ends at the bundle's size.
        let repeated: u64 = index.members.iter().map(|m| m.size).sum::<u64>() - moved.transferred - moved.reused;
        if repeated > 0 {
            moved.reused += repeated;
            progress(repeated);
        }
        let layers = index
            .members
            .iter()
            .map(|m| OciDescriptor {
                media_type: MEMBER_TYPE.into(),
                digest: format!("sha256:{}", m.sha256),
                size: m.size as i64,
                annotations: (!m.holds.is_empty()).then(|| BTreeMap::from([(HOLDS.to_owned(), m.holds.clone())])),
                ..Default::default()
            })
            .collect();
        Ok((layers, moved))
    }

    fn url(&self, path: &str) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{}{path}", self.opts.registry)
    }

    /// Sends a request, answering the registry's challenge the way the registry asks: Basic credentials for a
    /// `Basic` challenge, a token for `scope` from the realm of a `Bearer` challenge. Credentials go out only once a
    /// challenge asks for them, so a token registry never sees the password; `session` keeps the answer for the
    /// next requests (tag pages). For what oci-client does not do: tag paging and delete.
    async fn authed(
        &self,
        method: reqwest::Method,
        url: &str,
        scope: &str,
        session: &mut Option<Answer>,
    ) -> Result<reqwest::Response, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        let send = |answer: &Option<Answer>| {
            let rb = self.http.request(method.clone(), url);
            match (answer, &self.auth) {
                (Some(Answer::Bearer(t)), _) => rb.bearer_auth(t),
                (Some(Answer::Basic), RegistryAuth::Basic(u, p)) => rb.basic_auth(u, Some(p)),
                _ => rb,
            }
            .send()
        };
        let resp = send(session)
            .await
            .map_err(|e| fail(format!("{method} {url}: {}", crate::chain(&e))))?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let answer = match challenge(resp.headers()) {
            Some(Challenge::Bearer { realm, service }) => {
                let realm = realm.ok_or_else(|| fail(format!("{method} {url}: Bearer challenge without a realm")))?;
                Answer::Bearer(self.token(&realm, service.as_deref(), scope).await?)
            }
            Some(Challenge::Basic) if matches!(self.auth, RegistryAuth::Basic(..)) => Answer::Basic,
            _ => return Ok(resp),
        };
        if session.as_ref() == Some(&answer) {
            // Already answered this way, and refused.
            return Ok(resp);
        }
        *session = Some(answer);
        send(session)
            .await
            .map_err(|e| fail(format!("{method} {url}: {}", crate::chain(&e))))
    }

    /// One monolithic upload of `size` bytes of `bundle` from `offset` (POST, then one streamed PUT). The registry
    /// recomputes the digest, so bytes not matching it are refused (`DIGEST_INVALID`).
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        r: &Reference,
        bundle: &Path,
        offset: u64,
        digest: &str,
        size: u64,
        reported: &std::sync::atomic::AtomicU64,
        progress: OnBytes<'_>,
    ) -> Result<(), oci_client::errors::OciDistributionError> {
        use std::sync::atomic::Ordering::Relaxed;
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(bundle).await?;
        file.seek(std::io::SeekFrom::Start(offset)).await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(size), 1 << 20)
            .inspect_ok(move |b| {
                let _ = tx.send(b.len() as u64);
            })
            .map_err(oci_client::errors::OciDistributionError::IoError);
        let upload = self.client.push_blob_stream(r, stream, digest, Some(size));
        let report = async {
            let mut sent = 0u64;
            while let Some(n) = rx.recv().await {
                sent += n;
                let before = reported.fetch_max(sent, Relaxed);
                if sent > before {
                    progress(sent - before);
                }
            }
        };
        let (uploaded, ()) = tokio::join!(upload, report);
        uploaded.map(|_| ())
    }

    fn refuse_cleartext_realm(&self, realm: &str) -> Result<(), Error> {
        if self.opts.insecure || realm.starts_with("https://") {
            return Ok(());
        }
        Err(Error::Remote {
            remote: self.description.clone(),
            message: format!("the registry's token realm {realm} is not HTTPS; refusing to send credentials to it"),
        })
    }

    /// Once, before any request that may carry credentials: oci-client fetches tokens on its own, from whatever
    /// realm the registry names, so an HTTPS registry whose token realm is plain HTTP is refused up front rather
    /// than sent the password in clear text.
    async fn check_realm(&self) -> Result<(), Error> {
        if self.opts.insecure || matches!(self.auth, RegistryAuth::Anonymous) {
            return Ok(());
        }
        self.realm_checked
            .get_or_try_init(|| async {
                let url = self.url("/v2/");
                let resp = self.http.get(&url).send().await.map_err(|e| Error::Remote {
                    remote: self.description.clone(),
                    message: format!("GET {url}: {}", crate::chain(&e)),
                })?;
                match challenge(resp.headers()) {
                    Some(Challenge::Bearer { realm: Some(realm), .. }) => self.refuse_cleartext_realm(&realm),
                    _ => Ok(()),
                }
            })
            .await
            .map(|_| ())
    }

    /// A token for `scope` from a Bearer challenge's realm, with the Basic credentials if there are any.
    async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        self.refuse_cleartext_realm(realm)?;
        // Several scopes (a cross-repository mount needs two) are space-separated here, repeated in the query.
        let mut req = self.http.get(realm);
        for one in scope.split_whitespace() {
            req = req.query(&[("scope", one)]);
        }
        if let Some(service) = service {
            req = req.query(&[("service", service)]);
        }
        if let RegistryAuth::Basic(u, p) = &self.auth {
            req = req.basic_auth(u, Some(p));
        }
        let answer = req
            .send()
            .await
            .map_err(|e| fail(format!("token from {realm}: {}", crate::chain(&e))))?;
        if !answer.status().is_success() {
            return Err(Error::Denied {
                remote: self.description.clone(),
                message: format!("token from {realm} for {scope}: HTTP {}", answer.status()),
            });
        }
        let body: serde_json::Value = answer
            .json()
            .await
            .map_err(|e| fail(format!("token from {realm}: {}", crate::chain(&e))))?;
        let t = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(|| fail(format!("token from {realm}: no token in the answer")))?;
        Ok(t.to_owned())
    }

    /// All tags of a repository, following `Link: <…>; rel="next"` pages (oci-client drops that header). Pages
    /// that loop, or a `Link` to another host (which would be sent our credentials), are errors.
    async fn tags(&self, repo: &str) -> Result<Vec<String>, Error> {
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: format!("listing tags of {repo}: {m}"),
        };
        let origin = self.url("/");
        let mut url = self.url(&format!("/v2/{repo}/tags/list?n=1000"));
        let mut session = None;
        let mut all = Vec::new();
        let mut seen = std::collections::HashSet::new();
        loop {
            if !seen.insert(url.clone()) {
                return Err(fail(format!("the registry's Link pages loop back to {url}")));
            }
            if seen.len() > MAX_TAG_PAGES {
                return Err(fail(format!("more than {MAX_TAG_PAGES} pages")));
            }
            let resp = self
                .authed(
                    reqwest::Method::GET,
                    &url,
                    &format!("repository:{repo}:pull"),
                    &mut session,
                )
                .await?;
            match resp.status().as_u16() {
                404 => return Ok(Vec::new()),
                401 | 403 => {
                    return Err(Error::Denied {
                        remote: self.description.clone(),
                        message: format!("listing tags of {repo}: HTTP {}", resp.status()),
                    });
                }
                s if !(200..300).contains(&s) => return Err(fail(format!("HTTP {s}"))),
                _ => {}
            }
            let next = resp
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link);
            let body: serde_json::Value = resp.json().await.map_err(|e| fail(e.to_string()))?;
            // `"tags": null` for an empty repository (distribution, GHCR).
            all.extend(
                body["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned)),
            );
            url = match next {
                None => break,
                Some(n) if n.starts_with('/') => self.url(&n),
                Some(n) if n.starts_with(&origin) => n,
                Some(n) => {
                    return Err(fail(format!(
                        "the registry's Link leads to another host ({n}); not following it"
                    )));
                }
            };
        }
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// DELETE of a manifest by digest (oci-client has no delete), with a `delete`-scoped token where required.
    async fn delete_manifest(&self, repo: &str, digest: &str) -> Result<(), Error> {
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let resp = self
            .authed(
                reqwest::Method::DELETE,
                &url,
                &format!("repository:{repo}:delete,pull"),
                &mut None,
            )
            .await?;
        let fail = |m: String| Error::Remote {
            remote: self.description.clone(),
            message: m,
        };
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            401 | 403 => Err(Error::Denied {
                remote: self.description.clone(),
                message: format!(
                    "deleting {repo}@{digest}: HTTP {}: these credentials may not delete in {repo}",
                    resp.status()
                ),
            }),
            400 | 405 => Err(fail(format!(
                "the registry refuses deletes through the API (HTTP {}); delete {repo}@{digest} with the registry's own UI or API",
                resp.status()
            ))),
            s => Err(fail(format!("deleting {repo}@{digest}: HTTP {s}"))),
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
        let digest = sidecar.prefixed();
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
                let mut moved = Moved::default();
                if self.client.blob_exists(&r, &digest).await.unwrap_or(false) {
                    progress(size);
                    moved.reused = size;
                    moved.members_reused = 1;
                } else {
                    self.upload_blob(&r, name, bundle, 0, size, &digest, progress).await?;
                    moved.transferred = size;
                    moved.members_transferred = 1;
                }
                let layer = OciDescriptor {
                    media_type: BUNDLE_TYPE.into(),
                    digest: digest.clone(),
                    size: size as i64,
                    annotations: Some(BTreeMap::from([(
                        "org.opencontainers.image.title".to_owned(),
                        format!("{name}.tar.gz"),
                    )])),
                    ..Default::default()
                };
                (vec![layer], moved)
            }
        };
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(metadata)));
        self.client
            .push_blob(&r, metadata.to_vec(), &config_digest)
            .await
            .map_err(|e| self.err("uploading the metadata", e))?;
        let meta: serde_json::Value = serde_json::from_slice(metadata).unwrap_or_default();
        let mut annotations = BTreeMap::new();
        // RFC 3339, as the annotation requires: the metadata's time, else the push's.
        let created = meta["created"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(jiff::Timestamp::now);
        annotations.insert("org.opencontainers.image.created".to_owned(), created.to_string());
        annotations.insert("io.kubectl-snapshot.cluster".to_owned(), cluster.to_string());
        annotations.insert("io.kubectl-snapshot.snapshot".to_owned(), name.to_string());
        annotations.insert(
            "io.kubectl-snapshot.k8s-version".to_owned(),
            meta["k8sVersion"].as_str().unwrap_or_default().to_owned(),
        );
        if upload.index.is_some() {
            annotations.insert(BUNDLE_SHA256.to_owned(), sidecar.hex().to_owned());
        }
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
            config: OciDescriptor {
                media_type: CONFIG_TYPE.into(),
                digest: config_digest,
                size: metadata.len() as i64,
                ..Default::default()
            },
            layers,
            subject: None,
            artifact_type: Some(ARTIFACT_TYPE.into()),
            annotations: Some(annotations),
        };
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
        self.check_realm().await?;
        let r = self.reference(cluster, name)?;
        let m = self.manifest(&r).await?.ok_or_else(|| Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        })?;
        let metadata = self.config(&r, &m).await?;
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
        self.check_realm().await?;
        let r = self.reference(cluster, name)?;
        let m = self.manifest(&r).await?.ok_or_else(|| Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        })?;
        let metadata = self.config(&r, &m).await?;
        if let Some(index) = self.index_of(name, &m)? {
            let source = OciMembers {
                store: self,
                r: r.clone(),
            };
            let integrity = |message: String| Error::Integrity {
                remote: self.description.clone(),
                name: name.to_string(),
                message,
            };
            let (actual, moved) = crate::members::assemble(&index, local, &source, dest, progress, &integrity).await?;
            if actual != index.sha256 {
                return Err(integrity(format!(
                    "sha256 mismatch: manifest={}, downloaded={actual}",
                    index.sha256
                )));
            }
            let sha = crate::Sha256::parse(&actual).ok_or_else(|| integrity("bad digest".into()))?;
            return Ok(Fetched {
                sidecar: crate::Sidecar::new(sha, format!("{name}.tar.gz")).line(),
                metadata,
                sha256: actual,
                size: index.size,
                index: Some(index),
                moved,
            });
        }
        let layer = m.layers.first().ok_or_else(|| Error::NotFound {
            cluster: cluster.to_string(),
            name: name.to_string(),
        })?;
        let integrity = |message: String| Error::Integrity {
            remote: self.description.clone(),
            name: name.to_string(),
            message,
        };
        // The bundle's sha256 is its sidecar: other digest algorithms cannot name a bundle.
        let expected = layer
            .digest
            .starts_with("sha256:")
            .then(|| crate::Sha256::parse(&layer.digest))
            .flatten()
            .ok_or_else(|| {
                integrity(format!(
                    "the bundle layer's digest {:?} is not a sha256 digest",
                    layer.digest
                ))
            })?;
        let declared = u64::try_from(layer.size).unwrap_or(0);
        // oci-client's stream hashes what it yields and ends with an error unless it matches the layer digest.
        let mut stream = self
            .client
            .pull_blob_stream(&r, layer)
            .await
            .map_err(|e| self.err("downloading the bundle", e))?
            .stream;
        let file = crate::local::create_private_file(dest)
            .map(tokio::fs::File::from_std)
            .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                // oci-client verifies the digest at the end of the stream and reports a mismatch as an
                // io::Error wrapping its DigestError.
                if e.get_ref()
                    .is_some_and(|inner| inner.is::<oci_client::errors::DigestError>())
                {
                    integrity(e.to_string())
                } else {
                    Error::io("downloading the bundle", e)
                }
            })?;
            size += chunk.len() as u64;
            if size > declared {
                // Before the digest could say so: a registry must not fill the disk.
                return Err(integrity(format!(
                    "the registry sent more than the {declared} bytes the manifest declares"
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
            progress(chunk.len() as u64);
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e))?;
        if size != declared {
            return Err(integrity(format!(
                "{size} bytes downloaded, the manifest declares {declared}"
            )));
        }
        Ok(Fetched {
            sidecar: crate::Sidecar::new(expected.clone(), format!("{name}.tar.gz")).line(),
            metadata,
            sha256: expected.to_string(),
            size,
            index: None,
            moved: Moved {
                transferred: size,
                members_transferred: 1,
                ..Moved::default()
            },
        })
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
    fn next_links() {
        assert_eq!(
            next_link(r#"</v2/r/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/r/tags/list?n=2&last=b")
        );
        assert_eq!(
            next_link(r#"</a?last=x>; rel="prev", <https://reg/b?n=1,2>; rel="next""#).as_deref(),
            Some("https://reg/b?n=1,2")
        );
        assert_eq!(
            next_link(r#"<https://reg/c>; title="x"; rel=next"#).as_deref(),
            Some("https://reg/c")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(next_link(""), None);
    }

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
