//! Image re-import the way kind loads images (`ctr images import` with the archive on stdin, `--all-platforms`
//! first and without it when content is missing, kind #3795), for the images a node had at snapshot time
//! and lacks now. The OCI archive is assembled on the fly from the staged blobs.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::bundle::extract::Staged;
use crate::bundle::metadata::NodeImages;
use crate::cluster::Runtime;
use crate::cluster::node;
use crate::image_spec;

use super::RestoreError;
use crate::cluster::tar_stream;

pub async fn restore_node(
    rt: &Runtime,
    node_name: &str,
    platform: &str,
    want: &NodeImages,
    staged: &Staged,
) -> Result<Vec<String>, RestoreError> {
    let live: HashSet<(String, String)> = node::images(rt, node_name)
        .await?
        .into_iter()
        .map(|i| (i.name, i.digest))
        .collect();
    let missing: BTreeSet<String> = want
        .images
        .iter()
        .filter(|i| !live.contains(&(i.name.clone(), i.digest.clone())))
        .map(|i| i.name.clone())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let (index, blobs) = import_layout(node_name, platform, &missing, staged)?;
    let snap = node::containerd_config(rt, node_name).await?.snapshotter;
    let archive = || {
        let (index, blobs, dir) = (index.clone(), blobs.clone(), staged.blobs.clone());
        tar_stream(move |b| {
            append_bytes(b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            append_bytes(b, "index.json", &index)?;
            for hex in &blobs {
                b.append_path_with_name(dir.join(hex), format!("blobs/sha256/{hex}"))?;
            }
            Ok(())
        })
    };
    node::import_images(rt, node_name, &snap, archive).await?;
    // The labels each had (the import sets none), one record after another: few images have any.
    for image in want.images.iter().filter(|i| missing.contains(&i.name)) {
        node::label_image(rt, node_name, &image.name, &cri_labels(&image.labels)).await?;
    }
    Ok(missing.into_iter().collect())
}

/// The OCI layout to import: an index of the snapshot's images of `node_name` that are `missing`, and every
/// blob they need for `platform`, as far as the bundle has them (hex digests).
fn import_layout(
    node_name: &str,
    platform: &str,
    missing: &BTreeSet<String>,
    staged: &Staged,
) -> Result<(Vec<u8>, BTreeSet<String>), RestoreError> {
    let index_path = staged
        .node_index
        .get(node_name)
        .ok_or_else(|| RestoreError::NoImageIndex {
            node: node_name.to_owned(),
        })?;
    let index_bytes = std::fs::read(index_path).map_err(|cause| RestoreError::Io {
        what: format!("reading {}", index_path.display()),
        cause,
    })?;
    let manifests = image_spec::index_manifests(&index_bytes).map_err(|reason| RestoreError::BadImage {
        what: format!("the image index of {node_name}"),
        reason,
    })?;
    let chosen: Vec<image_spec::Descriptor> = manifests
        .into_iter()
        .filter(|m| {
            m.annotations
                .get("io.containerd.image.name")
                .is_some_and(|n| missing.contains(n))
        })
        .collect();
    // Every blob the chosen images need for this platform, as far as the bundle has them.
    let mut blobs = BTreeSet::new();
    let mut queue: Vec<(String, String)> = chosen
        .iter()
        .map(|m| (m.digest.clone(), m.media_type.clone()))
        .collect();
    while let Some((digest, media_type)) = queue.pop() {
        let hex = digest.trim_start_matches("sha256:").to_owned();
        let path = staged.blobs.join(&hex);
        let Ok(bytes) = std::fs::read(&path) else { continue };
        blobs.insert(hex);
        let children =
            image_spec::children(&bytes, &media_type, platform).map_err(|reason| RestoreError::BadImage {
                what: digest.clone(),
                reason: reason.to_string(),
            })?;
        queue.extend(children.documents);
        for b in children.blobs {
            let hex = b.digest.trim_start_matches("sha256:").to_owned();
            if staged.blobs.join(&hex).exists() {
                blobs.insert(hex);
            }
        }
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": image_spec::INDEX_TYPES[0],
        "manifests": chosen.iter().map(|m| serde_json::json!({
            "mediaType": m.media_type, "digest": m.digest, "size": m.size, "annotations": m.annotations,
        })).collect::<Vec<_>>(),
    }))
    .map_err(|e| RestoreError::BadImage {
        what: "the index of the images to import".into(),
        reason: e.to_string(),
    })?;
    Ok((index, blobs))
}

fn append_bytes<W: std::io::Write>(b: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data)
}

/// Of an image's recorded labels, those restore sets again: the CRI's own (`io.cri-containerd.*`: managed,
/// pinned), with plain keys and values. A bundle may come from anyone, and other labels steer containerd
/// itself (`containerd.io/gc.*` decides what its garbage collector removes), so no other is set.
fn cri_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let plain = |s: &str, extra: &[char]| {
        !s.is_empty() && s.len() <= 256 && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    labels
        .iter()
        .filter(|(k, v)| {
            k.starts_with("io.cri-containerd.") && plain(k, &['.', '-', '_', '/']) && plain(v, &['.', '-', '_'])
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_cri_labels_are_set_again() {
        let recorded: BTreeMap<String, String> = [
            ("io.cri-containerd.pinned", "pinned"),
            ("io.cri-containerd.image", "managed"),
            ("containerd.io/gc.expire", "2026-01-01T00:00:00Z"),
            ("containerd.io/gc.ref.content.l.0", "sha256:00"),
            ("io.cri-containerd.x=y", "z"),
            ("io.cri-containerd.odd", "a,b=c"),
            ("org.example/team", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let kept: Vec<String> = cri_labels(&recorded)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            kept,
            ["io.cri-containerd.image=managed", "io.cri-containerd.pinned=pinned"]
        );
    }
}
