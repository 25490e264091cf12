//! `restore`: a hard overwrite of a running cluster with a snapshot, only after the pre-flight gauntlet passed.
//!
//! 1. pre-flight (no mutation): the bundle is read once — integrity against the sidecar, every entry validated,
//!    what restore needs staged on the host — and the live cluster is checked against the snapshot's metadata
//!    (running, disk space, Kubernetes version, topology, addons, platform). All violations are reported at once.
//! 2. while the cluster still runs, in parallel: etcd restored into a side directory on every control plane,
//!    and images the nodes lack re-imported (what `kind load` does: harmless to a running cluster)
//! 3. quiesce, 4. etcd data swapped in by rename (old data kept aside), 5. PVs replaced,
//! 6. resume, then wait until every member is healthy and all agree on the membership.
//!
//! No auto-rollback: if a step after quiescing fails, the cluster stays quiesced and the error says how to
//! resume it.

mod etcd;
mod images;
pub mod preflight;
mod pvs;

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use backends::{ClusterName, LocalStore, SnapshotName};
use tokio::io::AsyncRead;

use crate::bundle::Metadata;
use crate::bundle::extract::{self, Staged};
use crate::capture;
use crate::cluster::{ClusterError, Node, Role, Runtime, kubelet_nodes, node};
use crate::progress::{PhaseRecord, Progress};

pub use preflight::Check;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Store(#[from] backends::Error),
    #[error(transparent)]
    Capture(#[from] crate::capture::CaptureError),
    #[error("{0}")]
    Invalid(String),
    #[error("pre-flight failed; nothing was changed:\n{}", list(.0))]
    Preflight(Vec<Check>),
    #[error(
        "restore failed while {step}: {inner}\nthe cluster was not quiesced; its etcd data and volumes are unchanged"
    )]
    BeforeMutation {
        step: &'static str,
        inner: Box<RestoreError>,
    },
    #[error(
        "restore failed while {step}: {inner}\nthe cluster is left quiesced{kept}; there is no automatic rollback\nrun \"kubectl snapshot resume {cluster}\" to restart"
    )]
    Mutation {
        step: &'static str,
        cluster: String,
        kept: String,
        inner: Box<RestoreError>,
    },
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
    /// Node → images that were missing and re-imported.
    pub imported_images: BTreeMap<String, Vec<String>>,
    pub restored_volumes: usize,
    /// Revisions the restored etcd was moved past the live one (`--bump-revision`); absent where the etcd
    /// tools could not bump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_revision_bump: Option<u64>,
}

/// A tar stream produced by `build` on a blocking thread (bounded memory: a 1 MiB pipe).
pub fn tar_stream<F>(build: F) -> impl AsyncRead + Send + Unpin + 'static
where
    F: FnOnce(&mut tar::Builder<tokio_util::io::SyncIoBridge<tokio::io::DuplexStream>>) -> io::Result<()>
        + Send
        + 'static,
{
    let (reader, writer) = tokio::io::duplex(1 << 20);
    tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(tokio_util::io::SyncIoBridge::new(writer));
        let res = build(&mut b).and_then(|()| b.finish());
        if let Ok(mut w) = b.into_inner() {
            let _ = std::io::Write::flush(&mut w);
            let _ = w.shutdown();
        }
        res
    });
    reader
}

