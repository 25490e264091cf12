//! `create`: what is captured, in which order, and the guarantee that a quiesced cluster is resumed on every
//! exit path (success, error, SIGINT, SIGTERM) — and, after a SIGKILL, by `resume`, from the journals.
//!
//! 1. inspect: the cluster's lock is taken; meanwhile, read ahead without it: the facts the metadata needs
//!    (Kubernetes version, platform, addons), what every node's images consist of, the etcd container
//! 2. etcd: hot snapshot on the bootstrap control plane (the cluster is still serving)
//! 3. images, per node, while the cluster runs (content-addressed blobs: nothing to quiesce for); the facts
//!    must be in before anything is frozen
//! 4. quiesce by freezing (`docker pause`, workers first, control planes last): no process restarts, no pod
//!    notices beyond the pause; where freezing fails, kubelet and containers are stopped instead, and said so
//! 5. PVs, read through the archive API (it reads a frozen container's files), every node at once: the first
//!    root streams into the bundle, the others into spools beside it that the bundle reads behind them
//! 6. resume as soon as the last byte has left the nodes: thawed in the reverse order (or kubelet started
//!    again, control planes first), while the bundle takes in what was spooled
//! 7. metadata last, archive finished (meanwhile the nodes are cleaned up and the lock released), sidecar
//!    and metadata copy published, archive linked in

mod etcd;
pub mod images;
mod pvs;
mod spool;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::{LocalStore, SnapshotName, SnapshotPaths};
use sha2::{Digest, Sha256};

use crate::bundle::metadata::{
    EtcdInfo, ImagesInfo, ImagesMode, Metadata, NodeInfo, PvsInfo, SCHEMA_VERSION, Topology,
};
use crate::bundle::{BundleError, BundleSink, METADATA_ENTRY, WriterOptions, reader};
use crate::cluster::journal::{self, Journal, Op, Phase, Quiesce};
use crate::cluster::{ClusterError, Node, NodeState, Role, Runtime, kubelet_nodes, node};
use crate::progress::{PhaseRecord, Progress};
use crate::util::{Pause, Task};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Store(#[from] backends::Error),
    #[error(transparent)]
    Lock(#[from] Box<journal::LockError>),
    #[error("{0}")]
    Invalid(String),
    #[error("{phase}: {inner}")]
    Phase {
        phase: &'static str,
        inner: Box<CaptureError>,
    },
    #[error("interrupted by {0}; the cluster was resumed and no snapshot was written")]
    Interrupted(crate::util::Signal),
    #[error(
        "resuming the cluster failed: {0}\nhint: run `kubectl snapshot resume CLUSTER`: it thaws frozen nodes and starts kubelet again"
    )]
    Resume(String),
}

pub struct Request {
    pub cluster: String,
    pub images: ImagesMode,
    pub name: SnapshotName,
    pub store: LocalStore,
    pub writer: WriterOptions,
    /// The schedule taking this snapshot, recorded in its metadata.
    pub schedule: Option<String>,
}

#[derive(Debug)]
pub struct Outcome {
    pub metadata: Metadata,
    pub paths: SnapshotPaths,
    pub sha256: String,
    pub size: u64,
    pub phases: Vec<PhaseRecord>,
    /// How long the nodes were frozen (or stopped): from the first pause to the last thaw.
    pub frozen: Option<Duration>,
    /// What the user should know though the snapshot was written (images kept by reference).
    pub warnings: Vec<String>,
}

fn phase<T>(name: &'static str, r: Result<T, impl Into<CaptureError>>) -> Result<T, CaptureError> {
    r.map_err(|e| CaptureError::Phase {
        phase: name,
        inner: Box::new(e.into()),
    })
}

