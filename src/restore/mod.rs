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
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    /// Undoing a restore failed on some nodes; each failure names its node.
    #[error("{}", failures.iter().map(|(n, e)| format!("{n}: {e}")).collect::<Vec<_>>().join("; "))]
    UndoFailed { failures: Vec<(String, RestoreError)> },
    #[error(
        "nothing to roll back: no node has a restore journal (a completed restore's journal is replaced by the next restore)"
    )]
    NothingToRollBack,
    #[error("{node}: the etcd manifest has no --{flag}")]
    EtcdManifest { node: String, flag: &'static str },
    #[error("the bundle has no image index for {node}")]
    NoImageIndex { node: String },
    /// An image document in the bundle that cannot be read (the bundle was verified: it was written so).
    #[error("{what}: {reason}")]
    BadImage { what: String, reason: String },
    #[error("{node}: {live} staged incompletely in {dir} ({got} of {want} files)")]
    StagedIncompletely {
        node: String,
        live: String,
        dir: String,
        got: usize,
        want: usize,
    },
    #[error("{node}: no etcd restore tool was found in pre-flight")]
    NoRestoreTool { node: String },
    #[error("etcd did not become healthy within {}s: {last}", within.as_secs())]
    EtcdUnhealthy { within: Duration, last: String },
    /// A second signal while waiting for etcd after the switch.
    #[error("stopped waiting for etcd on a second signal")]
    WaitCut,
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
    let cx = Ctx {
        rt,
        req: &req,
        progress,
        signals: &signals,
        holder: &lock.holder,
    };
    let result = restore_locked(&cx, snap, nodes, checks_out).await;
    lock.release().await;
    result
}

/// What every step of one restore shares.
struct Ctx<'a> {
    rt: &'a Runtime,
    req: &'a Request,
    progress: &'a Progress,
    signals: &'a Signals,
    holder: &'a Holder,
}

async fn restore_locked(
    cx: &Ctx<'_>,
    snap: backends::LocalSnapshot,
    nodes: Vec<Node>,
    checks_out: &mut Vec<Check>,
) -> Result<Outcome, RestoreError> {
    // 1. pre-flight. The live checks (exec round trips) and the bundle pass (disk and CPU) run side by side.
    // Staging is written during the pass and removed again (when dropped) if any check fails.
    let p = cx.progress.phase("pre-flight checks");
    let staging = staging_dir(cx.req)?;
    let ((copy, pass), live) = tokio::join!(read_bundle(snap, staging.path()), preflight::gather(cx.rt, nodes));
    let (insp, staged) = pass?;
    let checks = bundle_checks(copy.as_ref(), &insp, &live, cx.req.min_free);
    let phases = vec![p.finish()];
    *checks_out = checks.clone();
    let (Some(meta), Some(staged)) = (insp.metadata, staged) else {
        return Err(RestoreError::Preflight(checks));
    };
    if checks.iter().any(|c| !c.ok) {
        return Err(RestoreError::Preflight(checks));
    }
    if let Some(signal) = cx.signals.pending() {
        return Err(RestoreError::Interrupted {
            signal,
            state: "nothing was changed".into(),
        });
    }
    let job = Job {
        cx,
        meta: &meta,
        staged: &staged,
        live: &live,
    };
    let outcome = mutate(job, checks, phases).await;
    drop(staging);
    outcome
}

/// The directory the bundle is staged in, in the store: removed when dropped; named with this pid so that a
/// later command removes it after a kill.
fn staging_dir(req: &Request) -> Result<tempfile::TempDir, RestoreError> {
    let cluster_name = ClusterName::new(&req.cluster)?;
    let dir = req.store.ensure_cluster_dir(&cluster_name)?;
    tempfile::Builder::new()
        .prefix(&backends::local::restore_staging_prefix())
        .tempdir_in(&dir)
        .map_err(|cause| RestoreError::Io {
            what: format!("creating a staging directory in {}", dir.display()),
            cause,
        })
}

/// The bundle read, verified and staged in `stage_root`, within the host's free space. The sizes the snapshot
/// declares bound what is read and staged: they come from the metadata copy beside the bundle (returned too),
/// else from a first pass that reads the bundle's own metadata without staging anything.
async fn read_bundle(
    snap: backends::LocalSnapshot,
    stage_root: &std::path::Path,
) -> (
    Option<Metadata>,
    Result<(extract::Inspection, Option<Staged>), RestoreError>,
) {
    let budget = host_free(stage_root).saturating_sub(256 << 20);
    let (bundle, sidecar) = (snap.paths.bundle.clone(), snap.paths.sidecar.clone());
    let copy = std::fs::read(&snap.paths.metadata)
        .ok()
        .and_then(|b| Metadata::from_json(&b).ok());
    let limits = copy.as_ref().map(extract::Limits::declared);
    let stage_root = stage_root.to_owned();
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
    let pass = pass.await.map_err(|e| RestoreError::Io {
        what: "reading the bundle".into(),
        cause: std::io::Error::other(e),
    });
    (copy, pass)
}

