//! local-path-provisioner volumes: every directory under the provisioner's root on each node, streamed out
//! through the archive API (works without a shell or tar in the node) into `pvs/<node><root>/...`.
//!
//! Every node's roots are read at once. The bundle takes one stream at a time, so the first root streams
//! straight into it and the others into spools beside the bundle, which it then reads behind their copies, in
//! node order. The nodes can be thawed when the last byte has left them, while the bundle is still busy.

use std::path::Path;

use tokio::sync::oneshot;

use crate::bundle::writer::TarSummary;
use crate::bundle::{BundleError, BundleSink, PVS_DIR};
use crate::cluster::{ClusterError, Runtime};

use super::CaptureError;
use super::spool::Spool;

/// Stock kind keeps volumes under /var (inside the node's /var volume); upstream local-path-provisioner's
/// default is /opt. Both are captured where they exist.
pub use crate::bundle::PV_ROOTS as ROOTS;

/// One node's root that exists, and what it is in the bundle.
pub struct Captured {
    pub node: String,
    pub root: &'static str,
    pub summary: TarSummary,
}

/// Captures the roots of `nodes` (in their order, each node's in [`ROOTS`]' order) into `sink`, spooling in
/// `spool_dir`. `read` is told when every byte has left the nodes (it is dropped unsent on a failure).
pub async fn capture(
    rt: &Runtime,
    nodes: &[String],
    spool_dir: &Path,
    sink: &BundleSink,
    read: oneshot::Sender<()>,
) -> Result<Vec<Captured>, CaptureError> {
    let found = nodes.iter().flat_map(|n| ROOTS.iter().map(move |r| (n, *r)));
    let found = futures_util::future::try_join_all(found.map(|(node, root)| async move {
        Ok::<_, ClusterError>(rt.path_exists(node, root).await?.then_some((node, root)))
    }))
    .await?;
    let roots: Vec<(&String, &'static str)> = found.into_iter().flatten().collect();
    let Some((&(first_node, first_root), rest)) = roots.split_first() else {
        let _ = read.send(());
        return Ok(Vec::new());
    };
    let t0 = std::time::Instant::now();
    let spools = rest
        .iter()
        .map(|(node, root)| {
            Spool::start(spool_dir, rt.copy_out(node, root)).map_err(|e| CaptureError::Bundle(BundleError::Source(e)))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let mut out = Vec::with_capacity(roots.len());
    let summary = sink
        .add_tar(
            rt.copy_out(first_node, first_root),
            rename(first_node, first_root),
            crate::bundle::writer::Grouping::Grouped,
        )
        .await?;
    out.push(Captured {
        node: first_node.clone(),
        root: first_root,
        summary,
    });
    let appending = async {
        for (spool, (node, root)) in spools.iter().zip(rest) {
            let summary = sink
                .add_tar(
                    spool.reader(),
                    rename(node, root),
                    crate::bundle::writer::Grouping::Grouped,
                )
                .await?;
            out.push(Captured {
                node: (*node).clone(),
                root,
                summary,
            });
        }
        Ok::<_, CaptureError>(())
    };
    let copying = async {
        let bytes = futures_util::future::try_join_all(spools.iter().map(Spool::copied))
            .await
            .map_err(|e| CaptureError::Bundle(BundleError::Source(e)))?;
        if !rest.is_empty() {
            crate::util::trace(t0, || {
                format!(
                    "volumes of the other {} roots all read ({} bytes spooled)",
                    rest.len(),
                    bytes.iter().sum::<u64>()
                )
            });
        }
        let _ = read.send(());
        Ok(())
    };
    // Whichever fails first ends both: the nodes are thawed at once, not after the other copies.
    futures_util::future::try_join(appending, copying).await?;
    Ok(out)
}

/// Maps the archive's names (`local-path-provisioner/...`) to `pvs/<node><root>/...`.
fn rename(node: &str, root: &str) -> crate::bundle::writer::Rename {
    let base = root.rsplit('/').next().unwrap_or(root).to_owned();
    let prefix = format!("{PVS_DIR}/{node}{root}");
    Box::new(move |p: &str| {
        let rest = p.strip_prefix(&base)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        Some(format!("{prefix}{}", rest.trim_end_matches('/')))
    })
}
