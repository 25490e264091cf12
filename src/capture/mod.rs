//! `create`: what is captured, in which order, and the guarantee that a quiesced cluster is resumed on every
//! exit path (success, error, SIGINT, SIGTERM).
//!
//! 1. inspect: nodes (all running), Kubernetes version, platform, addons, images
//! 2. etcd: hot snapshot on the bootstrap control plane (the cluster is still serving)
//! 3. quiesce: kubelet, then containers, stopped node by node: workers first, control planes last
//! 4. images and 5. PVs per node, streamed into the bundle
//! 6. metadata last, archive finished, sidecar and metadata copy published, archive linked in
//! 7. resume: control planes first, then workers; wait for etcd to run again

mod addons;
mod etcd;
pub mod images;
mod pvs;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backends::{LocalStore, SnapshotName, SnapshotPaths};
use sha2::{Digest, Sha256};

use crate::bundle::metadata::{ImagesInfo, ImagesMode, Metadata, NodeInfo, PvsInfo, SCHEMA_VERSION, Topology};
use crate::bundle::{BundleError, BundleSink, METADATA_ENTRY, WriterOptions, reader};
use crate::cluster::{ClusterError, Node, Role, Runtime, kubelet_nodes, node};
use crate::progress::{PhaseRecord, Progress};

pub use addons::detect as detect_addons;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Store(#[from] backends::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("{phase}: {inner}")]
    Phase {
        phase: &'static str,
        inner: Box<CaptureError>,
    },
    #[error("interrupted by {0}; the cluster was resumed and no snapshot was written")]
    Interrupted(&'static str),
    #[error(
        "the snapshot was written, but resuming the cluster failed: {0}\nhint: start kubelet on each node again: docker exec <node> systemctl start kubelet"
    )]
    Resume(String),
}

pub struct Request {
    pub cluster: String,
    pub images: ImagesMode,
    pub name: SnapshotName,
    pub store: LocalStore,
    pub writer: WriterOptions,
}

#[derive(Debug)]
pub struct Outcome {
    pub metadata: Metadata,
    pub paths: SnapshotPaths,
    pub sha256: String,
    pub size: u64,
    pub phases: Vec<PhaseRecord>,
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
    let cluster_name = backends::ClusterName::new(&req.cluster)?;
    let mut phases = Vec::new();

