//! local-path-provisioner volumes: every directory under the provisioner's root on each node, streamed out
//! through the archive API (works without a shell or tar in the node) into `pvs/<node><root>/...`.

use crate::bundle::writer::TarSummary;
use crate::bundle::{BundleSink, PVS_DIR};
use crate::cluster::Runtime;

use super::CaptureError;

/// Stock kind keeps volumes under /var (inside the node's /var volume); upstream local-path-provisioner's
/// default is /opt. Both are captured where they exist.
pub use crate::bundle::PV_ROOTS as ROOTS;

pub async fn capture(rt: &Runtime, node: &str, sink: &BundleSink) -> Result<Vec<(String, TarSummary)>, CaptureError> {
    let mut out = Vec::new();
    for root in ROOTS {
        if !rt.path_exists(node, root).await? {
            continue;
        }
        let base = root.rsplit('/').next().unwrap_or(root).to_owned();
        let prefix = format!("{PVS_DIR}/{node}{root}");
        let rename = Box::new(move |p: &str| {
            let rest = p.strip_prefix(&base)?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            Some(format!("{prefix}{}", rest.trim_end_matches('/')))
        });
        let summary = sink
            .add_tar(
                rt.copy_out(node, root),
                rename,
                crate::bundle::writer::Grouping::Grouped,
            )
            .await?;
        out.push((root.to_string(), summary));
    }
    Ok(out)
}