pub async fn create(rt: &Runtime, req: Request, progress: &Progress) -> Result<Outcome, CaptureError> {
    // 1. inspect. Reads start at once, while the lock is taken: the metadata's facts, and what each node's
    // images consist of (layers a node discarded are asked of their registry: nothing in the node changes).
    let p = progress.phase("inspecting cluster");
    let nodes = rt.nodes(&req.cluster).await?;
    // Each node is surveyed once, for both: the plans first, as they are awaited first.
    let (surveyed_tx, surveyed) = tokio::sync::oneshot::channel();
    let facts = {
        let (rt, nodes) = (rt.clone(), nodes.clone());
        Task::spawn(async move { inspect(&rt, &nodes, surveyed).await })
    };
    let plans = {
        let (rt, nodes, mode) = (rt.clone(), nodes.clone(), req.images);
        Task::spawn(async move { plan_images(&rt, &nodes, mode, surveyed_tx).await })
    };
    // The lock first: it names an interrupted operation that left nodes paused.
    let lock = journal::begin(rt, &req.cluster, &nodes, "create")
        .await
        .map_err(Box::new)?;
    if let Err(e) = preflight(&nodes) {
        lock.release().await;
        return Err(e);
    }
    let lock = Mutex::new(Some(lock));
    let ahead = Ahead {
        facts,
        plans,
        lock: &lock,
    };
    let result = create_locked(rt, &req, nodes, progress, p, ahead).await;
    let held = lock.lock().expect("lock slot").take();
    if let Some(l) = held {
        l.release().await;
    }
    result
}

/// What `create` started before it held the cluster's lock, and the lock (released as soon as the nodes are
/// left alone).
struct Ahead<'a> {
    facts: Task<Result<Inspected, CaptureError>>,
    plans: Task<Result<Vec<images::ImagePlan>, CaptureError>>,
    lock: &'a Mutex<Option<journal::Lock>>,
}

