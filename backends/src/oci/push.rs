//! Pushing a snapshot's members: mounted from sibling repositories or uploaded, each verified by the registry.

use backon::Retryable;

use super::*;

impl OciStore {
    /// The member digests that the manifests of (up to [`MAX_MANIFESTS_READ`]) tags in `r`'s repository name; empty
    /// when they cannot be read.
    pub(super) async fn layers_in_repository(&self, r: &Reference) -> std::collections::HashSet<String> {
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
    pub(super) async fn siblings(&self, own: &str) -> Vec<String> {
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
    pub(super) async fn mount_from_siblings(
        &self,
        r: &Reference,
        members: &[Member],
    ) -> std::collections::HashSet<String> {
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
    pub(super) async fn upload_blob(
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
        let attempt = std::sync::atomic::AtomicU32::new(1);
        let send = || self.upload(r, bundle, offset, digest, size, &reported, progress);
        let sent = send
            .retry(crate::retry::attempts(
                std::time::Duration::from_secs(1),
                UPLOAD_ATTEMPTS,
            ))
            .when(transient)
            .notify(|_, _| {
                attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .await;
        match sent {
            Ok(()) => Ok(()),
            Err(e) if registry_code(&e, oci_client::errors::OciErrorCode::DigestInvalid) => Err(Error::Integrity {
                remote: self.description.clone(),
                name: name.to_string(),
                message: "the local bundle does not match its sidecar; nothing was published".into(),
            }),
            Err(oci_client::errors::OciDistributionError::ServerError { code: 413, .. }) => Err(Error::Remote {
                remote: self.description.clone(),
                message: format!(
                    "the registry, or a proxy in front of it, refuses a request body of {size} bytes (HTTP 413): \
                     raise its limit on request size (nginx: client_max_body_size 0)"
                ),
            }),
            Err(e) => {
                let attempt = attempt.load(std::sync::atomic::Ordering::Relaxed);
                Err(self.err(
                    &format!("uploading the bundle (attempt {attempt} of {UPLOAD_ATTEMPTS})"),
                    e,
                ))
            }
        }
    }

    /// Each distinct member of `index`, and whether the registry holds it: named by a manifest of the
    /// repository's other snapshots (the registry refuses a manifest whose blobs it lacks, so they are there),
    /// said by the registry, or mounted from a sibling repository now.
    async fn members_present(&self, r: &Reference, index: &BundleIndex) -> Vec<(Member, bool)> {
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
        checks
            .into_iter()
            .map(|(m, exists)| {
                let here = exists || mounted.contains(&m.sha256);
                (m, here)
            })
            .collect()
    }

    /// The layers of a schema-2 bundle: the members the registry lacks are uploaded, after the whole bundle is
    /// checked against its sidecar.
    pub(super) async fn put_members(
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
        let checks = self.members_present(r, index).await;
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

    /// A schema-1 push: the bundle as one layer, uploaded unless the registry holds it already.
    pub(super) async fn put_whole(
        &self,
        r: &Reference,
        name: &SnapshotName,
        (bundle, size): (&Path, u64),
        digest: &str,
        progress: OnBytes<'_>,
    ) -> Result<(Vec<OciDescriptor>, Moved), Error> {
        let mut moved = Moved::default();
        if self.client.blob_exists(r, digest).await.unwrap_or(false) {
            progress(size);
            moved.reused = size;
            moved.members_reused = 1;
        } else {
            self.upload_blob(r, name, bundle, 0, size, digest, progress).await?;
            moved.transferred = size;
            moved.members_transferred = 1;
        }
        let layer = OciDescriptor {
            media_type: BUNDLE_TYPE.into(),
            digest: digest.to_owned(),
            size: size as i64,
            annotations: Some(BTreeMap::from([(
                "org.opencontainers.image.title".to_owned(),
                format!("{name}.tar.gz"),
            )])),
            ..Default::default()
        };
        Ok((vec![layer], moved))
    }
}