/// Pre-flight's list: the bundle's integrity and contents, its schema, then every comparison of what it
/// holds with the live cluster. The metadata inside the verified bundle is authoritative; the copy beside it
/// only saves time, and is compared with only when the bundle's own cannot be read.
fn bundle_checks(
    copy: Option<&Metadata>,
    insp: &extract::Inspection,
    live: &preflight::Live,
    min_free: u64,
) -> Vec<Check> {
    let mut checks = vec![
        if insp.integrity.is_empty() {
            Check::pass("bundle integrity", format!("sha256:{}", insp.sha256))
        } else {
            Check::fail("bundle integrity", insp.integrity.join("; "))
        },
        if insp.problems.is_empty() {
            Check::pass("bundle contents", "every entry is safe and consistent")
        } else {
            Check::fail("bundle contents", insp.problems.join("; "))
        },
    ];
    match (&insp.metadata, copy) {
        (Some(m), _) => {
            checks.push(Check::pass("schema version", format!("{}", m.schema_version)));
            checks.extend(preflight::compat(m, live, min_free));
        }
        (None, Some(copy)) => checks.extend(preflight::compat(copy, live, min_free)),
        (None, None) => checks.extend(preflight::compat_unavailable()),
    }
    checks
}

/// What the mutation needs, gathered once pre-flight passed.
struct Job<'a> {
    cx: &'a Ctx<'a>,
    meta: &'a Metadata,
    staged: &'a Staged,
    live: &'a preflight::Live,
}

