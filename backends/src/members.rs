//! The member index of a schema-2 bundle: the `.tar.gz` cut into gzip-member runs aligned to tar entries
//! (each image blob, the etcd snapshot, each PV root in chunks, the metadata), each named by the sha256 of its
//! compressed bytes. Members are written deterministically, so the same blob is the same member in every
//! bundle: remotes store members content-addressed and move only the ones the other side lacks.
//!
//! The index is untrusted when it comes from a remote: [`BundleIndex::parse`] checks that the members tile
//! the bundle exactly (contiguous from 0, nothing empty, sizes summing to the bundle's), that every digest is
//! a sha256, and bounds their number, before anything is downloaded or written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Sha256;

/// Reports bytes moved, for progress bars.
pub type OnBytes<'a> = &'a (dyn Fn(u64) + Send + Sync);

/// The index's own schema version.
pub const INDEX_VERSION: u32 = 1;
/// The most members an index may list (a bundle of 100 000 files groups them into far fewer).
pub const MAX_MEMBERS: usize = 200_000;

/// One member: bytes `offset..offset+size` of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    pub offset: u64,
    pub size: u64,
    /// sha256 of the member's compressed bytes (no prefix).
    pub sha256: String,
    /// The first tar entry the member holds (`images/blobs/sha256/<hex>`, `etcd/snapshot.db`, a PV path,
    /// `metadata.json`).
    pub holds: String,
    /// How many tar entries start in it.
    pub entries: u64,
}

/// `<snapshot>.index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BundleIndex {
    pub index_version: u32,
    /// sha256 and size of the whole bundle (the sidecar's digest).
    pub sha256: String,
    pub size: u64,
    pub members: Vec<Member>,
}

/// Why an index was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid member index: {0}")]
pub struct InvalidIndex(pub String);

