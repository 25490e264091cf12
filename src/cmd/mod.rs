//! One module per command (`cli.rs` parses and dispatches); this file holds what several commands share.

pub mod completion;
pub mod create;
pub mod delete;
pub mod list;
pub mod prune;
pub mod pull;
pub mod push;
pub mod remote;
pub mod restore;
pub mod resume;
pub mod schedule;
pub mod show;

use std::path::PathBuf;

use clap::ValueEnum;

use anyhow::{Context, Result};
use backends::{ClusterName, LocalSnapshot, LocalStore, SnapshotName};

use crate::bundle::{Metadata, reader};
use crate::cluster::{self, Runtime};

/// Wrong use of the command line that clap cannot see (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Local snapshot store (default: $XDG_DATA_HOME/kubectl-snapshot/snapshots).
    #[arg(long, global = true, env = "KUBECTL_SNAPSHOT_DIR", value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// When to use colour: auto (honours NO_COLOR and whether stderr is a terminal), always, never.
    #[arg(long, global = true, value_name = "WHEN", default_value = "auto")]
    pub color: clap::ColorChoice,
    /// Log every command run in a node and every runtime call, with its duration, to stderr (`-v`).
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// `-o/--output` for list and show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}

/// `-o/--output` for commands that print one result (create, restore, resume): `-o json` is `--json`, as kubectl
/// users type it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResultOutput {
    Json,
}

pub struct Ctx {
    pub store: LocalStore,
}

impl Ctx {
    pub fn new(global: &Global) -> Result<Self> {
        let root = match &global.dir {
            Some(d) => d.clone(),
            None => default_store_dir()?,
        };
        Ok(Self {
            store: LocalStore::new(root),
        })
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
        let mut all: Vec<String> = self
            .store
            .clusters()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.to_string())
            .collect();
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
pub fn default_store_dir() -> Result<PathBuf> {
    use etcetera::AppStrategy;
    let dirs = crate::util::app_dirs()
        .context("cannot determine the home directory for the snapshot store; set KUBECTL_SNAPSHOT_DIR or --dir")?;
    Ok(dirs.data_dir().join("snapshots"))
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
        let archive_digest = std::fs::read_to_string(&local.paths.sidecar)
            .ok()
            .and_then(|t| reader::parse_sidecar(&t).ok());
        Self {
            local,
            metadata,
            archive_digest,
        }
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
    // What a killed create or pull left behind goes now.
    store.remove_leftovers(cluster);
    let mut infos: Vec<Info> = store.list(cluster)?.into_iter().map(Info::load).collect();
    infos.sort_by(|a, b| {
        b.created()
            .cmp(&a.created())
            .then_with(|| a.local.name.cmp(&b.local.name))
    });
    Ok(infos)
}

/// `[CLUSTER] SNAPSHOT` positionals: with one argument it is the snapshot.
pub fn cluster_and_snapshot<'a>(args: &'a [String], command: &str) -> Result<(Option<&'a str>, SnapshotName)> {
    match args {
        [s] => Ok((None, snapshot_name(s)?)),
        [c, s] => Ok((Some(c.as_str()), snapshot_name(s)?)),
        _ => Err(UsageError(format!("{command} takes [CLUSTER] SNAPSHOT")).into()),
    }
}

