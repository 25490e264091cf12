//! `kubectl snapshot list [CLUSTER] [-o json|yaml] [--no-trunc]`

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::Output;
use super::{Ctx, Entry, entries, print_structured};
use crate::bundle::Status;
use crate::settings::{RemoteArgs, resolve};
use crate::util::{age, human_bytes};

/// ADDONS is cut to this many characters unless --no-trunc (fits a 120-column terminal).
const ADDONS_WIDTH: usize = 50;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cluster whose snapshots to list (default: KIND_CLUSTER_NAME, else the only cluster).
    pub cluster: Option<String>,
    /// Output format (default: a table).
    #[arg(short, long, value_enum)]
    pub output: Option<Output>,
    /// Do not truncate the ADDONS column.
    #[arg(long)]
    pub no_trunc: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub name: String,
    pub cluster: String,
    pub created: jiff::Timestamp,
    pub size: u64,
    pub k8s_version: Option<String>,
    pub addons: std::collections::BTreeMap<String, String>,
    #[serde(skip)]
    pub addons_summary: String,
    pub status: Status,
    pub sha256: Option<String>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn row(cluster: &str, e: &Entry) -> Row {
    let (status, error) = e.check();
    Row {
        name: e.name.to_string(),
        cluster: cluster.to_owned(),
        created: e.created,
        size: e.size,
        k8s_version: e.metadata.as_ref().ok().map(|m| m.k8s_version.clone()),
        addons: e.metadata.as_ref().map(|m| m.addons.clone()).unwrap_or_default(),
        addons_summary: e.metadata.as_ref().map(|m| m.addons_summary()).unwrap_or_default(),
        status,
        sha256: e.sha256.clone(),
        path: e.location.clone(),
        error,
    }
}

pub async fn run(args: Args, ctx: &Ctx) -> Result<()> {
    let cluster = ctx.stored_cluster(args.cluster.as_deref()).await?;
    let remote = resolve(&args.remote, false)?;
    let found = entries(ctx, &cluster, remote.as_deref()).await?;
    let rows: Vec<Row> = found.iter().map(|e| row(cluster.as_str(), e)).collect();
    if let Some(output) = args.output {
        return print_structured(&rows, output);
    }
    if rows.is_empty() {
        let place = remote
            .as_ref()
            .map_or_else(|| ctx.store.root().display().to_string(), |r| r.describe());
        eprintln!("No snapshots for cluster {:?} in {place}", cluster.as_str());
        return Ok(());
    }
    let now = jiff::Timestamp::now();
    let mut table = vec![
        ["NAME", "AGE", "SIZE", "K8S", "ADDONS", "STATUS"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &rows {
        let mut addons = r.addons_summary.clone();
        if !args.no_trunc && addons.chars().count() > ADDONS_WIDTH {
            addons = addons.chars().take(ADDONS_WIDTH - 3).collect::<String>() + "...";
        }
        table.push(vec![
            r.name.clone(),
            age(r.created, now),
            human_bytes(r.size),
            r.k8s_version.clone().unwrap_or_else(|| "?".into()),
            if addons.is_empty() { "-".into() } else { addons },
            r.status.to_string(),
        ]);
    }
    print_table(&table)?;
    // Why each snapshot that cannot be used is so, after the table (stderr, as kubectl prints warnings).
    for r in &rows {
        if let Some(why) = &r.error {
            eprintln!(
                "Warning: snapshot {:?} is {}: {}",
                r.name,
                r.status,
                crate::util::printable_line(why)
            );
        }
    }
    Ok(())
}

/// Left-aligned columns, as kubectl prints them.
pub fn print_table(rows: &[Vec<String>]) -> Result<()> {
    // kubectl's own layout: Go's text/tabwriter, minimum width 6, padding 3 (kubectl printers.GetNewTabWriter).
    let mut tw = tabwriter::TabWriter::new(std::io::stdout().lock())
        .minwidth(6)
        .padding(3);
    for r in rows {
        // Cells may hold bundle or remote text: one line each, nothing a terminal acts on.
        let cells: Vec<_> = r.iter().map(|c| crate::util::printable_line(c)).collect();
        writeln!(tw, "{}", cells.join("\t"))?;
    }
    tw.flush()?;
    Ok(())
}
