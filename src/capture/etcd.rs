//! A consistent etcd snapshot, taken while the cluster runs: `etcdctl snapshot save` inside the etcd
//! container into /var/lib/etcd (the only data directory it shares with the node), then streamed out of the
//! node and removed from it, all in one round trip. The journal lists the copy meanwhile, so that a killed
//! create's copy is removed by the next command.

use crate::bundle::{BundleSink, ETCD_ENTRY, metadata::EtcdInfo};
use crate::cluster::{ClusterError, Runtime, node};

use super::CaptureError;

/// Where the snapshot file is written in the node (the journal lists it, so that a killed create's copy is
/// removed by the next command).
pub fn copy_path(id: &str) -> String {
    format!("/var/lib/etcd/kubectl-snapshot-{id}.db")
}

pub async fn capture(rt: &Runtime, node_name: &str, path: &str, sink: &BundleSink) -> Result<EtcdInfo, CaptureError> {
    let (size, mut out) = node::etcd_snapshot_out(rt, node_name, path).await?;
    let added = sink.add_file(ETCD_ENTRY, size, 0o600, &mut out).await;
    // The command's own failure says more than a stream that ended short.
    match out.finish().await {
        // Every byte the node declared arrived, and the script prints nothing after them: only its exit status
        // was lost (containerd #8557). The snapshot's own sha256 trailer, written by `etcdctl snapshot save`,
        // is checked again when it is restored (etcdutl refuses it without --skip-hash-check).
        Err(ClusterError::LostExit { .. }) if added.is_ok() => {}
        finished => finished?,
    }
    let entry = added?;
    Ok(EtcdInfo {
        node: node_name.to_owned(),
        // Known once the node's containers are listed (the caller fills it in).
        image: String::new(),
        size: entry.size,
        digest: format!("sha256:{}", entry.sha256.unwrap_or_default()),
    })
}