async fn create_locked(
    rt: &Runtime,
    req: &Request,
    nodes: Vec<Node>,
    progress: &Progress,
    p: crate::progress::Phase,
    ahead: Ahead<'_>,
) -> Result<Outcome, CaptureError> {
    let cluster_name = backends::ClusterName::new(&req.cluster)?;
    let Ahead { facts, plans, lock } = ahead;
    let holder = lock
        .lock()
        .expect("lock slot")
        .as_ref()
        .map(|l| l.holder.clone())
        .ok_or_else(|| CaptureError::Invalid("the cluster's lock is not held".into()))?;
    let mut phases = Vec::new();
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let workers: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Worker).collect();
    let bootstrap = cps[0];
    req.store.ensure_cluster_dir(&cluster_name)?;
    if req.store.exists(&cluster_name, &req.name) {
        return Err(backends::Error::AlreadyExists {
            cluster: req.cluster.clone(),
            name: req.name.to_string(),
        }
        .into());
    }
    phases.push(p.finish());

    // Removed when dropped, unless published (publishing links it in and removes it itself).
    let staged = tempfile::TempPath::try_from_path(req.store.staging_path(&cluster_name, &req.name))
        .map_err(|e| CaptureError::Invalid(format!("the store's path: {e}")))?;
    let sink = BundleSink::create(&staged, req.writer)?;
    let quiesced: Arc<Mutex<Quiesced>> = Arc::default();
    let copy = etcd::copy_path(&holder.id);
    let mut journal = Journal {
        op: Op::Create,
        phase: Phase::Preparing,
        holder: holder.clone(),
        cluster: req.cluster.clone(),
        snapshot: req.name.to_string(),
        quiesce: None,
        switches: Vec::new(),
        leftovers: vec![copy.clone()],
    };
    let mut warnings = Vec::new();
    let mut frozen = None;
    // Set once the nodes were cleaned up and the lock released on the way (the success path).
    let left = std::sync::atomic::AtomicBool::new(false);

    let work = async {
        // 2. etcd, hot (the journal names the copy the node holds meanwhile); the image plans finish meanwhile
        let p = progress.phase("etcd snapshot");
        phase("etcd snapshot", journal.write(rt, &bootstrap.name).await)?;
        let etcd = etcd::capture(rt, &bootstrap.name, &copy, &sink);
        // Once planned, the first node's blobs are read meanwhile.
        let images_ahead = async {
            let mut plans = plans.join().await?.into_iter();
            let first = match plans.next() {
                Some(plan) => Some(phase(
                    "exporting images",
                    images::read_ahead(rt, plan, &Default::default()),
                )?),
                None => None,
            };
            Ok::<_, CaptureError>((first, plans.collect()))
        };
        let (etcd, images_ahead) = tokio::join!(etcd, images_ahead);
        let etcd = phase("etcd snapshot", etcd)?;
        let images_ahead = images_ahead?;
        phases.push(p.finish());

        // 3. images, per node, blobs shared (the etcd copy, every Secret, has left the node already)
        let p = progress.phase("exporting images");
        let images = capture_images(rt, req.images, images_ahead, &sink, &mut warnings, &p).await?;
        phases.push(p.finish());
        crate::util::pause_point(Pause::CreateImages, None).await;

        // The facts read meanwhile: a node that cannot answer stops the capture before anything is frozen.
        let facts = facts.join().await?;

        // 4. quiesce: frozen, workers first, the bootstrap control plane last
        let p = progress.phase("quiescing nodes");
        let order: Vec<&Node> = workers.iter().chain(cps.iter().rev()).copied().collect();
        quiesce(rt, &nodes, &order, &mut journal, &quiesced, &mut warnings).await?;
        phases.push(p.finish());
        crate::util::pause_point(Pause::CreateQuiesced, None).await;

        // 5. PVs, every node at once; 6. resumed as soon as the last byte has left the nodes
        let spool_dir = staged.parent().unwrap_or(std::path::Path::new("."));
        let (pvs, lasted, warning) =
            copy_volumes_and_thaw(rt, &nodes, spool_dir, &sink, &quiesced, progress, &mut phases).await?;
        warnings.extend(warning);
        frozen = lasted;

        // 7. metadata, last entry; meanwhile the nodes are left as they were and the lock is released
        let p = progress.phase("writing bundle");
        let metadata = metadata(req, rt, (&nodes, bootstrap), facts, (etcd, images, pvs));
        let json = serde_json::to_vec_pretty(&metadata).map_err(|e| CaptureError::Invalid(e.to_string()))?;
        let (written, ()) = tokio::join!(write_metadata(sink, &json), async {
            leave_and_release(rt, &nodes, bootstrap, &copy, lock).await;
            left.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let written = written?;
        phases.push(p.finish());
        Ok::<_, CaptureError>((metadata, json, written))
    };

    let result = tokio::select! {
        r = work => r,
        sig = crate::util::interrupted() => Err(CaptureError::Interrupted(sig)),
    };
    if matches!(result, Err(CaptureError::Interrupted(_))) {
        eprintln!("interrupted: resuming the cluster...");
    }

    // Resumed whatever happened above; then nothing is left in the nodes.
    let resumed = thaw(rt, &nodes, &quiesced, false).await;
    if resumed.is_ok() && !left.load(std::sync::atomic::Ordering::SeqCst) {
        leave(rt, &nodes, &bootstrap.name, &copy).await;
    }

    let (metadata, json, written) = result?;
    let (sha256, size) = (written.sha256.clone(), written.size);
    let file_name = req
        .store
        .paths(&cluster_name, &req.name)
        .bundle
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let paths = req.store.publish(
        &cluster_name,
        &req.name,
        &staged,
        &reader::sidecar_line(&sha256, &file_name),
        &json,
        Some(&written.index),
    )?;
    resumed?;
    Ok(Outcome {
        metadata,
        paths,
        sha256,
        size,
        phases,
        frozen,
        warnings,
    })
}

/// Steps 5 and 6: every node's volumes at once, and the nodes resumed as soon as the last byte has left them,
/// while the bundle takes in what was spooled. Returns the volumes, how long the nodes stayed frozen, and a warning when
/// that was long enough to matter. A copy that failed resumes the nodes all the same.
async fn copy_volumes_and_thaw(
    rt: &Runtime,
    nodes: &[Node],
    spool_dir: &std::path::Path,
    sink: &BundleSink,
    quiesced: &Mutex<Quiesced>,
    progress: &Progress,
    phases: &mut Vec<PhaseRecord>,
) -> Result<(PvsInfo, Option<Duration>, Option<String>), CaptureError> {
    let p = progress.phase("copying volumes");
    let (read_tx, read) = tokio::sync::oneshot::channel();
    let (pvs, thawed) = tokio::join!(capture_pvs(rt, nodes, spool_dir, sink, read_tx), async {
        // Unsent when the capture failed: thawed all the same.
        let _ = read.await;
        phases.push(p.finish());
        let p = progress.phase("resuming cluster");
        let thawed = thaw(rt, nodes, quiesced, true).await;
        phases.push(p.finish());
        thawed
    });
    match (pvs, thawed) {
        (Ok((pvs, volumes)), Ok(())) => {
            let lasted = quiesced.lock().expect("quiesced list").lasted;
            let warning = lasted.and_then(|lasted| {
                let at = std::time::Instant::now()
                    .checked_sub(lasted)
                    .unwrap_or_else(std::time::Instant::now);
                crate::util::trace(at, || "nodes frozen, from the first pause to the last thaw".into());
                long_freeze(lasted, pvs.size, volumes)
            });
            Ok((pvs, lasted, warning))
        }
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        // The nodes still quiesced matter more; the copy's failure is kept with it.
        (Err(e), Err(CaptureError::Resume(r))) => {
            Err(CaptureError::Resume(format!("{r} (after copying volumes failed: {e})")))
        }
        (Err(_), Err(t)) => Err(t),
    }
}

/// The snapshot's metadata, from what was read of the cluster (`facts`, the bootstrap node's image) and what was
/// captured.
fn metadata(
    req: &Request,
    rt: &Runtime,
    (nodes, bootstrap): (&[Node], &Node),
    facts: Inspected,
    (mut etcd, images, pvs): (EtcdInfo, ImagesInfo, PvsInfo),
) -> Metadata {
    etcd.image = facts.etcd_image;
    Metadata {
        schema_version: SCHEMA_VERSION,
        name: req.name.to_string(),
        cluster: req.cluster.clone(),
        created: jiff::Timestamp::now(),
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        k8s_version: facts.k8s_version,
        node_image: bootstrap.image.clone(),
        provider: rt.provider().as_str().to_owned(),
        platform: facts.platform,
        topology: topology(nodes),
        addons: facts.addons,
        etcd,
        images,
        pvs,
        schedule: req.schedule.clone(),
    }
}

/// Step 7: the metadata, the bundle's last entry; the bundle finished and synced.
async fn write_metadata(sink: BundleSink, json: &[u8]) -> Result<crate::bundle::writer::Written, CaptureError> {
    let t0 = std::time::Instant::now();
    sink.add_bytes(METADATA_ENTRY, 0o600, json).await?;
    let written = sink.finish().await;
    crate::util::trace(t0, || "bundle finished and synced to disk".into());
    Ok(written?)
}

/// Removes what create left in the nodes (journals, the etcd copy) and releases the lock; the lock's node is
/// cleaned up in the round trip that releases it.
async fn leave_and_release(
    rt: &Runtime,
    nodes: &[Node],
    bootstrap: &Node,
    copy: &str,
    lock: &Mutex<Option<journal::Lock>>,
) {
    let held = lock.lock().expect("lock slot").take();
    match held {
        Some(l) => {
            let at = l.node().to_owned();
            let mine: Vec<&str> = if at == bootstrap.name {
                vec![copy, journal::JOURNAL]
            } else {
                vec![journal::JOURNAL]
            };
            let others: Vec<Node> = nodes.iter().filter(|n| n.name != at).cloned().collect();
            tokio::join!(leave(rt, &others, &bootstrap.name, copy), l.release_with(&mine));
        }
        None => leave(rt, nodes, &bootstrap.name, copy).await,
    }
}

/// Longer than this frozen, and controllers may restart: kube-controller-manager and kube-scheduler renew
/// their leader-election lease with a 10 s deadline (`--leader-elect-renew-deadline`), and the clock runs on
/// while they are frozen.
const FREEZE_WARN: Duration = Duration::from_secs(5);

/// Volumes named in that warning, the largest first.
const FREEZE_NAMED: usize = 3;

/// A warning when the nodes stayed frozen long enough to matter, naming the largest volumes read meanwhile
/// (`node:directory`, bytes).
fn long_freeze(lasted: Duration, total: u64, mut volumes: Vec<(String, u64)>) -> Option<String> {
    if lasted <= FREEZE_WARN {
        return None;
    }
    volumes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut named: Vec<String> = volumes
        .iter()
        .take(FREEZE_NAMED)
        .map(|(v, bytes)| format!("{v} {}", crate::util::human_bytes(*bytes)))
        .collect();
    if volumes.len() > FREEZE_NAMED {
        named.push(format!("{} more", volumes.len() - FREEZE_NAMED));
    }
    Some(format!(
        "the nodes were frozen for {:.1} s while {} of volumes were read ({}): over {} s, kube-controller-manager \
         and kube-scheduler may miss their 10 s leader-election deadline and restart",
        lasted.as_secs_f64(),
        crate::util::human_bytes(total),
        named.join(", "),
        FREEZE_WARN.as_secs()
    ))
}

/// Removes what create left in the nodes: the etcd copy and every journal, all nodes at once.
async fn leave(rt: &Runtime, nodes: &[Node], bootstrap: &str, copy: &str) {
    let removals = kubelet_nodes(nodes).into_iter().map(|n| async move {
        let also: &[&str] = if n.name == bootstrap { &[copy] } else { &[] };
        let _ = Journal::remove_with(rt, &n.name, also).await;
    });
    futures_util::future::join_all(removals).await;
}

/// What create reads from a running cluster before capturing anything.
struct Inspected {
    k8s_version: String,
    platform: String,
    addons: BTreeMap<String, String>,
    etcd_image: String,
}

/// Every node running, a control plane present (from the node list: no round trip).
fn preflight(nodes: &[Node]) -> Result<(), CaptureError> {
    if let Some(n) = nodes.iter().find(|n| n.state != NodeState::Running) {
        return Err(ClusterError::NodeNotRunning {
            node: n.name.clone(),
            state: n.state.to_string(),
        }
        .into());
    }
    if !nodes.iter().any(|n| n.role == Role::ControlPlane) {
        return Err(CaptureError::Invalid("the cluster has no control-plane node".into()));
    }
    Ok(())
}

/// Versions, platform, addons and the etcd image, from every node's survey (see [`plan_images`]).
/// (Called before [`preflight`] has run, while the lock is taken: create checks the nodes' states itself.)
async fn inspect(
    rt: &Runtime,
    nodes: &[Node],
    surveyed: tokio::sync::oneshot::Receiver<Vec<node::Survey>>,
) -> Result<Inspected, CaptureError> {
    let bootstrap = nodes
        .iter()
        .find(|n| n.role == Role::ControlPlane)
        .ok_or_else(|| CaptureError::Invalid("the cluster has no control-plane node".into()))?;
    let (k8s_version, platform, surveys) =
        tokio::join!(node::k8s_version(rt, &bootstrap.name), rt.platform(), surveyed);
    let k8s_version = phase("inspecting cluster", k8s_version)?;
    let platform = phase("inspecting cluster", platform)?;
    // Unsent only when surveying failed, which the plans, awaited first, report.
    let surveys =
        surveys.map_err(|_| CaptureError::Invalid("inspecting cluster: the nodes were not surveyed".into()))?;
    let running = futures_util::future::try_join_all(surveys.iter().map(|s| s.running_containers(rt))).await;
    let running: Vec<_> = phase("inspecting cluster", running)?.into_iter().flatten().collect();
    Ok(Inspected {
        k8s_version,
        platform,
        addons: crate::cluster::addons::detect(running.iter().map(|c| c.image.as_str())),
        etcd_image: running
            .iter()
            .find(|c| c.name == "etcd")
            .map(|c| c.image.clone())
            .unwrap_or_default(),
    })
}

/// The cluster's nodes as the metadata records them.
fn topology(nodes: &[Node]) -> Topology {
    Topology {
        control_planes: nodes.iter().filter(|n| n.role == Role::ControlPlane).count(),
        workers: nodes.iter().filter(|n| n.role == Role::Worker).count(),
        load_balancer: nodes.iter().any(|n| n.role == Role::LoadBalancer),
        nodes: nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                role: n.role.as_str().into(),
                container_id: n.id.clone(),
                image: n.image.clone(),
            })
            .collect(),
    }
}

