//! `restore`: a hard overwrite of a running cluster with a snapshot, only after the pre-flight gauntlet passed,
//! and all-or-nothing: etcd and the volumes end up both from the snapshot or both as they were.
//!
//! 1. pre-flight (no mutation), under the cluster's lock: the bundle is read once — integrity against the
//!    sidecar, every entry validated, what restore needs staged on the host — and the live cluster is checked
//!    against the snapshot's metadata. All violations are reported at once.
//! 2. a journal in every node records each rename to come; then, while the cluster still runs: etcd restored
//!    beside /var/lib/etcd on every control plane, each PV root extracted beside itself and checked, missing
//!    images imported. A failure or a signal here removes what was staged: nothing live changed.
//! 3. commit (the journals say so; the lock node's last), 4. quiesce, 5. switch: per path, the live data is
//!    renamed aside and the staged data renamed in. A failure rolls every node back; SIGINT/SIGTERM from the
//!    commit on let the restore complete. A SIGKILL leaves the journals: `resume` completes a committed restore
//!    and undoes an uncommitted one; `resume --rollback` puts the previous data back after a completed one.
//! 6. resume, then wait until every member is healthy and all agree on the membership.

mod etcd;
mod images;
pub mod preflight;
mod pvs;
pub mod recover;

use std::collections::BTreeMap;
use std::time::Duration;

use backends::{ClusterName, LocalStore, SnapshotName};

use crate::bundle::Metadata;
use crate::bundle::extract::{self, Staged};
use crate::cluster::journal::{self, Holder, Journal, LockError, Op, Phase, Quiesce, Switch};
use crate::cluster::quiesce::{self, ResumeFailed};
use crate::cluster::{ClusterError, Node, Role, Runtime, kubelet_nodes, node};
use crate::progress::{PhaseRecord, Progress};
use backon::Retryable;

use crate::util::{Pause, Signals};

pub use preflight::Check;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Store(#[from] backends::Error),
    #[error(
        "resuming the cluster failed: {0}\nhint: run `kubectl snapshot resume CLUSTER`: it thaws frozen nodes and starts kubelet again"
    )]
    Resume(#[from] ResumeFailed),
    #[error("{0}")]
    Invalid(String),
    /// `resume --rollback` found only a completed restore: rolling it back must be confirmed.
    #[error(
        "the last restore, of snapshot {snapshot:?} ({since}), completed: rolling it back puts back the etcd data and \
         volumes from before it (what is live now is kept aside on the nodes)\nhint: run `kubectl snapshot resume \
         --rollback --yes` to do so"
    )]
    ConfirmRollback { snapshot: String, since: String },
    #[error("pre-flight failed; nothing was changed:\n{}", list(.0))]
    Preflight(Vec<Check>),
    #[error("interrupted by {signal}: {state}")]
    Interrupted { signal: crate::util::Signal, state: String },
    #[error(
        "restore failed while {step}: {inner}\nnothing was changed: the cluster kept running with its etcd data and volumes, and what was staged was removed"
    )]
    BeforeMutation {
        step: &'static str,
        inner: Box<RestoreError>,
    },
    #[error(
        "restore failed while {step}: {inner}\nrolled back: etcd data and volumes are as they were before the restore, and the cluster was restarted"
    )]
    RolledBack {
        step: &'static str,
        inner: Box<RestoreError>,
    },
    #[error(
        "restore failed while {step}: {inner}\nrolling back failed too: {rollback}\nthe cluster is left quiesced; the journal in each node ({}) records every path\nrun \"kubectl snapshot resume {cluster}\" to complete the restore, or \"kubectl snapshot resume {cluster} --rollback\" to put the previous data back",
        nodes.join(", ")
    )]
    Mutation {
        step: &'static str,
        cluster: String,
        inner: Box<RestoreError>,
        rollback: String,
        nodes: Vec<String>,
    },
    #[error(
        "etcd data and volumes were switched to the snapshot, but the cluster did not come back: {inner}\nrun \"kubectl snapshot resume {cluster}\" to retry, or \"kubectl snapshot resume {cluster} --rollback\" to put the previous data back"
    )]
    Unhealthy { cluster: String, inner: Box<RestoreError> },
}

fn list(checks: &[Check]) -> String {
    checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("  - {}", c.message))
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Request {
    pub cluster: String,
    pub name: SnapshotName,
    pub store: LocalStore,
    pub min_free: u64,
}

