//! `kubectl snapshot resume [CLUSTER] [--rollback]`: brings a cluster back after an interrupted or failed
//! operation, from the journal each node keeps: thaws nodes a killed `create` left frozen, completes a restore
//! that had committed (or removes what an uncommitted one staged), and starts kubelet everywhere, control
//! planes first. `--rollback` puts back the etcd data and volumes from before the last restore: at once when
//! that restore did not finish, after a y/N (or `--yes`) naming it when it completed, since the cluster has
//! run on its data since; what is live then is kept aside on the nodes, and named.

use std::io::{BufRead, IsTerminal};

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
    /// With --rollback: roll back a restore that completed without asking (for scripts).
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
    /// `-o json`: the same as --json.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<super::ResultOutput>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let json = args.json || args.output.is_some();
    let (rt, cluster) = ctx.live_cluster(args.cluster.as_deref()).await?;
    let report = match recover::resume(&rt, &cluster, args.rollback, args.yes).await {
        Err(crate::restore::RestoreError::ConfirmRollback { snapshot, since }) if std::io::stdin().is_terminal() => {
            eprint!(
                "The last restore, of snapshot {snapshot:?} ({since}), completed. Roll it back? What is live now \
                 is kept aside on the nodes. [y/N] "
            );
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
                eprintln!("Aborted; nothing was changed.");
                return Ok(());
            }
            recover::resume(&rt, &cluster, true, true).await?
        }
        r => r?,
    };
    if json {
        crate::util::out!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for a in &report.actions {
        crate::util::out!("  {a}");
    }
    crate::util::out!("Resumed cluster {cluster:?}");
    if !report.kept_on_nodes.is_empty() {
        // Each etcd copy holds every Secret: say what is there and what it takes.
        crate::util::out!(
            "Kept on the nodes (the data the last restore or rollback replaced; the next restore removes it):"
        );
        for k in &report.kept_on_nodes {
            crate::util::out!("  {}:{} ({})", k.node, k.path, crate::util::human_bytes(k.size));
        }
    }
    Ok(())
}
