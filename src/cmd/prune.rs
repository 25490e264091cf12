//! `kubectl snapshot prune [CLUSTER] [--keep-last N] [--older-than DUR] [--max-size SIZE] [-y]`
//!
//! The deletion set is the union of the active policies; a zero value leaves a policy off. The plan is
//! printed before anything is deleted, then confirmed (y/N) unless --yes.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use anyhow::{Result, bail};

use super::{Ctx, UsageError, delete_snapshot, entries};
use crate::remote::{RemoteArgs, resolve};
use crate::util::{age, human_bytes, parse_duration, parse_size};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster whose snapshots to prune (default: KIND_CLUSTER_NAME, else the only cluster).
    pub cluster: Option<String>,
    /// Keep the N most recent snapshots, delete older ones (0: off).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Delete snapshots older than DUR, e.g. 168h, 7d, 1h30m (0s: off).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
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

/// Why each snapshot (newest first) is deleted; empty = kept.
pub fn plan(
    sizes_newest_first: &[(jiff::Timestamp, u64)],
    now: jiff::Timestamp,
    keep_last: usize,
    older_than: Option<Duration>,
    max_size: Option<u64>,
) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); sizes_newest_first.len()];
    if keep_last > 0 {
        for r in reasons.iter_mut().skip(keep_last) {
            r.push(format!("beyond the {keep_last} most recent"));
        }
    }
    if let Some(d) = older_than.filter(|d| !d.is_zero()) {
        let cutoff = now
            .as_second()
            .saturating_sub(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        for (i, (created, _)) in sizes_newest_first.iter().enumerate() {
            if created.as_second() < cutoff {
                reasons[i].push(format!("older than {}", humantime(d)));
            }
        }
    }
    if let Some(max) = max_size.filter(|m| *m > 0) {
        let mut total: u64 = sizes_newest_first.iter().map(|(_, s)| s).sum();
        for i in (0..sizes_newest_first.len()).rev() {
            if total <= max {
                break;
            }
            total -= sizes_newest_first[i].1;
            reasons[i].push(format!("total over {}", human_bytes(max)));
        }
    }
    reasons
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

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
    let reasons = plan(&sizes, now, args.keep_last, args.older_than, args.max_size);

    let mut out = String::new();
    let place = remote
        .as_ref()
        .map_or_else(String::new, |r| format!(" on {}", r.describe()));
    out.push_str(&format!("Prune plan for cluster {:?}{place}:\n", cluster.as_str()));
    let name_w = infos.iter().map(|i| i.name.as_str().len()).max().unwrap_or(0);
    let (mut del_bytes, mut del_count) = (0u64, 0usize);
    for (info, why) in infos.iter().zip(&reasons) {
        let facts = format!("{}, {}", age(info.created, now), human_bytes(info.size));
        if why.is_empty() {
            let keep_why = if args.keep_last > 0 {
                format!("; most recent {}", args.keep_last)
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
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!("refusing to delete without confirmation: stdin is not a terminal (pass --yes to confirm)");
        }
        eprint!("Continue? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            eprintln!("Aborted; nothing was deleted.");
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(hours_ago: i64, now: jiff::Timestamp) -> jiff::Timestamp {
        jiff::Timestamp::from_second(now.as_second() - hours_ago * 3600).unwrap()
    }

    #[test]
    fn policies_and_their_union() {
        let now = jiff::Timestamp::now();
        // newest first: 1h, 10h, 100h, 200h old; 100 bytes each
        let snaps: Vec<_> = [1, 10, 100, 200].iter().map(|h| (ts(*h, now), 100)).collect();
        let deleted = |r: Vec<Vec<String>>| r.iter().map(|x| !x.is_empty()).collect::<Vec<_>>();
        assert_eq!(deleted(plan(&snaps, now, 3, None, None)), [false, false, false, true]);
        assert_eq!(
            deleted(plan(&snaps, now, 0, Some(Duration::from_secs(50 * 3600)), None)),
            [false, false, true, true]
        );
        assert_eq!(
            deleted(plan(&snaps, now, 0, None, Some(250))),
            [false, false, true, true]
        );
        assert_eq!(
            deleted(plan(&snaps, now, 0, None, Some(400))),
            [false, false, false, false]
        );
        // union: keep-last 3 deletes the oldest; max-size 350 deletes the oldest too; older-than 5h the rest but newest
        assert_eq!(
            deleted(plan(&snaps, now, 3, Some(Duration::from_secs(5 * 3600)), Some(350))),
            [false, true, true, true]
        );
        // zero values are inactive
        assert_eq!(
            deleted(plan(&snaps, now, 0, Some(Duration::ZERO), Some(0))),
            [false, false, false, false]
        );
    }
}