/// Surveys every kubelet node (one round trip each, all at once), hands the surveys to [`inspect`], then
/// reads what every node's images consist of, all nodes at once.
async fn plan_images(
    rt: &Runtime,
    nodes: &[Node],
    mode: ImagesMode,
    surveyed: tokio::sync::oneshot::Sender<Vec<node::Survey>>,
) -> Result<Vec<images::ImagePlan>, CaptureError> {
    let kubelet = kubelet_nodes(nodes);
    let surveys = futures_util::future::try_join_all(kubelet.iter().map(|n| node::survey(rt, &n.name)));
    let (surveys, platform) = tokio::join!(surveys, rt.platform());
    let surveys = phase("inspecting cluster", surveys)?;
    let _ = surveyed.send(surveys.clone());
    if mode == ImagesMode::None {
        return Ok(Vec::new());
    }
    let platform = phase("exporting images", platform)?;
    let plans = surveys.iter().map(|s| images::plan_images(rt, s, &platform, mode));
    futures_util::future::try_join_all(plans)
        .await
        .map_err(|e| CaptureError::Phase {
            phase: "exporting images",
            inner: Box::new(e),
        })
}

/// The first node's blobs being read already (during the etcd snapshot), and the other nodes' plans.
type ImagesAhead = (Option<images::Reading>, Vec<images::ImagePlan>);