#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub preflight: Vec<Check>,
    pub phases: Vec<PhaseRecord>,
    /// Control plane → where its previous etcd data was kept.
    pub previous_etcd_data: BTreeMap<String, String>,
    /// Node → where its previous volume roots were kept.
    pub previous_volumes: BTreeMap<String, Vec<String>>,
    /// Node → images that were missing and re-imported.
    pub imported_images: BTreeMap<String, Vec<String>>,
    pub restored_volumes: usize,
    /// Revisions the restored etcd was moved past the live one (`--bump-revision`); absent where the etcd
    /// tools could not bump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_revision_bump: Option<u64>,
}

/// Free bytes for an unprivileged user on the filesystem holding `path` (statvfs); 0 when it cannot be read,
/// so that staging refuses rather than fills a disk.
fn host_free(path: &std::path::Path) -> u64 {
    rustix::fs::statvfs(path).map_or(0, |v| v.f_bavail.saturating_mul(v.f_frsize))
}

pub async fn restore(
    rt: &Runtime,
    req: Request,
    progress: &Progress,
    checks_out: &mut Vec<Check>,
) -> Result<Outcome, RestoreError> {
    // From here on SIGINT and SIGTERM no longer kill the process: each step finishes or is undone.
    let signals = Signals::install();
    let cluster_name = ClusterName::new(&req.cluster)?;
    let snap = req.store.get(&cluster_name, &req.name)?;
    let nodes = rt.nodes(&req.cluster).await?;
    let lock = journal::begin(rt, &req.cluster, &nodes, "restore").await?;
    let result = restore_locked(rt, &req, snap, nodes, progress, checks_out, &signals, &lock.holder).await;
    lock.release().await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn restore_locked(
    rt: &Runtime,
    req: &Request,
    snap: backends::LocalSnapshot,
    nodes: Vec<Node>,
    progress: &Progress,
    checks_out: &mut Vec<Check>,
    signals: &Signals,
    holder: &Holder,
) -> Result<Outcome, RestoreError> {
    let cluster_name = ClusterName::new(&req.cluster)?;
    let mut phases = Vec::new();

    // 1. pre-flight
    let p = progress.phase("pre-flight checks");
    // The live checks (exec round trips) and the bundle pass (disk and CPU) run side by side. Staging is
    // written during the pass and removed again if any check fails.
    let dir = req.store.ensure_cluster_dir(&cluster_name)?;
    // Removed when dropped; named with this pid so that a later command removes it after a kill.
    let staging = tempfile::Builder::new()
        .prefix(&backends::local::restore_staging_prefix())
        .tempdir_in(&dir)
        .map_err(|e| RestoreError::Invalid(format!("creating a staging directory in {}: {e}", dir.display())))?;
    let stage_root = staging.path().to_owned();
    let budget = host_free(req.store.cluster_dir(&cluster_name).as_path()).saturating_sub(256 << 20);
    let (bundle, sidecar) = (snap.paths.bundle.clone(), snap.paths.sidecar.clone());
    let copy = std::fs::read(&snap.paths.metadata)
        .ok()
        .and_then(|b| Metadata::from_json(&b).ok());
    // The sizes the snapshot declares bound what is read and staged. They come from the metadata copy beside
    // the bundle, else from a first pass that reads the bundle's own metadata without staging anything.
    let limits = copy.as_ref().map(extract::Limits::declared);
    let pass = tokio::task::spawn_blocking(move || {
        let limits = limits.or_else(|| {
            extract::inspect(&bundle, &sidecar, None, u64::MAX, None)
                .0
                .metadata
                .as_ref()
                .map(extract::Limits::declared)
        });
        extract::inspect(&bundle, &sidecar, Some(&stage_root), budget, limits)
    });
    let (live, pass) = tokio::join!(preflight::gather(rt, nodes.clone()), pass);
    let (insp, staged) = pass.map_err(|e| RestoreError::Invalid(format!("reading the bundle: {e}")))?;
    let mut checks = match &copy {
        Some(m) => preflight::compat(m, &live, req.min_free),
        None => Vec::new(),
    };
    checks.insert(
        0,
        if insp.integrity.is_empty() {
            Check::pass("bundle integrity", format!("sha256:{}", insp.sha256))
        } else {
            Check::fail("bundle integrity", insp.integrity.join("; "))
        },
    );
    checks.insert(
        1,
        if insp.problems.is_empty() {
            Check::pass("bundle contents", "every entry is safe and consistent")
        } else {
            Check::fail("bundle contents", insp.problems.join("; "))
        },
    );
    match &insp.metadata {
        Some(m) => {
            // The metadata inside the verified bundle is authoritative; the copy beside it only saved time.
            if copy.as_ref() != Some(m) {
                checks.truncate(2);
                checks.extend(preflight::compat(m, &live, req.min_free));
            }
            checks.insert(2, Check::pass("schema version", format!("{}", m.schema_version)));
        }
        None => {
            if copy.is_none() {
                checks.extend(preflight::compat_unavailable());
            }
        }
    }
    phases.push(p.finish());
    *checks_out = checks.clone();
    let (Some(meta), Some(staged)) = (insp.metadata.clone(), staged) else {
        return Err(RestoreError::Preflight(checks));
    };
    if checks.iter().any(|c| !c.ok) {
        return Err(RestoreError::Preflight(checks));
    }
    if let Some(signal) = signals.pending() {
        return Err(RestoreError::Interrupted {
            signal,
            state: "nothing was changed".into(),
        });
    }
    let _ = &staging;
    let job = Job {
        rt,
        req,
        meta: &meta,
        staged: &staged,
        live: &live,
        progress,
        signals,
        holder,
    };
    mutate(job, checks, phases).await
}

/// What the mutation needs, gathered once pre-flight passed.
struct Job<'a> {
    rt: &'a Runtime,
    req: &'a Request,
    meta: &'a Metadata,
    staged: &'a Staged,
    live: &'a preflight::Live,
    progress: &'a Progress,
    signals: &'a Signals,
    holder: &'a Holder,
}