/// A snapshot name from the command line: an invalid one is a usage error (exit 2).
pub fn snapshot_name(s: &str) -> Result<SnapshotName> {
    SnapshotName::new(s).map_err(|e| UsageError(e.to_string()).into())
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

/// A snapshot in the local store or on a remote, as list and prune see it.
pub struct Entry {
    pub name: SnapshotName,
    pub created: jiff::Timestamp,
    pub size: u64,
    pub metadata: Result<Metadata, String>,
    /// Local: computed by hashing on demand ([`Entry::check`]); remote: completeness.
    pub remote_complete: Option<bool>,
    /// A remote snapshot that cannot be read (the reason is the metadata's error).
    pub problem: bool,
    pub sha256: Option<String>,
    pub location: String,
    local: Option<LocalSnapshot>,
}

impl Entry {
    /// The status and, when it is not ok, why. Local: the archive against its sidecar, and its member index
    /// against both. Remote: `ok` when bundle, sidecar and metadata are all there and readable (a remote bundle
    /// is verified when it is pulled).
    pub fn check(&self) -> (crate::bundle::Status, Option<String>) {
        use crate::bundle::Status;
        let (s, why) = match (&self.local, self.remote_complete) {
            (Some(l), _) => reader::verify_with_index(&l.paths.bundle, &l.paths.sidecar, Some(&l.paths.index)),
            (None, _) if self.problem => (Status::Corrupt, None),
            (None, Some(true)) => (Status::Ok, None),
            (None, _) => (Status::Incomplete, None),
        };
        match &self.metadata {
            Err(e) if s == Status::Ok => (Status::Corrupt, Some(e.clone())),
            Err(e) => (s, Some(why.unwrap_or_else(|| e.clone()))),
            Ok(_) => (s, why),
        }
    }
}

/// Snapshots of a cluster, newest first, locally or on `remote`.
pub async fn entries(
    ctx: &Ctx,
    cluster: &ClusterName,
    remote: Option<&dyn backends::SnapshotStore>,
) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = match remote {
        None => load_all(&ctx.store, cluster)?
            .into_iter()
            .map(|i| Entry {
                name: i.local.name.clone(),
                created: i.created(),
                size: i.local.size,
                sha256: i.archive_digest.clone(),
                location: i.local.paths.bundle.display().to_string(),
                metadata: i.metadata,
                remote_complete: None,
                problem: false,
                local: Some(i.local),
            })
            .collect(),
        Some(store) => store
            .list(cluster)
            .await?
            .into_iter()
            .map(|r| {
                let metadata = match (&r.problem, &r.metadata) {
                    (Some(why), _) => Err(format!("cannot be read: {why}")),
                    (None, Some(b)) => Metadata::from_json(b).map_err(|e| e.to_string()),
                    (None, None) => Err("incomplete upload: no metadata".to_string()),
                };
                let created = metadata
                    .as_ref()
                    .map(|m| m.created)
                    .unwrap_or_else(|_| jiff::Timestamp::try_from(r.modified).unwrap_or(jiff::Timestamp::UNIX_EPOCH));
                Entry {
                    location: format!("{} {}/{}", store.describe(), cluster, r.name),
                    name: r.name,
                    created,
                    size: r.size,
                    metadata,
                    remote_complete: Some(r.complete),
                    problem: r.problem.is_some(),
                    sha256: r.sha256,
                    local: None,
                }
            })
            .collect(),
    };
    out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.name.cmp(&b.name)));
    Ok(out)
}

/// Deletes a snapshot locally or on `remote`.
pub async fn delete_snapshot(
    ctx: &Ctx,
    cluster: &ClusterName,
    name: &SnapshotName,
    remote: Option<&dyn backends::SnapshotStore>,
) -> Result<()> {
    match remote {
        None => ctx.store.delete(cluster, name)?,
        Some(r) => r.delete(cluster, name).await?,
    }
    Ok(())
}

/// Uploads a local snapshot after checking it against its sidecar.
pub async fn push_snapshot(
    ctx: &Ctx,
    cluster: &ClusterName,
    name: &SnapshotName,
    remote: &dyn backends::SnapshotStore,
    show_progress: bool,
) -> Result<backends::Moved> {
    let local = ctx.store.get(cluster, name)?;
    // The bundle is hashed as it is uploaded and checked against this sidecar before the remote commit.
    if !local.paths.sidecar.exists() {
        anyhow::bail!(
            "local snapshot {:?} is incomplete (no sidecar); refusing to push it",
            name.as_str()
        );
    }
    let sidecar = std::fs::read_to_string(&local.paths.sidecar)?;
    let metadata = match std::fs::read(&local.paths.metadata) {
        Ok(m) => m,
        Err(_) => serde_json::to_vec_pretty(&reader::read_metadata(&local.paths.bundle)?)?,
    };
    // Schema-2 bundles go member by member: what the remote already holds is not sent again.
    let index = ctx.store.index(cluster, name);
    let bar = crate::progress::bytes(local.size, &format!("pushing {name}"), show_progress);
    let upload = backends::Upload {
        bundle: &local.paths.bundle,
        sidecar: &sidecar,
        metadata: &metadata,
        index: index.as_ref(),
    };
    let moved = remote
        .put(cluster, name, upload, &|n| bar.inc(n))
        .await
        .with_context(|| format!("pushing snapshot {:?} to {}", name.as_str(), remote.describe()))?;
    bar.finish_and_clear();
    Ok(moved)
}

/// Collects the blobs a remote's snapshots no longer reference (after `deleting` are gone); the line to print.
/// With `dry_run`, the plan.
pub async fn collect_garbage(
    remote: &dyn backends::SnapshotStore,
    deleting: &[(ClusterName, SnapshotName)],
    dry_run: bool,
) -> Result<String> {
    use crate::util::human_bytes;
    let collected = remote
        .collect_garbage(deleting, dry_run)
        .await
        .with_context(|| format!("collecting unreferenced blobs on {}", remote.describe()))?;
    if let Some(note) = collected.note {
        return Ok(format!("Shared blobs: {note}"));
    }
    let n = collected.blobs.len();
    let bytes: u64 = collected.blobs.iter().map(|(_, s)| s).sum();
    Ok(format!(
        "{} {n} shared blob{} no snapshot references ({}); {} still referenced",
        if dry_run { "Would remove" } else { "Removed" },
        if n == 1 { "" } else { "s" },
        human_bytes(bytes),
        collected.kept
    ))
}

