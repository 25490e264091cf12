//! Every image in a node's containerd `k8s.io` namespace, for the node's platform (CRI pulls hold one
//! platform's blobs, kind #3795), stored as an OCI layout whose blobs all nodes share:
//! `images/blobs/sha256/<hex>` once, plus each node's `images/nodes/<node>/index.json` naming its images.
//!
//! `ctr` says which images exist and what each consists of (index → platform manifest → config and layers);
//! the blob bytes are streamed straight from containerd's content store through the archive API, which is
//! several times faster than `ctr images export` and works without a shell in the node. A blob missing from
//! the store's directory is read with `ctr content get` instead. Every blob is checked against its digest.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sha2::{Digest, Sha256};

use crate::bundle::metadata::{ImageRef, NodeImages};
use crate::bundle::{BundleSink, IMAGE_BLOBS_DIR};
use crate::cluster::Runtime;
use crate::oci;

use super::CaptureError;

/// An image name and the descriptor it points at.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub media_type: String,
    pub digest: String,
}

/// Images a node holds, by name. Bare `sha256:` names (the CRI's image IDs) are left out: containerd
/// recreates them on import.
pub async fn list(rt: &Runtime, node: &str) -> Result<Vec<Listed>, CaptureError> {
    let out = rt.run(node, &["ctr", "--namespace=k8s.io", "images", "ls"]).await?;
    let mut refs: Vec<Listed> = out
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (name, media_type, digest) = (cols.next()?, cols.next()?, cols.next()?);
            (!name.starts_with("sha256:") && digest.starts_with("sha256:"))
                .then(|| Listed { name: name.to_owned(), media_type: media_type.to_owned(), digest: digest.to_owned() })
        })
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(refs)
}

fn check_digest(node: &str, digest: &str, bytes: &[u8]) -> Result<(), CaptureError> {
    let got = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    if got != digest {
        return Err(CaptureError::Invalid(format!("content {digest} read from {node} hashes to {got}")));
    }
    Ok(())
}

/// Where containerd keeps content blobs in this node (`<root>/io.containerd.content.v1.content/blobs/sha256`).
async fn content_dir(rt: &Runtime, node: &str) -> Result<String, CaptureError> {
    let dump = rt.run(node, &["containerd", "config", "dump"]).await?;
    let root = dump
        .lines()
        .find_map(|l| l.trim().strip_prefix("root = ").map(|v| v.trim().trim_matches('"').to_owned()))
        .unwrap_or_else(|| "/var/lib/containerd".into());
    Ok(format!("{root}/io.containerd.content.v1.content/blobs/sha256"))
}

/// Returns what the node holds and how many bytes of new (not yet bundled) blobs it added.
pub async fn capture(
    rt: &Runtime,
    node: &str,
    platform: &str,
    images: &[Listed],
    sink: &BundleSink,
    bundled: &mut HashSet<String>,
) -> Result<(NodeImages, u64), CaptureError> {
    // digest -> (media type, size); JSON blobs already read are kept to be written as they are.
    let mut needed: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut json_blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut index_entries = Vec::new();
    for image in images {
        let mut queue = vec![(image.digest.clone(), image.media_type.clone())];
        while let Some((digest, media_type)) = queue.pop() {
            let bytes = match json_blobs.get(&digest) {
                Some(b) => b.clone(),
                None => {
                    let text = rt.run(node, &["ctr", "--namespace=k8s.io", "content", "get", &digest]).await?;
                    let bytes = text.into_bytes();
                    check_digest(node, &digest, &bytes)?;
                    json_blobs.insert(digest.clone(), bytes.clone());
                    bytes
                }
            };
            needed.insert(digest.clone(), (media_type.clone(), bytes.len() as u64));
            let children = oci::children(&bytes, &media_type, platform).map_err(|e| CaptureError::Invalid(format!("{} on {node}: {digest}: {e}", image.name)))?;
            queue.extend(children.documents);
            for d in children.blobs {
                needed.insert(d.digest, (d.media_type, d.size));
            }
        }
        let size = needed.get(&image.digest).map_or(0, |(_, s)| *s);
        let tag = super::addons::split_image(&image.name).1.unwrap_or("latest").to_owned();
        index_entries.push(serde_json::json!({
            "mediaType": image.media_type,
            "digest": image.digest,
            "size": size,
            "annotations": { "io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag },
        }));
    }

    let dir = content_dir(rt, node).await?;
    let on_disk: HashSet<String> = rt
        .run(node, &["ls", &dir])
        .await
        .map(|out| out.lines().map(|l| l.trim().to_owned()).collect())
        .unwrap_or_default();
    let mut added = 0;
    for (digest, (_, size)) in &needed {
        if bundled.contains(digest) {
            continue;
        }
        let hex = digest.strip_prefix("sha256:").ok_or_else(|| CaptureError::Invalid(format!("unsupported digest {digest}")))?;
        let entry = format!("{IMAGE_BLOBS_DIR}/{hex}");
        let written = if let Some(bytes) = json_blobs.get(digest) {
            sink.add_bytes(&entry, 0o444, bytes).await?
        } else if on_disk.contains(hex) {
            let want = hex.to_owned();
            let entry = entry.clone();
            let summary = sink.add_tar(rt.copy_out(node, &format!("{dir}/{hex}")), Box::new(move |p| (p == want).then(|| entry.clone())), false).await?;
            summary.entries.into_iter().next().ok_or_else(|| CaptureError::Invalid(format!("{digest} missing from the copy of {node}'s content store")))?
        } else {
            let stream = rt.exec_stream(node, &["ctr", "--namespace=k8s.io", "content", "get", digest]).await?;
            sink.add_file(&entry, *size, 0o444, stream).await?
        };
        // Content addressing is the integrity check of image data: a blob must hash to its name.
        if written.sha256.as_deref() != Some(hex) || written.size != *size {
            return Err(CaptureError::Invalid(format!("image blob {digest} read from {node} does not match its descriptor")));
        }
        bundled.insert(digest.clone());
        added += size;
    }
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": oci::INDEX_TYPES[0], "manifests": index_entries });
    let index = serde_json::to_vec_pretty(&index).map_err(|e| CaptureError::Invalid(e.to_string()))?;
    sink.add_bytes(&format!("images/nodes/{node}/index.json"), 0o644, &index).await?;

    let blobs: BTreeSet<String> = needed.into_keys().collect();
    let refs = images.iter().map(|i| ImageRef { name: i.name.clone(), digest: i.digest.clone() }).collect();
    Ok((NodeImages { images: refs, blobs: blobs.into_iter().collect() }, added))
}