/// A staging directory on the host, removed when dropped.
struct StagingDir(std::path::PathBuf);

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn host_free(path: &std::path::Path) -> u64 {
    // statvfs without unsafe code: ask df, which every supported host has.
    std::process::Command::new("df")
        .args(["-Pk"])
        .arg(path)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

pub async fn restore(
    rt: &Runtime,
    req: Request,
    progress: &Progress,
    checks_out: &mut Vec<Check>,
) -> Result<Outcome, RestoreError> {
    let cluster_name = ClusterName::new(&req.cluster)?;
    let snap = req.store.get(&cluster_name, &req.name)?;
    let mut phases = Vec::new();

    // 1. pre-flight
    let p = progress.phase("pre-flight checks");
    let nodes = rt.nodes(&req.cluster).await?;
    // The live checks (exec round trips) and the bundle pass (disk and CPU) run side by side. Staging is
    // written during the pass and removed again if any check fails.
    let stage_root = req
        .store
        .cluster_dir(&cluster_name)
        .join(format!(".restore-{}", crate::util::nonce()));
    let staging = StagingDir(stage_root.clone());
    let budget = host_free(req.store.cluster_dir(&cluster_name).as_path()).saturating_sub(256 << 20);
    let (bundle, sidecar) = (snap.paths.bundle.clone(), snap.paths.sidecar.clone());
    let pass = tokio::task::spawn_blocking(move || extract::inspect(&bundle, &sidecar, Some(&stage_root), budget));
    let (live, pass) = tokio::join!(preflight::gather(rt, nodes.clone()), pass);
    let (insp, staged) = pass.map_err(|e| RestoreError::Invalid(format!("reading the bundle: {e}")))?;
    let copy = std::fs::read(&snap.paths.metadata)
        .ok()
        .and_then(|b| Metadata::from_json(&b).ok());
    let mut checks = match &copy {
        Some(m) => preflight::compat(m, &live, req.min_free),
        None => Vec::new(),
    };
    let integrity: Vec<&String> = insp
        .problems
        .iter()
        .filter(|p| p.contains("sha256 mismatch") || p.contains("incomplete") || p.contains("sidecar"))
        .collect();
    checks.insert(
        0,
        if integrity.is_empty() {
            Check::pass("bundle integrity", format!("sha256:{}", insp.sha256))
        } else {
            Check::fail(
                "bundle integrity",
                integrity.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
            )
        },
    );
    let contents: Vec<&String> = insp.problems.iter().filter(|p| !integrity.contains(p)).collect();
    checks.insert(
        1,
        if contents.is_empty() {
            Check::pass("bundle contents", "every entry is safe and consistent")
        } else {
            Check::fail(
                "bundle contents",
                contents.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("; "),
            )
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
    let _ = &staging;
    mutate(rt, &req, &meta, &staged, &live, progress, checks, phases).await
}

#[allow(clippy::too_many_arguments)]
async fn mutate(
    rt: &Runtime,
    req: &Request,
    meta: &Metadata,
    staged: &Staged,
    live: &preflight::Live,
    progress: &Progress,
    checks: Vec<Check>,
    mut phases: Vec<PhaseRecord>,
) -> Result<Outcome, RestoreError> {
    let nodes = live.nodes.as_slice();
    let cluster = req.cluster.clone();
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let workers: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Worker).collect();
    let token = format!("kubectl-snapshot-{}", jiff::Timestamp::now().as_nanosecond());
    let side = format!("/var/lib/etcd/.kubectl-snapshot-restored-{}", crate::util::nonce());
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    let old_dir = format!("/var/lib/etcd.old-{stamp}");
    let before = |step, e: RestoreError| RestoreError::BeforeMutation {
        step,
        inner: Box::new(e),
    };

    // 2. while the cluster still runs, in parallel: etcd restored into a side directory on every control
    //    plane, and missing images imported on every node (adding an image is what `kind load` does)
    let p = progress.phase("preparing etcd, importing images");
    let mut members = Vec::new();
    for n in &cps {
        members.push(
            etcd::member(rt, &n.name)
                .await
                .map_err(|e| before("reading etcd membership", e))?,
        );
    }
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url))
        .collect::<Vec<_>>()
        .join(",");
    let mut live_revision = 0;
    for n in &cps {
        live_revision = live_revision.max(
            node::etcd_revision(rt, &n.name)
                .await
                .map_err(|e| before("reading the live etcd revision", e.into()))?,
        );
    }
    let plan = etcd::Plan {
        db: &staged.etcd,
        initial_cluster: &initial_cluster,
        token: &token,
        side_dir: &side,
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
    let import = futures_util::future::join_all(kubelet_nodes(nodes).into_iter().map(|n| async move {
        match meta.images.nodes.get(&n.name) {
            Some(want) => images::restore_node(rt, &n.name, &meta.platform, want, staged)
                .await
                .map(|got| (n.name.clone(), got)),
            None => Ok((n.name.clone(), Vec::new())),
        }
    }));
    let (prepared, imported) = tokio::join!(prepare, import);
    let etcd_revision_bump = prepared.iter().filter_map(|r| r.as_ref().ok().copied().flatten()).max();
    let failed = prepared
        .into_iter()
        .find_map(Result::err)
        .map(|e| ("preparing the etcd restore", e));
    let failed = failed.or_else(|| {
        imported
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(|e| ("re-importing images", RestoreError::Invalid(e.to_string())))
    });
    if let Some((step, e)) = failed {
        for n in &cps {
            etcd::discard(rt, &n.name, &side).await;
        }
        return Err(before(step, e));
    }
    let imported: BTreeMap<String, Vec<String>> = imported
        .into_iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| !v.is_empty())
        .collect();
    phases.push(p.finish());

    let kept = format!(" (previous etcd data kept in {old_dir} on each control plane)");
    let during = |step, e: RestoreError| RestoreError::Mutation {
        step,
        cluster: cluster.clone(),
        kept: kept.clone(),
        inner: Box::new(e),
    };

    // 3. quiesce
    let p = progress.phase("quiescing nodes");
    for n in workers.iter().chain(cps.iter().rev()) {
        node::quiesce(rt, &n.name)
            .await
            .map_err(|e| during("quiescing nodes", e.into()))?;
    }
    phases.push(p.finish());

    // 4. etcd swap
    let p = progress.phase("swapping etcd data");
    let swapped = futures_util::future::join_all(cps.iter().map(|n| etcd::swap(rt, &n.name, &side, &old_dir))).await;
    if let Some(e) = swapped.into_iter().find_map(Result::err) {
        return Err(during("swapping etcd data", e));
    }
    phases.push(p.finish());

    // 5. PVs
    let p = progress.phase("restoring volumes");
    let mut restored_volumes = 0;
    for n in cps.iter().chain(workers.iter()) {
        restored_volumes += pvs::restore_node(rt, &n.name, &staged.pvs)
            .await
            .map_err(|e| during("restoring volumes", e))?;
    }
    phases.push(p.finish());

    // 6. resume and wait for a healthy, agreeing etcd
    let p = progress.phase("resuming cluster");
    let all: Vec<String> = kubelet_nodes(nodes).into_iter().map(|n| n.name.clone()).collect();
    capture::resume(rt, nodes, &all)
        .await
        .map_err(|e| during("resuming the cluster", RestoreError::Invalid(e.to_string())))?;
    wait_healthy(rt, &cps)
        .await
        .map_err(|e| during("waiting for etcd", e))?;
    phases.push(p.finish());

    let previous_etcd_data = cps.iter().map(|n| (n.name.clone(), old_dir.clone())).collect();
    Ok(Outcome {
        preflight: checks,
        phases,
        previous_etcd_data,
        imported_images: imported,
        restored_volumes,
        etcd_revision_bump,
    })
}

/// Every member healthy, and every control plane seeing the same members, one per control plane.
async fn wait_healthy(rt: &Runtime, cps: &[&Node]) -> Result<(), RestoreError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = String::new();
    loop {
        let mut ok = true;
        let mut views = Vec::new();
        for n in cps {
            if let Err(e) = node::etcd_health(rt, &n.name).await {
                ok = false;
                last = format!("{}: {e}", n.name);
                break;
            }
            match node::etcd_members(rt, &n.name).await {
                Ok(m) => views.push(m),
                Err(e) => {
                    ok = false;
                    last = format!("{}: {e}", n.name);
                    break;
                }
            }
        }
        if ok && views.windows(2).all(|w| w[0] == w[1]) && views.first().is_some_and(|v| v.len() == cps.len()) {
            return Ok(());
        }
        if ok {
            last = format!("members disagree: {views:?}");
        }
        if tokio::time::Instant::now() > deadline {
            return Err(RestoreError::Invalid(format!(
                "etcd did not become healthy within 120s: {last}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
