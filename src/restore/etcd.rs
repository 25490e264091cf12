//! HA-safe etcd restore, per control plane: the snapshot is copied into /var/lib/etcd (the directory the etcd
//! container shares with the node), restored with a tool of the etcd container itself (found in pre-flight:
//! etcdutl, a 3.5 etcdctl, or a bundled `etcdctl-3.5.x`) into a new directory while etcd still runs, and — once
//! the cluster is quiesced — switched in by rename, the old data kept aside (see `cluster::journal`). The
//! restore tool can only write inside /var/lib/etcd (the one directory the etcd container shares with the
//! node), so the restored directory is then moved out beside it, where the switch expects it. Every member
//! gets the same `--initial-cluster` and one fresh `--initial-cluster-token`.
//!
//! The restored revision is bumped past every revision the live cluster may have handed out since the
//! snapshot (`--bump-revision` with `--mark-compacted`, etcd ≥ 3.5.10), so watchers outside the cluster —
//! `kubectl get -w`, a controller on a laptop — see the rollback as a compaction and relist instead of
//! silently missing it (etcd #16028).

use std::path::Path;

use crate::cluster::Runtime;
use crate::cluster::node::{self, RestoreArgs, RestoreTool};

use super::RestoreError;
use crate::cluster::tar_stream;

pub const LIVE: &str = "/var/lib/etcd";

/// Where the snapshot file is copied for the restore tool.
pub fn staged_db(id: &str) -> String {
    format!("{LIVE}/kubectl-snapshot-restore-{id}.db")
}

/// Where the restore tool writes (inside the directory the etcd container shares with the node).
pub fn side_dir(id: &str) -> String {
    format!("{LIVE}/.kubectl-snapshot-restored-{id}")
}

/// Where the restored data waits for the switch: beside /var/lib/etcd, on the same filesystem.
pub fn staged_dir(id: &str) -> String {
    format!("{LIVE}.kubectl-snapshot-new-{id}")
}

/// Revisions added on top of the live revision: room for every write between measuring it and quiescing.
/// The value Kubernetes' etcd restore guidance uses (1,000,000,000); revisions are int64, so even thousands
/// of restores leave room.
pub const REVISION_MARGIN: i64 = 1_000_000_000;

/// A control plane's etcd member, as its static pod manifest declares it.
#[derive(Debug, Clone)]
pub struct EtcdMember {
    pub node: String,
    pub name: String,
    pub peer_url: String,
}

/// Reads `--name` and `--initial-advertise-peer-urls` from the node's etcd manifest.
pub async fn member(rt: &Runtime, node_name: &str) -> Result<EtcdMember, RestoreError> {
    let flags = node::etcd_manifest_flags(rt, node_name).await?;
    let name = flags.get("name").cloned().unwrap_or_else(|| node_name.to_owned());
    let peer_url = flags
        .get("initial-advertise-peer-urls")
        .and_then(|v| v.split(',').next().map(str::to_owned))
        .ok_or_else(|| RestoreError::EtcdManifest {
            node: node_name.to_owned(),
            flag: "initial-advertise-peer-urls",
        })?;
    Ok(EtcdMember {
        node: node_name.to_owned(),
        name,
        peer_url,
    })
}

/// The same for every member of one restore.
pub struct EtcdPlan<'a> {
    pub db: &'a Path,
    pub initial_cluster: &'a str,
    pub token: &'a str,
    /// The operation's id: names the staged files.
    pub id: &'a str,
    /// The highest revision the live cluster reported before the restore.
    pub live_revision: i64,
}

/// Copies the snapshot in, restores it into the side directory (inside /var/lib/etcd) while etcd runs, and
/// moves the result to [`staged_dir`]. Returns the revision bump applied (`None` where the tool cannot bump).
pub async fn prepare(
    rt: &Runtime,
    m: &EtcdMember,
    tool: &RestoreTool,
    plan: &EtcdPlan<'_>,
) -> Result<Option<u64>, RestoreError> {
    let db = plan.db.to_owned();
    let staged = staged_db(plan.id);
    let name = staged.rsplit('/').next().unwrap_or_default().to_owned();
    let stream = tar_stream(move |b| {
        let mut f = std::fs::File::open(&db)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(f.metadata()?.len());
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &name, &mut f)
    });
    rt.copy_in(&m.node, LIVE, stream).await?;
    let bump = if tool.bump_revision {
        let snapshot_revision = node::etcd_snapshot_revision(rt, &m.node, tool, &staged).await?;
        Some(((plan.live_revision - snapshot_revision).max(0) + REVISION_MARGIN) as u64)
    } else {
        None
    };
    let args = RestoreArgs {
        snapshot: &staged,
        data_dir: &side_dir(plan.id),
        name: &m.name,
        initial_cluster: plan.initial_cluster,
        token: plan.token,
        peer_url: &m.peer_url,
        bump_revision: bump,
    };
    node::etcd_restore(rt, &m.node, tool, &args).await?;
    node::remove_all(rt, &m.node, &[&staged]).await?;
    node::rename(rt, &m.node, &side_dir(plan.id), &staged_dir(plan.id)).await?;
    Ok(bump)
}
