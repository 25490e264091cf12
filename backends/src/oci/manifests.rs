//! A snapshot's manifest and metadata (its config blob), read and checked: the manifest is untrusted.

use std::time::Duration;

use backon::Retryable;

use super::*;

impl OciStore {
    /// Our manifest for a snapshot, or `None` when the tag does not exist.
    pub(super) async fn manifest(&self, r: &Reference) -> Result<Option<OciImageManifest>, Error> {
        use oci_client::errors::OciDistributionError as E;
        // A read is retried like an upload: a proxy that refused a request may have closed the pooled
        // connection the next request goes out on.
        let read = || self.client.pull_manifest(r, &self.auth);
        let read = read
            .retry(crate::retry::attempts(Duration::from_millis(400), UPLOAD_ATTEMPTS))
            .when(transient)
            .await;
        match read {
            Ok((OciManifest::Image(m), _)) if m.artifact_type.as_deref() == Some(ARTIFACT_TYPE) => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if not_found_like(&e) => Ok(None),
            // A tag whose manifest is not one a registry client can read: not usable, but listed so that it can
            // be deleted.
            Err(
                e @ (E::ManifestParsingError(_)
                | E::JsonError(_)
                | E::ManifestEncodingError(_)
                | E::UnsupportedMediaTypeError(_)
                | E::UnsupportedSchemaVersionError(_)
                | E::VersionedParsingError(_)),
            ) => Err(Error::Unrecognized {
                remote: self.description.clone(),
                object: r.to_string(),
                reason: format!("manifest cannot be read: {}", crate::chain(&e)),
            }),
            Err(e) => Err(self.err("reading the manifest", e)),
        }
    }

    pub(super) async fn config(&self, r: &Reference, m: &OciImageManifest) -> Result<Vec<u8>, Error> {
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

    pub(super) fn snapshot(&self, name: SnapshotName, m: &OciImageManifest, metadata: Vec<u8>) -> RemoteSnapshot {
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
    pub(super) fn index_of(&self, name: &SnapshotName, m: &OciImageManifest) -> Result<Option<BundleIndex>, Error> {
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
}

/// A snapshot's manifest: the metadata as its config, its layers, and annotations that name it (cluster,
/// snapshot, Kubernetes version, creation time as RFC 3339: the metadata's, else now) and, for a schema-2
/// snapshot, the whole bundle's sha256.
pub(super) fn snapshot_manifest(
    (cluster, name): (&ClusterName, &SnapshotName),
    metadata: &[u8],
    config_digest: String,
    layers: Vec<OciDescriptor>,
    bundle_sha256: Option<&str>,
) -> OciImageManifest {
    let meta: serde_json::Value = serde_json::from_slice(metadata).unwrap_or_default();
    let created = meta["created"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let mut annotations = BTreeMap::from([
        ("org.opencontainers.image.created".to_owned(), created.to_string()),
        ("io.kubectl-snapshot.cluster".to_owned(), cluster.to_string()),
        ("io.kubectl-snapshot.snapshot".to_owned(), name.to_string()),
        (
            "io.kubectl-snapshot.k8s-version".to_owned(),
            meta["k8sVersion"].as_str().unwrap_or_default().to_owned(),
        ),
    ]);
    if let Some(sha) = bundle_sha256 {
        annotations.insert(BUNDLE_SHA256.to_owned(), sha.to_owned());
    }
    OciImageManifest {
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
    }
}
