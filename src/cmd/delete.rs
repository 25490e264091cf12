//! `kubectl snapshot delete [CLUSTER] SNAPSHOT...`

use anyhow::Result;

use super::{Ctx, delete_snapshot, entries, snapshot_name};
use crate::settings::{RemoteArgs, resolve};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot delete [CLUSTER] <SNAPSHOT>...")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT...: the first argument is taken as the cluster when more than one is given and it
    /// names a known cluster (running, or with snapshots); otherwise all are snapshots.
    #[arg(value_name = "ARGS", required = true)]
    pub args: Vec<String>,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let mut names = args.args.as_slice();
    let mut cluster = None;
    if names.len() > 1 && ctx.known_clusters().await.contains(&names[0]) {
        cluster = Some(names[0].as_str());
        names = &names[1..];
    }
    let cluster = ctx.stored_cluster(cluster).await?;
    let names = names.iter().map(|n| snapshot_name(n)).collect::<Result<Vec<_>>>()?;
    let remote = resolve(&args.remote, false)?;
    let present: Vec<backends::SnapshotName> = entries(ctx, &cluster, remote.as_deref())
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    // All or nothing: any unknown name fails the command before anything is deleted.
    // Locally, what an interrupted publish left without an archive is deleted like a snapshot.
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !(present.contains(n) || remote.is_none() && ctx.store.has_files(&cluster, n)))
        .map(|n| n.as_str())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "snapshot{} not found for cluster {:?}: {} (nothing was deleted; see `kubectl snapshot list {}`)",
            if missing.len() == 1 { "" } else { "s" },
            cluster.as_str(),
            missing.join(", "),
            cluster.as_str()
        );
    }
    for n in &names {
        delete_snapshot(ctx, &cluster, n, remote.as_deref()).await?;
        match &remote {
            Some(r) => crate::util::out!("Deleted snapshot {:?} from {}", n.as_str(), r.describe()),
            None => crate::util::out!("Deleted snapshot {:?}", n.as_str()),
        }
    }
    if let Some(r) = remote.as_deref() {
        crate::util::out!("{}", super::collect_garbage(r, &[], false).await?);
    }
    Ok(())
}