async fn capture_images(
    rt: &Runtime,
    mode: ImagesMode,
    (first, rest): ImagesAhead,
    sink: &BundleSink,
    warnings: &mut Vec<String>,
    p: &crate::progress::Phase,
) -> Result<ImagesInfo, CaptureError> {
    let mut per_node = BTreeMap::new();
    let mut size = 0;
    let mut bundled = std::collections::HashSet::new();
    let mut rest = rest.into_iter();
    let mut next = first;
    loop {
        let reading = match next.take() {
            Some(r) => r,
            None => match rest.next() {
                Some(plan) => phase("exporting images", images::read_ahead(rt, plan, &bundled))?,
                None => break,
            },
        };
        p.set_message(format!("exporting images ({})", reading.node()));
        let got = phase("exporting images", images::write(rt, reading, sink, &mut bundled).await)?;
        size += got.added;
        warnings.extend(got.warnings);
        per_node.insert(got.node, got.images);
    }
    let mut lines: Vec<String> = Vec::new();
    let mut all_blobs = std::collections::BTreeSet::new();
    for (node, imgs) in &per_node {
        lines.extend(
            imgs.images
                .iter()
                .map(|i| format!("{node}\t{}\t{}\n", i.name, i.digest)),
        );
        all_blobs.extend(imgs.blobs.iter().cloned());
    }
    lines.sort();
    Ok(ImagesInfo {
        mode,
        digest: format!("sha256:{}", hex::encode(Sha256::digest(lines.concat().as_bytes()))),
        size,
        blobs: all_blobs.len(),
        nodes: per_node,
    })
}

