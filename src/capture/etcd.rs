//! A consistent etcd snapshot, taken while the cluster runs: `etcdctl snapshot save` inside the etcd
//! container into /var/lib/etcd (the only data directory it shares with the node), streamed out of the node
//! through the archive API. The caller removes the copy (it holds every Secret) as soon as this returns,
//! whatever it returned, and the journal lists it until then.

use crate::bundle::{BundleSink, ETCD_ENTRY, metadata::EtcdInfo};
use crate::cluster::{Runtime, node};

use super::CaptureError;

/// Where the snapshot file is written in the node (the journal lists it, so that a killed create's copy is
/// removed by the next command).
pub fn copy_path(id: &str) -> String {
    format!("/var/lib/etcd/kubectl-snapshot-{id}.db")
}

pub async fn capture(
    rt: &Runtime,
    node_name: &str,
    container: &str,
    path: &str,
    sink: &BundleSink,
) -> Result<EtcdInfo, CaptureError> {
    let file = path.rsplit('/').next().unwrap_or(path).to_owned();
    let path = path.to_owned();
    node::etcd_snapshot_save(rt, node_name, container, &path).await?;
    let want = file.clone();
    let summary = sink
        .add_tar(
            rt.copy_out(node_name, &path),
            Box::new(move |p| (p == want).then(|| ETCD_ENTRY.to_owned())),
            crate::bundle::writer::Grouping::PerEntry,
        )
        .await?;
    let entry = summary
        .entries
        .into_iter()
        .next()
        .ok_or_else(|| CaptureError::Invalid(format!("{path} was not in the archive copied from {node_name}")))?;
    Ok(EtcdInfo {
        node: node_name.to_owned(),
        // Known once the node's containers are listed (the caller fills it in).
        image: String::new(),
        size: entry.size,
        digest: format!("sha256:{}", entry.sha256.unwrap_or_default()),
    })
}
