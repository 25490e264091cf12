//! Addon versions, detected from the images of what the cluster runs (`crictl ps` on every node): the tag
//! of the first container whose image repository matches. Documented in docs/bundle-format.md.

use std::collections::{BTreeMap, BTreeSet};

/// Addon name → image repository suffix.
pub const KNOWN: &[(&str, &str)] = &[
    ("cert-manager", "jetstack/cert-manager-controller"),
    ("coredns", "coredns/coredns"),
    ("envoy-gateway", "envoyproxy/gateway"),
    ("headlamp", "headlamp-k8s/headlamp"),
    ("ingress-nginx", "ingress-nginx/controller"),
    ("kindnetd", "kindest/kindnetd"),
    ("kubernetes-dashboard", "kubernetesui/dashboard"),
    ("local-path-provisioner", "local-path-provisioner"),
    ("metallb", "metallb/controller"),
    ("metrics-server", "metrics-server/metrics-server"),
];

/// Splits an image reference into repository and tag (`None` for digest-only references).
pub fn split_image(image: &str) -> (&str, Option<&str>) {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].rfind(':') {
        Some(i) => (
            &without_digest[..last_slash + i],
            Some(&without_digest[last_slash + i + 1..]),
        ),
        None => (without_digest, None),
    }
}

/// Versions of known addons among `images` (several versions of one addon are joined with `|`).
pub fn detect<'a>(images: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for image in images {
        let (repo, tag) = split_image(image);
        for (addon, suffix) in KNOWN {
            if repo == *suffix || repo.ends_with(&format!("/{suffix}")) {
                found
                    .entry(addon.to_string())
                    .or_default()
                    .insert(tag.unwrap_or("latest").to_owned());
            }
        }
    }
    found
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect::<Vec<_>>().join("|")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(
            split_image("docker.io/kindest/kindnetd:v1"),
            ("docker.io/kindest/kindnetd", Some("v1"))
        );
        assert_eq!(split_image("localhost:5000/x"), ("localhost:5000/x", None));
        assert_eq!(
            split_image("localhost:5000/x:2@sha256:ab"),
            ("localhost:5000/x", Some("2"))
        );
    }

    #[test]
    fn detects_known_addons_only() {
        let got = detect([
            "docker.io/kindest/local-path-provisioner:v20250214-acbabc1a",
            "quay.io/metallb/controller:v0.15.3",
            "registry.k8s.io/etcd:3.5.21-0",
            "docker.io/library/nginx:1.27",
        ]);
        assert_eq!(
            got.get("local-path-provisioner").map(String::as_str),
            Some("v20250214-acbabc1a")
        );
        assert_eq!(got.get("metallb").map(String::as_str), Some("v0.15.3"));
        assert_eq!(got.len(), 2);
    }
}