/// Freezes the nodes in `order`, each recorded in its journal first; where the runtime cannot freeze, stops
/// kubelet and containers instead and says so.
async fn quiesce(
    rt: &Runtime,
    nodes: &[Node],
    order: &[&Node],
    journal: &mut Journal,
    quiesced: &Mutex<Quiesced>,
    warnings: &mut Vec<String>,
) -> Result<(), CaptureError> {
    journal.phase = Phase::Quiesced;
    journal.quiesce = Some(Quiesce::Pause);
    let writes = order.iter().map(|n| journal.write(rt, &n.name));
    phase("quiescing nodes", futures_util::future::try_join_all(writes).await)?;
    let Err(e) = freeze(rt, order, quiesced).await else {
        crate::util::pause_point(Pause::CreateQuiesced, None).await;
        return Ok(());
    };
    // A runtime that cannot freeze (rootless Podman on cgroup v1).
    thaw(rt, nodes, quiesced, true)
        .await
        .map_err(|t| CaptureError::Resume(format!("{e}; then {t}")))?;
    warnings.push(format!(
        "could not freeze the nodes ({e}); stopped kubelet and containers instead: pods restart"
    ));
    journal.quiesce = Some(Quiesce::Stop);
    {
        let mut q = quiesced.lock().expect("quiesced list");
        (q.since, q.lasted) = (Some(std::time::Instant::now()), None);
    }
    for n in order {
        phase("quiescing nodes", journal.write(rt, &n.name).await)?;
        quiesced.lock().expect("quiesced list").stopped.push(n.name.clone());
        phase("quiescing nodes", node::quiesce(rt, &n.name).await)?;
    }
    crate::util::pause_point(Pause::CreateQuiesced, None).await;
    Ok(())
}

/// Every kubelet node's local-path volumes into the bundle, read at once (spooled in `spool_dir`); `read` is
/// told when every byte has left the nodes.
async fn capture_pvs(
    rt: &Runtime,
    nodes: &[Node],
    spool_dir: &std::path::Path,
    sink: &BundleSink,
    read: tokio::sync::oneshot::Sender<()>,
) -> Result<(PvsInfo, Vec<(String, u64)>), CaptureError> {
    let names: Vec<String> = kubelet_nodes(nodes).into_iter().map(|n| n.name.clone()).collect();
    let captured = phase("copying volumes", pvs::capture(rt, &names, spool_dir, sink, read).await)?;
    let mut per_node: BTreeMap<String, Vec<String>> = names.into_iter().map(|n| (n, Vec::new())).collect();
    let mut digest = Sha256::new();
    let (mut size, mut files) = (0, 0);
    let mut volumes = Vec::new();
    for pvs::Captured { node, root, summary } in &captured {
        volumes.extend(
            summary
                .bytes_below
                .iter()
                .map(|(dir, bytes)| (format!("{node}:{root}/{dir}"), *bytes)),
        );
        digest.update(format!("{node}\0{root}\0{}\n", summary.digest).as_bytes());
        size += summary.bytes;
        files += summary
            .entries
            .iter()
            .filter(|e| e.kind == crate::bundle::writer::EntryKind::File)
            .count();
        per_node.entry(node.clone()).or_default().push((*root).to_owned());
    }
    let info = PvsInfo {
        digest: format!("sha256:{}", hex::encode(digest.finalize())),
        size,
        files,
        nodes: per_node,
    };
    Ok((info, volumes))
}

