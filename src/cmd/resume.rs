//! `kubectl snapshot resume [CLUSTER] [--rollback]`: brings a cluster back after an interrupted or failed
//! operation, from the journal each node keeps: thaws nodes a killed `create` left frozen, completes a restore
//! that had committed (or removes what an uncommitted one staged), and starts kubelet everywhere, control
//! planes first. `--rollback` puts back the etcd data and volumes from before the last restore.

use anyhow::Result;

use super::Ctx;
use crate::restore::recover;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster to resume (default: KIND_CLUSTER_NAME, else the only kind cluster).
    pub cluster: Option<String>,
    /// Undo the last restore instead: the previous etcd data and volumes (kept aside by it) go back.
    #[arg(long)]
    pub rollback: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// `-o json`: the same as --json.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<crate::cli::ResultOutput>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let json = args.json || args.output.is_some();
    let (rt, cluster) = ctx.live_cluster(args.cluster.as_deref()).await?;
    let report = recover::resume(&rt, &cluster, args.rollback).await?;
    if json {
        crate::util::out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for a in &report.actions {
        crate::util::out!("  {a}");
    }
    crate::util::out!("Resumed cluster {cluster:?}");
    Ok(())
}