/// Steps 2 to 6, once pre-flight passed.
async fn mutate(job: Job<'_>, checks: Vec<Check>, mut phases: Vec<PhaseRecord>) -> Result<Outcome, RestoreError> {
    let Ctx {
        rt, progress, signals, ..
    } = *job.cx;
    let nodes = job.live.nodes.as_slice();
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();

    // 2. plan every rename, record it in each node's journal, and stage everything beside the live data
    let p = progress.phase("preparing etcd, volumes and images");
    let (mut journals, (etcd_revision_bump, imported, volumes)) = prepare(&job, &stamp).await?;
    phases.push(p.finish());

    // Commit: every node's journal says so, the lock node's last. From the lock node's commit on, the restore
    // is completed (by this process, or by `resume` after a kill); before it, it is undone.
    if let Err(e) = commit(rt, nodes, &mut journals).await {
        recover::discard(rt, nodes, &journals).await;
        return Err(RestoreError::BeforeMutation {
            step: "committing the journal",
            inner: Box::new(e.into()),
        });
    }
    crate::util::pause_point(Pause::RestoreCommitted, Some(signals)).await;

    // 3. quiesce, 4. switch by renames, 5. resume: whatever arrives now, this completes or rolls back.
    switch_or_roll_back(rt, nodes, &journals, progress, signals, &mut phases).await?;
    crate::util::pause_point(Pause::RestoreSwitched, Some(signals)).await;
    let p = progress.phase("resuming cluster");
    resume_healthy(&job, &cps).await?;
    phases.push(p.finish());

    // Done: the journal stays (with where the old data is) for `resume --rollback`; staging is removed.
    let previous_volumes = finish(rt, &mut journals).await;
    let old_etcd = format!("{}.old-{stamp}", etcd::LIVE);
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

/// Step 2, while the cluster runs: every rename planned and recorded in each node's journal before anything
/// is staged; then, in parallel, etcd restored beside /var/lib/etcd on every control plane, every PV root
/// extracted beside itself and checked, missing images imported (what `kind load` does). On any failure or
/// signal, what was staged and journaled is removed and nothing was changed.
async fn prepare(job: &Job<'_>, stamp: &str) -> Result<(BTreeMap<String, Journal>, StagedOut), RestoreError> {
    let Ctx {
        rt,
        req,
        signals,
        holder,
        ..
    } = *job.cx;
    let nodes = job.live.nodes.as_slice();
    let kubelet: Vec<&Node> = kubelet_nodes(nodes);
    let before = |step, e: RestoreError| RestoreError::BeforeMutation {
        step,
        inner: Box::new(e),
    };
    let journals = plan_switches(rt, req, job.staged, &kubelet, holder, stamp)
        .await
        .map_err(|e| before("planning the switch", e))?;
    for (n, j) in &journals {
        if let Err(e) = j.write(rt, n).await {
            recover::discard(rt, nodes, &journals).await;
            return Err(before("writing the journal", e.into()));
        }
    }
    crate::util::pause_point(Pause::RestorePrepare, Some(signals)).await;
    let staged_out = if signals.pending().is_some() {
        None
    } else {
        tokio::select! {
            r = stage(job, &kubelet, &journals) => Some(r),
            _ = signals.wait() => None,
        }
    };
    match staged_out {
        Some(Ok(v)) if signals.pending().is_none() => Ok((journals, v)),
        Some(Err((step, e))) => {
            recover::discard(rt, nodes, &journals).await;
            Err(before(step, e))
        }
        _ => {
            recover::discard(rt, nodes, &journals).await;
            Err(RestoreError::Interrupted {
                signal: signals.pending().unwrap_or(crate::util::Signal::Int),
                state: "nothing was changed: the data staged so far was removed and the cluster kept running".into(),
            })
        }
    }
}

/// Step 5's end: every node resumed and etcd healthy. A signal lets the restore complete, whether it arrived
/// before or during the wait for etcd; only a second one cuts the wait short.
async fn resume_healthy(job: &Job<'_>, cps: &[&Node]) -> Result<(), RestoreError> {
    let Ctx { rt, req, signals, .. } = *job.cx;
    let nodes = job.live.nodes.as_slice();
    let all: Vec<String> = kubelet_nodes(nodes).iter().map(|n| n.name.clone()).collect();
    let seen = signals.count().max(1);
    crate::util::pause_point(Pause::RestoreResuming, Some(signals)).await;
    let resumed = async {
        quiesce::resume_nodes(rt, nodes, &all).await?;
        tokio::select! {
            r = wait_healthy(rt, cps) => r,
            _ = signals.wait_beyond(seen) => Err(RestoreError::WaitCut),
        }
    }
    .await;
    resumed.map_err(|e| RestoreError::Unhealthy {
        cluster: req.cluster.clone(),
        inner: Box::new(e),
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

/// What staging gave: the revision bump, the images imported per node, the number of volumes staged.
type StagedOut = (Option<u64>, BTreeMap<String, Vec<String>>, usize);

/// Everything staged while the cluster runs, every node at once: etcd, volumes, images.
async fn stage(job: &Job<'_>, kubelet: &[&Node], journals: &BTreeMap<String, Journal>) -> Result<StagedOut, Step> {
    let (rt, meta, staged) = (job.cx.rt, job.meta, job.staged);
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
    let (bump, volumes, imported) = tokio::join!(stage_etcd(job), volumes, import);
    let bump = bump?;
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

/// The snapshot's etcd restored beside the live data on every control plane, as a new cluster of today's
/// members, its revision moved past the live one. Returns the revision bump.
async fn stage_etcd(job: &Job<'_>) -> Result<Option<u64>, Step> {
    let rt = job.cx.rt;
    let cps: Vec<&Node> = job.live.nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let mut members = Vec::new();
    let mut live_revision = 0;
    for n in &cps {
        let member = etcd::member(rt, &n.name).await;
        members.push(member.map_err(|e| ("reading etcd membership", e))?);
        let revision = node::etcd_revision(rt, &n.name).await;
        live_revision = live_revision.max(revision.map_err(|e| ("reading the live etcd revision", e.into()))?);
    }
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let token = format!("kubectl-snapshot-{}", jiff::Timestamp::now().as_nanosecond());
    let plan = etcd::EtcdPlan {
        db: &job.staged.etcd,
        initial_cluster: &initial_cluster,
        token: &token,
        id: &job.cx.holder.id,
        live_revision,
    };
    let tools: BTreeMap<&str, &node::RestoreTool> = (job.live.restore_tools.iter())
        .filter_map(|(n, t)| Some((n.as_str(), t.as_ref().ok()?.as_ref()?)))
        .collect();
    let prepared = futures_util::future::join_all(members.iter().map(|m| {
        let (tool, plan) = (tools.get(m.node.as_str()).copied(), &plan);
        async move {
            let tool = tool.ok_or_else(|| RestoreError::NoRestoreTool { node: m.node.clone() })?;
            etcd::prepare(rt, m, tool, plan).await
        }
    }))
    .await;
    let mut bump = None;
    for r in prepared {
        bump = bump.max(r.map_err(|e| ("preparing the etcd restore", e))?);
    }
    Ok(bump)
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
        .map_err(|last| RestoreError::EtcdUnhealthy {
            within: HEALTH_WAIT,
            last,
        })
}

/// The switch on an in-memory cluster (`cluster::fake`): a rename failing on each node in turn rolls every
/// node back, so etcd and volumes are never left from different points.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::fake::Fake;

    /// Pre-flight judges the snapshot by the metadata inside the verified bundle, not by the copy beside it.
    #[test]
    fn pre_flight_compares_the_bundles_own_metadata_and_says_when_there_is_none() {
        let (copy, live) = preflight::tests::matching();
        let mut inside = copy.clone();
        inside.k8s_version = "v1.31.0".into();
        let insp = extract::Inspection {
            sha256: "ab".into(),
            metadata: Some(inside),
            ..Default::default()
        };
        let checks = bundle_checks(Some(&copy), &insp, &live, 0);
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(&names[..3], ["bundle integrity", "bundle contents", "schema version"]);
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(failed, ["k8s version"], "{checks:?}");

        let broken = extract::Inspection {
            integrity: vec!["sha256 mismatch".into()],
            ..Default::default()
        };
        let checks = bundle_checks(None, &broken, &live, 0);
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert_eq!(failed, ["bundle integrity", "schema version"], "{checks:?}");
        // The copy beside an unreadable bundle still shows what would not match.
        let checks = bundle_checks(Some(&copy), &broken, &live, 0);
        assert!(checks.iter().any(|c| c.name == "k8s version" && c.ok), "{checks:?}");
    }

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