/// The nodes quiesced so far, and how.
#[derive(Default)]
struct Quiesced {
    frozen: Vec<String>,
    stopped: Vec<String>,
    /// When the first node was frozen (or stopped), and for how long the nodes stayed so: until the last was
    /// resumed.
    since: Option<std::time::Instant>,
    lasted: Option<Duration>,
}

/// Pauses each node in `order`, recording each before it is paused.
async fn freeze(rt: &Runtime, order: &[&Node], quiesced: &Mutex<Quiesced>) -> Result<(), ClusterError> {
    for n in order {
        {
            let mut q = quiesced.lock().expect("quiesced list");
            q.since.get_or_insert_with(std::time::Instant::now);
            q.frozen.push(n.name.clone());
        }
        rt.pause(&n.name).await?;
    }
    Ok(())
}

/// Thaws the frozen nodes in the reverse order and starts the stopped ones again. Idempotent, and safe to
/// cancel (create's work is dropped on a signal): a node leaves the list only once it is thawed, or once its
/// attempt to start again ended, so the thaw on the way out resumes whatever a cancelled one had not reached.
/// A thaw inside the work (`in_work`) stops at the pause point `create:thawing` after its first node.
async fn thaw(rt: &Runtime, nodes: &[Node], quiesced: &Mutex<Quiesced>, in_work: bool) -> Result<(), CaptureError> {
    let (frozen, stopped) = {
        let q = quiesced.lock().expect("quiesced list");
        (q.frozen.clone(), q.stopped.clone())
    };
    let thawed = |n: &str| quiesced.lock().expect("quiesced list").frozen.retain(|f| f != n);
    let mut errors = Vec::new();
    for (i, n) in frozen.iter().rev().enumerate() {
        match rt.pause_state(n).await {
            Ok(true) => match rt.unpause(n).await {
                Ok(()) => thawed(n),
                Err(e) => errors.push(format!("{n}: {e}")),
            },
            Ok(false) => thawed(n),
            Err(e) => errors.push(format!("{n}: {e}")),
        }
        if in_work && i == 0 && frozen.len() > 1 {
            crate::util::pause_point(Pause::CreateThawing, None).await;
        }
    }
    if !stopped.is_empty() {
        let started = crate::cluster::quiesce::resume_nodes(rt, nodes, &stopped).await;
        quiesced
            .lock()
            .expect("quiesced list")
            .stopped
            .retain(|n| !stopped.contains(n));
        if let Err(e) = started {
            errors.push(e.to_string());
        }
    }
    {
        let mut q = quiesced.lock().expect("quiesced list");
        if q.frozen.is_empty() && q.stopped.is_empty() && q.lasted.is_none() {
            q.lasted = q.since.map(|t| t.elapsed());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Resume(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_freeze_is_said_with_the_volumes_that_made_it() {
        let root = "kind-worker:/var/local-path-provisioner";
        let volumes: Vec<(String, u64)> = [
            ("pvc-a_db", 3 << 30),
            ("pvc-b_x", 1 << 10),
            ("pvc-c_y", 2 << 20),
            ("pvc-d_z", 0),
        ]
        .into_iter()
        .map(|(v, b)| (format!("{root}/{v}"), b))
        .collect();
        assert_eq!(long_freeze(Duration::from_millis(4900), 3 << 30, volumes.clone()), None);
        let w = long_freeze(Duration::from_millis(7300), 3 << 30, volumes).expect("a warning");
        assert!(w.contains("7.3 s") && w.contains("leader-election"), "{w}");
        let named = format!("({root}/pvc-a_db 3.00 GiB, {root}/pvc-c_y 2.00 MiB, {root}/pvc-b_x 1.00 KiB, 1 more)");
        assert!(w.contains(&named), "{w}");
    }
}
