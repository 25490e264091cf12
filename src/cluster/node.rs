//! The one node layer: every command kubectl-snapshot runs inside a kind node, and the parser of what each
//! prints. `capture` and `restore` say *what* is done; this module says *how* a kind node is asked for it
//! (crictl, ctr, containerd, systemctl, and etcd's tools inside the etcd container). Transport is
//! [`Runtime`]. Each parser is unit-tested below on output of the real tool, named with its source.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use tokio::io::AsyncReadExt;

use super::{ClusterError, ExecError, ExecStream, Runtime, argv_of, idempotent};

pub const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";
/// Where kind's containerd looks for per-registry hosts.toml files (`config_path` of the CRI registry).
pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";

/// An error for output a command printed that this layer cannot read.
fn unreadable(node: &str, argv: &[&str], out: &str, why: impl std::fmt::Display) -> ClusterError {
    ExecError {
        node: node.into(),
        command: argv_of(argv),
        code: Some(0),
        stdout: out.chars().take(500).collect(),
        stderr: format!("unexpected output: {why}"),
    }
    .into()
}

// ---------------------------------------------------------------------------------------------------------
// crictl

/// A running container as the CRI reports it, with its image resolved to a name where one is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriContainer {
    pub name: String,
    /// Image name (`docker.io/kindest/kindnetd:v…`), or the image ID when no name is known.
    pub image: String,
}

