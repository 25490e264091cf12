//! crictl: the containers and images the CRI sees.

use super::*;

/// A running container as the CRI reports it, with its image resolved to a name where one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriContainer {
    pub name: String,
    /// Image name (`docker.io/kindest/kindnetd:v…`), or the image ID when no name is known.
    pub image: String,
}

#[derive(Deserialize)]
pub(super) struct PsList {
    #[serde(default)]
    containers: Vec<PsItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PsItem {
    #[serde(default)]
    metadata: PsMeta,
    #[serde(default)]
    image: ImageSpec,
    #[serde(default)]
    image_ref: String,
}

#[derive(Deserialize, Default)]
pub(super) struct PsMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ImageSpec {
    #[serde(default)]
    image: String,
    #[serde(default)]
    user_specified_image: String,
}

/// One image as `crictl images -o json` reports it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CriImage {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub repo_digests: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct ImageList {
    #[serde(default)]
    images: Vec<CriImage>,
}

/// A container's image as `crictl ps -o json` gives it: `(name, image, user-specified image)`.
pub(super) fn parse_ps(out: &str) -> Result<Vec<(String, String, String)>, serde_json::Error> {
    let list: PsList = serde_json::from_str(out)?;
    Ok(list
        .containers
        .into_iter()
        .map(|c| {
            let image = if c.image.image.is_empty() {
                c.image_ref
            } else {
                c.image.image
            };
            (c.metadata.name, image, c.image.user_specified_image)
        })
        .collect())
}

pub(super) fn parse_images(out: &str) -> Result<Vec<CriImage>, serde_json::Error> {
    Ok(serde_json::from_str::<ImageList>(out)?.images)
}

/// Whether a CRI image field holds an image ID (`sha256:<hex>`, or a bare 64-hex ID) rather than a name.
pub(super) fn is_image_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of a container's image. A real kubelet creates containers with the image ID as their image
/// (cri-tools cmd/crictl/container.go: "Now c.Image.Image is imageID in kubelet"); the name is the CRI's
/// user-specified image where the runtime reports it, else a tag (or digest) of that ID in `crictl images`.
pub(super) fn image_name(image: &str, user_specified: &str, images: &[CriImage]) -> String {
    if !user_specified.is_empty() && !is_image_id(user_specified) {
        return user_specified.to_owned();
    }
    if !is_image_id(image) {
        return image.to_owned();
    }
    let bare = |s: &str| s.strip_prefix("sha256:").unwrap_or(s).to_owned();
    images
        .iter()
        .find(|i| bare(&i.id) == bare(image))
        .and_then(|i| i.repo_tags.first().or(i.repo_digests.first()).cloned())
        .unwrap_or_else(|| image.to_owned())
}

/// The containers `crictl ps -o json` printed, each with its image name: where the CRI reports only an image
/// ID (containerd before cri-api v0.28 has no user-specified image), `crictl images -o json` names it.
pub(super) async fn containers_of(rt: &Runtime, node: &str, ps: &str) -> Result<Vec<CriContainer>, ClusterError> {
    let found = parse_ps(ps).map_err(|e| unreadable(node, PS, ps, e))?;
    let images = if found
        .iter()
        .any(|(_, image, user)| is_image_id(image) && (user.is_empty() || is_image_id(user)))
    {
        let out = idempotent(|| rt.run(node, CRI_IMAGES)).await?;
        parse_images(&out).map_err(|e| unreadable(node, CRI_IMAGES, &out, e))?
    } else {
        Vec::new()
    };
    Ok(found
        .into_iter()
        .map(|(name, image, user)| CriContainer {
            image: image_name(&image, &user, &images),
            name,
        })
        .collect())
}

/// Running containers on a node, each with its image name.
pub async fn running_containers(rt: &Runtime, node: &str) -> Result<Vec<CriContainer>, ClusterError> {
    let ps = idempotent(|| rt.run(node, PS)).await?;
    containers_of(rt, node, &ps).await
}

/// What a control plane without a running etcd container answers.
pub(super) const NO_ETCD: &str = "no running etcd container: is the control plane healthy?";

/// ID of the running etcd container on a control-plane node.
pub async fn etcd_container(rt: &Runtime, node: &str) -> Result<String, ClusterError> {
    let argv = ["crictl", "ps", "--name", "^etcd$", "--state", "running", "-q"];
    let out = idempotent(|| rt.run(node, &argv)).await?;
    out.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| {
            ExecError {
                node: node.into(),
                command: argv_of(&argv),
                code: Some(0),
                stdout: String::new(),
                stderr: NO_ETCD.into(),
            }
            .into()
        })
}

/// Stops kubelet, then every running container, so nothing changes images or PV data. Node IPs are kept:
/// the node containers themselves keep running.
pub async fn quiesce(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    stop_kubelet(rt, node).await?;
    stop_containers(rt, node).await
}

/// Stops kubelet; the containers it started keep running.
pub async fn stop_kubelet(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    idempotent(|| rt.run(node, &["systemctl", "stop", "kubelet"]))
        .await
        .map(|_| ())
}

/// Stops every running container (with kubelet stopped, nothing starts them again).
pub async fn stop_containers(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    let ids = idempotent(|| rt.run(node, &["crictl", "ps", "-q"])).await?;
    let ids: Vec<&str> = ids.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if !ids.is_empty() {
        let mut argv = vec!["crictl", "stop", "--timeout", "30"];
        argv.extend(ids);
        // CRI StopContainer is a no-op for a container already stopped.
        idempotent(|| rt.run(node, &argv)).await?;
    }
    Ok(())
}

/// Starts kubelet again; it restarts the node's static pods and containers.
pub async fn start_kubelet(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    idempotent(|| rt.run(node, &["systemctl", "start", "kubelet"]))
        .await
        .map(|_| ())
}

/// Kubernetes version of the node image (`/kind/version`).
pub async fn k8s_version(rt: &Runtime, node: &str) -> Result<String, ClusterError> {
    Ok(idempotent(|| rt.run(node, &["cat", "/kind/version"]))
        .await?
        .trim()
        .to_owned())
}

/// Free bytes on the node's /var (the volume that holds etcd, containerd and the PVs).
pub async fn free_bytes(rt: &Runtime, node: &str) -> Result<u64, ClusterError> {
    let argv = ["df", "-Pk", "/var"];
    let out = idempotent(|| rt.run(node, &argv)).await?;
    parse_df(&out).ok_or_else(|| unreadable(node, &argv, &out, "no 'Available' column"))
}

/// `df -Pk` (POSIX format): the fourth column of the second line is free 1024-byte blocks.
pub(super) fn parse_df(out: &str) -> Option<u64> {
    out.lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}
