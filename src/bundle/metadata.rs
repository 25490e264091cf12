//! `metadata.json`: what a snapshot holds and what restore checks it against. Versioned by `schemaVersion`;
//! readers refuse a version they do not know (see docs/bundle-format.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema this build writes and the newest it can read.
/// 2: the archive is cut into deterministic members described by `<snapshot>.index.json` (docs/bundle-format.md);
/// the entries are those of version 1, which is still read.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    pub schema_version: u32,
    pub name: String,
    pub cluster: String,
    pub created: jiff::Timestamp,
    /// kubectl-snapshot version that wrote the bundle.
    pub tool_version: String,
    pub k8s_version: String,
    /// The node image of the bootstrap control plane (`Config.Image` of its container).
    pub node_image: String,
    /// Container runtime the cluster ran on (docker, podman).
    pub provider: String,
    /// Node platform, e.g. linux/amd64.
    pub platform: String,
    pub topology: Topology,
    /// Addon name → version (the image tag of what the cluster runs); see docs/bundle-format.md.
    pub addons: BTreeMap<String, String>,
    pub etcd: EtcdInfo,
    pub images: ImagesInfo,
    pub pvs: PvsInfo,
    /// The schedule that took this snapshot (`kubectl snapshot schedule`); absent for manual snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    pub control_planes: usize,
    pub workers: usize,
    pub load_balancer: bool,
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub role: String,
    pub container_id: String,
    pub image: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EtcdInfo {
    /// Control-plane node the snapshot was taken on.
    pub node: String,
    /// Image of the etcd static pod (from its manifest).
    pub image: String,
    pub size: u64,
    /// sha256 of the snapshot file (`etcd/snapshot.db` in the bundle).
    pub digest: String,
}

/// Which images `create` puts in the bundle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ImagesMode {
    /// Every image; layers a node discarded after a pull are fetched from the image's registry first.
    #[default]
    All,
    /// The images whose content the nodes hold; others are kept by reference.
    Local,
    /// No images: etcd and volumes only.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagesInfo {
    /// How images were captured (bundles written before this field: `all`).
    #[serde(default)]
    pub mode: ImagesMode,
    /// sha256 over the sorted `node ref digest` lines: equal sets of images give equal digests.
    pub digest: String,
    /// Bytes of distinct blobs in the bundle.
    pub size: u64,
    pub blobs: usize,
    pub nodes: BTreeMap<String, NodeImages>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeImages {
    pub images: Vec<ImageRef>,
    /// Every blob this node's export held (digests), so restore can rebuild the node's archive.
    pub blobs: Vec<String>,
    /// Images the node held without their content (layers discarded after a pull and not fetched): named
    /// here, not in the bundle; the kubelet pulls them again after a restore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_reference: Vec<ImageRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ImageRef {
    pub name: String,
    pub digest: String,
    /// The image record's labels in the node's containerd (the CRI's `io.cri-containerd.image=managed`, kind's
    /// `io.cri-containerd.pinned=pinned`), set again when the image is re-imported. Absent in bundles written
    /// before they were recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvsInfo {
    /// sha256 over every PV entry (name, type, mode, size, link, data), node by node.
    pub digest: String,
    pub size: u64,
    pub files: usize,
    /// Node → the PV root directories captured on it (e.g. /var/local-path-provisioner).
    pub nodes: BTreeMap<String, Vec<String>>,
}

impl Metadata {
    /// Parses metadata, refusing a schema newer than this build understands.
    pub fn from_json(bytes: &[u8]) -> Result<Self, super::BundleError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| super::BundleError::BadMetadata(e.to_string()))?;
        if probe.schema_version == 0 || probe.schema_version > SCHEMA_VERSION {
            return Err(super::BundleError::SchemaVersion {
                found: probe.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| super::BundleError::BadMetadata(e.to_string()))
    }

    /// `1 control-plane, 2 workers`.
    pub fn topology_summary(&self) -> String {
        let t = &self.topology;
        let mut s = format!(
            "{} control-plane{}",
            t.control_planes,
            if t.control_planes == 1 { "" } else { "s" }
        );
        s.push_str(&format!(
            ", {} worker{}",
            t.workers,
            if t.workers == 1 { "" } else { "s" }
        ));
        if t.load_balancer {
            s.push_str(", load balancer");
        }
        s
    }

    /// `local-path-provisioner=v0.0.31,kindnetd=…`
    pub fn addons_summary(&self) -> String {
        self.addons
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_schema_is_refused() {
        let err = Metadata::from_json(br#"{"schemaVersion": 99}"#).unwrap_err();
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(Metadata::from_json(b"{not json").is_err());
        assert!(Metadata::from_json(br#"{"schemaVersion": 1}"#).is_err());
    }
}
