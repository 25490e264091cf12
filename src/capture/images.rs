//! Every image in a node's containerd `k8s.io` namespace, for the node's platform (CRI pulls hold one
//! platform's blobs, kind #3795), stored as an OCI layout whose blobs all nodes share:
//! `images/blobs/sha256/<hex>` once, plus each node's `images/nodes/<node>/index.json` naming its images.
//!
//! The node layer says which images exist and what each consists of (index → platform manifest → config and
//! layers); blob bytes are streamed straight from containerd's content store through the archive API, which is
//! several times faster than `ctr images export` and works without a shell in the node. Every blob is checked
//! against its digest.
//!
//! Images pulled by the kubelet have no layer blobs on a kind node: kind's containerd discards them once
//! unpacked (`discard_unpacked_layers = true`). With [`ImagesMode::All`] their layers are fetched from the
//! image's registry inside the node first; an image still incomplete (registry unreachable, or
//! [`ImagesMode::Local`]) is kept *by reference*: named in the metadata, left for the kubelet to pull after a
//! restore, with a warning.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::bundle::metadata::{ImageRef, ImagesMode, NodeImages};
use crate::bundle::{BundleSink, IMAGE_BLOBS_DIR, IMAGE_NODES_DIR};
use crate::cluster::Runtime;
use crate::cluster::node::{self, ImageRecord};
use crate::image_spec;

use super::CaptureError;

/// How long fetching one blob a node lacks from its registry may take.
const FETCH_TIMEOUT_SECS: u64 = 300;
/// How long the registry may take to start serving a blob when asked whether it has it.
const PROBE_TIMEOUT_SECS: u64 = 30;
/// An index or manifest a node lacks is fetched into memory up to this size.
const DOCUMENT_MAX: u64 = 4 << 20;
/// Levels of documents fetched at most (an index of indexes is two).
const FETCH_LEVELS: usize = 4;
/// Blobs up to this size are read ahead, in memory, several per `cat`, while earlier ones are written: each
/// archive read costs a round trip (serialized per node by the runtime) that dwarfs a small blob's bytes.
const PREFETCH_MAX: u64 = 1 << 20;
/// Blobs read ahead and not yet written (memory: at most this many times [`PREFETCH_MAX`]).
const PREFETCH_AHEAD: usize = 4;
/// Small blobs read in one round trip: at most this many bytes and files.
const PREFETCH_BATCH: u64 = 4 << 20;
const PREFETCH_FILES: usize = 64;

/// What one node's images came to.
#[derive(Debug, Default)]
pub struct NodeCapture {
    pub node: String,
    pub images: NodeImages,
    /// Bytes of new (not yet bundled) blobs written.
    pub added: u64,
    /// One line per image kept by reference, saying why.
    pub warnings: Vec<String>,
}

fn check_digest(node: &str, digest: &str, bytes: &[u8]) -> Result<(), CaptureError> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got != digest {
        return Err(CaptureError::BlobMismatch {
            node: node.to_owned(),
            digest: digest.to_owned(),
            got,
        });
    }
    Ok(())
}

/// An image's content for one platform: every blob (digest → media type, size), the documents' bytes, and
/// the digests the content store lacks (`unread`: those of them that are documents, whose children are not
/// known).
#[derive(Default)]
struct Walk {
    blobs: BTreeMap<String, (String, u64)>,
    documents: BTreeMap<String, Vec<u8>>,
    missing: BTreeSet<String>,
    unread: BTreeSet<String>,
}