async fn mutate(job: Job<'_>, checks: Vec<Check>, mut phases: Vec<PhaseRecord>) -> Result<Outcome, RestoreError> {
    let Job {
        rt,
        req,
        meta,
        staged,
        live,
        progress,
        signals,
        holder,
    } = job;
    let nodes = live.nodes.as_slice();
    let cluster = req.cluster.clone();
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let kubelet: Vec<&Node> = kubelet_nodes(nodes);
    let id = holder.id.clone();
    let token = format!("kubectl-snapshot-{}", jiff::Timestamp::now().as_nanosecond());
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let old_etcd = format!("{}.old-{stamp}", etcd::LIVE);
    let before = |step, e: RestoreError| RestoreError::BeforeMutation {
        step,
        inner: Box::new(e),
    };

    // 2. plan every rename, and record it in each node's journal before anything is staged
    let p = progress.phase("preparing etcd, volumes and images");
    let journals = plan_switches(rt, req, staged, &kubelet, holder, &stamp)
        .await
        .map_err(|e| before("planning the switch", e))?;
    for (n, j) in &journals {
        if let Err(e) = j.write(rt, n).await {
            recover::discard(rt, nodes, &journals).await;
            return Err(before("writing the journal", e.into()));
        }
    }
    crate::util::pause_point(Pause::RestorePrepare, Some(signals)).await;

    // While the cluster still runs, in parallel: etcd restored beside /var/lib/etcd on every control plane,
    // every PV root extracted beside itself and checked, missing images imported (what `kind load` does).
    let staged_out = if signals.pending().is_some() {
        None
    } else {
        tokio::select! {
            r = stage(rt, meta, staged, live, &cps, &kubelet, &journals, &token, &id) => Some(r),
            _ = signals.wait() => None,
        }
    };
    let (etcd_revision_bump, imported, volumes) = match staged_out {
        Some(Ok(v)) if signals.pending().is_none() => v,
        Some(Err((step, e))) => {
            recover::discard(rt, nodes, &journals).await;
            return Err(before(step, e));
        }
        _ => {
            recover::discard(rt, nodes, &journals).await;
            return Err(RestoreError::Interrupted {
                signal: signals.pending().unwrap_or(crate::util::Signal::Int),
                state: "nothing was changed: the data staged so far was removed and the cluster kept running".into(),
            });
        }
    };
    phases.push(p.finish());

    // Commit: every node's journal says so, the lock node's last. From the lock node's commit on, the restore
    // is completed (by this process, or by `resume` after a kill); before it, it is undone.
    let mut journals = journals;
    if let Err(e) = commit(rt, nodes, &mut journals).await {
        recover::discard(rt, nodes, &journals).await;
        return Err(before("committing the journal", e.into()));
    }
    crate::util::pause_point(Pause::RestoreCommitted, Some(signals)).await;

    // 3. quiesce, 4. switch by renames, 5. resume: whatever arrives now, this completes or rolls back.
    switch_or_roll_back(rt, nodes, &journals, progress, signals, &mut phases).await?;
    crate::util::pause_point(Pause::RestoreSwitched, Some(signals)).await;

    let p = progress.phase("resuming cluster");
    let all: Vec<String> = kubelet.iter().map(|n| n.name.clone()).collect();
    // A signal lets the restore complete, whether it arrived before or during the wait for etcd; only a second
    // one cuts the wait short.
    let seen = signals.count().max(1);
    crate::util::pause_point(Pause::RestoreResuming, Some(signals)).await;
    let resumed = async {
        quiesce::resume_nodes(rt, nodes, &all).await?;
        tokio::select! {
            r = wait_healthy(rt, &cps) => r,
            _ = signals.wait_beyond(seen) => Err(RestoreError::Invalid("stopped waiting for etcd on a second signal".into())),
        }
    }
    .await;
    if let Err(e) = resumed {
        return Err(RestoreError::Unhealthy {
            cluster: cluster.clone(),
            inner: Box::new(e),
        });
    }
    phases.push(p.finish());

    // Done: the journal stays (with where the old data is) for `resume --rollback`; staging is removed.
    let previous_volumes = finish(rt, &mut journals).await;
    let previous_etcd_data = cps.iter().map(|n| (n.name.clone(), old_etcd.clone())).collect();
    if let Some(signal) = signals.pending() {
        return Err(RestoreError::Interrupted {
            signal,
            state: "it arrived after the restore had committed, so the restore was completed: etcd and volumes \
                    are the snapshot's, the cluster is running"
                .into(),
        });
    }
    Ok(Outcome {
        preflight: checks,
        phases,
        previous_etcd_data,
        previous_volumes,
        imported_images: imported,
        restored_volumes: volumes,
        etcd_revision_bump,
    })
}

