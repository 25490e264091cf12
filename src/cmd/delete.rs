//! `kubectl snapshot delete [CLUSTER] SNAPSHOT...`

use anyhow::Result;

use super::{Ctx, snapshot_name};

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot delete [CLUSTER] <SNAPSHOT>...")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT...: the first argument is taken as the cluster when more than one is given and it
    /// names a known cluster (running, or with snapshots); otherwise all are snapshots.
    #[arg(value_name = "ARGS", required = true)]
    pub args: Vec<String>,
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
    // All or nothing: any unknown name fails the command before anything is deleted.
    let missing: Vec<&str> = names.iter().filter(|n| !ctx.store.exists(&cluster, n)).map(|n| n.as_str()).collect();
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
        ctx.store.delete(&cluster, n)?;
        println!("Deleted snapshot {:?}", n.as_str());
    }
    Ok(())
}
