//! Several reads in one round trip (the survey, files by size), and images in and out of containerd.

use super::*;

pub(super) const PS: &[&str] = &["crictl", "ps", "-o", "json"];
pub(super) const CRI_IMAGES: &[&str] = &["crictl", "images", "-o", "json"];
pub(super) const IMAGES_LS: &[&str] = &["ctr", "--namespace=k8s.io", "images", "ls"];
pub(super) const CONTENT_LS: &[&str] = &["ctr", "--namespace=k8s.io", "content", "ls", "-q"];
pub(super) const CONFIG_DUMP: &[&str] = &["containerd", "config", "dump"];

/// One command's outcome in [`run_all`]: what it printed, or how it failed.
pub type Ran = Result<String, ExecError>;

/// Runs each positional argument as a command (split on white space, never globbed), all at once, each
/// into its own files; then prints, per command in order, `EXIT STDOUT-BYTES STDERR-BYTES`, a newline, and
/// both outputs. The files are in a temporary directory (kind mounts a tmpfs on the node's /tmp).
pub(super) const RUN_ALL: &str = r#"# each argument a command, all at once
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
                stdout: crate::cluster::tail(&stdout),
                stderr: crate::cluster::tail(&String::from_utf8_lossy(stderr)),
            })
        })
        .collect())
}

/// One command's result as [`RUN_ALL`] prints it: `(exit code, stdout, stderr)`.
pub(super) type Frame<'a> = (i64, &'a [u8], &'a [u8]);

/// `count` results as [`RUN_ALL`] prints them, and nothing after them.
pub(super) fn parse_frames(mut out: &[u8], count: usize) -> Option<Vec<Frame<'_>>> {
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
pub(super) fn parse_sized(mut out: &[u8], count: usize) -> Option<Vec<Vec<u8>>> {
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
pub(super) fn split_by_sizes(out: &[u8], sizes: &[u64]) -> Option<Vec<Vec<u8>>> {
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
pub(super) fn fetch_blob_argv(image: &str, digest: &str, timeout_secs: u64) -> Vec<String> {
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
pub(super) fn import_argv(snapshotter: &str, all_platforms: bool) -> Vec<String> {
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