/// Every rename of the switch, per kubelet node: etcd on control planes, each PV root the snapshot or the node
/// has. Nothing is written yet.
async fn plan_switches(
    rt: &Runtime,
    req: &Request,
    staged: &Staged,
    kubelet: &[&Node],
    holder: &Holder,
    stamp: &str,
) -> Result<BTreeMap<String, Journal>, RestoreError> {
    let id = &holder.id;
    let mut journals = BTreeMap::new();
    for n in kubelet {
        let mut switches = Vec::new();
        let mut leftovers = Vec::new();
        if n.role == Role::ControlPlane {
            switches.push(Switch {
                live: etcd::LIVE.into(),
                staged: Some(etcd::staged_dir(id)),
                aside: format!("{}.old-{stamp}", etcd::LIVE),
                had_live: true,
                keep_live: None,
            });
            leftovers.extend([etcd::side_dir(id), etcd::staged_db(id)]);
        }
        let pv = pvs::plan_volumes(rt, &n.name, &staged.pvs, id, stamp).await?;
        leftovers.extend(pv.iter().map(|s| pvs::stage_dir(&s.live, id)));
        switches.extend(pv);
        journals.insert(
            n.name.clone(),
            Journal {
                op: Op::Restore,
                phase: Phase::Preparing,
                holder: holder.clone(),
                cluster: req.cluster.clone(),
                snapshot: req.name.to_string(),
                quiesce: Some(Quiesce::Stop),
                switches,
                leftovers,
            },
        );
    }
    Ok(journals)
}

