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
use std::sync::Mutex;
use std::time::Duration;

use backends::{LocalStore, SnapshotName, SnapshotPaths};
use sha2::{Digest, Sha256};

use crate::bundle::metadata::{
    EtcdInfo, ImagesInfo, ImagesMode, Metadata, NodeInfo, PvsInfo, SCHEMA_VERSION, Topology,
};
use crate::bundle::{BundleError, BundleSink, METADATA_ENTRY, WriterOptions, reader};
use crate::cluster::journal::{self, Journal, Op, Phase, Quiesce};
use crate::cluster::quiesce::{NodeFailure, ResumeFailed};
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
    /// Content read from a node that does not hash to its digest.
    #[error("image content {digest} read from {node} hashes to {got}")]
    BlobMismatch { node: String, digest: String, got: String },
    #[error("{digest} is missing from {from} on {node}")]
    BlobMissing { node: String, digest: String, from: String },
    #[error("{what}: {reason}")]
    BadImage { what: String, reason: String },
    /// Surveying the nodes failed (the image plans, awaited first, say why).
    #[error("inspecting cluster: the nodes were not surveyed")]
    NotSurveyed,
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error("encoding JSON: {0}")]
    Metadata(serde_json::Error),
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
    Resume(#[from] ResumeFailed),
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
    let ahead = read_ahead(rt, &req.cluster, &nodes, req.images);
    // The lock first: it names an interrupted operation that left nodes paused.
    let lock = journal::begin(rt, &req.cluster, &nodes, "create")
        .await
        .map_err(Box::new)?;
    let bootstrap = match preflight(&req.cluster, &nodes) {
        Ok(bootstrap) => bootstrap,
        Err(e) => {
            lock.release().await;
            return Err(e);
        }
    };
    let mut cleanup = Cleanup::new(rt, &nodes, bootstrap, lock);
    let (staging, sink) = match Staging::new(&req) {
        Ok(staging) => staging,
        Err(e) => {
            cleanup.leave().await?;
            return Err(e);
        }
    };
    let mut steps = Steps {
        rt,
        req: &req,
        nodes: &nodes,
        bootstrap,
        progress,
        phases: vec![p.finish()],
        warnings: Vec::new(),
    };
    let result = tokio::select! {
        r = steps.capture(ahead, &staging, sink, &mut cleanup) => r,
        sig = crate::util::interrupted() => Err(CaptureError::Interrupted(sig)),
    };
    if matches!(result, Err(CaptureError::Interrupted(_))) {
        eprintln!("interrupted: resuming the cluster...");
    }
    // Resumed whatever happened above; then nothing is left in the nodes, and the lock is released.
    let resumed = cleanup.leave().await;
    let captured = result?;
    let outcome = staging.publish(&req, captured, steps)?;
    resumed?;
    Ok(outcome)
}

/// What `create` reads before it holds the cluster's lock: the metadata's facts, and the image plans. Each
/// node is surveyed once, for both: the plans first, as they are awaited first.
struct Ahead {
    facts: Task<Result<Inspected, CaptureError>>,
    plans: Task<Result<Vec<images::ImagePlan>, CaptureError>>,
}

fn read_ahead(rt: &Runtime, cluster: &str, nodes: &[Node], mode: ImagesMode) -> Ahead {
    let (surveyed_tx, surveyed) = tokio::sync::oneshot::channel();
    let facts = {
        let (rt, cluster, nodes) = (rt.clone(), cluster.to_owned(), nodes.to_vec());
        Task::spawn(async move { inspect(&rt, &cluster, &nodes, surveyed).await })
    };
    let plans = {
        let (rt, nodes) = (rt.clone(), nodes.to_vec());
        Task::spawn(async move { plan_images(&rt, &nodes, mode, surveyed_tx).await })
    };
    Ahead { facts, plans }
}

/// Where the bundle is written until it is published: a temporary file in the store, removed when dropped
/// unless published (publishing links it in and removes it itself), and the writer filling it.
struct Staging {
    cluster: backends::ClusterName,
    path: tempfile::TempPath,
}