    // 1. inspect
    let p = progress.phase("inspecting cluster");
    let nodes = rt.nodes(&req.cluster).await?;
    if let Some(n) = nodes.iter().find(|n| n.state != "running") {
        return Err(ClusterError::NodeNotRunning {
            node: n.name.clone(),
            state: n.state.clone(),
        }
        .into());
    }
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::ControlPlane).collect();
    let Some(bootstrap) = cps.first().copied() else {
        return Err(CaptureError::Invalid(format!(
            "cluster {} has no control-plane node",
            req.cluster
        )));
    };
    let workers: Vec<&Node> = nodes.iter().filter(|n| n.role == Role::Worker).collect();
    let k8s_version = phase("inspecting cluster", node::k8s_version(rt, &bootstrap.name).await)?;
    let platform = phase("inspecting cluster", rt.platform().await)?;
    let mut running = Vec::new();
    for n in kubelet_nodes(&nodes) {
        running.extend(phase(
            "inspecting cluster",
            node::running_containers(rt, &n.name).await,
        )?);
    }
    let addons = addons::detect(running.iter().map(|c| c.image.as_str()));
    let etcd_image = running
        .iter()
        .find(|c| c.name == "etcd")
        .map(|c| c.image.clone())
        .unwrap_or_default();
    req.store.ensure_cluster_dir(&cluster_name)?;
    if req.store.exists(&cluster_name, &req.name) {
        return Err(backends::Error::AlreadyExists {
            cluster: req.cluster.clone(),
            name: req.name.to_string(),
        }
        .into());
    }
    phases.push(p.finish());

    let staged = StagedFile(req.store.staging_path(&cluster_name, &req.name));
    let sink = BundleSink::create(&staged.0, req.writer)?;
    let quiesced: Arc<Mutex<Vec<String>>> = Arc::default();

    let work = async {
        // 2. etcd, hot
        let p = progress.phase("etcd snapshot");
        let etcd = phase(
            "etcd snapshot",
            etcd::capture(rt, &bootstrap.name, &etcd_image, &sink).await,
        )?;
        phases.push(p.finish());

        // 3. quiesce, workers first, the bootstrap control plane last
        let p = progress.phase("quiescing nodes");
        let order: Vec<&Node> = workers.iter().chain(cps.iter().rev()).copied().collect();
        for n in &order {
            quiesced.lock().expect("quiesced list").push(n.name.clone());
            phase("quiescing nodes", node::quiesce(rt, &n.name).await)?;
        }
        phases.push(p.finish());

        // 4. images, per node, blobs shared
        let p = progress.phase("exporting images");
        let mut per_node = BTreeMap::new();
        let mut blob_bytes = 0;
        let mut bundled = std::collections::HashSet::new();
        let mut warnings = Vec::new();
        for n in kubelet_nodes(&nodes)
            .into_iter()
            .filter(|_| req.images != ImagesMode::None)
        {
            p.set_message(format!("exporting images ({})", n.name));
            let got = phase(
                "exporting images",
                images::capture(rt, &n.name, &platform, req.images, &sink, &mut bundled).await,
            )?;
            blob_bytes += got.added;
            warnings.extend(got.warnings);
            per_node.insert(n.name.clone(), got.images);
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
        let images_digest = format!("sha256:{}", hex::encode(Sha256::digest(lines.concat().as_bytes())));
        phases.push(p.finish());

        // 5. PVs
        let p = progress.phase("copying volumes");
        let mut pv_nodes = BTreeMap::new();
        let mut pv_digest = Sha256::new();
        let (mut pv_size, mut pv_files) = (0, 0);
        for n in kubelet_nodes(&nodes) {
            let roots = phase("copying volumes", pvs::capture(rt, &n.name, &sink).await)?;
            for (root, summary) in &roots {
                pv_digest.update(format!("{}\0{root}\0{}\n", n.name, summary.digest).as_bytes());
                pv_size += summary.bytes;
                pv_files += summary
                    .entries
                    .iter()
                    .filter(|e| e.kind == crate::bundle::writer::EntryKind::File)
                    .count();
            }
            pv_nodes.insert(n.name.clone(), roots.into_iter().map(|(r, _)| r).collect::<Vec<_>>());
        }
        phases.push(p.finish());

        // 6. metadata, last entry
        let p = progress.phase("writing bundle");
        let metadata = Metadata {
            schema_version: SCHEMA_VERSION,
            name: req.name.to_string(),
            cluster: req.cluster.clone(),
            created: jiff::Timestamp::now(),
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            k8s_version: k8s_version.clone(),
            node_image: bootstrap.image.clone(),
            provider: rt.provider().to_owned(),
            platform: platform.clone(),
            topology: Topology {
                control_planes: cps.len(),
                workers: workers.len(),
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
            },
            addons: addons.clone(),
            etcd,
            images: ImagesInfo {
                mode: req.images,
                digest: images_digest,
                size: blob_bytes,
                blobs: all_blobs.len(),
                nodes: per_node,
            },
            pvs: PvsInfo {
                digest: format!("sha256:{}", hex::encode(pv_digest.finalize())),
                size: pv_size,
                files: pv_files,
                nodes: pv_nodes,
            },
        };
        let json = serde_json::to_vec_pretty(&metadata).map_err(|e| CaptureError::Invalid(e.to_string()))?;
        sink.add_bytes(METADATA_ENTRY, 0o600, &json).await?;
        let (sha256, size) = sink.finish().await?;
        phases.push(p.finish());
        Ok::<_, CaptureError>((metadata, json, sha256, size, warnings))
    };

    let result = tokio::select! {
        r = work => r,
        sig = crate::util::interrupted() => Err(CaptureError::Interrupted(sig)),
    };
    if matches!(result, Err(CaptureError::Interrupted(_))) {
        eprintln!("interrupted: resuming the cluster...");
    }

    // 7. resume, whatever happened above
    let p = progress.phase("resuming cluster");
    let to_resume = quiesced.lock().expect("quiesced list").clone();
    let resumed = resume(rt, &nodes, &to_resume).await;
    phases.push(p.finish());

    let (metadata, json, sha256, size, warnings) = result?;
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
        &staged.0,
        &reader::sidecar_line(&sha256, &file_name),
        &json,
    )?;
    resumed?;
    Ok(Outcome {
        metadata,
        paths,
        sha256,
        size,
        phases,
        warnings,
    })
}

/// Resumes the quiesced nodes, control planes first (so etcd regains quorum), and waits until etcd runs on
/// every control plane again.
pub async fn resume(rt: &Runtime, nodes: &[Node], quiesced: &[String]) -> Result<(), CaptureError> {
    let mut errors = Vec::new();
    let ordered = nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .chain(nodes.iter().filter(|n| n.role != Role::ControlPlane));
    for n in ordered.filter(|n| quiesced.contains(&n.name)) {
        if let Err(e) = node::resume(rt, &n.name).await {
            errors.push(format!("{}: {e}", n.name));
        }
    }
    for n in nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane && quiesced.contains(&n.name))
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if node::etcd_container(rt, &n.name).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                errors.push(format!("{}: etcd did not start again within 60s", n.name));
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Resume(errors.join("; ")))
    }
}

/// A partially written bundle, removed unless published (publishing links it in and removes it itself).
struct StagedFile(std::path::PathBuf);

impl Drop for StagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
