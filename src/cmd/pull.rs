//! `kubectl snapshot pull [CLUSTER] SNAPSHOT [--remote NAME|URL]`

use anyhow::Result;

use super::{Ctx, cluster_and_snapshot, pull_snapshot};
use crate::remote::{RemoteArgs, require};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot pull [CLUSTER] <SNAPSHOT> [--remote NAME|URL]")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT: with one argument it is the snapshot, and the cluster is auto-detected.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (cluster, name) = cluster_and_snapshot(&args.args, "pull")?;
    let cluster = ctx.stored_cluster(cluster).await?;
    let remote = require(&args.remote)?;
    let (local, moved) = pull_snapshot(ctx, &cluster, &name, remote.as_ref(), true).await?;
    crate::util::out!(
        "Pulled snapshot {:?} of cluster {:?} into {} (sha256 verified): {}",
        name.as_str(),
        cluster.as_str(),
        local.paths.bundle.display(),
        super::describe_moved(&moved, "downloaded", "copied from local snapshots")
    );
    Ok(())
}