/// Stops kubelet and containers (workers first), then applies every node's switch.
/// Quiesces the cluster and switches every node by renames; a failure anywhere rolls every node back to its
/// old data and restarts the cluster ([`RestoreError::RolledBack`]), or, if that fails too, says what is left
/// and how to finish it ([`RestoreError::Mutation`]).
async fn switch_or_roll_back(
    rt: &Runtime,
    nodes: &[Node],
    journals: &BTreeMap<String, Journal>,
    progress: &Progress,
    signals: &Signals,
    phases: &mut Vec<PhaseRecord>,
) -> Result<(), RestoreError> {
    let kubelet = kubelet_nodes(nodes);
    let Err((step, e)) = quiesce_and_switch(rt, &kubelet, journals, progress, signals, phases).await else {
        return Ok(());
    };
    let cluster = journals.values().next().map(|j| j.cluster.clone()).unwrap_or_default();
    let names: Vec<String> = kubelet.iter().map(|n| n.name.clone()).collect();
    Err(match recover::undo(rt, nodes, journals).await {
        Ok(_) => RestoreError::RolledBack {
            step,
            inner: Box::new(e),
        },
        Err(rb) => RestoreError::Mutation {
            step,
            cluster,
            inner: Box::new(e),
            rollback: rb.to_string(),
            nodes: names,
        },
    })
}

async fn quiesce_and_switch(
    rt: &Runtime,
    kubelet: &[&Node],
    journals: &BTreeMap<String, Journal>,
    progress: &Progress,
    signals: &Signals,
    phases: &mut Vec<PhaseRecord>,
) -> Result<(), Step> {
    let p = progress.phase("quiescing nodes");
    // Every kubelet at once (its containers keep running), then the workers' containers at once, then the
    // control planes' one node after another, the bootstrap one last: etcd members stopped at the same moment
    // hand leadership to each other as each shuts down (etcd transfers it on SIGTERM), and one such stop
    // took 7 s instead of well under 1 s.
    let step = |e: ClusterError| ("quiescing nodes", RestoreError::from(e));
    futures_util::future::try_join_all(kubelet.iter().map(|n| node::stop_kubelet(rt, &n.name)))
        .await
        .map_err(step)?;
    let workers = kubelet.iter().filter(|n| n.role == Role::Worker);
    futures_util::future::try_join_all(workers.map(|n| node::stop_containers(rt, &n.name)))
        .await
        .map_err(step)?;
    for n in kubelet.iter().filter(|n| n.role == Role::ControlPlane).rev() {
        node::stop_containers(rt, &n.name).await.map_err(step)?;
    }
    phases.push(p.finish());
    crate::util::pause_point(Pause::RestoreQuiesced, Some(signals)).await;
    let p = progress.phase("switching etcd data and volumes");
    let switched = futures_util::future::join_all(
        journals
            .iter()
            .map(|(n, j)| journal::apply(rt, n, &j.switches, journal::forward)),
    )
    .await;
    phases.push(p.finish());
    match switched.into_iter().find_map(Result::err) {
        Some(e) => Err(("switching etcd data and volumes", e.into())),
        None => Ok(()),
    }
}

/// Marks every journal done and removes the staging leftovers. Returns, per node, where its previous volume
/// roots were kept.
async fn finish(rt: &Runtime, journals: &mut BTreeMap<String, Journal>) -> BTreeMap<String, Vec<String>> {
    let mut kept = BTreeMap::new();
    futures_util::future::join_all(journals.iter_mut().map(|(n, j)| async move {
        j.phase = Phase::Done;
        let _ = j.write(rt, n).await;
        let left: Vec<&str> = j.leftovers.iter().map(String::as_str).collect();
        let _ = node::remove_all(rt, n, &left).await;
        // This restore's copies are the ones kept (for `resume --rollback`); older ones, and what dead restores
        // staged, go.
        let lives: Vec<&str> = j.switches.iter().map(|s| s.live.as_str()).collect();
        let keep: Vec<&str> = j.switches.iter().map(|s| s.aside.as_str()).collect();
        if let Ok(gone) = node::remove_stale_copies(rt, n, &lives, &keep).await
            && !gone.is_empty()
        {
            crate::util::trace(std::time::Instant::now(), || format!("{n}: removed {}", gone.join(" ")));
        }
    }))
    .await;
    for (n, j) in journals.iter() {
        let aside: Vec<String> = j
            .switches
            .iter()
            .filter(|s| s.had_live && s.live != etcd::LIVE)
            .map(|s| s.aside.clone())
            .collect();
        if !aside.is_empty() {
            kept.insert(n.clone(), aside);
        }
    }
    kept
}

