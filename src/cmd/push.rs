//! `kubectl snapshot push [CLUSTER] SNAPSHOT [--remote NAME|URL]`

use anyhow::Result;

use super::{Ctx, cluster_and_snapshot, push_snapshot};
use crate::settings::{RemoteArgs, require};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot push [CLUSTER] <SNAPSHOT> [--remote NAME|URL]")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT: with one argument it is the snapshot, and the cluster is auto-detected.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (cluster, name) = cluster_and_snapshot(&args.args, "push")?;
    let cluster = ctx.stored_cluster(cluster).await?;
    let remote = require(&args.remote)?;
    let moved = push_snapshot(ctx, &cluster, &name, remote.as_ref(), true).await?;
    crate::util::out!(
        "Pushed snapshot {:?} of cluster {:?} to {}: {}",
        name.as_str(),
        cluster.as_str(),
        remote.describe(),
        super::describe_moved(&moved, "uploaded", "already there")
    );
    Ok(())
}
