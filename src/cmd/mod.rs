//! One module per command; this file dispatches and holds what several commands share.

pub mod create;
pub mod delete;
pub mod list;
pub mod prune;
pub mod restore;
pub mod resume;
pub mod show;

use std::path::PathBuf;

use anyhow::{Context, Result};
use backends::{ClusterName, LocalSnapshot, LocalStore, SnapshotName};

use crate::bundle::{Metadata, reader};
use crate::cli::{Cli, Command, Global, Output};
use crate::cluster::{self, Runtime};

/// Wrong use of the command line that clap cannot see (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli.global)?;
    match cli.command {
        Command::Create(a) => create::run(a, &ctx).await,
        Command::List(a) => list::run(a, &ctx).await,
        Command::Show(a) => show::run(a, &ctx).await,
        Command::Prune(a) => prune::run(a, &ctx).await,
        Command::Delete(a) => delete::run(a, &ctx).await,
        Command::Restore(a) => restore::run(a, &ctx).await,
        Command::Resume(a) => resume::run(a, &ctx).await,
    }
}

pub struct Ctx {
    pub store: LocalStore,
}

impl Ctx {
    fn new(global: &Global) -> Result<Self> {
        let root = match &global.dir {
            Some(d) => d.clone(),
            None => default_store_dir()?,
        };
        Ok(Self { store: LocalStore::new(root) })
    }

    /// The cluster a command that needs a live cluster means.
    pub async fn live_cluster(&self, explicit: Option<&str>) -> Result<(Runtime, String)> {
        let rt = Runtime::connect().await?;
        let existing = rt.clusters().await?;
        let name = cluster::resolve_live(explicit, kind_cluster_env().as_deref(), &existing)?;
        Ok((rt, name))
    }

    /// The cluster a command on stored snapshots means (it need not be running, or exist).
    pub async fn stored_cluster(&self, explicit: Option<&str>) -> Result<ClusterName> {
        let env = kind_cluster_env();
        let name = if explicit.is_some() || env.is_some() {
            cluster::resolve_stored(explicit, env.as_deref(), &[], &[])?
        } else {
            // Docker being unavailable is fine here: fall back to what the store holds.
            let live = match Runtime::connect().await {
                Ok(rt) => rt.clusters().await.unwrap_or_default(),
                Err(_) => Vec::new(),
            };
            let stored: Vec<String> = self.store.clusters()?.into_iter().map(|c| c.to_string()).collect();
            cluster::resolve_stored(None, None, &live, &stored)?
        };
        Ok(ClusterName::new(&name)?)
    }

    /// Known cluster names, live or with snapshots (for telling cluster and snapshot arguments apart).
    pub async fn known_clusters(&self) -> Vec<String> {
        let mut all: Vec<String> = self.store.clusters().unwrap_or_default().into_iter().map(|c| c.to_string()).collect();
        if let Ok(rt) = Runtime::connect().await {
            all.extend(rt.clusters().await.unwrap_or_default());
        }
        all
    }
}

fn kind_cluster_env() -> Option<String> {
    std::env::var("KIND_CLUSTER_NAME").ok().filter(|s| !s.is_empty())
}

/// `$XDG_DATA_HOME/kubectl-snapshot/snapshots` (`~/.local/share/...`; Known Folders on Windows).
fn default_store_dir() -> Result<PathBuf> {
    use etcetera::AppStrategy;
    let strategy = etcetera::choose_app_strategy(etcetera::AppStrategyArgs {
        top_level_domain: "io".into(),
        author: "kubectl-snapshot".into(),
        app_name: "kubectl-snapshot".into(),
    })
    .context("cannot determine the home directory for the snapshot store; set KUBECTL_SNAPSHOT_DIR or --dir")?;
    Ok(strategy.data_dir().join("snapshots"))
}

/// A stored snapshot with what is known about it.
pub struct Info {
    pub local: LocalSnapshot,
    pub metadata: Result<Metadata, String>,
    /// From the sidecar, if present and well-formed.
    pub archive_digest: Option<String>,
}

impl Info {
    pub fn load(local: LocalSnapshot) -> Self {
        let metadata = match std::fs::read(&local.paths.metadata) {
            Ok(bytes) => Metadata::from_json(&bytes).map_err(|e| e.to_string()),
            Err(_) => reader::read_metadata(&local.paths.bundle).map_err(|e| e.to_string()),
        };
        let archive_digest = std::fs::read_to_string(&local.paths.sidecar).ok().and_then(|t| reader::parse_sidecar(&t).ok());
        Self { local, metadata, archive_digest }
    }

    /// Creation time from metadata, else the file's modification time.
    pub fn created(&self) -> jiff::Timestamp {
        match &self.metadata {
            Ok(m) => m.created,
            Err(_) => jiff::Timestamp::try_from(self.local.modified).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        }
    }
}

/// All snapshots of a cluster, newest first.
pub fn load_all(store: &LocalStore, cluster: &ClusterName) -> Result<Vec<Info>> {
    let mut infos: Vec<Info> = store.list(cluster)?.into_iter().map(Info::load).collect();
    infos.sort_by(|a, b| b.created().cmp(&a.created()).then_with(|| a.local.name.cmp(&b.local.name)));
    Ok(infos)
}

pub fn snapshot_name(s: &str) -> Result<SnapshotName> {
    Ok(SnapshotName::new(s)?)
}

/// Prints `value` as JSON or YAML on stdout.
pub fn print_structured<T: serde::Serialize>(value: &T, output: Output) -> Result<()> {
    use std::io::Write;
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)? + "\n",
        Output::Yaml => serde_yaml_ng::to_string(value)?,
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