/// Marks every journal committed, the lock node's last (until it says so, undoing is always right).
async fn commit(rt: &Runtime, nodes: &[Node], journals: &mut BTreeMap<String, Journal>) -> Result<(), ClusterError> {
    let lock_at = journal::lock_node(nodes).map(|n| n.name.clone()).unwrap_or_default();
    // The others at once, then the lock node's.
    for last in [false, true] {
        let wave = journals
            .iter_mut()
            .filter(|(n, _)| (**n == lock_at) == last)
            .map(|(n, j)| async move {
                j.phase = Phase::Committed;
                j.write(rt, n).await
            });
        futures_util::future::try_join_all(wave).await?;
    }
    Ok(())
}

type Step = (&'static str, RestoreError);

/// Everything staged while the cluster runs. Returns the revision bump, the images imported per node and
/// the number of volumes staged.
#[allow(clippy::too_many_arguments)]
async fn stage(
    rt: &Runtime,
    meta: &Metadata,
    staged: &Staged,
    live: &preflight::Live,
    cps: &[&Node],
    kubelet: &[&Node],
    journals: &BTreeMap<String, Journal>,
    token: &str,
    id: &str,
) -> Result<(Option<u64>, BTreeMap<String, Vec<String>>, usize), Step> {
    let mut members = Vec::new();
    for n in cps {
        members.push(
            etcd::member(rt, &n.name)
                .await
                .map_err(|e| ("reading etcd membership", e))?,
        );
    }
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let mut live_revision = 0;
    for n in cps {
        live_revision = live_revision.max(
            node::etcd_revision(rt, &n.name)
                .await
                .map_err(|e| ("reading the live etcd revision", e.into()))?,
        );
    }
    let plan = etcd::EtcdPlan {
        db: &staged.etcd,
        initial_cluster: &initial_cluster,
        token,
        id,
        live_revision,
    };
    let tools: BTreeMap<&str, &node::RestoreTool> = live
        .restore_tools
        .iter()
        .filter_map(|(n, t)| Some((n.as_str(), t.as_ref().ok()?.as_ref()?)))
        .collect();
    let prepare = futures_util::future::join_all(members.iter().map(|m| {
        let tool = tools.get(m.node.as_str()).copied();
        let plan = &plan;
        async move {
            let tool = tool.ok_or_else(|| {
                RestoreError::Invalid(format!("{}: no etcd restore tool was found in pre-flight", m.node))
            })?;
            etcd::prepare(rt, m, tool, plan).await
        }
    }));
    let volumes = futures_util::future::join_all(kubelet.iter().map(|n| async move {
        let switches = journals.get(&n.name).map(|j| j.switches.as_slice()).unwrap_or_default();
        pvs::stage(rt, &n.name, &staged.pvs, switches, &staged.pv_files).await
    }));
    let import = futures_util::future::join_all(kubelet.iter().map(|n| async move {
        match meta.images.nodes.get(&n.name) {
            Some(want) => images::restore_node(rt, &n.name, &meta.platform, want, staged)
                .await
                .map(|got| (n.name.clone(), got)),
            None => Ok((n.name.clone(), Vec::new())),
        }
    }));
    let (prepared, volumes, imported) = tokio::join!(prepare, volumes, import);
    let mut bump = None;
    for r in prepared {
        bump = bump.max(r.map_err(|e| ("preparing the etcd restore", e))?);
    }
    let mut staged_volumes = 0;
    for r in volumes {
        staged_volumes += r.map_err(|e| ("staging volumes", e))?;
    }
    let mut images = BTreeMap::new();
    for r in imported {
        let (n, got) = r.map_err(|e| ("re-importing images", e))?;
        if !got.is_empty() {
            images.insert(n, got);
        }
    }
    Ok((bump, images, staged_volumes))
}

/// How long a restored etcd may take to be healthy, and how often it is asked at first.
const HEALTH_WAIT: Duration = Duration::from_secs(120);
const HEALTH_POLL: Duration = Duration::from_millis(200);

/// Every member healthy, and every control plane seeing the same members, one per control plane.
async fn wait_healthy(rt: &Runtime, cps: &[&Node]) -> Result<(), RestoreError> {
    // Every control plane asked at once; healthy when each answers and all see the same members.
    let healthy = || async {
        let asked = futures_util::future::join_all(cps.iter().map(|n| async move {
            node::etcd_health(rt, &n.name).await?;
            node::etcd_members(rt, &n.name).await
        }))
        .await;
        let mut views = Vec::new();
        for (n, view) in cps.iter().zip(asked) {
            views.push(view.map_err(|e| format!("{}: {e}", n.name))?);
        }
        if views.windows(2).all(|w| w[0] == w[1]) && views.first().is_some_and(|v| v.len() == cps.len()) {
            Ok(())
        } else {
            Err(format!("members disagree: {views:?}"))
        }
    };
    healthy
        .retry(crate::util::backoff(HEALTH_POLL, HEALTH_POLL * 5, HEALTH_WAIT))
        .await
        .map_err(|last| {
            RestoreError::Invalid(format!(
                "etcd did not become healthy within {}s: {last}",
                HEALTH_WAIT.as_secs()
            ))
        })
}

/// The switch on an in-memory cluster (`cluster::fake`): a rename failing on each node in turn rolls every
/// node back, so etcd and volumes are never left from different points.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fake::Fake;

    const CP: &str = "kind-control-plane";
    const W: &str = "kind-worker";
    const PV: &str = "/var/local-path-provisioner";

    fn committed(fake: &Fake) -> BTreeMap<String, Journal> {
        let mut journals = BTreeMap::new();
        for n in [CP, W] {
            let mut switches = vec![Switch {
                live: PV.into(),
                staged: Some(format!("/var/.kubectl-snapshot-stage-x/{n}-pv")),
                aside: format!("{PV}.old-T"),
                had_live: true,
                keep_live: None,
            }];
            if n == CP {
                switches.insert(
                    0,
                    Switch {
                        live: etcd::LIVE.into(),
                        staged: Some(format!("{}.kubectl-snapshot-new-x", etcd::LIVE)),
                        aside: format!("{}.old-T", etcd::LIVE),
                        had_live: true,
                        keep_live: None,
                    },
                );
            }
            for s in &switches {
                fake.write(n, &s.live, b"old");
                fake.write(n, s.staged.as_deref().unwrap(), b"new");
            }
            let j = Journal {
                op: Op::Restore,
                phase: Phase::Committed,
                holder: Holder::me("restore"),
                cluster: "kind".into(),
                snapshot: "snap".into(),
                quiesce: Some(Quiesce::Stop),
                switches,
                leftovers: Vec::new(),
            };
            fake.write(n, journal::JOURNAL, &serde_json::to_vec(&j).unwrap());
            journals.insert(n.to_owned(), j);
        }
        journals
    }

    fn live(fake: &Fake) -> Vec<Option<String>> {
        vec![fake.read(CP, etcd::LIVE), fake.read(CP, PV), fake.read(W, PV)]
    }

    #[tokio::test]
    async fn every_node_switches_or_every_node_rolls_back() {
        let (progress, signals) = (Progress::new(false), Signals::install());
        // The rename that fails (of a staged path into place), on which node.
        let cases: [(Option<(&str, &str)>, &str); 4] = [
            (None, "new"),
            (Some((CP, "/var/lib/etcd.kubectl-snapshot-new-x")), "old"),
            (
                Some((CP, "/var/.kubectl-snapshot-stage-x/kind-control-plane-pv")),
                "old",
            ),
            (Some((W, "/var/.kubectl-snapshot-stage-x/kind-worker-pv")), "old"),
        ];
        for (failing, want) in cases {
            let fake = Fake::cluster("kind", &[(CP, Role::ControlPlane), (W, Role::Worker)]);
            let rt = Runtime::with(fake.clone());
            let journals = committed(&fake);
            if let Some((node, staged)) = failing {
                fake.fail_on(node, &format!("mv -T {staged}"));
            }
            let nodes = rt.nodes("kind").await.unwrap();
            let r = switch_or_roll_back(&rt, &nodes, &journals, &progress, &signals, &mut Vec::new()).await;
            assert_eq!(live(&fake), vec![Some(want.to_owned()); 3], "failing: {failing:?}");
            match failing {
                None => r.unwrap(),
                Some((node, _)) => {
                    let e = r.unwrap_err();
                    assert!(matches!(e, RestoreError::RolledBack { .. }), "{e}");
                    assert!(e.to_string().contains(node), "{e}");
                    // Rolled back: nothing staged is left, the journals are gone, the cluster runs again.
                    for n in [CP, W] {
                        assert!(
                            !fake.paths(n).iter().any(|p| p.contains("kubectl-snapshot")),
                            "{n}: {:?}",
                            fake.paths(n)
                        );
                        assert!(fake.kubelet_running(n), "{n}");
                    }
                }
            }
        }
    }
}