/// `uploaded 1.2 MiB of 340 MiB (338.8 MiB already there)`.
pub fn describe_moved(moved: &backends::Moved, verb: &str, reused: &str) -> String {
    use crate::util::human_bytes;
    let total = moved.transferred + moved.reused;
    if moved.reused == 0 {
        format!("{verb} {}", human_bytes(total))
    } else {
        format!(
            "{verb} {} of {} ({} {reused})",
            human_bytes(moved.transferred),
            human_bytes(total),
            human_bytes(moved.reused)
        )
    }
}

/// Free space a pull leaves on the store's filesystem unless told otherwise (`--min-free-space`): the default
/// store shares its disk with Docker, which a full disk stops.
pub const PULL_MIN_FREE: &str = "1G";

/// Not enough free space for a download (exit 1; nothing was written).
#[derive(Debug, thiserror::Error)]
#[error(
    "not enough free space in {store} to pull snapshot {name:?}: it is {size}, {free} are free, and \
     --min-free-space keeps {margin} free; free space, pull into another store (--dir), or lower \
     --min-free-space; nothing was downloaded"
)]
pub struct NoSpace {
    store: String,
    name: String,
    size: String,
    free: String,
    margin: String,
}

/// Refuses a download of `size` bytes (the size the remote declares: untrusted, so a limit) that would leave
/// less than `margin` free on the filesystem that holds, or will hold, `dir` (its nearest existing ancestor).
pub fn check_free_space(dir: &std::path::Path, name: &SnapshotName, size: u64, margin: u64) -> Result<()> {
    use crate::util::human_bytes;
    let dir = std::iter::successors(Some(dir), |p| p.parent())
        .find(|p| p.exists())
        .unwrap_or(dir);
    let free = rustix::fs::statvfs(dir)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .with_context(|| format!("reading the free space of {}", dir.display()))?;
    if free >= size.saturating_add(margin) {
        return Ok(());
    }
    Err(NoSpace {
        store: dir.display().to_string(),
        name: name.to_string(),
        size: human_bytes(size),
        free: human_bytes(free),
        margin: human_bytes(margin),
    }
    .into())
}

/// Downloads a remote snapshot into the local store; verified against its sidecar before it is published.
/// Refused first when its declared size would leave less than `min_free` free on the store's filesystem.
pub async fn pull_snapshot(
    ctx: &Ctx,
    cluster: &ClusterName,
    name: &SnapshotName,
    remote: &dyn backends::SnapshotStore,
    min_free: u64,
    show_progress: bool,
) -> Result<(LocalSnapshot, backends::Moved)> {
    if ctx.store.exists(cluster, name) {
        anyhow::bail!(
            "snapshot {:?} is already in the local store ({})",
            name.as_str(),
            ctx.store.paths(cluster, name).bundle.display()
        );
    }
    let head = remote
        .head(cluster, name)
        .await
        .with_context(|| format!("looking up {:?} on {}", name.as_str(), remote.describe()))?;
    ctx.store.ensure_cluster_dir(cluster)?;
    // Copies of members local bundles hold take space too: the whole declared size is needed.
    check_free_space(&ctx.store.cluster_dir(cluster), name, head.size, min_free)?;
    let staged = ctx.store.staging_path(cluster, name);
    // A partial download, removed unless published.
    let guard = tempfile::TempPath::try_from_path(staged.clone()).context("the store's path")?;
    let bar = crate::progress::bytes(head.size, &format!("pulling {name}"), show_progress);
    // Members that local bundles (of any cluster) hold are copied from them, verified, not downloaded.
    let local = ctx.store.members();
    let fetched = remote
        .get(cluster, name, &staged, &local, &|n| bar.inc(n))
        .await
        .with_context(|| format!("pulling snapshot {:?}", name.as_str()))?;
    bar.finish_and_clear();
    let file_name = format!("{name}{}", backends::local::BUNDLE_SUFFIX);
    ctx.store.publish(
        cluster,
        name,
        &staged,
        &reader::sidecar_line(&fetched.sha256, &file_name),
        &fetched.metadata,
        fetched.index.as_ref(),
    )?;
    drop(guard);
    Ok((ctx.store.get(cluster, name)?, fetched.moved))
}