/// Every image's content, walked level by level (index → manifest → config and layers): each level's
/// documents, for all images at once, read in one round trip straight from the content store `dir`, or taken
/// from `fetched` (documents the node lacks, fetched from their registry). Of an index's entries, the one
/// containerd's CRI pulls for the platform is walked: the best ranked one the node holds, else the best
/// ranked (see [`image_spec::children`]).
async fn walk_all(
    rt: &Runtime,
    node: &str,
    platform: &str,
    dir: &str,
    images: &[&ImageRecord],
    present: &HashSet<String>,
    fetched: &HashMap<String, Vec<u8>>,
) -> Result<Vec<Walk>, CaptureError> {
    let mut walks: Vec<Walk> = images.iter().map(|_| Walk::default()).collect();
    let mut frontier: Vec<(usize, String, String)> = images
        .iter()
        .enumerate()
        .map(|(i, im)| (i, im.digest.clone(), im.media_type.clone()))
        .collect();
    while !frontier.is_empty() {
        let wanted: BTreeSet<&str> = frontier
            .iter()
            .map(|(_, d, _)| d.as_str())
            .filter(|d| present.contains(*d) && !fetched.contains_key(*d))
            .collect();
        let mut read: HashMap<String, Vec<u8>> = HashMap::new();
        let wanted: Vec<&str> = wanted.into_iter().collect();
        for batch in wanted.chunks(PREFETCH_FILES) {
            let paths = batch.iter().map(|d| blob_path(dir, d)).collect::<Result<Vec<_>, _>>()?;
            let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
            let got = node::read_files_sized(rt, node, &refs).await?;
            read.extend(batch.iter().map(|d| d.to_string()).zip(got));
        }
        let mut next = Vec::new();
        for (i, digest, media_type) in frontier {
            let w = &mut walks[i];
            if !present.contains(&digest) && !fetched.contains_key(&digest) {
                w.missing.insert(digest.clone());
                w.unread.insert(digest);
                continue;
            }
            if w.documents.contains_key(&digest) {
                continue;
            }
            let bytes = read
                .get(&digest)
                .or_else(|| fetched.get(&digest))
                .cloned()
                .ok_or_else(|| CaptureError::BlobMissing {
                    node: node.to_owned(),
                    digest: digest.clone(),
                    from: "what was read".into(),
                })?;
            check_digest(node, &digest, &bytes)?;
            let image = &images[i].name;
            let children =
                image_spec::children(&bytes, &media_type, platform).map_err(|reason| CaptureError::BadImage {
                    what: format!("{image} on {node}: {digest}"),
                    reason: reason.to_string(),
                })?;
            w.blobs.insert(digest.clone(), (media_type, bytes.len() as u64));
            w.documents.insert(digest, bytes);
            let pulled = children
                .documents
                .iter()
                .find(|(d, _)| present.contains(d) || fetched.contains_key(d))
                .or(children.documents.first());
            next.extend(pulled.map(|(d, m)| (i, d.clone(), m.clone())));
            for d in children.blobs {
                if !present.contains(&d.digest) {
                    w.missing.insert(d.digest.clone());
                }
                w.blobs.insert(d.digest, (d.media_type, d.size));
            }
        }
        frontier = next;
    }
    Ok(walks)
}

/// Where a blob lives in the content store `dir` (a digest that is not a sha256 is refused: it names a path).
fn blob_path(dir: &str, digest: &str) -> Result<String, CaptureError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(format!("{dir}/{hex}")),
        _ => Err(CaptureError::BadImage {
            what: digest.to_owned(),
            reason: "not a sha256 digest".into(),
        }),
    }
}

/// What a node's images consist of, read before anything is written (nodes are planned concurrently).
pub struct ImagePlan {
    node: String,
    out: NodeCapture,
    needed: BTreeMap<String, (String, u64)>,
    documents: BTreeMap<String, Vec<u8>>,
    /// Blobs the node lacks that its registry serves: digest → the image whose repository has them.
    remote: HashMap<String, String>,
    index_entries: Vec<serde_json::Value>,
    blobs_dir: String,
}