impl BundleIndex {
    /// Parses and checks an index (from a remote or a local file).
    pub fn parse(bytes: &[u8]) -> Result<Self, InvalidIndex> {
        if bytes.len() as u64 > crate::SMALL_FILE_MAX {
            return Err(InvalidIndex(format!("{} bytes", bytes.len())));
        }
        let index: Self = serde_json::from_slice(bytes).map_err(|e| InvalidIndex(e.to_string()))?;
        index.check()?;
        Ok(index)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The members tile `0..size` exactly, each is non-empty and named by a sha256.
    pub fn check(&self) -> Result<(), InvalidIndex> {
        if self.index_version != INDEX_VERSION {
            return Err(InvalidIndex(format!(
                "indexVersion {} (this build reads {INDEX_VERSION}); upgrade kubectl-snapshot",
                self.index_version
            )));
        }
        if Sha256::parse(&self.sha256).is_none_or(|s| s.hex() != self.sha256) {
            return Err(InvalidIndex(format!("bundle digest {:?}", self.sha256)));
        }
        if self.members.is_empty() || self.members.len() > MAX_MEMBERS {
            return Err(InvalidIndex(format!("{} members", self.members.len())));
        }
        let mut at = 0u64;
        let mut sizes = HashMap::new();
        for (i, m) in self.members.iter().enumerate() {
            if *sizes.entry(m.sha256.as_str()).or_insert(m.size) != m.size {
                return Err(InvalidIndex(format!("member {i} repeats a digest with another size")));
            }
            if m.offset != at || m.size == 0 {
                return Err(InvalidIndex(format!(
                    "member {i} is at {}+{}, expected at {at} and not empty",
                    m.offset, m.size
                )));
            }
            if Sha256::parse(&m.sha256).is_none_or(|s| s.hex() != m.sha256) {
                return Err(InvalidIndex(format!("member {i} digest {:?}", m.sha256)));
            }
            at = at
                .checked_add(m.size)
                .ok_or_else(|| InvalidIndex("sizes overflow".into()))?;
        }
        if at != self.size {
            return Err(InvalidIndex(format!(
                "members cover {at} bytes, the bundle is {}",
                self.size
            )));
        }
        Ok(())
    }

    /// Distinct members in first-use order.
    pub fn distinct(&self) -> Vec<&Member> {
        let mut seen = std::collections::HashSet::new();
        self.members.iter().filter(|m| seen.insert(&m.sha256)).collect()
    }
}

/// Where a member's bytes can be copied from locally: a bundle file and an offset.
#[derive(Debug, Clone)]
pub struct LocalMember {
    pub bundle: PathBuf,
    pub offset: u64,
    pub size: u64,
}

/// Members that local bundles hold, by sha256: what a pull copies instead of downloading. Each copy is
/// verified against the digest (a local file may have changed since its index was written).
#[derive(Debug, Clone, Default)]
pub struct LocalMembers(HashMap<String, LocalMember>);

impl LocalMembers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the members of `bundle` described by `index` (ignored when the file's size disagrees).
    pub fn add(&mut self, bundle: &Path, index: &BundleIndex) {
        if std::fs::metadata(bundle).map(|m| m.len()).ok() != Some(index.size) {
            return;
        }
        for m in &index.members {
            self.0.entry(m.sha256.clone()).or_insert_with(|| LocalMember {
                bundle: bundle.to_owned(),
                offset: m.offset,
                size: m.size,
            });
        }
    }

    pub fn get(&self, sha256: &str) -> Option<&LocalMember> {
        self.0.get(sha256)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Members at most this large are fetched whole, several at once; larger ones are streamed.
pub(crate) const SMALL_MEMBER: u64 = 4 << 20;
/// Small members fetched ahead of the one being written: memory stays under SMALL_MEMBER × this.
const PREFETCH: usize = 8;

/// Bytes a transfer moved and bytes it did not have to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// Sent or downloaded.
    pub transferred: u64,
    /// Already on the other side (push), or copied from a local bundle (pull).
    pub reused: u64,
    /// Members transferred and members reused.
    pub members_transferred: u64,
    pub members_reused: u64,
}

/// Where a pull gets the members no local bundle holds.
#[async_trait::async_trait]
pub(crate) trait MemberSource: Send + Sync {
    /// A small member, whole.
    async fn fetch(&self, m: &Member) -> Result<bytes::Bytes, crate::Error>;
    /// A member as a stream of chunks.
    async fn stream(
        &self,
        m: &Member,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<bytes::Bytes, crate::Error>>, crate::Error>;
}

/// Writes the bundle `index` describes into `dest` (created, 0600): each member copied from a local bundle
/// that holds it (verified first) or else taken from `source` (verified as it arrives, never more than its
/// declared size). Returns the sha256 of what was written; the caller compares it with the sidecar.
pub(crate) async fn assemble(
    index: &BundleIndex,
    local: &LocalMembers,
    source: &dyn MemberSource,
    dest: &Path,
    progress: OnBytes<'_>,
    integrity: &(dyn Fn(String) -> crate::Error + Send + Sync),
) -> Result<(String, Moved), crate::Error> {
    use futures_util::StreamExt;

    let mut out = Assembly::create(dest)?;
    let mut moved = Moved::default();
    // Small members no local bundle holds are fetched ahead; the others are copied or streamed in turn.
    let plans: Vec<(Member, Option<LocalMember>)> = index
        .members
        .iter()
        .map(|m| (m.clone(), local.get(&m.sha256).filter(|l| l.size == m.size).cloned()))
        .collect();
    let mut plan = futures_util::stream::iter(plans)
        .map(|(m, from_local): (Member, Option<LocalMember>)| async move {
            let pre = match (&from_local, m.size <= SMALL_MEMBER) {
                (None, true) => Some(source.fetch(&m).await),
                _ => None,
            };
            (m, from_local, pre)
        })
        .buffered(PREFETCH);
    while let Some((m, from_local, mut pre)) = plan.next().await {
        if let Some(l) = from_local {
            if out.copy_local(&m, &l).await? {
                progress(m.size);
                moved.reused += m.size;
                moved.members_reused += 1;
                continue;
            }
            if m.size <= SMALL_MEMBER {
                pre = Some(source.fetch(&m).await);
            }
        }
        let chunks = match pre {
            Some(whole) => futures_util::stream::once(async { whole }).boxed(),
            None => source.stream(&m).await?,
        };
        let (got, actual) = out.receive(&m, chunks, progress, integrity).await?;
        moved.transferred += got;
        moved.members_transferred += 1;
        if got != m.size || actual != m.sha256 {
            return Err(integrity(format!(
                "member {} ({}) arrived as {got} bytes with sha256 {actual}",
                m.sha256, m.holds
            )));
        }
    }
    out.finish(moved).await
}

/// The bundle being assembled, and the sha256 of all it holds so far.
struct Assembly {
    out: tokio::io::BufWriter<tokio::fs::File>,
    total: sha2::Sha256,
    dest: std::path::PathBuf,
}

impl Assembly {
    fn create(dest: &Path) -> Result<Self, crate::Error> {
        use sha2::Digest;
        let file = crate::local::create_private_file(dest)
            .map(tokio::fs::File::from_std)
            .map_err(|e| crate::Error::io(format!("creating {}", dest.display()), e))?;
        Ok(Assembly {
            out: tokio::io::BufWriter::with_capacity(1 << 20, file),
            total: sha2::Sha256::new(),
            dest: dest.to_owned(),
        })
    }

    fn write_err(&self, e: std::io::Error) -> crate::Error {
        crate::Error::io(format!("writing {}", self.dest.display()), e)
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), crate::Error> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        self.total.update(bytes);
        let written = self.out.write_all(bytes).await;
        written.map_err(|e| self.write_err(e))
    }

    /// Member `m` copied from a local bundle and hashed in one pass. A copy that no longer matches its digest
    /// (the local file changed) is cut off again: `false`, and the member is to be downloaded instead.
    async fn copy_local(&mut self, m: &Member, l: &LocalMember) -> Result<bool, crate::Error> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let before = self.total.clone();
        let read_err = |e| crate::Error::io(format!("reading {}", l.bundle.display()), e);
        let mut f = tokio::fs::File::open(&l.bundle).await.map_err(read_err)?;
        tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(l.offset))
            .await
            .map_err(read_err)?;
        let mut f = tokio::io::AsyncReadExt::take(f, l.size);
        let mut buf = vec![0u8; 1 << 20];
        let (mut member, mut got) = (sha2::Sha256::new(), 0u64);
        loop {
            let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
                .await
                .map_err(read_err)?;
            if n == 0 {
                break;
            }
            member.update(&buf[..n]);
            self.write(&buf[..n]).await?;
            got += n as u64;
        }
        if got == m.size && hex::encode(member.finalize()) == m.sha256 {
            return Ok(true);
        }
        self.total = before;
        let cut: std::io::Result<()> = async {
            self.out.flush().await?;
            self.out.get_ref().set_len(m.offset).await?;
            tokio::io::AsyncSeekExt::seek(&mut self.out, std::io::SeekFrom::Start(m.offset)).await?;
            Ok(())
        }
        .await;
        cut.map_err(|e| self.write_err(e))?;
        Ok(false)
    }

