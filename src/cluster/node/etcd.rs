//! etcd, through the etcd container's own tools.

use super::*;

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

pub(super) async fn etcd_exec(rt: &Runtime, node: &str, id: &str, args: &[String]) -> Result<String, ClusterError> {
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
pub(super) fn parse_size_line(line: &[u8]) -> Option<u64> {
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
pub(super) fn parse_endpoint_status(out: &str) -> Option<i64> {
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
pub(super) fn parse_tool_version(out: &str) -> Option<(u32, u32)> {
    let v = out.lines().next()?.split(':').nth(1)?.trim();
    let mut parts = v.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Bundled `etcdctl-<version>` executables (registry.k8s.io/etcd:3.5.x-0 images, kubernetes
/// cluster/images/etcd/Makefile), newest first, from a listing of /usr/local/bin.
pub(super) fn bundled_etcdctls(listing: &str) -> Vec<String> {
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
pub(super) const LIST_BUNDLED_ETCDCTLS: &str = r#"for f in /usr/local/bin/etcdctl-*; do echo "${f##*/}"; done"#;

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
pub(super) fn parse_snapshot_status(out: &str) -> Option<i64> {
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

pub(super) fn parse_member_list(out: &str) -> Vec<String> {
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
pub(super) fn parse_manifest_flags(manifest: &str) -> HashMap<String, String> {
    manifest
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().strip_prefix("- --")?.split_once('=')?;
            Some((k.to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}