impl Staging {
    /// The store's directory for the cluster, checked not to hold the name already, and the bundle's writer.
    fn new(req: &Request) -> Result<(Self, BundleSink), CaptureError> {
        let cluster = backends::ClusterName::new(&req.cluster)?;
        req.store.ensure_cluster_dir(&cluster)?;
        if req.store.exists(&cluster, &req.name) {
            return Err(backends::Error::AlreadyExists {
                cluster: req.cluster.clone(),
                name: req.name.to_string(),
            }
            .into());
        }
        let staged = req.store.staging_path(&cluster, &req.name);
        let path = tempfile::TempPath::try_from_path(&staged).map_err(|cause| CaptureError::Io {
            what: format!("the store's path {}", staged.display()),
            cause,
        })?;
        let sink = BundleSink::create(&path, req.writer)?;
        Ok((Staging { cluster, path }, sink))
    }

    /// The archive, sidecar and metadata copy published under the snapshot's name.
    fn publish(self, req: &Request, captured: Captured, steps: Steps<'_>) -> Result<Outcome, CaptureError> {
        let Captured {
            metadata,
            json,
            written,
            frozen,
        } = captured;
        let file_name = req
            .store
            .paths(&self.cluster, &req.name)
            .bundle
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let paths = req.store.publish(
            &self.cluster,
            &req.name,
            &self.path,
            &reader::sidecar_line(&written.sha256, &file_name),
            &json,
            Some(&written.index),
        )?;
        Ok(Outcome {
            metadata,
            paths,
            sha256: written.sha256,
            size: written.size,
            phases: steps.phases,
            frozen,
            warnings: steps.warnings,
        })
    }
}

/// What the nodes must be left as, whatever happens: thawed (or started again), then without the journals
/// and the etcd copy, and the lock released. [`Cleanup::leave`] does it and may be called again: what is
/// done already is not done twice.
struct Cleanup<'a> {
    rt: &'a Runtime,
    nodes: &'a [Node],
    bootstrap: &'a Node,
    quiesced: Mutex<Quiesced>,
    lock: Option<journal::Lock>,
    holder: journal::Holder,
    copy: String,
}

impl<'a> Cleanup<'a> {
    fn new(rt: &'a Runtime, nodes: &'a [Node], bootstrap: &'a Node, lock: journal::Lock) -> Self {
        let holder = lock.holder.clone();
        Cleanup {
            rt,
            nodes,
            bootstrap,
            quiesced: Mutex::default(),
            copy: etcd::copy_path(&holder.id),
            holder,
            lock: Some(lock),
        }
    }

    /// Thaws what is still quiesced; once that succeeded, removes what create left in the nodes and releases
    /// the lock. When the nodes cannot be resumed, their journals stay for `resume`, and the lock is released.
    async fn leave(&mut self) -> Result<(), CaptureError> {
        let thawed = thaw(self.rt, self.nodes, &self.quiesced, false).await;
        let lock = self.lock.take();
        match (&thawed, lock) {
            (Ok(()), Some(lock)) => self.leave_and_release(lock).await,
            (Err(_), Some(lock)) => lock.release().await,
            (_, None) => {}
        }
        thawed
    }

    /// Removes what create left in the nodes (journals, the etcd copy) and releases the lock; the lock's node
    /// is cleaned up in the round trip that releases it.
    async fn leave_and_release(&self, lock: journal::Lock) {
        let at = lock.node().to_owned();
        let copy = self.copy.as_str();
        let mine: Vec<&str> = if at == self.bootstrap.name {
            vec![copy, journal::JOURNAL]
        } else {
            vec![journal::JOURNAL]
        };
        let others: Vec<Node> = self.nodes.iter().filter(|n| n.name != at).cloned().collect();
        tokio::join!(
            leave(self.rt, &others, &self.bootstrap.name, copy),
            lock.release_with(&mine)
        );
    }
}

/// What one create shares between its steps, and what they record.
struct Steps<'a> {
    rt: &'a Runtime,
    req: &'a Request,
    nodes: &'a [Node],
    bootstrap: &'a Node,
    progress: &'a Progress,
    phases: Vec<PhaseRecord>,
    warnings: Vec<String>,
}

/// The bundle written, not yet published.
struct Captured {
    metadata: Metadata,
    json: Vec<u8>,
    written: crate::bundle::writer::Written,
    frozen: Option<Duration>,
}

