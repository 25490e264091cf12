//! `kubectl snapshot prune [CLUSTER] [--keep-last N] [--older-than DUR] [--max-size SIZE] [-y]`
//!
//! The deletion set is the union of the active policies; a zero value leaves a policy off. The plan is
//! printed before anything is deleted, then confirmed (y/N) unless --yes.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};

use super::{Ctx, UsageError, delete_snapshot, entries};
use crate::settings::{RemoteArgs, resolve};
use crate::util::{Span, age, human_bytes, parse_size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster whose snapshots to prune (default: KIND_CLUSTER_NAME, else the only cluster).
    pub cluster: Option<String>,
    /// Keep the N most recent snapshots, delete older ones (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Delete snapshots older than DUR, e.g. 168h, 7d, 1h30m (0s: off).
    #[arg(long, value_name = "DUR")]
    pub older_than: Option<Span>,
    /// Delete the oldest snapshots until the cluster's total is at most SIZE, e.g. 10G, 500M (base 2; 0: off).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    pub yes: bool,
    /// Print the plan and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub const NO_POLICY: &str = "at least one policy flag is required (--keep-last, --older-than, --max-size)";

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let active =
        args.keep_last > 0 || args.older_than.is_some_and(|d| !d.is_zero()) || args.max_size.is_some_and(|m| m > 0);
    if !active {
        return Err(UsageError(NO_POLICY.into()).into());
    }
    let cluster = ctx.stored_cluster(args.cluster.as_deref()).await?;
    let remote = resolve(&args.remote, false)?;
    let infos = entries(ctx, &cluster, remote.as_deref()).await?;
    let now = jiff::Timestamp::now();
    let sizes: Vec<(jiff::Timestamp, u64)> = infos.iter().map(|i| (i.created, i.size)).collect();
    let reasons = crate::retention::deletions(&sizes, now, args.keep_last, args.older_than, args.max_size);

    let place = remote
        .as_ref()
        .map_or_else(String::new, |r| format!(" on {}", r.describe()));
    let (mut out, del_count) = plan(&infos, &reasons, args.keep_last, now);
    out.insert_str(0, &format!("Prune plan for cluster {:?}{place}:\n", cluster.as_str()));
    let deleting: Vec<(backends::ClusterName, backends::SnapshotName)> = infos
        .iter()
        .zip(&reasons)
        .filter(|(_, why)| !why.is_empty())
        .map(|(i, _)| (cluster.clone(), i.name.clone()))
        .collect();
    if let Some(r) = remote.as_deref() {
        // Bundles share blobs on a remote: the space freed is what no remaining snapshot references.
        out.push_str(&super::collect_garbage(r, &deleting, true).await?);
        out.push('\n');
    }
    std::io::Write::write_all(&mut std::io::stdout().lock(), crate::util::printable(&out).as_bytes())?;
    std::io::stdout().flush()?;
    if del_count == 0 || args.dry_run {
        return Ok(());
    }
    if !args.yes && !confirmed()? {
        eprintln!("Aborted; nothing was deleted.");
        return Ok(());
    }
    for (info, why) in infos.iter().zip(&reasons) {
        if !why.is_empty() {
            delete_snapshot(ctx, &cluster, &info.name, remote.as_deref()).await?;
            crate::util::out!("Deleted snapshot {:?}", info.name.as_str());
        }
    }
    if let Some(r) = remote.as_deref() {
        crate::util::out!("{}", super::collect_garbage(r, &[], false).await?);
    }
    Ok(())
}

/// The plan, a line per snapshot (KEEP or DELETE, and why), then the total; and how many are deleted.
fn plan(infos: &[super::Entry], reasons: &[Vec<String>], keep_last: usize, now: jiff::Timestamp) -> (String, usize) {
    let mut out = String::new();
    let name_w = infos.iter().map(|i| i.name.as_str().len()).max().unwrap_or(0);
    let (mut del_bytes, mut del_count) = (0u64, 0usize);
    for (info, why) in infos.iter().zip(reasons) {
        let facts = format!("{}, {}", age(info.created, now), human_bytes(info.size));
        if why.is_empty() {
            let keep_why = if keep_last > 0 {
                format!("; most recent {keep_last}")
            } else {
                String::new()
            };
            out.push_str(&format!(
                "  KEEP    {:<name_w$}  ({facts}{keep_why})\n",
                info.name.as_str()
            ));
        } else {
            del_bytes += info.size;
            del_count += 1;
            out.push_str(&format!(
                "  DELETE  {:<name_w$}  ({facts}; {})\n",
                info.name.as_str(),
                why.join(", ")
            ));
        }
    }
    out.push_str(&format!(
        "Total to delete: {} across {del_count} snapshot{}\n",
        human_bytes(del_bytes),
        if del_count == 1 { "" } else { "s" }
    ));
    (out, del_count)
}

/// Whether the user answers yes on the terminal; refused when stdin is not one (`--yes` confirms).
fn confirmed() -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to delete without confirmation: stdin is not a terminal (pass --yes to confirm)");
    }
    eprint!("Continue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}
