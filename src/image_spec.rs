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

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: String,
}

impl Platform {
    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Self {
        let mut parts = s.splitn(3, '/');
        let (os, architecture) = match (parts.next(), parts.next()) {
            (Some(os), Some(arch)) => (os, arch),
            (Some(arch), None) => ("linux", arch),
            _ => ("linux", ""),
        };
        Platform {
            os: os.to_owned(),
            architecture: architecture.to_owned(),
            variant: parts.next().unwrap_or("").to_owned(),
        }
        .normalized()
    }

    /// containerd's `platforms.Normalize` (containerd/platforms `database.go` normalizeArch): aliases and
    /// default variants spelled one way.
    fn normalized(&self) -> Self {
        let (mut arch, mut variant) = (self.architecture.to_lowercase(), self.variant.to_lowercase());
        match arch.as_str() {
            "i386" => (arch, variant) = ("386".into(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                arch = "amd64".into();
                if variant == "v1" {
                    variant.clear();
                }
            }
            "aarch64" | "arm64" => {
                arch = "arm64".into();
                match variant.as_str() {
                    "8" | "v8" | "v8.0" => variant.clear(),
                    "9" | "9.0" | "v9.0" => variant = "v9".into(),
                    _ => {}
                }
            }
            "armhf" => (arch, variant) = ("arm".into(), "v7".into()),
            "armel" => (arch, variant) = ("arm".into(), "v6".into()),
            "arm" => match variant.as_str() {
                "" | "7" => variant = "v7".into(),
                "5" | "6" | "8" => variant = format!("v{variant}"),
                _ => {}
            },
            _ => {}
        }
        Platform {
            os: self.os.to_lowercase(),
            architecture: arch,
            variant,
        }
    }

    /// The platforms a node of this platform runs, best first: containerd's `platforms.Only`
    /// (containerd/platforms `compare.go` platformVector), which the CRI's pull uses to pick one manifest of
    /// an index. amd64/vN also runs amd64/vN-1 … v1 and 386; arm64 runs the arm64 variants below its own and
    /// arm/v8 … v5; arm/vN runs arm/vN-1 … v5.
    fn vector(&self) -> Vec<Platform> {
        let p = self.normalized();
        let with = |arch: &str, variant: String| Platform {
            os: p.os.clone(),
            architecture: arch.to_owned(),
            variant,
        };
        let version = |v: &str| v.strip_prefix('v').and_then(|n| n.parse::<u32>().ok());
        let mut out = vec![p.clone()];
        match p.architecture.as_str() {
            "amd64" => {
                if let Some(n) = version(&p.variant).filter(|n| *n > 1) {
                    out.extend((1..n).rev().map(|v| with("amd64", format!("v{v}"))));
                }
                out.push(with("386", String::new()));
            }
            "arm" => {
                if let Some(n) = version(&p.variant).filter(|n| *n > 5) {
                    out.extend((5..n).rev().map(|v| with("arm", format!("v{v}"))));
                }
            }
            "arm64" => {
                let variant = if p.variant.is_empty() { "v8" } else { p.variant.as_str() };
                let (major, minor) = variant
                    .strip_prefix('v')
                    .map(|v| v.split_once('.').unwrap_or((v, "0")))
                    .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                    .unwrap_or((8, 0));
                out.clear();
                // v9.x also runs v8.(x+5), at most v8.9 (containerd's arm64variantToVersion)
                let mut lines = vec![(major, minor)];
                if major == 9 {
                    lines.push((8, (minor + 5).min(9)));
                }
                for (major, top) in lines {
                    for minor in (0..=top).rev() {
                        let v = if minor == 0 {
                            format!("v{major}")
                        } else {
                            format!("v{major}.{minor}")
                        };
                        out.push(with("arm64", v).normalized());
                    }
                }
                out.extend(with("arm", "v8".into()).vector());
            }
            _ => {}
        }
        out
    }

    /// Where `other` ranks among the platforms this one runs (0 is best), `None` if it cannot run it.
    fn rank(&self, other: &Platform) -> Option<usize> {
        let other = other.normalized();
        self.vector().iter().position(|p| p.normalized() == other)
    }
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

/// What an index or manifest points at, for one platform (`os/arch[/variant]`).
#[derive(Debug, Default)]
pub struct Children {
    /// Indexes and manifests to read next (digest, media type).
    pub documents: Vec<(String, String)>,
    /// Config and layer blobs.
    pub blobs: Vec<Descriptor>,
}

/// Parses an index or manifest (`media_type` is the descriptor's, used when the document has none).
/// An index's entries are those the platform runs, best first, as containerd's CRI ranks them before it pulls
/// the first (`platforms.Only`, and `images.LimitManifests`, which puts entries without a platform last).
pub fn children(bytes: &[u8], media_type: &str, platform: &str) -> Result<Children, String> {
    let ours = Platform::parse(platform);
    let doc: Document = serde_json::from_slice(bytes).map_err(|e| format!("not an image index or manifest: {e}"))?;
    let kind = doc.media_type.unwrap_or_else(|| media_type.to_owned());
    let mut out = Children::default();
    if INDEX_TYPES.contains(&kind.as_str()) || !doc.manifests.is_empty() {
        let mut ranked: Vec<(usize, Descriptor)> = doc
            .manifests
            .into_iter()
            .filter(|m| INDEX_TYPES.contains(&m.media_type.as_str()) || MANIFEST_TYPES.contains(&m.media_type.as_str()))
            .filter_map(|m| match &m.platform {
                None => Some((usize::MAX, m)),
                Some(p) => ours.rank(p).map(|r| (r, m)),
            })
            .collect();
        ranked.sort_by_key(|(r, _)| *r);
        out.documents = ranked.into_iter().map(|(_, m)| (m.digest, m.media_type)).collect();
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

    fn entry(digest: &str, platform: &str) -> String {
        let p = platform.split('/').collect::<Vec<_>>();
        let variant = p.get(2).map(|v| format!(r#","variant":"{v}""#)).unwrap_or_default();
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{digest}","size":1,"platform":{{"os":"{}","architecture":"{}"{variant}}}}}"#,
            p[0], p[1]
        )
    }

    fn ranked(entries: &[(&str, &str)], platform: &str) -> Vec<String> {
        let list: Vec<String> = entries.iter().map(|(d, p)| entry(d, p)).collect();
        let index = format!(
            r#"{{"mediaType":"{}","manifests":[{}]}}"#,
            INDEX_TYPES[0],
            list.join(",")
        );
        children(index.as_bytes(), "", platform)
            .unwrap()
            .documents
            .into_iter()
            .map(|(d, _)| d)
            .collect()
    }

    /// containerd's `platforms.Only`: an amd64 node (variant unset, as containerd's default spec has it on
    /// amd64) runs amd64 and 386, not amd64/v2 or v3, so an image pulled by the CRI holds only the plain amd64
    /// manifest; an arm64 node prefers arm64 (v8 is the same) over arm/v7.
    #[test]
    fn index_entries_are_ranked_as_containerd_ranks_them() {
        let amd = [
            ("sha256:v3", "linux/amd64/v3"),
            ("sha256:386", "linux/386"),
            ("sha256:v2", "linux/amd64/v2"),
            ("sha256:v1", "linux/amd64"),
            ("sha256:arm", "linux/arm64/v8"),
        ];
        assert_eq!(ranked(&amd, "linux/amd64"), ["sha256:v1", "sha256:386"]);
        assert_eq!(ranked(&amd, "linux/amd64/v2"), ["sha256:v2", "sha256:v1", "sha256:386"]);
        let arm = [
            ("sha256:arm7", "linux/arm/v7"),
            ("sha256:arm64", "linux/arm64/v8"),
            ("sha256:amd", "linux/amd64"),
            ("sha256:plain", "linux/arm64"),
        ];
        assert_eq!(
            ranked(&arm, "linux/arm64"),
            ["sha256:arm64", "sha256:plain", "sha256:arm7"]
        );
        assert_eq!(Platform::parse("linux/aarch64/8"), Platform::parse("linux/arm64"));
        assert_eq!(Platform::parse("linux/x86_64/v1"), Platform::parse("linux/amd64"));
    }
}
