//! `kubectl snapshot restore [CLUSTER] SNAPSHOT [--json] [--min-free-space SIZE]`
//!
//! A hard overwrite by design (no --yes), and all-or-nothing: nothing changes unless every pre-flight check
//! passes, and etcd and volumes end up both from the snapshot or both as they were.

use anyhow::Result;
use serde::Serialize;

use super::{Ctx, cluster_and_snapshot, pull_snapshot};
use crate::progress::Progress;
use crate::restore::{self, Check, Outcome, Request, RestoreError};
use crate::settings::{RemoteArgs, resolve};
use crate::util::parse_size;

#[derive(Debug, clap::Args)]
#[command(override_usage = "kubectl snapshot restore [CLUSTER] <SNAPSHOT> [--json|-o json]")]
pub struct Args {
    /// [CLUSTER] SNAPSHOT: with one argument it is the snapshot, and the cluster is auto-detected.
    #[arg(value_name = "ARGS", num_args = 1..=2, required = true)]
    pub args: Vec<String>,
    /// Print a JSON RestoreResult (pre-flight checks, phases, where old etcd data was kept).
    #[arg(long)]
    pub json: bool,
    /// `-o json`: the same as --json.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<super::ResultOutput>,
    /// Free space the cluster's container root must have for the restore to start (base-2 suffixes).
    #[arg(long, value_name = "SIZE", default_value = "8G", value_parser = parse_size)]
    pub min_free_space: u64,
    /// Where to pull the snapshot from when it is not local (default: the default remote). The download
    /// leaves at least 1 GiB free on the local store's filesystem (`pull --min-free-space`).
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RestoreResult<'a> {
    name: &'a str,
    cluster: &'a str,
    ok: bool,
    preflight: &'a [Check],
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let json = args.json || args.output.is_some();
    let pull_margin = crate::util::parse_size(super::PULL_MIN_FREE).map_err(anyhow::Error::msg)?;
    let (cluster, name) = cluster_and_snapshot(&args.args, "restore")?;
    let (rt, cluster) = ctx.live_cluster(cluster).await?;
    let progress = Progress::new(!json);
    let started = std::time::Instant::now();
    let cluster_name = backends::ClusterName::new(&cluster)?;
    if !ctx.store.exists(&cluster_name, &name) {
        let target = Target {
            rt: &rt,
            cluster: &cluster,
            cluster_name: &cluster_name,
            name: &name,
        };
        pull_first(&args, ctx, target, json, pull_margin).await?;
    }
    let req = Request {
        cluster: cluster.clone(),
        name: name.clone(),
        store: ctx.store.clone(),
        min_free: args.min_free_space,
    };
    let mut checks = Vec::new();
    let result = restore::restore(&rt, req, &progress, &mut checks).await;
    if json {
        let (ok, outcome, error) = match &result {
            Ok(o) => (true, Some(o), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        let preflight = match (&result, outcome) {
            (Err(RestoreError::Preflight(c)), _) => c.as_slice(),
            (_, Some(o)) => o.preflight.as_slice(),
            _ => checks.as_slice(),
        };
        let out = RestoreResult {
            name: name.as_str(),
            cluster: &cluster,
            ok,
            preflight,
            outcome,
            error,
        };
        crate::util::out!("{}", serde_json::to_string_pretty(&out)?);
    }
    let outcome = result?;
    if !json {
        say_restored(&outcome, &name, &cluster, started.elapsed())?;
    }
    Ok(())
}

/// The cluster a restore is for, and the snapshot.
struct Target<'a> {
    rt: &'a crate::cluster::Runtime,
    cluster: &'a str,
    cluster_name: &'a backends::ClusterName,
    name: &'a backends::SnapshotName,
}

/// A snapshot not in the local store is pulled from the remote, once its metadata passed the pre-flight
/// comparisons with the live cluster and the store has room for it: nothing is downloaded otherwise.
async fn pull_first(args: &Args, ctx: &Ctx, target: Target<'_>, json: bool, pull_margin: u64) -> Result<()> {
    let Target {
        rt,
        cluster,
        cluster_name,
        name,
    } = target;
    let Some(remote) = resolve(&args.remote, true)? else {
        anyhow::bail!(
            "snapshot {:?} is not in the local store and no remote is configured (use --remote NAME|URL; see `kubectl snapshot list {cluster}`)",
            name.as_str()
        );
    };
    // Check the remote metadata against the live cluster before downloading anything.
    let head = remote
        .head(cluster_name, name)
        .await
        .map_err(|e| anyhow::anyhow!("snapshot {:?} is not local, and {e}", name.as_str()))?;
    let meta = crate::bundle::Metadata::from_json(head.metadata.as_deref().unwrap_or_default())?;
    let live = restore::preflight::gather(rt, rt.nodes(cluster).await?).await;
    let mut checks = restore::preflight::compat(&meta, &live, args.min_free_space);
    // The download goes to the local store first: its filesystem is checked with the others.
    let store_dir = ctx.store.cluster_dir(cluster_name);
    checks.push(
        match super::check_free_space(&store_dir, name, head.size, pull_margin) {
            Ok(()) => restore::Check::pass(
                "store space",
                format!("{} to download", crate::util::human_bytes(head.size)),
            ),
            Err(e) => restore::Check::fail("store space", format!("{e:#}")),
        },
    );
    if checks.iter().any(|c| !c.ok) {
        if json {
            let out = RestoreResult {
                name: name.as_str(),
                cluster,
                ok: false,
                preflight: &checks,
                outcome: None,
                error: Some("pre-flight failed on the remote metadata; nothing was downloaded".into()),
            };
            crate::util::out!("{}", serde_json::to_string_pretty(&out)?);
        }
        return Err(RestoreError::Preflight(checks).into());
    }
    pull_snapshot(ctx, cluster_name, name, remote.as_ref(), pull_margin, !json).await?;
    if !json {
        eprintln!(
            "Pulled {:?} from {} (sha256 verified)",
            name.as_str(),
            remote.describe()
        );
    }
    Ok(())
}

/// What a restore did, for a person.
fn say_restored(
    outcome: &restore::Outcome,
    name: &backends::SnapshotName,
    cluster: &str,
    took: std::time::Duration,
) -> Result<()> {
    crate::util::out!(
        "Restored snapshot {:?} onto cluster {:?} in {:.1}s",
        name.as_str(),
        cluster,
        took.as_secs_f64()
    );
    for (node, dir) in &outcome.previous_etcd_data {
        crate::util::out!("  previous etcd data of {node} kept in {dir}");
    }
    for (node, dirs) in &outcome.previous_volumes {
        crate::util::out!("  previous volumes of {node} kept in {}", dirs.join(", "));
    }
    if !outcome.previous_etcd_data.is_empty() {
        crate::util::out!("  to put the previous data back: kubectl snapshot resume {cluster} --rollback");
    }
    for (node, imgs) in &outcome.imported_images {
        crate::util::out!(
            "  re-imported {} image{} on {node}",
            imgs.len(),
            if imgs.len() == 1 { "" } else { "s" }
        );
    }
    Ok(())
}
