//! Pushing a snapshot: its members (schema 2, content-addressed, only those the remote lacks) or its one
//! bundle (schema 1), each checked against its digest before it becomes visible.

use super::*;

impl ObjectSnapshotStore {
    /// Uploads a bundle without an index as one object (schema 1), checked against the sidecar's digest.
    pub(super) async fn put_whole(
        &self,
        c: &str,
        n: &str,
        bundle: &Path,
        expected: &str,
        progress: OnBytes<'_>,
    ) -> Result<Moved, Error> {
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
        let size = std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0);
        Ok(Moved {
            transferred: size,
            members_transferred: 1,
            ..Moved::default()
        })
    }

    /// The member index, published first (from then on a garbage collection keeps every member it names) once
    /// the bundle, its sidecar and the index agree; a collection already running is waited for. Returns its key.
    pub(super) async fn publish_index(
        &self,
        c: &str,
        name: &SnapshotName,
        upload: &Upload<'_>,
        index: &BundleIndex,
        expected: &str,
    ) -> Result<Key, Error> {
        let n = name.as_str();
        let size = std::fs::metadata(upload.bundle)
            .map_err(|e| Error::io(format!("reading {}", upload.bundle.display()), e))?
            .len();
        if index.sha256 != expected || index.size != size || index.check().is_err() {
            return Err(self.integrity(
                name,
                "the local bundle, its sidecar and its member index disagree; nothing was published".into(),
            ));
        }
        // An interrupted schema-1 push of this name is replaced.
        let _ = self.store.delete(&self.key(&[c, n, BUNDLE])).await;
        let index_key = self.key(&[c, n, INDEX]);
        self.store
            .put(&index_key, PutPayload::from(index.to_json()))
            .await
            .map_err(|e| self.err("uploading the member index", e))?;
        let now = match self.store.head(&index_key).await {
            Ok(meta) => std::time::SystemTime::from(meta.last_modified),
            Err(e) => return Err(self.err("uploading the member index", e)),
        };
        self.wait_for_collections(now).await?;
        Ok(index_key)
    }

    /// The members of `index` the remote holds already (an object of another size is not that member).
    pub(super) async fn present_members(
        &self,
        index: &BundleIndex,
    ) -> Result<std::collections::HashSet<String>, Error> {
        let keys: Vec<(String, u64, Key)> = (index.distinct().iter())
            .map(|m| (m.sha256.clone(), m.size, self.blob_key(&m.sha256)))
            .collect();
        let mut checks = futures_util::stream::iter(keys)
            .map(|(sha, size, key)| {
                let store = Arc::clone(&self.store);
                async move {
                    match store.head(&key).await {
                        Ok(meta) => Ok((sha, meta.size == size)),
                        Err(object_store::Error::NotFound { .. }) => Ok((sha, false)),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(HEADS_IN_FLIGHT);
        let mut present = std::collections::HashSet::new();
        while let Some(check) = checks.next().await {
            let (sha, exists) = check.map_err(|e| self.err("checking which members exist", e))?;
            if exists {
                present.insert(sha);
            }
        }
        Ok(present)
    }

    /// Uploads the members the remote lacks, reading the bundle once: every member is hashed (a member is
    /// stored only under its own digest), and so is the whole bundle (checked against the sidecar).
    pub(super) async fn put_members(
        &self,
        c: &str,
        name: &SnapshotName,
        upload: &Upload<'_>,
        index: &BundleIndex,
        expected: &str,
        progress: OnBytes<'_>,
    ) -> Result<Moved, Error> {
        let index_key = self.publish_index(c, name, upload, index, expected).await?;
        let present = self.present_members(index).await?;

        // Only the members sent are read (and checked against their digests: a member is only ever stored
        // under its own digest). Those already there are the bytes the index names; a pull checks the whole.
        let mut file = tokio::fs::File::open(upload.bundle)
            .await
            .map_err(|e| Error::io(format!("opening {}", upload.bundle.display()), e))?;
        let read_err = |e| Error::io(format!("reading {}", upload.bundle.display()), e);
        let mut moved = Moved::default();
        let mut sent = std::collections::HashSet::new();
        let mut puts = futures_util::stream::FuturesUnordered::new();
        let mut buf = vec![0u8; 1 << 20];
        for m in &index.members {
            if present.contains(&m.sha256) || !sent.insert(m.sha256.clone()) {
                moved.reused += m.size;
                moved.members_reused += 1;
                progress(m.size);
                continue;
            }
            tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(m.offset))
                .await
                .map_err(read_err)?;
            let mut member = Sha256::new();
            if m.size <= SMALL_MEMBER {
                let mut bytes = vec![0u8; m.size as usize];
                file.read_exact(&mut bytes).await.map_err(read_err)?;
                member.update(&bytes);
                if let Err(e) = self.check_member(name, m, member) {
                    // Nothing of this push is published; its index no longer keeps members from collection.
                    let _ = self.store.delete(&index_key).await;
                    return Err(e);
                }
                while puts.len() >= PUTS_IN_FLIGHT {
                    if let Some(r) = puts.next().await {
                        r?;
                    }
                }
                let key = self.blob_key(&m.sha256);
                puts.push(async move {
                    self.store
                        .put(&key, PutPayload::from(bytes))
                        .await
                        .map_err(|e| self.err("uploading a member", e))
                });
                moved.transferred += m.size;
                moved.members_transferred += 1;
                progress(m.size);
                continue;
            }
            let sent = self
                .send_member(&mut file, (name, m), &mut buf, upload.bundle, progress)
                .await;
            if let Err(e) = sent {
                let _ = self.store.delete(&index_key).await;
                return Err(e);
            }
            moved.transferred += m.size;
            moved.members_transferred += 1;
        }
        while let Some(r) = puts.next().await {
            r?;
        }
        Ok(moved)
    }

    /// A large member streamed from `file` (at its offset) in a multipart upload, completed only when its
    /// bytes match its digest: a mismatch never becomes visible.
    pub(super) async fn send_member(
        &self,
        file: &mut tokio::fs::File,
        (name, m): (&SnapshotName, &Member),
        buf: &mut [u8],
        bundle: &std::path::Path,
        progress: OnBytes<'_>,
    ) -> Result<(), Error> {
        let read_err = |e| Error::io(format!("reading {}", bundle.display()), e);
        let upload = self
            .store
            .put_multipart(&self.blob_key(&m.sha256))
            .await
            .map_err(|e| self.err("starting an upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut member = Sha256::new();
        let streamed: Result<(), Error> = async {
            let mut left = m.size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                file.read_exact(&mut buf[..want]).await.map_err(read_err)?;
                member.update(&buf[..want]);
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.err("uploading a member", e))?;
                writer.write(&buf[..want]);
                left -= want as u64;
                progress(want as u64);
            }
            self.check_member(name, m, member)
        }
        .await;
        match streamed {
            Ok(()) => writer
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| self.err("uploading a member", e)),
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    pub(super) fn check_member(&self, name: &SnapshotName, m: &Member, hasher: Sha256) -> Result<(), Error> {
        let actual = hex::encode(hasher.finalize());
        if actual != m.sha256 {
            return Err(self.integrity(
                name,
                format!(
                    "the local bundle does not match its member index at {} ({}); nothing was published",
                    m.offset, m.holds
                ),
            ));
        }
        Ok(())
    }
}
