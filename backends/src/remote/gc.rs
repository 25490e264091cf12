//! Garbage collection of the shared blobs, and the wait a push makes while one runs (see the module docs
//! of [`super`]).

use super::*;

impl ObjectSnapshotStore {
    /// Waits while a garbage collection that started before `now` (the store's clock) runs.
    pub(super) async fn wait_for_collections(&self, now: std::time::SystemTime) -> Result<(), Error> {
        /// Why the wait goes on, or ends.
        enum Wait {
            Running(object_store::path::Path, std::time::SystemTime),
            Failed(Error),
        }
        let check = || async {
            match self.running_collection(now).await {
                Ok(None) => Ok(()),
                Ok(Some((key, at))) => Err(Wait::Running(key, at)),
                Err(e) => Err(Wait::Failed(e)),
            }
        };
        let waited = check
            .retry(crate::retry::poll(std::time::Duration::from_millis(500), GC_WAIT))
            .when(|w| matches!(w, Wait::Running(..)))
            .await;
        match waited {
            Ok(()) => Ok(()),
            Err(Wait::Failed(e)) => Err(e),
            Err(Wait::Running(key, at)) => Err(Error::Remote {
                remote: self.description.clone(),
                message: format!(
                    "a garbage collection started at {} is still running; push again when it ends (if none runs, \
                     remove {key}; marks older than {} minutes are ignored)",
                    jiff::Timestamp::try_from(at).map(|t| t.to_string()).unwrap_or_default(),
                    GC_STALE.as_secs() / 60
                ),
            }),
        }
    }

    /// The mark of a garbage collection that started before `now` and is not stale, if one runs.
    pub(super) async fn running_collection(
        &self,
        now: std::time::SystemTime,
    ) -> Result<Option<(object_store::path::Path, std::time::SystemTime)>, Error> {
        let mut marks = self.store.list(Some(&self.key(&[GC_MARKS])));
        let mut running = None;
        while let Some(item) = marks.next().await {
            let meta = match item {
                Ok(meta) => meta,
                // A name object_store cannot represent (a control character, a `..` segment) is not ours.
                Err(object_store::Error::InvalidPath { .. }) => continue,
                Err(e) => return Err(self.err("listing collection marks", e)),
            };
            let at = std::time::SystemTime::from(meta.last_modified);
            let age = now.duration_since(at).unwrap_or_default();
            if age < GC_STALE {
                running = Some((meta.location, at));
            }
        }
        Ok(running)
    }

    /// Lists the folder once (after the mark), reads every index, removes the blobs none names.
    pub(super) async fn collect(
        &self,
        deleting: &[(ClusterName, SnapshotName)],
        dry_run: bool,
    ) -> Result<Collected, Error> {
        let base = self.folder.split('/').filter(|s| !s.is_empty()).count();
        let mut indexes = Vec::new();
        let mut blobs = Vec::new();
        let root = self.key(&[]);
        let mut all = self.store.list(if base == 0 { None } else { Some(&root) });
        while let Some(item) = all.next().await {
            let meta = match item {
                Ok(meta) => meta,
                // A name object_store cannot represent (a control character, a `..` segment) is not ours.
                Err(object_store::Error::InvalidPath { .. }) => continue,
                Err(e) => return Err(self.err("listing", e)),
            };
            let parts: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_owned()).collect();
            match &parts[base.min(parts.len())..] {
                [b, algo, hex] if b == BLOBS && algo == "sha256" && crate::Sha256::parse(hex).is_some() => {
                    blobs.push((hex.clone(), meta.size));
                }
                [c, n, file] if file == INDEX => {
                    let gone = deleting.iter().any(|(dc, dn)| dc.as_str() == c && dn.as_str() == n);
                    if !gone {
                        indexes.push(meta.location.clone());
                    }
                }
                _ => {}
            }
        }
        let mut referenced = std::collections::HashSet::new();
        for key in &indexes {
            // An index that cannot be read might name any blob: nothing is collected, and the command that
            // asked goes on (its snapshot is listed as unreadable; deleting it lets the next collection run).
            let index = match self.small(key).await {
                Ok(Some(bytes)) => BundleIndex::parse(&bytes).map_err(|e| e.to_string()),
                Ok(None) => continue,
                Err(e @ Error::Unrecognized { .. }) => Err(e.reason()),
                Err(e) => return Err(e),
            };
            match index {
                Ok(index) => referenced.extend(index.members.into_iter().map(|m| m.sha256)),
                Err(reason) => {
                    return Ok(Collected {
                        note: Some(format!(
                            "every blob is kept: the member index {key} cannot be read ({reason}); \
                             once that snapshot is deleted, the next prune or delete collects"
                        )),
                        ..Collected::default()
                    });
                }
            }
        }
        let (unreferenced, kept): (Vec<_>, Vec<_>) = blobs.into_iter().partition(|(hex, _)| !referenced.contains(hex));
        if !dry_run {
            let keys: Vec<Key> = unreferenced.iter().map(|(hex, _)| self.blob_key(hex)).collect();
            let mut deletes = futures_util::stream::iter(keys)
                .map(|key| {
                    let store = Arc::clone(&self.store);
                    async move {
                        match store.delete(&key).await {
                            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffer_unordered(HEADS_IN_FLIGHT);
            while let Some(r) = deletes.next().await {
                r.map_err(|e| self.err("removing an unreferenced blob", e))?;
            }
        }
        Ok(Collected {
            blobs: unreferenced,
            kept: kept.len(),
            note: None,
        })
    }
}
