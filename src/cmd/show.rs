//! `kubectl snapshot show [CLUSTER] SNAPSHOT [-o json|yaml]`

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::Output;
use super::{Ctx, Info, cluster_and_snapshot, print_structured};
use crate::bundle::Metadata;
use crate::settings::{RemoteArgs, resolve};
use crate::util::{age, human_bytes};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot show [CLUSTER] <SNAPSHOT> [-o json|yaml]")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT: with one argument it is the snapshot, and the cluster is auto-detected.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Output format (default: key/value lines).
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Shown<'a> {
    #[serde(flatten)]
    metadata: &'a Metadata,
    size: u64,
    archive_digest: Option<String>,
    path: String,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (cluster, name) = cluster_and_snapshot(&args.args, "show")?;
    let cluster = ctx.stored_cluster(cluster).await?;
    // Local, or a remote's metadata without downloading the bundle.
    let (metadata, size, digest, path) = match resolve(&args.remote, false)? {
        None => {
            let info = Info::load(ctx.store.get(&cluster, &name)?);
            let m = info
                .metadata
                .map_err(|e| anyhow!("cannot read the metadata of snapshot {:?}: {e}", name.as_str()))?;
            (
                m,
                info.local.size,
                info.archive_digest,
                info.local.paths.bundle.display().to_string(),
            )
        }
        Some(r) => {
            let head = r.head(&cluster, &name).await?;
            let m = Metadata::from_json(head.metadata.as_deref().unwrap_or_default())?;
            (m, head.size, head.sha256, format!("{} {cluster}/{name}", r.describe()))
        }
    };
    let archive_digest = digest.as_ref().map(|h| format!("sha256:{h}"));
    let shown = Shown {
        metadata: &metadata,
        size,
        archive_digest,
        path,
    };
    if let Some(output) = args.output {
        return print_structured(&shown, output);
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), describe(shown).as_bytes())?;
    Ok(())
}

/// The snapshot as `kubectl describe` shows an object: one `Key: value` line each, addons and images kept by
/// reference listed below.
fn describe(shown: Shown<'_>) -> String {
    let Shown {
        metadata: m,
        size,
        archive_digest,
        path,
    } = shown;
    let mut lines = vec![
        ("Name", m.name.clone()),
        ("Cluster", m.cluster.clone()),
        (
            "Created",
            format!(
                "{} ({})",
                m.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                age(m.created, jiff::Timestamp::now())
            ),
        ),
        ("Size", human_bytes(size)),
        ("K8s Version", m.k8s_version.clone()),
        ("Node Image", m.node_image.clone()),
        ("Platform", m.platform.clone()),
        ("Topology", m.topology_summary()),
    ];
    let mut out = String::new();
    let width = 16;
    // Every value is bundle text: one line each, nothing a terminal acts on.
    let line = |v: &str| crate::util::printable_line(v).into_owned();
    for (k, v) in lines.drain(..) {
        out.push_str(&format!("{:<width$}{}\n", format!("{k}:"), line(&v)));
    }
    out.push_str("Addons:\n");
    if m.addons.is_empty() {
        out.push_str("  (none detected)\n");
    }
    for (k, v) in &m.addons {
        out.push_str(&format!(
            "  {:<w$}{}\n",
            format!("{}:", line(k)),
            line(v),
            w = width.max(k.len() + 2)
        ));
    }
    let rest = [
        ("Etcd Digest", m.etcd.digest.clone()),
        (
            "Images Digest",
            format!(
                "{} ({} blobs, {})",
                m.images.digest,
                m.images.blobs,
                human_bytes(m.images.size)
            ),
        ),
        ("Images Mode", format!("{:?}", m.images.mode).to_lowercase()),
        (
            "PVs Digest",
            format!("{} ({} files, {})", m.pvs.digest, m.pvs.files, human_bytes(m.pvs.size)),
        ),
        (
            "Archive Digest",
            archive_digest.map_or_else(|| "(no sidecar: incomplete)".into(), |d| format!("{d} (from sidecar)")),
        ),
        ("Path", path),
    ];
    for (k, v) in rest {
        out.push_str(&format!("{:<width$}{}\n", format!("{k}:"), line(&v)));
    }
    let by_ref = by_reference(m);
    if !by_ref.is_empty() {
        out.push_str("Images By Reference (not in the bundle; pulled by the kubelet after a restore):\n");
        out.extend(by_ref);
    }
    out
}

/// Images the snapshot names but does not hold, a line each: `node: name (digest)`.
fn by_reference(m: &Metadata) -> Vec<String> {
    let line = |v: &str| crate::util::printable_line(v).into_owned();
    m.images
        .nodes
        .iter()
        .flat_map(|(node, i)| {
            i.by_reference
                .iter()
                .map(move |r| format!("  {}: {} ({})\n", line(node), line(&r.name), line(&r.digest)))
        })
        .collect()
}