    /// Member `m` from the remote's chunks, never more than its declared size. Returns the bytes received and
    /// their sha256.
    async fn receive(
        &mut self,
        m: &Member,
        mut chunks: futures_util::stream::BoxStream<'_, Result<bytes::Bytes, crate::Error>>,
        progress: OnBytes<'_>,
        integrity: &(dyn Fn(String) -> crate::Error + Send + Sync),
    ) -> Result<(u64, String), crate::Error> {
        use futures_util::StreamExt;
        use sha2::Digest;
        let (mut member, mut got) = (sha2::Sha256::new(), 0u64);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            got += chunk.len() as u64;
            if got > m.size {
                return Err(integrity(format!(
                    "member {} is larger than the {} bytes the index declares",
                    m.sha256, m.size
                )));
            }
            member.update(&chunk);
            self.write(&chunk).await?;
            progress(chunk.len() as u64);
        }
        Ok((got, hex::encode(member.finalize())))
    }

    /// Flushed and synced; the sha256 of the whole.
    async fn finish(mut self, moved: Moved) -> Result<(String, Moved), crate::Error> {
        use sha2::Digest;
        use tokio::io::AsyncWriteExt;
        let synced: std::io::Result<()> = async {
            self.out.flush().await?;
            self.out.get_ref().sync_all().await
        }
        .await;
        synced.map_err(|e| self.write_err(e))?;
        Ok((hex::encode(self.total.finalize()), moved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(sizes: &[u64]) -> BundleIndex {
        let mut at = 0;
        let members = sizes
            .iter()
            .map(|&s| {
                let m = Member {
                    offset: at,
                    size: s,
                    sha256: format!("{s:064x}"),
                    holds: "x".into(),
                    entries: 1,
                };
                at += s;
                m
            })
            .collect();
        BundleIndex {
            index_version: INDEX_VERSION,
            sha256: "cd".repeat(32),
            size: at,
            members,
        }
    }

    #[test]
    fn a_valid_index_round_trips() {
        let i = index(&[10, 20, 5]);
        assert_eq!(BundleIndex::parse(&i.to_json()).unwrap(), i);
        assert_eq!(index(&[10, 20, 10]).distinct().len(), 2);
    }

    #[test]
    fn hostile_indexes_are_refused() {
        let mut gap = index(&[10, 20]);
        gap.members[1].offset = 11;
        let mut empty = index(&[10, 20]);
        empty.members.push(Member {
            offset: 30,
            size: 0,
            ..empty.members[0].clone()
        });
        let mut short = index(&[10, 20]);
        short.size = 31;
        let mut digest = index(&[10]);
        digest.members[0].sha256 = "../../etc/passwd".into();
        let mut upper = index(&[10]);
        upper.members[0].sha256 = "AB".repeat(32);
        let mut version = index(&[10]);
        version.index_version = 9;
        let mut resized = index(&[10, 20]);
        resized.members[1].sha256 = resized.members[0].sha256.clone();
        let mut overflow = index(&[10, 20]);
        overflow.members[1].size = u64::MAX;
        for (what, bad) in [
            ("gap", gap),
            ("empty member", empty),
            ("size mismatch", short),
            ("path as digest", digest),
            ("uppercase digest", upper),
            ("newer version", version),
            ("overflow", overflow),
            ("one digest, two sizes", resized),
        ] {
            assert!(BundleIndex::parse(&bad.to_json()).is_err(), "{what} accepted");
        }
        assert!(BundleIndex::parse(br#"{"indexVersion":1,"sha256":"","size":0,"members":[],"extra":1}"#).is_err());
    }
}
