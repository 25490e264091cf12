//! Bringing quiesced nodes back, as create (after reading volumes) and restore (after switching data) both do.
//! How a node is quiesced or resumed is in [`super::node`]; this is the order across a cluster.

use std::time::Duration;

use backon::Retryable;

use super::{ClusterError, Node, Role, Runtime, node};

/// How long etcd may take to run again once kubelet is started, and how often it is asked at first.
const ETCD_START: Duration = Duration::from_secs(60);
const ETCD_POLL: Duration = Duration::from_millis(250);

/// One node that could not be resumed.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure {
    /// Unpausing it, or starting its kubelet, failed.
    #[error("{node}: {error}")]
    NotResumed { node: String, error: ClusterError },
    /// Its kubelet started, but not etcd.
    #[error("{node}: etcd did not start again within {}s: {error}", ETCD_START.as_secs())]
    EtcdDown { node: String, error: ClusterError },
}

/// Nodes that could not be resumed (one failure per node, each naming it), and, when resuming was the
/// clean-up after another failure, that failure. Everything is in the message: there is no `source`.
#[derive(Debug)]
pub struct ResumeFailed {
    pub failures: Vec<NodeFailure>,
    pub after: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ResumeFailed {
    pub fn new(failures: Vec<NodeFailure>) -> Self {
        ResumeFailed { failures, after: None }
    }

    /// The same failures, met while cleaning up after `error`.
    pub fn after(mut self, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.after = Some(Box::new(error));
        self
    }
}

impl std::fmt::Display for ResumeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        if let Some(after) = &self.after {
            write!(f, " (after: {after})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ResumeFailed {}

/// Resumes the quiesced nodes, control planes first (so etcd regains quorum), and waits until etcd runs on
/// every control plane again.
pub async fn resume_nodes(rt: &Runtime, nodes: &[Node], quiesced: &[String]) -> Result<(), ResumeFailed> {
    let mut errors = Vec::new();
    let cp = |n: &&Node| n.role == Role::ControlPlane;
    // The control planes one after another, in order: etcd members started at the same moment each wait out
    // their peers' initial corruption check (`--experimental-initial-corrupt-check`, set by kubeadm): the peer
    // port is bound but not yet served, so each hash request times out (7 s), and three members took 14 s to
    // elect a leader. The other nodes then at once.
    for n in nodes.iter().filter(|n| cp(n) && quiesced.contains(&n.name)) {
        if let Err(e) = node::start_kubelet(rt, &n.name).await {
            errors.push(NodeFailure::NotResumed {
                node: n.name.clone(),
                error: e,
            });
        }
    }
    let started = nodes
        .iter()
        .filter(|n| !cp(n) && quiesced.contains(&n.name))
        .map(|n| async move {
            node::start_kubelet(rt, &n.name)
                .await
                .map_err(|error| NodeFailure::NotResumed {
                    node: n.name.clone(),
                    error,
                })
        });
    errors.extend(
        futures_util::future::join_all(started)
            .await
            .into_iter()
            .filter_map(Result::err),
    );
    let etcd_up = nodes
        .iter()
        .filter(|n| cp(n) && quiesced.contains(&n.name))
        .map(|n| async move {
            let up = || node::etcd_container(rt, &n.name);
            up.retry(crate::util::backoff(ETCD_POLL, ETCD_POLL * 4, ETCD_START))
                .await
                .map(|_| ())
                .map_err(|error| NodeFailure::EtcdDown {
                    node: n.name.clone(),
                    error,
                })
        });
    errors.extend(
        futures_util::future::join_all(etcd_up)
            .await
            .into_iter()
            .filter_map(Result::err),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ResumeFailed::new(errors))
    }
}