/// What a surveyed node's images consist of (`mode` is `All` or `Local`: with `None` it is not called). With
/// [`ImagesMode::All`], what the node lacks (layers kind's containerd discarded after a pull) is asked of the
/// image's registry by digest, from inside the node: documents are fetched into memory, layers are only
/// checked to be served, and streamed into the bundle when written. Nothing in the node changes.
pub async fn plan_images(
    rt: &Runtime,
    survey: &node::Survey,
    platform: &str,
    mode: ImagesMode,
) -> Result<ImagePlan, CaptureError> {
    let node = survey.node();
    let mut out = NodeCapture::default();
    let (records, config) = (survey.images()?, survey.containerd_config()?);
    let present = survey.content_digests()?;
    let mut needed: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut documents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut remote: HashMap<String, String> = HashMap::new();
    let mut index_entries = Vec::new();
    let mut kept = Vec::new();
    // Every image walked at once; asking registries, rare, is done one image at a time below.
    let dir = config.content_blobs();
    let all: Vec<&ImageRecord> = records.iter().collect();
    let walks = walk_all(rt, node, platform, &dir, &all, &present, &HashMap::new()).await?;
    for (image, w) in records.iter().zip(walks) {
        let mut w = w;
        let mut why = "its layers are not in the node's content store (discarded after a pull) and --images local fetches nothing".to_owned();
        if !w.missing.is_empty() && mode == ImagesMode::All {
            match from_registry(rt, node, platform, &dir, image, &present, w).await {
                Ok(walked) => {
                    remote.extend(walked.missing.iter().map(|d| (d.clone(), image.name.clone())));
                    w = Walk {
                        missing: BTreeSet::new(),
                        ..walked
                    };
                }
                Err((walked, e)) => {
                    w = walked;
                    why = format!("its layers are not in the node and its registry does not serve them: {e}");
                }
            }
        }
        if !w.missing.is_empty() {
            out.warnings.push(format!(
                "{node}: image {} kept by reference: {why}; the kubelet pulls it again after a restore",
                image.name
            ));
            kept.push(ImageRef {
                name: image.name.clone(),
                digest: image.digest.clone(),
                labels: image.labels.clone(),
            });
            continue;
        }
        let size = w.blobs.get(&image.digest).map_or(0, |(_, s)| *s);
        let tag = crate::cluster::addons::split_image(&image.name)
            .1
            .unwrap_or("latest")
            .to_owned();
        index_entries.push(serde_json::json!({
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": size,
            "annotations": { "io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag },
        }));
        needed.extend(w.blobs);
        documents.extend(w.documents);
        out.images.images.push(ImageRef {
            name: image.name.clone(),
            digest: image.digest.clone(),
            labels: image.labels.clone(),
        });
    }

    out.images.by_reference = kept;
    Ok(ImagePlan {
        node: node.to_owned(),
        out,
        needed,
        documents,
        remote,
        index_entries,
        blobs_dir: config.content_blobs(),
    })
}

/// Completes an image's walk from its registry: the documents the node lacks are fetched (level by level),
/// then the registry is asked for every blob still missing, which [`Walk::missing`] then lists. On failure,
/// the walk as far as it got, and why (the registry client's last words).
async fn from_registry(
    rt: &Runtime,
    node: &str,
    platform: &str,
    dir: &str,
    image: &ImageRecord,
    present: &HashSet<String>,
    mut w: Walk,
) -> Result<Walk, (Walk, String)> {
    // Digests become arguments of the registry client: only well-formed sha256 ones are asked for.
    let malformed = |w: &Walk| w.missing.iter().find(|d| blob_path("", d).is_err()).cloned();
    let mut fetched: HashMap<String, Vec<u8>> = HashMap::new();
    for _ in 0..FETCH_LEVELS {
        if let Some(d) = malformed(&w) {
            return Err((w, format!("unsupported digest {d}")));
        }
        if w.unread.is_empty() {
            break;
        }
        for digest in &w.unread {
            match node::fetch_blob_bytes(rt, node, &image.name, digest, DOCUMENT_MAX, FETCH_TIMEOUT_SECS).await {
                Ok(bytes) => fetched.insert(digest.clone(), bytes),
                Err(e) => return Err((w, fetch_failure(&e))),
            };
        }
        w = match walk_all(rt, node, platform, dir, &[image], present, &fetched).await {
            Ok(mut walks) => walks.pop().unwrap_or_default(),
            Err(e) => return Err((w, e.to_string())),
        };
    }
    if !w.unread.is_empty() {
        return Err((w, format!("more than {FETCH_LEVELS} levels of indexes")));
    }
    if let Some(d) = malformed(&w) {
        return Err((w, format!("unsupported digest {d}")));
    }
    let digests: Vec<&str> = w.missing.iter().map(String::as_str).collect();
    match node::registry_serves(rt, node, &image.name, &digests, PROBE_TIMEOUT_SECS).await {
        Ok(()) => Ok(w),
        Err(e) => Err((w, fetch_failure(&e))),
    }
}

/// Streams a planned node's blobs into the bundle (those already in `bundled`, from another node, are not
/// written again), then its image index.
pub async fn write(
    rt: &Runtime,
    reading: Reading,
    sink: &BundleSink,
    bundled: &mut HashSet<String>,
) -> Result<NodeCapture, CaptureError> {
    let Reading {
        node,
        mut out,
        needed,
        remote,
        index_entries,
        dir,
        todo,
        mut rx,
        _ahead,
    } = reading;
    let node = node.as_str();
    for (digest, hex, size) in todo {
        let entry = format!("{IMAGE_BLOBS_DIR}/{hex}");
        let read = rx.recv().await.ok_or_else(|| CaptureError::BlobMissing {
            node: node.to_owned(),
            digest: digest.clone(),
            from: "the node's reads, which stopped".into(),
        })?;
        let written = match read? {
            Some(bytes) => sink.add_bytes(&entry, 0o444, &bytes).await?,
            // Discarded by the node, served by its registry (checked when planned).
            None if let Some(image) = remote.get(&digest) => {
                fetch_into(rt, (node, image, &digest), &entry, size, sink).await?
            }
            None => copy_from_store(rt, (node, &dir), (&digest, &hex), &entry, sink).await?,
        };
        // Content addressing is the integrity check of image data: a blob must hash to its name.
        if written.sha256.as_deref() != Some(hex.as_str()) || written.size != size {
            return Err(CaptureError::BlobMismatch {
                node: node.to_owned(),
                digest: digest.clone(),
                got: format!(
                    "sha256:{} ({} bytes)",
                    written.sha256.as_deref().unwrap_or("?"),
                    written.size
                ),
            });
        }
        bundled.insert(digest);
        out.added += size;
    }
    let index =
        serde_json::json!({ "schemaVersion": 2, "mediaType": image_spec::INDEX_TYPES[0], "manifests": index_entries });
    let index = serde_json::to_vec_pretty(&index).map_err(CaptureError::Metadata)?;
    sink.add_bytes(&format!("{IMAGE_NODES_DIR}/{node}/index.json"), 0o644, &index)
        .await?;

    out.images.blobs = needed.into_keys().collect();
    Ok(out)
}

/// A blob the node discarded, streamed from its image's registry, from inside the node, into the bundle.
async fn fetch_into(
    rt: &Runtime,
    (node, image, digest): (&str, &str, &str),
    entry: &str,
    size: u64,
    sink: &BundleSink,
) -> Result<crate::bundle::writer::EntrySummary, CaptureError> {
    let fetching = |e: crate::cluster::ClusterError| CaptureError::BadImage {
        what: format!("fetching {digest} of {image} from its registry inside {node}"),
        reason: fetch_failure(&e),
    };
    let mut stream = node::fetch_blob_stream(rt, node, image, digest, FETCH_TIMEOUT_SECS)
        .await
        .map_err(fetching)?;
    let added = sink.add_file(entry, size, 0o444, &mut stream).await;
    // The command's own failure says more than a stream that ended short.
    match stream.finish().await {
        // Every byte arrived and only the exit was lost (containerd #8557): the digest, checked by the caller,
        // says whether they are the blob's.
        Err(crate::cluster::ClusterError::LostExit { .. }) if added.is_ok() => {}
        finished => finished.map_err(fetching)?,
    }
    Ok(added?)
}

/// A large blob copied from the node's content store `dir` through the archive API.
async fn copy_from_store(
    rt: &Runtime,
    (node, dir): (&str, &str),
    (digest, hex): (&str, &str),
    entry: &str,
    sink: &BundleSink,
) -> Result<crate::bundle::writer::EntrySummary, CaptureError> {
    let (want, named) = (hex.to_owned(), entry.to_owned());
    let summary = sink
        .add_tar(
            rt.copy_out(node, &format!("{dir}/{hex}")),
            Box::new(move |p| (p == want).then(|| named.clone())),
            crate::bundle::writer::Grouping::PerEntry,
        )
        .await?;
    summary
        .entries
        .into_iter()
        .next()
        .ok_or_else(|| CaptureError::BlobMissing {
            node: node.to_owned(),
            digest: digest.to_owned(),
            from: format!("the copy of its content store ({dir})"),
        })
}

/// A node's blobs being read ahead (started by [`read_ahead`]), for [`write`].
pub struct Reading {
    node: String,
    out: NodeCapture,
    needed: BTreeMap<String, (String, u64)>,
    remote: HashMap<String, String>,
    index_entries: Vec<serde_json::Value>,
    dir: String,
    /// (digest, hex, size) of each blob to write, in order.
    todo: Vec<(String, String, u64)>,
    /// Each blob's bytes (small ones and documents) or `None` (stream it), in the order of `todo`.
    rx: tokio::sync::mpsc::Receiver<Result<Option<Vec<u8>>, CaptureError>>,
    _ahead: crate::util::Task<()>,
}

impl Reading {
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// Starts reading a planned node's blobs, those not in `bundled` (written from another node) — small ones in
/// memory, a bounded number ahead — for [`write`].
pub fn read_ahead(rt: &Runtime, plan: ImagePlan, bundled: &HashSet<String>) -> Result<Reading, CaptureError> {
    let ImagePlan {
        node,
        mut out,
        needed,
        documents,
        remote,
        index_entries,
        blobs_dir: dir,
    } = plan;
    out.node.clone_from(&node);
    let mut todo = Vec::new();
    for (digest, (_, size)) in &needed {
        if bundled.contains(digest) {
            continue;
        }
        // A descriptor's digest becomes a path in the node: only a well-formed sha256 passes.
        blob_path(&dir, digest)?;
        let hex = digest.trim_start_matches("sha256:");
        todo.push((digest.clone(), hex.to_owned(), *size, documents.get(digest).cloned()));
    }
    // What the node lacks is streamed from its registry by the writer, never read from the node.
    let in_node: Vec<bool> = todo.iter().map(|(d, ..)| !remote.contains_key(d)).collect();
    // Small blobs are read ahead, in order, while the writer takes earlier ones; large ones are streamed.
    let (tx, rx) = tokio::sync::mpsc::channel(PREFETCH_AHEAD);
    let ahead = {
        let (rt, node, dir) = (rt.clone(), node.clone(), dir.clone());
        // The documents move to the reader, which hands them back in order.
        let wanted: Vec<Wanted> = todo
            .iter_mut()
            .zip(in_node)
            .map(|((_, hex, size, doc), in_node)| (hex.clone(), *size, doc.take(), in_node))
            .collect();
        prefetch(rt, node, dir, wanted, tx)
    };
    Ok(Reading {
        _ahead: crate::util::Task::spawn(ahead),
        node,
        out,
        needed,
        remote,
        index_entries,
        dir,
        todo: todo.into_iter().map(|(d, h, s, _)| (d, h, s)).collect(),
        rx,
    })
}

/// A blob to hand to the writer: its hex digest, size, bytes when already in memory (a document), and whether
/// the node holds it.
type Wanted = (String, u64, Option<Vec<u8>>, bool);

/// Hands the writer each wanted blob in order through `tx`: the bytes of documents and of small blobs the node
/// holds (read in batches, one round trip each), or `None` for one to stream.
async fn prefetch(
    rt: Runtime,
    node: String,
    dir: String,
    wanted: Vec<Wanted>,
    tx: tokio::sync::mpsc::Sender<Result<Option<Vec<u8>>, CaptureError>>,
) {
    let mut wanted = wanted.into_iter().peekable();
    while let Some((hex, size, doc, in_node)) = wanted.next() {
        if doc.is_none() && (size > PREFETCH_MAX || !in_node) {
            if tx.send(Ok(None)).await.is_err() {
                return;
            }
            continue;
        }
        // A run of documents (in memory) and small blobs; the blobs read in one round trip.
        let (mut total, mut files) = if doc.is_none() { (size, 1) } else { (0, 0) };
        let mut window = vec![(hex, size, doc)];
        let small =
            |size: u64, doc: &Option<Vec<u8>>, in_node: bool| doc.is_some() || (size <= PREFETCH_MAX && in_node);
        while let Some((_, next, doc, in_node)) = wanted.peek()
            && small(*next, doc, *in_node)
            && total + next <= PREFETCH_BATCH
            && files < PREFETCH_FILES
        {
            if doc.is_none() {
                total += next;
                files += 1;
            }
            let (hex, size, doc, _) = wanted.next().expect("peeked");
            window.push((hex, size, doc));
        }
        let paths: Vec<(String, u64)> = window
            .iter()
            .filter(|(_, _, doc)| doc.is_none())
            .map(|(hex, size, _)| (format!("{dir}/{hex}"), *size))
            .collect();
        let files: Vec<(&str, u64)> = paths.iter().map(|(p, s)| (p.as_str(), *s)).collect();
        let mut read = match node::read_files(&rt, &node, &files).await {
            Ok(all) => all.into_iter(),
            Err(e) => {
                let _ = tx.send(Err(CaptureError::from(e))).await;
                return;
            }
        };
        for (_, _, doc) in window {
            if tx.send(Ok(doc.or_else(|| read.next()))).await.is_err() {
                return;
            }
        }
    }
}

/// The line that says why a fetch failed: the last one the command printed.
fn fetch_failure(e: &crate::cluster::ClusterError) -> String {
    let text = match e {
        crate::cluster::ClusterError::Exec(x) if !x.stderr.trim().is_empty() => x.stderr.clone(),
        crate::cluster::ClusterError::Exec(x) if !x.stdout.trim().is_empty() => x.stdout.clone(),
        other => other.to_string(),
    };
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_sha256_becomes_a_path_in_the_node() {
        let hex = "ab".repeat(32);
        assert_eq!(blob_path("/c", &format!("sha256:{hex}")).unwrap(), format!("/c/{hex}"));
        for bad in [
            "sha256:../../../etc/shadow".to_owned(),
            format!("sha256:{hex}/../x"),
            format!("sha512:{hex}"),
            format!("sha256:{}", &hex[1..]),
            hex.clone(),
        ] {
            assert!(blob_path("/c", &bad).is_err(), "{bad}");
        }
    }
}
