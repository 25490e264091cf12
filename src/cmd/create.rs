//! `kubectl snapshot create [CLUSTER] [SNAPSHOT] [--name SNAPSHOT] [--json]`

use anyhow::Result;
use serde::Serialize;

use super::{Ctx, UsageError, push_snapshot, snapshot_name};
use crate::bundle::metadata::ImagesMode;
use crate::bundle::{Metadata, WriterOptions};
use crate::capture::{self, Request};
use crate::progress::{PhaseRecord, Progress};
use crate::settings::{RemoteArgs, S3Args, require};
use crate::util::human_bytes;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster to capture (default: KIND_CLUSTER_NAME, else the only kind cluster).
    pub cluster: Option<String>,
    /// Snapshot name (default: snap-YYYYMMDD-HHMMSS, UTC): up to 128 letters, digits, '.', '_', '-', not
    /// starting with '.' or '-' (the OCI tag rules).
    pub snapshot: Option<String>,
    /// Snapshot name, as an alternative to the positional argument.
    #[arg(long = "name", value_name = "SNAPSHOT")]
    pub name: Option<String>,
    /// Print a JSON CreateResult (phases, metadata, path, size, sha256) instead of a summary line.
    #[arg(long)]
    pub json: bool,
    /// `-o json`: the same as --json.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<super::ResultOutput>,
    /// Which images to capture: all (fetch layers a node discarded after a pull from the image's registry,
    /// inside the node; an image that cannot be fetched is kept by reference, with a warning), local (only
    /// what the nodes hold; the rest by reference), none (etcd and volumes only, the fastest).
    #[arg(long, value_enum, default_value_t = ImagesMode::All)]
    pub images: ImagesMode,
    /// gzip level for data that is not already compressed (0-9). The default, 3, was chosen by measurement: about
    /// twice as fast as 6 for bundles about 5% larger (docs/design.md); 6 or 9 for smaller bundles. Snapshots
    /// share remote members only when written at the same level.
    #[arg(long, default_value_t = crate::bundle::writer::DEFAULT_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: u32,
    /// Then push the snapshot to REMOTE (a name or URL; without a value: the S3 flags, else the default remote).
    #[arg(long, value_name = "REMOTE", num_args = 0..=1, default_missing_value = "")]
    pub push: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub oci: crate::settings::OciArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateResult<'a> {
    name: &'a str,
    cluster: &'a str,
    path: String,
    size: u64,
    sha256: &'a str,
    phases: &'a [PhaseRecord],
    /// Seconds the nodes were frozen (or stopped), from the first pause to the last thaw.
    frozen_seconds: Option<f64>,
    metadata: &'a Metadata,
    warnings: &'a [String],
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let json = args.json || args.output.is_some();
    let name = match (&args.snapshot, &args.name) {
        (Some(a), Some(b)) if a != b => {
            return Err(UsageError(format!("two snapshot names given ({a:?} and --name {b:?}); give one")).into());
        }
        (Some(n), _) | (None, Some(n)) => n.clone(),
        (None, None) => jiff::Timestamp::now().strftime("snap-%Y%m%d-%H%M%S").to_string(),
    };
    let name = snapshot_name(&name)?;
    // Resolve the remote before capturing, so a bad remote fails fast.
    let remote = match &args.push {
        Some(r) => Some(require(&RemoteArgs {
            remote: Some(r.clone()).filter(|r| !r.is_empty()),
            s3: args.s3.clone(),
            oci: args.oci.clone(),
        })?),
        None => None,
    };
    let (rt, cluster) = ctx.live_cluster(args.cluster.as_deref()).await?;
    let progress = Progress::new(!json);
    let writer = WriterOptions {
        level: args.compression_level,
        ..WriterOptions::default()
    };
    let req = Request {
        cluster: cluster.clone(),
        images: args.images,
        name: name.clone(),
        store: ctx.store.clone(),
        writer,
        schedule: None,
    };
    let out = capture::create(&rt, req, &progress).await?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(remote) = &remote {
        let cluster_name = backends::ClusterName::new(&cluster)?;
        push_snapshot(ctx, &cluster_name, &name, remote.as_ref(), !json).await?;
        if !json {
            eprintln!("Pushed to {}", remote.describe());
        }
    }
    if json {
        let result = CreateResult {
            name: name.as_str(),
            cluster: &cluster,
            path: out.paths.bundle.display().to_string(),
            size: out.size,
            sha256: &out.sha256,
            phases: &out.phases,
            frozen_seconds: out.frozen.map(|d| (d.as_secs_f64() * 1000.0).round() / 1000.0),
            metadata: &out.metadata,
            warnings: &out.warnings,
        };
        crate::util::out!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let frozen = out
            .frozen
            .map(|d| format!(", nodes frozen {:.2} s", d.as_secs_f64()))
            .unwrap_or_default();
        crate::util::out!(
            "Created snapshot {:?} (size: {}, k8s: {}{frozen}) at {}",
            name.as_str(),
            human_bytes(out.size),
            out.metadata.k8s_version,
            out.paths.bundle.display()
        );
    }
    Ok(())
}
