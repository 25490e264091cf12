//! The few OCI image-spec shapes kubectl-snapshot reads: an index or manifest, and which blobs it refers to.

use serde::Deserialize;

pub const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// What an index or manifest points at, for one platform (`os/arch`).
#[derive(Debug, Default)]
pub struct Children {
    /// Indexes and manifests to read next (digest, media type).
    pub documents: Vec<(String, String)>,
    /// Config and layer blobs.
    pub blobs: Vec<Descriptor>,
}

/// Parses an index or manifest (`media_type` is the descriptor's, used when the document has none).
pub fn children(bytes: &[u8], media_type: &str, platform: &str) -> Result<Children, String> {
    let (os, arch) = platform.split_once('/').unwrap_or(("linux", platform));
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not an image index or manifest: {e}"))?;
    let kind = doc.media_type.unwrap_or_else(|| media_type.to_owned());
    let mut out = Children::default();
    if INDEX_TYPES.contains(&kind.as_str()) || !doc.manifests.is_empty() {
        for m in doc.manifests {
            let matches = m.platform.as_ref().is_none_or(|p| p.os == os && p.architecture == arch);
            let readable =
                INDEX_TYPES.contains(&m.media_type.as_str()) || MANIFEST_TYPES.contains(&m.media_type.as_str());
            if matches && readable {
                out.documents.push((m.digest, m.media_type));
            }
        }
    } else {
        out.blobs.extend(doc.config);
        out.blobs.extend(doc.layers);
    }
    Ok(out)
}

/// The manifests listed by an image index (for a node's `index.json`).
pub fn index_manifests(bytes: &[u8]) -> Result<Vec<Descriptor>, String> {
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not an image index: {e}"))?;
    Ok(doc.manifests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_platform_and_the_blobs() {
        let index = br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":1,"platform":{"os":"linux","architecture":"arm64"}}]}"#;
        let c = children(index, "", "linux/amd64").unwrap();
        assert_eq!(
            c.documents,
            [(
                "sha256:a".to_string(),
                "application/vnd.oci.image.manifest.v1+json".to_string()
            )]
        );
        let manifest = br#"{"config":{"mediaType":"c","digest":"sha256:c","size":2},"layers":[{"mediaType":"l","digest":"sha256:l","size":3}]}"#;
        let c = children(manifest, MANIFEST_TYPES[0], "linux/amd64").unwrap();
        assert_eq!(
            c.blobs.iter().map(|b| b.digest.as_str()).collect::<Vec<_>>(),
            ["sha256:c", "sha256:l"]
        );
        assert!(children(b"{not json", "", "linux/amd64").is_err());
    }
}