impl Steps<'_> {
    /// Steps 2 to 7, into the staged bundle; the nodes are left (and the lock released) while it is finished.
    async fn capture(
        &mut self,
        ahead: Ahead,
        staging: &Staging,
        sink: BundleSink,
        cleanup: &mut Cleanup<'_>,
    ) -> Result<Captured, CaptureError> {
        let mut journal = Journal {
            op: Op::Create,
            phase: Phase::Preparing,
            holder: cleanup.holder.clone(),
            cluster: self.req.cluster.clone(),
            snapshot: self.req.name.to_string(),
            quiesce: None,
            switches: Vec::new(),
            leftovers: vec![cleanup.copy.clone()],
        };
        let (etcd, images) = self
            .etcd_and_images(&mut journal, &cleanup.copy, ahead.plans, &sink)
            .await?;
        crate::util::pause_point(Pause::CreateImages, None).await;
        // The facts read meanwhile: a node that cannot answer stops the capture before anything is frozen.
        let facts = ahead.facts.join().await?;
        let spool_dir = staging.path.parent().unwrap_or(std::path::Path::new("."));
        let (pvs, frozen) = self
            .quiesce_and_copy(&mut journal, &cleanup.quiesced, spool_dir, &sink)
            .await?;

        // 7. metadata, last entry; meanwhile the nodes are left as they were and the lock is released
        let p = self.progress.phase("writing bundle");
        let metadata = metadata(
            self.req,
            self.rt,
            (self.nodes, self.bootstrap),
            facts,
            (etcd, images, pvs),
        );
        let json = serde_json::to_vec_pretty(&metadata).map_err(CaptureError::Metadata)?;
        let (written, _) = tokio::join!(write_metadata(sink, &json), cleanup.leave());
        let written = written?;
        self.phases.push(p.finish());
        Ok(Captured {
            metadata,
            json,
            written,
            frozen,
        })
    }

    /// Steps 2 and 3, while the cluster runs: etcd, hot (the journal names the copy the node holds meanwhile),
    /// then the images, per node, blobs shared (the etcd copy, every Secret, has left the node already). The
    /// first node's blobs are read during the etcd snapshot.
    async fn etcd_and_images(
        &mut self,
        journal: &mut Journal,
        copy: &str,
        plans: Task<Result<Vec<images::ImagePlan>, CaptureError>>,
        sink: &BundleSink,
    ) -> Result<(EtcdInfo, ImagesInfo), CaptureError> {
        let (rt, bootstrap) = (self.rt, &self.bootstrap.name);
        let p = self.progress.phase("etcd snapshot");
        phase("etcd snapshot", journal.write(rt, bootstrap).await)?;
        let etcd = etcd::capture(rt, bootstrap, copy, sink);
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
        self.phases.push(p.finish());

        let p = self.progress.phase("exporting images");
        let images = capture_images(rt, self.req.images, images_ahead, sink, &mut self.warnings, &p).await?;
        self.phases.push(p.finish());
        Ok((etcd, images))
    }

    /// Steps 4 to 6: the nodes frozen, workers first, the bootstrap control plane last; every node's volumes
    /// at once; the nodes resumed as soon as the last byte has left them. Returns the volumes, and how long
    /// the nodes stayed frozen.
    async fn quiesce_and_copy(
        &mut self,
        journal: &mut Journal,
        quiesced: &Mutex<Quiesced>,
        spool_dir: &std::path::Path,
        sink: &BundleSink,
    ) -> Result<(PvsInfo, Option<Duration>), CaptureError> {
        let p = self.progress.phase("quiescing nodes");
        let cps = self.nodes.iter().filter(|n| n.role == Role::ControlPlane);
        let workers = self.nodes.iter().filter(|n| n.role == Role::Worker);
        let order: Vec<&Node> = workers.chain(cps.rev()).collect();
        quiesce(self.rt, self.nodes, &order, journal, quiesced, &mut self.warnings).await?;
        self.phases.push(p.finish());
        crate::util::pause_point(Pause::CreateQuiesced, None).await;
        let (pvs, lasted, warning) = self.copy_volumes_and_thaw(spool_dir, sink, quiesced).await?;
        self.warnings.extend(warning);
        Ok((pvs, lasted))
    }

    /// Steps 5 and 6: every node's volumes at once, and the nodes resumed as soon as the last byte has left
    /// them, while the bundle takes in what was spooled. Returns the volumes, how long the nodes stayed frozen,
    /// and a warning when that was long enough to matter. A copy that failed resumes the nodes all the same.
    async fn copy_volumes_and_thaw(
        &mut self,
        spool_dir: &std::path::Path,
        sink: &BundleSink,
        quiesced: &Mutex<Quiesced>,
    ) -> Result<(PvsInfo, Option<Duration>, Option<String>), CaptureError> {
        let (rt, nodes, progress) = (self.rt, self.nodes, self.progress);
        let phases = &mut self.phases;
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
            (Err(e), Err(CaptureError::Resume(r))) => Err(CaptureError::Resume(r.after(e))),
            (Err(_), Err(t)) => Err(t),
        }
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
fn preflight<'a>(cluster: &str, nodes: &'a [Node]) -> Result<&'a Node, CaptureError> {
    if let Some(n) = nodes.iter().find(|n| n.state != NodeState::Running) {
        return Err(ClusterError::NodeNotRunning {
            node: n.name.clone(),
            state: n.state.to_string(),
        }
        .into());
    }
    let bootstrap = nodes.iter().find(|n| n.role == Role::ControlPlane);
    Ok(bootstrap.ok_or_else(|| ClusterError::NoControlPlane {
        cluster: cluster.to_owned(),
    })?)
}

