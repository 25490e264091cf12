//! `kubectl snapshot pull [CLUSTER] SNAPSHOT [--remote NAME|URL]`

use anyhow::Result;

use super::{Ctx, cluster_and_snapshot, pull_snapshot};
use crate::settings::{RemoteArgs, require};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot pull [CLUSTER] <SNAPSHOT> [--remote NAME|URL]")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT: with one argument it is the snapshot, and the cluster is auto-detected.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Free space to leave on the store's filesystem: a snapshot that would leave less is refused before
    /// anything is downloaded (base-2 suffixes; its size is the one the remote declares).
    #[arg(long, value_name = "SIZE", default_value = super::PULL_MIN_FREE, value_parser = crate::util::parse_size)]
    pub min_free_space: u64,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (cluster, name) = cluster_and_snapshot(&args.args, "pull")?;
    let cluster = ctx.stored_cluster(cluster).await?;
    let remote = require(&args.remote)?;
    let (local, moved) = pull_snapshot(ctx, &cluster, &name, remote.as_ref(), args.min_free_space, true).await?;
    crate::util::out!(
        "Pulled snapshot {:?} of cluster {:?} into {} (sha256 verified): {}",
        name.as_str(),
        cluster.as_str(),
        local.paths.bundle.display(),
        super::describe_moved(&moved, "downloaded", "copied from local snapshots")
    );
    Ok(())
}
