//! Every image in a node's containerd `k8s.io` namespace, exported with `ctr images export` (the node's
//! platform only: CRI pulls hold one platform's blobs, kind #3795) and streamed into the bundle as an OCI
//! layout whose blobs are shared by all nodes: `images/blobs/sha256/<hex>` once, plus each node's
//! `images/nodes/<node>/index.json`.

use std::collections::BTreeSet;

use crate::bundle::metadata::{ImageRef, NodeImages};
use crate::bundle::{BundleSink, IMAGE_BLOBS_DIR};
use crate::cluster::Runtime;

use super::CaptureError;

/// Images a node holds, by name. Bare `sha256:` names (the CRI's image IDs) are left out: containerd
/// recreates them on import.
pub async fn list(rt: &Runtime, node: &str) -> Result<Vec<ImageRef>, CaptureError> {
    let out = rt.run(node, &["ctr", "--namespace=k8s.io", "images", "ls"]).await?;
    let mut refs: Vec<ImageRef> = out
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let name = cols.next()?;
            let _media_type = cols.next()?;
            let digest = cols.next()?;
            (!name.starts_with("sha256:") && digest.starts_with("sha256:"))
                .then(|| ImageRef { name: name.to_owned(), digest: digest.to_owned() })
        })
        .collect();
    refs.sort();
    Ok(refs)
}

/// Returns what the node holds and how many bytes of new (not yet bundled) blobs it added.
pub async fn capture(rt: &Runtime, node: &str, platform: &str, images: &[ImageRef], sink: &BundleSink) -> Result<(NodeImages, u64), CaptureError> {
    if images.is_empty() {
        return Ok((NodeImages { images: Vec::new(), blobs: Vec::new() }, 0));
    }
    let mut argv = vec!["ctr", "--namespace=k8s.io", "images", "export", "--platform", platform, "-"];
    argv.extend(images.iter().map(|i| i.name.as_str()));
    let stream = rt.exec_stream(node, &argv).await?;
    let index_path = format!("images/nodes/{node}/index.json");
    let rename = {
        let index_path = index_path.clone();
        Box::new(move |p: &str| {
            if let Some(hex) = p.strip_prefix("blobs/sha256/") {
                (!hex.is_empty() && !hex.contains('/')).then(|| format!("{IMAGE_BLOBS_DIR}/{hex}"))
            } else {
                (p == "index.json").then(|| index_path.clone())
            }
        })
    };
    let summary = sink.add_tar(stream, rename, true).await?;
    let mut blobs = BTreeSet::new();
    let mut added = 0;
    for entry in &summary.entries {
        let Some(hex) = entry.path.strip_prefix(&format!("{IMAGE_BLOBS_DIR}/")) else { continue };
        // Content addressing is the integrity check of image data: a blob must hash to its name.
        if entry.sha256.as_deref() != Some(hex) {
            return Err(CaptureError::Invalid(format!("image blob sha256:{hex} exported from {node} does not match its digest")));
        }
        blobs.insert(format!("sha256:{hex}"));
        added += entry.size;
    }
    for path in &summary.skipped {
        if let Some(hex) = path.strip_prefix(&format!("{IMAGE_BLOBS_DIR}/")) {
            blobs.insert(format!("sha256:{hex}"));
        }
    }
    if !summary.entries.iter().any(|e| e.path == index_path) {
        return Err(CaptureError::Invalid(format!("the image export from {node} had no index.json")));
    }
    Ok((NodeImages { images: images.to_vec(), blobs: blobs.into_iter().collect() }, added))
}