#[derive(Deserialize)]
struct PsList {
    #[serde(default)]
    containers: Vec<PsItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PsItem {
    #[serde(default)]
    metadata: PsMeta,
    #[serde(default)]
    image: ImageSpec,
    #[serde(default)]
    image_ref: String,
}

#[derive(Deserialize, Default)]
struct PsMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ImageSpec {
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
struct ImageList {
    #[serde(default)]
    images: Vec<CriImage>,
}

/// A container's image as `crictl ps -o json` gives it: `(name, image, user-specified image)`.
fn parse_ps(out: &str) -> Result<Vec<(String, String, String)>, serde_json::Error> {
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

fn parse_images(out: &str) -> Result<Vec<CriImage>, serde_json::Error> {
    Ok(serde_json::from_str::<ImageList>(out)?.images)
}

/// Whether a CRI image field holds an image ID (`sha256:<hex>`, or a bare 64-hex ID) rather than a name.
fn is_image_id(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of a container's image. A real kubelet creates containers with the image ID as their image
/// (cri-tools cmd/crictl/container.go: "Now c.Image.Image is imageID in kubelet"); the name is the CRI's
/// user-specified image where the runtime reports it, else a tag (or digest) of that ID in `crictl images`.
fn image_name(image: &str, user_specified: &str, images: &[CriImage]) -> String {
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
async fn containers_of(rt: &Runtime, node: &str, ps: &str) -> Result<Vec<CriContainer>, ClusterError> {
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
const NO_ETCD: &str = "no running etcd container: is the control plane healthy?";

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
pub async fn resume(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
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
fn parse_df(out: &str) -> Option<u64> {
    out.lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

// ---------------------------------------------------------------------------------------------------------
// containerd

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
fn parse_containerd_config(dump: &str) -> Result<ContainerdConfig, toml::de::Error> {
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
fn parse_images_ls(out: &str) -> Vec<ImageRecord> {
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
fn parse_content_ls(out: &str) -> std::collections::HashSet<String> {
    out.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("sha256:"))
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// several reads in one round trip

const PS: &[&str] = &["crictl", "ps", "-o", "json"];
const CRI_IMAGES: &[&str] = &["crictl", "images", "-o", "json"];
const IMAGES_LS: &[&str] = &["ctr", "--namespace=k8s.io", "images", "ls"];
const CONTENT_LS: &[&str] = &["ctr", "--namespace=k8s.io", "content", "ls", "-q"];
const CONFIG_DUMP: &[&str] = &["containerd", "config", "dump"];

/// One command's outcome in [`run_all`]: what it printed, or how it failed.
pub type Ran = Result<String, ExecError>;

/// Runs each positional argument as a command (split on white space, never globbed), all at once, each
/// into its own files; then prints, per command in order, `EXIT STDOUT-BYTES STDERR-BYTES`, a newline, and
/// both outputs. The files are in a temporary directory (kind mounts a tmpfs on the node's /tmp).
const RUN_ALL: &str = r#"# each argument a command, all at once
set -f
t=$(mktemp -d) || exit 1
trap 'rm -rf "$t"' EXIT
n=0
for c; do n=$((n+1)); { $c >"$t/$n.o" 2>"$t/$n.e"; echo $? >"$t/$n.c"; } & done
wait
i=0
while [ $i -lt $n ]; do i=$((i+1)); echo "$(cat "$t/$i.c") $(wc -c <"$t/$i.o") $(wc -c <"$t/$i.e")" && cat "$t/$i.o" "$t/$i.e" || exit 1; done"#;

/// Runs read-only commands in one round trip, all at once, each with its own exit code and output: every
/// exec costs a round trip and a runc exec in the node, and when every node is asked the same questions at
/// once, they contend for the same cores (docs/design.md, step 1, has the measurement).
/// No token of a command may hold white space.
pub async fn run_all(rt: &Runtime, node: &str, cmds: &[&[&str]]) -> Result<Vec<Ran>, ClusterError> {
    let joined: Vec<String> = cmds
        .iter()
        .map(|c| {
            debug_assert!(c.iter().all(|t| !t.is_empty() && !t.contains(char::is_whitespace)));
            c.join(" ")
        })
        .collect();
    let mut argv = vec!["sh", "-c", RUN_ALL, "sh"];
    argv.extend(joined.iter().map(String::as_str));
    let out = idempotent(|| rt.run_bytes(node, &argv)).await?;
    let frames = parse_frames(&out, cmds.len()).ok_or_else(|| ExecError {
        node: node.into(),
        command: argv_of(&argv),
        code: Some(0),
        stdout: String::new(),
        stderr: format!("output of {} bytes is not {} framed results", out.len(), cmds.len()),
    })?;
    Ok(frames
        .into_iter()
        .zip(cmds)
        .map(|((code, stdout, stderr), cmd)| {
            let stdout = String::from_utf8_lossy(stdout).into_owned();
            if code == 0 {
                return Ok(stdout);
            }
            Err(ExecError {
                node: node.into(),
                command: argv_of(cmd),
                code: Some(code),
                stdout: super::tail(&stdout),
                stderr: super::tail(&String::from_utf8_lossy(stderr)),
            })
        })
        .collect())
}

/// One command's result as [`RUN_ALL`] prints it: `(exit code, stdout, stderr)`.
type Frame<'a> = (i64, &'a [u8], &'a [u8]);

/// `count` results as [`RUN_ALL`] prints them, and nothing after them.
fn parse_frames(mut out: &[u8], count: usize) -> Option<Vec<Frame<'_>>> {
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        let nl = out.iter().position(|b| *b == b'\n')?;
        let mut head = std::str::from_utf8(&out[..nl]).ok()?.split_whitespace();
        let code: i64 = head.next()?.parse().ok()?;
        let olen: usize = head.next()?.parse().ok()?;
        let elen: usize = head.next()?.parse().ok()?;
        if head.next().is_some() {
            return None;
        }
        let (stdout, rest) = out[nl + 1..].split_at_checked(olen)?;
        let (stderr, rest) = rest.split_at_checked(elen)?;
        frames.push((code, stdout, stderr));
        out = rest;
    }
    out.is_empty().then_some(frames)
}

/// What a node runs and holds, read in one round trip: the CRI's containers, and containerd's image records,
/// content store and configuration.
#[derive(Debug, Clone)]
pub struct Survey {
    node: String,
    ps: Ran,
    images_ls: Ran,
    content_ls: Ran,
    config_dump: Ran,
}

pub async fn survey(rt: &Runtime, node: &str) -> Result<Survey, ClusterError> {
    let ran = run_all(rt, node, &[PS, IMAGES_LS, CONTENT_LS, CONFIG_DUMP]).await?;
    let [ps, images_ls, content_ls, config_dump]: [Ran; 4] = ran
        .try_into()
        .map_err(|_| unreadable(node, PS, "", "not one result per command"))?;
    Ok(Survey {
        node: node.to_owned(),
        ps,
        images_ls,
        content_ls,
        config_dump,
    })
}

impl Survey {
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Running containers, each with its image name (which may take a round trip more, see [`containers_of`]).
    pub async fn running_containers(&self, rt: &Runtime) -> Result<Vec<CriContainer>, ClusterError> {
        containers_of(rt, &self.node, self.ps.as_ref().map_err(|e| e.clone())?).await
    }

    /// The images the node holds, by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>, ClusterError> {
        Ok(parse_images_ls(self.images_ls.as_ref().map_err(|e| e.clone())?))
    }

    /// The digests of every blob in the node's content store.
    pub fn content_digests(&self) -> Result<std::collections::HashSet<String>, ClusterError> {
        Ok(parse_content_ls(self.content_ls.as_ref().map_err(|e| e.clone())?))
    }

    pub fn containerd_config(&self) -> Result<ContainerdConfig, ClusterError> {
        let out = self.config_dump.as_ref().map_err(|e| e.clone())?;
        parse_containerd_config(out).map_err(|e| unreadable(&self.node, CONFIG_DUMP, out, e))
    }
}

/// Reads several small files of known sizes in one round trip (`cat` of them all, split by size): the
/// archive API serves one path per request, one request at a time per node. Fails unless the output is
/// exactly the sum of `sizes`, so a file that changed size is never split wrongly.
pub async fn read_files(rt: &Runtime, node: &str, files: &[(&str, u64)]) -> Result<Vec<Vec<u8>>, ClusterError> {
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let mut argv = vec!["cat", "--"];
    argv.extend(files.iter().map(|(p, _)| *p));
    let out = idempotent(|| rt.run_bytes(node, &argv)).await?;
    let sizes: Vec<u64> = files.iter().map(|(_, s)| *s).collect();
    split_by_sizes(&out, &sizes).ok_or_else(|| {
        ExecError {
            node: node.into(),
            command: argv_of(&argv),
            code: Some(0),
            stdout: String::new(),
            stderr: format!(
                "read {} bytes, expected {}: a file changed meanwhile",
                out.len(),
                sizes.iter().sum::<u64>()
            ),
        }
        .into()
    })
}

/// Reads several small files whose sizes are not known, in one round trip: each is printed as its size
/// (`wc -c`), a newline, and its bytes.
pub async fn read_files_sized(rt: &Runtime, node: &str, paths: &[&str]) -> Result<Vec<Vec<u8>>, ClusterError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let script = r#"for f; do n=$(wc -c < "$f") || exit 1; echo $n; cat -- "$f" || exit 1; done"#;
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(paths);
    let out = idempotent(|| rt.run_bytes(node, &argv)).await?;
    parse_sized(&out, paths.len()).ok_or_else(|| {
        ExecError {
            node: node.into(),
            command: argv_of(&argv),
            code: Some(0),
            stdout: String::new(),
            stderr: format!("output of {} bytes is not {} sized files", out.len(), paths.len()),
        }
        .into()
    })
}

/// `count` records of `SIZE\n` + SIZE bytes, and nothing after them.
fn parse_sized(mut out: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let nl = out.iter().position(|b| *b == b'\n')?;
        let size: usize = std::str::from_utf8(&out[..nl]).ok()?.trim().parse().ok()?;
        let (one, rest) = out[nl + 1..].split_at_checked(size)?;
        files.push(one.to_vec());
        out = rest;
    }
    out.is_empty().then_some(files)
}

/// `out` cut into pieces of `sizes`; `None` unless they add up to exactly its length.
fn split_by_sizes(out: &[u8], sizes: &[u64]) -> Option<Vec<Vec<u8>>> {
    if sizes.iter().try_fold(0u64, |a, s| a.checked_add(*s))? != out.len() as u64 {
        return None;
    }
    let mut rest = out;
    sizes
        .iter()
        .map(|size| {
            let (one, tail) = rest.split_at_checked(usize::try_from(*size).ok()?)?;
            rest = tail;
            Some(one.to_vec())
        })
        .collect()
}

/// `ctr content fetch-blob`: one blob of `image`'s repository, by digest, from its registry, through kind's
/// registry hosts configuration, to standard output. It reads nothing from and writes nothing to the node's
/// containerd: no content, no lease and, unlike `ctr content fetch`, no image record (`client.Fetch` ends in
/// `createNewImage`, an `ImageService.Update` that drops the CRI's labels and repoints a tag that moved in the
/// registry; containerd `client/client.go`, `client/pull.go`). The tag in `image` is not resolved: only its
/// repository is used (`remotes.FetcherByDigest`).
fn fetch_blob_argv(image: &str, digest: &str, timeout_secs: u64) -> Vec<String> {
    argv_of(&[
        "timeout",
        &timeout_secs.to_string(),
        "ctr",
        "--namespace=k8s.io",
        "content",
        "fetch-blob",
        "--hosts-dir",
        CONTAINERD_HOSTS_DIR,
        image,
        digest,
    ])
}

/// A small blob (an index or manifest the node lacks) fetched from `image`'s registry into memory, checked
/// against `digest`; refused above `limit` bytes.
pub async fn fetch_blob_bytes(
    rt: &Runtime,
    node: &str,
    image: &str,
    digest: &str,
    limit: u64,
    timeout_secs: u64,
) -> Result<Vec<u8>, ClusterError> {
    let argv = fetch_blob_argv(image, digest, timeout_secs);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = idempotent(|| rt.run_bytes(node, &argv)).await?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if out.len() as u64 > limit || got != digest {
        return Err(unreadable(
            node,
            &argv,
            "",
            format!("the registry served {} bytes hashing to {got}", out.len()),
        ));
    }
    Ok(out)
}

/// Whether `image`'s registry serves every one of `digests`, asked from inside the node: the first byte of
/// each is read, then the transfer is dropped. Fails with the registry client's own last words.
pub async fn registry_serves(
    rt: &Runtime,
    node: &str,
    image: &str,
    digests: &[&str],
    timeout_secs: u64,
) -> Result<(), ClusterError> {
    let script = r#"h=$1; r=$2; t=$3; shift 3
e=$(mktemp) || exit 1
trap 'rm -f "$e"' EXIT
for d; do
  n=$(timeout "$t" ctr --namespace=k8s.io content fetch-blob --hosts-dir "$h" "$r" "$d" 2>"$e" | head -c 1 | wc -c)
  [ $((n)) -eq 1 ] || { echo "$d: nothing served within ${t}s" >&2; cat "$e" >&2; exit 1; }
done"#;
    let secs = timeout_secs.to_string();
    let mut argv = vec!["sh", "-c", script, "sh", CONTAINERD_HOSTS_DIR, image, &secs];
    argv.extend_from_slice(digests);
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// Streams one blob of `image`'s repository from its registry (see [`fetch_blob_argv`]); read it to its end,
/// then [`ExecStream::finish`] it.
pub async fn fetch_blob_stream(
    rt: &Runtime,
    node: &str,
    image: &str,
    digest: &str,
    timeout_secs: u64,
) -> Result<ExecStream, ClusterError> {
    let argv = fetch_blob_argv(image, digest, timeout_secs);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    rt.exec_stream(node, &argv).await
}

/// Argv importing an OCI archive from stdin the way kind loads images (kind nodeutils.LoadImageArchive).
/// Imports an OCI archive into the k8s.io namespace (what `kind load` does). `archive` makes the stream for
/// each attempt: first with `--all-platforms`; when containerd then misses a blob of another platform (a
/// snapshot holds only the node's platform), again for the node's platform only.
pub async fn import_images<F, R>(rt: &Runtime, node: &str, snapshotter: &str, archive: F) -> Result<(), ClusterError>
where
    F: Fn() -> R,
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    let first = import_argv(snapshotter, true);
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    // Importing the same archive again is harmless: run again if the runtime lost the exit.
    match idempotent(|| rt.run_with_stdin(node, &first, archive())).await {
        Ok(_) => Ok(()),
        // containerd's import: "content digest sha256:…: not found" for a platform's blobs not in the archive.
        Err(ClusterError::Exec(e)) if e.stderr.contains("content digest") => {
            let second = import_argv(snapshotter, false);
            let second: Vec<&str> = second.iter().map(String::as_str).collect();
            idempotent(|| rt.run_with_stdin(node, &second, archive()))
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// kind's `LoadImageArchive` argv less `--digests`: every image of the archive is named (its index's
/// `io.containerd.image.name`), and `--digests` would add an `import-<date>@sha256:…` record for each (containerd
/// `core/transfer/image/imagestore.go` WithDigestRef), which the next snapshot would list as images.
fn import_argv(snapshotter: &str, all_platforms: bool) -> Vec<String> {
    let mut argv = argv_of(&["ctr", "--namespace=k8s.io", "images", "import"]);
    if all_platforms {
        argv.push("--all-platforms".into());
    }
    argv.extend([format!("--snapshotter={snapshotter}"), "-".into()]);
    argv
}

/// Sets labels on an image record (`ctr images label`, which keeps the others): what an imported image had
/// when it was captured, kind's `io.cri-containerd.pinned=pinned` among them.
pub async fn label_image(
    rt: &Runtime,
    node: &str,
    image: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ClusterError> {
    if labels.is_empty() {
        return Ok(());
    }
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut argv = vec!["ctr", "--namespace=k8s.io", "images", "label", image];
    argv.extend(pairs.iter().map(String::as_str));
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

// ---------------------------------------------------------------------------------------------------------
// etcd, through the etcd container's own tools

/// `etcdctl` arguments reaching the local member with the server certificate, as kubeadm lays it out
/// (the etcd container mounts only /var/lib/etcd and the etcd PKI directory).
pub fn etcdctl_tls() -> Vec<String> {
    vec![
        "--endpoints=https://127.0.0.1:2379".into(),
        format!("--cacert={ETCD_PKI}/ca.crt"),
        format!("--cert={ETCD_PKI}/server.crt"),
        format!("--key={ETCD_PKI}/server.key"),
    ]
}

async fn etcd_exec(rt: &Runtime, node: &str, id: &str, args: &[String]) -> Result<String, ClusterError> {
    let mut argv = vec!["crictl", "exec", id];
    argv.extend(args.iter().map(String::as_str));
    rt.run(node, &argv).await
}

/// `etcdctl snapshot save PATH` inside the node's running etcd container: a consistent snapshot taken while
/// etcd serves. Then, in the same round trip, the node prints the file's size and a newline, streams the file
/// and removes it (on every exit of the script: it holds every Secret). PATH must be under /var/lib/etcd, the
/// one directory the container shares with the node. Returns the size and the stream of the file's bytes;
/// [`ExecStream::finish`] it after reading them.
pub async fn etcd_snapshot_out(rt: &Runtime, node: &str, path: &str) -> Result<(u64, ExecStream), ClusterError> {
    // The container is looked up in the same script (what `etcd_container` does): one exec fewer competing
    // with create's other reads. etcdctl's own output (its log, "Snapshot saved at") goes to standard error:
    // standard output is the file.
    let script = r#"m=$1; f=$2; shift 2; ids=$(crictl ps --name '^etcd$' --state running -q) || exit $?; id=$(echo "$ids" | head -n 1); [ -n "$id" ] || { echo "$m" >&2; exit 1; }; trap 'rm -f -- "$f"' EXIT; crictl exec "$id" "$@" >&2 || exit $?; n=$(wc -c < "$f") || exit 1; echo $n; cat -- "$f""#;
    let tls = etcdctl_tls();
    let mut argv = vec!["sh", "-c", script, "sh", NO_ETCD, path, "etcdctl"];
    argv.extend(tls.iter().map(String::as_str));
    argv.extend(["snapshot", "save", path]);
    let mut out = rt.exec_stream(node, &argv).await?;
    let mut line = Vec::new();
    while line.len() <= 20 {
        match out.read_u8().await {
            Ok(b'\n') => break,
            Ok(b) => line.push(b),
            Err(_) => break,
        }
    }
    match parse_size_line(&line) {
        Some(size) => Ok((size, out)),
        None => {
            out.finish().await?;
            Err(ExecError {
                node: node.into(),
                command: argv_of(&argv),
                code: Some(0),
                stdout: String::from_utf8_lossy(&line).into_owned(),
                stderr: "the snapshot's size was not printed".into(),
            }
            .into())
        }
    }
}

/// The size `wc -c < FILE` printed (busybox pads it with spaces, coreutils does not).
fn parse_size_line(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?.trim();
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `etcdctl` with TLS, inside the node's etcd container.
pub async fn etcdctl(rt: &Runtime, node: &str, args: &[&str]) -> Result<String, ClusterError> {
    let id = etcd_container(rt, node).await?;
    let mut all = vec!["etcdctl".to_owned()];
    all.extend(etcdctl_tls());
    all.extend(args.iter().map(|s| s.to_string()));
    etcd_exec(rt, node, &id, &all).await
}

/// The member's current revision (`etcdctl endpoint status -w json`).
pub async fn etcd_revision(rt: &Runtime, node: &str) -> Result<i64, ClusterError> {
    let out = etcdctl(rt, node, &["endpoint", "status", "-w", "json"]).await?;
    parse_endpoint_status(&out).ok_or_else(|| {
        unreadable(
            node,
            &["etcdctl", "endpoint", "status", "-w", "json"],
            &out,
            "no header.revision",
        )
    })
}

/// etcdctl's `endpoint status -w json` (etcdctl/ctlv3/command/printer_json.go): a list of
/// `{"Endpoint", "Status": {"header": {"revision", …}, …}}`.
fn parse_endpoint_status(out: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    v.as_array()?
        .first()?
        .get("Status")?
        .get("header")?
        .get("revision")?
        .as_i64()
}

/// A tool inside the etcd container that can restore a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreTool {
    /// Executable: `etcdutl`, `etcdctl`, or a bundled `etcdctl-3.5.x`.
    pub program: String,
    /// Whether `snapshot restore` takes `--bump-revision` and `--mark-compacted` (etcd ≥ 3.5.10).
    pub bump_revision: bool,
}

/// The `X.Y` of `etcdctl version` / `etcdutl version` output (`etcdctl version: 3.5.30`).
fn parse_tool_version(out: &str) -> Option<(u32, u32)> {
    let v = out.lines().next()?.split(':').nth(1)?.trim();
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Bundled `etcdctl-<version>` executables (registry.k8s.io/etcd:3.5.x-0 images, kubernetes
/// cluster/images/etcd/Makefile), newest first, from a listing of /usr/local/bin.
fn bundled_etcdctls(listing: &str) -> Vec<String> {
    let mut found: Vec<(Vec<u32>, String)> = listing
        .split_whitespace()
        .filter_map(|f| {
            let v = f.strip_prefix("etcdctl-")?;
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts.filter(|p| p.len() == 3).map(|p| (p, f.to_owned()))
        })
        .collect();
    found.sort();
    found.into_iter().rev().map(|(_, f)| f).collect()
}

/// Lists the bundled `etcdctl-<version>` of a registry.k8s.io/etcd image with shell built-ins only: those
/// images are distroless with bash-static copied to `/bin/sh` (kubernetes `cluster/images/etcd/Dockerfile`),
/// and have no `ls` or any other file tool. A glob that matches nothing prints itself, which is no version.
const LIST_BUNDLED_ETCDCTLS: &str = r#"for f in /usr/local/bin/etcdctl-*; do echo "${f##*/}"; done"#;

/// Finds the tool that restores snapshots inside the etcd container, without relying on error texts or on
/// any binary but the candidates themselves: etcdutl (etcd's own images, 3.6.5+ and etcd-io's 3.5), else an
/// etcdctl of 3.5 or older (3.6 dropped `etcdctl snapshot restore`: asked for it, etcdctl 3.6 prints the
/// `snapshot` help and exits 0), else a bundled `etcdctl-3.5.x` of registry.k8s.io/etcd images up to
/// 3.6.4-0 (listed by their shell's built-ins). `None`: no tool in this container can restore.
pub async fn etcd_restore_tool(rt: &Runtime, node: &str) -> Result<Option<RestoreTool>, ClusterError> {
    let id = etcd_container(rt, node).await?;
    let works = |program: &str| {
        let argv = vec![program.to_owned(), "version".to_owned()];
        let id = id.clone();
        async move {
            etcd_exec(rt, node, &id, &argv)
                .await
                .ok()
                .and_then(|out| parse_tool_version(&out))
        }
    };
    let mut program = None;
    if works("etcdutl").await.is_some() {
        program = Some("etcdutl".to_owned());
    } else if works("etcdctl").await.is_some_and(|v| v < (3, 6)) {
        program = Some("etcdctl".to_owned());
    } else if let Ok(listing) = etcd_exec(rt, node, &id, &argv_of(&["sh", "-c", LIST_BUNDLED_ETCDCTLS])).await {
        for candidate in bundled_etcdctls(&listing) {
            if works(&candidate).await.is_some_and(|v| v < (3, 6)) {
                program = Some(candidate);
                break;
            }
        }
    }
    let Some(program) = program else { return Ok(None) };
    let help = etcd_exec(
        rt,
        node,
        &id,
        &[program.clone(), "snapshot".into(), "restore".into(), "--help".into()],
    )
    .await
    .unwrap_or_default();
    Ok(Some(RestoreTool {
        bump_revision: help.contains("--bump-revision") && help.contains("--mark-compacted"),
        program,
    }))
}

/// The revision stored in a snapshot file inside the etcd container (`snapshot status -w json`).
pub async fn etcd_snapshot_revision(
    rt: &Runtime,
    node: &str,
    tool: &RestoreTool,
    path: &str,
) -> Result<i64, ClusterError> {
    let id = etcd_container(rt, node).await?;
    let args = [
        tool.program.clone(),
        "snapshot".into(),
        "status".into(),
        path.into(),
        "-w".into(),
        "json".into(),
    ];
    let out = etcd_exec(rt, node, &id, &args).await?;
    parse_snapshot_status(&out).ok_or_else(|| unreadable(node, &["snapshot", "status"], &out, "no revision"))
}

/// `snapshot status -w json` (etcdutl/etcdutl/printer_json.go): `{"hash","revision","totalKey","totalSize"}`,
/// on the last line (etcdctl 3.5 prints a deprecation notice to stderr first).
fn parse_snapshot_status(out: &str) -> Option<i64> {
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{'))?;
    serde_json::from_str::<serde_json::Value>(line)
        .ok()?
        .get("revision")?
        .as_i64()
}

/// What a restore of one member needs.
pub struct RestoreArgs<'a> {
    pub snapshot: &'a str,
    pub data_dir: &'a str,
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub token: &'a str,
    pub peer_url: &'a str,
    /// Revisions to add (with `--mark-compacted`), where the tool supports it.
    pub bump_revision: Option<u64>,
}

/// `snapshot restore` into a new data directory, inside the running etcd container.
pub async fn etcd_restore(
    rt: &Runtime,
    node: &str,
    tool: &RestoreTool,
    a: &RestoreArgs<'_>,
) -> Result<(), ClusterError> {
    let id = etcd_container(rt, node).await?;
    let mut args = vec![
        tool.program.clone(),
        "snapshot".into(),
        "restore".into(),
        a.snapshot.into(),
        format!("--data-dir={}", a.data_dir),
        format!("--name={}", a.name),
        format!("--initial-cluster={}", a.initial_cluster),
        format!("--initial-cluster-token={}", a.token),
        format!("--initial-advertise-peer-urls={}", a.peer_url),
    ];
    if let Some(bump) = a.bump_revision.filter(|_| tool.bump_revision) {
        args.extend([format!("--bump-revision={bump}"), "--mark-compacted".into()]);
    }
    etcd_exec(rt, node, &id, &args).await.map(|_| ())
}

/// Member IDs as the node's etcd member sees them (`member list`, simple format: `ID, status, name, …`), sorted.
pub async fn etcd_members(rt: &Runtime, node: &str) -> Result<Vec<String>, ClusterError> {
    let out = etcdctl(rt, node, &["member", "list"]).await?;
    Ok(parse_member_list(&out))
}

fn parse_member_list(out: &str) -> Vec<String> {
    let mut ids: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(',').next())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    ids.sort();
    ids
}

/// `etcdctl endpoint health` against the node's own member.
pub async fn etcd_health(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    etcdctl(rt, node, &["endpoint", "health"]).await.map(|_| ())
}

/// `--name` and `--initial-advertise-peer-urls` of the node's etcd static pod manifest.
pub async fn etcd_manifest_flags(rt: &Runtime, node: &str) -> Result<HashMap<String, String>, ClusterError> {
    let manifest = idempotent(|| rt.run(node, &["cat", "/etc/kubernetes/manifests/etcd.yaml"])).await?;
    Ok(parse_manifest_flags(&manifest))
}

/// `- --flag=value` lines of a kubeadm static pod manifest's command.
fn parse_manifest_flags(manifest: &str) -> HashMap<String, String> {
    manifest
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().strip_prefix("- --")?.split_once('=')?;
            Some((k.to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// files and directories: POSIX tools every kind node has (coreutils in kindest/node), and the archive API
// where the node may be paused (it reads and writes a paused container's filesystem; exec cannot).

/// Reads a small file through the archive API, whatever the node's state (paused included). `None` if absent.
pub async fn read_small_file(
    rt: &Runtime,
    node: &str,
    path: &str,
    max: usize,
) -> Result<Option<Vec<u8>>, ClusterError> {
    if !rt.path_exists(node, path).await? {
        return Ok(None);
    }
    let mut tar = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(
        &mut tokio::io::AsyncReadExt::take(rt.copy_out(node, path), (max + 64 * 1024) as u64),
        &mut tar,
    )
    .await;
    let fail = |why: String| -> ClusterError {
        ExecError {
            node: node.into(),
            command: vec![format!("(archive API) read {path}")],
            code: None,
            stdout: String::new(),
            stderr: why,
        }
        .into()
    };
    if let Err(e) = read {
        // Removed between the check and the copy: absent.
        return if rt.path_exists(node, path).await? {
            Err(fail(e.to_string()))
        } else {
            Ok(None)
        };
    }
    let mut archive = tar::Archive::new(tar.as_slice());
    let entries = archive.entries().map_err(|e| fail(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(e.to_string()))?;
        if entry.header().entry_type().is_file() {
            if entry.size() > max as u64 {
                return Err(fail(format!("{path} is larger than {max} bytes")));
            }
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out).map_err(|e| fail(e.to_string()))?;
            return Ok(Some(out));
        }
    }
    Err(fail(format!("{path} is not a regular file")))
}

/// [`write_file`]'s script: `$1` the directory, `$2` a temporary name, `$3` the file; standard input the bytes.
pub(crate) const WRITE_FILE_SCRIPT: &str = r#"mkdir -p "$1" && cat > "$2" && mv -f "$2" "$3""#;

/// Writes a file in a running node atomically: written beside it, then renamed over it.
pub async fn write_file(rt: &Runtime, node: &str, path: &str, bytes: Vec<u8>) -> Result<(), ClusterError> {
    let dir = path
        .rsplit_once('/')
        .map_or("/", |(d, _)| if d.is_empty() { "/" } else { d });
    let script = WRITE_FILE_SCRIPT;
    // Run again, it writes the same bytes again, through a temp file of its own.
    idempotent(|| {
        let tmp = format!("{path}.tmp-{}", crate::util::nonce());
        let bytes = bytes.clone();
        async move {
            rt.run_with_stdin(
                node,
                &["sh", "-c", script, "sh", dir, &tmp, path],
                std::io::Cursor::new(bytes),
            )
            .await
            .map(|_| ())
        }
    })
    .await
}

/// Replaces a file through the archive API: works while the node is paused, but is not atomic (readers must
/// tolerate a missing or partial file for a moment).
pub async fn put_file(rt: &Runtime, node: &str, dir: &str, name: &str, bytes: Vec<u8>) -> Result<(), ClusterError> {
    let name = name.to_owned();
    let stream = super::tar_stream(move |b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(jiff::Timestamp::now().as_second().max(0) as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, bytes.as_slice())
    });
    rt.copy_in(node, dir, stream).await
}

/// [`create_dir_with_file`]'s script: `$1` the parent, `$2` the directory, `$3` a temporary name, `$4` the file;
/// exit 17 when the directory was there.
pub(crate) const CREATE_DIR_WITH_FILE_SCRIPT: &str = r#"mkdir -p "$1" || exit 1; mkdir "$2" 2>/dev/null || { [ -e "$2" ] && exit 17; mkdir "$2"; exit 1; }; cat > "$3" && mv -f "$3" "$4""#;

/// Creates directory `dir` (its parents as needed), failing if it exists, and writes `bytes` into `dir/name`
/// (temp file + rename), in one round trip. `Ok(false)`: `dir` already exists (nothing was written).
pub async fn create_dir_with_file(
    rt: &Runtime,
    node: &str,
    dir: &str,
    name: &str,
    bytes: Vec<u8>,
) -> Result<bool, ClusterError> {
    let parent = dir
        .rsplit_once('/')
        .map_or("/", |(p, _)| if p.is_empty() { "/" } else { p });
    let tmp = format!("{dir}/.{name}.tmp");
    let file = format!("{dir}/{name}");
    // Exit 17 (EEXIST): the directory was there; any other failure is the command's error.
    let script = CREATE_DIR_WITH_FILE_SCRIPT;
    match rt
        .run_with_stdin(
            node,
            &["sh", "-c", script, "sh", parent, dir, &tmp, &file],
            std::io::Cursor::new(bytes),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(ClusterError::Exec(e)) if e.code == Some(17) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from` to `to` (one `rename(2)`: both on the same filesystem). `-T`: never moves `from` *into* an
/// existing directory `to` (coreutils and busybox both refuse or replace only an empty one).
pub async fn rename(rt: &Runtime, node: &str, from: &str, to: &str) -> Result<(), ClusterError> {
    match rt.run(node, &["mv", "-T", from, to]).await {
        // The runtime lost its exit: the filesystem says what happened. `from` gone means renamed (under the
        // cluster's lock nothing else moves it); still there, not renamed, so it is run again.
        Err(ClusterError::LostExit { .. }) => {
            let argv = [
                "sh",
                "-c",
                r#"[ -e "$1" ] || [ -L "$1" ] && echo there || echo gone"#,
                "sh",
                from,
            ];
            match idempotent(|| rt.run(node, &argv)).await?.trim() {
                "gone" => Ok(()),
                _ => rt.run(node, &["mv", "-T", from, to]).await.map(|_| ()),
            }
        }
        done => done.map(|_| ()),
    }
}

/// `mkdir -p`.
pub async fn mkdir_p(rt: &Runtime, node: &str, path: &str) -> Result<(), ClusterError> {
    let argv = ["mkdir", "-p", path];
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// `rm -rf` of each path (absent paths are fine).
pub async fn remove_all(rt: &Runtime, node: &str, paths: &[&str]) -> Result<(), ClusterError> {
    if paths.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["rm", "-rf", "--"];
    argv.extend_from_slice(paths);
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// [`remove_all_then_owned`]'s script: `$1` the directory, `$2` its file, `$3` the token, then the paths.
pub(crate) const REMOVE_ALL_THEN_OWNED_SCRIPT: &str = r#"d=$1; f=$2; t=$3; shift 3; rm -rf -- "$@" || exit 1; if grep -qF -- "$t" "$d/$f" 2>/dev/null; then rm -rf -- "$d" "$d".stale-*; fi"#;

/// Removes `paths`, then directory `dir` if its file `file` contains `token` (an ownership check), in one
/// round trip.
pub async fn remove_all_then_owned(
    rt: &Runtime,
    node: &str,
    paths: &[&str],
    dir: &str,
    file: &str,
    token: &str,
) -> Result<(), ClusterError> {
    // Also the tombstones of locks taken over (see `take_over_lock`): a process that judged one of them dead
    // checks and renames in two statements of one script, microseconds apart, and the holder releasing has run
    // a whole operation since.
    let script = REMOVE_ALL_THEN_OWNED_SCRIPT;
    let mut argv = vec!["sh", "-c", script, "sh", dir, file, token];
    argv.extend_from_slice(paths);
    idempotent(|| rt.run(node, &argv)).await.map(|_| ())
}

/// Takes over the lock directory `lock` of a dead holder: renames it to a tombstone named after that holder
/// (`<lock>.stale-<id>`), or, when it never got a holder file (killed between creating it and describing
/// itself), after the directory itself (`<lock>.stale-ino<inode>`, once it is `min_age_secs` old). Tombstones
/// are kept for ten minutes: a rename onto an existing non-empty directory fails, so of all the processes that
/// judged the same lock dead, exactly one moves it, and none can move the live lock one of them took next.
/// `dead_token` is what only the dead holder's file contains (`None`: it had none); `Ok(false)`: `lock` is not
/// that lock any more, or another process took it over first.
pub async fn take_over_lock(
    rt: &Runtime,
    node: &str,
    lock: &str,
    holder_file: &str,
    dead: Option<(&str, &str)>,
    min_age_secs: u64,
) -> Result<bool, ClusterError> {
    let script = r#"l=$1; f=$2; t=$3; id=$4; age=$5
find "${l%/*}" -maxdepth 1 -name "${l##*/}.stale-*" -mmin +10 -exec rm -rf {} \; 2>/dev/null
if [ -n "$t" ]; then
  grep -qF -- "$t" "$l/$f" 2>/dev/null || exit 3
  dest="$l.stale-$id"
else
  [ -e "$l/$f" ] && exit 3
  i=$(stat -c %i "$l" 2>/dev/null) && m=$(stat -c %Y "$l") || exit 3
  [ $(( $(date +%s) - m )) -ge "$age" ] || exit 3
  dest="$l.stale-ino$i"
fi
mv -T "$l" "$dest" 2>/dev/null || exit 3"#;
    let (token, id) = dead.unwrap_or(("", ""));
    let id: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    let age = min_age_secs.to_string();
    let argv = ["sh", "-c", script, "sh", lock, holder_file, token, &id, &age];
    match rt.run(node, &argv).await {
        Ok(_) => Ok(true),
        Err(ClusterError::Exec(e)) if e.code == Some(3) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes, beside each of `lives`, the copies earlier restores and rollbacks kept (`<live>.old-*`) but those
/// in `keep`, and what dead restores staged (`<live>.kubectl-snapshot-new-*`,
/// `<parent>/.kubectl-snapshot-stage-*`). Run under the cluster's lock, once a restore completed: nothing else
/// is using them. Returns what was removed.
pub async fn remove_stale_copies(
    rt: &Runtime,
    node: &str,
    lives: &[&str],
    keep: &[&str],
) -> Result<Vec<String>, ClusterError> {
    let script = r#"k='
'; while [ "$1" != "--" ]; do k="$k$1
"; shift; done; shift
for l; do
  for d in "$l".old-* "$l".kubectl-snapshot-new-* "${l%/*}"/.kubectl-snapshot-stage-*; do
    [ -e "$d" ] || continue
    case "$k" in *"
$d
"*) continue ;; esac
    rm -rf -- "$d" && echo "$d"
  done
done"#;
    let mut argv = vec!["sh", "-c", script, "sh"];
    argv.extend_from_slice(keep);
    argv.push("--");
    argv.extend_from_slice(lives);
    let out = idempotent(|| rt.run(node, &argv)).await?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// [`kept_copies`]'s script: the live paths as arguments; one `KiB path` line per copy.
pub(crate) const KEPT_COPIES_SCRIPT: &str = r#"for l; do
  for d in "$l".old-*; do
    [ -e "$d" ] || continue
    s=$(du -sk -- "$d" 2>/dev/null | cut -f1)
    echo "${s:-0} $d"
  done
done"#;

/// The copies a node keeps of each of `lives` (`<live>.old-*`: what restores and rollbacks moved aside), with
/// their size in bytes (`du -sk`, POSIX, as busybox and coreutils have it).
pub async fn kept_copies(rt: &Runtime, node: &str, lives: &[&str]) -> Result<Vec<(String, u64)>, ClusterError> {
    let mut argv = vec!["sh", "-c", KEPT_COPIES_SCRIPT, "sh"];
    argv.extend_from_slice(lives);
    let out = idempotent(|| rt.run(node, &argv)).await?;
    out.lines()
        .map(|l| {
            let (k, path) = l
                .split_once(' ')
                .ok_or_else(|| unreadable(node, &argv, &out, "no size"))?;
            let k: u64 = k.parse().map_err(|e| unreadable(node, &argv, &out, e))?;
            Ok((path.to_owned(), k.saturating_mul(1024)))
        })
        .collect()
}

/// Regular files under `path` (a name with a newline counts more than once, never less).
pub async fn count_files(rt: &Runtime, node: &str, path: &str) -> Result<usize, ClusterError> {
    let argv = ["sh", "-c", r#"find "$1" -type f | wc -l"#, "sh", path];
    let out = idempotent(|| rt.run(node, &argv)).await?;
    out.trim().parse().map_err(|e| unreadable(node, &argv, &out, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_output_is_parsed_and_anything_else_refused() {
        // What the script prints for a 3-byte file, an empty one and a file holding a newline (busybox's
        // `wc -c` pads with spaces).
        let out = b"3\nabc0\n      1\n\n";
        assert_eq!(parse_sized(out, 3), Some(vec![b"abc".to_vec(), vec![], b"\n".to_vec()]));
        assert_eq!(parse_sized(out, 2), None, "trailing bytes");
        assert_eq!(parse_sized(out, 4), None, "a record missing");
        assert_eq!(parse_sized(b"5\nabc", 1), None, "short");
        assert_eq!(parse_sized(b"x\nabc", 1), None, "not a size");
    }

    /// The script itself, run by this machine's `sh` (dash, as in kindest/node): each command's exit code and
    /// outputs come back framed, in order, whatever each printed or however it failed.
    #[test]
    fn commands_run_together_come_back_each_with_its_own_outcome() {
        let cmds: &[&[&str]] = &[
            &["printf", "%s\\n", "one", "two"],
            &["sh", "-c", "echo${IFS}out;echo${IFS}err>&2;exit${IFS}3"],
            &["no-such-tool-here", "x"],
            &["printf", "*"],
            &["true"],
        ];
        let joined: Vec<String> = cmds.iter().map(|c| c.join(" ")).collect();
        let out = std::process::Command::new("sh")
            .args(["-c", RUN_ALL, "sh"])
            .args(&joined)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let frames = parse_frames(&out.stdout, cmds.len()).expect("framed");
        assert_eq!(frames[0], (0, &b"one\ntwo\n"[..], &b""[..]));
        assert_eq!(frames[1], (3, &b"out\n"[..], &b"err\n"[..]));
        assert_eq!(frames[2].0, 127);
        assert!(
            String::from_utf8_lossy(frames[2].2).contains("not found"),
            "{:?}",
            frames[2]
        );
        assert_eq!(frames[3], (0, &b"*"[..], &b""[..]), "never globbed");
        assert_eq!(frames[4], (0, &b""[..], &b""[..]));
        assert_eq!(parse_frames(&out.stdout, cmds.len() + 1), None, "a result missing");
        assert_eq!(parse_frames(&out.stdout, cmds.len() - 1), None, "trailing bytes");
    }

    #[test]
    fn framed_results_are_parsed_by_their_lengths_and_anything_else_refused() {
        // Outputs holding newlines and what looks like a header; busybox's `wc -c` pads with spaces.
        let out = b"0 6 0\na\n1 2\n1       0       4\nerr\n";
        assert_eq!(
            parse_frames(out, 2),
            Some(vec![(0, &b"a\n1 2\n"[..], &b""[..]), (1, &b""[..], &b"err\n"[..])])
        );
        assert_eq!(parse_frames(b"0 5 0\nabc", 1), None, "short");
        assert_eq!(parse_frames(b"0 x 0\n", 1), None, "not a length");
        assert_eq!(parse_frames(b"0 0 0 0\n", 1), None, "a field too many");
        assert_eq!(parse_frames(b"0 0\n", 1), None, "a field missing");
        assert_eq!(parse_frames(b"", 0), Some(vec![]));
    }

    #[test]
    fn the_snapshot_size_line_is_a_number_and_nothing_else() {
        // `wc -c < FILE`: coreutils (kindest/node) prints the number, busybox pads it.
        assert_eq!(parse_size_line(b"20500512"), Some(20_500_512));
        assert_eq!(parse_size_line(b"   22528"), Some(22528));
        assert_eq!(parse_size_line(b""), None);
        assert_eq!(parse_size_line(b"-1"), None);
        assert_eq!(parse_size_line(b"{\"level\":\"info\"}"), None, "a log line is no size");
        assert_eq!(parse_size_line(b"99999999999999999999"), None, "beyond u64");
    }

    #[test]
    fn cat_output_is_split_by_the_declared_sizes_and_nothing_else() {
        assert_eq!(
            split_by_sizes(b"abcdef", &[1, 0, 2, 3]),
            Some(vec![b"a".to_vec(), vec![], b"bc".to_vec(), b"def".to_vec()])
        );
        // A file that grew or shrank since it was listed: nothing is split wrongly.
        assert_eq!(split_by_sizes(b"abcdef", &[1, 2]), None);
        assert_eq!(split_by_sizes(b"abc", &[1, 5]), None);
        assert_eq!(split_by_sizes(b"", &[u64::MAX, 1]), None);
    }

    /// `containerd config dump` of containerd 2.1.9 (Debian unstable's) loading kind's version-2 config.toml:
    /// printed as version 3 by go-toml v2, single-quoted (excerpt).
    const DUMP_V3: &str = "version = 3\nroot = '/var/lib/containerd'\nstate = '/run/containerd'\ntemp = ''\n\
        disabled_plugins = []\n\n[grpc]\n  address = '/run/containerd/containerd.sock'\n  uid = 0\n\n[plugins]\n\
        [plugins.'io.containerd.cri.v1.images']\n    snapshotter = 'overlayfs'\n    disable_snapshot_annotations = true\n\
        discard_unpacked_layers = true\n\n  [plugins.'io.containerd.cri.v1.runtime']\n    enable_selinux = false\n";

    /// containerd 1.7's dump of a version-2 config (double quotes, CRI plugin `io.containerd.grpc.v1.cri`).
    const DUMP_V2: &str = "version = 2\nroot = \"/var/lib/containerd\"\nstate = \"/run/containerd\"\n\n\
        [plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.10\"\n\
        [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      discard_unpacked_layers = true\n      snapshotter = \"native\"\n";

    #[test]
    fn containerd_config_v3_single_quotes() {
        let c = parse_containerd_config(DUMP_V3).unwrap();
        assert_eq!(
            c,
            ContainerdConfig {
                root: "/var/lib/containerd".into(),
                snapshotter: "overlayfs".into()
            }
        );
        assert_eq!(
            c.content_blobs(),
            "/var/lib/containerd/io.containerd.content.v1.content/blobs/sha256"
        );
    }

    #[test]
    fn containerd_config_v2_and_a_changed_snapshotter() {
        let c = parse_containerd_config(DUMP_V2).unwrap();
        assert_eq!(c.snapshotter, "native");
        let moved = DUMP_V3
            .replace("'/var/lib/containerd'", "'/data/containerd'")
            .replace("'overlayfs'", "'fuse-overlayfs'");
        let c = parse_containerd_config(&moved).unwrap();
        assert_eq!(
            (c.root.as_str(), c.snapshotter.as_str()),
            ("/data/containerd", "fuse-overlayfs")
        );
    }

    /// containerd 2.3 (kind v0.32+) dumps version 4 (`version/version.go` ConfigVersion = 4); its migration
    /// moves only grpc/ttrpc/debug/metrics into a server section, and the CRI images plugin keeps `snapshotter`
    /// (`internal/cri/config/config.go`, `plugins/cri/images/plugin.go` at v2.3.4).
    #[test]
    fn containerd_config_v4() {
        let v4 = DUMP_V3
            .replace("version = 3", "version = 4")
            .replace("'overlayfs'", "'native'");
        let c = parse_containerd_config(&v4).unwrap();
        assert_eq!(
            (c.root.as_str(), c.snapshotter.as_str()),
            ("/var/lib/containerd", "native")
        );
    }

    #[test]
    fn containerd_config_garbage_is_an_error() {
        assert!(parse_containerd_config("root = '/x\n[[[").is_err());
    }

    /// `crictl ps -o json` (cri-tools cmd/crictl/util.go: protojson, EmitDefaultValues, indent of two) for a
    /// kubelet-created container: the image is the image ID.
    const PS: &str = r#"{
  "containers": [
    {
      "id": "40ce44ebcbcfd3d4c6b1d2ab6e6a0e1d5f2c4b8e9a7f6d5c4b3a2910f8e7d6c5",
      "podSandboxId": "80965bd40966b",
      "metadata": {
        "name": "kindnet-cni",
        "attempt": 0
      },
      "image": {
        "image": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
        "annotations": {},
        "userSpecifiedImage": "",
        "runtimeHandler": ""
      },
      "imageRef": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
      "state": "CONTAINER_RUNNING",
      "createdAt": "1796205344000000000",
      "labels": {},
      "annotations": {}
    },
    {
      "id": "f33d1ec041cc8",
      "podSandboxId": "9fe6bdc5c1783",
      "metadata": {"name": "coredns", "attempt": 1},
      "image": {
        "image": "sha256:52546a367cc9e0d924aa3b190596a9167fa6e53245023b5b5baf0f07e5443969",
        "annotations": {},
        "userSpecifiedImage": "registry.k8s.io/coredns/coredns:v1.12.0",
        "runtimeHandler": ""
      },
      "imageRef": "sha256:52546a367cc9e0d924aa3b190596a9167fa6e53245023b5b5baf0f07e5443969",
      "state": "CONTAINER_RUNNING",
      "createdAt": "1796205344000000000",
      "labels": {},
      "annotations": {}
    }
  ]
}"#;

    /// `crictl images -o json` (same printer; `size` is a uint64, so a string).
    const IMAGES: &str = r#"{
  "images": [
    {
      "id": "sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca",
      "repoTags": [
        "docker.io/kindest/kindnetd:v20250512-df8de77b"
      ],
      "repoDigests": [],
      "size": "44375501",
      "username": "",
      "pinned": false
    },
    {
      "id": "sha256:e8281330373e9b25773a7de97b436bc245ca39e12838ac6fde4df2c3765bfb2d",
      "repoTags": [],
      "repoDigests": [
        "docker.io/library/nginx@sha256:9de3b1442976e5bb325a38cdb74de07aa0b4fe2c9d3ca029fccf5272bc901b85"
      ],
      "size": "1049211",
      "username": "",
      "pinned": false
    }
  ]
}"#;

    #[test]
    fn image_ids_resolve_to_names() {
        let ps = parse_ps(PS).unwrap();
        let images = parse_images(IMAGES).unwrap();
        let names: Vec<String> = ps.iter().map(|(_, i, u)| image_name(i, u, &images)).collect();
        assert_eq!(
            names,
            [
                "docker.io/kindest/kindnetd:v20250512-df8de77b",
                "registry.k8s.io/coredns/coredns:v1.12.0"
            ]
        );
        // A digest-only image resolves to its repo digest; an unknown ID stays an ID.
        let digest_only = "sha256:e8281330373e9b25773a7de97b436bc245ca39e12838ac6fde4df2c3765bfb2d";
        assert!(image_name(digest_only, "", &images).starts_with("docker.io/library/nginx@sha256:"));
        let unknown = format!("sha256:{}", "0".repeat(64));
        assert_eq!(image_name(&unknown, "", &images), unknown);
        // Names (an older runtime, or the fixture of old) pass through.
        assert_eq!(image_name("docker.io/x/y:1", "", &[]), "docker.io/x/y:1");
    }

    /// `ctr images ls` of containerd 2.1.9 in a kind-like node (columns padded; the CRI's `sha256:` records).
    const CTR_LS: &str = "REF                                           TYPE                                       DIGEST                                                                  SIZE    PLATFORMS   LABELS\n\
docker.io/kindest/kindnetd:v20250512-df8de77b application/vnd.oci.image.manifest.v1+json sha256:e4063ca9f144e9b42dc78969ea67f496c15ab4f89db0dca78afafd8f81f9ed68 795.0 B linux/amd64 io.cri-containerd.image=managed\n\
registry.k8s.io/pause:3.10                    application/vnd.oci.image.index.v1+json    sha256:9c807a8ca4413dc25c232a82afbe83ad3b268b503a034e32b6dfc26a8fb44eb4 780.0 B linux/amd64 io.cri-containerd.image=managed,io.cri-containerd.pinned=pinned\n\
sha256:d5a046d553a7a958ec794d35b1dcf9e6ab666eae200d6d6e6ed4d7b11a391aca       application/vnd.oci.image.manifest.v1+json sha256:e4063ca9f144e9b42dc78969ea67f496c15ab4f89db0dca78afafd8f81f9ed68 795.0 B linux/amd64 io.cri-containerd.image=managed\n";

    #[test]
    fn ctr_images_ls() {
        let got = parse_images_ls(CTR_LS);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].name, "registry.k8s.io/pause:3.10");
        assert_eq!(got[1].media_type, "application/vnd.oci.image.index.v1+json");
        assert!(got[0].digest.starts_with("sha256:e4063c"));
        assert_eq!(
            got[1]
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["io.cri-containerd.image=managed", "io.cri-containerd.pinned=pinned"]
        );
        let unlabelled = "REF TYPE DIGEST SIZE PLATFORMS LABELS\nx/y:1 application/vnd.oci.image.manifest.v1+json sha256:ab 1.0 KiB linux/amd64 -\n";
        assert!(parse_images_ls(unlabelled)[0].labels.is_empty());
    }

    #[test]
    fn etcd_outputs() {
        // etcdctl 3.5.30 `endpoint status -w json`
        let status = r#"[{"Endpoint":"https://127.0.0.1:2379","Status":{"header":{"cluster_id":4853638279150342533,"member_id":1033796535975940116,"revision":1234,"raft_term":3},"version":"3.5.30","dbSize":20480,"leader":1033796535975940116,"raftIndex":13,"raftTerm":3,"raftAppliedIndex":13,"dbSizeInUse":16384}}]"#;
        assert_eq!(parse_endpoint_status(status), Some(1234));
        // etcdutl 3.5.30 `snapshot status -w json`; etcdctl 3.5 prints the same after its deprecation notice
        assert_eq!(
            parse_snapshot_status("{\"hash\":1337392018,\"revision\":77,\"totalKey\":7,\"totalSize\":20480}\n"),
            Some(77)
        );
        assert_eq!(
            parse_snapshot_status(
                "Deprecated: Use `etcdutl snapshot status` instead.\n\n{\"hash\":1,\"revision\":5,\"totalKey\":7,\"totalSize\":1}"
            ),
            Some(5)
        );
        assert_eq!(
            parse_tool_version("etcdctl version: 3.5.30\nAPI version: 3.5\n"),
            Some((3, 5))
        );
        assert_eq!(
            parse_tool_version("etcdutl version: 3.6.5\nAPI version: 3.6\n"),
            Some((3, 6))
        );
        assert_eq!(parse_tool_version("garbage"), None);
        assert_eq!(
            bundled_etcdctls("etcd\netcd-3.4.18\netcd-3.5.12\netcdctl\netcdctl-3.4.18\netcdctl-3.5.12\nmigrate\n"),
            ["etcdctl-3.5.12", "etcdctl-3.4.18"]
        );
        // `member list` simple format
        assert_eq!(
            parse_member_list(
                "8e9e05c52164694d, started, kind-control-plane, https://172.18.0.2:2380, https://172.18.0.2:2379, false\n"
            ),
            ["8e9e05c52164694d"]
        );
        assert_eq!(
            parse_df(
                "Filesystem 1024-blocks Used Available Capacity Mounted on\noverlay 263174212 12345 100 5% /var\n"
            ),
            Some(102400)
        );
    }

    #[test]
    fn manifest_flags() {
        let m = "spec:\n  containers:\n  - command:\n    - etcd\n    - --name=kind-control-plane\n    - --initial-advertise-peer-urls=https://172.18.0.2:2380\n";
        let f = parse_manifest_flags(m);
        assert_eq!(f.get("name").map(String::as_str), Some("kind-control-plane"));
        assert_eq!(
            f.get("initial-advertise-peer-urls").map(String::as_str),
            Some("https://172.18.0.2:2380")
        );
    }
}