/// Versions, platform, addons and the etcd image, from every node's survey (see [`plan_images`]).
/// (Called before [`preflight`] has run, while the lock is taken: create checks the nodes' states itself.)
async fn inspect(
    rt: &Runtime,
    cluster: &str,
    nodes: &[Node],
    surveyed: tokio::sync::oneshot::Receiver<Vec<node::Survey>>,
) -> Result<Inspected, CaptureError> {
    let bootstrap =
        nodes
            .iter()
            .find(|n| n.role == Role::ControlPlane)
            .ok_or_else(|| ClusterError::NoControlPlane {
                cluster: cluster.to_owned(),
            })?;
    let (k8s_version, platform, surveys) =
        tokio::join!(node::k8s_version(rt, &bootstrap.name), rt.platform(), surveyed);
    let k8s_version = phase("inspecting cluster", k8s_version)?;
    let platform = phase("inspecting cluster", platform)?;
    // Unsent only when surveying failed, which the plans, awaited first, report.
    let surveys = surveys.map_err(|_| CaptureError::NotSurveyed)?;
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
    let warning = format!("could not freeze the nodes ({e}); stopped kubelet and containers instead: pods restart");
    thaw(rt, nodes, quiesced, true).await.map_err(|t| match t {
        CaptureError::Resume(r) => CaptureError::Resume(r.after(e)),
        t => t,
    })?;
    warnings.push(warning);
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
                Err(error) => errors.push(NodeFailure::NotResumed { node: n.clone(), error }),
            },
            Ok(false) => thawed(n),
            Err(error) => errors.push(NodeFailure::NotResumed { node: n.clone(), error }),
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
            errors.extend(e.failures);
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
        Err(ResumeFailed::new(errors).into())
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

    use crate::cluster::fake::Fake;
    use crate::cluster::journal::{JOURNAL, LOCK_DIR};

    const CP: &str = "kind-control-plane";
    const W: &str = "kind-worker";

    fn two_nodes() -> (Fake, Runtime) {
        let fake = Fake::cluster("kind", &[(CP, Role::ControlPlane), (W, Role::Worker)]);
        let rt = Runtime::with(fake.clone());
        (fake, rt)
    }

    fn held(fake: &Fake) -> bool {
        fake.paths(CP).iter().any(|p| p.starts_with(LOCK_DIR))
    }

    /// The fake answers no streamed command: the etcd snapshot fails, after the journal named its copy.
    #[tokio::test]
    async fn a_create_that_fails_at_the_etcd_snapshot_leaves_nothing_in_the_nodes_or_the_store() {
        let (fake, rt) = two_nodes();
        let dir = tempfile::tempdir().unwrap();
        let req = Request {
            cluster: "kind".into(),
            images: ImagesMode::None,
            name: SnapshotName::new("s1").unwrap(),
            store: backends::LocalStore::new(dir.path()),
            writer: WriterOptions::default(),
            schedule: None,
        };
        let err = create(&rt, req, &Progress::new(false)).await.unwrap_err();
        assert!(
            matches!(
                err,
                CaptureError::Phase {
                    phase: "etcd snapshot",
                    ..
                }
            ),
            "{err}"
        );
        let log = fake.log().join("\n");
        assert!(
            log.contains(JOURNAL),
            "the journal was written before the snapshot:\n{log}"
        );
        for n in [CP, W] {
            assert_eq!(
                fake.paths(n),
                Vec::<String>::new(),
                "{n} keeps nothing: no journal, copy or lock"
            );
            assert!(!fake.paused(n));
        }
        let left: Vec<_> = walkdir(dir.path());
        assert!(
            left.iter().all(|p| p.is_dir()),
            "the store keeps no staged file: {left:?}"
        );
    }

    fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            }
            out.push(p);
        }
        out
    }

    /// The guard after nodes were frozen: `leave` thaws them all, removes the journals and the etcd copy, and
    /// releases the lock.
    async fn frozen(fake: &Fake, rt: &Runtime, nodes: &[Node]) -> journal::Lock {
        let lock = journal::begin(rt, "kind", nodes, "create").await.unwrap();
        assert!(held(fake));
        let copy = etcd::copy_path(&lock.holder.id);
        fake.write(CP, &copy, b"etcd snapshot");
        for n in [CP, W] {
            fake.write(n, JOURNAL, b"{}");
        }
        lock
    }

    async fn freeze_workers_first(rt: &Runtime, nodes: &[Node], cleanup: &Cleanup<'_>) {
        let order: Vec<&Node> = nodes.iter().rev().collect();
        freeze(rt, &order, &cleanup.quiesced).await.unwrap();
    }

    #[tokio::test]
    async fn leaving_thaws_every_node_then_cleans_them_and_releases_the_lock() {
        let (fake, rt) = two_nodes();
        let nodes = rt.nodes("kind").await.unwrap();
        let lock = frozen(&fake, &rt, &nodes).await;
        let mut cleanup = Cleanup::new(&rt, &nodes, &nodes[0], lock);
        freeze_workers_first(&rt, &nodes, &cleanup).await;
        assert!(fake.paused(CP) && fake.paused(W));
        cleanup.leave().await.unwrap();
        for n in [CP, W] {
            assert!(!fake.paused(n), "{n} thawed");
            assert_eq!(
                fake.paths(n),
                Vec::<String>::new(),
                "{n}: journal, copy and lock removed"
            );
        }
        // Again, as create's last step does after the success path left already: nothing more happens.
        let before = fake.log().len();
        cleanup.leave().await.unwrap();
        assert_eq!(fake.log().len(), before);
    }

    #[tokio::test]
    async fn a_node_that_cannot_be_thawed_is_named_and_keeps_its_journal_for_resume() {
        let (fake, rt) = two_nodes();
        let nodes = rt.nodes("kind").await.unwrap();
        let lock = frozen(&fake, &rt, &nodes).await;
        let mut cleanup = Cleanup::new(&rt, &nodes, &nodes[0], lock);
        freeze_workers_first(&rt, &nodes, &cleanup).await;
        fake.fail_on(W, "unpause");
        let err = cleanup.leave().await.unwrap_err();
        let CaptureError::Resume(failed) = &err else {
            panic!("not a resume failure: {err}");
        };
        assert!(
            matches!(&failed.failures[..], [NodeFailure::NotResumed { node, .. }] if node == W),
            "{err}"
        );
        assert!(err.to_string().contains("kubectl snapshot resume"), "{err}");
        assert!(!fake.paused(CP) && fake.paused(W));
        assert!(!held(&fake), "the lock is released: `resume` takes it");
        for n in [CP, W] {
            assert!(fake.read(n, JOURNAL).is_some(), "{n} keeps its journal for `resume`");
        }
        // A second try (the runtime answers again) thaws the node; the journals stay for `resume`.
        fake.heal();
        cleanup.leave().await.unwrap();
        assert!(!fake.paused(W));
    }
}
