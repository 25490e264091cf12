//! containerd: its configuration, images and content store (`ctr`, `containerd config dump`).

use super::*;

/// What kubectl-snapshot needs of a node's containerd configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// containerd's root (the content store is `<root>/io.containerd.content.v1.content`).
    pub root: String,
    /// The snapshotter the CRI unpacks images with (never assume overlayfs: kind's entrypoint may switch it).
    pub snapshotter: String,
}

impl ContainerdConfig {
    pub fn content_blobs(&self) -> String {
        format!(
            "{}/io.containerd.content.v1.content/blobs/sha256",
            self.root.trim_end_matches('/')
        )
    }
}

/// Parses `containerd config dump` as TOML, as kind does: version 2 keeps the CRI snapshotter at
/// `plugins."io.containerd.grpc.v1.cri".containerd.snapshotter`, versions 3 and 4 (containerd 2.x) at
/// `plugins."io.containerd.cri.v1.images".snapshotter`. Absent keys take containerd's defaults.
pub(super) fn parse_containerd_config(dump: &str) -> Result<ContainerdConfig, toml::de::Error> {
    let doc: toml::Table = toml::from_str(dump)?;
    let str_at = |path: &[&str]| -> Option<String> {
        let mut v = doc.get(path[0])?;
        for k in &path[1..] {
            v = v.get(k)?;
        }
        v.as_str().map(str::to_owned)
    };
    let version = doc.get("version").and_then(toml::Value::as_integer).unwrap_or(1);
    let snapshotter = if version >= 3 {
        str_at(&["plugins", "io.containerd.cri.v1.images", "snapshotter"])
    } else {
        str_at(&["plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter"])
    };
    Ok(ContainerdConfig {
        root: str_at(&["root"])
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "/var/lib/containerd".into()),
        snapshotter: snapshotter
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "overlayfs".into()),
    })
}

pub async fn containerd_config(rt: &Runtime, node: &str) -> Result<ContainerdConfig, ClusterError> {
    let out = idempotent(|| rt.run(node, CONFIG_DUMP)).await?;
    parse_containerd_config(&out).map_err(|e| unreadable(node, CONFIG_DUMP, &out, e))
}

/// An image record in containerd's `k8s.io` namespace: its name, the descriptor it points at, its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub media_type: String,
    pub digest: String,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// `ctr images ls` (containerd cmd/ctr/commands/images/images.go): `REF TYPE DIGEST SIZE PLATFORMS LABELS`,
/// columns separated by white space (SIZE holds one, `780.0 B`); LABELS is `-` or the sorted `key=value`
/// pairs joined by commas. The CRI's own `sha256:<id>` records are left out: containerd recreates them on
/// import.
pub(super) fn parse_images_ls(out: &str) -> Vec<ImageRecord> {
    let mut refs: Vec<ImageRecord> = out
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let (name, media_type, digest) = (cols.next()?, cols.next()?, cols.next()?);
            let labels = match cols.next_back() {
                Some(l) if l != "-" && l.contains('=') => l
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                _ => Default::default(),
            };
            (!name.starts_with("sha256:") && digest.starts_with("sha256:")).then(|| ImageRecord {
                name: name.to_owned(),
                media_type: media_type.to_owned(),
                digest: digest.to_owned(),
                labels,
            })
        })
        .collect();
    refs.sort_by(|a, b| a.name.cmp(&b.name));
    refs
}

/// The images a node holds, by name.
pub async fn images(rt: &Runtime, node: &str) -> Result<Vec<ImageRecord>, ClusterError> {
    Ok(parse_images_ls(&idempotent(|| rt.run(node, IMAGES_LS)).await?))
}

/// `ctr content ls -q`: one digest a line.
pub(super) fn parse_content_ls(out: &str) -> std::collections::HashSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("sha256:"))
        .map(str::to_owned)
        .collect()
}
