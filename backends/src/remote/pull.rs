//! Pulling a snapshot: a schema-1 bundle by ranged GETs, a schema-2 snapshot's members from the shared blobs.

use super::*;

impl ObjectSnapshotStore {
    /// Downloads a schema-1 bundle: ranged GETs, several in flight, consumed in order.
    pub(super) async fn get_whole(
        &self,
        c: &str,
        n: &str,
        head: &RemoteSnapshot,
        dest: &Path,
        progress: OnBytes<'_>,
    ) -> Result<(String, u64), Error> {
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
        Ok((hex::encode(hasher.finalize()), size))
    }
}

/// Members of a schema-2 snapshot, from the shared blobs.
pub(super) struct Blobs {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) keys: std::collections::HashMap<String, Key>,
    pub(super) description: String,
}

impl Blobs {
    pub(super) fn key(&self, m: &Member) -> Key {
        self.keys
            .get(&m.sha256)
            .cloned()
            .unwrap_or_else(|| Key::from(m.sha256.as_str()))
    }

    pub(super) fn err(&self, e: object_store::Error) -> Error {
        Error::Request {
            remote: self.description.clone(),
            op: "downloading a member".into(),
            cause: Box::new(e),
        }
    }
}

#[async_trait]
impl MemberSource for Blobs {
    async fn fetch(&self, m: &Member) -> Result<bytes::Bytes, Error> {
        self.store
            .get_range(&self.key(m), 0..m.size)
            .await
            .map_err(|e| self.err(e))
    }

    async fn stream(
        &self,
        m: &Member,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<bytes::Bytes, Error>>, Error> {
        let key = self.key(m);
        let store = Arc::clone(&self.store);
        let description = self.description.clone();
        let size = m.size;
        let ranges: Vec<std::ops::Range<u64>> = (0..size.div_ceil(RANGE_SIZE))
            .map(|i| i * RANGE_SIZE..((i + 1) * RANGE_SIZE).min(size))
            .collect();
        Ok(futures_util::stream::iter(ranges)
            .map(move |r| {
                let key = key.clone();
                let store = Arc::clone(&store);
                let description = description.clone();
                async move {
                    store.get_range(&key, r).await.map_err(|e| Error::Remote {
                        remote: description,
                        message: format!("downloading a member: {e}"),
                    })
                }
            })
            .buffered(RANGES_IN_FLIGHT)
            .boxed())
    }
}
