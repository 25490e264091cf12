//! `kubectl snapshot resume [CLUSTER]`: starts kubelet again on every node of a cluster left quiesced (by a
//! failed restore, or a create that was killed), control planes first, and waits for etcd.

use anyhow::Result;

use super::Ctx;
use crate::capture;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster to resume (default: KIND_CLUSTER_NAME, else the only kind cluster).
    pub cluster: Option<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let (rt, cluster) = ctx.live_cluster(args.cluster.as_deref()).await?;
    let nodes = rt.nodes(&cluster).await?;
    if let Some(n) = nodes.iter().find(|n| n.state != "running") {
        anyhow::bail!(
            "node {} is {}; start it first (docker start {})",
            n.name,
            n.state,
            n.name
        );
    }
    // kind's external load balancer runs no kubelet: it is left alone.
    let all: Vec<String> = crate::cluster::kubelet_nodes(&nodes)
        .into_iter()
        .map(|n| n.name.clone())
        .collect();
    capture::resume(&rt, &nodes, &all).await?;
    println!("Resumed cluster {cluster:?} ({} nodes)", nodes.len());
    Ok(())
}
