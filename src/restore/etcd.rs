//! HA-safe etcd restore, per control plane: the snapshot is copied into /var/lib/etcd (the directory the etcd
//! container shares with the node), restored with the etcd container's own tools into a new directory while
//! etcd still runs, and — once the cluster is quiesced — swapped in by rename, the old data kept aside. Every
//! member gets the same `--initial-cluster` and one fresh `--initial-cluster-token`.

use std::path::Path;

use crate::capture::node;
use crate::cluster::{ClusterError, Runtime};

use super::{RestoreError, tar_stream};

pub const STAGED_DB: &str = "kubectl-snapshot-restore.db";

/// A control plane's etcd member, as its static pod manifest declares it.
#[derive(Debug, Clone)]
pub struct Member {
    pub node: String,
    pub name: String,
    pub peer_url: String,
}

/// Reads `--name` and `--initial-advertise-peer-urls` from the node's etcd manifest.
pub async fn member(rt: &Runtime, node_name: &str) -> Result<Member, RestoreError> {
    let manifest = rt.run(node_name, &["cat", "/etc/kubernetes/manifests/etcd.yaml"]).await?;
    let flag = |f: &str| {
        manifest.lines().find_map(|l| l.trim().trim_start_matches("- ").strip_prefix(&format!("--{f}=")).map(|v| v.trim().trim_matches('"').to_owned()))
    };
    let name = flag("name").unwrap_or_else(|| node_name.to_owned());
    let peer_url = flag("initial-advertise-peer-urls")
        .and_then(|v| v.split(',').next().map(str::to_owned))
        .ok_or_else(|| RestoreError::Invalid(format!("{node_name}: the etcd manifest has no --initial-advertise-peer-urls")))?;
    Ok(Member { node: node_name.to_owned(), name, peer_url })
}

/// Copies the snapshot in and restores it into `side_dir` (inside /var/lib/etcd) while etcd runs.
pub async fn prepare(rt: &Runtime, m: &Member, db: &Path, initial_cluster: &str, token: &str, side_dir: &str) -> Result<(), RestoreError> {
    let db = db.to_owned();
    let stream = tar_stream(move |b| {
        let mut f = std::fs::File::open(&db)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(f.metadata()?.len());
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, STAGED_DB, &mut f)
    });
    rt.copy_in(&m.node, "/var/lib/etcd", stream).await?;
    let id = node::etcd_container(rt, &m.node).await?;
    let staged = format!("/var/lib/etcd/{STAGED_DB}");
    let args = |tool: &str| -> Vec<String> {
        let mut v: Vec<String> = vec!["crictl".into(), "exec".into(), id.clone(), tool.into(), "snapshot".into(), "restore".into(), staged.clone()];
        v.extend([
            format!("--data-dir={side_dir}"),
            format!("--name={}", m.name),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token={token}"),
            format!("--initial-advertise-peer-urls={}", m.peer_url),
        ]);
        v
    };
    // etcd 3.6 images carry etcdutl (and removed `etcdctl snapshot restore`); 3.5 images may only have etcdctl.
    let utl = args("etcdutl");
    let utl: Vec<&str> = utl.iter().map(String::as_str).collect();
    match rt.run(&m.node, &utl).await {
        Ok(_) => Ok(()),
        Err(ClusterError::Exec(e)) if e.code == Some(126) || e.code == Some(127) || e.stderr.contains("executable file not found") || e.stderr.contains("No such file") => {
            let ctl = args("etcdctl");
            let ctl: Vec<&str> = ctl.iter().map(String::as_str).collect();
            rt.run(&m.node, &ctl).await.map(|_| ()).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

/// Swaps the restored directory in (all renames within the /var volume) and keeps the old data as `old_dir`.
pub async fn swap(rt: &Runtime, node_name: &str, side_dir: &str, old_dir: &str) -> Result<(), RestoreError> {
    let script = format!(
        "set -e; mv '{side_dir}' /var/lib/etcd.kubectl-snapshot-new; mv /var/lib/etcd '{old_dir}'; \
         mv /var/lib/etcd.kubectl-snapshot-new /var/lib/etcd; rm -f '{old_dir}/{STAGED_DB}'"
    );
    rt.run(node_name, &["sh", "-c", &script]).await.map(|_| ()).map_err(Into::into)
}

/// Removes what [`prepare`] left behind (when restore stops before the swap).
pub async fn discard(rt: &Runtime, node_name: &str, side_dir: &str) {
    let _ = rt.run(node_name, &["rm", "-rf", side_dir, &format!("/var/lib/etcd/{STAGED_DB}")]).await;
}

/// Member IDs as the node's etcd member sees them (`member list`), sorted.
pub async fn members(rt: &Runtime, node_name: &str) -> Result<Vec<String>, RestoreError> {
    let id = node::etcd_container(rt, node_name).await?;
    let mut argv: Vec<String> = vec!["crictl".into(), "exec".into(), id, "etcdctl".into()];
    argv.extend(node::etcdctl_tls());
    argv.extend(["member".into(), "list".into()]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = rt.run(node_name, &argv).await?;
    let mut ids: Vec<String> = out.lines().filter_map(|l| l.split(',').next()).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    ids.sort();
    Ok(ids)
}
