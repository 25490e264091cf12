//! What kubectl-snapshot does on one kind node, expressed as the commands a kind node understands
//! (crictl, systemctl, ctr). Transport is [`crate::cluster::Runtime`].

use serde::Deserialize;

use crate::cluster::{ClusterError, Runtime};

pub const ETCD_PKI: &str = "/etc/kubernetes/pki/etcd";

/// A container as `crictl ps -o json` reports it.
#[derive(Debug, Clone)]
pub struct CriContainer {
    pub name: String,
    pub image: String,
}

#[derive(Deserialize)]
struct PsList {
    #[serde(default)]
    containers: Vec<PsItem>,
}

#[derive(Deserialize)]
struct PsItem {
    #[serde(default)]
    metadata: PsMeta,
    #[serde(default)]
    image: PsImage,
}

#[derive(Deserialize, Default)]
struct PsMeta {
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct PsImage {
    #[serde(default)]
    image: String,
}

/// Running containers on a node.
pub async fn running_containers(rt: &Runtime, node: &str) -> Result<Vec<CriContainer>, ClusterError> {
    let out = rt.run(node, &["crictl", "ps", "-o", "json"]).await?;
    let list: PsList = serde_json::from_str(&out).map_err(|e| crate::cluster::ExecError {
        node: node.into(),
        command: vec!["crictl".into(), "ps".into(), "-o".into(), "json".into()],
        code: Some(0),
        stdout: out.chars().take(500).collect(),
        stderr: format!("unexpected output: {e}"),
    })?;
    Ok(list
        .containers
        .into_iter()
        .map(|c| CriContainer { name: c.metadata.name, image: c.image.image })
        .collect())
}

/// ID of the running etcd container on a control-plane node.
pub async fn etcd_container(rt: &Runtime, node: &str) -> Result<String, ClusterError> {
    let argv = ["crictl", "ps", "--name", "^etcd$", "--state", "running", "-q"];
    let out = rt.run(node, &argv).await?;
    out.lines().map(str::trim).find(|l| !l.is_empty()).map(str::to_owned).ok_or_else(|| {
        crate::cluster::ExecError {
            node: node.into(),
            command: argv.iter().map(|s| s.to_string()).collect(),
            code: Some(0),
            stdout: String::new(),
            stderr: "no running etcd container: is the control plane healthy?".into(),
        }
        .into()
    })
}

/// `etcdctl` arguments reaching the local member with the server certificate, as kubeadm lays it out
/// (the etcd container mounts only /var/lib/etcd and the etcd PKI directory).
pub fn etcdctl_tls() -> Vec<String> {
    vec![
        "--endpoints=https://127.0.0.1:2379".into(),
        format!("--cacert={ETCD_PKI}/ca.crt"),
        format!("--cert={ETCD_PKI}/server.crt"),
        format!("--key={ETCD_PKI}/server.key"),
    ]
}

/// Kubernetes version of the node image (`/kind/version`).
pub async fn k8s_version(rt: &Runtime, node: &str) -> Result<String, ClusterError> {
    Ok(rt.run(node, &["cat", "/kind/version"]).await?.trim().to_owned())
}

/// Stops kubelet, then every running container, so nothing changes images or PV data. Node IPs are kept:
/// the node containers themselves keep running.
pub async fn quiesce(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    rt.run(node, &["systemctl", "stop", "kubelet"]).await?;
    let ids = rt.run(node, &["crictl", "ps", "-q"]).await?;
    let ids: Vec<&str> = ids.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if !ids.is_empty() {
        let mut argv = vec!["crictl", "stop", "--timeout", "30"];
        argv.extend(ids);
        rt.run(node, &argv).await?;
    }
    Ok(())
}

/// Starts kubelet again; it restarts the node's static pods and containers.
pub async fn resume(rt: &Runtime, node: &str) -> Result<(), ClusterError> {
    rt.run(node, &["systemctl", "start", "kubelet"]).await.map(|_| ())
}
